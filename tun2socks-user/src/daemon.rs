//! The daemon's control thread: check the environment, open the device,
//! attach steering, configure the network, start the workers, wait for a
//! signal, and undo everything on the way out.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ipnet::IpNet;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::cli::{Cli, DeviceKind, DeviceSpec};
use crate::device::port::Port;
use crate::device::tun::{self, TunError, TunQueue};
use crate::dns::{DnsMode, DnsService, FakeIpConfig, FakeIpPool};
use crate::host_mode::{self, HostDevice};
use crate::journal::{self, Journal};
use crate::metrics::EbpfCounters;
use crate::proxy::Upstream;
use crate::router_mode::RouterDevice;
use crate::setup::{self, ExistingDevice, SetupError, SetupPlan};
use crate::steering::Steering;
use crate::worker::{self, Phase, StackConfig, UdpConfig, WorkerConfig, WorkerHandle, WorkerSnapshot, WorkerStats};
use crate::{metrics, netns, notify, privileges, steering};

/// How long the start-up check waits for the proxy to accept a connection.
const PROXY_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the control thread looks for workers that died.
const WORKER_CHECK_INTERVAL: Duration = Duration::from_millis(500);

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(ns) = &cli.netns {
        // Before any thread exists: threads inherit the namespace.
        netns::enter(ns).with_context(|| format!("entering network namespace {ns:?}"))?;
    }
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the control runtime")?;
    control.block_on(serve(cli))
}

async fn serve(mut cli: Cli) -> anyhow::Result<()> {
    // Registered first, so a signal during setup still leads to a clean undo.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    // What a killed instance left behind goes first: the namespace gets
    // back to where it was before we add anything.
    let journal_dir = Path::new(journal::DEFAULT_DIR);
    let report = journal::recover(journal_dir, Some(&cli.device.name))
        .await
        .context("rolling back what a previous instance left behind (see `tun2socks cleanup`)")?;
    if !report.rolled_back.is_empty() {
        warn!(%report, "rolled back the setup of an instance that died");
    }

    // Everything that can fail on bad input fails before anything changes.
    cli.device = choose_device(&cli).await?;
    let upstream = upstream(&cli).await?;
    let addresses = if cli.addresses.is_empty() {
        default_addresses()
    } else {
        cli.addresses.clone()
    };
    let dns = dns_service(&cli, &addresses)?;
    let plan = plan(&cli, addresses, &dns);
    let created = check_device(&cli.device.name, cli.device.kind).await?;
    if let Some(peer) = cli.device.peer() {
        check_device(&peer, DeviceKind::Veth).await?;
    }
    // ops: bound now, so that a taken --metrics port fails before anything changes.
    let endpoints = metrics::Endpoints::bind(&cli)?;

    let mut journal = Journal::create(journal_dir, &cli.device.name, created).context("starting the setup journal")?;
    let signals = Signals {
        term: &mut sigterm,
        int: &mut sigint,
    };
    let (result, undone) = tunnel(&cli, upstream, dns, &plan, &mut journal, signals, endpoints).await;
    if undone {
        if let Err(e) = journal.finish() {
            warn!(error = %e, "could not remove the setup journal");
        }
    } else {
        error!(journal = %journal.path().display(), "the network setup was not fully undone; `tun2socks cleanup` retries");
    }
    result
}

struct Signals<'a> {
    term: &'a mut tokio::signal::unix::Signal,
    int: &'a mut tokio::signal::unix::Signal,
}

