//! lblc and lblcr: locality-based least-connection, without and with replication
//! (`ip_vs_lblc.c`, `ip_vs_lblcr.c`). Both remember, per destination IP address (the "target",
//! e.g. the web site a cache cluster serves), which server (lblc) or set of servers (lblcr)
//! it went to, and fall back to wlc to (re)assign.
//!
//! lblc, per new connection to target T:
//! - T known, its server available (weight > 0, not overloaded by thresholds) and not
//!   "lblc-overloaded" (`active > weight` while some server is under half load,
//!   `active * 2 < weight`): that server;
//! - otherwise the wlc choice, which becomes T's server.
//!
//! lblcr, per new connection to target T:
//! - T known: the wlc choice among T's set; if the set has more than one server and has not
//!   changed for `lblcr_expiration`, its most loaded member leaves it; if the choice is
//!   missing or lblc-overloaded, the wlc choice over all servers joins the set and is used;
//! - T unknown: the wlc choice, as T's first set.
//!
//! # The table: bounded and preallocated
//!
//! IPVS allocates entries on the packet path and lets a timer collect them once there are more
//! than `16 × 1024`. Here the table is allocated once at build time and never grows: `buckets`
//! (default 1024) × [`WAYS`] (16) slots — 16,384 targets by default, IPVS's `max_size`. A
//! target hashes (fixed hash of the full address) to one bucket; when its bucket is full the
//! least recently used entry of the bucket is replaced (IPVS would collect entries unused for 6
//! minutes at its next timer run; either way a forgotten target is simply reassigned by wlc).
//! lblcr's server sets are bitsets over the service's servers, preallocated per slot
//! (`ceil(servers / 64)` words each).
//!
//! Each bucket has its own `Mutex`. A pick holds one bucket's lock for a scan of its 16 slots
//! and, when it must (re)assign, one scan of the servers; housekeeping ([`Scheduler::maintain`])
//! and rebuilds take the bucket locks one at a time, so nothing holds a lock a packet thread
//! waits on for longer than that.
//!
//! # Expiry
//!
//! An entry unused for `lblc_expiration` / `lblcr_expiration` (IPVS sysctls, 24 h by default)
//! is forgotten: lookups ignore it at once and `maintain` frees its slot (IPVS frees it at its
//! next 30-minute full check; until then it would still be used).

use std::any::Any;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::hash::{SEED_LOCALITY, hash_ip_port, ip_bits};
use super::{Dest, SchedConfig, SchedError, SchedInput, Scheduler, wlc_pick};
use crate::model;

/// Slots per bucket.
pub const WAYS: usize = 16;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The target address (IPv4 as IPv4-mapped IPv6).
    key: u128,
    used: bool,
    /// lblc: the server's index. lblcr: the number of servers in the set.
    value: u32,
    /// Seconds since the table's epoch.
    lastuse: u32,
    /// lblcr: when the set last changed.
    lastmod: u32,
}

#[derive(Debug)]
struct Bucket {
    slots: [Slot; WAYS],
    /// lblcr: slot `w`'s set is `sets[w * words..(w + 1) * words]`. Empty for lblc.
    sets: Box<[u64]>,
}

#[derive(Debug)]
struct Table {
    buckets: Box<[Mutex<Bucket>]>,
    bits: u32,
    /// u64 words per lblcr set (0 for lblc).
    words: usize,
    epoch: Instant,
    /// Expiration in seconds (>= 1).
    expiration: u32,
}

fn secs(d: std::time::Duration) -> u32 {
    d.as_secs().min(u64::from(u32::MAX)) as u32
}

impl Table {
    fn new(
        buckets: u32,
        words: usize,
        epoch: Instant,
        expiration: std::time::Duration,
    ) -> Result<Self, SchedError> {
        if !buckets.is_power_of_two() || buckets > 1 << 20 {
            return Err(SchedError::LblcBuckets(buckets));
        }
        let buckets: Box<[Mutex<Bucket>]> = (0..buckets)
            .map(|_| {
                Mutex::new(Bucket {
                    slots: [Slot::default(); WAYS],
                    sets: vec![0; WAYS * words].into(),
                })
            })
            .collect();
        Ok(Self {
            bits: buckets.len().trailing_zeros(),
            buckets,
            words,
            epoch,
            expiration: secs(expiration).max(1),
        })
    }

