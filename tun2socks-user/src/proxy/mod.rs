//! Upstream proxies: parsing `--proxy` URLs and opening relayed connections
//! over sockets that carry the daemon's firewall mark (so they never re-enter
//! the tunnel).

pub mod http;
pub mod socks5;

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

pub use socks5::{Credentials, Target};

/// Which protocol the upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    Socks5,
    /// HTTP CONNECT: TCP only.
    Http,
    /// No proxy: the daemon connects itself (sockets still marked).
    Direct,
}

impl ProxyKind {
    pub fn scheme(self) -> &'static str {
        match self {
            ProxyKind::Socks5 => "socks5",
            ProxyKind::Http => "http",
            ProxyKind::Direct => "direct",
        }
    }

    pub fn carries_udp(self) -> bool {
        self != ProxyKind::Http
    }
}

/// A parsed `--proxy` URL, before the host name is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    pub kind: ProxyKind,
    /// Empty for `direct://`.
    pub host: String,
    pub port: u16,
    pub credentials: Option<Credentials>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyUrlError {
    #[error("unsupported proxy scheme {0:?} (supported: socks5://, http://, direct://)")]
    Scheme(String),
    #[error("proxy URL must look like socks5://[USER:PASS@]HOST:PORT, http://[USER:PASS@]HOST:PORT or direct://")]
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
        let kind = [ProxyKind::Socks5, ProxyKind::Http, ProxyKind::Direct]
            .into_iter()
            .find(|k| scheme.eq_ignore_ascii_case(k.scheme()))
            .ok_or_else(|| ProxyUrlError::Scheme(scheme.to_string()))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if kind == ProxyKind::Direct {
            return match rest {
                "" => Ok(ProxyUrl {
                    kind,
                    host: String::new(),
                    port: 0,
                    credentials: None,
                }),
                _ => Err(ProxyUrlError::Shape),
            };
        }
        if rest.contains('/') || rest.is_empty() {
            return Err(ProxyUrlError::Shape);
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let credentials = userinfo.map(parse_userinfo).transpose()?;
        let (host, port) = split_host_port(hostport)?;
        Ok(ProxyUrl {
            kind,
            host,
            port,
            credentials,
        })
    }
}

fn parse_userinfo(userinfo: &str) -> Result<Credentials, ProxyUrlError> {
    let (user, pass) = userinfo.split_once(':').ok_or(ProxyUrlError::BadCredentials)?;
    Ok(Credentials {
        username: percent_decode(user)?,
        password: percent_decode(pass)?,
    })
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
    /// `None` for `direct://`.
    pub fn resolve(&self) -> io::Result<Option<SocketAddr>> {
        if self.kind == ProxyKind::Direct {
            return Ok(None);
        }
        (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .map(Some)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "name resolved to no address"))
    }

    /// The URL for logs, with the password masked.
    pub fn redacted(&self) -> String {
        let scheme = self.kind.scheme();
        if self.kind == ProxyKind::Direct {
            return "direct://".to_string();
        }
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match &self.credentials {
            Some(c) => format!("{scheme}://{}:***@{}:{}", c.username, host, self.port),
            None => format!("{scheme}://{}:{}", host, self.port),
        }
    }
}

/// Everything a worker needs to open upstream connections. Cheap to clone:
/// each worker gets its own copy, nothing is shared at run time.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub kind: ProxyKind,
    /// The proxy's address; unused for `direct://`.
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
    Handshake {
        target: Target,
        source: socks5::Socks5Error,
    },
    #[error("HTTP CONNECT to {target}: {source}")]
    HttpConnect {
        target: Target,
        source: http::HttpConnectError,
    },
    #[error("connecting to {target}: {source}")]
    Direct { target: Target, source: io::Error },
    #[error("an HTTP CONNECT proxy carries no UDP")]
    UdpUnsupported,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("UDP association socket: {0}")]
    Udp(io::Error),
    #[error("proxy named a relay we cannot send to: {0}")]
    BadRelay(Target),
}

/// How datagrams are carried upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpFraming {
    /// Each datagram behind a SOCKS5 UDP header, to the relay the socket is
    /// connected to.
    Socks5,
    /// Plain datagrams sent to each destination (`direct://`).
    Plain,
}