/// Opens the device, sets up the network (journaled), runs the workers until
/// a signal, and undoes the setup. Returns the outcome and whether the
/// network is back as it was (so the journal can go).
async fn tunnel(
    cli: &Cli,
    upstream: Upstream,
    dns: Arc<DnsService>,
    plan: &SetupPlan,
    journal: &mut Journal,
    signals: Signals<'_>,
    endpoints: metrics::Endpoints,
) -> (anyhow::Result<()>, bool) {
    let mut device = match Opened::open(cli, plan, journal).await {
        Ok(device) => device,
        Err(e) => return (Err(e), true),
    };
    // ops: with --no-setup addresses, routes and rules are the user's (iproute2).
    let applied = if cli.no_setup {
        info!("--no-setup: leaving the device's addresses, MTU, link state, routes and rules alone");
        None
    } else if cli.device.kind == DeviceKind::Xdp {
        None // router mode changes no routes: XDP decides what is proxied
    } else {
        Some(setup::apply_with(plan, journal).await)
    };
    let applied = match applied.transpose() {
        Ok(applied) => applied,
        Err(e) => {
            // A failed apply rolls itself back, unless it says otherwise.
            let undone = !matches!(e, SetupError::RollbackIncomplete { .. });
            let closed = device.close().await;
            return (Err(e).context("configuring the network"), undone && closed);
        }
    };
    // Setup is done: from here on only CAP_NET_ADMIN (marks, undo) is kept,
    // and what real-time workers need to leave their priority and take it
    // back (see worker::scheduling): the rlimit, or else CAP_SYS_NICE.
    let keep_sys_nice = cli.worker_priority.uses_realtime()
        && match privileges::allow_realtime(worker::scheduling::REALTIME_PRIORITY) {
            Ok(()) => false,
            Err(e) => {
                debug!(error = %e, "could not raise RLIMIT_RTPRIO; keeping CAP_SYS_NICE for real-time workers");
                true
            }
        };
    match privileges::drop_to_runtime_set(keep_sys_nice) {
        Ok(()) if keep_sys_nice => info!("dropped every capability but CAP_NET_ADMIN and CAP_SYS_NICE"),
        Ok(()) => info!("dropped every capability but CAP_NET_ADMIN"),
        Err(e) => warn!(error = %e, "could not drop capabilities; running with those we were given"),
    }
    let ebpf_counters = device.take_ebpf_counters();
    let mtu = device.mtu(plan);
    let ports = device.take_ports();
    let result = run_workers(cli, mtu, upstream, dns, ports, signals, endpoints, ebpf_counters).await;
    let mut undone = match applied {
        None => true,
        Some(applied) => match applied.undo().await {
            Ok(()) => true,
            Err(e) => {
                error!(error = %e, "undoing the network setup was incomplete");
                false
            }
        },
    };
    undone &= device.close().await;
    (result, undone)
}

/// The device the workers' ports come from, with what has to live as long
/// as the network setup does.
enum Opened {
    Tun {
        queues: Vec<TunQueue>,
        /// Keeps the device (and its queue 0) alive until the network
        /// setup is undone, even after the workers closed their queues.
        keepalive: OwnedFd,
        steering: Option<Steering>,
        /// Opened with `--tun-offload on`.
        offload: bool,
    },
    Host(Box<HostDevice>),
    Router(RouterDevice),
}

impl Opened {
    async fn open(cli: &Cli, plan: &SetupPlan, journal: &mut Journal) -> anyhow::Result<Opened> {
        match cli.device.kind {
            DeviceKind::Tun => Self::open_tun(cli),
            DeviceKind::Veth => {
                let peer = cli.device.peer().expect("a veth device has a peer");
                match HostDevice::open(&cli.device.name, &peer, cli.workers(), plan, journal).await {
                    Ok(host) => {
                        info!(device = %cli.device.name, %peer, mtu = host.mtu, "host mode: AF_XDP on a veth pair");
                        Ok(Opened::Host(Box::new(host)))
                    }
                    Err(e) if cli.device.chosen => {
                        warn!(
                            error = format!("{e:#}"),
                            "--device auto: host mode (XDP, AF_XDP) is unavailable here; \
                              falling back to the multi-queue TUN device"
                        );
                        Self::open_tun(cli)
                    }
                    Err(e) => Err(e),
                }
            }
            DeviceKind::Xdp => Ok(Opened::Router(
                RouterDevice::open(&cli.device.name, cli.workers(), plan).await?,
            )),
            DeviceKind::Auto => unreachable!("choose_device resolved auto"),
        }
    }

    /// The MTU the workers' stacks use.
    fn mtu(&self, plan: &SetupPlan) -> u32 {
        match self {
            Opened::Tun { .. } => plan.mtu,
            Opened::Host(host) => host.mtu,
            Opened::Router(router) => router.mtu,
        }
    }

    fn open_tun(cli: &Cli) -> anyhow::Result<Opened> {
        let queues = tun::open_queues(&cli.device.name, cli.workers(), cli.tun_offload).map_err(explain_tun_error)?;
        let keepalive = queues[0]
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating a TUN queue fd")?;
        let steering = match steering::attach(queues[0].as_fd()) {
            Ok(steering) => Some(steering),
            Err(e) => {
                warn!(error = %e, "flow steering unavailable: running on the kernel's own queue choice, \
                       so a flow may change workers on a retransmission timeout");
                None
            }
        };
        Ok(Opened::Tun {
            queues,
            keepalive,
            steering,
            offload: cli.tun_offload,
        })
    }

