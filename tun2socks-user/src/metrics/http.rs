//! A deliberately tiny HTTP/1.1 server for `GET /metrics`: one request per
//! connection, bounded in size, time and concurrency. A scraper needs no
//! more, and it keeps a web framework out of a network daemon.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::Workers;

/// Scrapes served at once; more connections are closed at once.
const MAX_CONNECTIONS: usize = 8;
/// Request head size limit.
const MAX_REQUEST: usize = 8 * 1024;
/// Time for a whole exchange (read, collect, write).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(listener: TcpListener, workers: Workers) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and the like: back off instead of spinning.
                warn!(%error, "metrics endpoint cannot accept");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "metrics endpoint busy, closing a connection");
            continue;
        };
        let workers = workers.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(stream, &workers))
                .await
                .is_err()
            {
                debug!(%peer, "metrics request timed out");
            }
            drop(slot);
        });
    }
}

async fn exchange(mut stream: TcpStream, workers: &Workers) {
    let Some(head) = read_head(&mut stream).await else {
        return;
    };
    let response = match route(&head) {
        Route::Metrics { head_only } => {
            let body = workers.exposition().await;
            response("200 OK", super::exposition::CONTENT_TYPE, &body, head_only)
        }
        Route::Index => response(
            "200 OK",
            "text/plain; charset=utf-8",
            "tun2socks: metrics at /metrics\n",
            false,
        ),
        Route::NotFound => response("404 Not Found", "text/plain; charset=utf-8", "not found\n", false),
        Route::BadMethod => response(
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n",
            false,
        ),
        Route::Bad => response("400 Bad Request", "text/plain; charset=utf-8", "bad request\n", false),
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Reads up to the blank line that ends the request head.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        if buf.len() >= MAX_REQUEST {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).ok()
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    Index,
    NotFound,
    BadMethod,
    Bad,
}

fn route(head: &str) -> Route {
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Route::Bad;
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::BadMethod,
    };
    // Query strings (`?name[]=...`) are ignored: every scrape gets everything.
    match target.split('?').next().unwrap_or_default() {
        "/metrics" => Route::Metrics { head_only },
        "/" => Route::Index,
        _ => Route::NotFound,
    }
}

fn response(status: &str, content_type: &str, body: &str, head_only: bool) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        if head_only { "" } else { body }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route("HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(route("GET / HTTP/1.1\r\n\r\n"), Route::Index);
        assert_eq!(route("GET /other HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route("POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route("\r\n"), Route::Bad);
    }
}
