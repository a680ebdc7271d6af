//! The namespace lab: network namespaces joined by veths, real SOCKS5 and
//! application servers inside them, and a launcher for the `tun2socks` daemon.
//!
//! ```text
//!   app  ──veth──  proxy  ──veth──  srv
//!   10.0.1.1       10.0.1.2 | 10.0.2.1   10.0.2.2
//!   fd00:1::1      fd00:1::2 | fd00:2::1  fd00:2::2
//!   tun2socks      danted :1080           HTTP :8080
//!   clients        microsocks :1081/:1082 t2s-probe :9000/:9001
//! ```
//!
//! `proxy` does not forward, so `app` reaches `srv` only through a SOCKS
//! server. Every lab has namespaces of its own (named after the creating
//! process and a counter), and dropping the [`Lab`] kills what runs in them and
//! deletes them, also when a test fails or panics. Nothing here changes the
//! namespace the caller runs in, except creating and deleting named namespaces.

pub mod daemon;
pub mod netns;
pub mod probe;
pub mod process;
pub mod procfs;
pub mod servers;
pub mod snapshot;
pub mod topology;
pub mod wait;

pub use daemon::{Daemon, DaemonExit, WorkerStats};
pub use netns::Netns;
pub use snapshot::Snapshot;
pub use topology::Lab;
