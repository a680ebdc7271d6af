//! The bare lab: the test lab's topology, built without iproute2 (named
//! namespaces of [`super::netns`], veths, addresses and routes over
//! rtnetlink, sysctls through `/proc/sys` inside the namespace), with the
//! project's own servers: `t2s-load socks-server` in `proxy` (no dante)
//! and `t2s-load serve` in `srv`.
//!
//! ```text
//!   app ──veth── proxy ──veth── srv
//!   10.0.1.1     10.0.1.2 | 10.0.2.1     10.0.2.2
//!   tun2socks    t2s-load socks-server :1080   t2s-load serve :9100
//!   t2s-load clients
//! ```

use std::fs;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use lab::process::Process;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::netns::{self, Netns};
use crate::bench::testbed::{Fields, result_line, wait_exit, wait_until};

/// Namespace names: `t2sb-<pid>-<role>`.
const PREFIX: &str = "t2sb";
pub const APP_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
pub const PROXY_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
pub const PROXY_OUT_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
pub const SRV_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const SOCKS_PORT: u16 = 1080;
pub const LOAD_PORT: u16 = 9100;

pub fn socks_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(PROXY_V4), SOCKS_PORT)
}

pub fn target() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(SRV_V4), LOAD_PORT)
}

/// The running lab; dropping it stops its processes and deletes its
/// namespaces (fields drop in order: processes first).
pub struct BareLab {
    servers: Vec<Process>,
    pub app: Netns,
    pub proxy: Netns,
    pub srv: Netns,
    load_tool: PathBuf,
    log_dir: PathBuf,
    socks_pid: u32,
}

impl BareLab {
    /// Builds the topology and starts the servers (`threads` runtime
    /// threads each).
    pub fn up(load_tool: &Path, log_dir: &Path, threads: usize) -> Result<BareLab> {
        reap_stale();
        let id = format!("{PREFIX}-{}", std::process::id());
        // Each namespace is deleted on drop, also if a later step fails.
        let app = Netns::create(&format!("{id}-app"))?;
        let proxy = Netns::create(&format!("{id}-proxy"))?;
        let srv = Netns::create(&format!("{id}-srv"))?;
        // A kernel booted with IPv6 off gets an IPv4-only lab (the
        // measurements use IPv4 only).
        let v6 = Path::new("/proc/sys/net/ipv6").is_dir();
        for ns in [&app, &proxy, &srv] {
            if v6 {
                ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
                ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
            }
            ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
            ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        }
        proxy.sysctl("net.ipv4.ip_forward", "0")?;
        if v6 {
            proxy.sysctl("net.ipv6.conf.all.forwarding", "0")?;
        }
        wire(&app, &proxy, &srv, v6).context("wiring the lab")?;
        let mut lab = BareLab {
            servers: Vec::new(),
            app,
            proxy,
            srv,
            load_tool: load_tool.to_owned(),
            log_dir: log_dir.to_owned(),
            socks_pid: 0,
        };
        let threads = threads.to_string();
        let mut socks = lab.proxy.command(load_tool);
        socks.args(["socks-server", "--listen", "0.0.0.0:1080", "--threads", &threads]);
        let socks = lab.spawn_listening("socks-server", socks, SOCKS_PORT)?;
        lab.socks_pid = socks.pid();
        lab.servers.push(socks);
        let mut serve = lab.srv.command(load_tool);
        serve.args(["serve", "--listen", "0.0.0.0:9100", "--threads", &threads]);
        let serve = lab.spawn_listening("load-server", serve, LOAD_PORT)?;
        lab.servers.push(serve);
        Ok(lab)
    }

    pub fn names(&self) -> String {
        format!("{}, {}, {}", self.app.name(), self.proxy.name(), self.srv.name())
    }

    /// A fresh log file in the log directory: `NAME.log`, `NAME.2.log`, ...
    pub fn log_path(&self, name: &str) -> PathBuf {
        (1..)
            .map(|i| match i {
                1 => self.log_dir.join(format!("{name}.log")),
                i => self.log_dir.join(format!("{name}.{i}.log")),
            })
            .find(|p| !p.exists())
            .expect("an unused log name")
    }

    fn spawn_listening(&self, name: &str, cmd: std::process::Command, port: u16) -> Result<Process> {
        let mut server = Process::spawn(name, cmd, &self.log_path(name))?;
        let mut check = || -> Result<bool> {
            server.ensure_running()?;
            is_listening(server.pid(), port)
        };
        wait_until(
            &format!("{name} to listen on port {port}"),
            Duration::from_secs(10),
            &mut check,
        )
        .with_context(|| format!("log of {name}:\n{}", server.log()))?;
        Ok(server)
    }

