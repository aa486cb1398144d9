//! Raft (openraft) for the cluster configuration: type config, durable log, state machine,
//! gRPC transport. openraft's types stay inside this module and `cluster`; the rest of the
//! daemon talks to [`crate::cluster::Cluster`].

pub mod codec;
pub mod log_store;
pub mod network;
pub mod service;
pub mod state_machine;

use serde::Deserialize;
use serde::Serialize;

use crate::model::NodeInfo;
use crate::state::Change;
use crate::state::Command;
use crate::state::ErrorKind;

openraft::declare_raft_types!(
    /// Fulcrum's Raft types: the log carries configuration [`Command`]s, nodes are
    /// [`NodeInfo`] (gRPC address + director/witness role).
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = NodeInfo,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

/// What applying one log entry produced. A command that was valid when it was proposed can
/// still be rejected at apply time (another command got there first); every node rejects it
/// the same way, so the state stays identical everywhere.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// Blank and membership entries.
    #[default]
    Nothing,
    Applied(Vec<Change>),
    Rejected {
        kind: ErrorKind,
        message: String,
    },
}

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachine>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type SnapshotData = Vec<u8>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
pub type RaftError<E = openraft::errors::Infallible> = openraft::errors::RaftError<TypeConfig, E>;
pub type RpcError = openraft::errors::RPCError<TypeConfig>;
pub type ClientWriteError = openraft::errors::ClientWriteError<TypeConfig>;
pub type ClientWriteResponse = openraft::raft::ClientWriteResponse<TypeConfig>;
pub type LinearizableReadError = openraft::errors::LinearizableReadError<TypeConfig>;
pub type VoteRequest = openraft::raft::VoteRequest<TypeConfig>;
pub type VoteResponse = openraft::raft::VoteResponse<TypeConfig>;
pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<TypeConfig>;
pub type SnapshotResponse = openraft::raft::SnapshotResponse<TypeConfig>;
pub type TransferLeaderRequest = openraft::raft::TransferLeaderRequest<TypeConfig>;
pub type TransferLeaderResponse = openraft::raft::TransferLeaderResponse<TypeConfig>;
