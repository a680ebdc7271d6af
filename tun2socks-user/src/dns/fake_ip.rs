//! The fake-IP pool: names answered by the local responder get addresses from
//! a reserved range, and a connection to such an address is sent to the proxy
//! as the name (SOCKS5 ATYP 3), so the proxy resolves it and no DNS leaves the
//! host.
//!
//! One pool is shared by all workers (`Arc<FakeIpPool>`): the query may be
//! answered on one core and the connection arrive on another. Its state sits
//! behind one `Mutex`, which is fine for invariant 1 (nothing shared per
//! packet) because the pool is touched only when a query is answered and when
//! a connection or UDP flow to a fake address *starts*; packets of an
//! established flow carry the resolved name in their session. Critical
//! sections are a few hash-map operations; names are normalised and strings
//! allocated before the lock is taken. [`FakeIpPool::contains`] takes no lock.
//!
//! Lifetime of an entry: it keeps its name while any connection pins it, and
//! for a TTL after it was last used (handed out in an answer, or unpinned).
//! Counting the TTL from the unpin as well is stricter than the bare "TTL since
//! the last answer" rule, and it keeps reuse O(1): the LRU list is then ordered
//! by the very time that decides reusability, so only its head needs a look.

mod range;
mod table;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use self::range::{AddrRange, span};
use self::table::{Full, MAX_CAPACITY, SlotId, Table};

/// Default IPv4 range: the benchmarking block (RFC 2544), which no real
/// destination uses, and the range other fake-IP tools use too.
pub const DEFAULT_IPV4_RANGE: &str = "198.18.0.0/15";
/// Default IPv6 range: a /64 of the daemon's ULA /48 (`fd74:3273::/48`), apart
/// from the device's own `fd74:3273::/126`.
pub const DEFAULT_IPV6_RANGE: &str = "fd74:3273:ffff::/64";
/// Default exclusions: the device's subnets (`198.18.0.1/30`,
/// `fd74:3273::1/126`), which hold the kernel's address and the responder's.
pub const DEFAULT_EXCLUDE: [&str; 2] = ["198.18.0.0/30", "fd74:3273::/126"];
/// Default bound on entries. One entry (name, two addresses, map and list
/// links) costs about 200 bytes, so the table stays under ~13 MiB; 65 536
/// names in use within one TTL is far beyond a gateway's working set.
pub const DEFAULT_CAPACITY: usize = 65_536;
/// Default TTL of answers, and the least time an entry keeps its name after it
/// was last used. Long enough that stub resolvers and browsers (which cache
/// for about a minute whatever the TTL) never hold an address that was given
/// to another name; short enough that clients forget fake addresses soon after
/// a restart of the daemon, whose table starts empty.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Largest TTL a DNS answer may carry (RFC 2181 §8).
const MAX_TTL_SECS: u64 = i32::MAX as u64;

/// How the pool is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeIpConfig {
    /// Range for A answers; `None` answers A queries with no address.
    pub ipv4: Option<Ipv4Net>,
    /// Range for AAAA answers; `None` answers AAAA queries with no address.
    pub ipv6: Option<Ipv6Net>,
    /// Prefixes never handed out (the device's and the responder's
    /// addresses); either family, those outside the ranges are ignored.
    pub exclude: Vec<IpNet>,
    /// Most entries (names) at once; clamped to the addresses each range has.
    pub capacity: usize,
    /// TTL of answers; whole seconds, 1 s to 2^31 - 1 s.
    pub ttl: Duration,
}

impl Default for FakeIpConfig {
    fn default() -> Self {
        Self {
            ipv4: Some(DEFAULT_IPV4_RANGE.parse().expect("valid default")),
            ipv6: Some(DEFAULT_IPV6_RANGE.parse().expect("valid default")),
            exclude: DEFAULT_EXCLUDE
                .iter()
                .map(|net| net.parse().expect("valid default"))
                .collect(),
            capacity: DEFAULT_CAPACITY,
            ttl: DEFAULT_TTL,
        }
    }
}

