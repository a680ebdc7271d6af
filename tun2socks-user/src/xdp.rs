//! The XDP capture hook for the AF_XDP fast path.
//!
//! [`XdpClassifier::attach`] loads the `classify` program (crate
//! `tun2socks-ebpf`, the same embedded object as the TUN `steer` program)
//! and attaches it to an interface: in driver (native) mode where the driver
//! has XDP support, in generic (SKB) mode otherwise. The program sends TCP
//! and UDP frames of proxied flows into the AF_XDP socket of their rx queue
//! and passes everything else (ARP, NDP, ICMP, traffic to the box itself,
//! bypassed and unrouted prefixes) to the kernel; see
//! `tun2socks_ebpf::xdp` for the rules.
//!
//! What it captures is an [`AddressPlan`]: routed and bypassed prefixes and
//! the box's own addresses, written into the program's maps. The plan also
//! answers the same question in user space ([`AddressPlan::classify`]),
//! with the very code the program runs.
//!
//! Sockets are registered with [`XdpClassifier::register`] at their queue
//! index (an AF_XDP socket receives only from the queue it is bound to; the
//! program cannot move a frame to another queue). The program's per-CPU
//! counters are summed by [`XdpClassifier::counters`]. Dropping the
//! classifier detaches the program.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use aya::Ebpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray, XskMap};
use aya::programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId};
use ipnet::IpNet;
use tun2socks_ebpf::xdp::{
    AddressSets, MAX_BYPASS_PREFIXES, MAX_LOCAL_ADDRESSES, MAX_ROUTED_PREFIXES, XdpCounter, classify_frame,
};

use crate::steering::OBJECT;

const PROGRAM: &str = "classify";
const COUNTERS: &str = "XDP_COUNTERS";
const XSKS: &str = "XSKS";

/// How the program runs on the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpAttachMode {
    /// In the driver, before an skb exists (veth, most NICs).
    Driver,
    /// Generic XDP, after the skb is built: works on any device, slower.
    Skb,
}

impl XdpAttachMode {
    pub fn name(self) -> &'static str {
        match self {
            XdpAttachMode::Driver => "driver",
            XdpAttachMode::Skb => "skb",
        }
    }
}

