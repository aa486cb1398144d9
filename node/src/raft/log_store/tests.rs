//! Tests for the durable log store: openraft's conformance suite, torn-tail recovery,
//! mid-file corruption, vote/purge/truncate persistence and compaction.

use std::fmt;
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;

use futures::Stream;
use futures::TryStreamExt;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::RaftSnapshotBuilder;
use openraft::RaftTypeConfig;
use openraft::StorageError;
use openraft::alias::EntryOf;
use openraft::alias::LogIdOf;
use openraft::alias::SnapshotMetaOf;
use openraft::alias::SnapshotOf;
use openraft::alias::StoredMembershipOf;
use openraft::alias::VoteOf;
use openraft::entry::RaftEntry;
use openraft::storage::EntryResponder;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftStateMachine;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use openraft::type_config::TypeConfigExt;
use openraft::vote::RaftLeaderIdExt;
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tempfile::TempDir;

use super::COMMITTED_FILE;
use super::FILE_HEADER_LEN;
use super::LOG_FILE;
use super::LogStore;
use super::LogStoreOptions;
use super::MAGIC;
use super::PURGED_FILE;
use super::RECORD_HEADER_LEN;
use super::VOTE_FILE;

// ---------------------------------------------------------------------------------------------
// Type configs: one shaped like Fulcrum's (u64 ids, a serde node struct, a serde command enum,
// standard leader ids), one with openraft's defaults.

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum TestCmd {
    Set { key: String, value: String },
    Del { key: String },
}

impl fmt::Display for TestCmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct TestNode {
    addr: String,
    witness: bool,
}

openraft::declare_raft_types!(
    Tc:
        D = TestCmd,
        R = Option<String>,
        NodeId = u64,
        Node = TestNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

openraft::declare_raft_types!(TcDefault:);

// ---------------------------------------------------------------------------------------------
// A minimal in-memory state machine, only for the conformance suite.

struct SmInner<C: RaftTypeConfig> {
    last_applied: Option<LogIdOf<C>>,
    membership: StoredMembershipOf<C>,
    snapshot: Option<(SnapshotMetaOf<C>, Vec<u8>)>,
}

struct TestSm<C: RaftTypeConfig> {
    inner: Arc<Mutex<SmInner<C>>>,
}

impl<C: RaftTypeConfig> Clone for TestSm<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C: RaftTypeConfig> TestSm<C> {
    fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(SmInner {
                last_applied: None,
                membership: StoredMembershipOf::<C>::default(),
                snapshot: None,
            })),
        }
    }
}

impl<C> RaftSnapshotBuilder<C> for TestSm<C>
where
    C: RaftTypeConfig,
    LogIdOf<C>: Serialize + DeserializeOwned,
    StoredMembershipOf<C>: Serialize + DeserializeOwned,
{
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, Vec<u8>>, io::Error> {
        let mut g = self.inner.lock().unwrap();
        let meta = SnapshotMetaOf::<C> {
            last_log_id: g.last_applied.clone(),
            last_membership: g.membership.clone(),
        };
        let data =
            serde_json::to_vec(&(&g.last_applied, &g.membership)).map_err(io::Error::other)?;
        g.snapshot = Some((meta.clone(), data.clone()));
        Ok(SnapshotOf::<C, Vec<u8>> {
            meta,
            snapshot: data,
        })
    }
}

