//! Issue 4, host mode (`--device veth://NAME`): the core datapath's
//! end-to-end checks with the workers on AF_XDP sockets instead of TUN
//! queues: curl via dante and microsocks (IPv4 and IPv6), 32 parallel
//! SHA-256-verified transfers each way on two workers, the same under 3 %
//! random loss on the veth (flow affinity through retransmission timeouts),
//! and the UDP echo through dante's UDP ASSOCIATE.

use anyhow::{Result, ensure};
use lab::Daemon;
use lab::servers::{dante_url, microsocks_url};
use lab::topology::port;

use crate::support::{expect_clean_exit, expect_hello, expect_spread_over_workers, in_lab, probe, srv, xfer_from};
use crate::udp::{COUNT, echo, expect_udp_counters, max_payload_at, t2s_udp};

const HOST_MODE: [&str; 2] = ["--device", "veth://t2s0"];

#[test]
fn curl_over_af_xdp_via_dante_and_microsocks() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_microsocks()?;
        lab.start_http()?;
        for proxy in [dante_url(false), microsocks_url(true)] {
            let daemon = Daemon::start(lab, &proxy, &HOST_MODE)?;
            ensure!(
                daemon.log().contains("host mode: AF_XDP on a veth pair"),
                "not in host mode:\n{}",
                daemon.log()
            );
            expect_hello(lab, false)?;
            expect_hello(lab, true)?;
            expect_clean_exit(&daemon.stop()?, None)?;
            // The pair is gone with the daemon.
            let links = lab.app().ip(&["-o", "link", "show"])?;
            ensure!(!links.contains("t2s0"), "the veth pair outlived the daemon:\n{links}");
        }
        Ok(())
    })
}

#[test]
fn parallel_verified_transfers_over_af_xdp() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_probe_server(probe())?;
        let args = [&HOST_MODE[..], &["--workers", "2"]].concat();
        let daemon = Daemon::start(lab, &dante_url(false), &args)?;

        let half_close = ["--half-close"];
        let (v4, v6) = (srv(false, port::PROBE), srv(true, port::PROBE));
        let summary = xfer_from(lab, lab.app(), v4, 32, "8MiB", "both", &half_close)?;
        eprintln!("IPv4: {summary}");
        let summary = xfer_from(lab, lab.app(), v6, 32, "8MiB", "both", &half_close)?;
        eprintln!("IPv6: {summary}");

        let exit = daemon.stop()?;
        for line in exit.log.lines().filter(|l| l.contains("port counters")) {
            eprintln!("{line}");
        }
        expect_spread_over_workers(&exit, 2, 128)?;
        Ok(())
    })
}

/// UDP works over AF_XDP as over TUN: 10 000 datagrams of mixed sizes up
/// to host mode's MTU over IPv4 and 1 000 over IPv6, every one echoed.
#[test]
fn udp_echo_over_af_xdp() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_udp_echo(t2s_udp())?;
        let args = [&HOST_MODE[..], &["--workers", "2"]].concat();
        let daemon = Daemon::start(lab, &dante_url(false), &args)?;
        let mtu = host_mtu(&daemon)?;
        echo(lab, srv(false, port::UDP_ECHO), COUNT, max_payload_at(mtu, false))?;
        echo(lab, srv(true, port::UDP_ECHO), COUNT / 10, max_payload_at(mtu, true))?;
        let exit = daemon.stop()?;
        expect_clean_exit(&exit, Some(2))?;
        expect_udp_counters(&exit, COUNT + COUNT / 10)
    })
}

/// The MTU the daemon gave the veth (it caps the default of 9000), from
/// its `host mode: ... mtu=N` line.
fn host_mtu(daemon: &Daemon) -> Result<usize> {
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("host mode: AF_XDP on a veth pair"))
        .ok_or_else(|| anyhow::anyhow!("no host-mode line in the log:\n{log}"))?;
    let mtu = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("mtu="))
        .ok_or_else(|| anyhow::anyhow!("no mtu= in {line:?}"))?;
    Ok(mtu.parse()?)
}