    /// The eBPF program's counters, for metrics.
    fn take_ebpf_counters(&mut self) -> Option<Arc<EbpfCounters>> {
        let counters = match self {
            Opened::Tun { steering, .. } => steering
                .as_mut()
                .and_then(Steering::take_counters)
                .map(EbpfCounters::Steer),
            Opened::Host(host) => host.take_counters().map(EbpfCounters::Xdp),
            Opened::Router(router) => router.take_counters().map(EbpfCounters::Xdp),
        };
        counters.map(Arc::new)
    }

    /// One port per worker.
    fn take_ports(&mut self) -> Vec<Port> {
        match self {
            Opened::Tun { queues, .. } => std::mem::take(queues).into_iter().map(Port::tun).collect(),
            Opened::Host(host) => host.take_ports().into_iter().map(Port::Xsk).collect(),
            Opened::Router(router) => router.take_ports().into_iter().map(Port::Xsk).collect(),
        }
    }

    /// Closes the device; false when something it made could not be removed.
    async fn close(self) -> bool {
        match self {
            Opened::Tun { keepalive, offload, .. } => {
                // An adopted (persistent) device outlives us: leave it
                // without the offloads we turned on, which a later reader
                // without virtio-net headers could not handle. (A device we
                // created goes with the fd; this is then harmless.)
                if offload && let Err(e) = tun::clear_offload(keepalive.as_fd()) {
                    warn!(error = %e, "turning TUN offload off again");
                }
                drop(keepalive);
                true
            }
            Opened::Host(host) => match host.close().await {
                Ok(()) => true,
                Err(e) => {
                    error!(error = format!("{e:#}"), "closing the host-mode device");
                    false
                }
            },
            Opened::Router(router) => {
                router.close();
                true
            }
        }
    }
}

