//! dh and sh (`ip_vs_dh.c`, `ip_vs_sh.c`): a static table of server indexes (2^8 buckets by
//! default), built at config time and only read by `pick`.
//!
//! Tables are filled as IPVS fills them, walking the servers in (canonical) order:
//! - dh: one bucket per server, round and round (weights only decide availability);
//! - sh: `weight` consecutive buckets per server, round and round (a weight-0 server still gets
//!   one bucket, where its flows find no server unless sh-fallback is set). As in IPVS, the sum
//!   of the weights should stay well below the table size or the last servers get no bucket.

use std::any::Any;
use std::sync::Arc;

use super::hash::{SEED_DH, SEED_SH, SEED_SH_PROBE, fmix64, hash_ip_port};
use super::{Dest, SchedError, SchedInput, Scheduler};
use crate::model;

/// Index sentinel for "no server" (empty service).
const NONE: u32 = u32::MAX;

/// Step between sh-fallback's probe hashes (the golden ratio, as splitmix64's).
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

fn check_bits(what: &'static str, bits: u8) -> Result<usize, SchedError> {
    if !(1..=20).contains(&bits) {
        return Err(SchedError::TableBits { what, bits });
    }
    Ok(1 << bits)
}

/// The bucket of hash `h` in a table of 2^bits: the top bits, the best mixed ones.
fn bucket(h: u64, bits: u32) -> usize {
    (h >> (64 - bits)) as usize
}

#[derive(Debug)]
pub(crate) struct Dh {
    dests: Box<[Arc<Dest>]>,
    bits: u32,
    table: Box<[u32]>,
}

impl Dh {
    pub(crate) fn new(dests: Box<[Arc<Dest>]>, bits: u8) -> Result<Self, SchedError> {
        let size = check_bits("dh", bits)?;
        let n = dests.len();
        let table = (0..size)
            .map(|i| if n == 0 { NONE } else { (i % n) as u32 })
            .collect();
        Ok(Self {
            dests,
            bits: u32::from(bits),
            table,
        })
    }
}

impl Scheduler for Dh {
    fn kind(&self) -> model::Scheduler {
        model::Scheduler::Dh
    }

    fn dests(&self) -> &[Arc<Dest>] {
        &self.dests
    }