/// Flow affinity under loss: nftables drops 3 % of the packets crossing
/// the veth, each way, at random (this kernel has no netem). The kernel
/// retransmits, re-rolling its sockets' transmit hashes after timeouts;
/// the queue steering program keeps every flow on its worker's queue, so
/// no packet reaches a worker without state for its flow, and all 32
/// transfers each way complete with correct checksums.
#[test]
fn transfers_under_random_loss_keep_their_workers() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_probe_server(probe())?;
        let args = [&HOST_MODE[..], &["--workers", "2"]].concat();
        let daemon = Daemon::start(lab, &dante_url(false), &args)?;
        ensure!(
            daemon.log().contains("queue steering attached"),
            "no queue steering:\n{}",
            daemon.log()
        );
        // The table lives in the lab's `app` namespace and goes with it.
        let rules = "table inet t2s_loss {\n\
             chain out { type filter hook output priority 0; oifname \"t2s0\" numgen random mod 100 < 3 drop; }\n\
             chain in { type filter hook input priority 0; iifname \"t2s0\" numgen random mod 100 < 3 drop; }\n\
             }\n";
        let file = lab.dir().join("loss.nft");
        std::fs::write(&file, rules)?;
        lab.app().ip(&["link", "show", "t2s0"])?;
        let out = lab.run_in(
            lab.app(),
            "nft",
            &["-f", &file.to_string_lossy()],
            std::time::Duration::from_secs(10),
        )?;
        ensure!(out.status.success(), "nft -f: {}", String::from_utf8_lossy(&out.stderr));

        let half_close = ["--half-close"];
        let summary = xfer_from(lab, lab.app(), srv(false, port::PROBE), 32, "4MiB", "both", &half_close)?;
        eprintln!("IPv4 under 3 % loss: {summary}");

        let counters = lab.run_in(
            lab.app(),
            "nft",
            &["list", "table", "inet", "t2s_loss"],
            std::time::Duration::from_secs(10),
        )?;
        eprintln!("{}", String::from_utf8_lossy(&counters.stdout));
        let exit = daemon.stop()?;
        eprintln!(
            "late packets of closed flows: {}; packets of unknown flows: {}",
            exit.total("late_packets"),
            exit.total("no_session_packets")
        );
        // no_session_packets = 0 on both workers: checked here.
        expect_spread_over_workers(&exit, 2, 64)?;
        Ok(())
    })
}

/// `--device auto` (the default) picks TUN while TUN offload is on (it
/// measured faster than host mode at every MTU); with offload off, host
/// mode at MTUs it carries and TUN above (its larger packets win).
#[test]
fn auto_picks_host_mode_only_without_offload_at_small_mtus() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_http()?;
        for (mtu, offload, host_mode) in [("1500", "on", false), ("1500", "off", true), ("9000", "off", false)] {
            let args = ["--mtu", mtu, "--tun-offload", offload];
            let daemon = Daemon::start(lab, &dante_url(false), &args)?;
            let log = daemon.log();
            ensure!(log.contains("--device auto"), "no choice logged:\n{log}");
            ensure!(
                log.contains("host mode: AF_XDP on a veth pair") == host_mode,
                "MTU {mtu}, offload {offload}: host mode expected: {host_mode}\n{log}"
            );
            expect_hello(lab, false)?;
            expect_hello(lab, true)?;
            expect_clean_exit(&daemon.stop()?, None)?;
        }
        Ok(())
    })
}

/// `--device auto` picks TUN where host mode cannot start: here its veth
/// pair cannot be made because an interface already has the peer's name.
/// The daemon says why, serves through TUN, and leaves the interface it did
/// not make alone.
#[test]
fn auto_picks_tun_when_host_mode_cannot_make_its_veth_pair() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_http()?;
        lab.app()
            .ip(&["link", "add", "tun2socks0x", "type", "veth", "peer", "name", "blocker0"])?;
        // Offload off: the case where auto would otherwise pick host mode.
        let args = ["--mtu", "1500", "--tun-offload", "off"];
        let daemon = Daemon::start(lab, &dante_url(false), &args)?;
        let log = daemon.log();
        ensure!(
            log.contains("--device auto device=tun://tun2socks0")
                && log.contains("name host mode needs for its veth peer"),
            "no choice of TUN logged:\n{log}"
        );
        ensure!(
            log.contains("ready device=tun://tun2socks0"),
            "not serving through TUN:\n{log}"
        );
        let link = lab.app().ip(&["-d", "link", "show", "tun2socks0"])?;
        ensure!(link.contains("tun type tun"), "tun2socks0 is not a TUN device:\n{link}");
        expect_hello(lab, false)?;
        expect_hello(lab, true)?;
        expect_clean_exit(&daemon.stop()?, None)?;
        let links = lab.app().ip(&["-o", "link", "show"])?;
        ensure!(
            links.contains("tun2socks0x"),
            "the interface tun2socks0 did not make is gone:\n{links}"
        );
        ensure!(
            !links.contains("tun2socks0:"),
            "the TUN device outlived the daemon:\n{links}"
        );
        Ok(())
    })
}
