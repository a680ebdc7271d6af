//! Named network namespaces, created and removed with iproute2.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// A named network namespace (`/run/netns/NAME`) that is deleted on drop.
///
/// Processes started in it must be gone before it is dropped: the [`crate::Lab`]
/// kills its processes first.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub fn create(name: &str) -> Result<Self> {
        ip(&["netns", "add", name]).with_context(|| format!("creating namespace {name}"))?;
        let ns = Netns { name: name.to_owned() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Takes ownership of an existing namespace: it is deleted on drop.
    pub fn adopt(name: &str) -> Self {
        Netns { name: name.to_owned() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS...` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Sets a sysctl inside the namespace (`KEY=VALUE`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let status = self
            .command("sysctl")
            .args(["-q", "-w", &format!("{key}={value}")])
            .stdin(Stdio::null())
            .status()
            .context("running sysctl")?;
        if !status.success() {
            bail!("sysctl {key}={value} in {} failed: {status}", self.name);
        }
        Ok(())
    }

    /// `ethtool -K DEV tx off` inside the namespace, without ethtool (the
    /// legacy `ETHTOOL_STXCSUM` ioctl, from a thread that joined the
    /// namespace). A veth standing in for a wire needs it: with offload on,
    /// its frames carry partial checksums that a real wire never would.
    pub fn disable_tx_checksum_offload(&self, dev: &str) -> Result<()> {
        let path = format!("/run/netns/{}", self.name);
        let dev = dev.to_owned();
        std::thread::spawn(move || -> Result<()> {
            let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: setns on this thread only, with an fd we own.
            if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            ethtool_tx_off(&dev)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the ethtool thread panicked"))?
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    ///
    /// `ip netns exec` execs the program in place, so the child's pid is the
    /// program's own.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// The kernel's nonzero UDP error counters in this namespace
    /// (`/proc/net/snmp` and `snmp6`: receive-buffer overflows, no port, ...),
    /// as `Name=value` pairs. Tells which hop dropped a datagram.
    pub fn udp_errors(&self) -> Result<Vec<(String, u64)>> {
        let out = self
            .command("cat")
            .args(["/proc/net/snmp", "/proc/net/snmp6"])
            .stdin(Stdio::null())
            .output()
            .context("reading /proc/net/snmp")?;
        Ok(udp_errors(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Pids of the processes running in the namespace.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let out = ip(&["netns", "pids", &self.name])?;
        Ok(out.split_whitespace().filter_map(|p| p.parse().ok()).collect())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Anything still inside (a leaked grandchild) would keep the
        // namespace's devices alive after the name is gone.
        for pid in self.pids().unwrap_or_default() {
            // SAFETY: plain kill(2) on a pid that lives in our namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("lab: cannot delete namespace {}: {e:#}", self.name);
        }
    }
}

/// Runs `ip ARGS...`, failing with its stderr if it fails.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The nonzero error counters of UDP (`Udp:` header/value line pairs of
/// `snmp`) and UDPv6 (`Udp6...` lines of `snmp6`).
fn udp_errors(text: &str) -> Vec<(String, u64)> {
    let mut counters = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.windows(2) {
        let (Some(names), Some(values)) = (pair[0].strip_prefix("Udp: "), pair[1].strip_prefix("Udp: ")) else {
            continue;
        };
        if names
            .split_whitespace()
            .next()
            .is_some_and(|n| n.parse::<u64>().is_err())
        {
            counters.extend(
                names
                    .split_whitespace()
                    .zip(values.split_whitespace())
                    .map(|(n, v)| (format!("Udp{n}"), v)),
            );
        }
    }
    for line in &lines {
        if let Some((name, value)) = line.split_once(char::is_whitespace)
            && name.starts_with("Udp6")
        {
            counters.push((name.to_owned(), value.trim()));
        }
    }
    counters
        .into_iter()
        .filter(|(name, _)| name.contains("Errors") || name.contains("NoPorts"))
        .filter_map(|(name, value)| Some((name, value.parse().ok()?)))
        .filter(|&(_, value)| value > 0)
        .collect()
}

/// Names of all named namespaces on the machine.
pub fn list() -> Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// `ETHTOOL_STXCSUM` with 0 on `dev` in the calling thread's namespace.
fn ethtool_tx_off(dev: &str) -> Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().take(libc::IFNAMSIZ - 1).zip(dev.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&raw mut value).cast();
    let socket = std::net::UdpSocket::bind(("0.0.0.0", 0)).context("a socket for the ioctl")?;
    // SAFETY: SIOCETHTOOL reads the ifreq and the value it points to, both
    // alive for the call.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&socket), SIOCETHTOOL, &mut ifr) };
    if rc < 0 {
        bail!("ethtool -K {dev} tx off: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_errors_of_both_families() {
        let text = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\nUdp: 10 0 3 9 3\n\
                    UdpLite: InDatagrams NoPorts\nUdpLite: 0 5\nUdp6InDatagrams   4\nUdp6RcvbufErrors \t2\n";
        let errors = udp_errors(text);
        assert_eq!(
            errors,
            [
                ("UdpInErrors".into(), 3),
                ("UdpRcvbufErrors".into(), 3),
                ("Udp6RcvbufErrors".into(), 2)
            ]
        );
    }
}
