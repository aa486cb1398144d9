//! One shard: an arena of entries plus a forward index and a NAT reverse index into it.
//!
//! The arena is a `Vec` allocated once at full capacity; slots are handed out from a free list
//! threaded through dead slots (or by pushing below capacity), so the packet path never
//! allocates. Slots never move, which lets the sweeper and snapshots walk the arena by
//! position across lock releases.

use super::entry::ConnEntry;
use super::hash::KeyHasher;
use super::index::ProbeIndex;
use super::key::{ConnKey, ReplyKey};

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ShardCounters {
    pub(crate) inserted: u64,
    pub(crate) removed: u64,
    pub(crate) expired: u64,
    pub(crate) postponed: u64,
}

pub(crate) struct Shard {
    slots: Vec<ConnEntry>,
    cap: usize,
    nat_cap: usize,
    /// First free slot + 1 (0 = none); each free slot keeps the next link in `n_control`.
    free_head: u32,
    pub(crate) len: usize,
    pub(crate) nat_len: usize,
    pub(crate) templates: usize,
    fwd: ProbeIndex,
    rev: ProbeIndex,
    sweep_pos: usize,
    pub(crate) counters: ShardCounters,
}

fn reply_matches(e: &ConnEntry, r: &ReplyKey) -> bool {
    let (daddr, dport) = e.dest_raw();
    let k = e.key();
    e.in_reverse_index()
        && k.proto == r.proto
        && k.cport == r.cport
        && dport == r.rport
        && k.caddr == r.caddr
        && *daddr == r.raddr
        && e.dest_family().tag() == r.family
        && k.family().tag() == r.family
}

impl Shard {
    pub(crate) fn new(cap: usize, nat_cap: usize) -> Shard {
        Shard {
            slots: Vec::with_capacity(cap),
            cap,
            nat_cap,
            free_head: 0,
            len: 0,
            nat_len: 0,
            templates: 0,
            fwd: ProbeIndex::new(2 * cap),
            rev: ProbeIndex::new(2 * nat_cap),
            sweep_pos: 0,
            counters: ShardCounters::default(),
        }
    }