/// Errors loading, attaching or configuring the classifier.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("loading the XDP classifier needs CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN)")]
    PermissionDenied(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the embedded eBPF object does not load")]
    Object(#[source] aya::EbpfError),
    #[error("the embedded eBPF object has no XDP program `{PROGRAM}`")]
    MissingProgram(#[source] Option<ProgramError>),
    #[error("the kernel refused the `{PROGRAM}` program")]
    Load(#[source] ProgramError),
    #[error("cannot attach XDP to {ifname} in driver mode ({driver}) nor in SKB mode")]
    Attach {
        ifname: String,
        driver: String,
        #[source]
        skb: Box<ProgramError>,
    },
    #[error("the eBPF object has no usable map {name}")]
    MissingMap {
        name: &'static str,
        #[source]
        source: Option<MapError>,
    },
    #[error("cannot write {what} into the XDP map {name}")]
    MapUpdate {
        name: &'static str,
        what: String,
        #[source]
        source: MapError,
    },
    #[error("{what}: at most {max} fit in the XDP maps, {count} given")]
    TooMany { what: &'static str, count: usize, max: u32 },
    #[error("cannot read the XDP counters")]
    Counters(#[source] MapError),
}

/// Which destinations the classifier captures: TCP/UDP to a `routed`
/// prefix, unless to a `bypass` prefix or one of the box's `local`
/// addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPlan {
    pub routed: Vec<IpNet>,
    pub bypass: Vec<IpNet>,
    pub local: Vec<IpAddr>,
}

impl AddressPlan {
    /// The program's decision for `frame` (an Ethernet frame), computed in
    /// user space with the program's own code and this plan as its maps.
    pub fn classify(&self, frame: &[u8]) -> XdpCounter {
        classify_frame(frame, self)
    }

    fn check(&self) -> Result<(), XdpError> {
        let too_many = |what, list: Vec<bool>, max: u32| {
            for v6 in [false, true] {
                let count = list.iter().filter(|&&is_v6| is_v6 == v6).count();
                if count > max as usize {
                    return Err(XdpError::TooMany { what, count, max });
                }
            }
            Ok(())
        };
        let family = |nets: &[IpNet]| nets.iter().map(|n| matches!(n, IpNet::V6(_))).collect();
        too_many("routed prefixes", family(&self.routed), MAX_ROUTED_PREFIXES)?;
        too_many("bypass prefixes", family(&self.bypass), MAX_BYPASS_PREFIXES)?;
        let local = self.local.iter().map(IpAddr::is_ipv6).collect();
        too_many("local addresses", local, MAX_LOCAL_ADDRESSES)
    }
}

fn in_any(nets: &[IpNet], addr: IpAddr) -> bool {
    nets.iter().any(|net| net.contains(&addr))
}

impl AddressSets for AddressPlan {
    fn is_local_v4(&self, dst: &[u8; 4]) -> bool {
        self.local.contains(&IpAddr::from(*dst))
    }
    fn is_local_v6(&self, dst: &[u8; 16]) -> bool {
        self.local.contains(&IpAddr::from(*dst))
    }
    fn is_bypassed_v4(&self, dst: &[u8; 4]) -> bool {
        in_any(&self.bypass, IpAddr::from(*dst))
    }
    fn is_bypassed_v6(&self, dst: &[u8; 16]) -> bool {
        in_any(&self.bypass, IpAddr::from(*dst))
    }
    fn is_routed_v4(&self, dst: &[u8; 4]) -> bool {
        in_any(&self.routed, IpAddr::from(*dst))
    }
    fn is_routed_v6(&self, dst: &[u8; 16]) -> bool {
        in_any(&self.routed, IpAddr::from(*dst))
    }
}

/// The classifier's counters summed over the CPUs, by [`XdpCounter`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpCounts([u64; XdpCounter::COUNT as usize]);

impl XdpCounts {
    pub fn get(&self, counter: XdpCounter) -> u64 {
        self.0[counter as usize]
    }

    /// Every counter with its value, in [`XdpCounter::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (XdpCounter, u64)> + '_ {
        XdpCounter::ALL.into_iter().map(|c| (c, self.get(c)))
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &XdpCounts) -> XdpCounts {
        let mut out = XdpCounts::default();
        for c in XdpCounter::ALL {
            out.0[c as usize] = self.get(c).wrapping_sub(earlier.get(c));
        }
        out
    }
}

impl std::fmt::Display for XdpCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (counter, value) in self.iter() {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{}={value}", counter.name())?;
        }
        Ok(())
    }
}

/// A reader of the counters that can move to another thread (metrics).
pub struct XdpCounterReader {
    map: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for XdpCounterReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpCounterReader").finish_non_exhaustive()
    }
}

impl XdpCounterReader {
    pub fn read(&self) -> Result<XdpCounts, XdpError> {
        read_counts(&self.map)
    }
}

fn read_counts<T: std::borrow::Borrow<MapData>>(map: &PerCpuArray<T, u64>) -> Result<XdpCounts, XdpError> {
    let mut counts = XdpCounts::default();
    for counter in XdpCounter::ALL {
        let per_cpu = map.get(&(counter as u32), 0).map_err(XdpError::Counters)?;
        counts.0[counter as usize] = per_cpu.iter().sum();
    }
    Ok(counts)
}

/// The `classify` program, loaded and attached to one interface.
pub struct XdpClassifier {
    ebpf: Ebpf,
    link: Option<XdpLinkId>,
    ifname: String,
    mode: XdpAttachMode,
}

