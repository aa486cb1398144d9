//! Connection-table replication between directors over gRPC.
//!
//! Every director runs one [`Sender`] and serves one [`Receiver`]. The sender takes the
//! changes the forwarding engine queued ([`ChangeQueue`]: new flows from their first packet,
//! state changes, refreshes, persistence templates), packs them into batches every
//! `batch_interval` (or sooner when a batch fills) and pushes them to every other director
//! over one long-lived `Replicate` stream per peer. Receivers install what they get in their
//! own table, marked as synced from the sender, and acknowledge each batch.
//!
//! - **Acknowledged and resumable.** Batches carry per-link sequence numbers; the sender keeps
//!   the unacknowledged ones. After a reconnect to the same receiver process it resends them
//!   (counted as retransmitted); a receiver that (re)started, or one the sender could not
//!   keep up with, gets a full snapshot of the flows the sender forwards, then the live stream.
//! - **Flow-controlled.** At most `window` batches are in flight per peer. What has not been
//!   sent waits in a per-peer queue bounded by `max_lag_entries`; beyond that the queue is
//!   dropped, the peer is marked behind and gets a snapshot once it drains. The sender's
//!   memory is bounded whatever a peer does.
//! - **Current or not.** A peer is current when it is connected, has a complete snapshot and
//!   acknowledged within `current_within` with little queued. The VIP logic consults this so
//!   that a backup that is behind is not picked as new owner while a current one exists.
//! - Sync is soft state: it never goes through the Raft log.

mod bare;
mod queue;
mod receiver;
pub mod record;
mod sender;
mod status;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use bare::{TableReplica, TableSource};
pub use queue::ChangeQueue;
pub use receiver::Receiver;
pub use sender::Sender;
pub use status::{LinkState, PeerStatus, ReceiverStatus};

use crate::conn::{ConnEntry, SnapshotCursor};

/// Where a sender's changes and snapshots come from: the forwarding engine, or a bare table
/// in tests and benchmarks.
pub trait Source: Send + Sync + 'static {
    /// Moves every queued change into `out`.
    fn drain(&self, out: &mut Vec<ConnEntry>);
    /// The table clock (seconds), against which entry deadlines are measured.
    fn now(&self) -> u32;
    /// Copies up to `max` entries that belong in a snapshot for the peers (the flows this
    /// director forwards) into `out`, continuing from `cursor`; true once the walk is done.
    fn snapshot_chunk(
        &self,
        cursor: &mut SnapshotCursor,
        max: usize,
        out: &mut Vec<ConnEntry>,
    ) -> bool;
}

/// Where a receiver installs what it gets.
pub trait Replica: Send + Sync + 'static {
    /// The table clock (seconds) that incoming deadlines are converted to.
    fn now(&self) -> u32;
    /// Installs entries replicated from node `from`; returns how many it could not install.
    fn install(&self, from: u64, entries: &mut [ConnEntry]) -> u64;
    /// After a complete snapshot from `from`: removes the entries replicated from it that were
    /// not received for `older_than` seconds or more (the snapshot, which took less, did not
    /// carry them: the flow ended while the link was down). Entries of VIPs this node forwards
    /// now are its own and stay. Returns how many went.
    fn sweep(&self, from: u64, older_than: u32) -> u64;
}

/// The origin slot stored in an entry for node id `node` (0 means local; ids beyond 254
/// share slot 255, shown as "synced from 255+").
pub fn origin_slot(node: u64) -> u8 {
    node.clamp(1, 255) as u8
}

/// Tunables of the sync stream.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncTimers {
    /// How long changes may wait before they are sent (a batch also goes when it fills).
    pub batch_interval: Duration,
    /// Records per batch.
    pub batch_entries: usize,
    /// Batches in flight (sent, not acknowledged) per peer.
    pub window: usize,
    /// Queued-but-unsent entries per peer beyond which the peer is marked behind.
    pub max_lag_entries: usize,
    /// An idle stream sends a heartbeat this often.
    pub heartbeat: Duration,
    /// A peer must have acknowledged within this to count as current.
    pub current_within: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_max: Duration,
}

impl Default for SyncTimers {
    fn default() -> Self {
        SyncTimers {
            batch_interval: Duration::from_millis(2),
            batch_entries: 2048,
            window: 64,
            max_lag_entries: 262_144,
            heartbeat: Duration::from_millis(100),
            current_within: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimersError {
    #[error("sync.{0} must be greater than zero")]
    Zero(&'static str),
    #[error("sync.batch_interval must be at most 100ms (it adds to every change's lag)")]
    BatchInterval,
    #[error("sync.max_lag_entries must be at least batch_entries * window")]
    Lag,
    #[error("sync.current_within must be longer than sync.heartbeat")]
    Current,
}

impl SyncTimers {
    pub fn validate(&self) -> Result<(), TimersError> {
        if self.batch_interval.is_zero() {
            return Err(TimersError::Zero("batch_interval"));
        }
        if self.batch_interval > Duration::from_millis(100) {
            return Err(TimersError::BatchInterval);
        }
        if self.batch_entries == 0 {
            return Err(TimersError::Zero("batch_entries"));
        }
        if self.window == 0 {
            return Err(TimersError::Zero("window"));
        }
        if self.heartbeat.is_zero() {
            return Err(TimersError::Zero("heartbeat"));
        }
        if self.reconnect_max.is_zero() {
            return Err(TimersError::Zero("reconnect_max"));
        }
        if self.max_lag_entries < self.batch_entries.saturating_mul(self.window) {
            return Err(TimersError::Lag);
        }
        if self.current_within <= self.heartbeat {
            return Err(TimersError::Current);
        }
        Ok(())
    }
}
