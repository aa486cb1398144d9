//! `fulcrum.v1.Cluster`: status, members, join/leave, leadership transfer.

use fulcrum_proto::v1 as pb;
use fulcrum_proto::v1::cluster_server::Cluster as ClusterRpc;
use openraft::Instant as _;
use openraft::ServerState;
use std::pin::Pin;
use std::time::Instant;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::vip::manager::VipHandle;

use super::status;
use crate::cluster::Cluster;
use crate::model::NodeInfo;
use crate::model::Role;

pub struct ClusterApi {
    cluster: Cluster,
    cluster_name: String,
    vip: VipHandle,
    /// `[drill] allow_kill`: `Kill` may make this process exit.
    allow_kill: bool,
}

impl ClusterApi {
    pub fn new(cluster: Cluster, cluster_name: String, vip: VipHandle) -> Self {
        ClusterApi {
            cluster,
            cluster_name,
            vip,
            allow_kill: false,
        }
    }

    /// Lets failover drills make this node exit through `Kill` (`[drill] allow_kill`).
    pub fn allow_kill(mut self, allow: bool) -> Self {
        self.allow_kill = allow;
        self
    }

    fn vip_groups(&self, leader_term: Option<u64>) -> Vec<pb::VipGroupStatus> {
        let me = self.cluster.id();
        let witness = self.cluster.is_witness();
        let view = self.vip.view();
        let now = Instant::now();
        let reg = self.cluster.vip_registry();
        self.cluster.with_applied(|a| {
            a.state
                .config
                .vip_groups
                .values()
                .map(|g| {
                    let o = a.state.owner(&g.name);
                    let held = view.held.contains(&g.name);
                    let lease_age_ms = if held {
                        view.lease_started
                            .map(|s| now.duration_since(s).as_millis() as u64)
                    } else {
                        match (leader_term, o.owner) {
                            (Some(term), Some(owner)) if owner != me => {
                                reg.last_grant_age_ms(term, owner, now)
                            }
                            _ => None,
                        }
                    };
                    pb::VipGroupStatus {
                        name: g.name.clone(),
                        owner: o.owner,
                        epoch: o.epoch,
                        state_here: if witness {
                            "-".into()
                        } else if held {
                            "master".into()
                        } else {
                            "backup".into()
                        },
                        lease_age_ms,
                        last_transition_ms: view
                            .last_transition
                            .get(&g.name)
                            .map(|t| now.duration_since(*t).as_millis() as u64),
                        vips: g.vips.iter().map(|v| v.to_string()).collect(),
                    }
                })
                .collect()
        })
    }

    fn members(&self) -> Vec<pb::Member> {
        self.cluster
            .members()
            .into_iter()
            .map(|(id, n, voter)| pb::Member {
                id,
                addr: n.addr,
                role: n.role.to_string(),
                voter,
            })
            .collect()
    }
}

