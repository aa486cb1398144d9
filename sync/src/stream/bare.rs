//! A sync source and replica over a bare connection table, for tests and benchmarks (the
//! daemon uses the forwarding engine's).

use std::sync::Arc;

use super::{ChangeQueue, Replica, Source, origin_slot};
use crate::conn::{CoarseClock, ConnEntry, ConnTable, SnapshotCursor};

/// Changes pushed into `queue` by the caller; snapshots of the whole table.
#[derive(Debug)]
pub struct TableSource {
    pub table: Arc<ConnTable>,
    pub clock: CoarseClock,
    pub queue: ChangeQueue,
}

impl Source for TableSource {
    fn drain(&self, out: &mut Vec<ConnEntry>) {
        self.queue.drain_into(out);
    }

    fn now(&self) -> u32 {
        self.clock.now()
    }

    fn snapshot_chunk(
        &self,
        cursor: &mut SnapshotCursor,
        max: usize,
        out: &mut Vec<ConnEntry>,
    ) -> bool {
        self.table.snapshot_chunk(cursor, max, out)
    }
}

/// A replica over a bare table (tests, benchmarks): entries are upserted as synced from the
/// sender.
#[derive(Debug)]
pub struct TableReplica {
    pub table: Arc<ConnTable>,
    pub clock: CoarseClock,
}

impl Replica for TableReplica {
    fn now(&self) -> u32 {
        self.clock.now()
    }

    fn install(&self, from: u64, entries: &mut [ConnEntry]) -> u64 {
        let slot = origin_slot(from);
        let mut rejected = 0;
        for e in entries.iter_mut() {
            e.set_synced_from(slot);
            if self.table.upsert(*e).is_err() {
                rejected += 1;
            }
        }
        rejected
    }

    fn sweep(&self, from: u64, older_than: u32) -> u64 {
        let slot = origin_slot(from);
        let now = self.clock.now();
        let mut gone = Vec::new();
        self.table.remove_where(
            |e| e.origin() == slot && e.synced_age(now) > older_than,
            &mut gone,
        ) as u64
    }
}
