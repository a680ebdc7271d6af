//! Named network namespaces without iproute2: what `ip netns add NAME` does
//! (a thread `unshare`s a new network namespace and bind-mounts its
//! `/proc/thread-self/ns/net` onto `/run/netns/NAME`), so that the daemon's
//! `--netns NAME` finds it, and what `ip netns exec` / `ip netns del` do
//! (`setns` in a thread or in a child before `exec`; unmount and unlink).
//!
//! Nothing here changes the namespace of the calling thread: work inside a
//! namespace runs on a thread of its own ([`Netns::run`]).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Where iproute2 (and the daemon's `--netns`) look for named namespaces.
pub const RUN_DIR: &str = "/run/netns";

/// A named network namespace; deleted on drop (after killing whatever
/// still runs in it).
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    /// The bind mount, open: `setns` target, and identity (device, inode).
    file: File,
}

impl Netns {
    /// Creates the namespace as `/run/netns/NAME` (which must not exist).
    /// Its loopback is still down.
    pub fn create(name: &str) -> Result<Self> {
        let plain = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
        if !plain {
            bail!("{name:?} is not a plain namespace name");
        }
        fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
        let path = Path::new(RUN_DIR).join(name);
        // The mount point; create_new: never take over someone else's name.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        // From here on a failure removes the mount point (and the mount).
        let mut pending = Pending {
            path: path.clone(),
            armed: true,
        };
        let target = path.clone();
        std::thread::scope(|s| {
            s.spawn(move || unshare_and_mount(&target))
                .join()
                .unwrap_or_else(|_| bail!("the namespace thread panicked"))
        })
        .with_context(|| format!("creating network namespace {name}"))?;
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        pending.armed = false;
        Ok(Netns {
            name: name.to_owned(),
            path,
            file,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file descriptor (valid while `self` lives).
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Runs `f` on a thread of its own inside the namespace (sockets it
    /// opens, netlink included, and `/proc/sys/net` it writes, belong to the
    /// namespace).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let fd = self.fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on a namespace fd that outlives this scoped thread.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("setns");
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| bail!("a thread in the namespace panicked"))
        })
        .with_context(|| format!("in namespace {}", self.name))
    }

    /// Sets a sysctl (`net.ipv4.ip_forward`) inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| fs::write(&path, value).with_context(|| format!("writing {value:?} to {path}")))
    }

    /// A command whose process enters the namespace before it `exec`s
    /// `program` (like `ip netns exec`, without remounting /sys).
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        let fd = self.fd();
        // SAFETY: only setns(2), async-signal-safe, runs between fork and
        // exec; `fd` is open in the child (O_CLOEXEC closes it at exec).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Pids of the processes whose (main thread's) network namespace is
    /// this one, as `ip netns pids` finds them.
    pub fn pids(&self) -> Vec<i32> {
        let Ok(me) = self.file.metadata() else {
            return Vec::new();
        };
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.dev() == me.dev() && m.ino() == me.ino())
            })
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Anything still inside would keep the namespace (and its devices)
        // alive after the name is gone.
        for pid in self.pids() {
            // SAFETY: kill(2) on a process that lives in our namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Err(e) = remove(&self.path) {
            eprintln!("bench: cannot delete namespace {}: {e:#}", self.name);
        }
    }
}

/// A mount point being set up: removed on drop unless disarmed.
struct Pending {
    path: PathBuf,
    armed: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.armed {
            let _ = remove(&self.path);
        }
    }
}

/// On a fresh thread: a new network namespace for the thread, bind-mounted
/// onto `target`. The thread then ends; the mount keeps the namespace.
fn unshare_and_mount(target: &Path) -> Result<()> {
    // SAFETY: unshare(2) of the network namespace affects only this thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
    }
    let source = CString::new("/proc/thread-self/ns/net")?;
    let target_c = CString::new(target.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated paths; a bind mount with no data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("bind-mounting onto {}", target.display()));
    }
    Ok(())
}

/// Unmounts (lazily: an open descriptor elsewhere does not block it) and
/// removes a namespace's mount point.
fn remove(path: &Path) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a valid path; EINVAL just means it is not mounted.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e).with_context(|| format!("unmounting {}", path.display()));
        }
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Names in [`RUN_DIR`].
pub fn list() -> Vec<String> {
    fs::read_dir(RUN_DIR)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes a namespace left behind by a run that was killed (see
/// `lab::reap_stale`): kills what runs in it, unmounts, unlinks.
pub fn delete_stale(name: &str) -> Result<()> {
    let path = Path::new(RUN_DIR).join(name);
    if let Ok(file) = File::open(&path) {
        let ns = Netns {
            name: name.to_owned(),
            path,
            file,
        };
        drop(ns);
        Ok(())
    } else {
        remove(&path)
    }
}
