//! The lab's fixed topology: three namespaces, two veth pairs, addresses and
//! routes, and the bookkeeping that removes it all again.

use std::cell::RefCell;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::netns::{self, Netns};
use crate::process::{self, Process};
use crate::wait::poll;

/// Addresses of the lab (the same in every lab: they live in its namespaces).
pub mod addr {
    use super::*;

    pub const APP_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
    pub const APP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
    /// The proxy's side towards `app`: where the SOCKS servers listen.
    pub const PROXY_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
    pub const PROXY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
    /// The proxy's side towards `srv`: the SOCKS servers' outgoing address.
    pub const PROXY_OUT_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
    pub const PROXY_OUT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 1);
    pub const SRV_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    pub const SRV_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 2);

    pub const fn proxy(v6: bool) -> IpAddr {
        if v6 { IpAddr::V6(PROXY_V6) } else { IpAddr::V4(PROXY_V4) }
    }

    pub const fn srv(v6: bool) -> IpAddr {
        if v6 { IpAddr::V6(SRV_V6) } else { IpAddr::V4(SRV_V4) }
    }
}

/// Well-known ports of the lab's servers.
pub mod port {
    /// dante-server, no authentication.
    pub const DANTE: u16 = 1080;
    /// microsocks, no authentication.
    pub const MICROSOCKS: u16 = 1081;
    /// microsocks with RFC 1929 username/password.
    pub const MICROSOCKS_AUTH: u16 = 1082;
    /// HTTP server in `srv` (python3 -m http.server, dual stack).
    pub const HTTP: u16 = 8080;
    /// `t2s-probe serve` in `srv`.
    pub const PROBE: u16 = 9000;
    /// A second `t2s-probe serve` port that dante's rules refuse to connect to.
    pub const PROBE_BLOCKED: u16 = 9001;
    /// Nothing listens here in `srv`: the kernel answers with a RST.
    pub const CLOSED: u16 = 82;
    /// iperf3 server in `srv`.
    pub const IPERF: u16 = 5201;
    /// `t2s-udp echo-server` in `srv` (UDP).
    pub const UDP_ECHO: u16 = 7000;
    /// `t2s-udp whoami-server`s in `srv` (UDP): they answer with the source
    /// endpoint they saw.
    pub const WHOAMI: u16 = 7001;
    pub const WHOAMI_2: u16 = 7002;
    /// dnsmasq in `srv` (UDP and TCP).
    pub const DNS: u16 = 53;
}

/// Namespace and temp-dir names start with this, then `-<pid>-<counter>`.
const PREFIX: &str = "t2s";

/// Where `ip netns exec NS` finds files it bind-mounts over `/etc/FILE`.
const NETNS_ETC: &str = "/etc/netns";

/// A running lab: `app` —veth— `proxy` —veth— `srv`, servers in them, logs in
/// a temp dir. Dropping it kills the servers and deletes the namespaces.
pub struct Lab {
    id: String,
    procs: RefCell<Vec<Process>>,
    app: Netns,
    proxy: Netns,
    srv: Netns,
    dir: TempDir,
    /// `/etc/netns/<ns>` dirs this lab created, removed on drop.
    etc_dirs: RefCell<Vec<PathBuf>>,
}

