//! The sharded connection table.
//!
//! Packet threads call `lookup`, `insert_on_packet`, `update_on_packet`, `update_on_reply`
//! for every packet: each takes one shard mutex for a short critical section, copies entries
//! out, never allocates (all memory is reserved in `new`) and never blocks on anything but
//! that shard. The shard is picked from the client side of the key, so a NAT entry and its
//! reply index share one shard and one lock. Control code (sweeper, sync sender, `conn list`)
//! works shard by shard in bounded chunks and never holds two shard locks at once.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::entry::{ConnEntry, Invalid};
use super::hash::KeyHasher;
use super::index::MAX_SLOTS;
use super::key::{ConnKey, ReplyKey};
use super::shard::Shard;
use super::state::{Direction, StateChange, state_count};
use super::timeouts::{AtomicTimeouts, Timeouts};

/// Most slots one sweep step scans under one shard lock, so the sweeper never stalls a
/// packet thread for long.
const SWEEP_CHUNK: usize = 1024;

/// Most shards a table may have.
pub const MAX_SHARDS: usize = 4096;

/// Table construction parameters.
#[derive(Clone, Debug)]
pub struct TableConfig {
    /// Most entries (connections + templates) the table holds; inserts beyond fail.
    pub max_entries: usize,
    /// Most NAT connections (they also take a reverse-index bucket pair). 0 for a DR/TUN-only
    /// director saves that index (NAT inserts are then refused as `Full`); clamped to
    /// `max_entries`.
    pub max_nat_entries: usize,
    /// Number of shards, a power of two ≤ `MAX_SHARDS`.
    pub shards: usize,
    pub timeouts: Timeouts,
    /// Fixed hash seed for reproducible tests; `None` picks a random one.
    pub hash_seed: Option<u64>,
}

impl TableConfig {
    /// Defaults: NAT allowed for every entry, shard count from the size, IPVS timeouts.
    pub fn new(max_entries: usize) -> TableConfig {
        TableConfig {
            max_entries,
            max_nat_entries: max_entries,
            shards: default_shards(max_entries),
            timeouts: Timeouts::default(),
            hash_seed: None,
        }
    }

    /// The memory this configuration allocates, computed without allocating it.
    pub fn layout(&self) -> Result<MemoryLayout, ConfigError> {
        if self.max_entries == 0 {
            return Err(ConfigError::ZeroEntries);
        }
        if !self.shards.is_power_of_two() || self.shards > MAX_SHARDS {
            return Err(ConfigError::BadShardCount(self.shards));
        }
        let slots = shard_slots(self.max_entries, self.shards);
        if slots > MAX_SLOTS {
            return Err(ConfigError::ShardTooLarge {
                slots,
                max: MAX_SLOTS,
            });
        }
        let max_nat = self.max_nat_entries.min(self.max_entries);
        let nat_slots = shard_slots(max_nat, self.shards);
        Ok(MemoryLayout {
            max_entries: self.max_entries,
            max_nat_entries: max_nat,
            shards: self.shards,
            slots_per_shard: slots,
            nat_slots_per_shard: nat_slots,
            fwd_buckets_per_shard: 2 * slots,
            rev_buckets_per_shard: 2 * nat_slots,
            entry_bytes: std::mem::size_of::<ConnEntry>(),
            bucket_bytes: std::mem::size_of::<u32>(),
            shard_overhead_bytes: std::mem::size_of::<Padded<Mutex<Shard>>>(),
        })
    }
}

/// About 2048 entries per shard, between 1 and 256 shards: enough shards that packet threads
/// rarely meet, few enough that the per-shard slack stays small.
fn default_shards(max_entries: usize) -> usize {
    (max_entries / 2048).max(1).next_power_of_two().min(256)
}

/// Slots per shard for `total` entries spread by hash over `shards`: the mean plus four
/// standard deviations (binomial ≈ √mean) plus a constant, so the fullest shard fills only
/// when the whole table is practically full.
fn shard_slots(total: usize, shards: usize) -> usize {
    if total == 0 {
        return 0;
    }
    if shards == 1 {
        return total;
    }
    let avg = total.div_ceil(shards);
    (avg + 4 * avg.isqrt() + 16).min(total)
}

