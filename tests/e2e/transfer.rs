//! Requirement 2: 32 parallel transfers of 8 MiB each way, every one verified
//! by SHA-256, on two workers that both carry flows and never see a packet of
//! a flow they hold no state for.

use anyhow::Result;
use lab::Daemon;
use lab::servers::dante_url;
use lab::topology::port;

use crate::support::{expect_spread_over_workers, in_lab, probe, srv, xfer_from};

#[test]
fn parallel_verified_transfers_on_two_workers() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_probe_server(probe())?;
        let daemon = Daemon::start(lab, &dante_url(false), &["--workers", "2"])?;

        // Uploads half-close: their FIN travels while the digest still has
        // to come back (dante relays half-closes).
        let half_close = ["--half-close"];
        let (v4, v6) = (srv(false, port::PROBE), srv(true, port::PROBE));
        let summary = xfer_from(lab, lab.app(), v4, 32, "8MiB", "both", &half_close)?;
        eprintln!("IPv4: {summary}");
        let summary = xfer_from(lab, lab.app(), v6, 4, "1MiB", "both", &half_close)?;
        eprintln!("IPv6: {summary}");

        // 64 IPv4 and 8 IPv6 transfers, one connection each.
        expect_spread_over_workers(&daemon.stop()?, 2, 72)?;
        Ok(())
    })
}
