//! What `fulcrum sync status`, the metrics and the VIP logic see of the sync links.

/// The sender's link to one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkState {
    #[default]
    Connecting,
    /// Sending a full snapshot.
    Resyncing,
    /// Streaming live changes.
    Live,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Resyncing => "resyncing",
            LinkState::Live => "live",
        }
    }
}

/// One outgoing link (this director → a peer).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerStatus {
    pub node: u64,
    pub addr: String,
    pub state: LinkState,
    /// Connected, snapshot complete, acknowledging in time, little queued.
    pub current: bool,
    /// Marked behind: changes were dropped for it, a snapshot is due or under way.
    pub behind: bool,
    /// Entries queued or in flight (not yet acknowledged).
    pub lag_entries: u64,
    /// Age of the oldest unacknowledged change, in milliseconds (0 when all are acknowledged).
    pub lag_ms: u64,
    /// Milliseconds since the last acknowledgement (None: never).
    pub last_ack_ms: Option<u64>,
    /// p99 of change-to-acknowledgement times over the last few thousand batches, in µs.
    pub lag_p99_us: u64,
    /// Entries sent (live and snapshot, first transmissions).
    pub sent: u64,
    pub acked: u64,
    pub retransmitted: u64,
    /// Entries dropped for this peer (queue over `max_lag_entries`).
    pub dropped: u64,
    /// Entries the peer could not install.
    pub rejected: u64,
    pub resyncs: u64,
    pub snapshot_entries: u64,
    pub connects: u64,
    pub wire_bytes: u64,
}

/// One incoming link (a peer → this director).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReceiverStatus {
    pub node: u64,
    pub connected: bool,
    /// A full snapshot from this peer has been received and the stream is live.
    pub complete: bool,
    pub applied_seq: u64,
    pub entries: u64,
    pub rejected: u64,
    pub snapshots: u64,
    /// Entries removed after a snapshot because the snapshot no longer had them.
    pub swept: u64,
    /// Milliseconds since the last batch or heartbeat.
    pub last_batch_ms: Option<u64>,
}
