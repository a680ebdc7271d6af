//! `t2s-load socks-server`: a minimal SOCKS5 server (RFC 1928) for labs
//! without dante (`cargo xtask bench --bare`). CONNECT only, no
//! authentication; IPv4, IPv6 and domain-name targets. Each connection is
//! relayed with `copy_bidirectional` (128 KiB buffers each way; a half-close
//! is passed on as a half-close).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const NO_ACCEPTABLE: u8 = 0xff;
const CMD_CONNECT: u8 = 1;
const ATYP_V4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_V6: u8 = 4;
const REP_OK: u8 = 0;
const REP_FAILURE: u8 = 1;
const REP_NET_UNREACHABLE: u8 = 3;
const REP_HOST_UNREACHABLE: u8 = 4;
const REP_REFUSED: u8 = 5;
const REP_TTL_EXPIRED: u8 = 6;
const REP_CMD_UNSUPPORTED: u8 = 7;
const REP_ATYP_UNSUPPORTED: u8 = 8;

/// How long a client may take for its greeting and request, and an
/// upstream connect may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Relay buffer, each direction.
const BUFFER: usize = 128 * 1024;

pub fn run(listen: &[SocketAddr], threads: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut tasks = Vec::new();
        for &addr in listen {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding tcp {addr}"))?;
            println!("socks5 listening on {addr}");
            tasks.push(tokio::spawn(accept_loop(listener)));
        }
        for task in tasks {
            task.await??;
        }
        Ok(())
    })
}

async fn accept_loop(listener: TcpListener) -> Result<()> {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    let _ = serve_one(stream).await;
                });
            }
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_one(mut client: TcpStream) -> Result<()> {
    client.set_nodelay(true)?;
    let mut upstream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut client)).await {
        Ok(result) => result?,
        Err(_) => bail!("handshake timed out"),
    };
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER, BUFFER).await?;
    Ok(())
}

/// Greeting, request, upstream connect and reply; the connected upstream.
async fn handshake(client: &mut TcpStream) -> Result<TcpStream> {
    let mut head = [0; 2];
    client.read_exact(&mut head).await?;
    if head[0] != VERSION {
        bail!("not SOCKS5 (version {})", head[0]);
    }
    let mut methods = vec![0; usize::from(head[1])];
    client.read_exact(&mut methods).await?;
    if !methods.contains(&NO_AUTH) {
        client.write_all(&[VERSION, NO_ACCEPTABLE]).await?;
        bail!("the client offers no 'no authentication'");
    }
    client.write_all(&[VERSION, NO_AUTH]).await?;

    let mut req = [0; 4];
    client.read_exact(&mut req).await?;
    if req[0] != VERSION {
        bail!("not a SOCKS5 request (version {})", req[0]);
    }
    let target = match req[3] {
        ATYP_V4 => {
            let mut b = [0; 4];
            client.read_exact(&mut b).await?;
            Target::Ip(IpAddr::from(b))
        }
        ATYP_V6 => {
            let mut b = [0; 16];
            client.read_exact(&mut b).await?;
            Target::Ip(IpAddr::from(b))
        }
        ATYP_DOMAIN => {
            let mut len = [0; 1];
            client.read_exact(&mut len).await?;
            let mut name = vec![0; usize::from(len[0])];
            client.read_exact(&mut name).await?;
            Target::Name(String::from_utf8(name).context("domain name is not UTF-8")?)
        }
        other => {
            reply(client, REP_ATYP_UNSUPPORTED, None).await?;
            bail!("address type {other} not supported");
        }
    };
    let mut port = [0; 2];
    client.read_exact(&mut port).await?;
    let port = u16::from_be_bytes(port);
    if req[1] != CMD_CONNECT {
        reply(client, REP_CMD_UNSUPPORTED, None).await?;
        bail!("command {} not supported", req[1]);
    }
    let connected = match &target {
        Target::Ip(ip) => TcpStream::connect(SocketAddr::new(*ip, port)).await,
        Target::Name(name) => TcpStream::connect((name.as_str(), port)).await,
    };
    match connected {
        Ok(upstream) => {
            upstream.set_nodelay(true)?;
            reply(client, REP_OK, upstream.local_addr().ok()).await?;
            Ok(upstream)
        }
        Err(e) => {
            reply(client, reply_code(&e), None).await?;
            Err(e).context("connecting upstream")
        }
    }
}

enum Target {
    Ip(IpAddr),
    Name(String),
}

async fn reply(client: &mut TcpStream, code: u8, bound: Option<SocketAddr>) -> io::Result<()> {
    let bound = bound.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut msg = vec![VERSION, code, 0];
    match bound.ip() {
        IpAddr::V4(ip) => {
            msg.push(ATYP_V4);
            msg.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            msg.push(ATYP_V6);
            msg.extend_from_slice(&ip.octets());
        }
    }
    msg.extend_from_slice(&bound.port().to_be_bytes());
    client.write_all(&msg).await
}

fn reply_code(e: &io::Error) -> u8 {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => REP_REFUSED,
        io::ErrorKind::NetworkUnreachable => REP_NET_UNREACHABLE,
        io::ErrorKind::HostUnreachable => REP_HOST_UNREACHABLE,
        io::ErrorKind::TimedOut => REP_TTL_EXPIRED,
        _ => REP_FAILURE,
    }
}
