//! The TUN device as a gateway: `app` runs the daemon in its default mode
//! (`--device tun://`, TUN offload on) and forwards for a LAN host in a
//! namespace `lan` behind it, whose traffic the kernel routes into the TUN.
//!
//! ```text
//!   lan (192.168.60.2, fd00:60::2) —— gw0 (192.168.60.1, fd00:60::1) app = gateway —TUN— tun2socks —— proxy (dante) —— srv
//! ```
//!
//! Nothing in the daemon's route setup is specific to local traffic: its
//! rules (`not fwmark M lookup T`, see tun2socks-user/src/setup/plan.rs)
//! have no `iif`, so a forwarded packet to a routed prefix meets them like a
//! local one and is routed into the TUN, and the replies the daemon writes
//! to the LAN's addresses find `lan` through the main table's connected
//! route (rule P+1, `lookup main suppress_prefixlength 0`). A user has to
//! configure only what any router needs: forwarding on
//! (`net.ipv4.ip_forward=1`, `net.ipv6.conf.all.forwarding=1`; a fresh
//! namespace, like a fresh host, has both off) and the LAN hosts' default
//! route via the gateway. Strict reverse-path filtering (`rp_filter=1`, on
//! here) does not get in the way: a LAN source is reached back through the
//! port it came in by, a proxied one through the TUN.
//!
//! Offload metadata is what this covers that the tests inside `app` do
//! not:
//!
//! * downloads: the daemon writes GSO packets (gso_size, csum_start and
//!   csum_offset in its `virtio_net_hdr`); the kernel forwards them to
//!   `gw0`, whose TX offloads (GSO, TSO, checksumming) are off, so the
//!   kernel segments and checksums them in software before `lan` sees them
//!   (with TSO left on, a veth takes some of them whole and `lan` never
//!   checks their checksums: the frame count below tells). A wrong
//!   gso_size, csum_start or csum_offset would corrupt or stall the
//!   SHA-256-verified transfers;
//! * uploads: `lan0` has TX checksum offload off (a wire carries whole
//!   checksums). Without GRO on `gw0` (a veth's default) forwarded packets
//!   reach the TUN with neither NEEDS_CSUM nor DATA_VALID, and the daemon
//!   verifies every TCP checksum in software: none may fail
//!   (`bad_checksum_in` stays 0), none is trusted. With GRO on (as on a
//!   NIC), the kernel verifies and merges them: they arrive as TSO packets
//!   marked DATA_VALID (not NEEDS_CSUM), which the daemon must take too;
//! * SYNs from `lan` with a wrong TCP checksum to a proxied, open
//!   destination are counted in `bad_checksum_in` and dropped: no proxy
//!   connection (`proxy`'s kernel sees no new passive open), no flow, no
//!   SYN-ACK back to `lan` (its kernel sends no RST for one). A SYN that
//!   fails GRO's check is passed on unmerged and unmarked, so the same
//!   holds with GRO on. The same SYNs with good checksums do all of that,
//!   so the check is not vacuous.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lab::servers::dante_url;
use lab::topology::port;
use lab::wait::poll;
use lab::{Daemon, Lab, Netns};

use crate::support::{expect_spread_over_workers, in_lab, probe, srv, stats_table, stats_total, xfer_from};

const LAN_V4: &str = "192.168.60.2";
const GW_V4: &str = "192.168.60.1";
const LAN_V6: &str = "fd00:60::2";
const GW_V6: &str = "fd00:60::1";

/// How the gateway's LAN port receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LanRx {
    /// A veth's default: no GRO, every frame is forwarded as it came, its
    /// checksum unverified.
    Plain,
    /// GRO on, as a NIC driver has it: the kernel verifies the checksums
    /// of what it merges.
    Gro,
}