impl<C> RaftStateMachine<C> for TestSm<C>
where
    C: RaftTypeConfig,
    C::R: Default,
    LogIdOf<C>: Serialize + DeserializeOwned,
    StoredMembershipOf<C>: Serialize + DeserializeOwned,
{
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        let g = self.inner.lock().unwrap();
        Ok((g.last_applied.clone(), g.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            {
                let mut g = self.inner.lock().unwrap();
                g.last_applied = Some(entry.log_id());
                if let Some(m) = entry.get_membership() {
                    g.membership = StoredMembershipOf::<C>::new(Some(entry.log_id()), m);
                }
            }
            if let Some(r) = responder {
                r.send(C::R::default());
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<C>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let (last_applied, membership): (Option<LogIdOf<C>>, StoredMembershipOf<C>) =
            serde_json::from_slice(&snapshot).map_err(io::Error::other)?;
        let mut g = self.inner.lock().unwrap();
        g.last_applied = last_applied;
        g.membership = membership;
        g.snapshot = Some((meta.clone(), snapshot));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, Vec<u8>>>, io::Error> {
        let g = self.inner.lock().unwrap();
        Ok(g.snapshot
            .clone()
            .map(|(meta, snapshot)| SnapshotOf::<C, Vec<u8>> { meta, snapshot }))
    }
}

struct Builder;

impl<C> StoreBuilder<C, LogStore<C>, TestSm<C>, TempDir> for Builder
where
    C: RaftTypeConfig,
    C::R: Default,
    C::Entry: Clone + Serialize + DeserializeOwned,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
    StoredMembershipOf<C>: Serialize + DeserializeOwned,
{
    async fn build(&self) -> Result<(TempDir, LogStore<C>, TestSm<C>), StorageError<C>> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::write(C::err_from_error(&e)))?;
        let store =
            LogStore::open(dir.path()).map_err(|e| StorageError::write(C::err_from_error(&e)))?;
        Ok((dir, store, TestSm::new()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_fulcrum_like_types() {
    Suite::<Tc, LogStore<Tc>, TestSm<Tc>, Builder, TempDir>::test_all(Builder)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_default_types() {
    Suite::<TcDefault, LogStore<TcDefault>, TestSm<TcDefault>, Builder, TempDir>::test_all(Builder)
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn log_id(term: u64, index: u64) -> LogIdOf<Tc> {
    LogIdOf::<Tc>::new(
        <Tc as RaftTypeConfig>::LeaderId::new_committed(term, 1),
        index,
    )
}

fn ent(term: u64, index: u64) -> EntryOf<Tc> {
    EntryOf::<Tc>::new_normal(
        log_id(term, index),
        TestCmd::Set {
            key: format!("key-{index}"),
            value: format!("value-{term}-{index}"),
        },
    )
}

fn ents(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<EntryOf<Tc>> {
    indexes.map(|i| ent(term, i)).collect()
}

fn open(dir: &Path) -> LogStore<Tc> {
    LogStore::open(dir).unwrap()
}

fn open_err(dir: &Path) -> io::Error {
    LogStore::<Tc>::open(dir).unwrap_err()
}

/// Append and wait for the flush callback, asserting it reported success.
async fn append(store: &mut LogStore<Tc>, entries: Vec<EntryOf<Tc>>) -> io::Result<()> {
    let (tx, rx) = Tc::oneshot();
    store.append(entries, IOFlushed::signal(tx)).await?;
    rx.await
        .expect("IOFlushed callback dropped without being called")
}

async fn all(store: &mut LogStore<Tc>) -> Vec<EntryOf<Tc>> {
    store
        .get_log_reader()
        .await
        .try_get_log_entries(..)
        .await
        .unwrap()
}

async fn indexes(store: &mut LogStore<Tc>) -> Vec<u64> {
    all(store).await.iter().map(|e| e.index()).collect()
}

async fn last_log_index(store: &mut LogStore<Tc>) -> Option<u64> {
    store
        .get_log_state()
        .await
        .unwrap()
        .last_log_id
        .map(|l| l.index)
}

/// (offset, payload length) of every record in `log.seg`, parsed independently of the store.
fn records(dir: &Path) -> Vec<(u64, u64)> {
    let bytes = std::fs::read(dir.join(LOG_FILE)).unwrap();
    assert_eq!(&bytes[..MAGIC.len()], MAGIC);
    let mut out = Vec::new();
    let mut p = FILE_HEADER_LEN as usize;
    while p + RECORD_HEADER_LEN <= bytes.len() {
        let len = u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap()) as usize;
        if p + RECORD_HEADER_LEN + len > bytes.len() {
            break;
        }
        out.push((p as u64, len as u64));
        p += RECORD_HEADER_LEN + len;
    }
    out
}

fn log_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(LOG_FILE)).unwrap().len()
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

fn set_len(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn append_bytes(path: &Path, extra: &[u8]) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(extra)
        .unwrap();
}

/// A store holding entries 1..=5 (term 1), closed again.
async fn dir_with_five() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    append(&mut store, ents(1, 1..=3)).await.unwrap();
    append(&mut store, ents(1, 4..=4)).await.unwrap();
    append(&mut store, ents(1, 5..=5)).await.unwrap();
    dir
}

/// After a torn-tail recovery that kept 1..=4: appends continue and survive another reopen.
async fn assert_recovered_to_four(dir: &Path) {
    let mut store = open(dir);
    assert_eq!(indexes(&mut store).await, vec![1, 2, 3, 4]);
    assert_eq!(last_log_index(&mut store).await, Some(4));
    assert_eq!(all(&mut store).await[3], ent(1, 4));

    append(&mut store, vec![ent(2, 5), ent(2, 6)])
        .await
        .unwrap();
    drop(store);

    let mut store = open(dir);
    assert_eq!(indexes(&mut store).await, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(all(&mut store).await[4], ent(2, 5));
    assert_eq!(records(dir).len(), 6);
}

// ---------------------------------------------------------------------------------------------
// Basic persistence

#[tokio::test]
async fn entries_are_readable_after_append_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let mut reader = store.get_log_reader().await;
    assert_eq!(store.get_log_state().await.unwrap().last_log_id, None);

    append(&mut store, ents(1, 1..=3)).await.unwrap();
    // A reader taken before the append sees the entries once append returned.
    assert_eq!(
        reader.try_get_log_entries(1..4).await.unwrap(),
        ents(1, 1..=3)
    );
    drop((store, reader));

    let mut store = open(dir.path());
    assert_eq!(all(&mut store).await, ents(1, 1..=3));
    assert_eq!(last_log_index(&mut store).await, Some(3));
    assert_eq!(records(dir.path()).len(), 3);
}

#[tokio::test]
async fn large_entry_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let big = EntryOf::<Tc>::new_normal(
        log_id(1, 1),
        TestCmd::Set {
            key: "big".into(),
            value: "x".repeat(3 << 20),
        },
    );
    append(&mut store, vec![big.clone(), ent(1, 2)])
        .await
        .unwrap();
    drop(store);

    let mut store = open(dir.path());
    assert_eq!(all(&mut store).await, vec![big, ent(1, 2)]);
}

#[tokio::test]
async fn open_creates_missing_directories() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a/b/raft");
    {
        let mut store = open(&dir);
        assert_eq!(store.dir(), dir.as_path());
        append(&mut store, ents(1, 1..=1)).await.unwrap();
    }
    let mut store = open(&dir);
    assert_eq!(indexes(&mut store).await, vec![1]);
}

#[tokio::test]
async fn second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(open_err(dir.path()).kind(), io::ErrorKind::WouldBlock);
    drop(store);
    open(dir.path());
}

#[tokio::test]
async fn append_rejects_holes_and_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    append(&mut store, ents(1, 1..=2)).await.unwrap();

    let err = append(&mut store, vec![ent(1, 4)]).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let err = append(&mut store, vec![ent(1, 3), ent(1, 5)])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);

    append(&mut store, vec![ent(1, 3)]).await.unwrap();
    assert_eq!(indexes(&mut store).await, vec![1, 2, 3]);
}

