//! The sending side: batches the engine's changes and streams them to every peer.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fulcrum_proto::sync::sync_client::SyncClient;
use fulcrum_proto::sync::{Batch, BatchKind, Hello, SyncFrame, sync_frame, sync_reply};
use tokio::sync::{Notify, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::record::{self, RECORD_VERSION};
use super::status::{LinkState, PeerStatus};
use super::{Source, SyncTimers};
use crate::conn::{ConnEntry, SnapshotCursor};

/// Largest gRPC message a link sends or accepts (a full batch of IPv6 records is ~170 KB).
pub(crate) const MAX_MESSAGE: usize = 8 << 20;

/// One batch, encoded once and shared by every peer's queue.
#[derive(Debug)]
struct Encoded {
    count: u32,
    bytes: Vec<u8>,
    /// No change in the batch was queued before this (the previous drain): lag is measured
    /// from here, an upper bound.
    taken: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Batches waiting for one peer, shared by the drain loop (producer) and the link (consumer).
#[derive(Debug, Default)]
struct Pending {
    batches: VecDeque<Arc<Encoded>>,
    entries: usize,
    /// Changes were dropped for this peer: a snapshot must follow before it is current.
    need_snapshot: bool,
}

#[derive(Debug)]
struct Link {
    node: u64,
    addr: String,
    pending: Mutex<Pending>,
    wake: Notify,
    status: Mutex<PeerStatus>,
    /// Acknowledgement-time samples (µs), a ring for the p99.
    lags: Mutex<VecDeque<u64>>,
    last_ack: Mutex<Option<Instant>>,
    stop: AtomicBool,
}

const LAG_SAMPLES: usize = 4096;

impl Link {
    fn enqueue(&self, batches: &[Arc<Encoded>], max_lag: usize) {
        let mut p = lock(&self.pending);
        if p.need_snapshot {
            // The snapshot still to come reads the table after these changes.
            return;
        }
        for b in batches {
            p.entries += b.count as usize;
            p.batches.push_back(b.clone());
        }
        if p.entries > max_lag {
            let dropped = p.entries as u64;
            p.batches.clear();
            p.entries = 0;
            p.need_snapshot = true;
            drop(p);
            let mut s = lock(&self.status);
            s.dropped += dropped;
            s.behind = true;
            tracing::warn!(
                peer = self.node,
                dropped,
                "sync: peer fell behind; it will get a snapshot"
            );
        } else {
            drop(p);
        }
        self.wake.notify_one();
    }

    fn record_lag(&self, us: u64) {
        let mut l = lock(&self.lags);
        if l.len() == LAG_SAMPLES {
            l.pop_front();
        }
        l.push_back(us);
    }
}

#[derive(Debug)]
struct Inner {
    me: u64,
    session: u64,
    cluster: String,
    timers: SyncTimers,
    source: Arc<dyn Source>,
    links: Mutex<BTreeMap<u64, Arc<Link>>>,
    stop: AtomicBool,
    epoch: Instant,
}

impl std::fmt::Debug for dyn Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Source")
    }
}

/// This director's sending side. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sender {
    inner: Arc<Inner>,
}

impl Sender {
    /// Starts the drain loop (on the current tokio runtime). Peers come with `set_peers`.
    pub fn start(me: u64, cluster: String, timers: SyncTimers, source: Arc<dyn Source>) -> Sender {
        let inner = Arc::new(Inner {
            me,
            session: new_session_id(),
            cluster,
            timers,
            source,
            links: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
            epoch: Instant::now(),
        });
        tokio::spawn(drain_loop(inner.clone()));
        Sender { inner }
    }

    /// Follows membership: starts links to new peers, stops links to peers that left (or
    /// whose address changed).
    pub fn set_peers(&self, peers: &[(u64, String)]) {
        let mut links = lock(&self.inner.links);
        links.retain(|id, l| {
            let keep = peers.iter().any(|(p, a)| p == id && *a == l.addr);
            if !keep {
                l.stop.store(true, Relaxed);
                l.wake.notify_one();
            }
            keep
        });
        for (id, addr) in peers {
            if *id == self.inner.me || links.contains_key(id) {
                continue;
            }
            let link = Arc::new(Link {
                node: *id,
                addr: addr.clone(),
                pending: Mutex::new(Pending::default()),
                wake: Notify::new(),
                status: Mutex::new(PeerStatus {
                    node: *id,
                    addr: addr.clone(),
                    ..PeerStatus::default()
                }),
                lags: Mutex::new(VecDeque::with_capacity(LAG_SAMPLES)),
                last_ack: Mutex::new(None),
                stop: AtomicBool::new(false),
            });
            links.insert(*id, link.clone());
            tokio::spawn(run_link(self.inner.clone(), link));
        }
    }