/// `tun2socks cleanup`: rolls back the setup of every instance in this
/// network namespace (or `netns`) that died without undoing it.
pub fn cleanup(netns: Option<&str>) -> anyhow::Result<()> {
    if let Some(ns) = netns {
        netns::enter(ns).with_context(|| format!("entering network namespace {ns:?}"))?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let report = runtime
        .block_on(journal::cleanup(Path::new(journal::DEFAULT_DIR)))
        .context("rolling back leftover setups")?;
    println!("{report}");
    Ok(())
}

async fn upstream(cli: &Cli) -> anyhow::Result<Upstream> {
    // Resolved once, now, before any route points into the tunnel.
    let proxy = cli
        .proxy
        .resolve()
        .with_context(|| format!("resolving the proxy host {:?}", cli.proxy.host))?;
    let upstream = Upstream {
        kind: cli.proxy.kind,
        proxy: proxy.unwrap_or(SocketAddr::from(([0u8; 4], 0))),
        credentials: cli.proxy.credentials.clone(),
        fwmark: cli.fwmark,
        connect_timeout: cli.connect_timeout(),
    };
    if proxy.is_none() {
        return Ok(upstream); // direct://: nothing to check
    }
    match tokio::time::timeout(PROXY_CHECK_TIMEOUT, upstream.connect_proxy()).await {
        Ok(Ok(_)) => Ok(upstream),
        Ok(Err(e)) => Err(e).with_context(|| format!("proxy {} is unreachable", cli.proxy.redacted())),
        Err(_) => bail!(
            "proxy {} is unreachable: no answer within {PROXY_CHECK_TIMEOUT:?}",
            cli.proxy.redacted()
        ),
    }
}

/// `--device auto`: host mode where it was measured faster, else TUN
/// (docs/ARCHITECTURE.md, "Choosing a mode"). TUN with offload beats host
/// mode at every MTU; without offload, host mode wins up to
/// [`host_mode::MAX_MTU`] (the most it carries) and TUN's larger packets
/// above. An existing TUN device of that name, or `--no-setup` (host mode
/// needs its own setup), means TUN.
async fn choose_device(cli: &Cli) -> anyhow::Result<DeviceSpec> {
    let spec = &cli.device;
    if spec.kind != DeviceKind::Auto {
        return Ok(spec.clone());
    }
    let existing = setup::inspect_device(&spec.name)
        .await
        .context("inspecting the device")?;
    let host_peer = format!("{}x", spec.name);
    let (kind, why) = if cli.no_setup {
        (
            DeviceKind::Tun,
            "--no-setup: the device is yours, so it is a TUN device",
        )
    } else if matches!(existing, ExistingDevice::Tun { .. }) {
        (DeviceKind::Tun, "a TUN device of that name exists: adopting it")
    } else if cli.tun_offload {
        (
            DeviceKind::Tun,
            "TUN with offload (GSO/TSO) measured faster than host mode at every MTU, for a third of the CPU per byte",
        )
    } else if cli.mtu > host_mode::MAX_MTU {
        (
            DeviceKind::Tun,
            "the MTU is above what host mode carries, and TUN with the larger MTU measured faster",
        )
    } else if !matches!(
        setup::inspect_device(&host_peer)
            .await
            .context("inspecting the device")?,
        ExistingDevice::Absent
    ) {
        (
            DeviceKind::Tun,
            "an interface has the name host mode needs for its veth peer (the device's name with an x appended)",
        )
    } else {
        (
            DeviceKind::Veth,
            "host mode (AF_XDP) measured faster than TUN at this MTU",
        )
    };
    let chosen = DeviceSpec {
        kind,
        name: spec.name.clone(),
        chosen: true,
    };
    info!(device = %chosen, mtu = cli.mtu, why, "--device auto");
    Ok(chosen)
}

/// Checks that `name` is free or an adoptable TUN device; true when free (we
/// will create the device). Host mode creates its veth pair, so both names
/// must be free; router mode needs an existing Ethernet interface.
async fn check_device(name: &str, kind: DeviceKind) -> anyhow::Result<bool> {
    let existing = setup::inspect_device(name).await.context("inspecting the device")?;
    match existing {
        ExistingDevice::Absent if kind == DeviceKind::Xdp => {
            bail!("router mode serves an existing LAN interface, but there is no interface {name}")
        }
        ExistingDevice::Tun { .. } if kind == DeviceKind::Xdp => {
            bail!("{name} is a TUN device: router mode serves an Ethernet interface (use --device tun://{name})")
        }
        _ if kind == DeviceKind::Xdp => Ok(false),
        ExistingDevice::Absent => Ok(true),
        _ if kind == DeviceKind::Veth => bail!(
            "host mode creates the veth pair itself, but the name {name} is taken; \
             delete the link (`ip link del {name}`) or choose another --device veth://NAME"
        ),
        ExistingDevice::Tun {
            multi_queue: true,
            persistent,
            ..
        } => {
            info!(device = name, persistent, "adopting an existing multi-queue TUN device");
            Ok(false)
        }
        ExistingDevice::Tun { multi_queue: false, .. } => bail!(
            "device {name} is a single-queue TUN device; recreate it with \
             `ip tuntap add mode tun multi_queue name {name}` or choose another --device"
        ),
        ExistingDevice::Other { kind } => bail!(
            "device name {name} is taken by a {} link, not a TUN device; choose another --device",
            kind.as_deref().unwrap_or("non-TUN")
        ),
    }
}

fn explain_tun_error(e: TunError) -> anyhow::Error {
    let denied = match &e {
        TunError::OpenControl(io) | TunError::SetIff { source: io, .. } => {
            io.raw_os_error() == Some(libc::EPERM) || io.raw_os_error() == Some(libc::EACCES)
        }
        TunError::BadName(_) | TunError::Offload { .. } => false,
    };
    if denied {
        anyhow::Error::new(e)
            .context("creating the TUN device needs CAP_NET_ADMIN (run as root or grant the capability)")
    } else {
        anyhow::Error::new(e).context("opening the TUN device")
    }
}

fn default_addresses() -> Vec<IpNet> {
    let mut addrs = vec!["198.18.0.1/30".parse().expect("valid default")];
    if ipv6_enabled() {
        addrs.push("fd74:3273::1/126".parse().expect("valid default"));
    }
    addrs
}

fn ipv6_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6").is_ok_and(|v| v.trim() == "0")
}

fn default_dns_addrs() -> Vec<IpAddr> {
    let mut addrs = vec![IpAddr::from([198, 18, 0, 2])];
    if ipv6_enabled() {
        addrs.push("fd74:3273::2".parse().expect("valid default"));
    }
    addrs
}