fn state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[tonic::async_trait]
impl ClusterRpc for ClusterApi {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let m = self.cluster.metrics();
        let leader = m.state == ServerState::Leader;
        let lag_limit = 100;
        let peers = self
            .cluster
            .members()
            .into_iter()
            .map(|(id, _, _)| {
                if id == m.id {
                    return pb::PeerHealth {
                        id,
                        matched_index: m.last_log_index,
                        last_ack_ms: Some(0),
                        state: "self".into(),
                    };
                }
                if !leader {
                    return pb::PeerHealth {
                        id,
                        matched_index: None,
                        last_ack_ms: None,
                        state: "unknown".into(),
                    };
                }
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|l| l.index);
                let ack_ms = m
                    .heartbeat
                    .as_ref()
                    .and_then(|h| h.get(&id).cloned().flatten())
                    .map(|t| t.elapsed().as_millis() as u64);
                let election_ms = self.cluster.raft().config().election_timeout_max;
                let state = match (ack_ms, matched) {
                    (None, _) => "unreachable",
                    (Some(ms), _) if ms > election_ms => "unreachable",
                    (Some(_), Some(mi)) if m.last_log_index.unwrap_or(0) > mi + lag_limit => {
                        "lagging"
                    }
                    _ => "ok",
                };
                pb::PeerHealth {
                    id,
                    matched_index: matched,
                    last_ack_ms: ack_ms,
                    state: state.into(),
                }
            })
            .collect();
        #[allow(deprecated)] // the absolute `last_quorum_acked` needs a clock we'd convert anyway
        let millis_since_quorum_ack = m.millis_since_quorum_ack;
        Ok(Response::new(pb::ClusterStatus {
            node_id: m.id,
            raft_state: state_name(m.state).into(),
            leader_id: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: m.local_committed.as_ref().map(|l| l.index).unwrap_or(0),
            applied_index: m.last_applied.as_ref().map(|l| l.index).unwrap_or(0),
            members: self.members(),
            peers,
            millis_since_quorum_ack,
            cluster_name: self.cluster_name.clone(),
            snapshot_index: m.snapshot.as_ref().map(|l| l.index),
            purged_index: m.purged.as_ref().map(|l| l.index),
            vip_groups: self.vip_groups(leader.then_some(m.current_term)),
        }))
    }

    async fn members(
        &self,
        request: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersReply>, Status> {
        let stale = request.into_inner().read.map(|r| r.stale).unwrap_or(false);
        self.cluster.read_barrier(stale).await.map_err(status)?;
        Ok(Response::new(pb::MembersReply {
            members: self.members(),
            leader_id: self.cluster.metrics().current_leader,
        }))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let req = request.into_inner();
        let role: Role = if req.role.is_empty() {
            Role::Director
        } else {
            req.role
                .parse()
                .map_err(|e| Status::invalid_argument(format!("role: {e}")))?
        };
        crate::config::check_host_port(&req.addr)
            .map_err(|e| Status::invalid_argument(format!("addr {:?}: {e}", req.addr)))?;
        let index = self
            .cluster
            .join(
                req.id,
                NodeInfo {
                    addr: req.addr,
                    role,
                },
                req.replace,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::WriteReply {
            index,
            changes: vec![],
        }))
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let index = self
            .cluster
            .leave(request.into_inner().id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::WriteReply {
            index,
            changes: vec![],
        }))
    }

    type EventsStream = Pin<Box<dyn futures::Stream<Item = Result<pb::Event, Status>> + Send>>;

    async fn events(
        &self,
        _request: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let mut rx = self.vip.events.subscribe();
        let (tx, out) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let item = match rx.recv().await {
                    Ok(e) => Ok(pb::Event {
                        node: e.node,
                        group: e.group,
                        kind: e.kind,
                        old: e.old,
                        new: e.new,
                        detail: e.detail,
                        at_ms: e.at_ms,
                    }),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        Err(Status::data_loss(format!("{n} events missed; watch again")))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn move_vip(
        &self,
        request: Request<pb::MoveVipRequest>,
    ) -> Result<Response<pb::MoveVipReply>, Status> {
        let req = request.into_inner();
        let to = (req.to != 0).then_some(req.to);
        let owner = self.cluster.move_vip(req.group, to).await.map_err(status)?;
        Ok(Response::new(pb::MoveVipReply { owner }))
    }

    async fn kill(
        &self,
        request: Request<pb::KillRequest>,
    ) -> Result<Response<pb::KillReply>, Status> {
        let req = request.into_inner();
        let me = self.cluster.id();
        if req.node_id != me {
            return Err(Status::failed_precondition(format!(
                "this is node {me}, not node {}: not exiting",
                req.node_id
            )));
        }
        if !self.allow_kill {
            return Err(Status::permission_denied(format!(
                "node {me} does not let drills kill it: set `[drill] allow_kill = true` in its fulcrumd.toml"
            )));
        }
        if req.check {
            return Ok(Response::new(pb::KillReply {}));
        }
        tracing::error!(
            reason = %req.reason,
            "exiting now for a failover drill, as if killed with SIGKILL (nothing is cleaned up)"
        );
        // SAFETY: _exit(2) ends the process at once without running destructors or atexit
        // handlers; nothing here relies on them (that is the point: no lease release, no
        // goodbye to peers). The kernel closes the sockets.
        unsafe { libc::_exit(137) }
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferRequest>,
    ) -> Result<Response<pb::TransferReply>, Status> {
        let to = match request.into_inner().to {
            0 => None,
            n => Some(n),
        };
        let leader = self.cluster.transfer_leader(to).await.map_err(status)?;
        Ok(Response::new(pb::TransferReply {
            leader_id: Some(leader),
        }))
    }
}
