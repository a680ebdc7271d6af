//! What a namespace's network configuration looks like, for before/after
//! comparisons.

use std::fmt;

use anyhow::Result;

use crate::Netns;

/// The `ip` views a snapshot is made of.
const VIEWS: [&[&str]; 6] = [
    &["link"],
    &["addr"],
    &["route", "show", "table", "all"],
    &["-6", "route", "show", "table", "all"],
    &["rule"],
    &["-6", "rule"],
];

/// Links, addresses, routes (all tables) and rules of one namespace, as
/// iproute2 prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    views: Vec<(String, String)>,
}

impl Snapshot {
    pub fn take(ns: &Netns) -> Result<Self> {
        let views = VIEWS
            .iter()
            .map(|args| Ok((format!("ip {}", args.join(" ")), ns.ip(args)?)))
            .collect::<Result<_>>()?;
        Ok(Snapshot { views })
    }

    /// Lines only in `self` (`-`) or only in `after` (`+`), per view; empty if
    /// the snapshots are equal.
    pub fn diff(&self, after: &Snapshot) -> String {
        let mut out = String::new();
        for ((view, before), (_, now)) in self.views.iter().zip(&after.views) {
            let gone: Vec<&str> = before.lines().filter(|l| !now.lines().any(|n| n == *l)).collect();
            let new: Vec<&str> = now.lines().filter(|l| !before.lines().any(|b| b == *l)).collect();
            if gone.is_empty() && new.is_empty() && before == now {
                continue;
            }
            out.push_str(&format!("{view}:\n"));
            gone.iter().for_each(|l| out.push_str(&format!("  - {l}\n")));
            new.iter().for_each(|l| out.push_str(&format!("  + {l}\n")));
            if gone.is_empty() && new.is_empty() {
                out.push_str("  (same lines, different order)\n");
            }
        }
        out
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (view, text) in &self.views {
            writeln!(f, "$ {view}\n{text}")?;
        }
        Ok(())
    }
}
