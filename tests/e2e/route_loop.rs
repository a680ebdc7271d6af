//! Requirement 7: routing prefixes that contain the proxy's own address
//! (`10.0.0.0/8`, `fd00::/16`) works and does not loop: the daemon's upstream
//! connections never come back into the tunnel.

use anyhow::{Result, ensure};
use lab::Daemon;
use lab::servers::dante_url;
use lab::topology::port;

use crate::support::{expect_clean_exit, expect_hello, in_lab, probe, srv, xfer};

#[test]
fn routed_prefix_containing_the_proxy() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_http()?;
        lab.start_probe_server(probe())?;
        let routes = ["--route", "10.0.0.0/8", "--route", "fd00::/16"];
        let mut daemon = Daemon::start(lab, &dante_url(false), &routes)?;

        expect_hello(lab, false)?;
        expect_hello(lab, true)?;
        xfer(lab, srv(false, port::PROBE), 8, "2MiB", "both")?;
        xfer(lab, srv(true, port::PROBE), 2, "1MiB", "both")?;
        daemon.ensure_running()?;

        let exit = daemon.stop()?;
        expect_clean_exit(&exit, None)?;
        // 2 curls + 16 + 4 transfers, one connection each. A loop would show
        // up as the daemon accepting its own upstream connections too.
        let flows = exit.total("flows_accepted");
        ensure!(
            flows == 22,
            "expected 22 flows through the tunnel, the daemon accepted {flows}"
        );
        Ok(())
    })
}
