//! `echo-server` and `whoami-server`: one thread per listen socket.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::thread;

use anyhow::{Context, Result};

use crate::canonical;

#[derive(Clone, Copy)]
pub enum Mode {
    /// Reply with the payload.
    Echo,
    /// Reply with `<payload> <source address:port>`.
    Whoami,
}

pub fn run(listen: &[SocketAddr], mode: Mode) -> Result<ExitCode> {
    let mut threads = Vec::new();
    for &addr in listen {
        let socket = UdpSocket::bind(addr).with_context(|| format!("binding {addr}"))?;
        crate::large_receive_buffer(&socket);
        println!("listening on udp {addr}");
        threads.push(thread::spawn(move || serve(&socket, mode)));
    }
    for thread in threads {
        thread.join().map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(socket: &UdpSocket, mode: Mode) -> Result<()> {
    let mut buf = vec![0u8; 65_536];
    let mut reply = Vec::new();
    loop {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(received) => received,
            Err(e) => {
                eprintln!("recv: {e}");
                continue;
            }
        };
        let sent = match mode {
            Mode::Echo => socket.send_to(&buf[..n], from),
            Mode::Whoami => {
                reply.clear();
                reply.extend_from_slice(&buf[..n]);
                reply.extend_from_slice(format!(" {}", canonical(from)).as_bytes());
                println!("whoami {} from {}", String::from_utf8_lossy(&buf[..n]), canonical(from));
                socket.send_to(&reply, from)
            }
        };
        if let Err(e) = sent {
            eprintln!("send to {from}: {e}");
        }
    }
}
