//! Issue 3, requirements 3 and 4: DNS through the tunnel. `dig` against
//! dnsmasq in `srv` in `udp` mode (via dante's UDP ASSOCIATE) and in
//! `over-tcp` mode (via microsocks, which has no UDP); and `fake-ip`, where
//! the daemon answers A/AAAA itself and the proxy resolves the name.
//!
//! For fake-ip, `app`'s resolver is pointed at the daemon's `--dns-addr` and
//! the proxy's hosts file maps the names to `srv`, through `/etc/netns/<ns>/`
//! files that `ip netns exec` bind-mounts over `/etc` (see
//! `Lab::netns_etc_file`; the lab removes them).

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lab::servers::{DNS_NAME, DNS_NAME_TXT, DNS_NAME_V4, DNS_NAME_V6, dante_url, microsocks_url};
use lab::topology::{addr, port};
use lab::{Daemon, DaemonExit, Lab};

use crate::support::{expect_clean_exit, in_lab};
use crate::udp::{echo, t2s_udp};

/// The daemon's default `--dns-addr`es.
const DNS_ADDR_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const DNS_ADDR_V6: Ipv6Addr = Ipv6Addr::new(0xfd74, 0x3273, 0, 0, 0, 0, 0, 2);
/// dnsmasq in `srv`, for `--dns-upstream`.
const UPSTREAM: SocketAddr = SocketAddr::new(IpAddr::V4(addr::SRV_V4), port::DNS);
/// The name the fake-ip tests fetch over HTTP.
const SERVICE: &str = "service.test";
/// How many names the two-worker fake-ip test resolves and fetches.
const NAMES: usize = 50;

/// One `dig` answer: the status and the answer records' data.
#[derive(Debug)]
struct Answer {
    status: String,
    data: Vec<String>,
}

/// `dig @SERVER NAME TYPE` over UDP from `app`, bounded in time.
fn dig(lab: &Lab, server: IpAddr, name: &str, qtype: &str) -> Result<Answer> {
    let at = format!("@{server}");
    let args = [at.as_str(), name, qtype, "+notcp", "+time=3", "+tries=2", "+nocookie"];
    let out = lab.run_in(lab.app(), "dig", &args, Duration::from_secs(15))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let shown = format!("dig {}", args.join(" "));
    ensure!(out.status.success(), "{shown} failed ({}):\n{stdout}", out.status);
    let status = stdout
        .split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .with_context(|| format!("{shown}: no status in\n{stdout}"))?
        .to_owned();
    // Answer records: `NAME TTL CLASS TYPE DATA...`, outside the `;` comments.
    let data = stdout
        .lines()
        .filter(|line| !line.starts_with(';') && !line.trim().is_empty())
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 5 && fields[3] == qtype).then(|| fields[4..].join(" "))
        })
        .collect();
    Ok(Answer { status, data })
}

/// `dig` that must return exactly `expected`.
fn expect_dig(lab: &Lab, server: IpAddr, name: &str, qtype: &str, expected: &str) -> Result<()> {
    let answer = dig(lab, server, name, qtype)?;
    ensure!(
        answer.status == "NOERROR" && answer.data == [expected],
        "dig @{server} {name} {qtype}: expected {expected}, got {answer:?}"
    );
    eprintln!("dig @{server} {name} {qtype}: {expected}");
    Ok(())
}

/// A and AAAA of [`DNS_NAME`] from dnsmasq, asked at its IPv4 and IPv6 address.
fn expect_dnsmasq_answers(lab: &Lab) -> Result<()> {
    for server in [addr::srv(false), addr::srv(true)] {
        expect_dig(lab, server, DNS_NAME, "A", DNS_NAME_V4)?;
        expect_dig(lab, server, DNS_NAME, "AAAA", DNS_NAME_V6)?;
    }
    Ok(())
}

/// dnsmasq logged queries for `qtype` from the proxy's outgoing addresses
/// (`families`: IPv4, IPv6), so they came through the SOCKS server.
fn expect_dnsmasq_saw(lab: &Lab, qtype: &str, families: &[bool]) -> Result<()> {
    let log = fs::read_to_string(lab.dir().join("dnsmasq.log")).context("reading dnsmasq's log")?;
    for &v6 in families {
        let from = if v6 {
            IpAddr::from(addr::PROXY_OUT_V6)
        } else {
            addr::PROXY_OUT_V4.into()
        };
        let line = format!("query[{qtype}] {DNS_NAME} from {from}");
        ensure!(log.contains(&line), "dnsmasq's log has no `{line}`:\n{log}");
    }
    Ok(())
}

