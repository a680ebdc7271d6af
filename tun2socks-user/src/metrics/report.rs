//! What the control socket answers to `stats`: the same values as the
//! Prometheus exposition, as JSON, keyed as in the `worker finished` log line.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::catalog::{Kind, SERIES};
use crate::worker::WorkerSnapshot;
use crate::worker::stats::LATENCY_BOUNDS_US;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub version: String,
    pub pid: u32,
    pub device: String,
    pub uptime_secs: f64,
    pub workers: Vec<WorkerReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerReport {
    pub worker: usize,
    /// False when the worker did not answer in time; `values` is then empty.
    pub answered: bool,
    pub values: BTreeMap<String, u64>,
    pub connect_latency: Latency,
}

/// A latency histogram: per-bucket (not cumulative) counts; the last count
/// is for everything above the last bound.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub bounds_us: Vec<u64>,
    pub counts: Vec<u64>,
    pub sum_us: u64,
}

impl Latency {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The upper bound (µs) of the bucket holding quantile `q`; `None` if
    /// empty or above the last bound.
    pub fn quantile_bound(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return self.bounds_us.get(i).copied();
            }
        }
        None
    }

    pub fn add(&mut self, other: &Latency) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
            self.bounds_us.clone_from(&other.bounds_us);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum_us += other.sum_us;
    }
}

impl WorkerReport {
    pub fn of(worker: usize, snapshot: Option<&WorkerSnapshot>) -> WorkerReport {
        let Some(snapshot) = snapshot else {
            return WorkerReport {
                worker,
                answered: false,
                values: BTreeMap::new(),
                connect_latency: Latency::default(),
            };
        };
        let h = &snapshot.stats.connect_latency;
        WorkerReport {
            worker,
            answered: true,
            values: SERIES.iter().map(|s| (s.key.to_owned(), (s.get)(snapshot))).collect(),
            connect_latency: Latency {
                bounds_us: LATENCY_BOUNDS_US.to_vec(),
                counts: h.buckets.to_vec(),
                sum_us: h.sum_us,
            },
        }
    }
}

impl Report {
    /// The sum of `key` over the workers that answered.
    pub fn total(&self, key: &str) -> u64 {
        self.workers.iter().filter_map(|w| w.values.get(key)).sum()
    }

    /// The keys to show, in catalogue order (gauges first), then any the
    /// daemon sent that this build does not know (a newer daemon).
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = SERIES.iter().map(|s| s.key.to_owned()).collect();
        let mut extra: Vec<String> = self
            .workers
            .iter()
            .flat_map(|w| w.values.keys())
            .filter(|k| !keys.contains(k))
            .cloned()
            .collect();
        extra.sort();
        extra.dedup();
        keys.extend(extra);
        keys
    }

    /// Whether `key` is a counter (rates make sense) rather than a gauge.
    pub fn is_counter(key: &str) -> bool {
        SERIES
            .iter()
            .find(|s| s.key == key)
            .is_none_or(|s| s.kind == Kind::Counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_name_the_bucket_bound() {
        let l = Latency {
            bounds_us: vec![1_000, 10_000],
            counts: vec![8, 1, 1],
            sum_us: 0,
        };
        assert_eq!(l.quantile_bound(0.5), Some(1_000));
        assert_eq!(l.quantile_bound(0.9), Some(10_000));
        assert_eq!(l.quantile_bound(0.99), None);
        assert_eq!(Latency::default().quantile_bound(0.5), None);
    }
}