impl Lab {
    /// Builds the topology; servers are started separately (see `servers`).
    pub fn up() -> Result<Lab> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("the namespace lab needs root (it creates network namespaces)");
        }
        reap_stale();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}-{}-{n}", std::process::id());
        let dir = TempDir::create(&std::env::temp_dir().join(&id))?;

        let app = new_netns(&format!("{id}-app"))?;
        let proxy = new_netns(&format!("{id}-proxy"))?;
        let srv = new_netns(&format!("{id}-srv"))?;
        wire(&app, &proxy, &srv).with_context(|| format!("wiring lab {id}"))?;

        Ok(Lab {
            id,
            procs: RefCell::new(Vec::new()),
            app,
            proxy,
            srv,
            dir,
            etc_dirs: RefCell::new(Vec::new()),
        })
    }

    /// `t2s-<pid>-<counter>`: the prefix of this lab's namespace names.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn app(&self) -> &Netns {
        &self.app
    }

    pub fn proxy(&self) -> &Netns {
        &self.proxy
    }

    pub fn srv(&self) -> &Netns {
        &self.srv
    }

    /// The lab's temp dir: configs, served files, logs.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// A fresh log file path in the lab dir: `NAME.log`, `NAME.2.log`, ...
    pub fn log_path(&self, name: &str) -> PathBuf {
        (1..)
            .map(|i| match i {
                1 => self.dir().join(format!("{name}.log")),
                i => self.dir().join(format!("{name}.{i}.log")),
            })
            .find(|p| !p.exists())
            .expect("an unused log name")
    }

    /// Starts a server and waits (bounded) until it listens on every port.
    /// It runs until the lab is dropped.
    pub fn spawn_server(&self, name: &str, cmd: Command, ports: &[u16]) -> Result<()> {
        self.spawn_server_on(name, cmd, Proto::Tcp, ports)
    }

    /// [`Lab::spawn_server`] for a UDP server: waits until it has a UDP
    /// socket bound to every port.
    pub fn spawn_udp_server(&self, name: &str, cmd: Command, ports: &[u16]) -> Result<()> {
        self.spawn_server_on(name, cmd, Proto::Udp, ports)
    }

    fn spawn_server_on(&self, name: &str, cmd: Command, proto: Proto, ports: &[u16]) -> Result<()> {
        let server = self.spawn_listening(name, cmd, proto, ports)?;
        self.procs.borrow_mut().push(server);
        Ok(())
    }

    /// Like [`Lab::spawn_server`], but the caller owns the server: dropping
    /// the returned [`Process`] kills it (to stop or restart it mid-test).
    pub fn spawn_owned_server(&self, name: &str, cmd: Command, ports: &[u16]) -> Result<Process> {
        self.spawn_listening(name, cmd, Proto::Tcp, ports)
    }

    fn spawn_listening(&self, name: &str, cmd: Command, proto: Proto, ports: &[u16]) -> Result<Process> {
        let mut server = Process::spawn(name, cmd, &self.log_path(name))?;
        for &port in ports {
            let what = format!("{name} to listen on {proto:?} port {port}");
            poll(&what, Duration::from_secs(10), || {
                server.ensure_running()?;
                is_listening(server.pid(), proto, port)
            })
            .with_context(|| format!("log of {name}:\n{}", server.log()))?;
        }
        Ok(server)
    }

    /// Writes `/etc/netns/<ns>/<file>`, which `ip netns exec` bind-mounts over
    /// `/etc/<file>` for every program it starts in `ns` from then on (e.g.
    /// `hosts`, `resolv.conf`). Servers that must see it have to be started
    /// after it is written. The directory is removed with the lab.
    pub fn netns_etc_file(&self, ns: &Netns, file: &str, contents: &str) -> Result<()> {
        let dir = Path::new(NETNS_ETC).join(ns.name());
        if !self.etc_dirs.borrow().contains(&dir) {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            self.etc_dirs.borrow_mut().push(dir.clone());
        }
        let path = dir.join(file);
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
    }

    /// Runs a short command in `ns`, bounded by `timeout`.
    pub fn run_in(&self, ns: &Netns, program: &str, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut cmd = ns.command(program);
        cmd.args(args);
        process::output_within(cmd, timeout)
    }

    /// `curl URL` from `app`: the body, or an error with curl's message.
    pub fn curl(&self, url: &str) -> Result<String> {
        self.curl_via(None, url)
    }

    /// `curl [--proxy PROXY] URL` from `app` (no proxy from the environment).
    pub fn curl_via(&self, proxy: Option<&str>, url: &str) -> Result<String> {
        let mut cmd = self.app.command("curl");
        cmd.args(["--silent", "--show-error", "--fail", "--max-time", "10"]);
        match proxy {
            Some(proxy) => cmd.args(["--proxy", proxy]),
            None => cmd.args(["--noproxy", "*"]),
        };
        cmd.arg(url);
        for var in ["ALL_PROXY", "all_proxy", "http_proxy", "HTTPS_PROXY", "https_proxy"] {
            cmd.env_remove(var);
        }
        process::checked_output(cmd, Duration::from_secs(15)).with_context(|| match proxy {
            Some(proxy) => format!("curl --proxy {proxy} {url}"),
            None => format!("curl {url}"),
        })
    }

    /// Which namespaces' kernels dropped UDP datagrams, and why: their nonzero
    /// UDP error counters (`app: UdpRcvbufErrors=1`), or "none".
    pub fn udp_error_report(&self) -> String {
        udp_error_report(&[&self.app, &self.proxy, &self.srv])
    }

    /// Prints the tail of every log in the lab dir to stderr (shown by the test
    /// harness for failed tests).
    pub fn dump_logs(&self) {
        let Ok(entries) = fs::read_dir(self.dir()) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = process::read_lossy(&log);
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!("----- {} (last {} lines)", log.display(), tail.len());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        // Processes first: a namespace is only gone once nothing runs in it.
        self.procs.borrow_mut().clear();
        for dir in self.etc_dirs.borrow_mut().drain(..) {
            if let Err(e) = fs::remove_dir_all(&dir) {
                eprintln!("lab: cannot remove {}: {e}", dir.display());
            }
        }
        // Then the fields drop: namespaces are deleted, the temp dir removed.
    }
}

/// [`Lab::udp_error_report`] for the given namespaces of a lab (for callers
/// that hold only those, e.g. on other threads: a `Lab` is not `Sync`).
pub fn udp_error_report(namespaces: &[&Netns]) -> String {
    let mut parts = Vec::new();
    for ns in namespaces {
        let role = ns.name().rsplit('-').next().unwrap_or(ns.name());
        match ns.udp_errors() {
            Ok(errors) if errors.is_empty() => {}
            Ok(errors) => {
                let list: Vec<String> = errors.iter().map(|(n, v)| format!("{n}={v}")).collect();
                parts.push(format!("{role}: {}", list.join(" ")));
            }
            Err(e) => parts.push(format!("{role}: {e:#}")),
        }
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join("; ")
    }
}

