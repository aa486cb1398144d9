//! A durable, crash-safe Raft log: [`LogStore`] implements openraft's [`RaftLogStorage`] and
//! [`LogReader`] implements [`RaftLogReader`].
//!
//! # On-disk layout
//!
//! Everything lives in the directory given to [`LogStore::open`]:
//!
//! | file             | content                                                                 |
//! |------------------|-------------------------------------------------------------------------|
//! | `LOCK`           | empty; held with `flock(LOCK_EX)` while a store is open                 |
//! | `log.seg`        | 8-byte magic `FLCRLOG1`, then records (below), append-only              |
//! | `vote.meta`      | one record: the last saved vote                                         |
//! | `purged.meta`    | one record: the last purged log id                                      |
//! | `committed.meta` | one record: the last saved committed log id (`Option`)                  |
//! | `*.tmp`          | left over by a crash during an atomic replace; removed by `open`        |
//!
//! A record is `[u32 LE payload length][u32 LE crc32 of payload][payload]`, the payload being
//! the `serde_json` encoding of the value (an entry, in `log.seg`). JSON because openraft's
//! types use `skip_serializing_if`, which breaks non-self-describing formats.
//!
//! # Durability
//!
//! - `append` writes the whole batch with one positional write, `fdatasync`s, and only then
//!   reports the [`IOFlushed`] callback.
//! - The `.meta` files are replaced atomically: write `<name>.tmp`, fsync it, rename it over,
//!   fsync the directory. `save_vote`, `save_committed` and `purge` return after that.
//! - `truncate_after` is an `ftruncate` at a record boundary plus fsync.
//! - `purge` records the purged id first; the file keeps the purged records until the
//!   purged prefix is large (see [`LogStoreOptions::compact_min_bytes`]), then the surviving
//!   records are copied to `log.seg.tmp`, fsynced, renamed over `log.seg` and the directory is
//!   fsynced. When nothing survives a purge the file is simply cut back to its header.
//!
//! Every write runs on tokio's blocking pool under one mutex, in call order, so vote and log
//! I/O are serialised as openraft requires. After any write I/O error the store refuses
//! further writes (the state of the file is unknown, and after a failed fsync the kernel may
//! have dropped the dirty pages); reopen it.
//!
//! # Recovery
//!
//! `open` scans `log.seg`. A bad record (short header, short payload, zero length, crc
//! mismatch, payload that does not decode) is a torn tail if nothing valid follows it: it is
//! logged and cut off, and everything before it is kept. If a valid record *does* follow it,
//! or if the bad record would hold an index at or below the saved committed index, the damage
//! is not a torn write and `open` fails with `InvalidData` rather than drop acknowledged
//! entries. (One exception: damage confined to records that are already purged is skipped,
//! and the file is rewritten without it.) Indexes must be contiguous; a gap or an index
//! going backwards is `InvalidData`. The `.meta` files are only ever replaced by rename, so a
//! damaged one is real corruption and is `InvalidData` too (silently forgetting a vote could
//! allow a double vote).
//!
//! Known limit: a crash can only tear the last, unacknowledged append, and the tear is told
//! apart from mid-file damage by "nothing valid follows it". If a filesystem persisted a
//! later page of that batch but not an earlier one, `open` errs on the safe side and refuses
//! to start; remove the directory and let the node catch up from the cluster.
//!
//! All live entries are cached in memory (this is a configuration log), so reads never touch
//! the disk.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::fmt;
use std::fmt::Debug;
use std::fs;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::io::BufReader;
use std::io::Read;
use std::io::Seek;
use std::io::SeekFrom;
use std::io::Write;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::RaftTypeConfig;
use openraft::alias::LogIdOf;
use openraft::alias::VoteOf;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[cfg(test)]
mod tests;

const LOG_FILE: &str = "log.seg";
const VOTE_FILE: &str = "vote.meta";
const PURGED_FILE: &str = "purged.meta";
const COMMITTED_FILE: &str = "committed.meta";
const LOCK_FILE: &str = "LOCK";
const TMP_SUFFIX: &str = ".tmp";

