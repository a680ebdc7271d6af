//! Upstream proxies: parsing `--proxy` URLs and opening relayed connections
//! over sockets that carry the daemon's firewall mark (so they never re-enter
//! the tunnel).

pub mod socks5;

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

pub use socks5::{Credentials, Target};

/// A parsed `--proxy` URL, before the host name is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    pub host: String,
    pub port: u16,
    pub credentials: Option<Credentials>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyUrlError {
    #[error("unsupported proxy scheme {0:?} (supported: socks5://)")]
    Scheme(String),
    #[error("proxy URL must look like socks5://[USER:PASS@]HOST:PORT")]
    Shape,
    #[error("proxy URL has no port (socks5://HOST:PORT)")]
    MissingPort,
    #[error("proxy port {0:?} is not a number from 1 to 65535")]
    BadPort(String),
    #[error("proxy URL credentials must be USER:PASS")]
    BadCredentials,
    #[error("bad percent-encoding in proxy URL credentials")]
    BadPercentEncoding,
}

impl std::str::FromStr for ProxyUrl {
    type Err = ProxyUrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = url.split_once("://").ok_or(ProxyUrlError::Shape)?;
        if !scheme.eq_ignore_ascii_case("socks5") {
            return Err(ProxyUrlError::Scheme(scheme.to_string()));
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.is_empty() {
            return Err(ProxyUrlError::Shape);
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let credentials = userinfo.map(parse_userinfo).transpose()?;
        let (host, port) = split_host_port(hostport)?;
        Ok(ProxyUrl { host, port, credentials })
    }
}

fn parse_userinfo(userinfo: &str) -> Result<Credentials, ProxyUrlError> {
    let (user, pass) = userinfo.split_once(':').ok_or(ProxyUrlError::BadCredentials)?;
    Ok(Credentials { username: percent_decode(user)?, password: percent_decode(pass)? })
}

fn split_host_port(hostport: &str) -> Result<(String, u16), ProxyUrlError> {
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or(ProxyUrlError::Shape)?;
        let port = after.strip_prefix(':').ok_or(ProxyUrlError::MissingPort)?;
        (host, port)
    } else {
        let (host, port) = hostport.rsplit_once(':').ok_or(ProxyUrlError::MissingPort)?;
        if host.contains(':') {
            // A bare IPv6 address: brackets are required to find the port.
            return Err(ProxyUrlError::Shape);
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(ProxyUrlError::Shape);
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok((host.to_string(), p)),
        _ => Err(ProxyUrlError::BadPort(port.to_string())),
    }
}

fn percent_decode(s: &str) -> Result<String, ProxyUrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or(ProxyUrlError::BadPercentEncoding)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ProxyUrlError::BadPercentEncoding)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ProxyUrlError::BadPercentEncoding)
}

impl ProxyUrl {
    /// Resolves the host once, at start, before routes point into the tunnel.
    pub fn resolve(&self) -> io::Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "name resolved to no address"))
    }

    /// The URL for logs, with the password masked.
    pub fn redacted(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        match &self.credentials {
            Some(c) => format!("socks5://{}:***@{}:{}", c.username, host, self.port),
            None => format!("socks5://{}:{}", host, self.port),
        }
    }
}

/// Everything a worker needs to open upstream connections. Cheap to clone:
/// each worker gets its own copy, nothing is shared at run time.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub proxy: SocketAddr,
    pub credentials: Option<Credentials>,
    pub fwmark: u32,
    pub connect_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to the proxy {proxy}: {source}")]
    Connect { proxy: SocketAddr, source: io::Error },
    #[error("setting SO_MARK on an upstream socket: {0} (CAP_NET_ADMIN is needed)")]
    Mark(io::Error),
    #[error("proxy handshake for {target}: {source}")]
    Handshake { target: Target, source: socks5::Socks5Error },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("UDP association socket: {0}")]
    Udp(io::Error),
    #[error("proxy named a relay we cannot send to: {0}")]
    BadRelay(Target),
}

/// A SOCKS5 UDP association: datagrams go through `socket` (connected to the
/// proxy's relay); the association ends when `control` closes.
#[derive(Debug)]
pub struct UdpAssociation {
    pub control: TcpStream,
    pub socket: UdpSocket,
}

