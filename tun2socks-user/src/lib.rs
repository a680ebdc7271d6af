//! tun2socks daemon library: everything the `tun2socks` binary is made of,
//! exposed so that integration tests can drive the parts directly.
pub mod cli;
pub mod config;
pub mod daemon;
pub mod device;
pub mod dns;
pub mod host_mode;
pub mod journal;
pub mod metrics;
pub mod netns;
pub mod notify;
pub mod packet;
pub mod privileges;
pub mod proxy;
pub mod router_mode;
pub mod setup;
pub mod steering;
pub mod tc_steer;
pub mod worker;
pub mod xdp;