impl std::fmt::Debug for XdpClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpClassifier")
            .field("ifname", &self.ifname)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl XdpClassifier {
    /// Loads `classify`, fills its maps from `plan` and attaches it to
    /// `ifname` (an interface of the calling thread's network namespace):
    /// driver mode first, SKB mode if the driver refuses. Until sockets are
    /// registered, frames of proxied flows are dropped (counted as
    /// `redirect_failed`); everything else already reaches the kernel.
    pub fn attach(ifname: &str, plan: &AddressPlan) -> Result<Self, XdpError> {
        plan.check()?;
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| classify_error(e, XdpError::Object))?;
        fill_maps(&mut ebpf, plan)?;
        let program = xdp_program(&mut ebpf)?;
        program.load().map_err(|e| classify_error(e, XdpError::Load))?;
        let (link, mode) = match program.attach(ifname, XdpMode::Driver) {
            Ok(link) => (link, XdpAttachMode::Driver),
            Err(driver) => {
                let driver = error_chain(&driver);
                tracing::warn!(ifname, error = %driver, "native XDP refused, attaching in SKB (generic) mode");
                let link = program.attach(ifname, XdpMode::Skb).map_err(|skb| XdpError::Attach {
                    ifname: ifname.to_string(),
                    driver,
                    skb: Box::new(skb),
                })?;
                (link, XdpAttachMode::Skb)
            }
        };
        tracing::info!(
            ifname,
            mode = mode.name(),
            routed = plan.routed.len(),
            bypass = plan.bypass.len(),
            local = plan.local.len(),
            "XDP classifier attached"
        );
        Ok(Self {
            ebpf,
            link: Some(link),
            ifname: ifname.to_string(),
            mode,
        })
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn mode(&self) -> XdpAttachMode {
        self.mode
    }

    /// Sends the proxied frames of rx queue `queue` to `socket` (an AF_XDP
    /// socket bound to that queue of this interface).
    pub fn register(&mut self, queue: u32, socket: &impl AsRawFd) -> Result<(), XdpError> {
        let map = self.ebpf.map_mut(XSKS).ok_or(XdpError::MissingMap {
            name: XSKS,
            source: None,
        })?;
        let mut xsks = XskMap::try_from(map).map_err(|e| XdpError::MissingMap {
            name: XSKS,
            source: Some(e),
        })?;
        xsks.set(queue, socket.as_raw_fd(), 0)
            .map_err(|source| XdpError::MapUpdate {
                name: XSKS,
                what: format!("the AF_XDP socket of queue {queue}"),
                source,
            })
    }

    /// The program's counters, summed over the CPUs.
    pub fn counters(&self) -> Result<XdpCounts, XdpError> {
        let map = self.ebpf.map(COUNTERS).ok_or(XdpError::MissingMap {
            name: COUNTERS,
            source: None,
        })?;
        let array = PerCpuArray::<_, u64>::try_from(map).map_err(|e| XdpError::MissingMap {
            name: COUNTERS,
            source: Some(e),
        })?;
        read_counts(&array)
    }

    /// Moves the counters out, for a metrics thread; [`Self::counters`]
    /// fails after this.
    pub fn take_counters(&mut self) -> Result<XdpCounterReader, XdpError> {
        let map = self.ebpf.take_map(COUNTERS).ok_or(XdpError::MissingMap {
            name: COUNTERS,
            source: None,
        })?;
        let map = PerCpuArray::try_from(map).map_err(|e| XdpError::MissingMap {
            name: COUNTERS,
            source: Some(e),
        })?;
        Ok(XdpCounterReader { map })
    }

    /// [`Self::take_counters`] for metrics: `None` (with a warning) when
    /// they cannot be read, or were taken already.
    pub fn counter_reader(&mut self) -> Option<XdpCounterReader> {
        self.take_counters()
            .inspect_err(|error| tracing::warn!(%error, "the XDP classifier's counters are unreadable"))
            .ok()
    }

    /// Takes the program off the interface now (dropping does the same).
    pub fn detach(mut self) -> Result<(), XdpError> {
        self.detach_link()
    }

    fn detach_link(&mut self) -> Result<(), XdpError> {
        let Some(link) = self.link.take() else {
            return Ok(());
        };
        let program = xdp_program(&mut self.ebpf)?;
        program.detach(link).map_err(XdpError::Load)?;
        tracing::info!(ifname = %self.ifname, "XDP classifier detached");
        Ok(())
    }
}