/// Adds `lan` behind `app` and makes `app` a router. Only the lab's
/// namespaces change.
fn lan_behind_gateway(lab: &Lab, rx: LanRx) -> Result<Netns> {
    let lan = Netns::create(&format!("{}-lan", lab.id()))?;
    let gw = lab.app();
    lan.ip(&[
        "link",
        "add",
        "lan0",
        "type",
        "veth",
        "peer",
        "name",
        "gw0",
        "netns",
        gw.name(),
    ])?;
    lan.ip(&["addr", "add", &format!("{LAN_V4}/24"), "dev", "lan0"])?;
    lan.ip(&["-6", "addr", "add", &format!("{LAN_V6}/64"), "dev", "lan0", "nodad"])?;
    lan.ip(&["link", "set", "lan0", "up"])?;
    lan.ip(&["route", "add", "default", "via", GW_V4])?;
    lan.ip(&["-6", "route", "add", "default", "via", GW_V6])?;
    // A veth standing in for a wire: whole checksums, as on a real LAN.
    lan.disable_tx_checksum_offload("lan0")?;

    gw.ip(&["addr", "add", &format!("{GW_V4}/24"), "dev", "gw0"])?;
    gw.ip(&["-6", "addr", "add", &format!("{GW_V6}/64"), "dev", "gw0", "nodad"])?;
    gw.ip(&["link", "set", "gw0", "up"])?;
    // The gateway's LAN port as a NIC without TX offloads: what the daemon
    // writes as one GSO packet must be cut into segments, and checksummed,
    // by the kernel's software fallback on the way out.
    gw.disable_tx_offloads("gw0")?;
    if rx == LanRx::Gro {
        gw.enable_gro("gw0")?;
    }
    // A router forwards (`all`: every device, the TUN to come included).
    gw.sysctl("net.ipv4.ip_forward", "1")?;
    gw.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    // Strict reverse-path filtering, as a cautious router has it: the
    // daemon's routes must not make forwarded traffic look spoofed.
    gw.sysctl("net.ipv4.conf.all.rp_filter", "1")?;
    gw.sysctl("net.ipv4.conf.default.rp_filter", "1")?;
    for dev in ["gw0", "app0"] {
        poll(&format!("{dev} to be up"), Duration::from_secs(5), || {
            let state = gw.ip(&["-br", "link", "show", "dev", dev])?;
            Ok(state.contains(" UP ").then_some(()))
        })?;
    }
    Ok(lan)
}

/// The daemon in `app` as the other tests run it: default device (TUN,
/// offload on), default routes (everything), two workers.
fn start_daemon(lab: &Lab) -> Result<Daemon<'_>> {
    let daemon = Daemon::start(lab, &dante_url(false), &["--workers", "2"])?;
    let log = daemon.log();
    ensure!(
        log.lines()
            .any(|l| l.contains("tun2socks ready") && l.contains("device=tun://")),
        "not on a TUN device:\n{log}"
    );
    Ok(daemon)
}

#[test]
fn forwarded_lan_transfers_through_tun_offload() -> Result<()> {
    forwarded_transfers(LanRx::Plain)
}

/// The same with GRO on the gateway's LAN port.
#[test]
fn forwarded_lan_transfers_through_tun_offload_with_gro() -> Result<()> {
    forwarded_transfers(LanRx::Gro)
}

