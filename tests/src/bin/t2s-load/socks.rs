//! A minimal SOCKS5 client (RFC 1928, no authentication): CONNECT and UDP
//! ASSOCIATE, plus the UDP request header.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const CMD_CONNECT: u8 = 1;
const CMD_UDP_ASSOCIATE: u8 = 3;
const ATYP_V4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_V6: u8 = 4;

/// A stream to `target` through the proxy.
pub async fn connect(proxy: SocketAddr, target: SocketAddr) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(proxy)
        .await
        .with_context(|| format!("connecting to the SOCKS5 proxy {proxy}"))?;
    stream.set_nodelay(true)?;
    greet(&mut stream).await?;
    request(&mut stream, CMD_CONNECT, target)
        .await
        .with_context(|| format!("SOCKS5 CONNECT {target}"))?;
    Ok(stream)
}

/// A UDP association: the control connection (the association lives as long
/// as it does), a blocking UDP socket bound to the address the proxy sees us
/// at, and the relay address its datagrams go to.
pub async fn associate(proxy: SocketAddr) -> Result<(TcpStream, std::net::UdpSocket, SocketAddr)> {
    let mut control = TcpStream::connect(proxy)
        .await
        .with_context(|| format!("connecting to the SOCKS5 proxy {proxy}"))?;
    greet(&mut control).await?;
    // Send from the address the proxy already sees us at, and say which port,
    // so a strict proxy can match our datagrams.
    let socket = std::net::UdpSocket::bind(SocketAddr::new(control.local_addr()?.ip(), 0))?;
    let relay = request(&mut control, CMD_UDP_ASSOCIATE, socket.local_addr()?)
        .await
        .context("SOCKS5 UDP ASSOCIATE")?;
    // An unspecified relay address means "the proxy's own address".
    let relay = if relay.ip().is_unspecified() {
        SocketAddr::new(proxy.ip(), relay.port())
    } else {
        relay
    };
    Ok((control, socket, relay))
}

async fn greet(stream: &mut TcpStream) -> Result<()> {
    stream.write_all(&[VERSION, 1, NO_AUTH]).await?;
    let mut reply = [0; 2];
    stream
        .read_exact(&mut reply)
        .await
        .context("reading the method reply")?;
    if reply != [VERSION, NO_AUTH] {
        bail!("the proxy refused no-authentication (reply {reply:?})");
    }
    Ok(())
}

/// Sends a request and returns the address in the reply.
async fn request(stream: &mut TcpStream, cmd: u8, addr: SocketAddr) -> Result<SocketAddr> {
    let mut req = vec![VERSION, cmd, 0];
    put_addr(&mut req, addr);
    stream.write_all(&req).await?;
    let mut head = [0; 4];
    stream.read_exact(&mut head).await.context("reading the reply")?;
    if head[0] != VERSION {
        bail!("not a SOCKS5 reply (version {})", head[0]);
    }
    if head[1] != 0 {
        bail!("the proxy answered {} ({})", head[1], reply_name(head[1]));
    }
    let ip: IpAddr = match head[3] {
        ATYP_V4 => {
            let mut b = [0; 4];
            stream.read_exact(&mut b).await?;
            b.into()
        }
        ATYP_V6 => {
            let mut b = [0; 16];
            stream.read_exact(&mut b).await?;
            b.into()
        }
        ATYP_DOMAIN => bail!("the proxy answered with a domain name"),
        other => bail!("unknown address type {other} in the reply"),
    };
    let mut port = [0; 2];
    stream.read_exact(&mut port).await?;
    Ok(SocketAddr::new(ip, u16::from_be_bytes(port)))
}

fn put_addr(buf: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            buf.push(ATYP_V4);
            buf.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            buf.push(ATYP_V6);
            buf.extend_from_slice(&ip.octets());
        }
    }
    buf.extend_from_slice(&addr.port().to_be_bytes());
}

/// The header in front of every datagram to or from a UDP relay.
pub fn udp_header(target: SocketAddr) -> Vec<u8> {
    let mut buf = vec![0, 0, 0];
    put_addr(&mut buf, target);
    buf
}

/// The payload of a datagram from the relay (its header skipped).
pub fn udp_payload(datagram: &[u8]) -> Option<&[u8]> {
    let addr_len = match *datagram.get(3)? {
        ATYP_V4 => 4,
        ATYP_V6 => 16,
        ATYP_DOMAIN => 1 + usize::from(*datagram.get(4)?),
        _ => return None,
    };
    datagram.get(4 + addr_len + 2..)
}

fn reply_name(code: u8) -> &'static str {
    match code {
        1 => "general failure",
        2 => "not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unknown",
    }
}