    fn pick(&self, input: &SchedInput) -> Option<usize> {
        let h = hash_ip_port(input.vip.ip(), 0, SEED_DH);
        let i = self.table[bucket(h, self.bits)];
        let d = self.dests.get(i as usize)?;
        d.is_available().then_some(i as usize)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[derive(Debug)]
pub(crate) struct Sh {
    dests: Box<[Arc<Dest>]>,
    bits: u32,
    table: Box<[u32]>,
    fallback: bool,
    port: bool,
}

impl Sh {
    pub(crate) fn new(
        dests: Box<[Arc<Dest>]>,
        bits: u8,
        fallback: bool,
        port: bool,
    ) -> Result<Self, SchedError> {
        let size = check_bits("sh", bits)?;
        let mut table = vec![NONE; size];
        if !dests.is_empty() {
            let (mut p, mut count) = (0usize, 0u32);
            for slot in table.iter_mut() {
                *slot = p as u32;
                count += 1;
                if count >= dests[p].weight() {
                    p = (p + 1) % dests.len();
                    count = 0;
                }
            }
        }
        Ok(Self {
            dests,
            bits: u32::from(bits),
            table: table.into(),
            fallback,
            port,
        })
    }

    fn available(&self, b: usize) -> Option<usize> {
        let i = self.table[b] as usize;
        self.dests.get(i)?.is_available().then_some(i)
    }
}

impl Scheduler for Sh {
    fn kind(&self) -> model::Scheduler {
        model::Scheduler::Sh
    }

    fn dests(&self) -> &[Arc<Dest>] {
        &self.dests
    }

    fn pick(&self, input: &SchedInput) -> Option<usize> {
        if self.dests.is_empty() {
            return None;
        }
        let ip = input.client.ip();
        let port = if self.port { input.hash_port() } else { 0 };
        let b0 = bucket(hash_ip_port(ip, port, SEED_SH), self.bits);
        if let Some(i) = self.available(b0) {
            return Some(i);
        }
        if !self.fallback {
            return None;
        }
        // sh-fallback: look elsewhere in the table, deterministically per flow, until an
        // available server. IPVS rehashes the flow with an increasing offset; we draw per-flow
        // pseudo-random buckets the same way, so the flows of an unavailable server spread
        // over all the others (a fixed stride would follow the table's periodic fill pattern
        // and skip some servers). If that finds nothing, a linear sweep settles it.
        let probe = hash_ip_port(ip, port, SEED_SH_PROBE);
        let size = self.table.len();
        (1..=size as u64)
            .map(|k| bucket(fmix64(probe.wrapping_add(k.wrapping_mul(GAMMA))), self.bits))
            .chain((1..size).map(|k| (b0 + k) % size))
            .find_map(|b| self.available(b))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::super::testutil::*;
    use super::super::{SchedConfig, build};
    use super::*;
    use crate::model::{SchedFlag, SchedFlags, Scheduler as K};

    fn sh(d: &[Arc<Dest>], flags: &[SchedFlag]) -> Box<dyn Scheduler> {
        let flags: SchedFlags = flags.iter().copied().collect();
        build(K::Sh, flags, d.to_vec(), &SchedConfig::default()).unwrap()
    }

    fn spread(s: &dyn Scheduler, v6: bool, port: u16) -> Vec<Option<usize>> {
        (0..4000)
            .map(|n| {
                let i = SchedInput::new(client(n, port, v6), vip(v6), SchedInput::TCP);
                s.pick(&i)
            })
            .collect()
    }

    #[test]
    fn sh_is_stable_spread_and_weighted() {
        for v6 in [false, true] {
            let d = dests(&[1, 1, 1, 1], v6);
            let s = sh(&d, &[]);
            let a = spread(s.as_ref(), v6, 1000);
            // The client port does not matter without sh-port, nor does a rebuild.
            let s2 = sh(&d, &[]);
            assert_eq!(a, spread(s2.as_ref(), v6, 2000));
            let mut c = [0usize; 4];
            for x in &a {
                c[x.unwrap()] += 1;
            }
            assert!(c.iter().all(|&x| x > 800 && x < 1200), "{c:?}");
            // Weights 3:1 -> 192:64 buckets.
            let d = dests(&[3, 1], v6);
            let s = sh(&d, &[]);
            let mut c = [0usize; 2];
            for x in spread(s.as_ref(), v6, 1) {
                c[x.unwrap()] += 1;
            }
            assert!(c[0] > 2700 && c[0] < 3300, "{c:?}");
        }
    }

    #[test]
    fn sh_port_changes_choice_with_port() {
        for v6 in [false, true] {
            let d = dests(&[1, 1, 1, 1], v6);
            let s = sh(&d, &[SchedFlag::ShPort]);
            let a = spread(s.as_ref(), v6, 1000);
            assert_eq!(a, spread(s.as_ref(), v6, 1000));
            let b = spread(s.as_ref(), v6, 1001);
            let moved = a.iter().zip(&b).filter(|(x, y)| x != y).count();
            assert!(moved > 2500, "{moved}"); // ~3/4 with 4 servers
            // Only for port protocols: ICMP/ESP hash the address alone.
            let esp = |port| {
                let mut i = SchedInput::new(client(7, port, v6), vip(v6), 50);
                i.proto = 50;
                s.pick(&i)
            };
            assert_eq!(esp(1), esp(2));
        }
    }

    #[test]
    fn sh_fallback_moves_only_flows_of_unavailable_server() {
        for v6 in [false, true] {
            let d = dests(&[1, 1, 1, 1], v6);
            let plain = sh(&d, &[]);
            let fb = sh(&d, &[SchedFlag::ShFallback]);
            let before = spread(fb.as_ref(), v6, 1);
            assert_eq!(before, spread(plain.as_ref(), v6, 1));
            d[2].set_weight(0);
            let after_plain = spread(plain.as_ref(), v6, 1);
            let after = spread(fb.as_ref(), v6, 1);
            let mut moved_to = [0usize; 4];
            for ((b, p), a) in before.iter().zip(&after_plain).zip(&after) {
                if *b == Some(2) {
                    assert_eq!(*p, None, "without fallback: no server");
                    let a = a.unwrap();
                    assert_ne!(a, 2);
                    moved_to[a] += 1;
                } else {
                    assert_eq!(a, b, "a flow of an available server moved");
                }
            }
            // The orphaned flows spread over the three others.
            assert!(
                moved_to.iter().filter(|&&x| x > 150).count() == 3,
                "{moved_to:?}"
            );
            // Overloaded counts as unavailable too; all unavailable: None.
            for x in &d {
                x.set_thresholds(1, 0);
                x.conn_bound(true);
            }
            assert!(spread(fb.as_ref(), v6, 1).iter().all(Option::is_none));
        }
    }

    #[test]
    fn dh_hashes_destination_address() {
        for v6 in [false, true] {
            let d = dests(&[1, 1, 1], v6);
            let s = build(
                K::Dh,
                SchedFlags::empty(),
                d.clone(),
                &SchedConfig::default(),
            )
            .unwrap();
            let mut c = [0usize; 3];
            for n in 0..3000 {
                let target = SocketAddr::new(client(n, 80, v6).ip(), 80);
                let a = SchedInput::new(client(1, 1, v6), target, SchedInput::TCP);
                let b = SchedInput::new(client(n + 99, 2, v6), target, SchedInput::UDP);
                // Same destination address, any client: same server.
                let x = s.pick(&a).unwrap();
                assert_eq!(s.pick(&b), Some(x));
                c[x] += 1;
            }
            assert!(c.iter().all(|&x| x > 800), "{c:?}");
            // A quiesced server's destinations get none (dh has no fallback).
            d[0].set_weight(0);
            let lost = (0..300)
                .filter(|&n| {
                    let t = SocketAddr::new(client(n, 80, v6).ip(), 80);
                    s.pick(&SchedInput::new(client(1, 1, v6), t, 6)).is_none()
                })
                .count();
            assert!(lost > 50 && lost < 150, "{lost}");
        }
    }
}