/// First bytes of `log.seg`; the trailing digit is the format version.
const MAGIC: &[u8; 8] = b"FLCRLOG1";
/// Length of the file header, i.e. the offset of the first record.
const FILE_HEADER_LEN: u64 = MAGIC.len() as u64;
/// Length of a record header: payload length + crc32.
const RECORD_HEADER_LEN: usize = 8;

/// Tuning knobs; [`LogStoreOptions::default`] is what [`LogStore::open`] uses.
#[derive(Debug, Clone)]
pub struct LogStoreOptions {
    /// After a purge, rewrite `log.seg` without the purged records once they take at least
    /// this many bytes *and* at least half of the file. Default 4 MiB.
    pub compact_min_bytes: u64,
    /// Soft byte budget (sum of serialised entry sizes) for one
    /// `RaftLogReader::limited_get_log_entries` call, which is what openraft's replication
    /// uses to build an AppendEntries batch. At least one entry is always returned, so a
    /// single larger entry still goes out alone. Default 2 MiB.
    pub max_read_batch_bytes: u64,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        Self {
            compact_min_bytes: 4 << 20,
            max_read_batch_bytes: 2 << 20,
        }
    }
}

/// The durable Raft log store. Owns the write side; hand out readers with
/// `RaftLogStorage::get_log_reader`.
pub struct LogStore<C: RaftTypeConfig> {
    shared: Arc<Shared<C>>,
}

/// A cheap, cloneable read handle sharing the store's state; sees every write as soon as the
/// writing call returns.
pub struct LogReader<C: RaftTypeConfig> {
    shared: Arc<Shared<C>>,
}

impl<C: RaftTypeConfig> Clone for LogReader<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<C: RaftTypeConfig> fmt::Debug for LogStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl<C: RaftTypeConfig> fmt::Debug for LogReader<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogReader")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

struct Shared<C: RaftTypeConfig> {
    dir: PathBuf,
    max_read_batch_bytes: u64,
    /// The write side. Locked only inside blocking tasks (and `open`), first.
    disk: Mutex<Disk>,
    /// What readers see. Locked briefly, after `disk` when both are needed.
    mem: Mutex<Mem<C>>,
}

struct Mem<C: RaftTypeConfig> {
    /// Live (not purged) entries, by index; contiguous.
    entries: BTreeMap<u64, Cached<C::Entry>>,
    vote: Option<VoteOf<C>>,
    committed: Option<LogIdOf<C>>,
    purged: Option<LogIdOf<C>>,
}

struct Cached<E> {
    entry: E,
    /// Serialised payload size, for the read batch budget.
    bytes: u64,
}

impl<C: RaftTypeConfig> Mem<C> {
    fn last_log_id(&self) -> Option<LogIdOf<C>> {
        match self.entries.last_key_value() {
            Some((_, c)) => Some(c.entry.log_id()),
            None => self.purged.clone(),
        }
    }

    /// The index the next appended entry must have, if anything constrains it.
    fn next_index(&self) -> Option<u64> {
        match self.entries.last_key_value() {
            Some((i, _)) => Some(i + 1),
            None => self.purged.as_ref().map(|p| p.index + 1),
        }
    }
}

/// The write side: the open log file and where each record in it starts.
struct Disk {
    dir: PathBuf,
    dir_fd: File,
    log: File,
    /// Log index of the record starting at `offsets[0]`.
    first_index: u64,
    /// Start offset of every record in `log.seg`, in index order. May include purged records
    /// that have not been compacted away yet; never a record that `mem` does not know about
    /// unless it is purged.
    offsets: VecDeque<u64>,
    /// End of the last record == the file length.
    len: u64,
    /// Set by the first failed write; all later writes fail with it.
    poisoned: Option<String>,
    compact_min_bytes: u64,
    /// Holds the directory lock for the store's lifetime.
    _lock: File,
}

impl Disk {
    fn check(&self) -> io::Result<()> {
        match &self.poisoned {
            None => Ok(()),
            Some(why) => Err(io::Error::other(format!(
                "raft log store {} refuses writes after an earlier I/O failure ({why}); restart to recover",
                self.dir.display()
            ))),
        }
    }

