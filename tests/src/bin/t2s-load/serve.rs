//! `t2s-load serve`: the TCP modes picked by the first byte, and a UDP echo.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const CHUNK: usize = 128 * 1024;

pub fn run(listen: &[SocketAddr], threads: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut tasks = Vec::new();
        for &addr in listen {
            let tcp = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding tcp {addr}"))?;
            let udp = UdpSocket::bind(addr)
                .await
                .with_context(|| format!("binding udp {addr}"))?;
            println!("listening on {addr} (tcp and udp)");
            tasks.push(tokio::spawn(accept_loop(tcp)));
            tasks.push(tokio::spawn(udp_echo(udp)));
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
                // Out of descriptors, say: back off a little and go on.
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_one(mut stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut first = [0; 1];
    if stream.read(&mut first).await? == 0 {
        return Ok(());
    }
    match first[0] {
        b'S' => {
            let mut buf = vec![0; CHUNK];
            while stream.read(&mut buf).await? > 0 {}
        }
        b'R' => {
            let buf = vec![0; CHUNK];
            loop {
                stream.write_all(&buf).await?;
            }
        }
        b'P' => stream.write_all(b"P").await?,
        b'A' => {
            // Discard exactly LEN bytes, then acknowledge them: an upload's end
            // that does not depend on half-close support along the path.
            let mut len = [0; 8];
            stream.read_exact(&mut len).await?;
            let mut left = u64::from_be_bytes(len);
            let mut buf = vec![0; CHUNK];
            while left > 0 {
                let want = left.min(CHUNK as u64) as usize;
                let n = stream.read(&mut buf[..want]).await?;
                if n == 0 {
                    return Ok(());
                }
                left -= n as u64;
            }
            stream.write_all(b"A").await?;
            while stream.read(&mut buf).await? > 0 {}
        }
        b'K' => {
            stream.write_all(b"K").await?;
            let mut buf = [0; 512];
            while stream.read(&mut buf).await? > 0 {}
        }
        _ => {}
    }
    Ok(())
}

async fn udp_echo(socket: UdpSocket) -> Result<()> {
    let mut buf = vec![0; 65_536];
    loop {
        let (n, from) = socket.recv_from(&mut buf).await?;
        let _ = socket.send_to(&buf[..n], from).await;
    }
}
