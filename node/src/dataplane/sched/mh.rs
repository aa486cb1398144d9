//! mh: Maglev consistent hashing (`ip_vs_mh.c`; Eisenbud et al., NSDI 2016, §3.4).
//!
//! At config time every server gets a preference list over the table positions — a start
//! `offset` and a `skip`, from two fixed hashes of its address and port — and the servers take
//! turns claiming their next preferred free position until the table is full. A flow is then
//! one hash of the client address (plus its port with mh-port) and one table read.
//!
//! Weights as IPVS uses them: each server claims `turns = (last_weight / gcd) >> shift`
//! positions per round (at least 1 for a non-zero weight), where `shift` keeps the largest
//! `turns` within a few bits of the table size (`fls(max/gcd) - tab_bits`). The table is built
//! from `last_weight`, the latest non-zero weight, so quiescing a server (weight 0) keeps its
//! positions: its flows find it unavailable (or fall back), nobody else's flows move.
//!
//! Adding or removing one of N servers moves about 1/N of the flows (tests check ≤ 1.5/N).

use std::any::Any;
use std::sync::Arc;

use super::hash::{
    SEED_MH_FLOW, SEED_MH_OFFSET, SEED_MH_PROBE, SEED_MH_SKIP, hash_ip_port, hash_sockaddr,
};
use super::rr::gcd_weights;
use super::{Dest, SchedError, SchedInput, Scheduler};
use crate::model;

/// IPVS's table sizes (`primes[]` in `ip_vs_mh.c`), indexed by `CONFIG_IP_VS_MH_TAB_INDEX - 8`.
pub const MH_PRIMES: [u32; 10] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
];

/// IPVS's default (`CONFIG_IP_VS_MH_TAB_INDEX` 12).
pub const MH_TABLE_SIZE_DEFAULT: u32 = 4093;

pub(crate) fn primes_list() -> String {
    MH_PRIMES.map(|p| p.to_string()).join(", ")
}

const NONE: u32 = u32::MAX;

#[derive(Debug)]
pub(crate) struct Mh {
    dests: Box<[Arc<Dest>]>,
    /// Position -> server index; all `NONE` when no server has a non-zero weight.
    table: Box<[u32]>,
    fallback: bool,
    port: bool,
}

impl Mh {
    pub(crate) fn new(
        dests: Box<[Arc<Dest>]>,
        size: u32,
        fallback: bool,
        port: bool,
    ) -> Result<Self, SchedError> {
        let index = MH_PRIMES
            .iter()
            .position(|&p| p == size)
            .ok_or(SchedError::MhTableSize(size))?;
        if dests.len() > size as usize {
            return Err(SchedError::MhTooManyDests {
                servers: dests.len(),
                table: size,
            });
        }
        // IPVS: IP_VS_MH_TAB_BITS = CONFIG_IP_VS_MH_TAB_INDEX / 2.
        let tab_bits = (index as u32 + 8) / 2;
        let table = populate(&dests, size, tab_bits);
        Ok(Self {
            dests,
            table,
            fallback,
            port,
        })
    }

    fn available(&self, pos: usize) -> Option<usize> {
        let i = self.table[pos] as usize;
        self.dests.get(i)?.is_available().then_some(i)
    }
}

/// The Maglev fill (IPVS's `ip_vs_mh_permutate` + `ip_vs_mh_populate`).
fn populate(dests: &[Arc<Dest>], size: u32, tab_bits: u32) -> Box<[u32]> {
    let m = u64::from(size);
    let mut table = vec![NONE; size as usize];
    let lw: Vec<u32> = dests.iter().map(|d| d.last_weight()).collect();
    let gcd = gcd_weights(lw.iter().copied());
    if gcd == 0 {
        return table.into();
    }
    let max = lw.iter().copied().max().unwrap_or(0) / gcd;
    let shift = (32 - max.leading_zeros()).saturating_sub(tab_bits);
    struct Setup {
        perm: u64,
        skip: u64,
        turns: u32,
    }
    let mut setup: Vec<Setup> = dests
        .iter()
        .zip(&lw)
        .map(|(d, &w)| {
            let turns = match (w / gcd) >> shift {
                0 => u32::from(w != 0),
                t => t,
            };
            Setup {
                perm: hash_sockaddr(d.addr(), SEED_MH_OFFSET) % m,
                skip: hash_sockaddr(d.addr(), SEED_MH_SKIP) % (m - 1) + 1,
                turns,
            }
        })
        .collect();
    let mut filled = 0u64;
    loop {
        for (i, s) in setup.iter_mut().enumerate() {
            for _ in 0..s.turns {
                // The next free position in this server's preference list; there is one,
                // since the list visits every position (skip < m, m prime).
                while table[s.perm as usize] != NONE {
                    s.perm += s.skip;
                    if s.perm >= m {
                        s.perm -= m;
                    }
                }
                table[s.perm as usize] = i as u32;
                filled += 1;
                if filled == m {
                    return table.into();
                }
            }
        }
    }
}