    fn now(&self, now: Instant) -> u32 {
        secs(now.saturating_duration_since(self.epoch))
    }

    fn lock(&self, key: u128) -> MutexGuard<'_, Bucket> {
        lock(&self.buckets[bucket_of(key, self.bits)])
    }

    fn expired(&self, slot: &Slot, now: u32) -> bool {
        now.saturating_sub(slot.lastuse) >= self.expiration
    }

    /// The live slot of `key` in its (locked) bucket.
    fn find(&self, b: &Bucket, key: u128, now: u32) -> Option<usize> {
        b.slots
            .iter()
            .position(|s| s.used && s.key == key && !self.expired(s, now))
    }

    /// A slot for a new entry: a free or expired one, else the least recently used. Clears it.
    fn claim(&self, b: &mut Bucket, key: u128, now: u32) -> usize {
        let w = b
            .slots
            .iter()
            .position(|s| !s.used || self.expired(s, now))
            .unwrap_or_else(|| (0..WAYS).min_by_key(|&w| b.slots[w].lastuse).unwrap_or(0));
        b.slots[w] = Slot {
            key,
            used: true,
            value: 0,
            lastuse: now,
            lastmod: now,
        };
        b.sets[w * self.words..(w + 1) * self.words].fill(0);
        w
    }

    /// Frees the expired slots, one bucket lock at a time.
    fn expire(&self, now: Instant) {
        let now = self.now(now);
        for bucket in self.buckets.iter() {
            let mut b = lock(bucket);
            for w in 0..WAYS {
                if b.slots[w].used && self.expired(&b.slots[w], now) {
                    b.slots[w].used = false;
                }
            }
        }
    }

    /// Copies the live entries of `old` (one bucket lock at a time), mapping server indexes
    /// through `map` (old index -> new index, `None` = server gone). Keeps the old epoch so
    /// that ages carry over.
    fn inherit(&mut self, old: &Table, map: &[Option<u32>]) {
        self.epoch = old.epoch;
        for bucket in old.buckets.iter() {
            let b = lock(bucket);
            for (w, s) in b.slots.iter().enumerate() {
                if !s.used {
                    continue;
                }
                let old_set = &b.sets[w * old.words..(w + 1) * old.words];
                let mut members = Vec::new();
                if old.words == 0 {
                    members.extend(map.get(s.value as usize).copied().flatten());
                } else {
                    members.extend(
                        map.iter()
                            .enumerate()
                            .filter(|&(i, _)| bit(old_set, i))
                            .filter_map(|(_, m)| *m),
                    );
                }
                if members.is_empty() {
                    continue;
                }
                let nb = lock_mut(&mut self.buckets, s.key, self.bits);
                let nw = claim_raw(nb, s.key, self.words);
                nb.slots[nw] = Slot { used: true, ..*s };
                if self.words == 0 {
                    nb.slots[nw].value = members[0];
                } else {
                    nb.slots[nw].value = members.len() as u32;
                    let set = &mut nb.sets[nw * self.words..(nw + 1) * self.words];
                    for m in members {
                        set_bit(set, m as usize);
                    }
                }
            }
        }
    }

    #[cfg(test)]
    fn entries(&self) -> usize {
        self.buckets
            .iter()
            .map(|b| lock(b).slots.iter().filter(|s| s.used).count())
            .sum()
    }
}

/// Locks a bucket; a panic elsewhere while holding it cannot leave a slot half-written in a
/// way that matters (every field is plain data), so poisoning is ignored.
fn lock(m: &Mutex<Bucket>) -> MutexGuard<'_, Bucket> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The bucket of `key` in a table being built (not yet shared: no locking needed).
fn lock_mut(buckets: &mut [Mutex<Bucket>], key: u128, bits: u32) -> &mut Bucket {
    buckets[bucket_of(key, bits)]
        .get_mut()
        .unwrap_or_else(PoisonError::into_inner)
}

/// The bucket of a target among 2^bits: the top bits of its fixed hash.
fn bucket_of(key: u128, bits: u32) -> usize {
    if bits == 0 {
        return 0;
    }
    let h = hash_ip_port(std::net::Ipv6Addr::from(key).into(), 0, SEED_LOCALITY);
    (h >> (64 - bits)) as usize
}

