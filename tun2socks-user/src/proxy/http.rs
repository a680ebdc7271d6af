//! HTTP CONNECT client (RFC 9110 §9.3.6) with Basic proxy authentication.
//!
//! The response head is read with `peek` and then consumed exactly, so any
//! bytes the destination sends right after the proxy's `200` (a server
//! banner, say) stay in the socket for the relay.

use std::io;

use base64::Engine as _;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{Credentials, Target};

/// Longest response head we accept from a proxy.
const MAX_HEAD: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum HttpConnectError {
    #[error("proxy I/O: {0}")]
    Io(#[from] io::Error),
    #[error("proxy closed the connection before answering")]
    Closed,
    #[error("proxy answer is not HTTP: {0:?}")]
    Garbage(String),
    #[error("proxy answer head is longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    #[error("proxy refused with HTTP {code} {reason}")]
    Refused { code: u16, reason: String },
    #[error("proxy requires authentication (HTTP 407)")]
    AuthRequired,
}

/// Asks the proxy on `stream` to connect to `target`.
pub async fn connect(
    stream: &mut TcpStream,
    target: &Target,
    credentials: Option<&Credentials>,
) -> Result<(), HttpConnectError> {
    stream.write_all(request(target, credentials).as_bytes()).await?;
    let head = read_head(stream).await?;
    match parse_status(&head)? {
        (200..=299, _) => Ok(()),
        (407, _) => Err(HttpConnectError::AuthRequired),
        (code, reason) => Err(HttpConnectError::Refused { code, reason }),
    }
}

fn authority(target: &Target) -> String {
    match target {
        Target::Ip(addr) => addr.to_string(),
        Target::Domain(name, port) => format!("{name}:{port}"),
    }
}

fn request(target: &Target, credentials: Option<&Credentials>) -> String {
    let authority = authority(target);
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(c) = credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
        req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// Reads exactly the response head (through the blank line), nothing more.
///
/// Each round peeks at what is there. Without the end of the head in it,
/// all of it is head: it is consumed, so that the next peek waits for new
/// bytes instead of returning the same ones at once (a busy loop).
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HttpConnectError> {
    let mut head = Vec::new();
    let mut peeked = vec![0u8; MAX_HEAD];
    loop {
        let room = MAX_HEAD - head.len();
        if room == 0 {
            return Err(HttpConnectError::HeadTooLong);
        }
        let n = stream.peek(&mut peeked[..room]).await?;
        if n == 0 {
            return Err(HttpConnectError::Closed);
        }
        // The blank line may straddle what we consumed and what is new.
        let seen = head.len();
        let searched_from = seen.saturating_sub(3);
        let mut window = head[searched_from..].to_vec();
        window.extend_from_slice(&peeked[..n]);
        let take = match find_head_end(&window) {
            Some(end) => end - (seen - searched_from),
            None => n,
        };
        let start = head.len();
        head.resize(start + take, 0);
        stream.read_exact(&mut head[start..]).await?;
        if head.ends_with(b"\r\n\r\n") {
            return Ok(head);
        }
    }
}

fn find_head_end(data: &[u8]) -> Option<usize> {
    data.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn parse_status(head: &[u8]) -> Result<(u16, String), HttpConnectError> {
    let line_end = head.iter().position(|&b| b == b'\r').unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]).into_owned();
    let mut parts = line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(HttpConnectError::Garbage(line));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HttpConnectError::Garbage(line));
    }
    let code = code
        .parse::<u16>()
        .map_err(|_| HttpConnectError::Garbage(line.clone()))?;
    Ok((code, parts.next().unwrap_or("").to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_carries_authority_and_basic_auth() {
        let target = Target::Ip("[fd00:2::2]:443".parse().unwrap());
        assert_eq!(
            request(&target, None),
            "CONNECT [fd00:2::2]:443 HTTP/1.1\r\nHost: [fd00:2::2]:443\r\n\r\n"
        );
        let creds = Credentials {
            username: "Aladdin".into(),
            password: "open sesame".into(),
        };
        let req = request(&Target::Domain("example.test".into(), 80), Some(&creds));
        assert!(req.starts_with("CONNECT example.test:80 HTTP/1.1\r\n"));
        assert!(req.contains("Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n"));
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status(b"HTTP/1.1 200 Connection established\r\n\r\n").unwrap().0,
            200
        );
        assert_eq!(
            parse_status(b"HTTP/1.0 403 Forbidden\r\n\r\n").unwrap(),
            (403, "Forbidden".into())
        );
        assert!(matches!(
            parse_status(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(HttpConnectError::Garbage(_))
        ));
        assert!(matches!(
            parse_status(b"HTTP/1.1 abc\r\n\r\n"),
            Err(HttpConnectError::Garbage(_))
        ));
        assert!(matches!(parse_status(b""), Err(HttpConnectError::Garbage(_))));
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbanner"), Some(25));
    }

    /// A proxy on loopback that answers a CONNECT for 10.0.2.2:25 with
    /// `pieces`, 30 ms apart; returns what `connect` leaves in the socket
    /// (`leftover` bytes of it).
    fn connect_through(pieces: &'static [&'static [u8]], leftover: usize) -> Vec<u8> {
        use tokio::io::AsyncWriteExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut req = vec![0u8; 1024];
                let n = s.read(&mut req).await.unwrap();
                assert!(req[..n].starts_with(b"CONNECT 10.0.2.2:25 "));
                for piece in pieces {
                    s.write_all(piece).await.unwrap();
                    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                }
                s
            });
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let started = std::time::Instant::now();
            connect(&mut stream, &Target::Ip("10.0.2.2:25".parse().unwrap()), None)
                .await
                .unwrap();
            assert!(started.elapsed() < std::time::Duration::from_secs(2));
            let mut rest = vec![0u8; leftover];
            stream.read_exact(&mut rest).await.unwrap();
            drop(server.await.unwrap());
            rest
        })
    }

    #[test]
    fn early_data_after_the_head_stays_in_the_socket() {
        // Head and the destination's banner in one segment.
        let rest = connect_through(&[b"HTTP/1.1 200 OK\r\nVia: test\r\n\r\n220 banner\r\n"], 12);
        assert_eq!(rest, b"220 banner\r\n");
    }

    /// A head that arrives in pieces, the blank line split across them: read
    /// exactly, without spinning while it is incomplete.
    #[test]
    fn head_in_pieces_is_read_exactly() {
        let rest = connect_through(&[b"HTTP/1.1 200 OK\r\nVia: x\r", b"\n\r", b"\nbanner"], 6);
        assert_eq!(rest, b"banner");
    }
}