impl Upstream {
    /// Connects to the proxy and asks it for `target`, all within the
    /// connect timeout.
    pub async fn connect(&self, target: &Target) -> Result<TcpStream, UpstreamError> {
        let attempt = async {
            let mut stream = self.connect_proxy().await?;
            socks5::connect(&mut stream, target, self.credentials.as_ref())
                .await
                .map_err(|source| UpstreamError::Handshake { target: target.clone(), source })?;
            Ok(stream)
        };
        tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| UpstreamError::Timeout(self.connect_timeout))?
    }

    /// Opens a UDP association, within the connect timeout.
    pub async fn associate(&self) -> Result<UdpAssociation, UpstreamError> {
        let attempt = async {
            let mut control = self.connect_proxy().await?;
            // Send from the address the proxy already sees us at, and tell it
            // which port, so a strict proxy can match our datagrams.
            let local = control.local_addr().map_err(UpstreamError::Udp)?;
            let socket = marked_udp_socket(SocketAddr::new(local.ip(), 0), self.fwmark)?;
            let from = socket.local_addr().map_err(UpstreamError::Udp)?;
            let relay = socks5::associate(&mut control, from, self.credentials.as_ref())
                .await
                .map_err(|source| UpstreamError::Handshake { target: Target::Ip(from), source })?;
            let relay = match relay {
                // "Same host as the control connection" in practice.
                Target::Ip(addr) if addr.ip().is_unspecified() => SocketAddr::new(self.proxy.ip(), addr.port()),
                Target::Ip(addr) => addr,
                other => return Err(UpstreamError::BadRelay(other)),
            };
            socket.connect(relay).await.map_err(UpstreamError::Udp)?;
            Ok(UdpAssociation { control, socket })
        };
        tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| UpstreamError::Timeout(self.connect_timeout))?
    }

    /// A TCP connection to the proxy itself, marked and with Nagle off.
    pub async fn connect_proxy(&self) -> Result<TcpStream, UpstreamError> {
        let socket = marked_socket(self.proxy, self.fwmark)?;
        let stream = socket
            .connect(self.proxy)
            .await
            .map_err(|source| UpstreamError::Connect { proxy: self.proxy, source })?;
        // Relayed segments are already coalesced by the application side;
        // Nagle would only add delay.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

fn marked_socket(peer: SocketAddr, fwmark: u32) -> Result<TcpSocket, UpstreamError> {
    let socket = Socket::new(Domain::for_address(peer), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))
        .map_err(|source| UpstreamError::Connect { proxy: peer, source })?;
    if fwmark != 0 {
        socket.set_mark(fwmark).map_err(UpstreamError::Mark)?;
    }
    Ok(TcpSocket::from_std_stream(socket.into()))
}

fn marked_udp_socket(bind: SocketAddr, fwmark: u32) -> Result<UdpSocket, UpstreamError> {
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM.nonblocking().cloexec(), Some(Protocol::UDP))
        .map_err(UpstreamError::Udp)?;
    if fwmark != 0 {
        socket.set_mark(fwmark).map_err(UpstreamError::Mark)?;
    }
    socket.bind(&bind.into()).map_err(UpstreamError::Udp)?;
    UdpSocket::from_std(socket.into()).map_err(UpstreamError::Udp)
}

/// Makes the next close of `stream` send a RST instead of a FIN, so an
/// application's reset reaches the far end as a reset.
pub fn reset_on_close(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proxy_urls() {
        let p: ProxyUrl = "socks5://10.0.1.2:1080".parse().unwrap();
        assert_eq!((p.host.as_str(), p.port, p.credentials), ("10.0.1.2", 1080, None));
        let p: ProxyUrl = "socks5://user:p%40ss@[fd00:1::2]:1080/".parse().unwrap();
        assert_eq!(p.host, "fd00:1::2");
        assert_eq!(p.credentials.as_ref().unwrap().password, "p@ss");
        assert_eq!(p.redacted(), "socks5://user:***@[fd00:1::2]:1080");
        let p: ProxyUrl = "SOCKS5://proxy.example:1080".parse().unwrap();
        assert_eq!(p.host, "proxy.example");
    }

    #[test]
    fn rejects_bad_proxy_urls() {
        let err = |s: &str| s.parse::<ProxyUrl>().unwrap_err();
        assert_eq!(err("http://1.2.3.4:80"), ProxyUrlError::Scheme("http".into()));
        assert_eq!(err("1.2.3.4:1080"), ProxyUrlError::Shape);
        assert_eq!(err("socks5://1.2.3.4"), ProxyUrlError::MissingPort);
        assert_eq!(err("socks5://1.2.3.4:0"), ProxyUrlError::BadPort("0".into()));
        assert_eq!(err("socks5://1.2.3.4:99999"), ProxyUrlError::BadPort("99999".into()));
        assert_eq!(err("socks5://fd00::1:1080"), ProxyUrlError::Shape);
        assert_eq!(err("socks5://user@1.2.3.4:1080"), ProxyUrlError::BadCredentials);
        assert_eq!(err("socks5://u:%zz@1.2.3.4:1080"), ProxyUrlError::BadPercentEncoding);
        assert_eq!(err("socks5://:1080"), ProxyUrlError::Shape);
    }
}