fn counters(exit: &DaemonExit, keys: &[&str]) -> String {
    keys.iter()
        .map(|k| format!("{k}={}", exit.total(k)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Requirement 3, `--dns udp`: ordinary UDP through dante's association.
#[test]
fn dig_udp_mode_via_dante() -> Result<()> {
    in_lab(|lab| {
        lab.start_dante()?;
        lab.start_dnsmasq()?;
        let daemon = Daemon::start(lab, &dante_url(false), &["--dns", "udp"])?;
        expect_dnsmasq_answers(lab)?;
        expect_dnsmasq_saw(lab, "A", &[false, true])?;

        let exit = daemon.stop()?;
        expect_clean_exit(&exit, None)?;
        let shown = counters(&exit, &["udp_sessions_opened", "udp_datagrams_in", "dns_sent_over_tcp"]);
        eprintln!("{shown}");
        // Four digs, four sockets; each query and its answer went through an association.
        ensure!(
            exit.total("udp_sessions_opened") >= 4,
            "queries did not use UDP associations: {shown}"
        );
        ensure!(
            exit.total("udp_datagrams_in") >= 4,
            "answers did not come through associations: {shown}"
        );
        ensure!(
            exit.total("dns_sent_over_tcp") == 0,
            "udp mode used DNS over TCP: {shown}"
        );
        Ok(())
    })
}

/// Requirement 3, `--dns over-tcp`: UDP queries to port 53 become DNS over
/// TCP through microsocks (no UDP ASSOCIATE), reached over IPv6.
#[test]
fn dig_over_tcp_mode_via_microsocks() -> Result<()> {
    in_lab(|lab| {
        lab.start_microsocks()?;
        lab.start_dnsmasq()?;
        let daemon = Daemon::start(lab, &microsocks_url(true), &["--dns", "over-tcp"])?;
        expect_dnsmasq_answers(lab)?;
        expect_dnsmasq_saw(lab, "A", &[false, true])?;

        let exit = daemon.stop()?;
        expect_clean_exit(&exit, None)?;
        let shown = counters(&exit, &["dns_sent_over_tcp", "dns_failed", "udp_sessions_opened"]);
        eprintln!("{shown}");
        ensure!(
            exit.total("dns_sent_over_tcp") >= 4,
            "queries were not sent over TCP: {shown}"
        );
        ensure!(exit.total("dns_failed") == 0, "DNS over TCP failed: {shown}");
        ensure!(
            exit.total("udp_sessions_opened") == 0,
            "microsocks has no UDP, yet: {shown}"
        );
        Ok(())
    })
}

/// `app` resolves through the daemon's fake-ip responder; the proxy
/// resolves `names` to `srv` (IPv4, and IPv6 too if `v6`) from its hosts
/// file. Call before starting the SOCKS server: it reads the file at exec.
fn fake_ip_resolvers(lab: &Lab, names: &[String], v6: bool) -> Result<()> {
    let resolv = format!("nameserver {DNS_ADDR_V4}\noptions timeout:2 attempts:2\n");
    lab.netns_etc_file(lab.app(), "resolv.conf", &resolv)?;
    let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost\n");
    for name in names {
        hosts += &format!("{} {name}\n", addr::SRV_V4);
        if v6 {
            hosts += &format!("{} {name}\n", addr::SRV_V6);
        }
    }
    lab.netns_etc_file(lab.proxy(), "hosts", &hosts)
}

fn is_fake(ip: IpAddr) -> bool {
    match ip {
        // 198.18.0.0/15
        IpAddr::V4(v4) => v4.octets()[0] == 198 && v4.octets()[1] & 0xfe == 18,
        // fd74:3273:ffff::/64
        IpAddr::V6(v6) => v6.segments()[..4] == [0xfd74, 0x3273, 0xffff, 0],
    }
}

/// The one address `dig @server name qtype` returns, which must be fake.
fn expect_fake(lab: &Lab, server: IpAddr, name: &str, qtype: &str) -> Result<IpAddr> {
    let answer = dig(lab, server, name, qtype)?;
    let ip: Option<IpAddr> = match answer.data.as_slice() {
        [one] => one.parse().ok(),
        _ => None,
    };
    let ip = ip
        .filter(|ip| answer.status == "NOERROR" && is_fake(*ip))
        .with_context(|| format!("dig @{server} {name} {qtype}: expected one fake address, got {answer:?}"))?;
    eprintln!("dig @{server} {name} {qtype}: {ip}");
    Ok(ip)
}

/// `curl http://NAME:8080/hello.txt` from `app`: the lab's body.
fn expect_hello_by_name(lab: &Lab, name: &str) -> Result<()> {
    let url = format!("http://{name}:{}{}", port::HTTP, lab::servers::HELLO_PATH);
    let body = lab.curl(&url)?;
    ensure!(body == lab.hello_body(), "curl {url}: unexpected body {body:?}");
    Ok(())
}

/// Requirement 4: `curl http://service.test:8080/` from `app` with its
/// resolver at `--dns-addr`. The daemon answers with a fake address and
/// connects through the proxy by name; microsocks logs the name it was asked
/// for (dante logs only the address it resolved). Other query types are
/// forwarded to `--dns-upstream` (dnsmasq) over TCP through the proxy.
#[test]
fn fake_ip_curl_by_name() -> Result<()> {
    in_lab(|lab| {
        fake_ip_resolvers(lab, &[SERVICE.to_owned()], false)?;
        lab.start_microsocks()?;
        lab.start_http()?;
        lab.start_dnsmasq()?;
        let upstream = UPSTREAM.to_string();
        let args = ["--dns", "fake-ip", "--dns-upstream", &upstream];
        let daemon = Daemon::start(lab, &microsocks_url(false), &args)?;

        expect_hello_by_name(lab, SERVICE)?;
        let v4 = expect_fake(lab, DNS_ADDR_V4.into(), SERVICE, "A")?;
        let v6 = expect_fake(lab, DNS_ADDR_V6.into(), SERVICE, "AAAA")?;
        // Asked again, on the other family's responder address: the same mapping.
        ensure!(
            expect_fake(lab, DNS_ADDR_V6.into(), SERVICE, "A")? == v4,
            "{SERVICE} A changed"
        );
        ensure!(
            expect_fake(lab, DNS_ADDR_V4.into(), SERVICE, "AAAA")? == v6,
            "{SERVICE} AAAA changed"
        );
        // Not A/AAAA: forwarded upstream.
        expect_dig(lab, DNS_ADDR_V4.into(), DNS_NAME, "TXT", &format!("\"{DNS_NAME_TXT}\""))?;
        expect_dnsmasq_saw(lab, "TXT", &[false])?;

        let socks_log = fs::read_to_string(lab.dir().join("microsocks.log")).context("reading microsocks' log")?;
        let by_name = format!("connected to {SERVICE}:{}", port::HTTP);
        ensure!(
            socks_log.contains(&by_name),
            "microsocks' log has no `{by_name}` (the request was not by name?):\n{socks_log}"
        );
        ensure!(
            !socks_log.contains("198.18.") && !socks_log.contains("fd74:"),
            "a fake address reached the proxy:\n{socks_log}"
        );

        let exit = daemon.stop()?;
        expect_clean_exit(&exit, None)?;
        let shown = counters(&exit, &["dns_answered_locally", "dns_failed", "flows_accepted"]);
        eprintln!("{shown}");
        // curl's A and AAAA, and four digs.
        ensure!(
            exit.total("dns_answered_locally") >= 6,
            "too few local answers: {shown}"
        );
        ensure!(exit.total("dns_failed") == 0, "a forwarded query failed: {shown}");
        Ok(())
    })
}

/// Requirement 4 on two workers: 50 names, each resolved by the daemon and
/// fetched through dante by name, wherever the query and the connection
/// land; and UDP to a fake address (IPv4 and IPv6) through dante's
/// association by name, the echoes coming back from the fake address.
#[test]
fn fake_ip_many_names_on_two_workers() -> Result<()> {
    in_lab(|lab| {
        let names: Vec<String> = (0..NAMES).map(|i| format!("name-{i}.test")).collect();
        let mut all = names.clone();
        all.push(SERVICE.to_owned());
        // dante gets IPv4 and IPv6 addresses for each name, and picks.
        fake_ip_resolvers(lab, &all, true)?;
        lab.start_dante()?;
        lab.start_http()?;
        lab.start_udp_echo(t2s_udp())?;
        let daemon = Daemon::start(lab, &dante_url(false), &["--workers", "2", "--dns", "fake-ip"])?;

        for name in &names {
            expect_hello_by_name(lab, name)?;
        }
        for v6 in [false, true] {
            let fake = resolve_in_app(lab, SERVICE, v6)?;
            ensure!(is_fake(fake), "{SERVICE} resolved to {fake} in app, not a fake address");
            echo(lab, SocketAddr::new(fake, port::UDP_ECHO), 1000, 1400)?;
        }

        let exit = daemon.stop()?;
        expect_clean_exit(&exit, Some(2))?;
        let split: Vec<String> = exit
            .workers
            .iter()
            .map(|w| {
                let get = |k| w.get(k).unwrap_or_default();
                format!(
                    "worker {}: dns_answered_locally={} flows_accepted={} udp_sessions_opened={}",
                    get("worker"),
                    get("dns_answered_locally"),
                    get("flows_accepted"),
                    get("udp_sessions_opened")
                )
            })
            .collect();
        eprintln!("{}", split.join("\n"));
        for worker in &exit.workers {
            ensure!(
                worker.require("dns_answered_locally")? > 0 && worker.require("flows_accepted")? > 0,
                "a worker answered no query or carried no connection: {split:?}"
            );
        }
        let answered = exit.total("dns_answered_locally");
        ensure!(
            answered >= 2 * NAMES as u64,
            "{answered} local answers for {NAMES} names (A and AAAA each)"
        );
        let flows = exit.total("flows_accepted");
        ensure!(flows >= NAMES as u64, "{flows} connections for {NAMES} fetches");
        Ok(())
    })
}

/// What `name` resolves to in `app` (its resolver: the daemon), one family.
fn resolve_in_app(lab: &Lab, name: &str, v6: bool) -> Result<IpAddr> {
    let database = if v6 { "ahostsv6" } else { "ahostsv4" };
    let out = lab.run_in(lab.app(), "getent", &[database, name], Duration::from_secs(10))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .split_whitespace()
        .next()
        .and_then(|ip| ip.parse().ok())
        .with_context(|| format!("getent {database} {name} in app: {stdout:?} ({})", out.status))
}
