//! rr and wrr (`ip_vs_rr.c`, `ip_vs_wrr.c`).
//!
//! IPVS guards their position with the service's `sched_lock`; here the position lives in one
//! atomic word updated by compare-and-swap: a pick computes the next position from a snapshot
//! and retries if another thread moved it meanwhile. Lock-free, allocation-free, and each
//! successful pick advances the shared position exactly as one locked IPVS pick would.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::{Dest, SchedInput, Scheduler};
use crate::model;

/// Round robin over the available servers.
#[derive(Debug)]
pub(crate) struct Rr {
    dests: Box<[Arc<Dest>]>,
    /// Index of the last server picked; `dests.len()` = none yet (IPVS: the list head).
    last: AtomicU32,
}

impl Rr {
    pub(crate) fn new(dests: Box<[Arc<Dest>]>, prev: Option<&dyn Any>) -> Self {
        let n = dests.len() as u32;
        // Carry the position over by address, as IPVS keeps pointing at the same server.
        let last = prev
            .and_then(|p| p.downcast_ref::<Rr>())
            .and_then(|p| {
                let i = p.last.load(Ordering::Relaxed) as usize;
                let addr = p.dests.get(i)?.addr();
                dests.iter().position(|d| d.addr() == addr)
            })
            .map_or(n, |i| i as u32);
        Self {
            dests,
            last: AtomicU32::new(last),
        }
    }
}

impl Scheduler for Rr {
    fn kind(&self) -> model::Scheduler {
        model::Scheduler::Rr
    }

    fn dests(&self) -> &[Arc<Dest>] {
        &self.dests
    }

