//! `fulcrum.v1.Cluster`: status, members, join/leave, leadership transfer.

use fulcrum_proto::v1 as pb;
use fulcrum_proto::v1::cluster_server::Cluster as ClusterRpc;
use openraft::Instant as _;
use openraft::ServerState;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::status;
use crate::cluster::Cluster;
use crate::model::NodeInfo;
use crate::model::Role;

pub struct ClusterApi {
    cluster: Cluster,
    cluster_name: String,
}

impl ClusterApi {
    pub fn new(cluster: Cluster, cluster_name: String) -> Self {
        ClusterApi {
            cluster,
            cluster_name,
        }
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
