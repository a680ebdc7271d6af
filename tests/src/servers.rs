//! The lab's servers: SOCKS5 servers in `proxy`, application servers in `srv`.
//! Each runs until the lab is dropped; its output is in `<lab dir>/<name>.log`.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::{Context, Result};

use crate::Lab;
use crate::topology::{addr, port};

/// Credentials the authenticating microsocks accepts.
pub const MICROSOCKS_USER: &str = "t2s";
pub const MICROSOCKS_PASS: &str = "s3cret-pass";

/// The file the HTTP server in `srv` serves.
pub const HELLO_PATH: &str = "/hello.txt";

/// `socks5://[USER:PASS@]HOST:PORT` for the daemon's `--proxy`.
pub fn socks_url(host: IpAddr, port: u16, auth: Option<(&str, &str)>) -> String {
    let auth = auth.map(|(u, p)| format!("{u}:{p}@")).unwrap_or_default();
    match host {
        IpAddr::V4(ip) => format!("socks5://{auth}{ip}:{port}"),
        IpAddr::V6(ip) => format!("socks5://{auth}[{ip}]:{port}"),
    }
}

/// dante-server's URL, reached over IPv4 or IPv6.
pub fn dante_url(v6: bool) -> String {
    socks_url(addr::proxy(v6), port::DANTE, None)
}

/// The unauthenticated microsocks' URL.
pub fn microsocks_url(v6: bool) -> String {
    socks_url(addr::proxy(v6), port::MICROSOCKS, None)
}

/// The authenticating microsocks' URL with the given credentials.
pub fn microsocks_auth_url(user: &str, pass: &str) -> String {
    socks_url(addr::proxy(false), port::MICROSOCKS_AUTH, Some((user, pass)))
}

/// `http://HOST:8080/hello.txt` in `srv`.
pub fn hello_url(v6: bool) -> String {
    match addr::srv(v6) {
        IpAddr::V4(ip) => format!("http://{ip}:{}{HELLO_PATH}", port::HTTP),
        IpAddr::V6(ip) => format!("http://[{ip}]:{}{HELLO_PATH}", port::HTTP),
    }
}

/// Receive buffers for dante's UDP relay sockets. dante relays a whole
/// association in one process, and with the default buffer (208 KiB, about a
/// dozen 9000-byte datagrams by truesize) a few milliseconds of scheduling
/// delay on a loaded two-core machine overflowed it (`UdpRcvbufErrors` in the
/// proxy namespace). The kernel caps this at `net.core.rmem_max`.
const UDP_BUFFERS: &str = "internal.socket.so_rcvbuf: 4194304\n  external.socket.so_rcvbuf: 4194304";

impl Lab {
    /// dante-server on 10.0.1.2 and fd00:1::2 port 1080, no authentication,
    /// going out from 10.0.2.1 / fd00:2::1. It refuses connections to
    /// `srv` port [`port::PROBE_BLOCKED`] by rule (SOCKS reply "not allowed").
    pub fn start_dante(&self) -> Result<()> {
        let conf = self.dir().join("danted.conf");
        let blocked = port::PROBE_BLOCKED;
        let text = format!(
            "\
logoutput: stderr
internal: {proxy4} port = {dante}
internal: {proxy6} port = {dante}
external: {out4}
external: {out6}
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{ from: 0/0 to: 0/0 log: error }}
socks block {{ from: 0/0 to: {srv4}/32 port = {blocked} log: connect error }}
socks block {{ from: 0/0 to: {srv6}/128 port = {blocked} log: connect error }}
socks pass {{
  from: 0/0 to: 0/0 log: error
  command: udpassociate udpreply
  {udp_buffers}
}}
socks pass {{ from: 0/0 to: 0/0 log: error }}
",
            udp_buffers = UDP_BUFFERS,
            proxy4 = addr::PROXY_V4,
            proxy6 = addr::PROXY_V6,
            dante = port::DANTE,
            out4 = addr::PROXY_OUT_V4,
            out6 = addr::PROXY_OUT_V6,
            srv4 = addr::SRV_V4,
            srv6 = addr::SRV_V6,
        );
        fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
        let pid_file = self.dir().join("danted.pid");
        let mut cmd = self.proxy().command("danted");
        // Without -D danted stays in the foreground.
        cmd.arg("-f").arg(&conf).arg("-p").arg(&pid_file);
        self.spawn_server("danted", cmd, &[port::DANTE])
    }

    /// microsocks on port 1081 (no authentication) and 1082 (username/password
    /// [`MICROSOCKS_USER`] / [`MICROSOCKS_PASS`]), both on `::` (dual stack).
    pub fn start_microsocks(&self) -> Result<()> {
        let mut open = self.proxy().command("microsocks");
        open.args(["-i", "::", "-p", &port::MICROSOCKS.to_string()]);
        self.spawn_server("microsocks", open, &[port::MICROSOCKS])?;

        let mut auth = self.proxy().command("microsocks");
        auth.args(["-i", "::", "-p", &port::MICROSOCKS_AUTH.to_string()]).args([
            "-u",
            MICROSOCKS_USER,
            "-P",
            MICROSOCKS_PASS,
        ]);
        self.spawn_server("microsocks-auth", auth, &[port::MICROSOCKS_AUTH])
    }

    /// python3's HTTP server in `srv` on `[::]:8080` (dual stack), serving
    /// [`HELLO_PATH`] with [`Lab::hello_body`].
    pub fn start_http(&self) -> Result<()> {
        let root = self.dir().join("www");
        fs::create_dir_all(&root)?;
        fs::write(root.join(HELLO_PATH.trim_start_matches('/')), self.hello_body())?;
        let mut cmd = self.srv().command("python3");
        cmd.args(["-m", "http.server", "--bind", "::", "--directory"])
            .arg(&root)
            .arg(port::HTTP.to_string());
        self.spawn_server("http", cmd, &[port::HTTP])
    }

    /// The body of [`HELLO_PATH`]: names the lab, so a stray server elsewhere
    /// cannot pass for ours.
    pub fn hello_body(&self) -> String {
        format!("hello from srv of lab {}\n", self.id())
    }

    /// `t2s-probe serve` in `srv` on ports [`port::PROBE`] and
    /// [`port::PROBE_BLOCKED`], dual stack.
    pub fn start_probe_server(&self, probe: &Path) -> Result<()> {
        let mut cmd = self.srv().command(&probe.to_string_lossy());
        cmd.arg("serve")
            .args(["--listen", &format!("[::]:{}", port::PROBE)])
            .args(["--listen", &format!("[::]:{}", port::PROBE_BLOCKED)]);
        self.spawn_server("probe-server", cmd, &[port::PROBE, port::PROBE_BLOCKED])
    }

    /// iperf3 server in `srv` (dual stack).
    pub fn start_iperf3(&self) -> Result<()> {
        let mut cmd = self.srv().command("iperf3");
        cmd.args(["--server", "--port", &port::IPERF.to_string()]);
        self.spawn_server("iperf3", cmd, &[port::IPERF])
    }
}