#[tokio::test]
async fn overlapping_append_replaces_the_suffix() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    append(&mut store, ents(1, 1..=5)).await.unwrap();
    append(&mut store, ents(2, 4..=6)).await.unwrap();
    let want = [ents(1, 1..=3), ents(2, 4..=6)].concat();
    assert_eq!(all(&mut store).await, want);
    drop(store);

    let mut store = open(dir.path());
    assert_eq!(all(&mut store).await, want);
}

#[tokio::test]
async fn limited_reads_respect_the_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogStoreOptions {
        max_read_batch_bytes: 200,
        ..LogStoreOptions::default()
    };
    let mut store = LogStore::<Tc>::open_with(dir.path(), opts).unwrap();
    append(&mut store, ents(1, 1..=10)).await.unwrap();
    let mut reader = store.get_log_reader().await;

    let got = reader.limited_get_log_entries(1, 11).await.unwrap();
    assert!(
        !got.is_empty() && got.len() < 10,
        "got {} entries",
        got.len()
    );
    assert_eq!(got[0].index(), 1);
    // Never empty, even when one entry exceeds the budget.
    let opts = LogStoreOptions {
        max_read_batch_bytes: 1,
        ..LogStoreOptions::default()
    };
    drop((store, reader));
    let mut store = LogStore::<Tc>::open_with(dir.path(), opts).unwrap();
    let got = store
        .get_log_reader()
        .await
        .limited_get_log_entries(3, 11)
        .await
        .unwrap();
    assert_eq!(got, vec![ent(1, 3)]);
    // Reversed and empty ranges are empty, not a panic.
    let mut reader = store.get_log_reader().await;
    let reversed = (Bound::Included(5u64), Bound::Excluded(3u64));
    assert!(
        reader
            .try_get_log_entries(reversed)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(reader.try_get_log_entries(5..5).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Torn tails

#[tokio::test]
async fn torn_tail_cut_in_the_middle_of_the_last_record() {
    let dir = dir_with_five().await;
    let (off, len) = records(dir.path())[4];
    set_len(
        &dir.path().join(LOG_FILE),
        off + RECORD_HEADER_LEN as u64 + len / 2,
    );
    assert_recovered_to_four(dir.path()).await;
}

#[tokio::test]
async fn torn_tail_cut_in_the_last_record_header() {
    let dir = dir_with_five().await;
    let (off, _) = records(dir.path())[4];
    set_len(&dir.path().join(LOG_FILE), off + 3);
    assert_recovered_to_four(dir.path()).await;
}

#[tokio::test]
async fn torn_tail_flipped_byte_in_the_last_payload() {
    let dir = dir_with_five().await;
    let (off, len) = records(dir.path())[4];
    flip_byte(
        &dir.path().join(LOG_FILE),
        off + RECORD_HEADER_LEN as u64 + len / 2,
    );
    assert_recovered_to_four(dir.path()).await;
}

#[tokio::test]
async fn torn_tail_flipped_byte_in_the_last_length_field() {
    let dir = dir_with_five().await;
    let (off, _) = records(dir.path())[4];
    flip_byte(&dir.path().join(LOG_FILE), off + 1);
    assert_recovered_to_four(dir.path()).await;
}

#[tokio::test]
async fn torn_tail_undecodable_payload_with_valid_crc() {
    let dir = dir_with_five().await;
    let (off, _) = records(dir.path())[4];
    set_len(&dir.path().join(LOG_FILE), off);
    let mut rec = Vec::new();
    super::push_record(&mut rec, b"{\"not\": \"an entry\"}").unwrap();
    append_bytes(&dir.path().join(LOG_FILE), &rec);
    assert_recovered_to_four(dir.path()).await;
}

#[tokio::test]
async fn garbage_after_the_last_record_is_dropped() {
    for garbage in [
        &b"\x13\x37 this is not a record at all"[..],
        &[0u8; 4096][..],
        &[0xffu8; 7][..],
    ] {
        let dir = dir_with_five().await;
        append_bytes(&dir.path().join(LOG_FILE), garbage);
        let mut store = open(dir.path());
        assert_eq!(indexes(&mut store).await, vec![1, 2, 3, 4, 5]);
        assert_eq!(log_len(dir.path()), {
            let (off, len) = records(dir.path())[4];
            off + RECORD_HEADER_LEN as u64 + len
        });
        append(&mut store, vec![ent(1, 6)]).await.unwrap();
        drop(store);
        let mut store = open(dir.path());
        assert_eq!(indexes(&mut store).await, vec![1, 2, 3, 4, 5, 6]);
    }
}

// ---------------------------------------------------------------------------------------------
// Corruption that is not a torn tail

#[tokio::test]
async fn corrupt_middle_payload_fails_open() {
    let dir = dir_with_five().await;
    let (off, len) = records(dir.path())[2];
    flip_byte(
        &dir.path().join(LOG_FILE),
        off + RECORD_HEADER_LEN as u64 + len / 2,
    );
    let err = open_err(dir.path());
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let msg = err.to_string();
    assert!(
        msg.contains("corrupt record") && msg.contains("log index 4"),
        "{msg}"
    );
    // Nothing was cut off.
    assert_eq!(records(dir.path()).len(), 5);
}

#[tokio::test]
async fn corrupt_middle_length_field_fails_open() {
    let dir = dir_with_five().await;
    let (off, _) = records(dir.path())[1];
    let before = log_len(dir.path());
    flip_byte(&dir.path().join(LOG_FILE), off + 2);
    let err = open_err(dir.path());
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert_eq!(log_len(dir.path()), before);
}

#[tokio::test]
async fn corrupt_committed_tail_fails_open() {
    let dir = dir_with_five().await;
    {
        let mut store = open(dir.path());
        store.save_committed(Some(log_id(1, 5))).await.unwrap();
    }
    let (off, len) = records(dir.path())[4];
    set_len(&dir.path().join(LOG_FILE), off + len / 2);
    let err = open_err(dir.path());
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("committed"), "{err}");
}

#[tokio::test]
async fn index_gap_or_regression_in_the_file_fails_open() {
    for order in [[1u64, 2, 4], [1, 2, 2], [3, 2, 1]] {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        let mut bytes = Vec::new();
        for i in order {
            super::push_record(&mut bytes, &serde_json::to_vec(&ent(1, i)).unwrap()).unwrap();
        }
        append_bytes(&dir.path().join(LOG_FILE), &bytes);
        let err = open_err(dir.path());
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("not contiguous"), "{err}");
    }
}

