//! The stateless, load-driven schedulers: lc, wlc, sed, nq, fo, ovf (`ip_vs_lc.c`,
//! `ip_vs_wlc.c`, `ip_vs_sed.c`, `ip_vs_nq.c`, `ip_vs_fo.c`, `ip_vs_ovf.c`), and twos
//! (`ip_vs_twos.c`), whose only state is its random source.
//!
//! A pick is one scan over the servers' atomic counters. Loads are compared by
//! cross-multiplication in 64 bits (`a/wa < b/wb` as `a*wb < b*wa`), never by division. Ties go
//! to the first server in order, as in IPVS.

use std::any::Any;
use std::sync::Arc;

use super::hash::{AtomicRng, reduce};
use super::{Dest, SchedInput, Scheduler, wlc_pick};
use crate::model;

#[derive(Debug)]
pub(crate) struct Least {
    kind: model::Scheduler,
    dests: Box<[Arc<Dest>]>,
}

impl Least {
    pub(crate) fn new(kind: model::Scheduler, dests: Box<[Arc<Dest>]>) -> Self {
        Self { kind, dests }
    }
}

/// lc: the smallest overhead (`active * 256 + inactive`), weights only as 0 = quiesced.
fn lc(dests: &[Arc<Dest>]) -> Option<usize> {
    dests
        .iter()
        .enumerate()
        .filter(|(_, d)| d.is_available())
        .min_by_key(|(_, d)| d.overhead())
        .map(|(i, _)| i)
}

/// sed: the smallest expected delay `(active + 1) / weight`.
fn sed(dests: &[Arc<Dest>]) -> Option<usize> {
    let mut least: Option<(usize, u64, u64)> = None;
    for (i, d) in dests.iter().enumerate() {
        if !d.is_available() {
            continue;
        }
        let (oh, w) = (u64::from(d.active()) + 1, u64::from(d.weight()));
        match least {
            Some((_, loh, lw)) if loh * w <= oh * lw => {}
            _ => least = Some((i, oh, w)),
        }
    }
    least.map(|(i, _, _)| i)
}

/// nq: the first idle server (no active connection), else sed.
fn nq(dests: &[Arc<Dest>]) -> Option<usize> {
    dests
        .iter()
        .position(|d| d.is_available() && d.active() == 0)
        .or_else(|| sed(dests))
}

/// fo: the available server with the highest weight (the first of equals).
fn fo(dests: &[Arc<Dest>]) -> Option<usize> {
    let mut best: Option<(usize, u32)> = None;
    for (i, d) in dests.iter().enumerate() {
        let w = d.weight();
        if d.is_available() && best.is_none_or(|(_, bw)| w > bw) {
            best = Some((i, w));
        }
    }
    best.map(|(i, _)| i)
}

/// ovf: as fo, among the servers whose active connections do not exceed their weight
/// (IPVS: a server is skipped when `active > weight`).
fn ovf(dests: &[Arc<Dest>]) -> Option<usize> {
    let mut best: Option<(usize, u32)> = None;
    for (i, d) in dests.iter().enumerate() {
        let w = d.weight();
        if d.is_available() && d.active() <= w && best.is_none_or(|(_, bw)| w > bw) {
            best = Some((i, w));
        }
    }
    best.map(|(i, _)| i)
}

impl Scheduler for Least {
    fn kind(&self) -> model::Scheduler {
        self.kind
    }

    fn dests(&self) -> &[Arc<Dest>] {
        &self.dests
    }