/// The DNS handling every worker shares; in fake-ip mode it owns the pool.
fn dns_service(cli: &Cli, device: &[IpNet]) -> anyhow::Result<Arc<DnsService>> {
    let listen = if cli.dns_addrs.is_empty() {
        default_dns_addrs()
    } else {
        cli.dns_addrs.clone()
    };
    let mode = match cli.dns {
        // An HTTP proxy carries no UDP: queries go as DNS over TCP instead.
        DnsMode::Udp if !cli.proxy.kind.carries_udp() => {
            info!("the HTTP proxy carries no UDP: DNS queries go over TCP through it");
            DnsMode::OverTcp
        }
        mode => mode,
    };
    if let Some(own) = listen.iter().find(|a| device.iter().any(|net| net.addr() == **a)) {
        bail!(
            "--dns-addr {own} is the device's own address, which the kernel answers; choose another address routed into the device"
        );
    }
    let pool = match mode {
        DnsMode::FakeIp => Some(Arc::new(fake_ip_pool(cli, device, &listen)?)),
        DnsMode::Udp | DnsMode::OverTcp => None,
    };
    Ok(Arc::new(DnsService::new(mode, listen, cli.dns_upstream, pool)))
}

fn fake_ip_pool(cli: &Cli, device: &[IpNet], listen: &[IpAddr]) -> anyhow::Result<FakeIpPool> {
    let mut config = FakeIpConfig::default();
    if !cli.fake_ip_ranges.is_empty() {
        let (mut v4, mut v6) = (None, None);
        for range in &cli.fake_ip_ranges {
            let slot_taken = match range {
                IpNet::V4(net) => v4.replace(*net).is_some(),
                IpNet::V6(net) => v6.replace(*net).is_some(),
            };
            if slot_taken {
                bail!("--fake-ip-range: give at most one range per address family");
            }
        }
        (config.ipv4, config.ipv6) = (v4, v6);
    }
    // Never hand out the device's addresses or the responder's, nor a
    // range's first address (IPv6's subnet-router anycast address).
    let firsts = [
        config.ipv4.map(|n| IpNet::from(IpAddr::V4(n.network()))),
        config.ipv6.map(|n| IpNet::from(IpAddr::V6(n.network()))),
    ];
    config.exclude = device
        .iter()
        .map(IpNet::trunc)
        .chain(listen.iter().map(|a| IpNet::from(*a)))
        .chain(firsts.into_iter().flatten())
        .collect();
    FakeIpPool::new(config).context("setting up the fake-IP pool")
}

fn plan(cli: &Cli, addresses: Vec<IpNet>, dns: &DnsService) -> SetupPlan {
    let mtu = match cli.device.kind {
        DeviceKind::Veth if cli.mtu > host_mode::MAX_MTU => {
            info!(
                requested = cli.mtu,
                mtu = host_mode::MAX_MTU,
                "host mode: MTU capped (XDP on a veth takes one page per frame)"
            );
            host_mode::MAX_MTU
        }
        _ => cli.mtu,
    };
    let mut routes = if cli.routes.is_empty() {
        let mut routes = vec![IpNet::new(IpAddr::from([0u8; 4]), 0).expect("valid")];
        if ipv6_enabled() {
            routes.push(IpNet::new(IpAddr::from([0u8; 16]), 0).expect("valid"));
        }
        routes
    } else {
        cli.routes.clone()
    };
    if let Some(pool) = dns.pool() {
        // Fake addresses and the responder must reach the device whatever
        // --route says.
        routes.extend(pool.ranges());
        routes.extend(dns.listen.iter().map(|a| IpNet::from(*a)));
    }
    SetupPlan {
        device: cli.device.name.clone(),
        mtu,
        addresses,
        routes,
        bypass: cli.bypass.clone(),
        fwmark: cli.fwmark,
        table: cli.table(),
        rule_priority: cli.rule_priority,
    }
}

