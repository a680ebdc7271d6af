//! systemd readiness (`Type=notify`): `READY=1` once the tunnel carries
//! traffic, `STOPPING=1` when shutdown starts, sent as datagrams to
//! `$NOTIFY_SOCKET` (the sd_notify protocol, no libsystemd needed).
//!
//! [`init`] must run before `--netns` is entered: `$NOTIFY_SOCKET` may be an
//! abstract socket (`@...`), and those are per network namespace, so the
//! socket is created and connected in systemd's namespace and kept.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;

static SOCKET: OnceLock<Option<UnixDatagram>> = OnceLock::new();

/// Connects to `$NOTIFY_SOCKET` if set; without it every notification is a
/// no-op. Call once, early, on the main thread.
pub fn init() {
    SOCKET.get_or_init(|| {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        match connect(path.to_str()?) {
            Ok(socket) => Some(socket),
            Err(error) => {
                tracing::warn!(%error, "cannot reach $NOTIFY_SOCKET: systemd will not hear that we are ready");
                None
            }
        }
    });
}

fn connect(path: &str) -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(path)?,
    };
    socket.connect_addr(&addr)?;
    Ok(socket)
}

/// Sends `state` (newline-separated `KEY=VALUE` pairs); errors are logged
/// and otherwise ignored: systemd's bookkeeping must not stop the tunnel.
pub fn notify(state: &str) {
    if let Some(Some(socket)) = SOCKET.get()
        && let Err(error) = socket.send(state.as_bytes())
    {
        tracing::debug!(%error, state, "sd_notify failed");
    }
}

/// The tunnel is up: routes point into it and the workers run.
pub fn ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// Shutdown has begun.
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("t2s-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        connect(path.to_str().unwrap()).unwrap().send(b"READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();

        let name = format!("t2s-notify-test-{}", std::process::id());
        let server = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        connect(&format!("@{name}")).unwrap().send(b"STOPPING=1").unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
