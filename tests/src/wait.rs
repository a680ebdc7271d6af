//! Bounded waiting: every poll loop in the lab goes through [`poll`].

use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Calls `check` until it yields a value, an error, or `timeout` passes.
///
/// The interval starts at 10 ms and doubles up to 200 ms, so fast events are
/// seen quickly and slow ones cost little.
pub fn poll<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(10);
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        sleep(interval.min(deadline - now));
        interval = (interval * 2).min(Duration::from_millis(200));
    }
}
