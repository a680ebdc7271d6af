//! From what the user asked for to the routes and rules that implement it.
//!
//! This is the whole routing design, kept free of I/O so that it can be read
//! (and unit-tested) in one place. Per address family that has routes, with
//! T = table, M = fwmark and P = rule priority:
//!
//! * table T holds each routed prefix as `dev DEVICE scope link`, and each
//!   bypassed prefix as a `throw` route, so that a lookup for it in T falls
//!   through to the next rule;
//! * rule P: `not fwmark M/0xffffffff lookup T suppress_prefixlength 0`:
//!   specific routed prefixes beat the main table, but T's default route is
//!   ignored here;
//! * rule P+1 (only when a default route is routed):
//!   `lookup main suppress_prefixlength 0`: the main table's specific routes
//!   (the LAN, the proxy's subnet) beat our default route;
//! * rule P+2: `not fwmark M/0xffffffff lookup T`: T's default route takes
//!   the rest of the unmarked traffic.
//!
//! Marked traffic (the daemon's own upstream sockets) skips P and P+2 and is
//! routed by main, so it never loops back into the device, even when the
//! proxy lies inside a routed prefix.

use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::SetupError;

/// What [`apply`](super::apply) is asked to set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupPlan {
    /// The TUN interface; it already exists (its queues are open) when
    /// `apply` runs.
    pub device: String,
    pub mtu: u32,
    /// Addresses put on the device (IPv6 ones without duplicate address
    /// detection: nobody else is on a TUN link).
    pub addresses: Vec<IpNet>,
    /// Prefixes sent into the device.
    pub routes: Vec<IpNet>,
    /// Prefixes never sent into the device, even inside a routed prefix.
    pub bypass: Vec<IpNet>,
    /// Mark carried by the daemon's own upstream sockets.
    pub fwmark: u32,
    /// Our routing table.
    pub table: u32,
    /// Priority of our first rule; we use it and the next two.
    pub rule_priority: u32,
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// What a route in our table does with the traffic it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// Into the device (`dev DEVICE scope link`).
    Device,
    /// Out of our table, on to the next rule (`throw`).
    Throw,
}

/// One route in our table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    pub prefix: IpNet,
    pub table: u32,
    pub kind: RouteKind,
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            RouteKind::Device => write!(f, "route {} into the device", self.prefix)?,
            RouteKind::Throw => write!(f, "throw route {}", self.prefix)?,
        }
        write!(f, " in table {}", self.table)
    }
}

/// One policy routing rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSpec {
    pub family: Family,
    pub priority: u32,
    /// The table looked up (254 is main).
    pub table: u32,
    /// `not fwmark M/0xffffffff`: the rule skips packets carrying this mark.
    pub unless_fwmark: Option<u32>,
    /// `suppress_prefixlength N`: a result this short or shorter is ignored.
    pub suppress_prefixlen: Option<u32>,
}

/// The kernel's id of the main table.
pub const MAIN_TABLE: u32 = 254;

impl fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rule {}:", self.family, self.priority)?;
        if let Some(mark) = self.unless_fwmark {
            write!(f, " not fwmark {mark:#x}/0xffffffff")?;
        }
        match self.table {
            MAIN_TABLE => write!(f, " lookup main")?,
            table => write!(f, " lookup {table}")?,
        }
        if let Some(len) = self.suppress_prefixlen {
            write!(f, " suppress_prefixlength {len}")?;
        }
        Ok(())
    }
}

/// The routes and rules a plan turns into, in the order they are installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pub routes: Vec<RouteSpec>,
    pub rules: Vec<RuleSpec>,
}

/// Rules before ours: priority 0 is the `local` table, which must stay
/// first or the host stops receiving its own traffic.
const FIRST_FREE_PRIORITY: u32 = 1;
/// The `lookup main` rule: ours must come before it, or main's default
/// route would win.
const MAIN_RULE_PRIORITY: u32 = 32766;