    /// Run a write, poisoning the store if it fails.
    fn io<T>(&mut self, what: &str, f: impl FnOnce(&mut Disk) -> io::Result<T>) -> io::Result<T> {
        self.check()?;
        let res = f(self);
        if let Err(e) = &res {
            tracing::error!(dir = %self.dir.display(), error = %e, "raft log store: {what} failed; refusing further writes");
            self.poisoned = Some(format!("{what}: {e}"));
        }
        res
    }

    fn last_index(&self) -> Option<u64> {
        (!self.offsets.is_empty()).then(|| self.first_index + self.offsets.len() as u64 - 1)
    }

    fn offset_of(&self, index: u64) -> io::Result<u64> {
        index
            .checked_sub(self.first_index)
            .and_then(|i| self.offsets.get(usize::try_from(i).ok()?).copied())
            .ok_or_else(|| {
                io::Error::other(format!(
                    "raft log store: no record for index {index} in {LOG_FILE}"
                ))
            })
    }

    /// Cut the file back to its header (every record in it is purged or truncated).
    fn reset(&mut self) -> io::Result<()> {
        self.io("reset log file", |d| {
            d.log.set_len(FILE_HEADER_LEN)?;
            d.log.sync_all()
        })?;
        self.offsets.clear();
        self.len = FILE_HEADER_LEN;
        Ok(())
    }

    /// Replace `name` atomically and durably with one record holding `payload`.
    fn write_meta(&mut self, name: &str, payload: &[u8]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(RECORD_HEADER_LEN + payload.len());
        push_record(&mut buf, payload)?;
        // `write_atomic` uses the same `<name>.tmp` that `open` cleans up after a crash.
        self.io(name, |d| {
            crate::fsutil::write_atomic(&d.dir.join(name), &buf)
        })
    }

    /// Rewrite the file without the records before `keep_from` if they are worth it.
    fn maybe_compact(&mut self, keep_from: u64) -> io::Result<()> {
        if self.offsets.is_empty() || keep_from <= self.first_index {
            return Ok(());
        }
        let cut = self.offset_of(keep_from)?;
        let garbage = cut - FILE_HEADER_LEN;
        if garbage < self.compact_min_bytes || garbage < (self.len - FILE_HEADER_LEN) / 2 {
            return Ok(());
        }
        self.compact(keep_from, cut)
    }

    fn compact(&mut self, keep_from: u64, cut: u64) -> io::Result<()> {
        self.check()?;
        let tmp_path = self.dir.join(format!("{LOG_FILE}{TMP_SUFFIX}"));
        // Until the rename nothing has changed: on failure, keep using the old file.
        let copied = (|| -> io::Result<File> {
            let mut tmp = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp_path)?;
            tmp.write_all(MAGIC)?;
            copy_range(&self.log, cut, self.len, &mut tmp)?;
            tmp.sync_all()?;
            Ok(tmp)
        })();
        let new_log = match copied {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "raft log store: compaction failed; keeping the uncompacted log");
                let _ = fs::remove_file(&tmp_path);
                return Ok(());
            }
        };
        self.io("compact log file", |d| {
            fs::rename(&tmp_path, d.dir.join(LOG_FILE))?;
            d.dir_fd.sync_all()
        })?;
        let shift = cut - FILE_HEADER_LEN;
        let dropped = (keep_from - self.first_index) as usize;
        self.log = new_log;
        self.offsets.drain(..dropped);
        for off in &mut self.offsets {
            *off -= shift;
        }
        self.first_index = keep_from;
        self.len -= shift;
        tracing::info!(
            dir = %self.dir.display(),
            dropped_records = dropped,
            dropped_bytes = shift,
            "raft log store: compacted purged prefix"
        );
        Ok(())
    }
}

fn lock<'a, T>(m: &'a Mutex<T>, what: &str) -> io::Result<MutexGuard<'a, T>> {
    m.lock()
        .map_err(|_| io::Error::other(format!("raft log store: {what} lock poisoned by a panic")))
}

