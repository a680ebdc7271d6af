//! End-to-end tests of the `tun2socks` daemon (issue 2), each in a lab of its
//! own: `app` (daemon and clients) —veth— `proxy` (dante, microsocks) —veth—
//! `srv` (HTTP, t2s-probe). They need root and a built daemon: run them with
//! `cargo xtask test`, or set `TUN2SOCKS_BIN`.
//!
//! Requirement 5 (steering equals the user-space hash) is tested in the
//! daemon's own crate.

mod support;

mod auth; // 3. SOCKS5 username/password
mod crash; // issue 6: kill -9 during setup and under load, then cleanup / restart
mod curl; // 1. curl via dante and microsocks, IPv4 and IPv6
mod dns; // issue 3: 3. dig in udp and over-tcp modes, 4. fake-ip by name
mod errors; // one-line errors for bad configurations
mod host_mode; // issue 4: the core datapath over AF_XDP (--device veth://NAME)
mod lab_check; // the lab alone, without the daemon
mod limits; // issue 6: session and buffer-memory limits refuse, log once, recover
mod ops; // issue 7: metrics, stats, --no-setup, single-queue device, http and direct upstreams, unit capabilities
mod refusal; // 4. refused destinations are refused fast
mod robust_input; // issue 6: malformed packets, SYN flood
mod robust_proxy; // issue 6: misbehaving SOCKS5 and HTTP proxies
mod route_loop; // 7. a routed prefix containing the proxy
mod router_mode; // issue 4: --device xdp://IFACE on a router's LAN interface
mod teardown; // 6. the namespace is as before after SIGTERM/SIGINT
mod transfer; // 2. 32 parallel verified transfers on two workers
mod tun_gateway; // TUN mode as a LAN gateway: forwarded traffic, GSO out to a NIC without offloads, bad checksums in
mod udp; // issue 3: 1. UDP echo, 2. endpoint-independent mapping, 5. session bounds