impl Drop for XdpClassifier {
    fn drop(&mut self) {
        if let Err(error) = self.detach_link() {
            // aya detaches the links it still owns when the program goes.
            tracing::warn!(ifname = %self.ifname, error = %error_chain(&error), "detaching the XDP classifier");
        }
    }
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    let program = ebpf.program_mut(PROGRAM).ok_or(XdpError::MissingProgram(None))?;
    program.try_into().map_err(|e| XdpError::MissingProgram(Some(e)))
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map, XdpError> {
    ebpf.map_mut(name).ok_or(XdpError::MissingMap { name, source: None })
}

fn fill_maps(ebpf: &mut Ebpf, plan: &AddressPlan) -> Result<(), XdpError> {
    for (names, nets) in [
        (("ROUTED_V4", "ROUTED_V6"), &plan.routed),
        (("BYPASS_V4", "BYPASS_V6"), &plan.bypass),
    ] {
        for net in nets {
            let what = || format!("prefix {net}");
            match net.trunc() {
                IpNet::V4(v4) => {
                    let name = names.0;
                    let mut trie = LpmTrie::<_, [u8; 4], u8>::try_from(map_mut(ebpf, name)?)
                        .map_err(|e| XdpError::MissingMap { name, source: Some(e) })?;
                    let key = Key::new(u32::from(v4.prefix_len()), v4.addr().octets());
                    trie.insert(&key, 1, 0).map_err(|source| XdpError::MapUpdate {
                        name,
                        what: what(),
                        source,
                    })?;
                }
                IpNet::V6(v6) => {
                    let name = names.1;
                    let mut trie = LpmTrie::<_, [u8; 16], u8>::try_from(map_mut(ebpf, name)?)
                        .map_err(|e| XdpError::MissingMap { name, source: Some(e) })?;
                    let key = Key::new(u32::from(v6.prefix_len()), v6.addr().octets());
                    trie.insert(&key, 1, 0).map_err(|source| XdpError::MapUpdate {
                        name,
                        what: what(),
                        source,
                    })?;
                }
            }
        }
    }
    for addr in &plan.local {
        let what = || format!("local address {addr}");
        match addr {
            IpAddr::V4(v4) => {
                let name = "LOCAL_V4";
                let mut map = HashMap::<_, [u8; 4], u8>::try_from(map_mut(ebpf, name)?)
                    .map_err(|e| XdpError::MissingMap { name, source: Some(e) })?;
                map.insert(v4.octets(), 1, 0).map_err(|source| XdpError::MapUpdate {
                    name,
                    what: what(),
                    source,
                })?;
            }
            IpAddr::V6(v6) => {
                let name = "LOCAL_V6";
                let mut map = HashMap::<_, [u8; 16], u8>::try_from(map_mut(ebpf, name)?)
                    .map_err(|e| XdpError::MissingMap { name, source: Some(e) })?;
                map.insert(v6.octets(), 1, 0).map_err(|source| XdpError::MapUpdate {
                    name,
                    what: what(),
                    source,
                })?;
            }
        }
    }
    Ok(())
}

/// An error and its causes on one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// [`XdpError::PermissionDenied`] when an `EPERM` is behind `error`.
fn classify_error<E>(error: E, otherwise: impl FnOnce(E) -> XdpError) -> XdpError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = cause {
        if e.downcast_ref::<io::Error>().and_then(io::Error::raw_os_error) == Some(libc::EPERM) {
            return XdpError::PermissionDenied(Box::new(error));
        }
        cause = e.source();
    }
    otherwise(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> AddressPlan {
        AddressPlan {
            routed: vec!["198.51.100.0/24".parse().unwrap(), "2001:db8:100::/48".parse().unwrap()],
            bypass: vec!["198.51.100.192/26".parse().unwrap()],
            local: vec!["10.99.0.1".parse().unwrap(), "fd99::1".parse().unwrap()],
        }
    }

    /// Ethernet + IPv4 + 8 bytes of UDP to `dst`.
    fn udp4(dst: [u8; 4]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        f.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 99, 0, 2]);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
        f
    }

    #[test]
    fn the_plan_answers_like_the_program() {
        let plan = plan();
        assert_eq!(plan.classify(&udp4([198, 51, 100, 7])), XdpCounter::Redirected);
        assert_eq!(plan.classify(&udp4([198, 51, 100, 200])), XdpCounter::PassBypass);
        assert_eq!(plan.classify(&udp4([10, 99, 0, 1])), XdpCounter::PassLocal);
        assert_eq!(plan.classify(&udp4([203, 0, 113, 1])), XdpCounter::PassNotRouted);
    }

    #[test]
    fn too_many_prefixes_are_refused_before_loading() {
        let mut plan = plan();
        plan.bypass = (0..=MAX_BYPASS_PREFIXES)
            .map(|i| IpNet::from(IpAddr::from(i.to_be_bytes())))
            .collect();
        assert!(matches!(plan.check(), Err(XdpError::TooMany { .. })));
    }

    #[test]
    fn counts_print_every_counter() {
        let mut counts = XdpCounts::default();
        counts.0[XdpCounter::PassLocal as usize] = 3;
        let text = counts.to_string();
        assert!(text.contains("pass_local=3"), "{text}");
        assert!(text.contains("redirected=0"), "{text}");
        assert_eq!(counts.since(&XdpCounts::default()), counts);
    }

    #[test]
    fn embedded_object_has_the_classify_program() {
        let mut ebpf = Ebpf::load(OBJECT).expect("the embedded object loads");
        assert!(xdp_program(&mut ebpf).is_ok());
    }
}