#[expect(clippy::too_many_arguments, reason = "the daemon's parts, each used once")]
async fn run_workers(
    cli: &Cli,
    mtu: u32,
    upstream: Upstream,
    dns: Arc<DnsService>,
    ports: Vec<Port>,
    signals: Signals<'_>,
    endpoints: metrics::Endpoints,
    ebpf_counters: Option<Arc<EbpfCounters>>,
) -> anyhow::Result<()> {
    let Signals {
        term: sigterm,
        int: sigint,
    } = signals;
    let (phase, phase_rx) = watch::channel(Phase::Run);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let stack = StackConfig {
        mtu: mtu as usize,
        tcp_rx_buffer: cli.tcp_buffer as usize,
        tcp_tx_buffer: cli.tcp_buffer as usize,
        max_half_open: cli.max_half_open,
        max_sessions: (cli.max_tcp_sessions as usize / ports.len()).max(1),
        buffer_memory: (cli.buffer_memory as usize / ports.len()).max(1),
    };
    let workers = ports.len();
    // Steering keeps each source endpoint on one worker, so an even split of
    // the bound keeps the total within --max-udp-sessions.
    let udp = UdpConfig {
        max_sessions: (cli.max_udp_sessions as usize / workers).max(1),
        idle_timeout: cli.udp_timeout(),
    };
    let mut handles: Vec<WorkerHandle> = Vec::with_capacity(workers);
    for (index, port) in ports.into_iter().enumerate() {
        let config = WorkerConfig {
            index,
            cpu: Some(index % cpus),
            stack: stack.clone(),
            udp: udp.clone(),
            upstream: upstream.clone(),
            dns: Some(dns.clone()),
            tcp_idle_timeout: cli.tcp_idle_timeout(),
            priority: cli.worker_priority,
        };
        match worker::spawn(config, port, phase_rx.clone()) {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                let _ = phase.send(Phase::Stop);
                join(handles);
                return Err(e).context("starting a worker thread");
            }
        }
    }
    let dns_addrs: Vec<String> = dns.listen.iter().map(ToString::to_string).collect();
    match dns.mode {
        DnsMode::FakeIp => info!(addresses = %dns_addrs.join(", "), "fake-ip DNS responder listening"),
        DnsMode::OverTcp => info!("DNS queries go over TCP through the proxy"),
        DnsMode::Udp => {}
    }
    // ops: metrics and `tun2socks stats` while the workers run (and drain).
    let _serving = endpoints.serve(&handles, ebpf_counters);
    info!(device = %cli.device, workers, proxy = %cli.proxy.redacted(), dns = %dns.mode, "tun2socks ready");
    notify::ready(&format!("{workers} workers on {}", cli.device));

    let mut ticker = tokio::time::interval(WORKER_CHECK_INTERVAL);
    let outcome = loop {
        tokio::select! {
            _ = sigterm.recv() => break Ok("SIGTERM"),
            _ = sigint.recv() => break Ok("SIGINT"),
            _ = ticker.tick() => {
                if handles.iter().any(|h| h.thread.is_finished()) {
                    break Err(anyhow::anyhow!("a worker stopped unexpectedly"));
                }
            }
        }
    };
    if let Ok(signal) = &outcome {
        let timeout = cli.shutdown_timeout();
        info!(
            signal,
            ?timeout,
            "shutting down: draining open connections (a second signal stops at once)"
        );
        notify::stopping();
        let _ = phase.send(Phase::Drain);
        drain(&handles, timeout, sigterm, sigint).await;
    }
    let _ = phase.send(Phase::Stop);
    let failures = join(handles);
    outcome?;
    if failures > 0 {
        bail!("{failures} worker(s) failed");
    }
    Ok(())
}

/// Waits until every worker has drained, the timeout passes, or another
/// signal arrives.
async fn drain(
    handles: &[WorkerHandle],
    timeout: Duration,
    sigterm: &mut tokio::signal::unix::Signal,
    sigint: &mut tokio::signal::unix::Signal,
) {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = sigterm.recv() => return info!("second signal: stopping now"),
            _ = sigint.recv() => return info!("second signal: stopping now"),
            () = &mut deadline => return info!("drain timeout: resetting what is still open"),
            _ = ticker.tick() => {
                if handles.iter().all(|h| h.thread.is_finished()) {
                    return;
                }
            }
        }
    }
}

/// Waits for every worker, logs its counters, and counts the failed ones.
fn join(handles: Vec<WorkerHandle>) -> usize {
    let mut total = WorkerStats::default();
    let mut failures = 0;
    for (index, handle) in handles.into_iter().enumerate() {
        match handle.thread.join() {
            Ok(Ok(WorkerSnapshot { stats, .. })) => {
                info!("worker finished worker={index} {stats}");
                total.add(&stats);
            }
            Ok(Err(e)) => {
                error!(worker = index, error = %format!("{e:#}"), "worker failed");
                failures += 1;
            }
            Err(_) => {
                error!(worker = index, "worker panicked");
                failures += 1;
            }
        }
    }
    info!("totals {total}");
    failures
}
