//! The lab itself, without the daemon: what every other test takes for
//! granted. When this fails, the environment is at fault, not tun2socks.

use std::time::Duration;

use anyhow::{Result, ensure};
use lab::Snapshot;
use lab::servers::{MICROSOCKS_PASS, MICROSOCKS_USER, dante_url, hello_url, microsocks_auth_url, microsocks_url};
use lab::topology::port;

use crate::support::{connect, in_bare_lab, probe, srv, xfer_from};

#[test]
fn lab_servers_and_isolation() -> Result<()> {
    in_bare_lab(|lab| {
        lab.start_dante()?;
        lab.start_microsocks()?;
        lab.start_http()?;
        lab.start_probe_server(probe())?;

        // Without a SOCKS server, app cannot reach srv: proxy does not forward.
        for v6 in [false, true] {
            let direct = connect(lab, srv(v6, port::HTTP), Duration::from_secs(1), Duration::ZERO)?;
            ensure!(direct.outcome != "connected", "app reached srv directly: {direct:?}");
        }

        // Every SOCKS server reaches srv, over both families on both legs.
        let proxies = [
            dante_url(false),
            dante_url(true),
            microsocks_url(false),
            microsocks_url(true),
            microsocks_auth_url(MICROSOCKS_USER, MICROSOCKS_PASS),
        ];
        for proxy in &proxies {
            for v6 in [false, true] {
                let body = lab.curl_via(Some(proxy), &hello_url(v6))?;
                ensure!(body == lab.hello_body(), "via {proxy}: body {body:?}");
            }
        }

        // What the refusal tests rely on.
        let wrong = microsocks_auth_url(MICROSOCKS_USER, "wrong");
        ensure!(
            lab.curl_via(Some(&wrong), &hello_url(false)).is_err(),
            "microsocks accepted a wrong password"
        );
        let blocked = format!("http://{}/", srv(false, port::PROBE_BLOCKED));
        ensure!(
            lab.curl_via(Some(&dante_url(false)), &blocked).is_err(),
            "dante did not refuse {blocked}"
        );

        // The probe server, reached directly from proxy.
        for v6 in [false, true] {
            xfer_from(lab, lab.proxy(), srv(v6, port::PROBE), 4, "1MiB", "both", &[])?;
        }

        // Snapshots of an idle namespace are stable.
        let first = Snapshot::take(lab.app())?;
        let second = Snapshot::take(lab.app())?;
        ensure!(first == second, "unstable snapshot:\n{}", first.diff(&second));
        Ok(())
    })
}