/// Names dnsmasq in `srv` knows: `www.example.test` and its addresses.
pub const DNS_NAME: &str = "www.example.test";
pub const DNS_NAME_V4: &str = "10.0.2.77";
pub const DNS_NAME_V6: &str = "fd00:2::77";
/// The TXT record dnsmasq serves for [`DNS_NAME`].
pub const DNS_NAME_TXT: &str = "t2s-txt-record";

impl Lab {
    /// `t2s-udp echo-server` in `srv` on [`port::UDP_ECHO`] of `srv`'s
    /// addresses. Bound to each address rather than to `[::]`: a wildcard
    /// socket replies from the address the kernel picks, not the one the
    /// request went to, and a relay with a connected socket (dante) drops
    /// such replies once `srv` has a second address.
    pub fn start_udp_echo(&self, t2s_udp: &Path) -> Result<()> {
        let mut cmd = self.srv().command(&t2s_udp.to_string_lossy());
        cmd.arg("echo-server");
        for v6 in [false, true] {
            cmd.args(["--listen", &SocketAddr::new(addr::srv(v6), port::UDP_ECHO).to_string()]);
        }
        self.spawn_udp_server("udp-echo", cmd, &[port::UDP_ECHO])
    }

    /// `t2s-udp whoami-server` in `srv` on the given addresses (which must be
    /// `srv`'s; see [`Lab::start_udp_echo`] for why not a wildcard).
    pub fn start_whoami(&self, t2s_udp: &Path, listen: &[SocketAddr]) -> Result<()> {
        let mut cmd = self.srv().command(&t2s_udp.to_string_lossy());
        cmd.arg("whoami-server");
        for addr in listen {
            cmd.args(["--listen", &addr.to_string()]);
        }
        let mut ports: Vec<u16> = listen.iter().map(SocketAddr::port).collect();
        ports.sort_unstable();
        ports.dedup();
        self.spawn_udp_server("whoami", cmd, &ports)
    }

    /// dnsmasq in `srv` on 10.0.2.2 and fd00:2::2 port 53 (UDP and TCP),
    /// answering from a hosts file only: [`DNS_NAME`] is [`DNS_NAME_V4`] and
    /// [`DNS_NAME_V6`], with TXT [`DNS_NAME_TXT`]. It logs every query.
    pub fn start_dnsmasq(&self) -> Result<()> {
        let hosts = self.dir().join("dnsmasq.hosts");
        fs::write(&hosts, format!("{DNS_NAME_V4} {DNS_NAME}\n{DNS_NAME_V6} {DNS_NAME}\n"))
            .with_context(|| format!("writing {}", hosts.display()))?;
        let mut cmd = self.srv().command("dnsmasq");
        cmd.args([
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--log-queries",
        ])
        .args(["--log-facility=-", "--user=root", "--group=root"])
        .arg(format!("--addn-hosts={}", hosts.display()))
        .arg(format!("--pid-file={}", self.dir().join("dnsmasq.pid").display()))
        .arg(format!("--listen-address={},{}", addr::SRV_V4, addr::SRV_V6))
        .arg(format!("--port={}", port::DNS))
        .arg(format!("--txt-record={DNS_NAME},{DNS_NAME_TXT}"));
        self.spawn_server("dnsmasq", cmd, &[port::DNS])
    }
}
