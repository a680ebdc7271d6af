//! `t2s-badproxy`: a SOCKS5 server (run in the lab's `proxy` namespace) that
//! misbehaves in one chosen way, for the daemon's robustness tests.
//!
//! ```text
//! t2s-badproxy --listen 10.0.1.2:1090 --mode relay                  # a correct CONNECT relay
//! t2s-badproxy --listen 10.0.1.2:1090 --mode refuse                 # reply 0x05 "connection refused"
//! t2s-badproxy --listen 10.0.1.2:1090 --mode close-after-greeting   # read the greeting, close
//! t2s-badproxy --listen 10.0.1.2:1090 --mode close-after-request    # answer the greeting, read the request, close
//! t2s-badproxy --listen 10.0.1.2:1090 --mode garbage                # random bytes instead of a reply, then stall
//! t2s-badproxy --listen 10.0.1.2:1090 --mode stall                  # accept, never answer
//! t2s-badproxy --listen 10.0.1.2:1090 --mode die-mid-transfer --after-bytes 65536 [--fin]
//! t2s-badproxy --listen 10.0.1.2:1090 --mode http-partial-head      # HTTP CONNECT: a head that never ends
//! t2s-badproxy --listen 10.0.1.2:1090 --mode dns-oversize           # CONNECT ok, then a 65535-byte DNS-over-TCP answer
//! ```
//!
//! `die-mid-transfer` relays like `relay` until a connection has carried
//! `--after-bytes` (both directions together), then resets both sides (or,
//! with `--fin`, closes them with a FIN). "Coming back" is a test killing
//! this process and starting it again on the same port (the listener sets
//! SO_REUSEADDR). Connections that stall are held until the client closes
//! them. One thread per connection; one log line per connection on stdout.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use rand::Rng;

#[derive(Parser)]
#[command(name = "t2s-badproxy", about = "A SOCKS5 server that misbehaves on purpose")]
struct Cli {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long, value_enum)]
    mode: Mode,
    /// For die-mid-transfer: bytes a connection relays before it dies.
    #[arg(long, default_value_t = 65_536)]
    after_bytes: u64,
    /// For die-mid-transfer: close with a FIN instead of a reset.
    #[arg(long)]
    fin: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum Mode {
    Relay,
    Refuse,
    CloseAfterGreeting,
    CloseAfterRequest,
    Garbage,
    Stall,
    DieMidTransfer,
    HttpPartialHead,
    DnsOversize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match serve(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("t2s-badproxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(cli: &Cli) -> Result<()> {
    // std sets SO_REUSEADDR on Unix: a restarted server gets the port back
    // although the killed one's connections linger in TIME_WAIT.
    let listener = TcpListener::bind(cli.listen).with_context(|| format!("binding {}", cli.listen))?;
    println!("listening on {} mode {:?}", cli.listen, cli.mode);
    for (n, conn) in listener.incoming().enumerate() {
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                println!("accept: {e}");
                continue;
            }
        };
        let (mode, after_bytes, fin) = (cli.mode, cli.after_bytes, cli.fin);
        thread::spawn(move || {
            let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let outcome = handle(conn, mode, after_bytes, fin);
            match outcome {
                Ok(what) => println!("conn {n} from {peer}: {what}"),
                Err(e) => println!("conn {n} from {peer}: error: {e:#}"),
            }
        });
    }
    Ok(())
}

/// Serves one connection the way `mode` says; returns what happened.
fn handle(mut conn: TcpStream, mode: Mode, after_bytes: u64, fin: bool) -> Result<String> {
    conn.set_nodelay(true)?;
    if mode == Mode::HttpPartialHead {
        read_http_request(&mut conn)?;
        // A status line, and then nothing: the blank line never comes.
        conn.write_all(b"HTTP/1.1 200 Connection established\r\n")?;
        return Ok(format!("partial HTTP head, then {}", hold(conn)));
    }
    read_greeting(&mut conn)?;
    match mode {
        Mode::CloseAfterGreeting => return Ok("closed after the greeting".into()),
        Mode::Stall => return Ok(format!("stalled after the greeting, {}", hold(conn))),
        _ => conn.write_all(&[5, 0])?,
    }
    let target = read_request(&mut conn)?;
    match mode {
        Mode::CloseAfterRequest => Ok(format!("closed after the request for {target}")),
        Mode::Refuse => {
            conn.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0])?;
            Ok(format!("refused {target}"))
        }
        Mode::Garbage => {
            let mut rng = rand::rng();
            let mut junk = [0u8; 48];
            rng.fill(&mut junk[..]);
            // Never a valid reply head by chance.
            junk[0] = rng.random_range(6..=255);
            conn.write_all(&junk)?;
            Ok(format!("sent garbage for {target}, then {}", hold(conn)))
        }
        Mode::Relay | Mode::DieMidTransfer => {
            let upstream = match TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
                Ok(upstream) => upstream,
                Err(e) => {
                    conn.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0])?;
                    return Ok(format!("could not connect to {target}: {e}"));
                }
            };
            let bound = upstream.local_addr()?;
            conn.write_all(&reply_success(bound))?;
            let limit = (mode == Mode::DieMidTransfer).then_some(after_bytes);
            Ok(relay(conn, upstream, limit, fin))
        }
        Mode::DnsOversize => {
            // "Connected" (to a resolver that is not there), then one
            // DNS-over-TCP answer as large as the framing allows.
            conn.write_all(&reply_success(SocketAddr::from(([0, 0, 0, 0], 0))))?;
            let mut len = [0u8; 2];
            conn.read_exact(&mut len)?;
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
            conn.read_exact(&mut query)?;
            let mut answer = vec![0u8; usize::from(u16::MAX)];
            answer[..2].copy_from_slice(query.get(..2).unwrap_or(&[0, 0]));
            answer[2..4].copy_from_slice(&[0x81, 0x80]); // a response, no error
            conn.write_all(&u16::MAX.to_be_bytes())?;
            conn.write_all(&answer)?;
            Ok(format!(
                "answered {target} with a {}-byte DNS message, then {}",
                answer.len(),
                hold(conn)
            ))
        }
        Mode::Stall | Mode::CloseAfterGreeting | Mode::HttpPartialHead => unreachable!("handled above"),
    }
}