fn forwarded_transfers(rx: LanRx) -> Result<()> {
    in_lab(|lab| {
        let lan = lan_behind_gateway(lab, rx)?;
        lab.start_dante()?;
        lab.start_probe_server(probe())?;
        let daemon = start_daemon(lab)?;

        let half_close = ["--half-close"];
        let summary = xfer_from(lab, &lan, srv(false, port::PROBE), 8, "8MiB", "both", &half_close)?;
        eprintln!("LAN host, IPv4: {summary}");
        let summary = xfer_from(lab, &lan, srv(true, port::PROBE), 8, "8MiB", "both", &half_close)?;
        eprintln!("LAN host, IPv6: {summary}");

        let exit = daemon.stop()?;
        // 16 IPv4 and 16 IPv6 connections, every one from `lan`.
        expect_spread_over_workers(&exit, 2, 32)?;
        let (gso, segments, tso, trusted, bad) = (
            exit.total("gso_packets_out"),
            exit.total("gso_segments_out"),
            exit.total("tso_packets_in"),
            exit.total("csum_trusted_in"),
            exit.total("bad_checksum_in"),
        );
        eprintln!(
            "gateway, LAN rx {rx:?}: gso_packets_out={gso} gso_segments_out={segments} tso_packets_in={tso} \
             csum_trusted_in={trusted} bad_checksum_in={bad} packets_out={} packets_in={}",
            exit.total("packets_out"),
            exit.total("packets_in")
        );
        ensure!(bad == 0, "{bad} forwarded packets failed the checksum check");
        // The kernel's software fallback really did the work: `lan`
        // received every segment of every GSO write, and every plain write,
        // as a frame of its own (with TSO left on, gw0 passes some GSO
        // packets on whole and this falls short), all of them with a
        // checksum its TCP accepted. Frames dropped on the way would have
        // been retransmitted, so they count too.
        let written = segments + exit.total("packets_out").saturating_sub(gso);
        let frames = link_counter(&lan, "lan0", "rx_packets")?;
        let dropped = link_counter(&lan, "lan0", "rx_dropped")? + link_counter(lab.app(), "gw0", "tx_dropped")?;
        eprintln!("lan0 received {frames} frames, {dropped} dropped, for {written} segments and plain packets written");
        ensure!(
            frames + dropped >= written,
            "lan0 received {frames} frames ({dropped} dropped) for {written} segments and plain packets \
             written: gw0 did not segment every GSO packet"
        );
        let csum_errors = tcp_counter(&lan, "InCsumErrors")?;
        ensure!(
            csum_errors == 0,
            "lan received {csum_errors} TCP segments with bad checksums"
        );
        match rx {
            // Forwarded frames carry no checksum metadata: the daemon
            // verified every upload segment itself.
            LanRx::Plain => ensure!(
                tso == 0 && trusted == 0,
                "forwarded packets came with offload metadata: tso_packets_in={tso} csum_trusted_in={trusted}"
            ),
            // GRO verified and merged them: they came as TSO packets
            // marked DATA_VALID.
            LanRx::Gro => ensure!(
                tso > 0 && trusted > 0,
                "GRO on the LAN port, yet tso_packets_in={tso} csum_trusted_in={trusted}"
            ),
        }
        // 16 × 8 MiB down in segments of 1460 or 1440 bytes: about 92 000
        // segments. Offload carried them, several per write.
        ensure!(
            gso >= 1_000 && segments >= 2 * gso,
            "too little GSO: {gso} packets, {segments} segments"
        );
        Ok(())
    })
}

#[test]
fn forwarded_syn_with_bad_checksum_is_dropped_and_counted() -> Result<()> {
    forwarded_bad_syns(LanRx::Plain)
}

/// The same with GRO on the gateway's LAN port: a SYN that fails GRO's
/// checksum check is passed on unmerged and unmarked, not as verified.
#[test]
fn forwarded_syn_with_bad_checksum_is_dropped_and_counted_with_gro() -> Result<()> {
    forwarded_bad_syns(LanRx::Gro)
}

