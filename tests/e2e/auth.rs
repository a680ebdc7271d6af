//! Requirement 3: SOCKS5 username/password (RFC 1929, microsocks). The right
//! credentials work; with wrong ones every connect of the application fails
//! fast, and the daemon stays up answering them.

use std::time::Duration;

use anyhow::{Result, ensure};
use lab::Daemon;
use lab::servers::{MICROSOCKS_PASS, MICROSOCKS_USER, microsocks_auth_url};
use lab::topology::port;

use crate::support::{expect_clean_exit, expect_hello, expect_refused, in_lab, probe, srv, xfer};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn username_password_authentication() -> Result<()> {
    in_lab(|lab| {
        lab.start_microsocks()?;
        lab.start_http()?;
        lab.start_probe_server(probe())?;
        let timeout = CONNECT_TIMEOUT.as_secs().to_string();

        let wrong = microsocks_auth_url(MICROSOCKS_USER, "not-the-password");
        let mut daemon = Daemon::start(lab, &wrong, &["--connect-timeout", &timeout])?;
        for (v6, port) in [(false, port::HTTP), (true, port::HTTP), (false, port::PROBE)] {
            expect_refused(lab, srv(v6, port), CONNECT_TIMEOUT)?;
            daemon.ensure_running()?;
        }
        let exit = daemon.stop()?;
        expect_clean_exit(&exit, None)?;
        let refused = exit.total("flows_refused");
        ensure!(refused >= 3, "3 refused connects, flows_refused={refused}");

        let right = microsocks_auth_url(MICROSOCKS_USER, MICROSOCKS_PASS);
        let daemon = Daemon::start(lab, &right, &["--connect-timeout", &timeout])?;
        expect_hello(lab, false)?;
        expect_hello(lab, true)?;
        xfer(lab, srv(false, port::PROBE), 4, "1MiB", "both")?;
        expect_clean_exit(&daemon.stop()?, None)
    })
}
