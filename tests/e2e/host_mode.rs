//! Issue 4, host mode (`--device veth://NAME`): the core datapath's
//! end-to-end checks with the workers on AF_XDP sockets instead of TUN
//! queues: curl via dante and microsocks (IPv4 and IPv6), and 32 parallel
//! SHA-256-verified transfers each way on two workers.

use anyhow::{Result, ensure};
use lab::Daemon;
use lab::servers::{dante_url, microsocks_url};
use lab::topology::port;

use crate::support::{expect_clean_exit, expect_hello, in_lab, probe, srv, xfer_from};

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
        expect_clean_exit(&exit, Some(2))?;
        for worker in &exit.workers {
            ensure!(
                worker.require("flows_accepted")? > 0,
                "a worker carried no flows (queue steering?): {:?}",
                exit.workers
            );
        }
        let flows = exit.total("flows_accepted");
        ensure!(flows >= 128, "only {flows} flows accepted for 128 transfers");
        Ok(())
    })
}
