//! Fixed-size open-addressing index from a key hash to an arena slot.
//!
//! Linear probing over a bucket array sized once (twice the shard's slot capacity, so the load
//! stays ≤ 0.5 and probe runs stay short). Removal shifts the following run back instead of
//! leaving tombstones, so the index never degrades and never needs a rehash: no allocation
//! after construction, whatever the insert/remove pattern. A bucket is a `u32`: the top 8 bits
//! are a hash tag (most mismatches are rejected without touching the arena), the low 24 bits
//! hold slot + 1, and 0 means empty, which lets the array come from zeroed (lazily mapped)
//! memory.

const SLOT_BITS: u32 = 24;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
const TAG_MASK: u32 = !SLOT_MASK;

/// Largest number of slots one shard may have (slot + 1 must fit in 24 bits).
pub(crate) const MAX_SLOTS: usize = SLOT_MASK as usize;

pub(crate) struct ProbeIndex {
    buckets: Box<[u32]>,
}

impl ProbeIndex {
    pub(crate) fn new(n_buckets: usize) -> Self {
        ProbeIndex {
            buckets: vec![0u32; n_buckets].into_boxed_slice(),
        }
    }

    pub(crate) fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    #[inline]
    fn home(&self, h: u64) -> usize {
        // Multiply-shift range reduction: any bucket count, no power-of-two rounding waste.
        (((h >> 32) * self.buckets.len() as u64) >> 32) as usize
    }

    #[inline]
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.buckets.len() {
            0
        } else {
            i + 1
        }
    }

    /// Position and slot of the first bucket with `h`'s tag whose slot satisfies `eq`.
    #[inline]
    pub(crate) fn find(&self, h: u64, mut eq: impl FnMut(u32) -> bool) -> Option<(usize, u32)> {
        if self.buckets.is_empty() {
            return None;
        }
        let tag = (h as u32) & TAG_MASK;
        let mut i = self.home(h);
        loop {
            let b = self.buckets[i];
            if b == 0 {
                return None;
            }
            if b & TAG_MASK == tag {
                let slot = (b & SLOT_MASK) - 1;
                if eq(slot) {
                    return Some((i, slot));
                }
            }
            i = self.next(i);
        }
    }

    /// Adds `slot` under `h`. The caller keeps the load ≤ 0.5, so an empty bucket exists.
    #[inline]
    pub(crate) fn insert(&mut self, h: u64, slot: u32) {
        debug_assert!((slot as usize) < MAX_SLOTS);
        let mut i = self.home(h);
        while self.buckets[i] != 0 {
            i = self.next(i);
        }
        self.buckets[i] = ((h as u32) & TAG_MASK) | (slot + 1);
    }

    /// Empties bucket `pos` and shifts the rest of its probe run back so every remaining
    /// entry stays reachable from its home bucket. `hash_of(slot)` recomputes a slot's hash.
    pub(crate) fn remove_at(&mut self, pos: usize, mut hash_of: impl FnMut(u32) -> u64) {
        let mut hole = pos;
        let mut j = pos;
        loop {
            j = self.next(j);
            let b = self.buckets[j];
            if b == 0 {
                break;
            }
            let home = self.home(hash_of((b & SLOT_MASK) - 1));
            // The entry at j may fill the hole unless its home lies cyclically in (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.buckets[hole] = b;
                hole = j;
            }
        }
        self.buckets[hole] = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Random insert/remove against a model; tiny bucket counts force wrap-around and long runs.
    #[test]
    fn backward_shift_matches_model() {
        for n_buckets in [2usize, 3, 7, 16, 61] {
            let cap = n_buckets / 2;
            let mut idx = ProbeIndex::new(n_buckets);
            // slot -> hash, with deliberately colliding hashes
            let mut hashes: Vec<u64> = Vec::new();
            let mut live: HashMap<u32, u64> = HashMap::new();
            let mut x = 0x1234_5678u64 + n_buckets as u64;
            for _ in 0..20_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if live.len() < cap && (x & 1 == 0 || live.is_empty()) {
                    let slot = (0..).find(|s| !live.contains_key(s)).unwrap();
                    // Few distinct homes, varied tags.
                    let h = ((x % 3) << 62) | (x & 0xFF00_0000);
                    if hashes.len() <= slot as usize {
                        hashes.resize(slot as usize + 1, 0);
                    }
                    hashes[slot as usize] = h;
                    idx.insert(h, slot);
                    live.insert(slot, h);
                } else {
                    let victim = *live.keys().nth((x as usize / 2) % live.len()).unwrap();
                    let h = live[&victim];
                    let (pos, s) = idx.find(h, |s| s == victim).unwrap();
                    assert_eq!(s, victim);
                    idx.remove_at(pos, |s| hashes[s as usize]);
                    live.remove(&victim);
                }
                for (&s, &h) in &live {
                    assert!(idx.find(h, |t| t == s).is_some(), "slot {s} lost");
                }
            }
        }
    }
}
