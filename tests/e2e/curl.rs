//! Requirement 1: curl through the tunnel to the HTTP server in `srv`, via
//! dante-server and via microsocks, to IPv4 and IPv6 destinations.

use anyhow::Result;
use lab::Daemon;
use lab::servers::{dante_url, microsocks_url};

use crate::support::{expect_clean_exit, expect_hello, in_lab};

/// dante, reached over IPv4.
#[test]
fn curl_via_dante() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_http()?;
        let daemon = Daemon::start(lab, &dante_url(false), &[])?;
        expect_hello(lab, false)?;
        expect_hello(lab, true)?;
        expect_clean_exit(&daemon.stop()?, None)
    })
}

/// microsocks, reached over IPv6 (`socks5://[fd00:1::2]:1081`).
#[test]
fn curl_via_microsocks() -> Result<()> {
    in_lab(|lab| {
        lab.start_microsocks()?;
        lab.start_http()?;
        let daemon = Daemon::start(lab, &microsocks_url(true), &[])?;
        expect_hello(lab, false)?;
        expect_hello(lab, true)?;
        expect_clean_exit(&daemon.stop()?, None)
    })
}