    /// Status of every outgoing link, by peer id.
    pub fn status(&self) -> Vec<PeerStatus> {
        let links: Vec<Arc<Link>> = lock(&self.inner.links).values().cloned().collect();
        let t = &self.inner.timers;
        let now = Instant::now();
        links
            .iter()
            .map(|l| {
                let (queued, need) = {
                    let p = lock(&l.pending);
                    (p.entries as u64, p.need_snapshot)
                };
                let last_ack = *lock(&l.last_ack);
                let mut s = lock(&l.status).clone();
                s.lag_entries += queued;
                s.behind |= need;
                s.last_ack_ms =
                    last_ack.map(|a| now.saturating_duration_since(a).as_millis() as u64);
                s.current = s.state == LinkState::Live
                    && !s.behind
                    && last_ack
                        .is_some_and(|a| now.saturating_duration_since(a) <= t.current_within)
                    && s.lag_entries <= (t.batch_entries * t.window) as u64;
                s.lag_p99_us = p99(&lock(&l.lags));
                s
            })
            .collect()
    }

    /// Peers that are current (see `PeerStatus::current`).
    pub fn current_peers(&self) -> Vec<u64> {
        self.status()
            .into_iter()
            .filter(|s| s.current)
            .map(|s| s.node)
            .collect()
    }

    /// Stops the drain loop and every link.
    pub fn stop(&self) {
        self.inner.stop.store(true, Relaxed);
        for l in lock(&self.inner.links).values() {
            l.stop.store(true, Relaxed);
            l.wake.notify_one();
        }
    }
}

fn p99(samples: &VecDeque<u64>) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    let mut v: Vec<u64> = samples.iter().copied().collect();
    v.sort_unstable();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

pub(crate) fn new_session_id() -> u64 {
    // Unique per process start: wall-clock nanoseconds mixed with the pid.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    (t ^ (u64::from(std::process::id()) << 48)) | 1
}