/// Where the table's memory goes; `total_bytes / max_entries` is the per-entry cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    pub max_entries: usize,
    pub max_nat_entries: usize,
    pub shards: usize,
    pub slots_per_shard: usize,
    pub nat_slots_per_shard: usize,
    pub fwd_buckets_per_shard: usize,
    pub rev_buckets_per_shard: usize,
    pub entry_bytes: usize,
    pub bucket_bytes: usize,
    pub shard_overhead_bytes: usize,
}

impl MemoryLayout {
    pub fn total_bytes(&self) -> usize {
        self.shards
            * (self.slots_per_shard * self.entry_bytes
                + (self.fwd_buckets_per_shard + self.rev_buckets_per_shard) * self.bucket_bytes
                + self.shard_overhead_bytes)
    }

    /// Bytes per entry with the table filled to `max_entries`.
    pub fn bytes_per_entry(&self) -> f64 {
        self.total_bytes() as f64 / self.max_entries as f64
    }

    /// Bytes of the NAT reverse index alone.
    pub fn reverse_index_bytes(&self) -> usize {
        self.shards * self.rev_buckets_per_shard * self.bucket_bytes
    }

    /// What the reverse index adds per NAT entry it can hold.
    pub fn reverse_index_bytes_per_nat_entry(&self) -> f64 {
        if self.max_nat_entries == 0 {
            return 0.0;
        }
        self.reverse_index_bytes() as f64 / self.max_nat_entries as f64
    }

    /// Per-entry cost of the same table without a reverse index (a DR/TUN-only director).
    pub fn bytes_per_entry_without_nat(&self) -> f64 {
        (self.total_bytes() - self.reverse_index_bytes()) as f64 / self.max_entries as f64
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("max_entries must be at least 1")]
    ZeroEntries,
    #[error("shard count {0} is not a power of two between 1 and {MAX_SHARDS}")]
    BadShardCount(usize),
    #[error("{slots} slots per shard exceeds the index limit of {max}; use more shards")]
    ShardTooLarge { slots: usize, max: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// The table (or the entry's shard, or the NAT reverse index) is at capacity; counted in
    /// `TableStats::refused_full`.
    #[error("connection table is full")]
    Full,
    /// An entry with the same key exists (e.g. another packet thread created the flow first);
    /// it is returned so the caller can follow it.
    #[error("an entry with this key already exists")]
    Exists(ConnEntry),
    #[error("entry state is out of range for its protocol")]
    InvalidState,
    #[error("a NAT entry needs its real server in the client's address family")]
    NatMixedFamily,
    #[error("insert_template needs a persistence-template entry")]
    NotTemplate,
}

impl From<Invalid> for InsertError {
    fn from(i: Invalid) -> Self {
        match i {
            Invalid::State => InsertError::InvalidState,
            Invalid::NatMixedFamily => InsertError::NatMixedFamily,
        }
    }
}

/// Counters, summed over shards at the time of the call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Live entries, templates included.
    pub entries: usize,
    pub templates: usize,
    pub nat_entries: usize,
    pub inserted: u64,
    /// Removed by `remove`/`remove_where` (not by expiry).
    pub removed: u64,
    pub expired: u64,
    /// Expired templates kept because they still controlled connections.
    pub templates_postponed: u64,
    /// Inserts refused for lack of room.
    pub refused_full: u64,
}

/// What one `expire` call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub scanned: usize,
    pub expired: usize,
    pub postponed: usize,
}

/// Position of a chunked walk over the table (`snapshot_chunk`). Entries inserted or removed
/// during the walk may or may not be seen; a resync pairs it with the live change stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotCursor {
    shard: usize,
    pos: usize,
}

