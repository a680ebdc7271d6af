//! Packet I/O below the workers.
pub mod tun;
pub mod xsk;
