//! `t2s-probe connect`: how one connection attempt ends.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The outcome, its word on stdout and its exit code.
enum Outcome {
    Connected,
    Refused,
    Reset,
    Timeout,
    Closed,
    Error(std::io::Error),
}

pub fn run(to: SocketAddr, timeout: Duration, hold: Duration) -> ExitCode {
    let started = Instant::now();
    let outcome = attempt(to, timeout, hold);
    let elapsed_ms = started.elapsed().as_millis();
    let (word, code) = match &outcome {
        Outcome::Connected => ("connected".to_owned(), 0),
        Outcome::Refused => ("refused".to_owned(), 1),
        Outcome::Reset => ("reset".to_owned(), 2),
        Outcome::Timeout => ("timeout".to_owned(), 3),
        Outcome::Closed => ("closed".to_owned(), 4),
        Outcome::Error(e) => (format!("error: {e}"), 5),
    };
    println!("{word} elapsed_ms={elapsed_ms}");
    ExitCode::from(code)
}

fn attempt(to: SocketAddr, timeout: Duration, hold: Duration) -> Outcome {
    let mut stream = match TcpStream::connect_timeout(&to, timeout) {
        Ok(stream) => stream,
        Err(e) => return classify(e),
    };
    if hold.is_zero() {
        return Outcome::Connected;
    }
    if let Err(e) = stream.set_read_timeout(Some(hold)) {
        return Outcome::Error(e);
    }
    let mut byte = [0; 1];
    match stream.read(&mut byte) {
        Ok(0) => Outcome::Closed,
        Ok(_) => Outcome::Connected,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Outcome::Connected,
        Err(e) => classify(e),
    }
}

fn classify(e: std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::ConnectionRefused => Outcome::Refused,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => Outcome::Reset,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::Timeout,
        _ => Outcome::Error(e),
    }
}