/// Holds a connection open, reading and discarding, until the client closes
/// or resets it.
fn hold(mut conn: TcpStream) -> String {
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return "client closed".into(),
            Ok(_) => continue,
            Err(e) => return format!("client: {e}"),
        }
    }
}

fn read_greeting(conn: &mut TcpStream) -> Result<()> {
    let mut head = [0u8; 2];
    conn.read_exact(&mut head).context("reading the greeting")?;
    if head[0] != 5 {
        bail!("greeting of SOCKS version {}", head[0]);
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    conn.read_exact(&mut methods).context("reading the methods")?;
    Ok(())
}

/// Reads a CONNECT request; returns its target (names are not supported).
fn read_request(conn: &mut TcpStream) -> Result<SocketAddr> {
    let mut head = [0u8; 4];
    conn.read_exact(&mut head).context("reading the request")?;
    if head[..2] != [5, 1] {
        bail!("request {head:?} is not a SOCKS5 CONNECT");
    }
    let ip = match head[3] {
        1 => {
            let mut a = [0u8; 4];
            conn.read_exact(&mut a)?;
            IpAddr::V4(Ipv4Addr::from(a))
        }
        4 => {
            let mut a = [0u8; 16];
            conn.read_exact(&mut a)?;
            IpAddr::V6(Ipv6Addr::from(a))
        }
        other => bail!("address type {other} not supported"),
    };
    let mut port = [0u8; 2];
    conn.read_exact(&mut port)?;
    Ok(SocketAddr::new(ip, u16::from_be_bytes(port)))
}

/// Reads an HTTP request head (through the blank line).
fn read_http_request(conn: &mut TcpStream) -> Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte)? == 0 {
            bail!("client closed inside the request head");
        }
        head.push(byte[0]);
    }
    Ok(())
}

fn reply_success(bound: SocketAddr) -> Vec<u8> {
    let mut reply = vec![5, 0, 0];
    match bound.ip() {
        IpAddr::V4(a) => {
            reply.push(1);
            reply.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            reply.push(4);
            reply.extend_from_slice(&a.octets());
        }
    }
    reply.extend_from_slice(&bound.port().to_be_bytes());
    reply
}

/// Relays both ways until both directions ended or, with a `limit`, until
/// that many bytes went through; then kills the connection (reset, or FIN
/// with `fin`). Returns what happened.
fn relay(client: TcpStream, upstream: TcpStream, limit: Option<u64>, fin: bool) -> String {
    let moved = Arc::new(AtomicU64::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let kill = {
        let (client, upstream, killed) = (
            client.try_clone().expect("clone"),
            upstream.try_clone().expect("clone"),
            killed.clone(),
        );
        move || {
            if killed.swap(true, Ordering::SeqCst) {
                return;
            }
            if !fin {
                set_linger_zero(&client);
                set_linger_zero(&upstream);
            }
            // Wakes both copy threads (their reads end); the sockets close
            // when the last of their descriptors does: with a reset, since
            // SO_LINGER 0 is set, or else with a FIN.
            let how = if fin { Shutdown::Both } else { Shutdown::Read };
            let _ = client.shutdown(how);
            let _ = upstream.shutdown(how);
        }
    };
    let kill = Arc::new(kill);
    let pipe = |from: TcpStream, to: TcpStream| {
        let (moved, kill) = (moved.clone(), kill.clone());
        thread::spawn(move || copy(from, to, &moved, limit, &*kill))
    };
    let up = pipe(client.try_clone().expect("clone"), upstream.try_clone().expect("clone"));
    let down = pipe(upstream, client);
    let (up, down) = (up.join().unwrap_or(0), down.join().unwrap_or(0));
    if killed.load(Ordering::SeqCst) {
        let how = if fin { "FIN" } else { "reset" };
        format!(
            "killed with a {how} after {} bytes (up {up}, down {down})",
            moved.load(Ordering::SeqCst)
        )
    } else {
        format!("relayed up {up} down {down}")
    }
}

/// One direction; passes EOF on as a half-close. Returns the bytes copied.
fn copy(mut from: TcpStream, mut to: TcpStream, moved: &AtomicU64, limit: Option<u64>, kill: &dyn Fn()) -> u64 {
    let mut buf = vec![0u8; 16 * 1024];
    let mut copied = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // With a limit, only up to it: the connection dies at that byte.
        let n = match limit {
            Some(limit) => {
                let before = moved.fetch_add(n as u64, Ordering::SeqCst);
                (limit.saturating_sub(before)).min(n as u64) as usize
            }
            None => n,
        };
        if n > 0 && to.write_all(&buf[..n]).is_err() {
            break;
        }
        copied += n as u64;
        if limit.is_some_and(|limit| moved.load(Ordering::SeqCst) >= limit) {
            kill();
            return copied;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    copied
}

fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        eprintln!("SO_LINGER: {}", io::Error::last_os_error());
    }
}
