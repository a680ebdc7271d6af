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
        let dev = dev.to_owned();
        self.in_thread(move || ethtool_set(&dev, ETHTOOL_STXCSUM, 0))
    }

    /// `ethtool -K DEV gso off tso off tx off` inside the namespace (legacy
    /// ioctls, as above), then reads the three back and fails unless all are
    /// off. What the device transmits then has to be segmented and
    /// checksummed by the kernel in software first, as for a NIC without
    /// offloads.
    pub fn disable_tx_offloads(&self, dev: &str) -> Result<()> {
        let dev = dev.to_owned();
        self.in_thread(move || {
            // Checksum last: the kernel drops TSO by itself once it is off,
            // but GSO (software) stays until asked.
            for (set, get, what) in [
                (ETHTOOL_SGSO, ETHTOOL_GGSO, "gso"),
                (ETHTOOL_STSO, ETHTOOL_GTSO, "tso"),
                (ETHTOOL_STXCSUM, ETHTOOL_GTXCSUM, "tx-checksumming"),
            ] {
                ethtool_set(&dev, set, 0).with_context(|| format!("{what} off"))?;
                let now = ethtool_get(&dev, get).with_context(|| format!("reading {what}"))?;
                if now != 0 {
                    bail!("{what} of {dev} is still on after turning it off");
                }
            }
            Ok(())
        })
    }

    /// `ethtool -K DEV gro on` inside the namespace (legacy ioctl, read
    /// back). On a veth it also turns on NAPI on the receive side, so the
    /// frames its peer sends are merged (and their checksums verified) by
    /// GRO, as a NIC's driver does.
    pub fn enable_gro(&self, dev: &str) -> Result<()> {
        let dev = dev.to_owned();
        self.in_thread(move || {
            ethtool_set(&dev, ETHTOOL_SGRO, 1).context("gro on")?;
            if ethtool_get(&dev, ETHTOOL_GGRO).context("reading gro")? == 0 {
                bail!("gro of {dev} is still off after turning it on");
            }
            Ok(())
        })
    }

    /// Runs `f` on a thread that joined this namespace (for ioctls that act
    /// on the caller's namespace).
    fn in_thread(&self, f: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || -> Result<()> {
            let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: setns on this thread only, with an fd we own.
            if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            f()
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

const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_GTSO: u32 = 0x1e;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_GGSO: u32 = 0x23;
const ETHTOOL_SGSO: u32 = 0x24;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

/// A legacy `ETHTOOL_S*` command (one `ethtool_value`) on `dev` in the
/// calling thread's namespace.
fn ethtool_set(dev: &str, cmd: u32, data: u32) -> Result<()> {
    ethtool_value(dev, cmd, data).map(drop)
}

/// A legacy `ETHTOOL_G*` command: the value it reads.
fn ethtool_get(dev: &str, cmd: u32) -> Result<u32> {
    ethtool_value(dev, cmd, 0)
}

fn ethtool_value(dev: &str, cmd: u32, data: u32) -> Result<u32> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue { cmd, data };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().take(libc::IFNAMSIZ - 1).zip(dev.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&raw mut value).cast();
    let socket = std::net::UdpSocket::bind(("0.0.0.0", 0)).context("a socket for the ioctl")?;
    // SAFETY: SIOCETHTOOL reads the ifreq and the value it points to (and
    // for a G* command writes the value), both alive for the call.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&socket), SIOCETHTOOL, &mut ifr) };
    if rc < 0 {
        bail!("ethtool ioctl {cmd:#x} on {dev}: {}", std::io::Error::last_os_error());
    }
    Ok(value.data)
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