/// Why a [`FakeIpConfig`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FakeIpConfigError {
    #[error("the fake-IP pool needs an IPv4 or an IPv6 range")]
    NoRange,
    #[error("the fake-IP pool capacity must be at least 1")]
    ZeroCapacity,
    #[error("fake-IP range {0} has no address left once the exclusions are removed")]
    NoUsableAddress(IpNet),
    #[error("fake-IP TTL must be between 1 s and {MAX_TTL_SECS} s, got {0:?}")]
    Ttl(Duration),
}

/// Why a name got no fake address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FakeIpError {
    /// Empty (the root) or longer than a SOCKS5 domain name may be.
    #[error("`{0}` cannot be sent to a proxy as a domain name")]
    InvalidName(String),
    /// Every entry is pinned by a connection or was used within its TTL. The
    /// pool does not grow past its bound; the responder answers SERVFAIL.
    #[error("fake-IP pool full: all {capacity} entries are in use or within their TTL")]
    Full { capacity: usize },
}

/// The fake addresses of one name, one per enabled family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeAddrs {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl FakeAddrs {
    /// The addresses that are present.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + use<> {
        self.v4.map(IpAddr::V4).into_iter().chain(self.v6.map(IpAddr::V6))
    }
}

/// The shared name-to-fake-address table. See the module docs.
pub struct FakeIpPool {
    table: Mutex<Table>,
    /// Read-only copies of the ranges, so that `contains` needs no lock.
    v4: Option<AddrRange>,
    v6: Option<AddrRange>,
    /// The configured ranges, for routing them into the device.
    nets: Vec<IpNet>,
    capacity: usize,
    ttl: Duration,
    /// Whether the last allocation failed, so "full" is logged once per
    /// episode. Touched per DNS answer, never per packet.
    full: AtomicBool,
}

impl FakeIpPool {
    pub fn new(config: FakeIpConfig) -> Result<Self, FakeIpConfigError> {
        let FakeIpConfig {
            ipv4,
            ipv6,
            exclude,
            capacity,
            ttl,
        } = config;
        if ipv4.is_none() && ipv6.is_none() {
            return Err(FakeIpConfigError::NoRange);
        }
        if capacity == 0 {
            return Err(FakeIpConfigError::ZeroCapacity);
        }
        if !(1..=MAX_TTL_SECS).contains(&ttl.as_secs()) || ttl.subsec_nanos() != 0 {
            return Err(FakeIpConfigError::Ttl(ttl));
        }
        // Exclusions are numbered within their own family, so each range only
        // sees those of its family.
        let (exclude_v4, exclude_v6): (Vec<IpNet>, Vec<IpNet>) = exclude.iter().partition(|net| net.addr().is_ipv4());
        let range = |net: IpNet, exclude: &[IpNet]| {
            let range = AddrRange::new(span(net).0, span(net).1, exclude.iter().map(|&ex| span(ex)));
            match range.usable() {
                0 => Err(FakeIpConfigError::NoUsableAddress(net)),
                _ => Ok(range),
            }
        };
        let v4 = ipv4.map(|net| range(net.into(), &exclude_v4)).transpose()?;
        let v6 = ipv6.map(|net| range(net.into(), &exclude_v6)).transpose()?;
        let usable = [&v4, &v6]
            .into_iter()
            .flatten()
            .map(AddrRange::usable)
            .min()
            .unwrap_or(0);
        let capacity = capacity
            .min(MAX_CAPACITY)
            .min(usize::try_from(usable).unwrap_or(usize::MAX));
        let nets = ipv4.map(IpNet::V4).into_iter().chain(ipv6.map(IpNet::V6)).collect();
        Ok(Self {
            table: Mutex::new(Table::new(v4.clone(), v6.clone(), capacity, ttl)),
            v4,
            v6,
            nets,
            capacity,
            ttl,
            full: AtomicBool::new(false),
        })
    }