    fn pick(&self, _input: &SchedInput) -> Option<usize> {
        use model::Scheduler as K;
        match self.kind {
            K::Lc => lc(&self.dests),
            K::Sed => sed(&self.dests),
            K::Nq => nq(&self.dests),
            K::Fo => fo(&self.dests),
            K::Ovf => ovf(&self.dests),
            _ => wlc_pick(&self.dests, 0..self.dests.len()),
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// twos: two servers drawn at random with probability proportional to weight; the one with
/// the smaller `overhead / weight` wins (the first drawn on a tie).
#[derive(Debug)]
pub(crate) struct Twos {
    dests: Box<[Arc<Dest>]>,
    rng: AtomicRng,
}

impl Twos {
    pub(crate) fn new(dests: Box<[Arc<Dest>]>, seed: u64, prev: Option<&dyn Any>) -> Self {
        let seed = prev
            .and_then(|p| p.downcast_ref::<Twos>())
            .map_or(seed, |p| p.rng.state());
        Self {
            dests,
            rng: AtomicRng::new(seed),
        }
    }

    /// The available server where the running weight sum first exceeds `r`; the last
    /// available one if the weights shrank since the total was taken.
    fn draw(&self, mut r: u64) -> Option<usize> {
        let mut last = None;
        for (i, d) in self.dests.iter().enumerate() {
            if !d.is_available() {
                continue;
            }
            let w = u64::from(d.weight());
            if r < w {
                return Some(i);
            }
            r -= w;
            last = Some(i);
        }
        last
    }
}

impl Scheduler for Twos {
    fn kind(&self) -> model::Scheduler {
        model::Scheduler::Twos
    }

    fn dests(&self) -> &[Arc<Dest>] {
        &self.dests
    }

    fn pick(&self, _input: &SchedInput) -> Option<usize> {
        let total: u64 = self
            .dests
            .iter()
            .filter(|d| d.is_available())
            .map(|d| u64::from(d.weight()))
            .sum();
        if total == 0 {
            return None;
        }
        let c1 = self.draw(reduce(self.rng.next_u64(), total))?;
        let c2 = self.draw(reduce(self.rng.next_u64(), total))?;
        let (d1, d2) = (&self.dests[c1], &self.dests[c2]);
        let (w1, w2) = (u64::from(d1.weight()), u64::from(d2.weight()));
        // overhead2 / w2 < overhead1 / w1
        if w2 * d1.overhead() > w1 * d2.overhead() {
            Some(c2)
        } else {
            Some(c1)
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::model::Scheduler as K;

    fn set(d: &[Arc<Dest>], counters: &[(u32, u32)]) {
        for (x, &(a, i)) in d.iter().zip(counters) {
            x.set_counters(a, i);
        }
    }

    #[test]
    fn lc_picks_least_overhead_ignoring_weight() {
        for v6 in [false, true] {
            let d = dests(&[1, 100, 1, 0], v6);
            let s = sched(K::Lc, &d);
            // overheads: 2*256+0, 1*256+10, 1*256+5, 0 (quiesced)
            set(&d, &[(2, 0), (1, 10), (1, 5), (0, 0)]);
            assert_eq!(s.pick(&input(0, v6)), Some(2));
            // One active counts as 256 inactive.
            set(&d, &[(0, 255), (1, 0), (1, 0), (0, 0)]);
            assert_eq!(s.pick(&input(0, v6)), Some(0));
            set(&d, &[(0, 256), (1, 0), (1, 0), (0, 0)]);
            assert_eq!(s.pick(&input(0, v6)), Some(0)); // tie: the first
            set(&d, &[(0, 257), (1, 0), (1, 0), (0, 0)]);
            assert_eq!(s.pick(&input(0, v6)), Some(1));
        }
    }

    #[test]
    fn wlc_normalises_by_weight() {
        for v6 in [false, true] {
            let d = dests(&[1, 3, 2, 0], v6);
            let s = sched(K::Wlc, &d);
            // overhead / weight: 256/1, 512/3 = 170.7, 512/2 = 256, -
            set(&d, &[(1, 0), (2, 0), (2, 0), (0, 0)]);
            assert_eq!(s.pick(&input(0, v6)), Some(1));
            // 300/1 vs 1024/3 = 341 vs 512/2 = 256
            set(&d, &[(1, 44), (4, 0), (2, 0), (0, 0)]);
            assert_eq!(s.pick(&input(0, v6)), Some(2));
            // Filling by picks: connections end up proportional to weights.
            set(&d, &[(0, 0), (0, 0), (0, 0), (0, 0)]);
            for _ in 0..600 {
                let i = s.pick(&input(0, v6)).unwrap();
                d[i].conn_bound(true);
            }
            let active: Vec<u32> = d.iter().map(|x| x.active()).collect();
            assert_eq!(active, [100, 300, 200, 0]);
        }
    }

    #[test]
    fn sed_uses_active_plus_one_over_weight() {
        let d = dests(&[1, 2], true);
        let s = sched(K::Sed, &d);
        // Both idle: (0+1)/1 vs (0+1)/2: the heavier one, unlike nq.
        assert_eq!(s.pick(&input(0, true)), Some(1));
        // 1/1 vs 2/2: tie, first wins.
        set(&d, &[(0, 0), (1, 0)]);
        assert_eq!(s.pick(&input(0, true)), Some(0));
        // 2/1 vs 2/2
        set(&d, &[(1, 0), (1, 0)]);
        assert_eq!(s.pick(&input(0, true)), Some(1));
        // Inactive connections do not count.
        set(&d, &[(0, 1000), (1, 0)]);
        assert_eq!(s.pick(&input(0, true)), Some(0));
    }

    #[test]
    fn nq_prefers_an_idle_server_then_sed() {
        let d = dests(&[1, 10, 1], false);
        let s = sched(K::Nq, &d);
        // Server 0 idle: taken although sed would prefer the weight-10 one.
        assert_eq!(s.pick(&input(0, false)), Some(0));
        set(&d, &[(1, 0), (1, 0), (0, 50)]);
        assert_eq!(s.pick(&input(0, false)), Some(2)); // idle = no *active* connection
        set(&d, &[(1, 0), (5, 0), (2, 0)]);
        // sed: 2/1, 6/10, 3/1
        assert_eq!(s.pick(&input(0, false)), Some(1));
        d[1].set_weight(0);
        assert_eq!(s.pick(&input(0, false)), Some(0));
    }

    #[test]
    fn fo_picks_highest_weight_available() {
        let d = dests(&[5, 10, 10, 7], true);
        let s = sched(K::Fo, &d);
        assert_eq!(counts(s.as_ref(), 10, true), [0, 10, 0, 0]);
        d[1].set_thresholds(3, 0);
        set(&d, &[(0, 0), (3, 0), (0, 0), (0, 0)]);
        assert_eq!(s.pick(&input(0, true)), Some(2));
        d[2].set_weight(0);
        assert_eq!(s.pick(&input(0, true)), Some(3));
    }

    #[test]
    fn ovf_overflows_in_weight_order() {
        for v6 in [false, true] {
            let d = dests(&[2, 3, 0, 1], v6);
            let s = sched(K::Ovf, &d);
            let mut order = vec![];
            for _ in 0..9 {
                match s.pick(&input(0, v6)) {
                    Some(i) => {
                        d[i].conn_bound(true);
                        order.push(i);
                    }
                    None => order.push(usize::MAX),
                }
            }
            // Each server takes connections while active <= weight (IPVS skips it only once
            // active > weight): weight + 1 each, heaviest first; then nothing is left.
            assert_eq!(order, [1, 1, 1, 1, 0, 0, 0, 3, 3]);
            assert_eq!(s.pick(&input(0, v6)), None);
            d[1].conn_unbound(true);
            assert_eq!(s.pick(&input(0, v6)), Some(1));
        }
    }

    #[test]
    fn twos_prefers_less_loaded_and_never_quiesced() {
        for v6 in [false, true] {
            let d = dests(&[1, 0, 1], v6);
            let s = sched(K::Twos, &d);
            d[0].set_counters(10, 0);
            let c = counts(s.as_ref(), 4000, v6);
            assert_eq!(c[1], 0);
            // Server 0 wins only when both draws are server 0: about 1/4.
            assert!(c[0] > 800 && c[0] < 1200, "{c:?}");
            assert!(c[2] > 2800, "{c:?}");
            // Equal loads: the tie goes to the first draw, which follows the weights (3:1).
            let d = dests(&[3, 1], v6);
            let s = sched(K::Twos, &d);
            let c = counts(s.as_ref(), 8000, v6);
            assert!(c[1] > 1700 && c[1] < 2300, "{c:?}");
            // Load-balancing: bind as we pick; loads follow weights closely.
            let d = dests(&[1, 2, 1], v6);
            let s = sched(K::Twos, &d);
            for _ in 0..4000 {
                let i = s.pick(&input(0, v6)).unwrap();
                d[i].conn_bound(true);
            }
            let a: Vec<u32> = d.iter().map(|x| x.active()).collect();
            assert!(a[1] > 1800 && a[1] < 2200, "{a:?}");
            assert!(a[0].abs_diff(a[2]) < 200, "{a:?}");
        }
    }
}