    /// The SOCKS server's pid (in `proxy`).
    pub fn socks_pid(&self) -> u32 {
        self.socks_pid
    }

    /// Runs `t2s-load ARGS...` in `app` to completion (at most `limit`) and
    /// returns the fields of its `kind` line.
    pub fn run_load(&self, kind: &str, args: &[String], limit: Duration) -> Result<Fields> {
        let mut cmd = self.app.command(&self.load_tool);
        cmd.args(args);
        let mut tool = Process::spawn("t2s-load", cmd, &self.log_path("load"))?;
        let shown = format!("t2s-load {}", args.join(" "));
        let status = wait_exit(&mut tool, limit).with_context(|| format!("{shown}\n{}", tool.log()))?;
        let log = tool.log();
        if !status.success() {
            bail!("{shown} failed ({status}):\n{}", log.trim_end());
        }
        let fields = result_line(&log, kind).with_context(|| format!("{shown} printed no `{kind}` line:\n{log}"))?;
        // One log file per run would pile up: only failures keep theirs.
        let _ = fs::remove_file(tool.log_path());
        Ok(fields)
    }

    /// Waits (20 s at most) until a short connection-rate run through
    /// `path_args` gets a connection through; `alive` fails if the
    /// implementation died meanwhile.
    pub fn wait_for_path(&self, path_args: &[String], mut alive: impl FnMut() -> Result<()>) -> Result<()> {
        let mut args = vec!["conn-rate".to_owned(), "--secs".into(), "0.2".into()];
        args.extend_from_slice(path_args);
        let mut last_error = None;
        wait_until("a connection through the path", Duration::from_secs(20), || {
            alive()?;
            match self.run_load("conn", &args, Duration::from_secs(15)) {
                Ok(f) if f.get("ok").copied().unwrap_or(0.0) >= 1.0 => Ok(true),
                Ok(f) => {
                    last_error = Some(anyhow::anyhow!("no connection succeeded: {f:?}"));
                    Ok(false)
                }
                Err(e) => {
                    last_error = Some(e);
                    Ok(false)
                }
            }
        })
        .with_context(|| format!("last attempt: {last_error:?}"))
    }

    /// Lets `proxy` forward between `app` and `srv` (the routed baseline)
    /// until the guard is dropped.
    pub fn routed(&self) -> Result<Routed<'_>> {
        let guard = Routed { lab: self };
        self.proxy.sysctl("net.ipv4.ip_forward", "1")?;
        self.srv.run(|| {
            netlink(|h| async move { route_v4(&h, true, Ipv4Addr::new(10, 0, 1, 0), 24, PROXY_OUT_V4).await })
        })?;
        Ok(guard)
    }
}

/// The routed baseline's forwarding; undone on drop.
pub struct Routed<'a> {
    lab: &'a BareLab,
}

impl Drop for Routed<'_> {
    fn drop(&mut self) {
        let _ = self.lab.srv.run(|| {
            netlink(|h| async move { route_v4(&h, false, Ipv4Addr::new(10, 0, 1, 0), 24, PROXY_OUT_V4).await })
        });
        if let Err(e) = self.lab.proxy.sysctl("net.ipv4.ip_forward", "0") {
            eprintln!("bench: cannot turn forwarding off again: {e:#}");
        }
    }
}

/// The veths, addresses (IPv6 ones if `v6`), routes; every link up.
fn wire(app: &Netns, proxy: &Netns, srv: &Netns, v6: bool) -> Result<()> {
    let (proxy_fd, srv_fd) = (proxy.fd(), srv.fd());
    app.run(|| {
        netlink(|h| async move {
            up(&h, "lo").await?;
            add_veth(&h, "app0", "proxy0", proxy_fd).await?;
            let dev = index(&h, "app0").await?;
            add_addr(&h, dev, IpAddr::V4(APP_V4), 24).await?;
            add_v6(&h, dev, v6, "fd00:1::1").await?;
            up(&h, "app0").await?;
            // app's own default routes point at the proxy host (the daemon's
            // routes win over them).
            route_v4(&h, true, Ipv4Addr::UNSPECIFIED, 0, PROXY_V4).await?;
            if !v6 {
                return Ok(());
            }
            let gw: Ipv6Addr = "fd00:1::2".parse()?;
            let route = RouteMessageBuilder::<Ipv6Addr>::new().gateway(gw).build();
            h.route()
                .add(route)
                .execute()
                .await
                .context("adding the IPv6 default route")
        })
    })?;
    proxy.run(|| {
        netlink(|h| async move {
            up(&h, "lo").await?;
            add_veth(&h, "proxy1", "srv0", srv_fd).await?;
            let to_app = index(&h, "proxy0").await?;
            add_addr(&h, to_app, IpAddr::V4(PROXY_V4), 24).await?;
            add_v6(&h, to_app, v6, "fd00:1::2").await?;
            let to_srv = index(&h, "proxy1").await?;
            add_addr(&h, to_srv, IpAddr::V4(PROXY_OUT_V4), 24).await?;
            add_v6(&h, to_srv, v6, "fd00:2::1").await?;
            up(&h, "proxy0").await?;
            up(&h, "proxy1").await
        })
    })?;
    srv.run(|| {
        netlink(|h| async move {
            up(&h, "lo").await?;
            let dev = index(&h, "srv0").await?;
            add_addr(&h, dev, IpAddr::V4(SRV_V4), 24).await?;
            add_v6(&h, dev, v6, "fd00:2::2").await?;
            up(&h, "srv0").await
        })
    })
}