    fn pick(&self, _input: &SchedInput) -> Option<usize> {
        let n = self.dests.len();
        if n == 0 {
            return None;
        }
        let mut last = self.last.load(Ordering::Relaxed) as usize;
        loop {
            // The servers after `last`, wrapping round to `last` itself.
            let start = if last >= n { 0 } else { last + 1 };
            let found = (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| self.dests[i].is_available())?;
            match self.last.compare_exchange_weak(
                last as u32,
                found as u32,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(found),
                Err(now) => last = now as usize,
            }
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Weighted round robin, IPVS's gcd/max-weight stepping: passes with a "current weight" `cw`
/// going from the maximum weight down to 1 in steps of the weights' gcd; a pass picks, in
/// order, every server whose weight is >= `cw`. Over one cycle each server is picked
/// `weight / gcd` times, heavier ones first.
#[derive(Debug)]
pub(crate) struct Wrr {
    dests: Box<[Arc<Dest>]>,
    /// gcd of the non-zero weights (1 when there are none).
    di: i64,
    /// max weight - (di - 1), so that the last pass is `cw == 1` (IPVS's guard against weights
    /// lowered below `di` since the build); 0 when every weight is 0.
    mw: i64,
    /// (position, cw) packed: position in the high 32 bits (`dests.len()` = IPVS's list head),
    /// `cw` in the low 32.
    state: AtomicU64,
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// gcd of the non-zero weights; 0 when there are none.
pub(crate) fn gcd_weights(weights: impl Iterator<Item = u32>) -> u32 {
    weights.filter(|&w| w > 0).fold(0, gcd)
}

fn pack(pos: usize, cw: i64) -> u64 {
    ((pos as u64) << 32) | u64::from(cw as u32)
}

fn unpack(s: u64) -> (usize, i64) {
    ((s >> 32) as usize, i64::from(s as u32 as i32))
}

impl Wrr {
    pub(crate) fn new(dests: Box<[Arc<Dest>]>, prev: Option<&dyn Any>) -> Self {
        let di = i64::from(gcd_weights(dests.iter().map(|d| d.weight())).max(1));
        let max = dests.iter().map(|d| d.weight()).max().unwrap_or(0);
        let mw = i64::from(max) - (di - 1);
        let head = dests.len();
        // IPVS's dest_changed: the position goes back to the head; cw is kept when it still
        // makes sense, rounded onto the new gcd grid.
        let cw = match prev.and_then(|p| p.downcast_ref::<Wrr>()) {
            Some(p) => {
                let (_, cw) = unpack(p.state.load(Ordering::Relaxed));
                if cw > mw || cw == 0 {
                    mw
                } else if di > 1 {
                    (cw / di) * di + 1
                } else {
                    cw
                }
            }
            None => mw,
        };
        Self {
            dests,
            di,
            mw,
            state: AtomicU64::new(pack(head, cw)),
        }
    }

    fn eligible(&self, i: usize, cw: i64) -> bool {
        let d = &self.dests[i];
        !d.is_overloaded() && i64::from(d.weight()) >= cw
    }

    /// One IPVS `ip_vs_wrr_schedule` from state (pos, cw): the pick and the next state.
    fn step(&self, pos: usize, mut cw: i64) -> (Option<usize>, usize, i64) {
        let head = self.dests.len();
        if self.mw == 0 {
            return (None, pos, cw);
        }
        let last = pos;
        let mut pos = pos;
        let mut stop = None;
        let mut last_pass = false;
        let mut restarted = false;
        loop {
            let mut i = if pos >= head { 0 } else { pos + 1 };
            while i < head {
                if self.eligible(i, cw) {
                    return (Some(i), i, cw);
                }
                if stop == Some(i) {
                    return (None, i, cw);
                }
                i += 1;
            }
            pos = head;
            cw -= self.di;
            if cw <= 0 {
                cw = self.mw;
                // A full pass at cw = 1 over every server found nothing.
                if last_pass || last >= head {
                    return (None, head, cw);
                }
                restarted = true;
            }
            last_pass = cw <= self.di;
            if last_pass && restarted && last < head {
                // The first pass at weight >= 1 only covered the servers after `last`; now
                // cover those up to it.
                stop = Some(last);
            }
        }
    }
}

impl Scheduler for Wrr {
    fn kind(&self) -> model::Scheduler {
        model::Scheduler::Wrr
    }

    fn dests(&self) -> &[Arc<Dest>] {
        &self.dests
    }

    fn pick(&self, _input: &SchedInput) -> Option<usize> {
        let mut cur = self.state.load(Ordering::Relaxed);
        loop {
            let (pos, cw) = unpack(cur);
            let (pick, pos2, cw2) = self.step(pos, cw);
            let next = pack(pos2, cw2);
            if next == cur {
                return pick;
            }
            match self
                .state
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return pick,
                Err(now) => cur = now,
            }
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{SchedConfig, rebuild};
    use super::*;
    use crate::model::{SchedFlags, Scheduler as K};

    #[test]
    fn rr_cycles_and_skips_unavailable() {
        for v6 in [false, true] {
            let d = dests(&[1, 5, 1, 1], v6);
            let s = sched(K::Rr, &d);
            let seq: Vec<usize> = (0..8).map(|n| s.pick(&input(n, v6)).unwrap()).collect();
            assert_eq!(seq, [0, 1, 2, 3, 0, 1, 2, 3]);
            d[1].set_weight(0);
            d[2].set_thresholds(1, 0);
            d[2].conn_bound(true);
            let seq: Vec<usize> = (0..4).map(|n| s.pick(&input(n, v6)).unwrap()).collect();
            assert_eq!(seq, [0, 3, 0, 3]);
            for x in d.iter() {
                x.set_weight(0);
            }
            assert_eq!(s.pick(&input(0, v6)), None);
        }
    }

    #[test]
    fn rr_rebuild_keeps_position() {
        let d = dests(&[1, 1, 1, 1], false);
        let s = sched(K::Rr, &d);
        assert_eq!(s.pick(&input(0, false)), Some(0));
        assert_eq!(s.pick(&input(0, false)), Some(1));
        // Server 0 removed: the next pick is still the one after 198.51.100.2.
        let s2 = rebuild(
            s.as_ref(),
            K::Rr,
            SchedFlags::empty(),
            d[1..].to_vec(),
            &SchedConfig::default(),
        )
        .unwrap();
        assert_eq!(s2.pick_dest(&input(0, false)).unwrap().addr(), d[2].addr());
    }

    #[test]
    fn wrr_is_exactly_proportional() {
        for v6 in [false, true] {
            let d = dests(&[3, 2, 1, 0], v6);
            let s = sched(K::Wrr, &d);
            assert_eq!(counts(s.as_ref(), 600, v6), [300, 200, 100, 0]);
            // IPVS order within a cycle: heavier servers first.
            let seq: Vec<usize> = (0..6).map(|n| s.pick(&input(n, v6)).unwrap()).collect();
            assert_eq!(seq, [0, 0, 1, 0, 1, 2]);
        }
        // gcd stepping: 40:20 behaves as 2:1.
        let d = dests(&[40, 20], false);
        let s = sched(K::Wrr, &d);
        let seq: Vec<usize> = (0..6).map(|n| s.pick(&input(n, false)).unwrap()).collect();
        assert_eq!(seq, [0, 0, 1, 0, 0, 1]);
    }

    #[test]
    fn wrr_skips_overloaded_and_handles_all_zero() {
        let d = dests(&[3, 2, 1], false);
        d[0].set_thresholds(1, 0);
        d[0].conn_bound(true);
        let s = sched(K::Wrr, &d);
        let c = counts(s.as_ref(), 300, false);
        assert_eq!(c[0], 0);
        assert_eq!(c[1] + c[2], 300);
        assert!(c[1] > c[2]);
        // Every server overloaded: None, and no endless loop.
        d[1].set_thresholds(1, 0);
        d[1].conn_bound(true);
        d[2].set_thresholds(1, 0);
        d[2].conn_bound(true);
        assert_eq!(s.pick(&input(0, false)), None);
        let s = sched(K::Wrr, &dests(&[0, 0], false));
        assert_eq!(s.pick(&input(0, false)), None);
    }

    #[test]
    fn wrr_concurrent_picks_keep_proportions() {
        let d = dests(&[3, 2, 1], true);
        let s: std::sync::Arc<dyn Scheduler> = sched(K::Wrr, &d).into();
        let totals = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let s = s.clone();
                    scope.spawn(move || counts(s.as_ref(), 1500, true))
                })
                .collect();
            let mut t = [0usize; 3];
            for h in handles {
                for (i, c) in h.join().unwrap().into_iter().enumerate() {
                    t[i] += c;
                }
            }
            t
        });
        assert_eq!(totals, [3000, 2000, 1000]);
    }
}