/// A free slot, else the least recently used one (for `inherit`, which copies live entries).
fn claim_raw(b: &mut Bucket, key: u128, words: usize) -> usize {
    let w = b
        .slots
        .iter()
        .position(|s| !s.used || s.key == key)
        .unwrap_or_else(|| (0..WAYS).min_by_key(|&w| b.slots[w].lastuse).unwrap_or(0));
    b.sets[w * words..(w + 1) * words].fill(0);
    w
}

fn bit(set: &[u64], i: usize) -> bool {
    set.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn set_bit(set: &mut [u64], i: usize) {
    set[i / 64] |= 1 << (i % 64);
}

fn clear_bit(set: &mut [u64], i: usize) {
    set[i / 64] &= !(1 << (i % 64));
}

/// Old server index -> new server index, by address (both lists are sorted by address).
fn index_map(old: &[Arc<Dest>], new: &[Arc<Dest>]) -> Vec<Option<u32>> {
    old.iter()
        .map(|d| {
            new.binary_search_by_key(&d.addr(), |n| n.addr())
                .ok()
                .map(|i| i as u32)
        })
        .collect()
}

/// IPVS's lblc/lblcr `is_overloaded`: more active connections than its weight, while some
/// server is under half load.
fn lblc_overloaded(dests: &[Arc<Dest>], i: usize) -> bool {
    let d = &dests[i];
    d.active() > d.weight()
        && dests
            .iter()
            .any(|x| u64::from(x.active()) * 2 < u64::from(x.weight()))
}

/// IPVS's `ip_vs_dest_set_max`: the member with the largest `overhead / weight` among those
/// with a non-zero weight.
fn most_loaded_in(dests: &[Arc<Dest>], members: impl Iterator<Item = usize>) -> Option<usize> {
    let mut most: Option<(usize, u64, u64)> = None;
    for i in members {
        let d = &dests[i];
        let w = u64::from(d.weight());
        if w == 0 {
            continue;
        }
        let oh = d.overhead();
        match most {
            Some((_, moh, mw)) if moh * w >= oh * mw => {}
            _ => most = Some((i, oh, w)),
        }
    }
    most.map(|(i, _, _)| i)
}

fn members(set: &[u64]) -> impl Iterator<Item = usize> + '_ {
    set.iter().enumerate().flat_map(|(k, &word)| {
        let mut w = word;
        std::iter::from_fn(move || {
            if w == 0 {
                return None;
            }
            let b = w.trailing_zeros() as usize;
            w &= w - 1;
            Some(k * 64 + b)
        })
    })
}

#[derive(Debug)]
pub(crate) struct Lblc {
    dests: Box<[Arc<Dest>]>,
    table: Table,
}

impl Lblc {
    pub(crate) fn new(
        dests: Box<[Arc<Dest>]>,
        cfg: &SchedConfig,
        prev: Option<&dyn Any>,
    ) -> Result<Self, SchedError> {
        let mut table = Table::new(cfg.lblc_buckets, 0, Instant::now(), cfg.lblc_expiration)?;
        if let Some(p) = prev.and_then(|p| p.downcast_ref::<Lblc>()) {
            table.inherit(&p.table, &index_map(&p.dests, &dests));
        }
        Ok(Self { dests, table })
    }
}

impl Scheduler for Lblc {
    fn kind(&self) -> model::Scheduler {
        model::Scheduler::Lblc
    }

    fn dests(&self) -> &[Arc<Dest>] {
        &self.dests
    }

    fn pick(&self, input: &SchedInput) -> Option<usize> {
        let d = &self.dests[..];
        let t = &self.table;
        let key = ip_bits(input.vip.ip());
        let now = t.now(input.now);
        let mut b = t.lock(key);
        if let Some(w) = t.find(&b, key, now) {
            let slot = &mut b.slots[w];
            slot.lastuse = now;
            let i = slot.value as usize;
            if i < d.len() && d[i].is_available() && !lblc_overloaded(d, i) {
                return Some(i);
            }
            let new = wlc_pick(d, 0..d.len())?;
            slot.value = new as u32;
            return Some(new);
        }
        let new = wlc_pick(d, 0..d.len())?;
        let w = t.claim(&mut b, key, now);
        b.slots[w].value = new as u32;
        Some(new)
    }

