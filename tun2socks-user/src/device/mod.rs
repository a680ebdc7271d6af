//! Packet I/O below the workers: the port seam (`port`) and what it runs on.
pub mod ethtool;
pub mod neighbours;
pub mod port;
pub mod tun;
pub mod vnet;
pub mod xsk;
