//! `eim-check`: one socket asks several whoami servers which source endpoint
//! they see. Behind an endpoint-independent mapping they all see the same.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::{canonical, socket_for};

/// How often an unanswered question is asked again.
const RESEND: Duration = Duration::from_millis(300);

pub fn run(targets: &[SocketAddr], timeout: Duration) -> Result<ExitCode> {
    ensure!(!targets.is_empty(), "no --to given");
    let socket = socket_for(targets[0]).context("binding the client socket")?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    println!("local {}", socket.local_addr()?);

    let deadline = Instant::now() + timeout;
    // What each target reported: (the address the reply came from, the source it saw).
    let mut seen: Vec<Option<(SocketAddr, String)>> = vec![None; targets.len()];
    let mut last_sent: Vec<Option<Instant>> = vec![None; targets.len()];
    let mut buf = vec![0u8; 2048];
    while seen.iter().any(Option::is_none) && Instant::now() < deadline {
        for (i, to) in targets.iter().enumerate() {
            let due = last_sent[i].is_none_or(|at| at.elapsed() >= RESEND);
            if seen[i].is_none() && due {
                socket
                    .send_to(format!("whoami-{i}").as_bytes(), to)
                    .with_context(|| format!("sending to {to}"))?;
                last_sent[i] = Some(Instant::now());
            }
        }
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(received) => received,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e).context("receiving"),
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        let Some((question, source)) = text.split_once(' ') else {
            eprintln!("unexpected reply {text:?} from {from}");
            continue;
        };
        let index = question.strip_prefix("whoami-").and_then(|i| i.parse::<usize>().ok());
        match index.filter(|&i| i < targets.len()) {
            Some(i) => seen[i] = Some((canonical(from), source.to_owned())),
            None => eprintln!("unexpected reply {text:?} from {from}"),
        }
    }

    let mut ok = true;
    for (to, seen) in targets.iter().zip(&seen) {
        match seen {
            Some((from, source)) => {
                println!("to={to} reply_from={from} saw={source}");
                if *from != canonical(*to) {
                    println!("reply to {to} came from {from}");
                    ok = false;
                }
            }
            None => {
                println!("to={to} no reply within {timeout:?}");
                ok = false;
            }
        }
    }
    let sources: Vec<&str> = seen.iter().flatten().map(|(_, s)| s.as_str()).collect();
    let same = sources.len() == targets.len() && sources.windows(2).all(|w| w[0] == w[1]);
    println!("{}", if same { "same" } else { "different" });
    Ok(if ok && same {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