    fn maintain(&self, now: Instant) {
        self.table.expire(now);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[derive(Debug)]
pub(crate) struct Lblcr {
    dests: Box<[Arc<Dest>]>,
    table: Table,
}

impl Lblcr {
    pub(crate) fn new(
        dests: Box<[Arc<Dest>]>,
        cfg: &SchedConfig,
        prev: Option<&dyn Any>,
    ) -> Result<Self, SchedError> {
        let words = dests.len().div_ceil(64).max(1);
        let mut table = Table::new(
            cfg.lblc_buckets,
            words,
            Instant::now(),
            cfg.lblcr_expiration,
        )?;
        if let Some(p) = prev.and_then(|p| p.downcast_ref::<Lblcr>()) {
            table.inherit(&p.table, &index_map(&p.dests, &dests));
        }
        Ok(Self { dests, table })
    }
}

impl Scheduler for Lblcr {
    fn kind(&self) -> model::Scheduler {
        model::Scheduler::Lblcr
    }

    fn dests(&self) -> &[Arc<Dest>] {
        &self.dests
    }

    fn pick(&self, input: &SchedInput) -> Option<usize> {
        let d = &self.dests[..];
        let t = &self.table;
        let words = t.words;
        let key = ip_bits(input.vip.ip());
        let now = t.now(input.now);
        let mut guard = t.lock(key);
        let b = &mut *guard;
        if let Some(w) = t.find(b, key, now) {
            let slot = &mut b.slots[w];
            let set = &mut b.sets[w * words..(w + 1) * words];
            slot.lastuse = now;
            let chosen = wlc_pick(d, members(set));
            // A set unchanged for the expiration time sheds its most loaded member.
            if slot.value > 1
                && now.saturating_sub(slot.lastmod) > t.expiration
                && let Some(m) = most_loaded_in(d, members(set))
            {
                clear_bit(set, m);
                slot.value -= 1;
                slot.lastmod = now;
            }
            if let Some(i) = chosen
                && !lblc_overloaded(d, i)
            {
                return Some(i);
            }
            let new = wlc_pick(d, 0..d.len())?;
            if !bit(set, new) {
                set_bit(set, new);
                slot.value += 1;
                slot.lastmod = now;
            }
            return Some(new);
        }
        let new = wlc_pick(d, 0..d.len())?;
        let w = t.claim(b, key, now);
        set_bit(&mut b.sets[w * words..(w + 1) * words], new);
        b.slots[w].value = 1;
        Some(new)
    }

    fn maintain(&self, now: Instant) {
        self.table.expire(now);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::super::testutil::*;
    use super::super::{build, rebuild};
    use super::*;
    use crate::model::{SchedFlags, Scheduler as K};

    fn make(kind: K, d: &[Arc<Dest>], cfg: &SchedConfig) -> Box<dyn Scheduler> {
        build(kind, SchedFlags::empty(), d.to_vec(), cfg).unwrap()
    }

    /// A connection from client `c` to target `t` at time `at`.
    fn to(t: u32, c: u32, v6: bool, at: Instant) -> SchedInput {
        let target = SocketAddr::new(client(1000 + t, 0, v6).ip(), 80);
        SchedInput::new(client(c, 1234, v6), target, SchedInput::TCP).at(at)
    }

    fn table(s: &dyn Scheduler) -> &Table {
        if let Some(l) = s.as_any().downcast_ref::<Lblc>() {
            &l.table
        } else {
            &s.as_any().downcast_ref::<Lblcr>().unwrap().table
        }
    }

    #[test]
    fn lblc_sticks_by_destination_until_overloaded() {
        for v6 in [false, true] {
            let d = dests(&[4, 4, 4], v6);
            let s = make(K::Lblc, &d, &SchedConfig::default());
            let t0 = Instant::now();
            // Target 1: wlc picks server 0 (all idle, first wins); it sticks for any client,
            // even as server 0 becomes the most loaded.
            assert_eq!(s.pick(&to(1, 1, v6, t0)), Some(0));
            d[0].set_counters(4, 0);
            for c in 2..10 {
                assert_eq!(s.pick(&to(1, c, v6, t0)), Some(0));
            }
            // Other targets spread by wlc.
            assert_eq!(s.pick(&to(2, 1, v6, t0)), Some(1));
            d[1].set_counters(1, 0);
            assert_eq!(s.pick(&to(3, 1, v6, t0)), Some(2));
            // active > weight, and server 2 is under half load: target 1 is reassigned (wlc:
            // server 2), and sticks there.
            d[0].set_counters(5, 0);
            assert_eq!(s.pick(&to(1, 1, v6, t0)), Some(2));
            d[0].set_counters(0, 0);
            assert_eq!(s.pick(&to(1, 1, v6, t0)), Some(2));
            // Over its weight but nobody under half load: stays.
            for x in d.iter() {
                x.set_counters(2, 0);
            }
            d[2].set_counters(9, 0);
            assert_eq!(s.pick(&to(1, 1, v6, t0)), Some(2));
            // Quiesced or threshold-overloaded: reassigned.
            d[2].set_weight(0);
            assert_eq!(s.pick(&to(1, 1, v6, t0)), Some(0));
            d[0].set_thresholds(2, 0);
            assert_eq!(s.pick(&to(1, 1, v6, t0)), Some(1));
            assert_eq!(table(s.as_ref()).entries(), 3);
        }
    }

    #[test]
    fn lblc_entries_expire() {
        let cfg = SchedConfig {
            lblc_expiration: Duration::from_secs(60),
            ..Default::default()
        };
        let d = dests(&[1, 1], true);
        // Times are taken after the build: the table counts whole seconds from its creation.
        let s = make(K::Lblc, &d, &cfg);
        let t0 = Instant::now();
        assert_eq!(s.pick(&to(1, 1, true, t0)), Some(0));
        d[0].set_counters(1, 0);
        // Used within the expiration: still there, and each use refreshes it.
        assert_eq!(
            s.pick(&to(1, 1, true, t0 + Duration::from_secs(59))),
            Some(0)
        );
        assert_eq!(
            s.pick(&to(1, 1, true, t0 + Duration::from_secs(118))),
            Some(0)
        );
        // Unused for 60 s: forgotten, wlc decides afresh.
        let later = t0 + Duration::from_secs(178);
        assert_eq!(s.pick(&to(1, 1, true, later)), Some(1));
        assert_eq!(table(s.as_ref()).entries(), 1);
        s.maintain(later + Duration::from_secs(59));
        assert_eq!(table(s.as_ref()).entries(), 1);
        s.maintain(later + Duration::from_secs(60));
        assert_eq!(table(s.as_ref()).entries(), 0);
    }

    #[test]
    fn lblc_table_is_bounded() {
        let cfg = SchedConfig {
            lblc_buckets: 1,
            ..Default::default()
        };
        let d = dests(&[1, 1, 1], false);
        let s = make(K::Lblc, &d, &cfg);
        let t0 = Instant::now();
        for t in 0..(WAYS as u32) {
            s.pick(&to(t, 1, false, t0 + Duration::from_secs(u64::from(t))));
        }
        assert_eq!(table(s.as_ref()).entries(), WAYS);
        // Target 0 was the least recently used: a new target takes its slot.
        let later = t0 + Duration::from_secs(100);
        s.pick(&to(100, 1, false, later));
        assert_eq!(table(s.as_ref()).entries(), WAYS);
        let t = table(s.as_ref());
        let gone = ip_bits(to(0, 1, false, t0).vip.ip());
        let kept = ip_bits(to(1, 1, false, t0).vip.ip());
        let b = t.lock(gone);
        assert!(t.find(&b, gone, t.now(later)).is_none());
        assert!(t.find(&b, kept, t.now(later)).is_some());
    }

    #[test]
    fn lblc_rebuild_keeps_entries_of_remaining_servers() {
        let t0 = Instant::now();
        let d = dests(&[1, 1, 1], false);
        let cfg = SchedConfig::default();
        let s = make(K::Lblc, &d, &cfg);
        for (t, load) in [(1, 0), (2, 1), (3, 2)] {
            assert_eq!(s.pick(&to(t, 1, false, t0)), Some(load));
            d[load].set_counters(1, 0);
        }
        // Server 1 (target 2's) is removed; a weight change on the others.
        d[2].set_weight(3);
        let keep = vec![d[0].clone(), d[2].clone()];
        let s2 = rebuild(s.as_ref(), K::Lblc, SchedFlags::empty(), keep, &cfg).unwrap();
        assert_eq!(table(s2.as_ref()).entries(), 2);
        assert_eq!(
            s2.pick_dest(&to(1, 9, false, t0)).unwrap().addr(),
            d[0].addr()
        );
        assert_eq!(
            s2.pick_dest(&to(3, 9, false, t0)).unwrap().addr(),
            d[2].addr()
        );
    }

    #[test]
    fn lblcr_grows_the_set_under_overload_and_shrinks_it_with_age() {
        for v6 in [false, true] {
            let cfg = SchedConfig {
                lblcr_expiration: Duration::from_secs(3600),
                ..Default::default()
            };
            let d = dests(&[2, 2, 2, 2], v6);
            let s = make(K::Lblcr, &d, &cfg);
            let t0 = Instant::now();
            assert_eq!(s.pick(&to(1, 1, v6, t0)), Some(0));
            let set = |s: &dyn Scheduler| {
                let t = table(s);
                let key = ip_bits(to(1, 1, v6, t0).vip.ip());
                let b = t.lock(key);
                let w = b.slots.iter().position(|x| x.used && x.key == key).unwrap();
                members(&b.sets[w * t.words..(w + 1) * t.words]).collect::<Vec<_>>()
            };
            assert_eq!(set(s.as_ref()), [0]);
            // Server 0 over its weight, others idle: server 1 joins the set.
            d[0].set_counters(3, 0);
            assert_eq!(s.pick(&to(1, 2, v6, t0)), Some(1));
            assert_eq!(set(s.as_ref()), [0, 1]);
            // Now the least loaded member of the set is used: server 1 (wlc within the set),
            // although servers 2 and 3 are idle.
            d[1].set_counters(1, 0);
            assert_eq!(s.pick(&to(1, 3, v6, t0)), Some(1));
            // Both members over their weight, server 3 at half load: 2 joins (wlc over all).
            d[1].set_counters(3, 0);
            d[2].set_counters(0, 0);
            d[3].set_counters(1, 0);
            assert_eq!(s.pick(&to(1, 4, v6, t0)), Some(2));
            assert_eq!(set(s.as_ref()), [0, 1, 2]);
            // The set has not changed for longer than the expiration (while the entry kept
            // being used, or it would have expired itself): each pick sheds the most loaded
            // member (by overhead / weight), one per expiration period.
            d[0].set_counters(2, 0);
            d[1].set_counters(1, 0);
            d[2].set_counters(0, 1);
            let at = |secs| t0 + Duration::from_secs(secs);
            assert_eq!(s.pick(&to(1, 5, v6, at(1800))), Some(2));
            assert_eq!(set(s.as_ref()), [0, 1, 2]);
            assert_eq!(s.pick(&to(1, 5, v6, at(3601))), Some(2));
            assert_eq!(set(s.as_ref()), [1, 2]);
            // lastmod was just refreshed: no more shedding for another hour.
            assert_eq!(s.pick(&to(1, 5, v6, at(5400))), Some(2));
            assert_eq!(set(s.as_ref()), [1, 2]);
            assert_eq!(s.pick(&to(1, 5, v6, at(7202))), Some(2));
            assert_eq!(set(s.as_ref()), [2]);
            let much_later = at(7202);
            // A rebuild without server 2 keeps no empty set; the target is reassigned.
            let keep: Vec<_> = [0, 1, 3].iter().map(|&i| d[i].clone()).collect();
            let s2 = rebuild(s.as_ref(), K::Lblcr, SchedFlags::empty(), keep, &cfg).unwrap();
            assert_eq!(table(s2.as_ref()).entries(), 0);
            assert!(s2.pick(&to(1, 5, v6, much_later)).is_some());
        }
    }

    #[test]
    fn lblcr_sets_cover_many_servers() {
        // More than 64 servers: multi-word sets.
        let d = dests(&[1; 130], false);
        let s = make(K::Lblcr, &d, &SchedConfig::default());
        let t0 = Instant::now();
        assert_eq!(s.pick(&to(1, 1, false, t0)), Some(0));
        // Server 0 over its weight, servers 1..=128 at their weight, 129 idle (under half).
        d[0].set_counters(2, 0);
        for x in &d[1..129] {
            x.set_counters(1, 0);
        }
        assert_eq!(s.pick(&to(1, 1, false, t0)), Some(129));
        assert_eq!(s.pick(&to(1, 1, false, t0)), Some(129));
        // Quiesced: back to server 0, no longer "overloaded" with nobody under half load.
        d[129].set_weight(0);
        assert_eq!(s.pick(&to(1, 1, false, t0)), Some(0));
    }
}
