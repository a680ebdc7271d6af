//! The eBPF programs.
//!
//! Built for the kernel by `tun2socks-user/build.rs`, by hand with
//! `cargo build --release --target bpfel-unknown-none -Z build-std=core`
//! (run here; rust-toolchain.toml selects nightly). On the host this is an
//! empty binary so that `cargo test`/`cargo clippy` work in this workspace.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        macros::{map, socket_filter},
        maps::PerCpuArray,
        programs::SkBuffContext,
    };
    use tun2socks_ebpf::{PacketBytes, SteerClass, steer_and_classify};

    /// Packets steered, by [`SteerClass`], per CPU: no atomics, user space
    /// sums the CPUs when it reads them.
    #[map]
    static STEER_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SteerClass::COUNT, 0);

    /// The packet as `bpf_skb_load_bytes` sees it: offsets count from
    /// `skb->data`, which on a TUN device (IFF_NO_PI) is the IP header. The
    /// helper checks bounds at run time, so variable offsets (IPv4 options)
    /// need no verifier-visible pointer arithmetic.
    struct Skb<'a>(&'a SkBuffContext);

    impl PacketBytes for Skb<'_> {
        #[inline(always)]
        fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
            self.0.load(offset).ok()
        }
    }

    /// TUN queue steering (`TUNSETSTEERINGEBPF`): the kernel sends the packet
    /// to queue `return value % queue count`, the same computation as
    /// `tun2socks::steering::queue_for_packet` in user space.
    #[socket_filter]
    pub fn steer(ctx: SkBuffContext) -> i64 {
        let (value, class) = steer_and_classify(&Skb(&ctx));
        if let Some(counter) = STEER_COUNTERS.get_ptr_mut(class as u32) {
            // SAFETY: the map's per-CPU slot for this CPU; nothing else
            // runs on it while this program does.
            unsafe { *counter += 1 };
        }
        i64::from(value)
    }

    // The kernel checks the license string against the helpers used;
    // `bpf_skb_load_bytes` is not GPL-only.
    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

    /// Never reached: every index in the shared code is constant, so no
    /// panic path survives optimisation (the verifier would reject the loop).
    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