#[tokio::test]
async fn bad_header_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    flip_byte(&dir.path().join(LOG_FILE), 0);
    assert_eq!(open_err(dir.path()).kind(), io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn damage_inside_the_purged_prefix_is_skipped_and_compacted_away() {
    for damaged in [0usize, 2, 4] {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = open(dir.path());
            append(&mut store, ents(1, 1..=10)).await.unwrap();
            store.purge(log_id(1, 5)).await.unwrap();
        }
        assert_eq!(records(dir.path()).len(), 10);
        let (off, len) = records(dir.path())[damaged];
        flip_byte(
            &dir.path().join(LOG_FILE),
            off + RECORD_HEADER_LEN as u64 + len / 2,
        );

        let mut store = open(dir.path());
        assert_eq!(
            all(&mut store).await,
            ents(1, 6..=10),
            "damaged record #{damaged}"
        );
        // The damaged region was rewritten away.
        assert_eq!(records(dir.path()).len(), 5);
        append(&mut store, ents(1, 11..=11)).await.unwrap();
        drop(store);
        let mut store = open(dir.path());
        assert_eq!(all(&mut store).await, ents(1, 6..=11));
    }
}

#[tokio::test]
async fn damage_to_the_first_live_record_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path());
        append(&mut store, ents(1, 1..=10)).await.unwrap();
        store.purge(log_id(1, 5)).await.unwrap();
    }
    let (off, len) = records(dir.path())[5];
    flip_byte(
        &dir.path().join(LOG_FILE),
        off + RECORD_HEADER_LEN as u64 + len / 2,
    );
    let err = open_err(dir.path());
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert_eq!(records(dir.path()).len(), 10);
}

