//! The server side of the Raft transport (`fulcrum.raft.v1.Raft`).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use fulcrum_proto::raft::RaftPayload;
use fulcrum_proto::raft::SnapshotChunk;
use fulcrum_proto::raft::raft_server::Raft as RaftRpc;
use futures::StreamExt;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use super::AppendEntriesRequest;
use super::Snapshot;
use super::SnapshotMeta;
use super::TransferLeaderRequest;
use super::Vote;
use super::VoteRequest;
use super::codec;
use crate::cluster::Cluster;
use crate::cluster::Forwarded;

/// Upper bound on a received snapshot, so a confused or hostile peer cannot exhaust memory.
const MAX_SNAPSHOT_BYTES: usize = 1 << 30;

pub struct RaftService {
    cluster: Cluster,
    /// Closed while a node that lost its data re-joins: until its old membership is gone, a
    /// leader's replication to it would find its log "reverted" (which openraft refuses), and
    /// it must not vote with a vote it has forgotten.
    open: Arc<AtomicBool>,
}

impl RaftService {
    pub fn new(cluster: Cluster, open: Arc<AtomicBool>) -> Self {
        RaftService { cluster, open }
    }

    fn gate(&self) -> Result<(), Status> {
        if self.open.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Status::unavailable(
                "this node is re-joining the cluster and takes no part in Raft yet",
            ))
        }
    }
}

fn fatal(e: impl std::fmt::Display) -> Status {
    // The local Raft core has stopped (shutting down): make the caller back off.
    Status::unavailable(format!("raft: {e}"))
}

fn reply<T: serde::Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    Ok(Response::new(RaftPayload {
        data: codec::encode(v)?,
    }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.gate()?;
        let req: AppendEntriesRequest = codec::decode(&request.into_inner().data)?;
        let resp = self
            .cluster
            .raft()
            .append_entries(req)
            .await
            .map_err(fatal)?;
        reply(&resp)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.gate()?;
        let req: VoteRequest = codec::decode(&request.into_inner().data)?;
        let resp = self.cluster.raft().vote(req).await.map_err(fatal)?;
        reply(&resp)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.gate()?;
        let mut stream = request.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let (vote, meta): (Vote, SnapshotMeta) = codec::decode(&first.meta)?;
        let mut data = first.data;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if data.len() + chunk.data.len() > MAX_SNAPSHOT_BYTES {
                return Err(Status::resource_exhausted("snapshot larger than 1 GiB"));
            }
            data.extend_from_slice(&chunk.data);
        }
        let snapshot = Snapshot {
            meta,
            snapshot: data,
        };
        let resp = self
            .cluster
            .raft()
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(fatal)?;
        reply(&resp)
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.gate()?;
        let req: TransferLeaderRequest = codec::decode(&request.into_inner().data)?;
        let resp = self
            .cluster
            .raft()
            .handle_transfer_leader(req)
            .await
            .map_err(fatal)?;
        reply(&resp)
    }

    async fn forward(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.gate()?;
        let req: Forwarded = codec::decode(&request.into_inner().data)?;
        let resp = self.cluster.handle_forwarded(req).await;
        reply(&resp)
    }
}