    /// Bytes this shard allocated (arena capacity and both bucket arrays).
    pub(crate) fn allocated_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<ConnEntry>()
            + (self.fwd.bucket_count() + self.rev.bucket_count()) * std::mem::size_of::<u32>()
    }

    #[inline]
    pub(crate) fn find(&self, hf: u64, key: &ConnKey) -> Option<(usize, u32)> {
        let slots = &self.slots;
        self.fwd.find(hf, |s| slots[s as usize].key == *key)
    }

    #[inline]
    pub(crate) fn find_reply(&self, hr: u64, r: &ReplyKey) -> Option<(usize, u32)> {
        let slots = &self.slots;
        self.rev.find(hr, |s| reply_matches(&slots[s as usize], r))
    }

    #[inline]
    pub(crate) fn get(&self, slot: u32) -> &ConnEntry {
        &self.slots[slot as usize]
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, slot: u32) -> &mut ConnEntry {
        &mut self.slots[slot as usize]
    }

    pub(crate) fn has_room(&self, nat: bool) -> bool {
        self.len < self.cap && (!nat || self.nat_len < self.nat_cap)
    }

    pub(crate) fn has_nat_room(&self) -> bool {
        self.nat_len < self.nat_cap
    }

    /// Adds `e` (caller checked it is absent and `has_room`). Returns its slot.
    pub(crate) fn insert(&mut self, hf: u64, hasher: &KeyHasher, e: ConnEntry) -> u32 {
        let slot = if self.free_head != 0 {
            let s = self.free_head - 1;
            self.free_head = self.slots[s as usize].n_control;
            self.slots[s as usize] = e;
            s
        } else {
            debug_assert!(self.slots.len() < self.cap);
            // Below the reserved capacity: push never reallocates.
            self.slots.push(e);
            (self.slots.len() - 1) as u32
        };
        self.fwd.insert(hf, slot);
        if e.in_reverse_index() {
            self.rev.insert(hasher.rev_of(&e), slot);
            self.nat_len += 1;
        }
        if e.is_template() {
            self.templates += 1;
        }
        self.len += 1;
        slot
    }

    /// Removes the entry in `slot`, found at forward-index position `pos`.
    pub(crate) fn remove(&mut self, pos: usize, slot: u32, hasher: &KeyHasher) -> ConnEntry {
        let e = self.slots[slot as usize];
        let slots = &self.slots;
        self.fwd
            .remove_at(pos, |s| hasher.fwd(&slots[s as usize].key).1);
        if e.in_reverse_index() {
            // The reply key of a stored entry never changes in place (upsert re-inserts), so
            // its reverse bucket is found under the same hash.
            if let Some((rpos, _)) = self.rev.find(hasher.rev_of(&e), |s| s == slot) {
                self.rev
                    .remove_at(rpos, |s| hasher.rev_of(&slots[s as usize]));
            }
            self.nat_len -= 1;
        }
        if e.is_template() {
            self.templates -= 1;
        }
        self.slots[slot as usize] = ConnEntry::free_slot(self.free_head);
        self.free_head = slot + 1;
        self.len -= 1;
        e
    }

    fn remove_slot(&mut self, slot: u32, hasher: &KeyHasher) -> Option<ConnEntry> {
        let hf = hasher.fwd(&self.slots[slot as usize].key).1;
        let (pos, _) = self.fwd.find(hf, |s| s == slot)?;
        Some(self.remove(pos, slot, hasher))
    }

    /// Scans up to `max_scan` slots from the sweep cursor, moving expired entries to `out`.
    /// Expired templates that still control connections are re-armed for `recheck` seconds.
    /// Returns (slots scanned, reached the end of the arena).
    pub(crate) fn sweep(
        &mut self,
        now: u32,
        max_scan: usize,
        recheck: u32,
        hasher: &KeyHasher,
        out: &mut Vec<ConnEntry>,
    ) -> (usize, bool) {
        let mut scanned = 0;
        while scanned < max_scan {
            let pos = self.sweep_pos;
            if pos >= self.slots.len() {
                self.sweep_pos = 0;
                return (scanned, true);
            }
            self.sweep_pos += 1;
            scanned += 1;
            let e = &mut self.slots[pos];
            if e.is_free() || now <= e.expires() {
                continue;
            }
            if e.is_template() && e.n_control > 0 {
                e.set_expires_raw(now.saturating_add(recheck));
                self.counters.postponed += 1;
                continue;
            }
            if let Some(removed) = self.remove_slot(pos as u32, hasher) {
                self.counters.expired += 1;
                out.push(removed);
            }
        }
        (scanned, false)
    }

    /// Copies live entries from arena position `from` into `out`: at most `max_entries`
    /// entries and `max_scan` slots. Returns (next position, reached the end).
    pub(crate) fn copy_live(
        &self,
        from: usize,
        max_entries: usize,
        max_scan: usize,
        out: &mut Vec<ConnEntry>,
    ) -> (usize, bool) {
        let end = self.slots.len();
        let mut pos = from;
        let mut copied = 0;
        while pos < end && copied < max_entries && pos - from < max_scan {
            let e = &self.slots[pos];
            if !e.is_free() {
                out.push(*e);
                copied += 1;
            }
            pos += 1;
        }
        (pos, pos >= end)
    }

    pub(crate) fn for_each(&self, mut f: impl FnMut(&ConnEntry)) {
        self.slots.iter().filter(|e| !e.is_free()).for_each(&mut f);
    }

    /// Removes every entry `pred` selects into `out`; returns how many.
    pub(crate) fn remove_where(
        &mut self,
        mut pred: impl FnMut(&ConnEntry) -> bool,
        hasher: &KeyHasher,
        out: &mut Vec<ConnEntry>,
    ) -> usize {
        let mut n = 0;
        for slot in 0..self.slots.len() {
            let e = &self.slots[slot];
            if e.is_free() || !pred(e) {
                continue;
            }
            if let Some(removed) = self.remove_slot(slot as u32, hasher) {
                self.counters.removed += 1;
                out.push(removed);
                n += 1;
            }
        }
        n
    }
}
