//! Who wrote a journal, and for which network namespace: the facts that
//! decide whether a journal may be rolled back.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use serde::{Deserialize, Serialize};
use socket2::{Domain, Socket, Type};

/// The process that owns a journal.
///
/// A pid alone is not enough: after the owner died its pid may be given to
/// an unrelated process, which would then look like a live owner (and keep
/// the journal from ever being rolled back) or, worse, a live owner could be
/// mistaken for a dead one after a wrap-around. The process's start time
/// (`/proc/PID/stat` field 22, in clock ticks since boot) tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub start_time: u64,
    /// The inode of the owner's pid namespace: a pid means something only
    /// when read in that namespace.
    pub pid_ns: u64,
}

/// What the owner looks like from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Running,
    Dead,
    /// It cannot be told (another pid namespace, /proc unreadable): treated
    /// as running, so that nothing a live instance relies on is removed.
    Unknown,
}

impl Owner {
    /// This process.
    pub fn current() -> io::Result<Owner> {
        let pid = std::process::id();
        let stat = proc_stat(pid)?.ok_or_else(|| io::Error::other("/proc/self/stat is missing"))?;
        Ok(Owner {
            pid,
            start_time: stat.start_time,
            pid_ns: ns_inode("/proc/self/ns/pid")?,
        })
    }

    /// Whether the owner is still running.
    pub fn liveness(&self) -> Liveness {
        match ns_inode("/proc/self/ns/pid") {
            Ok(ours) if ours == self.pid_ns => {}
            Ok(_) => return Liveness::Unknown,
            Err(err) => {
                tracing::warn!(%err, "cannot read our pid namespace");
                return Liveness::Unknown;
            }
        }
        match proc_stat(self.pid) {
            // A zombie has closed its files and will never undo anything.
            Ok(Some(stat)) if stat.start_time == self.start_time && !matches!(stat.state, 'Z' | 'X') => {
                Liveness::Running
            }
            // Gone, a zombie, or the pid now belongs to another process.
            Ok(_) => Liveness::Dead,
            Err(err) => {
                tracing::warn!(pid = self.pid, %err, "cannot tell whether a journal's owner runs");
                Liveness::Unknown
            }
        }
    }
}

struct ProcStat {
    state: char,
    start_time: u64,
}

/// Reads `/proc/PID/stat`; `None` when there is no such process.
fn proc_stat(pid: u32) -> io::Result<Option<ProcStat>> {
    let text = match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => text,
        Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => return Ok(None),
        Err(err) => return Err(err),
    };
    parse_stat(&text)
        .map(Some)
        .ok_or_else(|| io::Error::other(format!("cannot parse /proc/{pid}/stat")))
}

/// Field 2 (the command name, in parentheses) may contain spaces and
/// parentheses itself, so fields are counted from the last `)`: the next
/// one is field 3 (state), and field 22 (start time) is 19 further.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// The network namespace of the calling thread.
///
/// The inode of `/proc/thread-self/ns/net` names it (`ip netns identify`
/// compares the same inodes), so a journal written inside a namespace is
/// found again by any process that enters it, e.g. `tun2socks cleanup
/// --netns NAME`. `thread-self`, not `self`: `setns` moves only a thread,
/// and `/proc/self` shows the main thread's namespace.
///
/// Inode numbers are reused once a namespace is gone, so the namespace's
/// cookie (`SO_NETNS_COOKIE`, never reused while the system runs) is kept
/// too: same inode, other cookie = the journal's namespace no longer exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsId {
    pub inode: u64,
    /// `None` where the kernel has no `SO_NETNS_COOKIE` (before 5.14).
    pub cookie: Option<u64>,
}

impl NetnsId {
    pub fn current() -> io::Result<NetnsId> {
        Ok(NetnsId {
            inode: ns_inode("/proc/thread-self/ns/net")?,
            cookie: netns_cookie()?,
        })
    }

    /// Whether `self` (from a journal) may be the namespace `now`: the
    /// inodes agree and the cookies do not contradict it.
    pub fn may_be(&self, now: &NetnsId) -> bool {
        self.inode == now.inode
            && match (self.cookie, now.cookie) {
                (Some(then), Some(now)) => then == now,
                _ => true,
            }
    }
}

fn ns_inode(path: &str) -> io::Result<u64> {
    Ok(fs::metadata(path)?.ino())
}

fn netns_cookie() -> io::Result<Option<u64>> {
    // Any socket will do: the option reports the namespace it was made in,
    // which is the calling thread's.
    let socket = Socket::new(Domain::UNIX, Type::DGRAM, None)?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(Some(cookie))
    } else {
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENOPROTOOPT) => Ok(None),
            _ => Err(err),
        }
    }
}

/// Identifies this boot: a journal from an earlier boot describes network
/// state that no longer exists (when its directory survived the reboot).
pub fn boot_id() -> io::Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.start_time, 987654);
        assert!(parse_stat("4242 (truncated").is_none());
        assert!(parse_stat("4242 (x) S 1 2").is_none());
    }

    #[test]
    fn this_process_is_running_and_a_changed_start_time_is_not() {
        let me = Owner::current().unwrap();
        assert_eq!(me.liveness(), Liveness::Running);
        let recycled = Owner {
            start_time: me.start_time + 1,
            ..me
        };
        assert_eq!(recycled.liveness(), Liveness::Dead);
        let elsewhere = Owner {
            pid_ns: me.pid_ns + 1,
            ..me
        };
        assert_eq!(elsewhere.liveness(), Liveness::Unknown);
    }

    #[test]
    fn a_namespace_with_another_cookie_is_another_namespace() {
        let now = NetnsId::current().unwrap();
        assert!(now.may_be(&now));
        let reused = NetnsId {
            cookie: now.cookie.map(|c| c + 1),
            ..now
        };
        assert!(now.cookie.is_none() || !reused.may_be(&now));
        assert!(
            !NetnsId {
                inode: now.inode + 1,
                ..now
            }
            .may_be(&now)
        );
    }
}