impl SnapshotCursor {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Keeps each shard's lock on its own cache lines (two, for the adjacent-line prefetcher).
#[repr(align(128))]
struct Padded<T>(T);

/// The connection table. See the module documentation for the locking rules.
pub struct ConnTable {
    shards: Box<[Padded<Mutex<Shard>>]>,
    shard_shift: u32,
    hasher: KeyHasher,
    max_entries: usize,
    /// Entries reserved or present; the global cap, checked only when inserting.
    len: AtomicUsize,
    refused_full: AtomicU64,
    timeouts: AtomicTimeouts,
    sweep_shard: AtomicUsize,
    layout: MemoryLayout,
}

impl std::fmt::Debug for ConnTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnTable")
            .field("len", &self.len())
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl ConnTable {
    /// Allocates the whole table up front (arena capacity and zeroed index arrays; pages are
    /// touched only as entries arrive).
    pub fn new(cfg: TableConfig) -> Result<ConnTable, ConfigError> {
        let layout = cfg.layout()?;
        let shards = (0..layout.shards)
            .map(|_| {
                Padded(Mutex::new(Shard::new(
                    layout.slots_per_shard,
                    layout.nat_slots_per_shard,
                )))
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        let hasher = match cfg.hash_seed {
            Some(s) => KeyHasher::with_seed(s),
            None => KeyHasher::random(),
        };
        tracing::debug!(
            max_entries = layout.max_entries,
            shards = layout.shards,
            slots_per_shard = layout.slots_per_shard,
            bytes = layout.total_bytes(),
            bytes_per_entry = layout.bytes_per_entry(),
            "connection table allocated"
        );
        Ok(ConnTable {
            shards,
            shard_shift: 64 - layout.shards.trailing_zeros(),
            hasher,
            max_entries: cfg.max_entries,
            len: AtomicUsize::new(0),
            refused_full: AtomicU64::new(0),
            timeouts: AtomicTimeouts::new(&cfg.timeouts),
            sweep_shard: AtomicUsize::new(0),
            layout,
        })
    }

    #[inline]
    fn shard_of(&self, h1: u64) -> usize {
        // checked_shr: a single shard means a shift by 64, i.e. shard 0.
        h1.checked_shr(self.shard_shift).unwrap_or(0) as usize
    }

    #[inline]
    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        // A panic under a shard lock is a bug in this module; the shard's structures are
        // updated before anything that could panic, so keep serving rather than cascade.
        self.shards[i]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn layout(&self) -> &MemoryLayout {
        &self.layout
    }

    /// Bytes actually allocated for entries, indexes and shard headers (control code only:
    /// locks every shard in turn).
    pub fn allocated_bytes(&self) -> usize {
        let shards: usize = (0..self.shards.len())
            .map(|i| self.lock(i).allocated_bytes())
            .sum();
        shards
            + self.shards.len() * std::mem::size_of::<Padded<Mutex<Shard>>>()
            + std::mem::size_of::<Self>()
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Live entries, templates included.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts.load()
    }

    /// Changes timeouts at run time; entries pick them up on their next packet.
    pub fn set_timeouts(&self, t: &Timeouts) {
        self.timeouts.store(t);
    }

    /// Current timeout for a connection of `protocol` in `state`.
    pub fn timeout_for(&self, protocol: u8, state: u8) -> u32 {
        self.timeouts.for_state(protocol, state)
    }

    /// The entry for `key` (a connection or, with a template key, a template).
    ///
    /// Entries past their deadline are still returned until the sweeper removes them; a packet
    /// in that window revives the flow (its update refreshes the expiry), which at worst
    /// extends a flow's life by one sweep period and never splits a flow.
    #[inline]
    pub fn lookup(&self, key: &ConnKey) -> Option<ConnEntry> {
        let (h1, hf) = self.hasher.fwd(key);
        let sh = self.lock(self.shard_of(h1));
        sh.find(hf, key).map(|(_, s)| *sh.get(s))
    }

    /// The NAT connection a reply from `real` to `client` belongs to.
    #[inline]
    pub fn lookup_reply(&self, key: &ReplyKey) -> Option<ConnEntry> {
        let (h1, hr) = self.hasher.rev(key);
        let sh = self.lock(self.shard_of(h1));
        sh.find_reply(hr, key).map(|(_, s)| *sh.get(s))
    }

    /// Inserts `entry` as given (state and deadline already set, e.g. by the sync receiver).
    /// A connection tied to a template is counted in the template's `n_control`.
    pub fn insert(&self, entry: ConnEntry) -> Result<(), InsertError> {
        self.insert_inner(entry, None)
    }

    /// Inserts a new connection for its first (client → virtual) packet: applies the state
    /// transition for `tcp_flags`, sets the expiry from the new state, refreshes the
    /// controlling template. The returned change is relative to the entry as given (a fresh
    /// `ConnEntry::new` is inactive, as IPVS counts a just-bound connection).
    #[inline]
    pub fn insert_on_packet(
        &self,
        entry: ConnEntry,
        tcp_flags: u8,
        now: u32,
    ) -> Result<(ConnEntry, StateChange), InsertError> {
        let mut e = entry;
        let mut change = e.apply_packet(Direction::Input, tcp_flags, now, &self.timeouts);
        // New flows go to the backups from their first packet, half-open ones included.
        e.mark_synced(now);
        change.sync = true;
        self.insert_inner(e, Some(now))?;
        Ok((e, change))
    }

    /// Inserts a persistence template (`ConnEntry::template`).
    pub fn insert_template(&self, template: ConnEntry) -> Result<(), InsertError> {
        if !template.is_template() {
            return Err(InsertError::NotTemplate);
        }
        self.insert_inner(template, None)
    }

    /// The persistence template for `key` (built with `ConnKey::template` or
    /// `Persistence::template_key`); `None` for a connection key.
    #[inline]
    pub fn lookup_template(&self, key: &ConnKey) -> Option<ConnEntry> {
        if !key.is_template() {
            return None;
        }
        self.lookup(key)
    }

    fn insert_inner(&self, e: ConnEntry, refresh_now: Option<u32>) -> Result<(), InsertError> {
        e.validate()?;
        let (h1, hf) = self.hasher.fwd(&e.key);
        {
            let mut sh = self.lock(self.shard_of(h1));
            if let Some((_, s)) = sh.find(hf, &e.key) {
                return Err(InsertError::Exists(*sh.get(s)));
            }
            if !sh.has_room(e.in_reverse_index()) || !self.reserve() {
                drop(sh);
                self.refused_full.fetch_add(1, Ordering::Relaxed);
                return Err(InsertError::Full);
            }
            sh.insert(hf, &self.hasher, e);
            sh.counters.inserted += 1;
        }
        if let Some(tk) = e.template_key() {
            self.adjust_control(&tk, true, refresh_now);
        }
        Ok(())
    }

    #[inline]
    fn reserve(&self) -> bool {
        if self.len.fetch_add(1, Ordering::Relaxed) >= self.max_entries {
            self.len.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Counts a controlled connection in (or out of) its template; on a new connection also
    /// pushes the template's expiry to `now + its timeout`, as IPVS re-arms a template each
    /// time it schedules through it. Called with no other shard lock held.
    fn adjust_control(&self, tk: &ConnKey, inc: bool, refresh_now: Option<u32>) {
        let (h1, hf) = self.hasher.fwd(tk);
        let mut sh = self.lock(self.shard_of(h1));
        if let Some((_, s)) = sh.find(hf, tk) {
            let t = sh.get_mut(s);
            t.n_control = if inc {
                t.n_control.saturating_add(1)
            } else {
                // A template inserted after its connections (sync order) may undercount.
                t.n_control.saturating_sub(1)
            };
            if let Some(now) = refresh_now {
                let to = t.timeout();
                let expires = now.saturating_add(to).max(t.expires());
                t.set_deadline(expires, to);
            }
        }
    }

    /// Inserts or replaces (sync receiver, takeover). Returns the replaced entry. A replaced
    /// template keeps its local `n_control`.
    pub fn upsert(&self, entry: ConnEntry) -> Result<Option<ConnEntry>, InsertError> {
        entry.validate()?;
        let mut e = entry;
        let (h1, hf) = self.hasher.fwd(&e.key);
        let old = {
            let mut sh = self.lock(self.shard_of(h1));
            match sh.find(hf, &e.key) {
                Some((pos, s)) => {
                    let old = *sh.get(s);
                    if e.is_template() {
                        e.n_control = old.n_control;
                    }
                    let same_reply = old.in_reverse_index() == e.in_reverse_index()
                        && (!e.in_reverse_index()
                            || (old.dest_raw() == e.dest_raw()
                                && old.dest_family() == e.dest_family()));
                    if same_reply {
                        *sh.get_mut(s) = e;
                    } else {
                        if e.in_reverse_index() && !old.in_reverse_index() && !sh.has_nat_room() {
                            drop(sh);
                            self.refused_full.fetch_add(1, Ordering::Relaxed);
                            return Err(InsertError::Full);
                        }
                        // The reply key changed: re-index under the new one.
                        sh.remove(pos, s, &self.hasher);
                        sh.insert(hf, &self.hasher, e);
                    }
                    Some(old)
                }
                None => {
                    if !sh.has_room(e.in_reverse_index()) || !self.reserve() {
                        drop(sh);
                        self.refused_full.fetch_add(1, Ordering::Relaxed);
                        return Err(InsertError::Full);
                    }
                    sh.insert(hf, &self.hasher, e);
                    sh.counters.inserted += 1;
                    None
                }
            }
        };
        let old_tk = old.and_then(|o| o.template_key());
        let new_tk = e.template_key();
        if old_tk != new_tk {
            if let Some(t) = old_tk {
                self.adjust_control(&t, false, None);
            }
            if let Some(t) = new_tk {
                self.adjust_control(&t, true, None);
            }
        }
        Ok(old)
    }

    /// A packet of an existing connection: state transition (TCP), expiry refresh. Returns
    /// the updated entry and the transition, or `None` if there is no such entry.
    #[inline]
    pub fn update_on_packet(
        &self,
        key: &ConnKey,
        dir: Direction,
        tcp_flags: u8,
        now: u32,
    ) -> Option<(ConnEntry, StateChange)> {
        let (h1, hf) = self.hasher.fwd(key);
        let mut sh = self.lock(self.shard_of(h1));
        let (_, s) = sh.find(hf, key)?;
        let e = sh.get_mut(s);
        let mut change = e.apply_packet(dir, tcp_flags, now, &self.timeouts);
        change.sync = e.sync_due(&change, now);
        Some((*e, change))
    }

    /// A NAT reply (real server → client): finds the connection through the reverse index and
    /// applies the output-direction transition, in one lock.
    #[inline]
    pub fn update_on_reply(
        &self,
        key: &ReplyKey,
        tcp_flags: u8,
        now: u32,
    ) -> Option<(ConnEntry, StateChange)> {
        let (h1, hr) = self.hasher.rev(key);
        let mut sh = self.lock(self.shard_of(h1));
        let (_, s) = sh.find_reply(hr, key)?;
        let e = sh.get_mut(s);
        let mut change = e.apply_packet(Direction::Output, tcp_flags, now, &self.timeouts);
        change.sync = e.sync_due(&change, now);
        Some((*e, change))
    }

    /// Sets a connection's protocol state directly (SCTP, whose chunk-driven machine lives in
    /// the engine for now; tests), with that state's timeout. `None` if the entry is missing,
    /// is a template, or `state` is out of range for its protocol.
    pub fn set_state(
        &self,
        key: &ConnKey,
        state: u8,
        now: u32,
    ) -> Option<(ConnEntry, StateChange)> {
        if key.is_template() || state >= state_count(key.proto, false) {
            return None;
        }
        let (h1, hf) = self.hasher.fwd(key);
        let mut sh = self.lock(self.shard_of(h1));
        let (_, s) = sh.find(hf, key)?;
        let e = sh.get_mut(s);
        let mut change = e.apply_state(state, now, &self.timeouts);
        change.sync = e.sync_due(&change, now);
        Some((*e, change))
    }

    /// Removes one entry (connection or template) and returns it.
    pub fn remove(&self, key: &ConnKey) -> Option<ConnEntry> {
        let (h1, hf) = self.hasher.fwd(key);
        let removed = {
            let mut sh = self.lock(self.shard_of(h1));
            let (pos, s) = sh.find(hf, key)?;
            let e = sh.remove(pos, s, &self.hasher);
            sh.counters.removed += 1;
            e
        };
        self.len.fetch_sub(1, Ordering::Relaxed);
        if let Some(tk) = removed.template_key() {
            self.adjust_control(&tk, false, None);
        }
        Some(removed)
    }

    /// Removes every entry `pred` selects (flush, `expire_nodest_conn`), shard by shard,
    /// appending them to `out`. Returns how many were removed.
    pub fn remove_where(
        &self,
        mut pred: impl FnMut(&ConnEntry) -> bool,
        out: &mut Vec<ConnEntry>,
    ) -> usize {
        let mut total = 0;
        for i in 0..self.shards.len() {
            let start = out.len();
            let n = self.lock(i).remove_where(&mut pred, &self.hasher, out);
            total += n;
            self.after_removal(&out[start..]);
        }
        total
    }

    /// Bookkeeping after entries left a shard (lock released): global count and templates.
    fn after_removal(&self, removed: &[ConnEntry]) {
        if removed.is_empty() {
            return;
        }
        self.len.fetch_sub(removed.len(), Ordering::Relaxed);
        for e in removed {
            if let Some(tk) = e.template_key() {
                self.adjust_control(&tk, false, None);
            }
        }
    }

    /// Expires entries whose deadline passed (`now > expires`), scanning at most `budget`
    /// slots, continuing where the previous call stopped (round-robin over shards, at most one
    /// full pass per call). Removed entries are appended to `out` so the caller can adjust
    /// real-server counters and tell the sync stream; reuse `out` between calls.
    pub fn expire(&self, now: u32, budget: usize, out: &mut Vec<ConnEntry>) -> SweepReport {
        let n = self.shards.len();
        let recheck = self.timeouts.template_recheck();
        let mut report = SweepReport::default();
        let mut finished_shards = 0;
        while report.scanned < budget && finished_shards < n {
            let i = self.sweep_shard.load(Ordering::Relaxed) % n;
            let start = out.len();
            let (scanned, wrapped) = {
                let mut sh = self.lock(i);
                let postponed_before = sh.counters.postponed;
                let chunk = (budget - report.scanned).min(SWEEP_CHUNK);
                let r = sh.sweep(now, chunk, recheck, &self.hasher, out);
                report.postponed += (sh.counters.postponed - postponed_before) as usize;
                r
            };
            report.scanned += scanned;
            report.expired += out.len() - start;
            self.after_removal(&out[start..]);
            if wrapped {
                self.sweep_shard.store((i + 1) % n, Ordering::Relaxed);
                finished_shards += 1;
            }
        }
        report
    }

    /// Copies up to `max` live entries into `out`, continuing from `cursor`; one shard lock at
    /// a time, each held for a bounded chunk. Returns true once the whole table was walked.
    pub fn snapshot_chunk(
        &self,
        cursor: &mut SnapshotCursor,
        max: usize,
        out: &mut Vec<ConnEntry>,
    ) -> bool {
        let n = self.shards.len();
        let mut copied = 0;
        while cursor.shard < n && copied < max {
            let before = out.len();
            let (next, end) = self.lock(cursor.shard).copy_live(
                cursor.pos,
                max - copied,
                (max - copied).max(SWEEP_CHUNK).saturating_mul(4),
                out,
            );
            copied += out.len() - before;
            if end {
                cursor.shard += 1;
                cursor.pos = 0;
            } else {
                cursor.pos = next;
            }
        }
        cursor.shard >= n
    }

    /// Calls `f` for every live entry, one shard lock at a time. `f` runs under the shard's
    /// lock: keep it short and do not call back into the table (prefer `snapshot_chunk`).
    pub fn for_each(&self, mut f: impl FnMut(&ConnEntry)) {
        for i in 0..self.shards.len() {
            self.lock(i).for_each(&mut f);
        }
    }

    pub fn stats(&self) -> TableStats {
        let mut st = TableStats {
            refused_full: self.refused_full.load(Ordering::Relaxed),
            ..TableStats::default()
        };
        for i in 0..self.shards.len() {
            let sh = self.lock(i);
            st.entries += sh.len;
            st.templates += sh.templates;
            st.nat_entries += sh.nat_len;
            st.inserted += sh.counters.inserted;
            st.removed += sh.counters.removed;
            st.expired += sh.counters.expired;
            st.templates_postponed += sh.counters.postponed;
        }
        st
    }
}
