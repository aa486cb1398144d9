//! The receiving side: the `Sync` gRPC service. Installs what peers send, acknowledges it.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use fulcrum_proto::sync::sync_server::{Sync, SyncServer};
use fulcrum_proto::sync::{
    Ack, Batch, BatchKind, SyncFrame, SyncReply, Welcome, sync_frame, sync_reply,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::Replica;
use super::record::{RECORD_VERSION, Reader};
use super::sender::MAX_MESSAGE;
use super::status::ReceiverStatus;
use crate::conn::ConnEntry;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the receiver remembers of one sender.
#[derive(Debug, Default)]
struct FromPeer {
    /// The sender session the sequence numbers below belong to.
    session: u64,
    applied: u64,
    /// Which stream is the live one: an older stream of the same sender stops applying.
    stream: u64,
    complete: bool,
    /// Table clock when the snapshot under way began.
    snapshot_started: Option<u32>,
    status: ReceiverStatus,
    last_batch: Option<Instant>,
}

struct Inner {
    me: u64,
    session: u64,
    cluster: String,
    replica: Arc<dyn Replica>,
    peers: Mutex<BTreeMap<u64, FromPeer>>,
    streams: AtomicU64,
}

/// This director's receiving side; `into_service` gives the tonic service.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("me", &self.inner.me)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    pub fn new(me: u64, cluster: String, replica: Arc<dyn Replica>) -> Receiver {
        Receiver {
            inner: Arc::new(Inner {
                me,
                session: super::sender::new_session_id(),
                cluster,
                replica,
                peers: Mutex::new(BTreeMap::new()),
                streams: AtomicU64::new(0),
            }),
        }
    }

    pub fn into_service(self) -> SyncServer<Receiver> {
        SyncServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    pub fn status(&self) -> Vec<ReceiverStatus> {
        let now = Instant::now();
        lock(&self.inner.peers)
            .iter()
            .map(|(id, p)| {
                let mut s = p.status.clone();
                s.node = *id;
                s.complete = p.complete;
                s.applied_seq = p.applied;
                s.last_batch_ms = p
                    .last_batch
                    .map(|t| now.saturating_duration_since(t).as_millis() as u64);
                s
            })
            .collect()
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<SyncReply, Status>> + Send>>;

#[tonic::async_trait]
impl Sync for Receiver {
    type ReplicateStream = ReplyStream;

    async fn replicate(
        &self,
        request: Request<Streaming<SyncFrame>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match inbound.next().await {
            Some(Ok(SyncFrame {
                kind: Some(sync_frame::Kind::Hello(h)),
            })) => h,
            Some(Ok(_)) => return Err(Status::invalid_argument("the first frame must be a hello")),
            Some(Err(s)) => return Err(s),
            None => return Err(Status::cancelled("stream ended before the hello")),
        };
        if hello.cluster_name != self.inner.cluster {
            return Err(Status::failed_precondition(format!(
                "cluster name {:?} is not this cluster's ({:?})",
                hello.cluster_name, self.inner.cluster
            )));
        }
        if hello.record_version != RECORD_VERSION {
            return Err(Status::failed_precondition(format!(
                "sync record version {} is not supported (this node speaks {RECORD_VERSION})",
                hello.record_version
            )));
        }
        if hello.from == 0 || hello.from == self.inner.me {
            return Err(Status::invalid_argument("bad sender id"));
        }
        let from = hello.from;
        let stream_id = self.inner.streams.fetch_add(1, Relaxed) + 1;
        let applied = {
            let mut peers = lock(&self.inner.peers);
            let p = peers.entry(from).or_default();
            if p.session != hello.session {
                // A new sender process: its sequence numbers start over, its snapshot follows.
                p.session = hello.session;
                p.applied = 0;
                p.complete = false;
            }
            p.stream = stream_id;
            p.status.connected = true;
            p.applied
        };
        tracing::info!(peer = from, applied, "sync: peer connected");
        let (tx, rx) = mpsc::channel::<Result<SyncReply, Status>>(256);
        let welcome = SyncReply {
            kind: Some(sync_reply::Kind::Welcome(Welcome {
                node: self.inner.me,
                session: self.inner.session,
                applied,
            })),
        };
        tx.send(Ok(welcome))
            .await
            .map_err(|_| Status::cancelled("closed"))?;
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut entries: Vec<ConnEntry> = Vec::with_capacity(4096);
            while let Some(frame) = inbound.next().await {
                let batch = match frame {
                    Ok(SyncFrame {
                        kind: Some(sync_frame::Kind::Batch(b)),
                    }) => b,
                    Ok(_) => {
                        let _ = tx
                            .send(Err(Status::invalid_argument("expected a batch")))
                            .await;
                        break;
                    }
                    Err(_) => break,
                };
                if lock(&inner.peers)
                    .get(&from)
                    .is_none_or(|p| p.stream != stream_id)
                {
                    // A newer stream from the same sender took over.
                    break;
                }
                let rejected = apply(&inner, from, &batch, &mut entries);
                let ack = SyncReply {
                    kind: Some(sync_reply::Kind::Ack(Ack {
                        seq: batch.seq,
                        rejected,
                    })),
                };
                if tx.send(Ok(ack)).await.is_err() {
                    break;
                }
            }
            let mut peers = lock(&inner.peers);
            if let Some(p) = peers.get_mut(&from)
                && p.stream == stream_id
            {
                p.status.connected = false;
            }
            tracing::info!(peer = from, "sync: peer stream ended");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Installs one batch; returns the entries that could not be installed.
fn apply(inner: &Inner, from: u64, batch: &Batch, entries: &mut Vec<ConnEntry>) -> u64 {
    let kind = BatchKind::try_from(batch.kind).unwrap_or(BatchKind::Unspecified);
    entries.clear();
    let now = inner.replica.now();
    let mut reader = Reader::new(&batch.records);
    let mut bad = 0u64;
    while let Some(r) = reader.next_entry(now) {
        match r {
            Ok(e) => entries.push(e),
            Err(e) => {
                tracing::warn!(peer = from, seq = batch.seq, "sync: bad record: {e}");
                bad += u64::from(batch.count)
                    .saturating_sub(entries.len() as u64)
                    .max(1);
            }
        }
    }
    if batch.snapshot_begin {
        // Before installing the first chunk: its entries are stamped at `now` or later.
        let mut peers = lock(&inner.peers);
        let p = peers.entry(from).or_default();
        p.complete = false;
        p.snapshot_started = Some(now);
    }
    let rejected = bad + inner.replica.install(from, entries);
    let mut swept = 0;
    if kind == BatchKind::SnapshotEnd {
        let started = lock(&inner.peers)
            .get(&from)
            .and_then(|p| p.snapshot_started);
        if let Some(start) = started {
            swept = inner
                .replica
                .sweep(from, inner.replica.now().saturating_sub(start));
            if swept > 0 {
                tracing::info!(
                    peer = from,
                    swept,
                    "sync: removed entries the snapshot no longer had"
                );
            }
        }
    }
    let mut peers = lock(&inner.peers);
    let p = peers.entry(from).or_default();
    if kind == BatchKind::SnapshotEnd {
        p.complete = true;
        p.snapshot_started = None;
        p.status.snapshots += 1;
        p.status.swept += swept;
    }
    if batch.seq > p.applied {
        p.applied = batch.seq;
    }
    p.status.entries += entries.len() as u64;
    p.status.rejected += rejected;
    p.last_batch = Some(Instant::now());
    rejected
}
