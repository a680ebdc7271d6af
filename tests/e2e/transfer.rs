//! Requirement 2: 32 parallel transfers of 8 MiB each way, every one verified
//! by SHA-256, on two workers that both carry flows and never see a packet of
//! a flow they hold no state for.

use anyhow::{Result, ensure};
use lab::Daemon;
use lab::servers::dante_url;
use lab::topology::port;

use crate::support::{expect_spread_over_workers, in_lab, probe, srv, xfer_from};

#[test]
fn parallel_verified_transfers_on_two_workers() -> Result<()> {
    verified_transfers(Offload::Default)
}

/// The same with TUN offload off: one packet per read or write.
#[test]
fn parallel_verified_transfers_without_tun_offload() -> Result<()> {
    verified_transfers(Offload::Off)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offload {
    /// The daemon's default, `--tun-offload on`.
    Default,
    Off,
}

fn verified_transfers(offload: Offload) -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_probe_server(probe())?;
        let mut args = vec!["--workers", "2"];
        if offload == Offload::Off {
            args.extend(["--tun-offload", "off"]);
        }
        let daemon = Daemon::start(lab, &dante_url(false), &args)?;

        // Uploads half-close: their FIN travels while the digest still has
        // to come back (dante relays half-closes).
        let half_close = ["--half-close"];
        let (v4, v6) = (srv(false, port::PROBE), srv(true, port::PROBE));
        let summary = xfer_from(lab, lab.app(), v4, 32, "8MiB", "both", &half_close)?;
        eprintln!("IPv4: {summary}");
        let summary = xfer_from(lab, lab.app(), v6, 16, "8MiB", "both", &half_close)?;
        eprintln!("IPv6: {summary}");

        // 64 IPv4 and 32 IPv6 transfers, one connection each.
        let exit = daemon.stop()?;
        expect_spread_over_workers(&exit, 2, 96)?;

        // Offload really carried the data: downloads left as GSO packets of
        // several segments each, uploads came in as TSO packets, and nothing
        // failed a checksum. Off: none of it.
        let (gso, segments, tso) = (
            exit.total("gso_packets_out"),
            exit.total("gso_segments_out"),
            exit.total("tso_packets_in"),
        );
        eprintln!(
            "offload {offload:?}: gso_packets_out={gso} gso_segments_out={segments} tso_packets_in={tso} \
             packets_out={} packets_in={}",
            exit.total("packets_out"),
            exit.total("packets_in")
        );
        ensure!(exit.total("bad_checksum_in") == 0, "checksum failures");
        match offload {
            Offload::Default => {
                // 32 × 8 MiB down is at least 30 000 segments of 9 000 bytes.
                ensure!(
                    gso >= 1_000 && segments >= 2 * gso,
                    "too little GSO: {gso} packets, {segments} segments"
                );
                ensure!(tso >= 100, "too little TSO: {tso} packets");
            }
            Offload::Off => ensure!(gso == 0 && tso == 0, "offload counters moved with offload off"),
        }
        Ok(())
    })
}