// ---------------------------------------------------------------------------------------------
// Vote, committed, metadata files

#[tokio::test]
async fn vote_and_committed_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let vote = VoteOf::<Tc>::new_committed(7, 2);
    {
        let mut store = open(dir.path());
        assert_eq!(
            store.get_log_reader().await.read_vote().await.unwrap(),
            None
        );
        store.save_vote(&VoteOf::<Tc>::new(6, 3)).await.unwrap();
        store.save_vote(&vote).await.unwrap();
        assert_eq!(
            store.get_log_reader().await.read_vote().await.unwrap(),
            Some(vote)
        );
        append(&mut store, ents(7, 1..=3)).await.unwrap();
        store.save_committed(Some(log_id(7, 2))).await.unwrap();
    }
    let mut store = open(dir.path());
    assert_eq!(
        store.get_log_reader().await.read_vote().await.unwrap(),
        Some(vote)
    );
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(7, 2)));
}

#[tokio::test]
async fn leftover_temp_files_do_not_break_open() {
    let dir = tempfile::tempdir().unwrap();
    let vote = VoteOf::<Tc>::new(4, 1);
    {
        let mut store = open(dir.path());
        store.save_vote(&vote).await.unwrap();
        append(&mut store, ents(4, 1..=2)).await.unwrap();
    }
    // What a crash in the middle of an atomic replace leaves behind.
    for name in [VOTE_FILE, PURGED_FILE, COMMITTED_FILE, LOG_FILE] {
        std::fs::write(
            dir.path().join(format!("{name}.tmp")),
            b"\x00\x01half-written",
        )
        .unwrap();
    }
    let mut store = open(dir.path());
    assert_eq!(
        store.get_log_reader().await.read_vote().await.unwrap(),
        Some(vote)
    );
    assert_eq!(indexes(&mut store).await, vec![1, 2]);
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, None);
    for name in [VOTE_FILE, PURGED_FILE, COMMITTED_FILE, LOG_FILE] {
        assert!(!dir.path().join(format!("{name}.tmp")).exists());
    }
    // Writing the vote again works (the temp name is reused).
    store.save_vote(&VoteOf::<Tc>::new(5, 1)).await.unwrap();
}