fn forwarded_bad_syns(rx: LanRx) -> Result<()> {
    in_lab(|lab| {
        let lan = lan_behind_gateway(lab, rx)?;
        lab.start_dante()?;
        lab.start_probe_server(probe())?;
        let daemon = start_daemon(lab)?;
        const SYNS: u64 = 50;

        // Bad checksums, IPv4 and IPv6, to a port dante would connect.
        let opens_before = tcp_counter(lab.proxy(), "PassiveOpens")?;
        let rsts_before = tcp_counter(&lan, "OutRsts")?;
        for (src, v6) in [(LAN_V4, false), (LAN_V6, true)] {
            inject_syns(lab, &lan, src, v6, SYNS, true)?;
        }
        let table = wait_for(lab, "bad_checksum_in", |v| v >= 2 * SYNS)?;
        // Anything a SYN-ACK would have drawn has had time to happen.
        std::thread::sleep(Duration::from_secs(1));
        let table_after = stats_table(lab)?;
        eprintln!(
            "LAN rx {rx:?}, after {} SYNs with bad checksums:\n{table_after}",
            2 * SYNS
        );
        ensure!(
            stats_total(&table_after, "bad_checksum_in")? == 2 * SYNS,
            "bad_checksum_in is not {}:\n{table}",
            2 * SYNS
        );
        ensure!(
            stats_total(&table_after, "flows_accepted")? == 0,
            "a flow was accepted for a corrupt SYN:\n{table_after}"
        );
        ensure!(
            tcp_counter(lab.proxy(), "PassiveOpens")? == opens_before,
            "the SOCKS server was connected for a corrupt SYN"
        );
        ensure!(
            tcp_counter(&lan, "OutRsts")? == rsts_before,
            "lan answered something (a SYN-ACK?) with a RST"
        );

        // The control: the same SYNs with good checksums each make the
        // daemon connect through dante and answer with a SYN-ACK, which
        // `lan`'s kernel (no socket behind a raw SYN) resets.
        const GOOD: u64 = 3;
        for (src, v6) in [(LAN_V4, false), (LAN_V6, true)] {
            inject_syns(lab, &lan, src, v6, GOOD, false)?;
        }
        wait_for(lab, "flows_accepted", |v| v >= 2 * GOOD)?;
        poll("lan to reset the SYN-ACKs", Duration::from_secs(10), || {
            Ok((tcp_counter(&lan, "OutRsts")? >= rsts_before + 2 * GOOD).then_some(()))
        })?;
        ensure!(
            tcp_counter(lab.proxy(), "PassiveOpens")? >= opens_before + 2 * GOOD,
            "good SYNs did not reach the SOCKS server"
        );
        let table = stats_table(lab)?;
        ensure!(
            stats_total(&table, "bad_checksum_in")? == 2 * SYNS,
            "good SYNs counted as bad:\n{table}"
        );

        let exit = daemon.stop()?;
        ensure!(exit.status.success(), "tun2socks exited with {}", exit.status);
        Ok(())
    })
}

/// `t2s-inject syn-flood` from `lan`: `count` SYNs from `src` to `srv`'s
/// probe port.
fn inject_syns(lab: &Lab, lan: &Netns, src: &str, v6: bool, count: u64, bad: bool) -> Result<()> {
    let to = srv(v6, port::PROBE).to_string();
    let count = count.to_string();
    let src_flag = if v6 { "--src6" } else { "--src4" };
    let mut args = vec![
        "syn-flood",
        "--to",
        &to,
        src_flag,
        src,
        "--count",
        &count,
        "--seconds",
        "10",
    ];
    if bad {
        args.push("--bad-checksum");
    }
    let inject = env!("CARGO_BIN_EXE_t2s-inject");
    let out = lab.run_in(lan, inject, &args, Duration::from_secs(20))?;
    ensure!(
        out.status.success(),
        "t2s-inject {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Polls `tun2socks stats` until the total of `key` satisfies `ok`.
fn wait_for(lab: &Lab, key: &str, ok: impl Fn(u64) -> bool) -> Result<String> {
    let mut last = String::new();
    poll(&format!("{key} in tun2socks stats"), Duration::from_secs(10), || {
        last = stats_table(lab)?;
        Ok(ok(stats_total(&last, key)?).then(|| last.clone()))
    })
    .with_context(|| format!("last table:\n{last}"))
}

/// A counter of `dev` in `ns` (`/sys/class/net/DEV/statistics/NAME`; `ip
/// netns exec` mounts the namespace's own sysfs).
fn link_counter(ns: &Netns, dev: &str, name: &str) -> Result<u64> {
    let path = format!("/sys/class/net/{dev}/statistics/{name}");
    let out = ns
        .command("cat")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("reading {path}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("{path} in {}: {text:?}", ns.name()))
}

/// One `Tcp:` counter of a namespace's `/proc/net/snmp` (IPv4 and IPv6
/// together: the kernel counts TCP once for both).
fn tcp_counter(ns: &Netns, name: &str) -> Result<u64> {
    let out = ns
        .command("cat")
        .arg("/proc/net/snmp")
        .stdin(Stdio::null())
        .output()
        .context("reading /proc/net/snmp")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = text.lines().filter_map(|l| l.strip_prefix("Tcp: "));
    let (names, values) = (rows.next(), rows.next());
    names
        .zip(values)
        .and_then(|(n, v)| n.split_whitespace().zip(v.split_whitespace()).find(|(k, _)| *k == name))
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("no Tcp {name} in {}'s /proc/net/snmp", ns.name()))
}