fn new_netns(name: &str) -> Result<Netns> {
    let ns = Netns::create(name)?;
    // No duplicate address detection: addresses are usable at once, and the
    // link-local ones never flip from "tentative" (stable snapshots).
    ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    Ok(ns)
}

/// The veths, addresses and routes. Interface names are fixed: each lives
/// only inside its lab's namespaces.
fn wire(app: &Netns, proxy: &Netns, srv: &Netns) -> Result<()> {
    app.ip(&[
        "link",
        "add",
        "app0",
        "type",
        "veth",
        "peer",
        "name",
        "proxy0",
        "netns",
        proxy.name(),
    ])?;
    proxy.ip(&[
        "link",
        "add",
        "proxy1",
        "type",
        "veth",
        "peer",
        "name",
        "srv0",
        "netns",
        srv.name(),
    ])?;
    let addrs = [
        (app, "app0", "10.0.1.1/24"),
        (app, "app0", "fd00:1::1/64"),
        (proxy, "proxy0", "10.0.1.2/24"),
        (proxy, "proxy0", "fd00:1::2/64"),
        (proxy, "proxy1", "10.0.2.1/24"),
        (proxy, "proxy1", "fd00:2::1/64"),
        (srv, "srv0", "10.0.2.2/24"),
        (srv, "srv0", "fd00:2::2/64"),
    ];
    for (ns, dev, cidr) in addrs {
        if cidr.contains(':') {
            ns.ip(&["addr", "add", cidr, "dev", dev, "nodad"])?;
        } else {
            ns.ip(&["addr", "add", cidr, "dev", dev])?;
        }
    }
    let links = [(app, "app0"), (proxy, "proxy0"), (proxy, "proxy1"), (srv, "srv0")];
    for (ns, dev) in links {
        ns.ip(&["link", "set", dev, "up"])?;
    }
    // app's own defaults point at the proxy host; the tunnel's routes must win
    // over them for everything that is not directly connected.
    app.ip(&["route", "add", "default", "via", "10.0.1.2"])?;
    app.ip(&["-6", "route", "add", "default", "via", "fd00:1::2"])?;
    // srv is reachable from app only through a SOCKS server.
    proxy.sysctl("net.ipv4.ip_forward", "0")?;
    proxy.sysctl("net.ipv6.conf.all.forwarding", "0")?;

    for (ns, dev) in links {
        poll(&format!("{dev} to be up"), Duration::from_secs(5), || {
            let state = ns.ip(&["-br", "link", "show", "dev", dev])?;
            Ok(state.contains(" UP ").then_some(()))
        })?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Proto {
    Tcp,
    Udp,
}

/// Whether a process's network namespace has a TCP socket listening on `port`,
/// or a UDP socket bound to it (read from `/proc/PID/net/{tcp,udp}{,6}`, which
/// show the namespace of PID).
fn is_listening(pid: u32, proto: Proto, port: u16) -> Result<Option<()>> {
    // TCP_LISTEN; a bound, unconnected UDP socket shows TCP_CLOSE.
    let (tables, wanted) = match proto {
        Proto::Tcp => (["tcp", "tcp6"], "0A"),
        Proto::Udp => (["udp", "udp6"], "07"),
    };
    for table in tables {
        let path = format!("/proc/{pid}/net/{table}");
        let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            let local_port = local.rsplit(':').next().map(|p| u16::from_str_radix(p, 16));
            if *state == wanted && local_port == Some(Ok(port)) {
                return Ok(Some(()));
            }
        }
    }
    Ok(None)
}

/// Removes namespaces, temp dirs and `/etc/netns` dirs of labs whose
/// creating process is gone (a test run that was killed). Only names of the
/// lab's own pattern are touched: `t2s-<pid>-<n>[-app|-proxy|-srv|-lan]`
/// (`lan`: the client namespace that tests add behind `app`).
fn reap_stale() {
    let owner_is_gone = |name: &str| {
        let mut parts = name.split('-');
        let prefix_ok = parts.next() == Some(PREFIX);
        let pid = parts.next().and_then(|p| p.parse::<u32>().ok());
        let counter_ok = parts.next().is_some_and(|c| c.parse::<u32>().is_ok());
        let suffix_ok = match parts.next() {
            None => true,
            Some(role) => ["app", "proxy", "srv", "lan"].contains(&role) && parts.next().is_none(),
        };
        match pid {
            Some(pid) if prefix_ok && counter_ok && suffix_ok => !Path::new(&format!("/proc/{pid}")).exists(),
            _ => false,
        }
    };
    for name in netns::list().unwrap_or_default() {
        if owner_is_gone(&name) {
            eprintln!("lab: removing stale namespace {name}");
            drop(Netns::adopt(&name));
        }
    }
    // Temp dirs, and the /etc/netns/<ns> dirs of `Lab::netns_etc_file`.
    for parent in [std::env::temp_dir(), PathBuf::from(NETNS_ETC)] {
        let Ok(entries) = fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if owner_is_gone(&name) && entry.path().is_dir() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create(path: &Path) -> Result<Self> {
        fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path.to_owned()))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