#[tokio::test]
async fn crash_during_the_first_vote_write_means_no_vote() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    std::fs::write(
        dir.path().join(format!("{VOTE_FILE}.tmp")),
        b"\x07\0\0\0torn",
    )
    .unwrap();
    let mut store = open(dir.path());
    assert_eq!(
        store.get_log_reader().await.read_vote().await.unwrap(),
        None
    );
    let vote = VoteOf::<Tc>::new(1, 1);
    store.save_vote(&vote).await.unwrap();
    drop(store);
    let mut store = open(dir.path());
    assert_eq!(
        store.get_log_reader().await.read_vote().await.unwrap(),
        Some(vote)
    );
}

#[tokio::test]
async fn corrupt_vote_file_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path());
        store.save_vote(&VoteOf::<Tc>::new(4, 1)).await.unwrap();
    }
    let path = dir.path().join(VOTE_FILE);
    let len = std::fs::metadata(&path).unwrap().len();
    flip_byte(&path, len - 2);
    let err = open_err(dir.path());
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains(VOTE_FILE), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Purge

#[tokio::test]
async fn purge_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path());
        append(&mut store, ents(1, 1..=10)).await.unwrap();
        store.purge(log_id(1, 4)).await.unwrap();
        assert_eq!(indexes(&mut store).await, (5..=10).collect::<Vec<_>>());
        // Purging less than before is a no-op.
        store.purge(log_id(1, 2)).await.unwrap();
    }
    let mut store = open(dir.path());
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 4)));
    assert_eq!(state.last_log_id, Some(log_id(1, 10)));
    assert_eq!(indexes(&mut store).await, (5..=10).collect::<Vec<_>>());
    assert!(
        store
            .get_log_reader()
            .await
            .try_get_log_entries(0..5)
            .await
            .unwrap()
            .is_empty()
    );
    // Small file: the purged records stay on disk until compaction is worth it.
    assert_eq!(records(dir.path()).len(), 10);

    append(&mut store, ents(1, 11..=11)).await.unwrap();
    drop(store);
    let mut store = open(dir.path());
    assert_eq!(indexes(&mut store).await, (5..=11).collect::<Vec<_>>());
}

#[tokio::test]
async fn purge_past_the_last_entry_resets_the_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path());
        append(&mut store, ents(1, 1..=10)).await.unwrap();
        store.purge(log_id(2, 20)).await.unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 20)));
        assert_eq!(state.last_log_id, Some(log_id(2, 20)));
        assert_eq!(log_len(dir.path()), FILE_HEADER_LEN);
        // The next entry must follow the purged id.
        assert!(append(&mut store, vec![ent(2, 22)]).await.is_err());
        assert!(append(&mut store, vec![ent(2, 20)]).await.is_err());
        append(&mut store, ents(2, 21..=22)).await.unwrap();
    }
    let mut store = open(dir.path());
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(2, 20)));
    assert_eq!(state.last_log_id, Some(log_id(2, 22)));
    assert_eq!(all(&mut store).await, ents(2, 21..=22));
}

#[tokio::test]
async fn crash_between_purge_and_file_reset_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path());
        append(&mut store, ents(1, 1..=3)).await.unwrap();
    }
    let log_before = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
    {
        let mut store = open(dir.path());
        store.purge(log_id(1, 3)).await.unwrap();
    }
    // Put the purged records back, as if the crash came right after `purged.meta` was written.
    std::fs::write(dir.path().join(LOG_FILE), log_before).unwrap();
    let mut store = open(dir.path());
    assert!(all(&mut store).await.is_empty());
    assert_eq!(
        store.get_log_state().await.unwrap().last_log_id,
        Some(log_id(1, 3))
    );
    assert_eq!(log_len(dir.path()), FILE_HEADER_LEN);
    append(&mut store, ents(1, 4..=4)).await.unwrap();
    drop(store);
    let mut store = open(dir.path());
    assert_eq!(indexes(&mut store).await, vec![4]);
}