impl SetupPlan {
    /// Checks the plan and derives the routes and rules that implement it.
    pub(crate) fn layout(&self) -> Result<Layout, SetupError> {
        self.validate()?;
        let routes = dedup(&self.routes);
        let bypass = dedup(&self.bypass);

        let mut layout = Layout {
            routes: Vec::new(),
            rules: Vec::new(),
        };
        for family in [Family::V4, Family::V6] {
            let routed: Vec<IpNet> = routes.iter().copied().filter(|n| Family::of(n) == family).collect();
            let bypassed = bypass.iter().copied().filter(|n| Family::of(n) == family);
            if routed.is_empty() {
                // Without routes of this family nothing enters the device,
                // so there is nothing to bypass either.
                for net in bypassed {
                    tracing::warn!(%net, "bypass prefix ignored: no {family} route to bypass");
                }
                continue;
            }
            let table = self.table;
            let device_route = |prefix| RouteSpec {
                prefix,
                table,
                kind: RouteKind::Device,
            };
            let throw_route = |prefix| RouteSpec {
                prefix,
                table,
                kind: RouteKind::Throw,
            };
            layout.routes.extend(routed.iter().copied().map(device_route));
            layout.routes.extend(bypassed.map(throw_route));

            let p = self.rule_priority;
            let mark = Some(self.fwmark);
            layout.rules.push(RuleSpec {
                family,
                priority: p,
                table,
                unless_fwmark: mark,
                suppress_prefixlen: Some(0),
            });
            if routed.iter().any(|net| net.prefix_len() == 0) {
                layout.rules.push(RuleSpec {
                    family,
                    priority: p + 1,
                    table: MAIN_TABLE,
                    unless_fwmark: None,
                    suppress_prefixlen: Some(0),
                });
            }
            layout.rules.push(RuleSpec {
                family,
                priority: p + 2,
                table,
                unless_fwmark: mark,
                suppress_prefixlen: None,
            });
        }
        Ok(layout)
    }

    fn validate(&self) -> Result<(), SetupError> {
        let invalid = |msg: String| Err(SetupError::InvalidPlan(msg));
        if crate::device::tun::validate_name(&self.device).is_err() {
            return invalid(format!("{:?} is not a valid interface name", self.device));
        }
        if !(68..=65535).contains(&self.mtu) {
            return invalid(format!("MTU {} is outside 68..=65535", self.mtu));
        }
        let uses_v6 = self
            .addresses
            .iter()
            .chain(&self.routes)
            .any(|n| Family::of(n) == Family::V6);
        if uses_v6 && self.mtu < 1280 {
            return invalid(format!(
                "MTU {} is below IPv6's minimum of 1280 (the kernel would disable IPv6 on the device)",
                self.mtu
            ));
        }
        if self.fwmark == 0 {
            // Unmarked sockets carry mark 0: "not fwmark 0" would send the
            // daemon's own traffic back into the tunnel.
            return invalid("fwmark must not be 0".to_string());
        }
        // 0 is "unspecified", 252..=255 are compat/default/main/local:
        // undo flushes what we put in our table, so it must be our own.
        if self.table == 0 || (252..=255).contains(&self.table) {
            return invalid(format!(
                "table {} is reserved; pick a table of our own (e.g. 100)",
                self.table
            ));
        }
        let last = self.rule_priority.checked_add(2);
        if self.rule_priority < FIRST_FREE_PRIORITY || last.is_none_or(|last| last >= MAIN_RULE_PRIORITY) {
            return invalid(format!(
                "rule priority {} must leave room for three rules between the local rule (0) and the main rule ({MAIN_RULE_PRIORITY})",
                self.rule_priority
            ));
        }
        for net in self.routes.iter().chain(&self.bypass) {
            if net.trunc() != *net {
                return invalid(format!(
                    "prefix {net} has host bits set (did you mean {}?)",
                    net.trunc()
                ));
            }
        }
        if let Some(both) = self.routes.iter().find(|net| self.bypass.contains(net)) {
            return invalid(format!("prefix {both} is both routed and bypassed"));
        }
        Ok(())
    }
}

