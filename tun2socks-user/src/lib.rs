//! tun2socks daemon library: everything the `tun2socks` binary is made of,
//! exposed so that integration tests can drive the parts directly.
pub mod device;