#[tokio::test]
async fn purge_compacts_a_large_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogStoreOptions {
        compact_min_bytes: 1,
        ..LogStoreOptions::default()
    };
    {
        let mut store = LogStore::<Tc>::open_with(dir.path(), opts.clone()).unwrap();
        append(&mut store, ents(1, 1..=10)).await.unwrap();
        let full = log_len(dir.path());

        // 3 of 10 records: less than half the file, not worth a rewrite yet.
        store.purge(log_id(1, 3)).await.unwrap();
        assert_eq!(log_len(dir.path()), full);

        store.purge(log_id(1, 6)).await.unwrap();
        assert!(log_len(dir.path()) < full);
        assert_eq!(records(dir.path()).len(), 4);
        assert_eq!(indexes(&mut store).await, vec![7, 8, 9, 10]);

        // Offsets are right after compaction: truncate and append go to the right places.
        store.truncate_after(Some(log_id(1, 8))).await.unwrap();
        append(&mut store, ents(2, 9..=9)).await.unwrap();
    }
    assert!(!dir.path().join(format!("{LOG_FILE}.tmp")).exists());
    let mut store = LogStore::<Tc>::open_with(dir.path(), opts).unwrap();
    assert_eq!(
        all(&mut store).await,
        [ents(1, 7..=8), ents(2, 9..=9)].concat()
    );
    assert_eq!(
        store.get_log_state().await.unwrap().last_purged_log_id,
        Some(log_id(1, 6))
    );
}

// ---------------------------------------------------------------------------------------------
// Truncate

#[tokio::test]
async fn truncate_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path());
        append(&mut store, ents(1, 1..=10)).await.unwrap();
        store.truncate_after(Some(log_id(1, 6))).await.unwrap();
        assert_eq!(indexes(&mut store).await, (1..=6).collect::<Vec<_>>());
        let (off, len) = records(dir.path())[5];
        assert_eq!(log_len(dir.path()), off + RECORD_HEADER_LEN as u64 + len);
        // Truncating after the end is a no-op.
        store.truncate_after(Some(log_id(1, 11))).await.unwrap();
    }
    let mut store = open(dir.path());
    assert_eq!(indexes(&mut store).await, (1..=6).collect::<Vec<_>>());
    append(&mut store, ents(3, 7..=7)).await.unwrap();
    drop(store);

    let mut store = open(dir.path());
    assert_eq!(
        all(&mut store).await,
        [ents(1, 1..=6), ents(3, 7..=7)].concat()
    );
    store.truncate_after(None).await.unwrap();
    assert_eq!(store.get_log_state().await.unwrap().last_log_id, None);
    drop(store);

    let mut store = open(dir.path());
    assert!(all(&mut store).await.is_empty());
    assert_eq!(store.get_log_state().await.unwrap().last_log_id, None);
    assert_eq!(log_len(dir.path()), FILE_HEADER_LEN);
}

#[tokio::test]
async fn truncate_after_purge_keeps_the_purged_id() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path());
        append(&mut store, ents(1, 1..=6)).await.unwrap();
        store.purge(log_id(1, 3)).await.unwrap();
        store.truncate_after(Some(log_id(1, 3))).await.unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 3)));
        append(&mut store, ents(2, 4..=5)).await.unwrap();
    }
    let mut store = open(dir.path());
    assert_eq!(all(&mut store).await, ents(2, 4..=5));
    assert_eq!(
        store.get_log_state().await.unwrap().last_purged_log_id,
        Some(log_id(1, 3))
    );
}

#[test]
fn del_command_is_used() {
    // Keeps the `Del` variant (an enum with several shapes) exercised by serde.
    let e = EntryOf::<Tc>::new_normal(log_id(1, 1), TestCmd::Del { key: "k".into() });
    let back: EntryOf<Tc> = serde_json::from_slice(&serde_json::to_vec(&e).unwrap()).unwrap();
    assert_eq!(back, e);
}