/// Removes repeats (the CLI and the config file may both name a prefix),
/// keeping the first occurrence's position.
fn dedup(nets: &[IpNet]) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::with_capacity(nets.len());
    for net in nets {
        if !out.contains(net) {
            out.push(*net);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(routes: &[&str], bypass: &[&str]) -> SetupPlan {
        SetupPlan {
            device: "tun0".into(),
            mtu: 1500,
            addresses: vec![],
            routes: routes.iter().map(|s| s.parse().unwrap()).collect(),
            bypass: bypass.iter().map(|s| s.parse().unwrap()).collect(),
            fwmark: 0x1d,
            table: 100,
            rule_priority: 1000,
        }
    }

    fn rules(layout: &Layout) -> Vec<String> {
        layout.rules.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn default_route_gets_three_rules_per_family() {
        let layout = plan(&["0.0.0.0/0", "::/0"], &[]).layout().unwrap();
        assert_eq!(
            rules(&layout),
            [
                "IPv4 rule 1000: not fwmark 0x1d/0xffffffff lookup 100 suppress_prefixlength 0",
                "IPv4 rule 1001: lookup main suppress_prefixlength 0",
                "IPv4 rule 1002: not fwmark 0x1d/0xffffffff lookup 100",
                "IPv6 rule 1000: not fwmark 0x1d/0xffffffff lookup 100 suppress_prefixlength 0",
                "IPv6 rule 1001: lookup main suppress_prefixlength 0",
                "IPv6 rule 1002: not fwmark 0x1d/0xffffffff lookup 100",
            ]
        );
    }

    #[test]
    fn specific_routes_only_skip_the_main_rule_and_the_other_family() {
        let layout = plan(&["10.0.0.0/8"], &["10.1.0.0/16", "fd00::/8"]).layout().unwrap();
        assert_eq!(
            rules(&layout),
            [
                "IPv4 rule 1000: not fwmark 0x1d/0xffffffff lookup 100 suppress_prefixlength 0",
                "IPv4 rule 1002: not fwmark 0x1d/0xffffffff lookup 100",
            ]
        );
        let routes: Vec<String> = layout.routes.iter().map(ToString::to_string).collect();
        assert_eq!(
            routes,
            [
                "route 10.0.0.0/8 into the device in table 100",
                "throw route 10.1.0.0/16 in table 100"
            ]
        );
    }

    #[test]
    fn no_routes_no_changes() {
        let layout = plan(&[], &["10.1.0.0/16"]).layout().unwrap();
        assert!(layout.routes.is_empty() && layout.rules.is_empty());
    }

    #[test]
    fn repeats_are_merged() {
        let layout = plan(&["10.0.0.0/8", "10.0.0.0/8"], &[]).layout().unwrap();
        assert_eq!(layout.routes.len(), 1);
    }

    #[test]
    fn rejects_unsafe_or_inconsistent_plans() {
        let reject = |edit: fn(&mut SetupPlan)| {
            let mut p = plan(&["0.0.0.0/0"], &["192.168.0.0/16"]);
            edit(&mut p);
            assert!(matches!(p.layout(), Err(SetupError::InvalidPlan(_))), "{p:?} accepted");
        };
        reject(|p| p.fwmark = 0);
        reject(|p| p.table = 254);
        reject(|p| p.table = 0);
        reject(|p| p.rule_priority = 0);
        reject(|p| p.rule_priority = 32764);
        reject(|p| p.rule_priority = u32::MAX);
        reject(|p| p.mtu = 20);
        reject(|p| p.device = "a/b".into());
        reject(|p| p.routes.push("10.1.2.3/8".parse().unwrap()));
        reject(|p| p.routes.push("192.168.0.0/16".parse().unwrap()));
        reject(|p| {
            p.mtu = 1000;
            p.routes.push("::/0".parse().unwrap());
        });
    }
}
