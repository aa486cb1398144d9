//! The cluster as the rest of the daemon sees it: write a command, read current state,
//! change membership, look at status. Any node accepts every call; what must run on the
//! leader is forwarded to it over the Raft transport (`Forward` RPC).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use fulcrum_proto::raft::RaftPayload;
use openraft::ChangeMembers;
use openraft::ReadPolicy;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver as _;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::model::NodeInfo;
use crate::model::Role;
use crate::raft::ClientWriteError;
use crate::raft::CommandResponse;
use crate::raft::NodeId;
use crate::raft::Raft;
use crate::raft::RaftError;
use crate::raft::RaftMetrics;
use crate::raft::codec;
use crate::raft::network::Peers;
use crate::raft::state_machine::Applied;
use crate::raft::state_machine::AppliedEvent;
use crate::raft::state_machine::SharedState;
use crate::state::Change;
use crate::state::Command;
use crate::state::ErrorKind;

/// How long a request waits for a leader to exist (elections take a few hundred ms).
const LEADER_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq)]
pub enum ClusterError {
    /// The command itself is wrong (or conflicts with the state); maps to a precise gRPC code.
    #[error("{message}")]
    Rejected { kind: ErrorKind, message: String },
    /// No leader could be reached, or the outcome is unknown; the client may retry.
    #[error("{0}")]
    Unavailable(String),
    /// This node is not the leader (internal: makes a forwarder retry).
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    #[error("{0}")]
    Internal(String),
}

impl ClusterError {
    fn rejected(kind: ErrorKind, message: impl Into<String>) -> Self {
        ClusterError::Rejected {
            kind,
            message: message.into(),
        }
    }
}

/// A request that must run on the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Forwarded {
    Write(Command),
    ReadIndex,
    Join {
        id: NodeId,
        node: NodeInfo,
        replace: bool,
    },
    Leave {
        id: NodeId,
    },
    Transfer {
        to: Option<NodeId>,
    },
    /// A director renews its VIP lease (see `vip`).
    RenewLease {
        node: NodeId,
        /// The directors this one's sync stream keeps current (None: it does not sync).
        #[serde(default)]
        sync_current: Option<Vec<NodeId>>,
    },
    /// Move a VIP group gracefully (`to: None`: to whoever the leader picks).
    MoveVip {
        group: String,
        to: Option<NodeId>,
    },
}

/// What the leader answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardedOk {
    Written { index: u64, changes: Vec<Change> },
    ReadIndex { index: u64 },
    Membership { index: u64 },
    Transferred { to: NodeId },
    Lease(crate::vip::Grant),
    Moved { owner: Option<NodeId> },
}

pub type ForwardedReply = Result<ForwardedOk, ClusterError>;

/// Result of a committed write.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub index: u64,
    pub changes: Vec<Change>,
}

#[derive(Clone)]
pub struct Cluster {
    id: NodeId,
    raft: Raft,
    vip: Arc<crate::vip::Registry>,
    shared: SharedState,
    events: broadcast::Sender<AppliedEvent>,
    peers: Peers,
    sync_reporter: Arc<std::sync::RwLock<Option<SyncReporter>>>,
}

/// Which peers this director's sync stream keeps current.
pub type SyncReporter = Arc<dyn Fn() -> Vec<NodeId> + Send + Sync>;

impl Cluster {
    pub fn new(
        id: NodeId,
        raft: Raft,
        shared: SharedState,
        events: broadcast::Sender<AppliedEvent>,
        peers: Peers,
        vip: Arc<crate::vip::Registry>,
    ) -> Self {
        Cluster {
            id,
            raft,
            vip,
            shared,
            events,
            peers,
            sync_reporter: Arc::default(),
        }
    }

    /// Lease renewals from now on tell the leader which peers `f` says are current.
    pub fn set_sync_reporter(&self, f: SyncReporter) {
        *self
            .sync_reporter
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow_watched().clone()
    }

