//! Raft transport over tonic: one long-lived, lazily connected HTTP/2 channel per peer,
//! shared by replication, votes, snapshots and request forwarding.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use fulcrum_proto::raft::RaftPayload;
use fulcrum_proto::raft::SnapshotChunk;
use fulcrum_proto::raft::raft_client::RaftClient;
use openraft::AnyError;
use openraft::OptionalSend;
use openraft::RaftNetworkFactory;
use openraft::RaftNetworkV2;
use openraft::errors::NetworkError;
use openraft::errors::ReplicationClosed;
use openraft::errors::StreamingError;
use openraft::errors::Unreachable;
use openraft::network::Backoff;
use openraft::network::RPCOption;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Code;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use super::AppendEntriesRequest;
use super::AppendEntriesResponse;
use super::NodeId;
use super::RpcError;
use super::Snapshot;
use super::SnapshotData;
use super::SnapshotResponse;
use super::TransferLeaderRequest;
use super::TransferLeaderResponse;
use super::TypeConfig;
use super::Vote;
use super::VoteRequest;
use super::VoteResponse;
use super::codec;
use crate::model::NodeInfo;

/// Snapshots go over the wire in pieces of this size, well under tonic's 4 MiB default limit.
const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Largest single Raft message accepted (a whole-config `apply` of 10,000 services fits).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Channels to peers, keyed by address. Cloning shares the cache.
#[derive(Clone)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    connect_timeout: Duration,
}

impl Peers {
    pub fn new(connect_timeout: Duration) -> Self {
        Peers {
            channels: Arc::default(),
            connect_timeout,
        }
    }

    /// The channel to `addr` ("host:port"), created on first use. tonic channels reconnect by
    /// themselves, so one per peer serves for the process's lifetime.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| {
                tonic::Status::invalid_argument(format!("bad peer address {addr:?}: {e}"))
            })?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true);
        let ch = endpoint.connect_lazy();
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    pub fn raft_client(&self, addr: &str) -> Result<RaftClient<Channel>, tonic::Status> {
        Ok(RaftClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

/// openraft's network factory: hands out a connection object per target node.
#[derive(Clone)]
pub struct Network {
    pub peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        PeerConnection {
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

pub struct PeerConnection {
    target: NodeId,
    addr: String,
    peers: Peers,
}

/// Connection-level failures mean "back off and retry later"; anything else the peer said
/// is a network error to retry right away.
fn rpc_error(status: tonic::Status) -> RpcError {
    match status.code() {
        Code::Unavailable | Code::Unknown => RpcError::Unreachable(Unreachable::new(&status)),
        _ => RpcError::Network(NetworkError::new(&status)),
    }
}

impl PeerConnection {
    async fn unary<Req, Resp, F, Fut>(
        &self,
        req: &Req,
        ttl: Duration,
        call: F,
    ) -> Result<Resp, RpcError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, RaftPayload) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let client = self.peers.raft_client(&self.addr).map_err(rpc_error)?;
        let payload = RaftPayload {
            data: codec::encode(req).map_err(rpc_error)?,
        };
        let reply = tokio::time::timeout(ttl, call(client, payload))
            .await
            .map_err(|_| {
                RpcError::Network(NetworkError::new(&AnyError::error(format!(
                    "rpc to node {} at {} timed out after {:?}",
                    self.target, self.addr, ttl
                ))))
            })?
            .map_err(rpc_error)?;
        codec::decode(&reply.into_inner().data).map_err(rpc_error)
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse, RpcError> {
        self.unary(&rpc, option.hard_ttl(), |mut c, p| async move {
            c.append_entries(p).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest,
        option: RPCOption,
    ) -> Result<VoteResponse, RpcError> {
        self.unary(&rpc, option.hard_ttl(), |mut c, p| async move {
            c.vote(p).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse, StreamingError<TypeConfig>> {
        let mut client = self.peers.raft_client(&self.addr).map_err(rpc_error)?;
        let meta = codec::encode(&(&vote, &snapshot.meta)).map_err(rpc_error)?;
        let mut chunks = vec![SnapshotChunk { meta, data: vec![] }];
        chunks.extend(
            snapshot
                .snapshot
                .chunks(SNAPSHOT_CHUNK)
                .map(|c| SnapshotChunk {
                    meta: vec![],
                    data: c.to_vec(),
                }),
        );
        let send = client.install_snapshot(tokio_stream::iter(chunks));
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = send => r.map_err(rpc_error)?,
        };
        codec::decode(&reply.into_inner().data).map_err(|s| StreamingError::from(rpc_error(s)))
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse, RpcError> {
        self.unary(&req, option.hard_ttl(), |mut c, p| async move {
            c.transfer_leader(p).await
        })
        .await
    }

    fn backoff(&self) -> Option<Backoff> {
        // Short and flat: a restarted peer should be back in the cluster within a heartbeat or two.
        Some(Backoff::new(std::iter::repeat(Duration::from_millis(100))))
    }
}
