//! The eBPF programs: `steer` (TUN queue steering), `classify` (the XDP
//! capture hook for the AF_XDP sockets) and `queue_steer` (host mode's tc
//! egress queue choice on the app-side veth end).
//!
//! Built for the kernel by `tun2socks-user/build.rs`, by hand with
//! `cargo build --release --target bpfel-unknown-none -Z build-std=core`
//! (run here; rust-toolchain.toml selects nightly). On the host this is an
//! empty binary so that `cargo test`/`cargo clippy` work in this workspace.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::TC_ACT_OK,
        bindings::xdp_action,
        macros::{classifier, map, socket_filter, xdp},
        maps::{HashMap, LpmTrie, PerCpuArray, XskMap, lpm_trie::Key},
        programs::{SkBuffContext, TcContext, XdpContext},
    };
    use tun2socks_ebpf::tc::{QueueSteerCounter, steer_frame};
    use tun2socks_ebpf::xdp::{
        AddressSets, MAX_BYPASS_PREFIXES, MAX_LOCAL_ADDRESSES, MAX_ROUTED_PREFIXES, MAX_XSK_QUEUES, XdpCounter,
        classify_frame,
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

    /// Prefixes whose TCP/UDP traffic is proxied (LPM tries; the value is
    /// unused). Keys are the address in network byte order.
    #[map]
    static ROUTED_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_ROUTED_PREFIXES, 0);
    #[map]
    static ROUTED_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_ROUTED_PREFIXES, 0);
    /// Prefixes inside the routed ones that go to the kernel instead.
    #[map]
    static BYPASS_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_BYPASS_PREFIXES, 0);
    #[map]
    static BYPASS_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_BYPASS_PREFIXES, 0);
    /// The box's own addresses: traffic to them is the kernel's.
    #[map]
    static LOCAL_V4: HashMap<[u8; 4], u8> = HashMap::with_max_entries(MAX_LOCAL_ADDRESSES, 0);
    #[map]
    static LOCAL_V6: HashMap<[u8; 16], u8> = HashMap::with_max_entries(MAX_LOCAL_ADDRESSES, 0);
    /// The AF_XDP socket of each rx queue, keyed by queue index: a socket
    /// only receives from the queue it is bound to.
    #[map]
    static XSKS: XskMap = XskMap::with_max_entries(MAX_XSK_QUEUES, 0);
    /// Frames by [`XdpCounter`], per CPU.
    #[map]
    static XDP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(XdpCounter::COUNT, 0);

    /// The frame between `data` and `data_end`. Each read is checked against
    /// `data_end` once, for its whole fixed size, with a pointer comparison
    /// (never arithmetic on `data_end`, which the verifier rejects).
    struct Frame {
        start: usize,
        end: usize,
    }

    impl PacketBytes for Frame {
        #[inline(always)]
        fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
            let at = self.start + offset;
            if at + N > self.end {
                return None;
            }
            // SAFETY: `at..at + N` lies inside the frame, checked above;
            // `[u8; N]` has no alignment requirement.
            Some(unsafe { *(at as *const [u8; N]) })
        }
    }

    /// [`AddressSets`] answered from the maps.
    struct Maps;

    impl AddressSets for Maps {
        #[inline(always)]
        fn is_local_v4(&self, dst: &[u8; 4]) -> bool {
            // SAFETY: the value is only tested for presence, never kept.
            unsafe { LOCAL_V4.get(dst).is_some() }
        }
        #[inline(always)]
        fn is_local_v6(&self, dst: &[u8; 16]) -> bool {
            // SAFETY: as above.
            unsafe { LOCAL_V6.get(dst).is_some() }
        }
        #[inline(always)]
        fn is_bypassed_v4(&self, dst: &[u8; 4]) -> bool {
            BYPASS_V4.get(Key::new(32, *dst)).is_some()
        }
        #[inline(always)]
        fn is_bypassed_v6(&self, dst: &[u8; 16]) -> bool {
            BYPASS_V6.get(Key::new(128, *dst)).is_some()
        }
        #[inline(always)]
        fn is_routed_v4(&self, dst: &[u8; 4]) -> bool {
            ROUTED_V4.get(Key::new(32, *dst)).is_some()
        }
        #[inline(always)]
        fn is_routed_v6(&self, dst: &[u8; 16]) -> bool {
            ROUTED_V6.get(Key::new(128, *dst)).is_some()
        }
    }

    /// The AF_XDP capture hook: proxied flows into the rx queue's socket,
    /// everything else to the kernel (see `tun2socks_ebpf::xdp`).
    #[xdp]
    pub fn classify(ctx: XdpContext) -> u32 {
        let frame = Frame {
            start: ctx.data(),
            end: ctx.data_end(),
        };
        let mut class = classify_frame(&frame, &Maps);
        let action = if class == XdpCounter::Redirected {
            // The low bits of the flags are the action when the queue has
            // no socket: drop, so that a proxied flow never bypasses the
            // proxy.
            match XSKS.redirect(ctx.rx_queue_index(), u64::from(xdp_action::XDP_DROP)) {
                Ok(action) => action,
                Err(action) => {
                    class = XdpCounter::RedirectFailed;
                    action
                }
            }
        } else {
            xdp_action::XDP_PASS
        };
        if let Some(counter) = XDP_COUNTERS.get_ptr_mut(class as u32) {
            // SAFETY: this CPU's slot; nothing else runs on it meanwhile.
            unsafe { *counter += 1 };
        }
        action
    }

    /// The number of queues `queue_steer` spreads flows over. Set by the
    /// loader (`EbpfLoader::set_global`, name
    /// `tun2socks_ebpf::tc::QUEUE_COUNT_GLOBAL`) before loading; it lives
    /// in `.rodata`, which aya freezes, so the verifier sees a constant.
    /// Zero (not set): the program leaves every frame alone.
    #[unsafe(no_mangle)]
    static QUEUE_STEER_QUEUES: u32 = 0;

    /// Frames by [`QueueSteerCounter`], per CPU.
    #[map]
    static QUEUE_STEER_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(QueueSteerCounter::COUNT, 0);

    /// The frame as `bpf_skb_load_bytes` sees it at tc egress: offsets count
    /// from the Ethernet header.
    struct TcFrame<'a>(&'a TcContext);

    impl PacketBytes for TcFrame<'_> {
        #[inline(always)]
        fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
            self.0.load(offset).ok()
        }
    }

    /// Host mode's flow affinity, at tc egress of the app-side veth end: sets
    /// `skb->queue_mapping` so that the frame leaves on (and the peer
    /// receives it on) the queue of the worker that owns its flow, the
    /// queue `tun2socks::steering::queue_for_packet` predicts (see
    /// `tun2socks_ebpf::tc::queue_mapping_for` for the `+ 1`). Never drops:
    /// frames it cannot parse go on untouched.
    #[classifier]
    pub fn queue_steer(ctx: TcContext) -> i32 {
        // SAFETY: a plain read of a global; volatile so that the compiler
        // does not fold the zero it was compiled with.
        let queues = unsafe { core::ptr::read_volatile(&QUEUE_STEER_QUEUES) };
        let (mapping, class) = steer_frame(&TcFrame(&ctx), queues);
        if let Some(mapping) = mapping {
            // SAFETY: `skb` is the context pointer the kernel passed in;
            // `queue_mapping` is writable from tc programs (the kernel
            // ignores values >= NO_QUEUE_MAPPING, which steer_frame never
            // returns).
            unsafe { (*ctx.skb.skb).queue_mapping = mapping };
        }
        if let Some(counter) = QUEUE_STEER_COUNTERS.get_ptr_mut(class as u32) {
            // SAFETY: this CPU's slot; nothing else runs on it meanwhile.
            unsafe { *counter += 1 };
        }
        TC_ACT_OK
    }

    // The kernel checks the license string against the helpers used;
    // `bpf_skb_load_bytes`, the map helpers and `bpf_redirect_map` are not
    // GPL-only.
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
