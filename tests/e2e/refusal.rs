//! Requirement 4: a destination the proxy cannot or will not connect to is
//! refused to the application within the connect timeout.

use std::time::Duration;

use anyhow::{Result, ensure};
use lab::Daemon;
use lab::servers::dante_url;
use lab::topology::port;

use crate::support::{connect, expect_clean_exit, expect_refused, in_lab, probe, srv};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn refused_destinations_are_refused_fast() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_probe_server(probe())?;
        let timeout = CONNECT_TIMEOUT.as_secs().to_string();
        let mut daemon = Daemon::start(lab, &dante_url(false), &["--connect-timeout", &timeout])?;

        for v6 in [false, true] {
            // dante's rule refuses this port although a server listens on it.
            expect_refused(lab, srv(v6, port::PROBE_BLOCKED), CONNECT_TIMEOUT)?;
            // Nothing listens: srv's kernel resets dante's connect.
            expect_refused(lab, srv(v6, port::CLOSED), CONNECT_TIMEOUT)?;
        }
        // The same server's other port is fine, so it was the rule that refused.
        let open = connect(
            lab,
            srv(false, port::PROBE),
            CONNECT_TIMEOUT,
            Duration::from_millis(500),
        )?;
        ensure!(open.outcome == "connected", "open port: {open:?}");
        daemon.ensure_running()?;
        expect_clean_exit(&daemon.stop()?, None)
    })
}