    /// A copy of the applied state as of now on this node (no freshness guarantee by itself;
    /// call [`Cluster::read_barrier`] first for a linearizable read).
    pub fn applied(&self) -> Applied {
        self.shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs `f` on the applied state without copying it.
    pub fn with_applied<T>(&self, f: impl FnOnce(&Applied) -> T) -> T {
        f(&self.shared.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<AppliedEvent> {
        self.events.subscribe()
    }

    /// Validates `cmd` against this node's state, then commits it through the leader.
    /// The local check gives a fast, precise error; the leader's apply checks again.
    pub async fn write(&self, cmd: Command) -> Result<Written, ClusterError> {
        self.with_applied(|a| a.state.check(&cmd, &a.members()))
            .map_err(|e| ClusterError::rejected(e.kind(), e.to_string()))?;
        match self.on_leader(Forwarded::Write(cmd)).await? {
            ForwardedOk::Written { index, changes } => Ok(Written { index, changes }),
            other => Err(ClusterError::Internal(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// Makes the next local read linearizable: asks the leader for its commit index (the
    /// leader confirms it still leads with a quorum round) and waits until this node has
    /// applied that far. `stale` skips all of it.
    pub async fn read_barrier(&self, stale: bool) -> Result<(), ClusterError> {
        if stale {
            return Ok(());
        }
        let index = match self.on_leader(Forwarded::ReadIndex).await? {
            ForwardedOk::ReadIndex { index } => index,
            other => {
                return Err(ClusterError::Internal(format!(
                    "unexpected reply {other:?}"
                )));
            }
        };
        self.raft
            .wait(Some(LEADER_WAIT))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|e| {
                ClusterError::Unavailable(format!("waiting to apply index {index}: {e}"))
            })?;
        Ok(())
    }

    pub async fn join(
        &self,
        id: NodeId,
        node: NodeInfo,
        replace: bool,
    ) -> Result<u64, ClusterError> {
        if id == 0 {
            return Err(ClusterError::rejected(
                ErrorKind::Invalid,
                "node id 0 is reserved",
            ));
        }
        match self
            .on_leader(Forwarded::Join { id, node, replace })
            .await?
        {
            ForwardedOk::Membership { index } => Ok(index),
            other => Err(ClusterError::Internal(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    pub async fn leave(&self, id: NodeId) -> Result<u64, ClusterError> {
        match self.on_leader(Forwarded::Leave { id }).await? {
            ForwardedOk::Membership { index } => Ok(index),
            other => Err(ClusterError::Internal(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    pub async fn transfer_leader(&self, to: Option<NodeId>) -> Result<NodeId, ClusterError> {
        match self.on_leader(Forwarded::Transfer { to }).await? {
            ForwardedOk::Transferred { to } => Ok(to),
            other => Err(ClusterError::Internal(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    pub fn vip_registry(&self) -> &Arc<crate::vip::Registry> {
        &self.vip
    }

    /// Renews this director's VIP lease with the leader (one attempt, no retry: the caller
    /// renews again soon, and a lease must not be stretched by retries).
    pub async fn renew_lease(&self) -> Result<crate::vip::Grant, ClusterError> {
        let reporter = self
            .sync_reporter
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let sync_current = reporter.map(|f| f());
        match self
            .on_current_leader(&Forwarded::RenewLease {
                node: self.id,
                sync_current,
            })
            .await?
        {
            ForwardedOk::Lease(g) => Ok(g),
            other => Err(ClusterError::Internal(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// Moves a VIP group gracefully; returns its new owner.
    pub async fn move_vip(
        &self,
        group: String,
        to: Option<NodeId>,
    ) -> Result<Option<NodeId>, ClusterError> {
        match self.on_leader(Forwarded::MoveVip { group, to }).await? {
            ForwardedOk::Moved { owner } => Ok(owner),
            other => Err(ClusterError::Internal(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// Runs `req` on the current leader: here if this node leads, else over the wire.
    /// Retries while leadership is moving, up to [`LEADER_WAIT`].
    async fn on_leader(&self, req: Forwarded) -> Result<ForwardedOk, ClusterError> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            let result = self.on_current_leader(&req).await;
            let retryable = matches!(
                result,
                Err(ClusterError::NotLeader(_) | ClusterError::Unavailable(_))
            );
            if !retryable {
                return result;
            }
            if tokio::time::Instant::now() >= deadline {
                return match result {
                    Err(ClusterError::NotLeader(_)) => Err(ClusterError::Unavailable(
                        "leadership is changing; retry".into(),
                    )),
                    other => other,
                };
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// One attempt at running `req` on the leader this node knows of.
    async fn on_current_leader(&self, req: &Forwarded) -> ForwardedReply {
        let leader = self.raft.metrics().borrow_watched().current_leader;
        match leader {
            Some(l) if l == self.id => self.handle_forwarded(req.clone()).await,
            Some(l) => self.forward_to(l, req).await,
            None => Err(ClusterError::Unavailable("no leader elected".into())),
        }
    }

    async fn forward_to(&self, leader: NodeId, req: &Forwarded) -> ForwardedReply {
        let addr = self
            .with_applied(|a| a.members().get(&leader).map(|n| n.addr.clone()))
            .or_else(|| {
                self.raft
                    .metrics()
                    .borrow_watched()
                    .membership_config
                    .membership()
                    .get_node(&leader)
                    .map(|n| n.addr.clone())
            })
            .ok_or_else(|| {
                ClusterError::Unavailable(format!("leader {leader} has no known address"))
            })?;
        let mut client = self
            .peers
            .raft_client(&addr)
            .map_err(|e| ClusterError::Unavailable(e.message().to_string()))?;
        let data =
            codec::encode(req).map_err(|e| ClusterError::Internal(e.message().to_string()))?;
        let reply = client.forward(RaftPayload { data }).await.map_err(|e| {
            ClusterError::Unavailable(format!(
                "forwarding to leader {leader} at {addr}: {}",
                e.message()
            ))
        })?;
        codec::decode::<ForwardedReply>(&reply.into_inner().data)
            .map_err(|e| ClusterError::Internal(e.message().to_string()))?
    }

    /// Executes a request that needs the leader. Answers `NotLeader` when this node is not.
    pub async fn handle_forwarded(&self, req: Forwarded) -> ForwardedReply {
        match req {
            Forwarded::Write(cmd) => {
                let resp = self.raft.client_write(cmd).await.map_err(write_error)?;
                match resp.data {
                    CommandResponse::Applied(changes) => Ok(ForwardedOk::Written {
                        index: resp.log_id.index,
                        changes,
                    }),
                    CommandResponse::Rejected { kind, message } => {
                        Err(ClusterError::Rejected { kind, message })
                    }
                    CommandResponse::Nothing => Ok(ForwardedOk::Written {
                        index: resp.log_id.index,
                        changes: vec![],
                    }),
                }
            }
            Forwarded::ReadIndex => {
                let read = self
                    .raft
                    .ensure_linearizable(ReadPolicy::ReadIndex)
                    .await
                    .map_err(|e| match e.forward_to_leader() {
                        Some(f) => ClusterError::NotLeader(f.leader_id),
                        None => ClusterError::Unavailable(format!("linearizable read: {e}")),
                    })?;
                Ok(ForwardedOk::ReadIndex {
                    index: read.log_id().index,
                })
            }
            Forwarded::Join { id, node, replace } => self.join_on_leader(id, node, replace).await,
            Forwarded::Leave { id } => self.leave_on_leader(id).await,
            Forwarded::Transfer { to } => self.transfer_on_leader(to).await,
            Forwarded::RenewLease { node, sync_current } => {
                let m = self.ensure_leader()?;
                // A quorum round first: only a leader that still leads may grant.
                self.raft
                    .ensure_linearizable(ReadPolicy::ReadIndex)
                    .await
                    .map_err(|e| match e.forward_to_leader() {
                        Some(f) => ClusterError::NotLeader(f.leader_id),
                        None => ClusterError::Unavailable(format!("lease: {e}")),
                    })?;
                if let Some(current) = sync_current {
                    self.vip.report_sync(
                        m.current_term,
                        node,
                        current.into_iter().collect(),
                        Instant::now(),
                    );
                }
                let grant = self.with_applied(|a| {
                    self.vip
                        .grant(m.current_term, node, &a.state, Instant::now())
                });
                Ok(ForwardedOk::Lease(grant))
            }
            Forwarded::MoveVip { group, to } => self.move_on_leader(group, to).await,
        }
    }

    async fn move_on_leader(&self, group: String, to: Option<NodeId>) -> ForwardedReply {
        let m = self.ensure_leader()?;
        let (exists, current, target_ok) = self.with_applied(|a| {
            let members = a.members();
            let ok = to.is_none_or(|t| members.get(&t).is_some_and(|n| n.role == Role::Director));
            (
                a.state.config.vip_groups.contains_key(&group),
                a.state.owner(&group).owner,
                ok,
            )
        });
        if !exists {
            return Err(ClusterError::rejected(
                ErrorKind::NotFound,
                format!("no such vip_group {group}"),
            ));
        }
        if !target_ok {
            return Err(ClusterError::rejected(
                ErrorKind::FailedPrecondition,
                format!("node {} is not a director of this cluster", to.unwrap_or(0)),
            ));
        }
        if let Some(t) = to
            && !self.vip.alive(m.current_term, t, Instant::now())
        {
            return Err(ClusterError::rejected(
                ErrorKind::FailedPrecondition,
                format!(
                    "node {t} is not renewing its VIP lease (down or cut off); it cannot take vip_group {group}"
                ),
            ));
        }
        let Some(from) = current else {
            return Err(ClusterError::rejected(
                ErrorKind::FailedPrecondition,
                format!("vip_group {group} has no owner to move it from yet"),
            ));
        };
        if Some(from) == to {
            return Ok(ForwardedOk::Moved { owner: Some(from) });
        }
        self.vip
            .begin_handoff(m.current_term, &group, from, to, Instant::now());
        // The assigner completes the move; wait for it to be committed.
        let deadline = Instant::now() + self.vip.timers().lapse() * 4 + Duration::from_secs(1);
        loop {
            let owner = self.with_applied(|a| a.state.owner(&group).owner);
            if owner != Some(from) {
                return Ok(ForwardedOk::Moved { owner });
            }
            if Instant::now() > deadline {
                return Err(ClusterError::Unavailable(format!(
                    "vip_group {group} did not move in time"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn ensure_leader(&self) -> Result<RaftMetrics, ClusterError> {
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return Err(ClusterError::NotLeader(m.current_leader));
        }
        Ok(m)
    }

    async fn join_on_leader(&self, id: NodeId, node: NodeInfo, replace: bool) -> ForwardedReply {
        let m = self.ensure_leader()?;
        let mut membership = m.membership_config.membership().clone();
        if let Some(existing) = membership.get_node(&id) {
            if !replace {
                return Err(ClusterError::rejected(
                    ErrorKind::AlreadyExists,
                    format!(
                        "node {id} is already a member ({existing}); to re-add a node that lost its data or moved, join with --replace"
                    ),
                ));
            }
            // A node that lost its log must not be treated as still holding what it had
            // acknowledged: take it out of the membership (which drops its replication
            // progress), then add it back as a new learner that catches up from scratch.
            tracing::info!(id, %existing, "re-adding a member that lost its state: removing it first");
            self.leave_on_leader(id).await?;
            membership = self.ensure_leader()?.membership_config.membership().clone();
        }
        if let Some((other, _)) = membership
            .nodes()
            .find(|(i, n)| **i != id && n.addr == node.addr)
        {
            return Err(ClusterError::rejected(
                ErrorKind::AlreadyExists,
                format!("address {} already belongs to node {other}", node.addr),
            ));
        }
        tracing::info!(id, %node, "adding node as learner");
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(write_error)?;
        tracing::info!(id, "promoting node to voter");
        let resp = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(write_error)?;
        Ok(ForwardedOk::Membership {
            index: resp.log_id.index,
        })
    }

    async fn leave_on_leader(&self, id: NodeId) -> ForwardedReply {
        let m = self.ensure_leader()?;
        let membership = m.membership_config.membership().clone();
        if membership.get_node(&id).is_none() {
            return Err(ClusterError::rejected(
                ErrorKind::NotFound,
                format!("node {id} is not a member"),
            ));
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(ClusterError::rejected(
                    ErrorKind::FailedPrecondition,
                    format!("node {id} is the only voter; a cluster cannot remove its last voter"),
                ));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        tracing::info!(id, "removing node from the cluster");
        let resp = self
            .raft
            .change_membership(change, false)
            .await
            .map_err(write_error)?;
        Ok(ForwardedOk::Membership {
            index: resp.log_id.index,
        })
    }

    async fn transfer_on_leader(&self, to: Option<NodeId>) -> ForwardedReply {
        let m = self.ensure_leader()?;
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        let target = match to {
            Some(t) if t == self.id => return Ok(ForwardedOk::Transferred { to: t }),
            Some(t) if voters.contains(&t) => t,
            Some(t) => {
                return Err(ClusterError::rejected(
                    ErrorKind::NotFound,
                    format!("node {t} is not a voter; voters are {voters:?}"),
                ));
            }
            None => {
                // The most caught-up other voter takes over with the least delay.
                let matched: BTreeMap<NodeId, u64> = m
                    .replication
                    .as_ref()
                    .map(|r| {
                        r.iter()
                            .map(|(id, l)| (*id, l.as_ref().map(|l| l.index).unwrap_or(0)))
                            .collect()
                    })
                    .unwrap_or_default();
                voters
                    .iter()
                    .filter(|v| **v != self.id)
                    .max_by_key(|v| (matched.get(v).copied().unwrap_or(0), std::cmp::Reverse(**v)))
                    .copied()
                    .ok_or_else(|| {
                        ClusterError::rejected(
                            ErrorKind::FailedPrecondition,
                            "no other voter to transfer leadership to",
                        )
                    })?
            }
        };
        self.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|e| ClusterError::Internal(e.to_string()))?;
        // Report success once the target actually leads.
        self.raft
            .wait(Some(LEADER_WAIT))
            .current_leader(target, "leadership transfer")
            .await
            .map_err(|e| {
                ClusterError::Unavailable(format!("node {target} did not take over: {e}"))
            })?;
        Ok(ForwardedOk::Transferred { to: target })
    }

    /// Members and their roles as the Raft membership records them.
    pub fn members(&self) -> Vec<(NodeId, NodeInfo, bool)> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, n)| (*id, n.clone(), voters.contains(id)))
            .collect()
    }

    pub fn is_witness(&self) -> bool {
        self.members()
            .iter()
            .any(|(id, n, _)| *id == self.id && n.role == Role::Witness)
    }
}

fn write_error(e: RaftError<ClientWriteError>) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ClusterError::NotLeader(f.leader_id),
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => ClusterError::Unavailable(
            "leadership changed while the change was in flight; it may or may not have been applied — check and retry"
                .into(),
        ),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ClusterError::rejected(ErrorKind::FailedPrecondition, format!("membership change: {e}"))
        }
        RaftError::APIError(e) => ClusterError::rejected(ErrorKind::FailedPrecondition, e.to_string()),
        RaftError::Fatal(e) => ClusterError::Unavailable(format!("raft stopped: {e}")),
    }
}