async fn drain_loop(inner: Arc<Inner>) {
    let t = inner.timers.clone();
    let mut changes: Vec<ConnEntry> = Vec::with_capacity(t.batch_entries * 4);
    let mut tick = tokio::time::interval(t.batch_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prev_drain = Instant::now();
    while !inner.stop.load(Relaxed) {
        tick.tick().await;
        let taken = prev_drain;
        prev_drain = Instant::now();
        inner.source.drain(&mut changes);
        if changes.is_empty() {
            continue;
        }
        let links: Vec<Arc<Link>> = lock(&inner.links).values().cloned().collect();
        if links.is_empty() {
            changes.clear();
            continue;
        }
        let now = inner.source.now();
        let batches: Vec<Arc<Encoded>> = changes
            .chunks(t.batch_entries)
            .map(|c| Arc::new(encode(c, now, taken)))
            .collect();
        changes.clear();
        for l in &links {
            l.enqueue(&batches, t.max_lag_entries);
        }
    }
}

fn encode(entries: &[ConnEntry], now: u32, taken: Instant) -> Encoded {
    let mut bytes = Vec::with_capacity(entries.len() * 40);
    for e in entries {
        record::encode(e, now, &mut bytes);
    }
    Encoded {
        count: entries.len() as u32,
        bytes,
        taken,
    }
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("peer closed the stream")]
    Closed,
    #[error("peer sent no welcome in time")]
    NoWelcome,
    #[error("protocol: {0}")]
    Protocol(&'static str),
    #[error("peer is node {0}, expected another node")]
    WrongPeer(u64),
}

/// What the link remembers across reconnects.
#[derive(Debug, Default)]
struct LinkMemory {
    /// The receiver process we last streamed to.
    receiver_session: Option<u64>,
    next_seq: u64,
    /// Sent, not acknowledged: (seq, batch, kind).
    outstanding: VecDeque<(u64, Arc<Encoded>, BatchKind)>,
}

impl LinkMemory {
    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Sends `b` as batch `seq` and keeps it until it is acknowledged.
    async fn send(
        &mut self,
        tx: &mpsc::Sender<SyncFrame>,
        seq: u64,
        kind: BatchKind,
        b: Arc<Encoded>,
        begin: bool,
        epoch: Instant,
    ) -> Result<(), LinkError> {
        tx.send(frame_of(seq, kind, &b, begin, epoch))
            .await
            .map_err(|_| LinkError::Closed)?;
        self.outstanding.push_back((seq, b, kind));
        Ok(())
    }
}

/// The next new batch for `link`: live changes; while a snapshot runs, live batches and
/// snapshot chunks take turns, so a long snapshot does not hold the live stream back. A peer
/// that fell behind mid-stream starts its snapshot here, on the same connection. Returns the
/// batch, its kind and whether it begins a snapshot.
fn next_batch(
    inner: &Inner,
    link: &Link,
    walk: &mut Option<Walk>,
    chunk: &mut Vec<ConnEntry>,
) -> Option<(Arc<Encoded>, BatchKind, bool)> {
    if walk.is_none() && lock(&link.pending).need_snapshot {
        *walk = Some(begin_snapshot(link));
        lock(&link.status).state = LinkState::Resyncing;
    }
    let live_turn = walk.as_mut().is_none_or(|w| {
        w.live_turn = !w.live_turn;
        !w.live_turn
    });
    if live_turn {
        let mut p = lock(&link.pending);
        if let Some(b) = p.batches.pop_front() {
            p.entries -= b.count as usize;
            return Some((b, BatchKind::Live, false));
        }
    }
    let w = walk.as_mut()?;
    chunk.clear();
    let done = inner
        .source
        .snapshot_chunk(&mut w.cursor, inner.timers.batch_entries, chunk);
    let b = Arc::new(encode(chunk, inner.source.now(), Instant::now()));
    let begin = !std::mem::replace(&mut w.begun, true);
    lock(&link.status).snapshot_entries += u64::from(b.count);
    let kind = if done {
        *walk = None;
        BatchKind::SnapshotEnd
    } else {
        BatchKind::Snapshot
    };
    Some((b, kind, begin))
}

async fn run_link(inner: Arc<Inner>, link: Arc<Link>) {
    let mut mem = LinkMemory {
        next_seq: 1,
        ..LinkMemory::default()
    };
    let mut backoff = Duration::from_millis(50);
    while !link.stop.load(Relaxed) && !inner.stop.load(Relaxed) {
        let started = Instant::now();
        let r = run_connection(&inner, &link, &mut mem).await;
        {
            let mut s = lock(&link.status);
            s.state = LinkState::Connecting;
        }
        if link.stop.load(Relaxed) || inner.stop.load(Relaxed) {
            break;
        }
        if let Err(e) = r {
            tracing::debug!(peer = link.node, addr = %link.addr, "sync link: {e}");
        }
        if started.elapsed() > Duration::from_secs(2) {
            backoff = Duration::from_millis(50);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = link.wake.notified() => {}
        }
        backoff = (backoff * 2).min(inner.timers.reconnect_max);
    }
}

fn frame_of(seq: u64, kind: BatchKind, b: &Encoded, begin: bool, epoch: Instant) -> SyncFrame {
    SyncFrame {
        kind: Some(sync_frame::Kind::Batch(Batch {
            seq,
            kind: kind as i32,
            count: b.count,
            records: b.bytes.clone(),
            taken_us: b.taken.saturating_duration_since(epoch).as_micros() as u64,
            snapshot_begin: begin,
        })),
    }
}

/// A snapshot being walked.
#[derive(Debug)]
struct Walk {
    cursor: SnapshotCursor,
    begun: bool,
    /// Live batches and snapshot chunks alternate, so a long snapshot does not hold back
    /// the live stream.
    live_turn: bool,
}

/// Starts a full snapshot for `link`: what was queued for it is dropped (the snapshot reads the
/// table after those changes) and the peer counts as behind until the snapshot is acknowledged.
fn begin_snapshot(link: &Link) -> Walk {
    {
        let mut p = lock(&link.pending);
        p.batches.clear();
        p.entries = 0;
        p.need_snapshot = false;
    }
    let mut s = lock(&link.status);
    s.resyncs += 1;
    s.behind = true;
    tracing::info!(peer = link.node, "sync: sending a full snapshot");
    Walk {
        cursor: SnapshotCursor::new(),
        begun: false,
        live_turn: false,
    }
}

async fn run_connection(
    inner: &Arc<Inner>,
    link: &Arc<Link>,
    mem: &mut LinkMemory,
) -> Result<(), LinkError> {
    let t = &inner.timers;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", link.addr))
        .map_err(LinkError::Connect)?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(1))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2));
    let channel = endpoint.connect().await?;
    let mut client = SyncClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::channel::<SyncFrame>(t.window + 8);
    let hello = SyncFrame {
        kind: Some(sync_frame::Kind::Hello(Hello {
            from: inner.me,
            session: inner.session,
            cluster_name: inner.cluster.clone(),
            record_version: RECORD_VERSION,
        })),
    };
    tx.send(hello).await.map_err(|_| LinkError::Closed)?;
    let mut replies = client
        .replicate(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let welcome = match tokio::time::timeout(Duration::from_secs(2), replies.next()).await {
        Ok(Some(Ok(r))) => match r.kind {
            Some(sync_reply::Kind::Welcome(w)) => w,
            _ => return Err(LinkError::Protocol("expected a welcome")),
        },
        Ok(Some(Err(s))) => return Err(s.into()),
        Ok(None) => return Err(LinkError::Closed),
        Err(_) => return Err(LinkError::NoWelcome),
    };
    if welcome.node != link.node {
        return Err(LinkError::WrongPeer(welcome.node));
    }
    {
        let mut s = lock(&link.status);
        s.connects += 1;
    }
    // Resume when the receiver is the same process and still has everything before our
    // oldest unacknowledged batch; otherwise a snapshot.
    let need_snapshot = lock(&link.pending).need_snapshot;
    let same = mem.receiver_session == Some(welcome.session);
    let covered = mem
        .outstanding
        .front()
        .is_none_or(|(seq, _, _)| *seq <= welcome.applied + 1)
        && welcome.applied < mem.next_seq;
    let mut resend: VecDeque<(u64, Arc<Encoded>, BatchKind)> = VecDeque::new();
    let mut walk = None;
    if same && covered && !need_snapshot && mem.receiver_session.is_some() {
        while mem
            .outstanding
            .front()
            .is_some_and(|(s, _, _)| *s <= welcome.applied)
        {
            mem.outstanding.pop_front();
        }
        resend = std::mem::take(&mut mem.outstanding);
        tracing::info!(
            peer = link.node,
            resend = resend.len(),
            "sync: link resumed"
        );
    } else {
        mem.outstanding.clear();
        walk = Some(begin_snapshot(link));
    }
    mem.receiver_session = Some(welcome.session);
    lock(&link.status).state = if walk.is_some() {
        LinkState::Resyncing
    } else {
        LinkState::Live
    };

    let mut last_sent = Instant::now();
    let mut heartbeat = tokio::time::interval(t.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut chunk: Vec<ConnEntry> = Vec::with_capacity(t.batch_entries);
    loop {
        if link.stop.load(Relaxed) || inner.stop.load(Relaxed) {
            return Ok(());
        }
        // Send while the window has room: resends first (same sequence numbers: the receiver
        // answers with the highest it applied, and applying twice is harmless), then new ones.
        while mem.outstanding.len() < t.window {
            let (seq, b, kind, begin) = if let Some((seq, b, kind)) = resend.pop_front() {
                lock(&link.status).retransmitted += u64::from(b.count);
                (seq, b, kind, false)
            } else {
                let Some((b, kind, begin)) = next_batch(inner, link, &mut walk, &mut chunk) else {
                    break;
                };
                let mut s = lock(&link.status);
                s.sent += u64::from(b.count);
                s.wire_bytes += b.bytes.len() as u64;
                (mem.take_seq(), b, kind, begin)
            };
            mem.send(&tx, seq, kind, b, begin, inner.epoch).await?;
            last_sent = Instant::now();
        }
        tokio::select! {
            reply = replies.next() => {
                let ack = match reply {
                    Some(Ok(r)) => match r.kind {
                        Some(sync_reply::Kind::Ack(a)) => a,
                        _ => return Err(LinkError::Protocol("expected an ack")),
                    },
                    Some(Err(s)) => return Err(s.into()),
                    None => return Err(LinkError::Closed),
                };
                let now = Instant::now();
                let mut acked = 0u64;
                let mut snapshot_done = false;
                while mem.outstanding.front().is_some_and(|(s, _, _)| *s <= ack.seq) {
                    if let Some((_, b, kind)) = mem.outstanding.pop_front() {
                        acked += u64::from(b.count);
                        if kind == BatchKind::Live {
                            link.record_lag(now.saturating_duration_since(b.taken).as_micros() as u64);
                        }
                        snapshot_done |= kind == BatchKind::SnapshotEnd;
                    }
                }
                *lock(&link.last_ack) = Some(now);
                let mut s = lock(&link.status);
                s.acked += acked;
                s.rejected += ack.rejected;
                if snapshot_done && walk.is_none() {
                    s.behind = false;
                    s.state = LinkState::Live;
                    tracing::info!(peer = link.node, entries = s.snapshot_entries, "sync: snapshot acknowledged; peer is current");
                }
                let in_flight: u64 = mem.outstanding.iter().map(|(_, b, _)| u64::from(b.count)).sum();
                s.lag_entries = in_flight;
                s.lag_ms = mem
                    .outstanding
                    .front()
                    .map_or(0, |(_, b, _)| now.saturating_duration_since(b.taken).as_millis() as u64);
            }
            _ = link.wake.notified() => {}
            _ = heartbeat.tick() => {
                if last_sent.elapsed() >= t.heartbeat && mem.outstanding.len() < t.window {
                    let b = Arc::new(Encoded { count: 0, bytes: Vec::new(), taken: Instant::now() });
                    let seq = mem.take_seq();
                    mem.send(&tx, seq, BatchKind::Heartbeat, b, false, inner.epoch).await?;
                    last_sent = Instant::now();
                }
                let now = Instant::now();
                lock(&link.status).lag_ms = mem
                    .outstanding
                    .front()
                    .map_or(0, |(_, b, _)| now.saturating_duration_since(b.taken).as_millis() as u64);
            }
        }
    }
}