/// A UDP path upstream: for SOCKS5 an association, which ends when `control`
/// closes; for `direct://` just a marked socket.
#[derive(Debug)]
pub struct UdpAssociation {
    pub control: Option<TcpStream>,
    pub socket: UdpSocket,
    pub framing: UdpFraming,
}

/// How long the pipelining probe waits for the proxy's answer. A proxy that
/// reads pipelined requests answers a UDP ASSOCIATE at once; one that does
/// not never answers.
const PROBE_WAIT: Duration = Duration::from_secs(3);

impl Upstream {
    /// Connects to the proxy and asks it for `target`, all within the
    /// connect timeout.
    pub async fn connect(&self, target: &Target) -> Result<TcpStream, UpstreamError> {
        self.connect_with(target, false).await
    }

    /// [`Upstream::connect`]; `pipelined` sends the SOCKS5 request without
    /// waiting for the proxy's method choice (or authentication status),
    /// one round trip fewer, for a proxy that [`Upstream::probe_pipelining`]
    /// found to take it. Ignored for other proxy kinds.
    pub async fn connect_with(&self, target: &Target, pipelined: bool) -> Result<TcpStream, UpstreamError> {
        let attempt = async {
            match self.kind {
                ProxyKind::Socks5 => {
                    let mut stream = self.connect_proxy().await?;
                    socks5::connect_with(&mut stream, target, self.credentials.as_ref(), pipelined)
                        .await
                        .map_err(|source| UpstreamError::Handshake {
                            target: target.clone(),
                            source,
                        })?;
                    Ok(stream)
                }
                ProxyKind::Http => {
                    let mut stream = self.connect_proxy().await?;
                    http::connect(&mut stream, target, self.credentials.as_ref())
                        .await
                        .map_err(|source| UpstreamError::HttpConnect {
                            target: target.clone(),
                            source,
                        })?;
                    Ok(stream)
                }
                ProxyKind::Direct => self.connect_direct(target).await,
            }
        };
        tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| UpstreamError::Timeout(self.connect_timeout))?
    }

    async fn connect_direct(&self, target: &Target) -> Result<TcpStream, UpstreamError> {
        let fail = |source| UpstreamError::Direct {
            target: target.clone(),
            source,
        };
        let addr = match target {
            Target::Ip(addr) => *addr,
            Target::Domain(name, port) => tokio::net::lookup_host((name.as_str(), *port))
                .await
                .map_err(fail)?
                .next()
                .ok_or_else(|| fail(io::Error::new(io::ErrorKind::NotFound, "name resolved to no address")))?,
        };
        let stream = marked_socket(addr, self.fwmark)?.connect(addr).await.map_err(fail)?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Opens a UDP path for an application socket at `client` (whose address
    /// family the path must carry), within the connect timeout.
    pub async fn associate(&self, client: SocketAddr) -> Result<UdpAssociation, UpstreamError> {
        match self.kind {
            ProxyKind::Socks5 => self.associate_socks5().await,
            ProxyKind::Http => Err(UpstreamError::UdpUnsupported),
            ProxyKind::Direct => {
                let unspecified = match client {
                    SocketAddr::V4(_) => SocketAddr::from(([0u8; 4], 0)),
                    SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
                };
                let socket = marked_udp_socket(unspecified, self.fwmark)?;
                Ok(UdpAssociation {
                    control: None,
                    socket,
                    framing: UdpFraming::Plain,
                })
            }
        }
    }

    async fn associate_socks5(&self) -> Result<UdpAssociation, UpstreamError> {
        let attempt = async {
            let mut control = self.connect_proxy().await?;
            // Send from the address the proxy already sees us at, and tell it
            // which port, so a strict proxy can match our datagrams.
            let local = control.local_addr().map_err(UpstreamError::Udp)?;
            let socket = marked_udp_socket(SocketAddr::new(local.ip(), 0), self.fwmark)?;
            let from = socket.local_addr().map_err(UpstreamError::Udp)?;
            let relay = socks5::associate(&mut control, from, self.credentials.as_ref())
                .await
                .map_err(|source| UpstreamError::Handshake {
                    target: Target::Ip(from),
                    source,
                })?;
            let relay = match relay {
                // "Same host as the control connection" in practice.
                Target::Ip(addr) if addr.ip().is_unspecified() => SocketAddr::new(self.proxy.ip(), addr.port()),
                Target::Ip(addr) => addr,
                other => return Err(UpstreamError::BadRelay(other)),
            };
            socket.connect(relay).await.map_err(UpstreamError::Udp)?;
            Ok(UdpAssociation {
                control: Some(control),
                socket,
                framing: UdpFraming::Socks5,
            })
        };
        tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| UpstreamError::Timeout(self.connect_timeout))?
    }

    /// Finds out whether a SOCKS5 proxy reads a request that arrives in the
    /// same segment as the greeting (or the credentials): asks it for a UDP
    /// association that way (a valid request that makes it connect nowhere)
    /// and closes it again. `Some(true)`: it answered (any reply code: it
    /// read the request); `Some(false)`: no answer within [`PROBE_WAIT`] or
    /// a broken exchange, or not a SOCKS5 proxy; `None`: the proxy could not
    /// be reached, ask again later.
    pub async fn probe_pipelining(&self) -> Option<bool> {
        if self.kind != ProxyKind::Socks5 {
            return Some(false);
        }
        let mut control = tokio::time::timeout(self.connect_timeout, self.connect_proxy())
            .await
            .ok()?
            .ok()?;
        let from = SocketAddr::new(
            match self.proxy {
                SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            },
            0,
        );
        let answer = socks5::associate_with(&mut control, from, self.credentials.as_ref(), true);
        match tokio::time::timeout(PROBE_WAIT, answer).await {
            Ok(Ok(_) | Err(socks5::Socks5Error::Refused(_))) => Some(true),
            Ok(Err(_)) | Err(_) => Some(false),
        }
    }

    /// A TCP connection to the proxy itself, marked and with Nagle off.
    pub async fn connect_proxy(&self) -> Result<TcpStream, UpstreamError> {
        let socket = marked_socket(self.proxy, self.fwmark)?;
        let stream = socket
            .connect(self.proxy)
            .await
            .map_err(|source| UpstreamError::Connect {
                proxy: self.proxy,
                source,
            })?;
        // Relayed segments are already coalesced by the application side;
        // Nagle would only add delay.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

fn marked_socket(peer: SocketAddr, fwmark: u32) -> Result<TcpSocket, UpstreamError> {
    let socket = Socket::new(
        Domain::for_address(peer),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(|source| UpstreamError::Connect { proxy: peer, source })?;
    if fwmark != 0 {
        socket.set_mark(fwmark).map_err(UpstreamError::Mark)?;
    }
    // A proxy that vanishes without a FIN or RST is noticed in about two
    // minutes instead of never.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    let _ = socket.set_tcp_keepalive(&keepalive);
    Ok(TcpSocket::from_std_stream(socket.into()))
}

/// Receive buffer asked for on each UDP relay socket.
const UDP_RECV_BUFFER: usize = 1 << 20;

fn marked_udp_socket(bind: SocketAddr, fwmark: u32) -> Result<UdpSocket, UpstreamError> {
    let socket = Socket::new(
        Domain::for_address(bind),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )
    .map_err(UpstreamError::Udp)?;
    if fwmark != 0 {
        socket.set_mark(fwmark).map_err(UpstreamError::Mark)?;
    }
    // The worker drains this socket between batches of TCP work; the default
    // buffer (208 KiB, a dozen jumbo datagrams by truesize) overflows if a
    // burst of replies arrives during one busy batch. Memory is only charged
    // for what is queued; the kernel caps the size at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(UDP_RECV_BUFFER);
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
        let p: ProxyUrl = "http://u:p@10.0.1.2:3128".parse().unwrap();
        assert_eq!((p.kind, p.port), (ProxyKind::Http, 3128));
        assert_eq!(p.redacted(), "http://u:***@10.0.1.2:3128");
        let p: ProxyUrl = "direct://".parse().unwrap();
        assert_eq!((p.kind, p.resolve().unwrap()), (ProxyKind::Direct, None));
    }

    #[test]
    fn rejects_bad_proxy_urls() {
        let err = |s: &str| s.parse::<ProxyUrl>().unwrap_err();
        assert_eq!(err("ftp://1.2.3.4:80"), ProxyUrlError::Scheme("ftp".into()));
        assert_eq!(err("direct://1.2.3.4:80"), ProxyUrlError::Shape);
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
