//! Slows down repeated authentication failures from one client address, so guessing
//! credentials or spraying tokens gets expensive without locking anyone out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed before delays start.
const FREE_FAILURES: u32 = 3;
/// The longest delay a failing client waits for its answer.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// A client that stops failing for this long starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(300);
/// Bounds the table under an address-spraying attack.
const MAX_TRACKED: usize = 65_536;

#[derive(Default)]
pub(crate) struct Throttle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Throttle {
    /// Records a failure and returns how long to hold the answer back.
    pub(crate) fn failure(&self, ip: IpAddr) -> Duration {
        let now = Instant::now();
        let mut table = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if table.len() >= MAX_TRACKED {
            table.retain(|_, (_, last)| now.duration_since(*last) < FORGET_AFTER);
            if table.len() >= MAX_TRACKED {
                table.clear();
            }
        }
        let entry = table.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= FORGET_AFTER {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        delay_for(entry.0)
    }

    pub(crate) fn success(&self, ip: IpAddr) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&ip);
    }
}

fn delay_for(failures: u32) -> Duration {
    if failures <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let exponent = (failures - FREE_FAILURES - 1).min(10);
    (Duration::from_millis(100) * 2u32.pow(exponent)).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_after_the_free_failures_and_reset_on_success() {
        let t = Throttle::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let delays: Vec<_> = (0..10).map(|_| t.failure(ip)).collect();
        assert_eq!(delays[..3], [Duration::ZERO; 3]);
        assert_eq!(delays[3], Duration::from_millis(100));
        assert_eq!(delays[4], Duration::from_millis(200));
        assert_eq!(delays[9], MAX_DELAY);
        assert_eq!(t.failure(other), Duration::ZERO, "another address is not slowed");
        t.success(ip);
        assert_eq!(t.failure(ip), Duration::ZERO);
    }
}
