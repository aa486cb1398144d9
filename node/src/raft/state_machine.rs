//! The Raft state machine: applies committed [`Command`]s to the [`ClusterState`], publishes
//! what changed, and keeps the latest snapshot on disk.
//!
//! The state itself lives in memory (it is configuration, not bulk data); durability comes
//! from the Raft log plus the snapshot file, which is written atomically.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;

use futures::Stream;
use futures::TryStreamExt;
use openraft::RaftSnapshotBuilder;
use openraft::entry::RaftEntry;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::broadcast;

use super::CommandResponse;
use super::LogId;
use super::Snapshot;
use super::SnapshotData;
use super::SnapshotMeta;
use super::StoredMembership;
use super::TypeConfig;
use crate::fsutil;
use crate::model::NodeInfo;
use crate::state::Change;
use crate::state::ClusterState;

/// One applied entry's effect, for `Watch` subscribers and (later) the forwarding path.
#[derive(Debug, Clone)]
pub struct AppliedEvent {
    pub index: u64,
    pub changes: Vec<Change>,
}

/// What every reader sees: the state and the log position it reflects.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    pub state: ClusterState,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

impl Applied {
    /// Current members with their address and role.
    pub fn members(&self) -> BTreeMap<u64, NodeInfo> {
        self.membership
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect()
    }

    pub fn applied_index(&self) -> u64 {
        self.last_applied.as_ref().map(|l| l.index).unwrap_or(0)
    }
}

/// Shared, cheaply cloned handle to the applied state.
pub type SharedState = Arc<RwLock<Applied>>;

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    data: SnapshotData,
}

#[derive(Clone)]
pub struct StateMachine {
    shared: SharedState,
    events: broadcast::Sender<AppliedEvent>,
    snapshot_path: PathBuf,
}

impl StateMachine {
    /// Opens the state machine, restoring the last snapshot from `dir` if there is one.
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let snapshot_path = dir.join("snapshot.json");
        let (events, _) = broadcast::channel(1024);
        let sm = StateMachine {
            shared: SharedState::default(),
            events,
            snapshot_path,
        };
        if let Some(file) = sm.read_snapshot_file()? {
            sm.restore(&file.meta, &file.data)?;
        }
        Ok(sm)
    }

    pub fn shared(&self) -> SharedState {
        self.shared.clone()
    }

    pub fn events(&self) -> broadcast::Sender<AppliedEvent> {
        self.events.clone()
    }

    fn read_snapshot_file(&self) -> io::Result<Option<SnapshotFile>> {
        match std::fs::read(&self.snapshot_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("snapshot {}: {e}", self.snapshot_path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn restore(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let state: ClusterState = serde_json::from_slice(data).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("snapshot data: {e}"))
        })?;
        let mut shared = self.shared.write().unwrap_or_else(|e| e.into_inner());
        shared.state = state;
        shared.last_applied = meta.last_log_id;
        shared.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn write_snapshot_file(&self, file: &SnapshotFile) -> io::Result<()> {
        let bytes = serde_json::to_vec(file).map_err(io::Error::other)?;
        let path = self.snapshot_path.clone();
        tokio::task::spawn_blocking(move || fsutil::write_atomic(&path, &bytes))
            .await
            .map_err(io::Error::other)?
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (meta, data) = {
            let shared = self.shared.read().unwrap_or_else(|e| e.into_inner());
            let data = serde_json::to_vec(&shared.state).map_err(io::Error::other)?;
            let meta = SnapshotMeta {
                last_log_id: shared.last_applied,
                last_membership: shared.membership.clone(),
            };
            (meta, data)
        };
        let file = SnapshotFile { meta, data };
        self.write_snapshot_file(&file).await?;
        Ok(Snapshot {
            meta: file.meta,
            snapshot: file.data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let shared = self.shared.read().unwrap_or_else(|e| e.into_inner());
        Ok((shared.last_applied, shared.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id();
            let response = {
                let mut shared = self.shared.write().unwrap_or_else(|e| e.into_inner());
                shared.last_applied = Some(log_id);
                match entry.payload {
                    openraft::EntryPayload::Blank => CommandResponse::Nothing,
                    openraft::EntryPayload::Membership(m) => {
                        shared.membership = StoredMembership::new(Some(log_id), m);
                        CommandResponse::Nothing
                    }
                    openraft::EntryPayload::Normal(cmd) => {
                        let members = shared.members();
                        match shared.state.apply(&cmd, &members) {
                            Ok(changes) => CommandResponse::Applied(changes),
                            Err(e) => CommandResponse::Rejected {
                                kind: e.kind(),
                                message: e.to_string(),
                            },
                        }
                    }
                }
            };
            if let CommandResponse::Applied(changes) = &response
                && !changes.is_empty()
            {
                // No subscribers is fine; slow ones see `Lagged` and resynchronise.
                let _ = self.events.send(AppliedEvent {
                    index: log_id.index,
                    changes: changes.clone(),
                });
            }
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = snapshot.len(), "installing snapshot");
        let file = SnapshotFile {
            meta: meta.clone(),
            data: snapshot,
        };
        // On disk first: if we crash after this, restart restores the new state.
        self.write_snapshot_file(&file).await?;
        let old = self
            .shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .state
            .clone();
        self.restore(&file.meta, &file.data)?;
        let new = self
            .shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .state
            .clone();
        let changes = crate::state::diff(&old.config, &new.config);
        if !changes.is_empty() {
            let _ = self.events.send(AppliedEvent {
                index: meta.last_log_id.as_ref().map(|l| l.index).unwrap_or(0),
                changes,
            });
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.read_snapshot_file()?.map(|f| Snapshot {
            meta: f.meta,
            snapshot: f.data,
        }))
    }
}