    /// The fake addresses of `name`, allocated if it has none. The same name
    /// (compared case-insensitively, trailing dot ignored) gets the same
    /// addresses as long as its entry lives; each call counts as a use.
    pub fn lookup_or_allocate(&self, name: &str, now: Instant) -> Result<FakeAddrs, FakeIpError> {
        let name = normalize(name)?;
        let result = self.table().get_or_insert(&name, now);
        match result {
            Ok(addrs) => {
                if self.full.load(Ordering::Relaxed) {
                    self.full.store(false, Ordering::Relaxed);
                }
                Ok(addrs)
            }
            Err(Full) => {
                // Once per episode: a flood of new names must not flood the log.
                if !self.full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(capacity = self.capacity, %name, "fake-IP pool full: answering SERVFAIL until entries age out");
                }
                Err(FakeIpError::Full {
                    capacity: self.capacity,
                })
            }
        }
    }

    /// The name behind a fake address, pinned until the guard is dropped (or
    /// released): call it when a connection or UDP flow to `ip` starts and
    /// keep the guard in its session. `None` for an address that is not
    /// mapped, e.g. one a client cached from before a restart.
    pub fn resolve(self: &Arc<Self>, ip: IpAddr) -> Option<PinGuard> {
        if !self.contains(ip) {
            return None;
        }
        let (slot, name) = self.table().pin(ip)?;
        Some(PinGuard {
            pool: Arc::clone(self),
            slot,
            name,
            addr: ip,
            pinned: true,
        })
    }

    /// Whether `ip` is an address this pool hands out (inside a fake range
    /// and not excluded), mapped or not. Lock-free.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => self.v4.as_ref().is_some_and(|r| r.contains(u32::from(ip).into())),
            IpAddr::V6(ip) => self.v6.as_ref().is_some_and(|r| r.contains(ip.into())),
        }
    }

    /// TTL to put in answers.
    /// The ranges fake addresses come from.
    pub fn ranges(&self) -> Vec<IpNet> {
        self.nets.clone()
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Most entries the pool holds (the configured bound, clamped to the
    /// addresses the ranges have).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries currently holding a name.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // The table never panics while the lock is held (no user code runs
        // under it), so a poisoned lock still guards a consistent table.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for FakeIpPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeIpPool")
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// A connection's hold on a fake address: while it lives, the address keeps
/// its name. Dropping it unpins at `Instant::now()`; [`PinGuard::release`]
/// takes the time from the caller instead (sans-I/O callers, tests).
#[must_use = "dropping the guard unpins the entry at once"]
pub struct PinGuard {
    pool: Arc<FakeIpPool>,
    slot: SlotId,
    name: Arc<str>,
    addr: IpAddr,
    pinned: bool,
}

impl PinGuard {
    /// The normalised name (lowercase, no trailing dot) to ask the proxy for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fake address this guard pins.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Unpins now; the entry's TTL starts again at `now`.
    pub fn release(mut self, now: Instant) {
        self.unpin(now);
    }

    fn unpin(&mut self, now: Instant) {
        if std::mem::take(&mut self.pinned) {
            self.pool.table().unpin(self.slot, now);
        }
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.unpin(Instant::now());
    }
}

impl fmt::Debug for PinGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinGuard")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Lowercase ASCII (DNS compares names case-insensitively, RFC 4343), no
/// trailing dot; must fit a SOCKS5 domain name (1..=255 bytes).
fn normalize(name: &str) -> Result<String, FakeIpError> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > usize::from(u8::MAX) {
        return Err(FakeIpError::InvalidName(name.to_owned()));
    }
    Ok(trimmed.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::mpsc;
    use std::thread;

    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    /// A pool of `capacity` entries over 10.0.0.0/24 and fd00::/120.
    fn pool(capacity: usize) -> Arc<FakeIpPool> {
        Arc::new(
            FakeIpPool::new(FakeIpConfig {
                ipv4: Some("10.0.0.0/24".parse().unwrap()),
                ipv6: Some("fd00::/120".parse().unwrap()),
                exclude: vec![],
                capacity,
                ttl: TTL,
            })
            .unwrap(),
        )
    }

    fn secs(base: Instant, s: u64) -> Instant {
        base + Duration::from_secs(s)
    }

    fn v4(pool: &FakeIpPool, name: &str, now: Instant) -> Ipv4Addr {
        pool.lookup_or_allocate(name, now).unwrap().v4.unwrap()
    }

    fn lru(pool: &FakeIpPool) -> Vec<String> {
        let table = pool.table();
        table.check_invariants();
        table.lru_names()
    }

    #[test]
    fn same_name_same_addresses() {
        let (pool, t) = (pool(8), Instant::now());
        let a = pool.lookup_or_allocate("example.com", t).unwrap();
        let b = pool.lookup_or_allocate("other.example", t).unwrap();
        assert_eq!(
            a,
            FakeAddrs {
                v4: Some([10, 0, 0, 0].into()),
                v6: Some("fd00::".parse().unwrap())
            }
        );
        assert_eq!(
            b,
            FakeAddrs {
                v4: Some([10, 0, 0, 1].into()),
                v6: Some("fd00::1".parse().unwrap())
            }
        );
        assert_eq!(pool.lookup_or_allocate("example.com", secs(t, 100)).unwrap(), a);
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn names_are_case_insensitive_and_trailing_dot_free() {
        let (pool, t) = (pool(8), Instant::now());
        let a = v4(&pool, "WWW.Example.COM.", t);
        assert_eq!(v4(&pool, "www.example.com", t), a);
        assert_eq!(pool.resolve(a.into()).unwrap().name(), "www.example.com");
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn invalid_names_are_refused() {
        let (pool, t) = (pool(8), Instant::now());
        for name in ["", ".", &"a".repeat(256)] {
            assert!(
                matches!(pool.lookup_or_allocate(name, t), Err(FakeIpError::InvalidName(_))),
                "{name}"
            );
        }
        assert!(pool.lookup_or_allocate(&format!("{}.", "a".repeat(255)), t).is_ok());
    }

    #[test]
    fn resolve_maps_both_families_back() {
        let (pool, t) = (pool(8), Instant::now());
        let addrs = pool.lookup_or_allocate("example.com", t).unwrap();
        for ip in addrs.iter() {
            let guard = pool.resolve(ip).unwrap();
            assert_eq!((guard.name(), guard.addr()), ("example.com", ip));
        }
        assert!(pool.resolve([10, 0, 0, 7].into()).is_none(), "in range but unmapped");
        assert!(pool.resolve([192, 0, 2, 1].into()).is_none(), "outside the range");
    }

    #[test]
    fn full_pool_reuses_least_recently_used_entry() {
        let (pool, t) = (pool(3), Instant::now());
        let a = v4(&pool, "a", secs(t, 0));
        v4(&pool, "b", secs(t, 1));
        let c = v4(&pool, "c", secs(t, 2));
        // Asking again for `a` makes `b` the least recently used.
        v4(&pool, "a", secs(t, 3));
        assert_eq!(lru(&pool), ["b", "c", "a"]);

        let far = secs(t, 100);
        let d = v4(&pool, "d", far);
        assert_eq!(d, Ipv4Addr::new(10, 0, 0, 1), "d took b's slot");
        assert_eq!(lru(&pool), ["c", "a", "d"]);
        assert_eq!(v4(&pool, "e", far), c);
        assert_eq!(v4(&pool, "f", far), a);
        assert_eq!(pool.resolve(d.into()).unwrap().name(), "d");
        assert_eq!(pool.len(), 3, "never grows past capacity");
    }

    #[test]
    fn ttl_prevents_reuse() {
        let (pool, t) = (pool(1), Instant::now());
        let a = v4(&pool, "a", t);
        let just_before = t + TTL - Duration::from_millis(1);
        assert_eq!(
            pool.lookup_or_allocate("b", just_before),
            Err(FakeIpError::Full { capacity: 1 })
        );
        assert_eq!(v4(&pool, "b", t + TTL), a, "reused once the TTL has passed");
        assert!(pool.resolve(a.into()).is_some_and(|g| g.name() == "b"));
    }

    #[test]
    fn answering_again_restarts_the_ttl() {
        let (pool, t) = (pool(1), Instant::now());
        v4(&pool, "a", t);
        v4(&pool, "a", secs(t, 8));
        assert!(pool.lookup_or_allocate("b", secs(t, 12)).is_err());
        assert!(pool.lookup_or_allocate("b", secs(t, 18)).is_ok());
    }

    #[test]
    fn pin_prevents_reuse_and_unpin_restarts_the_ttl() {
        let (pool, t) = (pool(2), Instant::now());
        let a = v4(&pool, "a", secs(t, 0));
        v4(&pool, "b", secs(t, 1));
        let guard = pool.resolve(a.into()).unwrap();
        let second = pool.resolve(a.into()).unwrap();
        assert_eq!(lru(&pool), ["b"], "pinned entries leave the LRU list");

        // `a` is older, but pinned: `b`'s entry goes to `c`, then none is left.
        assert_ne!(v4(&pool, "c", secs(t, 100)), a);
        assert!(pool.lookup_or_allocate("d", secs(t, 105)).is_err());

        // `c`'s TTL has passed, `a` is still pinned by `second`.
        guard.release(secs(t, 200));
        assert_ne!(v4(&pool, "d", secs(t, 200)), a);
        assert!(pool.lookup_or_allocate("e", secs(t, 205)).is_err());

        // Unpinned at 300: `a` is the most recently used now.
        second.release(secs(t, 300));
        assert_eq!(lru(&pool), ["d", "a"]);
        assert_ne!(v4(&pool, "e", secs(t, 305)), a);
        assert!(
            pool.lookup_or_allocate("f", secs(t, 309)).is_err(),
            "a TTL from the unpin"
        );
        assert_eq!(v4(&pool, "f", secs(t, 310)), a);
    }

    #[test]
    fn dropping_a_guard_unpins() {
        let (pool, t) = (pool(1), Instant::now());
        let a = v4(&pool, "a", t);
        drop(pool.resolve(a.into()).unwrap());
        assert_eq!(lru(&pool), ["a"]);
        // Dropped at the real clock: reusable a TTL after that.
        assert!(
            pool.lookup_or_allocate("b", Instant::now() + TTL + Duration::from_secs(1))
                .is_ok()
        );
    }

    #[test]
    fn exhaustion_refuses_without_growing_and_recovers() {
        let (pool, t) = (pool(4), Instant::now());
        let guards: Vec<_> = (0..4)
            .map(|i| pool.resolve(v4(&pool, &format!("n{i}"), t).into()).unwrap())
            .collect();
        for s in [0, 10, 1000] {
            assert_eq!(
                pool.lookup_or_allocate("more", secs(t, s)),
                Err(FakeIpError::Full { capacity: 4 })
            );
        }
        assert_eq!(pool.len(), 4);
        // Existing names are still answered while full.
        assert_eq!(v4(&pool, "n2", secs(t, 1000)), Ipv4Addr::new(10, 0, 0, 2));
        drop(guards);
        assert!(pool.lookup_or_allocate("more", Instant::now() + TTL).is_ok());
    }

    #[test]
    fn capacity_is_clamped_to_the_smallest_range() {
        let pool = FakeIpPool::new(FakeIpConfig {
            ipv4: Some("10.0.0.0/30".parse().unwrap()),
            ipv6: Some("fd00::/64".parse().unwrap()),
            exclude: vec!["10.0.0.0/32".parse().unwrap()],
            capacity: 1000,
            ttl: TTL,
        })
        .unwrap();
        assert_eq!(pool.capacity(), 3);
    }

    #[test]
    fn excluded_addresses_are_never_handed_out() {
        let pool = FakeIpPool::new(FakeIpConfig {
            ipv4: Some("10.0.0.0/28".parse().unwrap()),
            ipv6: Some("fd00::/124".parse().unwrap()),
            exclude: ["10.0.0.0/30", "10.0.0.8/31", "fd00::/126", "192.0.2.0/24"]
                .map(|n| n.parse().unwrap())
                .into(),
            capacity: 100,
            ttl: TTL,
        })
        .unwrap();
        let t = Instant::now();
        let mut seen = HashSet::new();
        for i in 0..pool.capacity() {
            for ip in pool.lookup_or_allocate(&format!("n{i}"), t).unwrap().iter() {
                assert!(pool.contains(ip), "{ip}");
                assert!(seen.insert(ip), "{ip} handed out twice");
            }
        }
        assert_eq!(pool.capacity(), 10, "16 - 4 - 2 IPv4 addresses");
        for ip in [
            "10.0.0.0",
            "10.0.0.1",
            "10.0.0.3",
            "10.0.0.8",
            "10.0.0.9",
            "fd00::2",
            "10.0.0.16",
            "fd00::10",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!seen.contains(&ip) && !pool.contains(ip), "{ip}");
        }
    }

    #[test]
    fn default_config_avoids_the_device_subnets() {
        let pool = FakeIpPool::new(FakeIpConfig::default()).unwrap();
        let addrs = pool.lookup_or_allocate("example.com", Instant::now()).unwrap();
        assert_eq!(addrs.v4, Some(Ipv4Addr::new(198, 18, 0, 4)));
        assert_eq!(addrs.v6, Some("fd74:3273:ffff::".parse().unwrap()));
        assert!(pool.contains("198.19.255.255".parse().unwrap()));
        for ip in [
            "198.18.0.1",
            "198.18.0.2",
            "198.20.0.0",
            "fd74:3273::1",
            "fd74:3273::2",
            "2001:db8::1",
        ] {
            assert!(!pool.contains(ip.parse().unwrap()), "{ip}");
        }
        assert_eq!(pool.capacity(), DEFAULT_CAPACITY);
    }

    #[test]
    fn single_family_pools() {
        let t = Instant::now();
        let v6_only = FakeIpPool::new(FakeIpConfig {
            ipv4: None,
            ..FakeIpConfig::default()
        })
        .unwrap();
        let addrs = v6_only.lookup_or_allocate("example.com", t).unwrap();
        assert!(addrs.v4.is_none() && addrs.v6.is_some());
        assert!(!v6_only.contains("198.18.1.1".parse().unwrap()));
        let v4_only = FakeIpPool::new(FakeIpConfig {
            ipv6: None,
            ..FakeIpConfig::default()
        })
        .unwrap();
        assert!(v4_only.lookup_or_allocate("example.com", t).unwrap().v6.is_none());
    }

    #[test]
    fn bad_configs_are_rejected() {
        let base = FakeIpConfig::default();
        let cases = [
            (
                FakeIpConfig {
                    ipv4: None,
                    ipv6: None,
                    ..base.clone()
                },
                FakeIpConfigError::NoRange,
            ),
            (
                FakeIpConfig {
                    capacity: 0,
                    ..base.clone()
                },
                FakeIpConfigError::ZeroCapacity,
            ),
            (
                FakeIpConfig {
                    ttl: Duration::ZERO,
                    ..base.clone()
                },
                FakeIpConfigError::Ttl(Duration::ZERO),
            ),
            (
                FakeIpConfig {
                    ttl: Duration::from_millis(1500),
                    ..base.clone()
                },
                FakeIpConfigError::Ttl(Duration::from_millis(1500)),
            ),
            (
                FakeIpConfig {
                    exclude: vec!["198.0.0.0/8".parse().unwrap()],
                    ..base.clone()
                },
                FakeIpConfigError::NoUsableAddress("198.18.0.0/15".parse().unwrap()),
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(FakeIpPool::new(config).unwrap_err(), expected);
        }
    }

    /// Several threads answer, pin and unpin over a small pool that keeps
    /// reusing entries; every pinned address must keep its name, and the
    /// table must stay consistent. A deadlock fails the test instead of
    /// hanging it.
    #[test]
    fn concurrent_use_from_several_threads() {
        const THREADS: usize = 4;
        const ROUNDS: u64 = 2_000;
        let pool = pool(16);
        let base = Instant::now();
        let (done, finished) = mpsc::channel();
        for worker in 0..THREADS {
            let (pool, done) = (Arc::clone(&pool), done.clone());
            thread::spawn(move || {
                let mut held: Vec<PinGuard> = Vec::new();
                for round in 0..ROUNDS {
                    // Time moves a TTL every 10 rounds, so entries get reused.
                    let now = base + TTL * (round / 10) as u32;
                    let name = format!("w{worker}-{}", round % 24);
                    if let Ok(addrs) = pool.lookup_or_allocate(&name, now) {
                        let ip = addrs.iter().nth((round % 2) as usize).unwrap();
                        // Another thread may have reused the entry in between;
                        // once pinned, it must keep whatever name it had.
                        if let Some(guard) = pool.resolve(ip) {
                            held.push(guard);
                        }
                    }
                    for guard in &held {
                        assert_eq!(pool.resolve(guard.addr()).unwrap().name(), guard.name());
                    }
                    if held.len() > 2 {
                        held.remove(0).release(now);
                    }
                }
                done.send(worker).unwrap();
            });
        }
        for _ in 0..THREADS {
            finished
                .recv_timeout(Duration::from_secs(60))
                .expect("a worker deadlocked or panicked");
        }
        pool.table().check_invariants();
        assert!(pool.len() <= 16);
    }
}