impl<C> Shared<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone + Serialize + DeserializeOwned,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    fn disk(&self) -> io::Result<MutexGuard<'_, Disk>> {
        lock(&self.disk, "disk")
    }

    fn mem(&self) -> io::Result<MutexGuard<'_, Mem<C>>> {
        lock(&self.mem, "memory")
    }

    fn read_range(&self, range: impl RangeBounds<u64>, budget: u64) -> io::Result<Vec<C::Entry>> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => e.saturating_add(1),
            Bound::Excluded(e) => *e,
            Bound::Unbounded => u64::MAX,
        };
        if start >= end {
            return Ok(Vec::new());
        }
        let mem = self.mem()?;
        let mut out = Vec::new();
        let mut used = 0u64;
        for c in mem.entries.range(start..end).map(|(_, c)| c) {
            if !out.is_empty() && used.saturating_add(c.bytes) > budget {
                break;
            }
            used = used.saturating_add(c.bytes);
            out.push(c.entry.clone());
        }
        Ok(out)
    }

    fn append(&self, entries: Vec<C::Entry>) -> io::Result<()> {
        let mut disk = self.disk()?;
        disk.check()?;
        let Some(first) = entries.first().map(|e| e.index()) else {
            return Ok(());
        };
        for (i, e) in entries.iter().enumerate() {
            if e.index() != first + i as u64 {
                return Err(invalid_input(format!(
                    "append: entries are not contiguous: {} follows {first} at position {i}",
                    e.index()
                )));
            }
        }

        // Encode the batch: records back to back, each one's offset relative to the batch.
        let mut buf = Vec::new();
        let mut records = Vec::with_capacity(entries.len());
        for e in &entries {
            let at = buf.len();
            buf.extend_from_slice(&[0; RECORD_HEADER_LEN]);
            serde_json::to_writer(&mut buf, e).map_err(|err| {
                invalid_input(format!("append: encode entry {}: {err}", e.index()))
            })?;
            let payload_len = buf.len() - at - RECORD_HEADER_LEN;
            let len = u32::try_from(payload_len).map_err(|_| {
                invalid_input(format!("append: entry {} is larger than 4 GiB", e.index()))
            })?;
            let crc = crc32fast::hash(&buf[at + RECORD_HEADER_LEN..]);
            buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
            buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
            records.push((at as u64, payload_len as u64));
        }

        let (next, purged) = {
            let mem = self.mem()?;
            (mem.next_index(), mem.purged.as_ref().map(|p| p.index))
        };
        if let Some(p) = purged
            && first <= p
        {
            return Err(invalid_input(format!(
                "append: entry {first} is at or below the purged index {p}"
            )));
        }
        match next {
            Some(n) if first > n => {
                return Err(invalid_input(format!(
                    "append: entry {first} would leave a hole; the next index is {n}"
                )));
            }
            Some(n) if first < n => {
                // Raft semantics: a new entry replaces the conflicting suffix.
                tracing::debug!(
                    first,
                    next = n,
                    "raft log store: append overwrites a suffix; truncating first"
                );
                self.truncate_from(&mut disk, first)?;
            }
            _ => {}
        }
        if let Some(last) = disk.last_index()
            && last + 1 != first
        {
            return Err(io::Error::other(format!(
                "raft log store: internal error: {LOG_FILE} ends at index {last} but appending {first}"
            )));
        }

        let start = disk.len;
        disk.io("append", |d| {
            d.log.write_all_at(&buf, start)?;
            d.log.sync_data()
        })?;

        if disk.offsets.is_empty() {
            disk.first_index = first;
        }
        disk.offsets
            .extend(records.iter().map(|(at, _)| start + at));
        disk.len = start + buf.len() as u64;

        let mut mem = self.mem()?;
        for (entry, (_, bytes)) in entries.into_iter().zip(records) {
            mem.entries.insert(entry.index(), Cached { entry, bytes });
        }
        Ok(())
    }

    /// Remove every entry with index >= `from`, on disk then in memory.
    fn truncate_from(&self, disk: &mut Disk, from: u64) -> io::Result<()> {
        let (any_removed, any_kept) = {
            let mem = self.mem()?;
            (
                mem.entries.range(from..).next().is_some(),
                mem.entries.range(..from).next().is_some(),
            )
        };
        if !any_removed {
            return Ok(());
        }
        if any_kept {
            let cut = disk.offset_of(from)?;
            disk.io("truncate", |d| {
                d.log.set_len(cut)?;
                d.log.sync_all()
            })?;
            let keep = (from - disk.first_index) as usize;
            disk.offsets.truncate(keep);
            disk.len = cut;
        } else {
            // Nothing live survives: drop any purged leftovers too.
            disk.reset()?;
        }
        let mut mem = self.mem()?;
        mem.entries.split_off(&from);
        Ok(())
    }

    fn truncate_after(&self, last: Option<LogIdOf<C>>) -> io::Result<()> {
        let mut disk = self.disk()?;
        disk.check()?;
        let from = last.map_or(0, |l| l.index.saturating_add(1));
        self.truncate_from(&mut disk, from)
    }

    fn purge(&self, upto: LogIdOf<C>) -> io::Result<()> {
        let mut disk = self.disk()?;
        disk.check()?;
        if let Some(p) = &self.mem()?.purged
            && p.index >= upto.index
        {
            return Ok(());
        }
        let payload = encode_json(&upto, "purged log id")?;
        disk.write_meta(PURGED_FILE, &payload)?;

        let first_kept = {
            let mut mem = self.mem()?;
            let kept = mem.entries.split_off(&upto.index.saturating_add(1));
            mem.entries = kept;
            mem.purged = Some(upto);
            mem.entries.first_key_value().map(|(i, _)| *i)
        };
        match first_kept {
            None if !disk.offsets.is_empty() => disk.reset(),
            None => Ok(()),
            Some(first) => disk.maybe_compact(first),
        }
    }

    fn save_vote(&self, vote: VoteOf<C>) -> io::Result<()> {
        let mut disk = self.disk()?;
        let payload = encode_json(&vote, "vote")?;
        disk.write_meta(VOTE_FILE, &payload)?;
        self.mem()?.vote = Some(vote);
        Ok(())
    }

    fn save_committed(&self, committed: Option<LogIdOf<C>>) -> io::Result<()> {
        let mut disk = self.disk()?;
        if self.mem()?.committed == committed {
            return Ok(());
        }
        let payload = encode_json(&committed, "committed log id")?;
        disk.write_meta(COMMITTED_FILE, &payload)?;
        self.mem()?.committed = committed;
        Ok(())
    }
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone + Serialize + DeserializeOwned,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    /// Open (creating if needed) the store in `dir` with default options.
    ///
    /// Blocking: it reads the whole log. Fails with `WouldBlock` if the directory is already
    /// open (another process, or a [`LogStore`]/[`LogReader`] here that is still alive), and
    /// with `InvalidData` if the files are corrupt in a way that is not a torn tail.
    pub fn open(dir: &Path) -> Result<Self, io::Error> {
        Self::open_with(dir, LogStoreOptions::default())
    }

    /// [`LogStore::open`] with explicit options.
    pub fn open_with(dir: &Path, opts: LogStoreOptions) -> Result<Self, io::Error> {
        create_dir_durable(dir)?;
        let dir_fd = File::open(dir)?;
        let lock = lock_dir(dir)?;
        remove_leftover_tmp(dir)?;

        let vote = read_meta::<VoteOf<C>>(dir, VOTE_FILE)?;
        let purged = read_meta::<LogIdOf<C>>(dir, PURGED_FILE)?;
        let committed = read_meta::<Option<LogIdOf<C>>>(dir, COMMITTED_FILE)?.flatten();

        let log_path = dir.join(LOG_FILE);
        let log = open_or_create_log(dir, &dir_fd)?;
        let scan = scan_log::<C>(
            &log,
            &log_path,
            purged.as_ref().map(|p| p.index),
            committed.as_ref().map(|c| c.index),
        )?;

        let mut disk = Disk {
            dir: dir.to_path_buf(),
            dir_fd,
            log,
            first_index: scan.first_index,
            offsets: scan.offsets,
            len: scan.len,
            poisoned: None,
            compact_min_bytes: opts.compact_min_bytes,
            _lock: lock,
        };

        let mut entries = BTreeMap::new();
        for (entry, bytes) in scan.entries {
            if purged.as_ref().is_some_and(|p| entry.index() <= p.index) {
                continue;
            }
            entries.insert(entry.index(), Cached { entry, bytes });
        }
        if let (Some(p), Some((first, _))) = (&purged, entries.first_key_value())
            && *first != p.index + 1
        {
            tracing::warn!(
                file = %log_path.display(),
                purged = %p,
                first_entry = first,
                "raft log store: the log does not start right after the purged log id"
            );
        }
        match entries.first_key_value() {
            None if !disk.offsets.is_empty() || scan.skipped_damage => disk.reset()?,
            None => {}
            Some((&first, _)) if scan.skipped_damage => {
                let cut = disk.offset_of(first)?;
                disk.compact(first, cut)?;
            }
            Some((&first, _)) => disk.maybe_compact(first)?,
        }

        tracing::info!(
            dir = %dir.display(),
            entries = entries.len(),
            first = entries.first_key_value().map(|(i, _)| *i),
            last = entries.last_key_value().map(|(i, _)| *i),
            "raft log store opened"
        );

        Ok(Self {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                max_read_batch_bytes: opts.max_read_batch_bytes,
                disk: Mutex::new(disk),
                mem: Mutex::new(Mem {
                    entries,
                    vote,
                    committed,
                    purged,
                }),
            }),
        })
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Run `f` on tokio's blocking pool. `f` takes the disk lock itself, so writes stay
    /// serialised and complete even if this future is dropped.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared<C>) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| io::Error::other(format!("raft log store: I/O task failed: {e}")))?
    }
}

