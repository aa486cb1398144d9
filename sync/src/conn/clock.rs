//! Coarse monotonic clock in whole seconds, the time base of entry deadlines.
//!
//! The table never reads a clock itself: callers pass `now`, so tests are deterministic and
//! packet threads can read a cached value. Seconds in a `u32` last 136 years from the epoch
//! and match IPVS's granularity (all its timeouts are whole seconds; sync v1 carries seconds).

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct CoarseClock {
    epoch: Instant,
}

impl Default for CoarseClock {
    fn default() -> Self {
        Self::new()
    }
}

impl CoarseClock {
    /// A clock whose second 0 is now.
    pub fn new() -> Self {
        CoarseClock {
            epoch: Instant::now(),
        }
    }

    pub fn with_epoch(epoch: Instant) -> Self {
        CoarseClock { epoch }
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Whole seconds since the epoch (saturating).
    pub fn now(&self) -> u32 {
        self.secs_at(Instant::now())
    }

    pub fn secs_at(&self, t: Instant) -> u32 {
        u32::try_from(t.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX)
    }

    /// The instant a table time (e.g. an entry's `expires`) stands for.
    pub fn instant_of(&self, secs: u32) -> Instant {
        self.epoch + Duration::from_secs(u64::from(secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        let c = CoarseClock::new();
        assert!(c.now() <= 1);
        assert_eq!(c.secs_at(c.instant_of(42)), 42);
        assert_eq!(c.secs_at(c.epoch() - Duration::from_secs(0)), 0);
    }
}