/// Runs `f` with a route netlink handle of the calling thread's namespace
/// (on a runtime of its own).
fn netlink<T, Fut>(f: impl FnOnce(Handle) -> Fut) -> Result<T>
where
    Fut: Future<Output = Result<T>>,
{
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    rt.block_on(async {
        let (connection, handle, _) = rtnetlink::new_connection().context("opening route netlink")?;
        let driver = tokio::spawn(connection);
        let result = f(handle).await;
        driver.abort();
        result
    })
}

async fn index(h: &Handle, name: &str) -> Result<u32> {
    let msg = h
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
        .with_context(|| format!("looking up {name}"))?
        .with_context(|| format!("no device {name}"))?;
    Ok(msg.header.index)
}

async fn up(h: &Handle, name: &str) -> Result<()> {
    let msg = LinkUnspec::new_with_index(index(h, name).await?).up().build();
    h.link()
        .set(msg)
        .execute()
        .await
        .with_context(|| format!("setting {name} up"))
}

/// A veth pair `name` (here) / `peer` (in the namespace of `peer_ns`).
async fn add_veth(h: &Handle, name: &str, peer: &str, peer_ns: std::os::fd::RawFd) -> Result<()> {
    let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.to_owned())
        .setns_by_fd(peer_ns)
        .build();
    let msg = LinkVeth::new(name, peer)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .build();
    h.link()
        .add(msg)
        .execute()
        .await
        .with_context(|| format!("creating veth {name} / {peer}"))
}

async fn add_addr(h: &Handle, index: u32, ip: IpAddr, prefix: u8) -> Result<()> {
    let mut request = h.address().add(index, ip, prefix);
    if ip.is_ipv6() {
        // Usable at once: no duplicate address detection.
        let msg = request.message_mut();
        msg.header.flags = AddressHeaderFlags::Nodad;
        msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    request.execute().await.with_context(|| format!("adding {ip}/{prefix}"))
}

/// Adds `ip`/64 if `v6`.
async fn add_v6(h: &Handle, index: u32, v6: bool, ip: &str) -> Result<()> {
    if v6 {
        add_addr(h, index, ip.parse()?, 64).await?;
    }
    Ok(())
}

/// Adds (or deletes) the IPv4 route `dest/prefix via gateway` in main.
async fn route_v4(h: &Handle, add: bool, dest: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> Result<()> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dest, prefix)
        .gateway(gateway)
        .build();
    let what = format!("route {dest}/{prefix} via {gateway}");
    if add {
        h.route()
            .add(msg)
            .execute()
            .await
            .with_context(|| format!("adding {what}"))
    } else {
        h.route()
            .del(msg)
            .execute()
            .await
            .with_context(|| format!("deleting {what}"))
    }
}

/// Whether the process's namespace has a TCP socket listening on `port`.
fn is_listening(pid: u32, port: u16) -> Result<bool> {
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        let text = match fs::read_to_string(&path) {
            // No tcp6 without IPv6.
            Err(e) if table == "tcp6" && e.kind() == std::io::ErrorKind::NotFound => continue,
            other => other.with_context(|| format!("reading {path}"))?,
        };
        let found = text.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1).and_then(|l| l.rsplit(':').next());
            fields.get(3) == Some(&"0A") && local_port.and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
        });
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Deletes namespaces of bare labs whose creating process is gone (a run
/// that was killed). Only names of this pattern are touched:
/// `t2sb-<pid>-{app,proxy,srv}`.
fn reap_stale() {
    for name in netns::list() {
        let parts: Vec<&str> = name.split('-').collect();
        let [prefix, pid, role] = parts[..] else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if prefix == PREFIX && ["app", "proxy", "srv"].contains(&role) && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("bench: removing stale namespace {name}");
            if let Err(e) = netns::delete_stale(&name) {
                eprintln!("bench: {e:#}");
            }
        }
    }
}