impl<C> RaftLogReader<C> for LogReader<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone + Serialize + DeserializeOwned,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        self.shared.read_range(range, u64::MAX)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        Ok(self.shared.mem()?.vote.clone())
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<C::Entry>, io::Error> {
        self.shared
            .read_range(start..end, self.shared.max_read_batch_bytes)
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone + Serialize + DeserializeOwned,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    type LogReader = LogReader<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let mem = self.shared.mem()?;
        Ok(LogState {
            last_purged_log_id: mem.purged.clone(),
            last_log_id: mem.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        let vote = vote.clone();
        self.blocking(move |s| s.save_vote(vote)).await
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        self.blocking(move |s| s.save_committed(committed)).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.shared.mem()?.committed.clone())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<C::Entry> = entries.into_iter().collect();
        self.blocking(move |s| {
            let res = s.append(entries);
            // Reported from the blocking task, i.e. only after `sync_data` returned.
            match &res {
                Ok(()) => callback.io_completed(Ok(())),
                Err(e) => callback.io_completed(Err(io::Error::new(e.kind(), e.to_string()))),
            }
            res
        })
        .await
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        self.blocking(move |s| s.truncate_after(last_log_id)).await
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        self.blocking(move |s| s.purge(log_id)).await
    }
}

// ---------------------------------------------------------------------------------------------
// Files