impl Scheduler for Mh {
    fn kind(&self) -> model::Scheduler {
        model::Scheduler::Mh
    }

    fn dests(&self) -> &[Arc<Dest>] {
        &self.dests
    }

    fn pick(&self, input: &SchedInput) -> Option<usize> {
        let m = self.table.len() as u64;
        let ip = input.client.ip();
        let port = if self.port { input.hash_port() } else { 0 };
        let pos0 = hash_ip_port(ip, port, SEED_MH_FLOW) % m;
        if self.table[pos0 as usize] == NONE {
            return None;
        }
        if let Some(i) = self.available(pos0 as usize) {
            return Some(i);
        }
        if !self.fallback {
            return None;
        }
        // mh-fallback: walk the table from the flow's position with a per-flow skip; m is
        // prime so the walk visits every position, and since the table is a pseudo-random
        // permutation the flows of an unavailable server spread over all the others.
        let skip = hash_ip_port(ip, port, SEED_MH_PROBE) % (m - 1) + 1;
        let mut pos = pos0;
        for _ in 1..m {
            pos += skip;
            if pos >= m {
                pos -= m;
            }
            if let Some(i) = self.available(pos as usize) {
                return Some(i);
            }
        }
        None
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use super::super::hash::fmix64;
    use super::super::testutil::*;
    use super::super::{SchedConfig, build};
    use super::*;
    use crate::model::{SchedFlag, SchedFlags, Scheduler as K};

    fn mh(d: &[Arc<Dest>], flags: &[SchedFlag], size: u32) -> Box<dyn Scheduler> {
        let flags: SchedFlags = flags.iter().copied().collect();
        let cfg = SchedConfig {
            mh_table_size: size,
            ..Default::default()
        };
        build(K::Mh, flags, d.to_vec(), &cfg).unwrap()
    }

    /// `n` pseudo-random client tuples, half IPv4 and half IPv6.
    fn tuples(n: u64) -> Vec<SchedInput> {
        (0..n)
            .map(|k| {
                let r = fmix64(k + 1);
                let ip: IpAddr = if k % 2 == 0 {
                    Ipv4Addr::from(r as u32).into()
                } else {
                    Ipv6Addr::from((u128::from(r) << 64) | u128::from(fmix64(r))).into()
                };
                let client = SocketAddr::new(ip, (r >> 48) as u16);
                SchedInput::new(client, vip(k % 2 == 1), SchedInput::TCP)
            })
            .collect()
    }

    /// The server address each tuple lands on.
    fn land(s: &dyn Scheduler, t: &[SchedInput]) -> Vec<Option<SocketAddr>> {
        t.iter().map(|i| s.pick_dest(i).map(|d| d.addr())).collect()
    }

    fn moved(a: &[Option<SocketAddr>], b: &[Option<SocketAddr>]) -> f64 {
        let n = a.iter().zip(b).filter(|(x, y)| x != y).count();
        n as f64 / a.len() as f64
    }

    #[test]
    fn same_input_same_server_whatever_the_order() {
        for v6 in [false, true] {
            let d = dests(&[1, 1, 1, 1, 1], v6);
            let t = tuples(5000);
            let a = land(mh(&d, &[], 4093).as_ref(), &t);
            let mut rev = d.clone();
            rev.reverse();
            // Another director, another insertion order, fresh Dest objects: same choices.
            let fresh: Vec<_> = rev
                .iter()
                .map(|x| Arc::new(Dest::new(x.addr(), 1, 0, 0)))
                .collect();
            assert_eq!(a, land(mh(&fresh, &[], 4093).as_ref(), &t));
            assert!(a.iter().all(Option::is_some));
            // The client port is ignored without mh-port.
            let s = mh(&d, &[], 4093);
            let i = input(3, v6);
            let j = SchedInput::new(client(3, 9, v6), vip(v6), SchedInput::TCP);
            assert_eq!(s.pick(&i), s.pick(&j));
        }
    }

    #[test]
    fn weights_are_respected_approximately() {
        let d = dests(&[1, 2, 3, 4], true);
        let s = mh(&d, &[], 4093);
        let mut c = [0usize; 4];
        for i in tuples(100_000) {
            c[s.pick(&i).unwrap()] += 1;
        }
        for (k, &x) in c.iter().enumerate() {
            let want = 10_000.0 * (k + 1) as f64;
            assert!((x as f64 - want).abs() / want < 0.1, "{c:?}");
        }
        // Large weights are scaled down (shift) and keep their ratio.
        let d = dests(&[60000, 20000], false);
        let s = mh(&d, &[], 4093);
        let share = tuples(40_000)
            .iter()
            .filter(|i| s.pick(i) == Some(0))
            .count() as f64
            / 40_000.0;
        assert!((share - 0.75).abs() < 0.05, "{share}");
    }

    #[test]
    fn adding_or_removing_a_server_moves_about_one_nth() {
        let t = tuples(100_000);
        for n in [5usize, 10, 20] {
            let all = dests(&vec![1; n + 1], false);
            let base = land(mh(&all[..n], &[], 4093).as_ref(), &t);
            // Add one: ideally 1/(n+1) of the flows move (to the new one).
            let added = land(mh(&all, &[], 4093).as_ref(), &t);
            let f = moved(&base, &added);
            assert!(f <= 1.5 / (n + 1) as f64, "n={n} add: {f}");
            assert!(f >= 0.5 / (n + 1) as f64, "n={n} add: {f}");
            // Remove one: ideally 1/n move (those of the removed server).
            let fewer: Vec<_> = all[1..n].to_vec();
            let removed = land(mh(&fewer, &[], 4093).as_ref(), &t);
            let f = moved(&base, &removed);
            assert!(f <= 1.5 / n as f64, "n={n} remove: {f}");
            // Every flow of a remaining server that moved is counted above; the removed
            // server's flows all had to move.
            let gone = all[0].addr();
            assert!(
                base.iter()
                    .zip(&removed)
                    .all(|(b, r)| *b != Some(gone) || *r != Some(gone))
            );
        }
    }

    #[test]
    fn quiescing_keeps_the_table_and_fallback_moves_only_its_flows() {
        for v6 in [false, true] {
            let d = dests(&[1, 1, 1, 1], v6);
            let t = tuples(20_000);
            let before = land(mh(&d, &[], 251).as_ref(), &t);
            d[1].set_weight(0);
            // Rebuilt after the weight change, as the engine does: last_weight keeps the slots.
            let plain = land(mh(&d, &[], 251).as_ref(), &t);
            let fb = land(mh(&d, &[SchedFlag::MhFallback], 251).as_ref(), &t);
            let q = d[1].addr();
            let mut moved_to = std::collections::HashMap::new();
            for ((b, p), f) in before.iter().zip(&plain).zip(&fb) {
                if *b == Some(q) {
                    assert_eq!(*p, None);
                    assert_ne!(*f, Some(q));
                    *moved_to.entry(f.unwrap()).or_insert(0) += 1;
                } else {
                    assert_eq!(p, b);
                    assert_eq!(f, b);
                }
            }
            assert_eq!(moved_to.len(), 3, "{moved_to:?}");
            assert!(moved_to.values().all(|&c| c > 1000), "{moved_to:?}");
            // Overloaded is unavailable as well; nothing available: None.
            for x in &d {
                x.set_thresholds(1, 0);
                x.conn_bound(true);
            }
            assert!(
                land(mh(&d, &[SchedFlag::MhFallback], 251).as_ref(), &t[..100])
                    .iter()
                    .all(Option::is_none)
            );
        }
        // A server added with weight 0 has no slot at all.
        let d = dests(&[0, 1], false);
        let s = mh(&d, &[SchedFlag::MhFallback], 251);
        assert!(tuples(1000).iter().all(|i| s.pick(i) == Some(1)));
        let s = mh(&dests(&[0, 0], false), &[SchedFlag::MhFallback], 251);
        assert_eq!(s.pick(&input(1, false)), None);
    }

    #[test]
    fn mh_port_hashes_the_client_port() {
        let d = dests(&[1, 1, 1, 1], true);
        let s = mh(&d, &[SchedFlag::MhPort], 4093);
        let at = |port| {
            (0..2000)
                .map(|n| s.pick(&SchedInput::new(client(n, port, true), vip(true), 17)))
                .collect::<Vec<_>>()
        };
        let a = at(1000);
        assert_eq!(a, at(1000));
        let moved = a.iter().zip(at(1001)).filter(|(x, y)| **x != *y).count();
        assert!(moved > 1200, "{moved}");
    }

    #[test]
    fn table_sizes_and_limits() {
        for p in MH_PRIMES {
            let s = mh(&dests(&[1, 2], false), &[], p);
            assert!(s.pick(&input(1, false)).is_some());
        }
        let cfg = SchedConfig {
            mh_table_size: 251,
            ..Default::default()
        };
        let err = build(K::Mh, SchedFlags::empty(), dests(&[1; 252], false), &cfg).unwrap_err();
        assert!(matches!(err, SchedError::MhTooManyDests { .. }), "{err}");
    }
}
