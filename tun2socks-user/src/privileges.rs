//! Dropping privileges, in one named place.
//!
//! Setup needs much (CAP_NET_ADMIN for the device, routes and rules, CAP_BPF
//! or CAP_SYS_ADMIN for the steering program); the running daemon needs only
//! CAP_NET_ADMIN: to put its firewall mark on each new upstream socket and to
//! undo the setup at exit, and, for real-time workers, the right to take
//! `SCHED_FIFO` again after leaving it (`worker::scheduling`): the
//! `RLIMIT_RTPRIO` set here while we may, or else CAP_SYS_NICE, kept only for
//! them. Everything else goes once setup is done, before
//! any worker thread exists (capabilities are per thread, and threads inherit
//! them), and `no_new_privs` keeps an exec from gaining any back.

use std::io;

const CAP_SETPCAP: u32 = 8;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_NICE: u32 = 23;
/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Keeps CAP_NET_ADMIN (if held) and, with `keep_sys_nice`, CAP_SYS_NICE (if
/// held), and drops every other capability from the calling thread's
/// effective, permitted, inheritable, ambient and bounding sets.
pub fn drop_to_runtime_set(keep_sys_nice: bool) -> io::Result<()> {
    let keep = 1u32 << CAP_NET_ADMIN | u32::from(keep_sys_nice) << CAP_SYS_NICE;
    let (mut header, mut data) = (
        CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        },
        [CapData::default(); 2],
    );
    // SAFETY: capget fills a v3 header and two data words we own.
    check(unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) })?;
    let held = data[0].permitted & keep;
    // The bounding set first: dropping from it needs CAP_SETPCAP, which the
    // capset below removes. Unknown (too new) capabilities give EINVAL: done.
    // Without CAP_SETPCAP (systemd's CapabilityBoundingSet= leaves it out)
    // whoever started us chose the bounding set already; `no_new_privs`
    // below keeps an exec from gaining anything outside what we keep.
    let may_shrink_bounding_set = data[0].effective & 1 << CAP_SETPCAP != 0;
    for cap in (0..64).take_while(|_| may_shrink_bounding_set) {
        if keep & 1u32.checked_shl(cap).unwrap_or(0) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(err);
        }
    }
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) } as libc::c_long)?;
    let data = [
        CapData {
            effective: held,
            permitted: held,
            inheritable: 0,
        },
        CapData::default(),
    ];
    // SAFETY: capset reads a v3 header and two data words.
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) })?;
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as libc::c_long)?;
    Ok(())
}

/// Raises `RLIMIT_RTPRIO` to `priority` (if it is lower) while we still may
/// (CAP_SYS_RESOURCE): with it, threads without CAP_SYS_NICE may still take
/// `SCHED_FIFO` at that priority, leave it and take it again, which is what
/// real-time workers do (`worker::scheduling`). Under systemd, the unit's
/// `LimitRTPRIO=` sets it instead.
pub fn allow_realtime(priority: i32) -> io::Result<()> {
    let wanted = libc::rlim_t::try_from(priority).unwrap_or(0);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit we own.
    check(unsafe { libc::getrlimit(libc::RLIMIT_RTPRIO, &mut limit) } as libc::c_long)?;
    if limit.rlim_cur >= wanted {
        return Ok(());
    }
    let raised = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: limit.rlim_max.max(wanted),
    };
    // SAFETY: setrlimit reads one rlimit.
    check(unsafe { libc::setrlimit(libc::RLIMIT_RTPRIO, &raised) } as libc::c_long)
}

/// The calling thread's effective capability bits (low word, high word).
pub fn effective() -> io::Result<u64> {
    let (mut header, mut data) = (
        CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        },
        [CapData::default(); 2],
    );
    // SAFETY: as above.
    check(unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) })?;
    Ok(u64::from(data[0].effective) | u64::from(data[1].effective) << 32)
}

fn check(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_all_but_net_admin_in_this_thread_only() {
        // Capabilities are per thread: do it in a thread of its own.
        std::thread::spawn(|| {
            let before = effective().unwrap();
            drop_to_runtime_set(false).unwrap();
            let after = effective().unwrap();
            assert_eq!(
                after,
                before & (1 << CAP_NET_ADMIN),
                "before {before:#x} after {after:#x}"
            );
        })
        .join()
        .unwrap();
    }
}