fn invalid_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn encode_json<T: Serialize>(value: &T, what: &str) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| invalid_input(format!("encode {what}: {e}")))
}

/// Append one `[len][crc][payload]` record to `buf`.
fn push_record(buf: &mut Vec<u8>, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| invalid_input("record larger than 4 GiB".into()))?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
    Ok(())
}

/// Create `dir` (and missing parents) if needed, making each new directory entry durable.
fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Take an exclusive `flock` on `dir/LOCK`, so two stores never write one directory.
fn lock_dir(dir: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))?;
    // SAFETY: flock only reads the (valid, owned) descriptor; no memory is involved.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "raft log store {} is already open (another process, or a store/reader not yet dropped)",
                    dir.display()
                ),
            ));
        }
        return Err(e);
    }
    Ok(f)
}

/// A `<name>.tmp` is what a crash during an atomic replace leaves; the real file is intact.
fn remove_leftover_tmp(dir: &Path) -> io::Result<()> {
    for name in [LOG_FILE, VOTE_FILE, PURGED_FILE, COMMITTED_FILE] {
        let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
        match fs::remove_file(&tmp) {
            Ok(()) => {
                tracing::warn!(file = %tmp.display(), "raft log store: removed leftover temp file")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Read a `.meta` file: `None` if absent; `InvalidData` if it is not exactly one valid record
/// (it is only ever replaced by rename, so a damaged one is real corruption, and silently
/// forgetting e.g. a vote could allow a double vote).
fn read_meta<T: DeserializeOwned>(dir: &Path, name: &str) -> io::Result<Option<T>> {
    let path = dir.join(name);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |why: &str| invalid_data(format!("{}: {why}", path.display()));
    if bytes.len() < RECORD_HEADER_LEN {
        return Err(bad("file is shorter than a record header"));
    }
    let (len, crc) = record_header(&bytes[..RECORD_HEADER_LEN]);
    let payload = &bytes[RECORD_HEADER_LEN..];
    if len as usize != payload.len() {
        return Err(bad("record length does not match the file size"));
    }
    if crc32fast::hash(payload) != crc {
        return Err(bad("checksum mismatch"));
    }
    serde_json::from_slice(payload)
        .map(Some)
        .map_err(|e| bad(&format!("cannot decode: {e}")))
}

fn record_header(h: &[u8]) -> (u32, u32) {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    (len, crc)
}

/// Open `log.seg`, creating it (atomically, with its header) if it does not exist.
fn open_or_create_log(dir: &Path, dir_fd: &File) -> io::Result<File> {
    let path = dir.join(LOG_FILE);
    if !path.exists() {
        let tmp = dir.join(format!("{LOG_FILE}{TMP_SUFFIX}"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(MAGIC)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &path)?;
        dir_fd.sync_all()?;
    }
    let log = OpenOptions::new().read(true).write(true).open(&path)?;
    let mut magic = [0u8; MAGIC.len()];
    if log.metadata()?.len() < FILE_HEADER_LEN || {
        log.read_exact_at(&mut magic, 0)?;
        &magic != MAGIC
    } {
        return Err(invalid_data(format!(
            "{}: not a Fulcrum raft log (bad or missing header)",
            path.display()
        )));
    }
    Ok(log)
}

/// Copy `[from, to)` of `src` to the current position of `dst`.
fn copy_range(src: &File, from: u64, to: u64, dst: &mut File) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = from;
    while pos < to {
        let n = usize::try_from(to - pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        src.read_exact_at(&mut buf[..n], pos)?;
        dst.write_all(&buf[..n])?;
        pos += n as u64;
    }
    Ok(())
}

struct Scan<E> {
    entries: Vec<(E, u64)>,
    first_index: u64,
    offsets: VecDeque<u64>,
    len: u64,
    /// A damaged stretch of purged records was skipped; `offsets[0]` is past it.
    skipped_damage: bool,
}

/// Read every record of `log`, cutting off a torn tail (see the module docs).
fn scan_log<C>(
    log: &File,
    path: &Path,
    purged: Option<u64>,
    committed: Option<u64>,
) -> io::Result<Scan<C::Entry>>
where
    C: RaftTypeConfig,
    C::Entry: DeserializeOwned,
{
    let file_len = log.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, log);
    let mut scan = Scan {
        entries: Vec::new(),
        first_index: 0,
        offsets: VecDeque::new(),
        len: FILE_HEADER_LEN,
        skipped_damage: false,
    };
    let mut pos = FILE_HEADER_LEN;
    let mut prev: Option<u64> = None;

    loop {
        reader.seek(SeekFrom::Start(pos))?;
        let bad: String = loop {
            let remaining = file_len - pos;
            if remaining == 0 {
                return Ok(scan);
            }
            if remaining < RECORD_HEADER_LEN as u64 {
                break format!("short record header ({remaining} bytes)");
            }
            let mut header = [0u8; RECORD_HEADER_LEN];
            reader.read_exact(&mut header)?;
            let (len, crc) = record_header(&header);
            if len == 0 {
                break "zero-length record".into();
            }
            if u64::from(len) > remaining - RECORD_HEADER_LEN as u64 {
                break format!(
                    "record of {len} bytes extends past the end of the file ({} bytes left)",
                    remaining - RECORD_HEADER_LEN as u64
                );
            }
            let mut payload = vec![0u8; len as usize];
            reader.read_exact(&mut payload)?;
            if crc32fast::hash(&payload) != crc {
                break "checksum mismatch".into();
            }
            let entry: C::Entry = match serde_json::from_slice(&payload) {
                Ok(e) => e,
                Err(e) => break format!("undecodable entry: {e}"),
            };
            let index = entry.index();
            if let Some(p) = prev
                && index != p + 1
            {
                return Err(invalid_data(format!(
                    "{}: record at offset {pos} has log index {index} but follows index {p}: \
                     the log is not contiguous",
                    path.display()
                )));
            }
            if prev.is_none() {
                scan.first_index = index;
            }
            prev = Some(index);
            scan.offsets.push_back(pos);
            scan.entries.push((entry, u64::from(len)));
            pos += RECORD_HEADER_LEN as u64 + u64::from(len);
            scan.len = pos;
        };

        // A bad record at `pos`, which would hold index `prev + 1`.
        let Some((at, index)) = find_record_after::<C>(log, pos + 1, file_len)? else {
            break cut_torn_tail(log, path, pos, file_len, prev, committed, &bad).map(|()| scan);
        };
        // Something valid follows, so this is not a torn write. Harmless only if every record
        // skipped over is purged anyway: then carry on from the valid one.
        let skipped_all_purged = purged.is_some_and(|p| index <= p + 1);
        if !skipped_all_purged || prev.is_some_and(|p| index <= p) {
            return Err(invalid_data(format!(
                "{}: corrupt record at offset {pos} ({bad}) is followed by a valid record at \
                 offset {at} (log index {index}); refusing to drop acknowledged entries",
                path.display()
            )));
        }
        tracing::warn!(
            file = %path.display(),
            offset = pos,
            resume_offset = at,
            resume_index = index,
            reason = %bad,
            "raft log store: skipping damaged purged records"
        );
        scan.entries.clear();
        scan.offsets.clear();
        scan.skipped_damage = true;
        prev = None;
        pos = at;
    }
}

/// Cut the file at `pos`, where a bad record with nothing valid after it starts. Only a torn
/// write may be cut off, and a torn write is the tail of the last, unacknowledged append: it
/// cannot hold a committed entry (committed is saved only after the append's fsync).
fn cut_torn_tail(
    log: &File,
    path: &Path,
    pos: u64,
    file_len: u64,
    prev: Option<u64>,
    committed: Option<u64>,
    bad: &str,
) -> io::Result<()> {
    if let (Some(p), Some(c)) = (prev, committed)
        && p < c
    {
        return Err(invalid_data(format!(
            "{}: corrupt record at offset {pos} ({bad}) holds log index {} but the committed \
             index is {c}; refusing to drop committed entries",
            path.display(),
            p + 1
        )));
    }
    tracing::warn!(
        file = %path.display(),
        offset = pos,
        dropped_bytes = file_len - pos,
        last_good_index = prev,
        reason = %bad,
        "raft log store: discarding torn tail of the log"
    );
    log.set_len(pos)?;
    log.sync_all()
}

/// The first offset in `[from, to)` of `log` where a complete, valid, decodable record
/// starts, with its log index.
fn find_record_after<C>(log: &File, from: u64, to: u64) -> io::Result<Option<(u64, u64)>>
where
    C: RaftTypeConfig,
    C::Entry: DeserializeOwned,
{
    if from >= to {
        return Ok(None);
    }
    let mut region =
        vec![0u8; usize::try_from(to - from).map_err(|_| io::Error::other("log tail too large"))?];
    log.read_exact_at(&mut region, from)?;
    let mut p = 0usize;
    while p + RECORD_HEADER_LEN < region.len() {
        let (len, crc) = record_header(&region[p..p + RECORD_HEADER_LEN]);
        let start = p + RECORD_HEADER_LEN;
        if len != 0
            && (len as usize) <= region.len() - start
            && crc32fast::hash(&region[start..start + len as usize]) == crc
            && let Ok(entry) =
                serde_json::from_slice::<C::Entry>(&region[start..start + len as usize])
        {
            return Ok(Some((from + p as u64, entry.index())));
        }
        p += 1;
    }
    Ok(None)
}
