//! Connection sync on a director: the engine's sync sender and receiver, following the
//! membership (every other director is a peer), and what the rest of the node asks of them.

use std::sync::Arc;
use std::time::Duration;

use fulcrum_sync::stream::{PeerStatus, Receiver, ReceiverStatus, Sender, SyncTimers};
use openraft::ServerState;

use crate::cluster::Cluster;
use crate::dataplane::engine::Engine;
use crate::metrics::MetricsWriter;
use crate::model::Role;

/// A director's sync endpoints. Cheap to clone.
#[derive(Clone)]
pub struct Replication {
    sender: Sender,
    receiver: Receiver,
    engine: Arc<Engine>,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication")
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

impl Replication {
    /// Starts the sender (on the current runtime) and the receiver; serve
    /// `receiver_service()` on the node's gRPC port, then call `follow_members`.
    pub fn start(
        me: u64,
        cluster_name: &str,
        timers: SyncTimers,
        engine: Arc<Engine>,
    ) -> Replication {
        let sender = Sender::start(me, cluster_name.into(), timers, engine.sync_source());
        let receiver = Receiver::new(me, cluster_name.into(), engine.sync_replica());
        engine.set_sync(true);
        Replication {
            sender,
            receiver,
            engine,
        }
    }

    pub fn receiver_service(
        &self,
    ) -> fulcrum_proto::sync::sync_server::SyncServer<fulcrum_sync::stream::Receiver> {
        self.receiver.clone().into_service()
    }

    /// Keeps one link to every other director of the membership, and tells the cluster
    /// which peers are current (the VIP lease renewals carry it to the leader).
    pub fn follow_members(&self, cluster: Cluster) {
        let me = cluster.id();
        let sender = self.sender.clone();
        let reporter = self.sender.clone();
        cluster.set_sync_reporter(Arc::new(move || reporter.current_peers()));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last: Vec<(u64, String)> = Vec::new();
            loop {
                tick.tick().await;
                if cluster.metrics().state == ServerState::Shutdown {
                    sender.stop();
                    return;
                }
                let mut peers: Vec<(u64, String)> = cluster
                    .members()
                    .into_iter()
                    .filter(|(id, n, _)| *id != me && n.role == Role::Director)
                    .map(|(id, n, _)| (id, n.addr))
                    .collect();
                peers.sort();
                if peers != last {
                    tracing::info!(?peers, "sync: following directors");
                    sender.set_peers(&peers);
                    last = peers;
                }
            }
        });
    }

    /// Outgoing links.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.sender.status()
    }

    /// Incoming links.
    pub fn sources(&self) -> Vec<ReceiverStatus> {
        self.receiver.status()
    }

    /// Changes the engine could not hand to the sender (its queues were full).
    pub fn engine_dropped(&self) -> u64 {
        self.engine.sync_dropped()
    }

    /// Writes the sync families (Prometheus) for `/metrics`.
    pub fn write_metrics(&self, w: &mut MetricsWriter) {
        for p in self.peers() {
            let id = p.node.to_string();
            let l = [("peer", id.as_str())];
            let counters = [
                (
                    "fulcrum_sync_sent_entries_total",
                    "Entries sent to the peer (first transmissions, live and snapshot).",
                    p.sent,
                ),
                (
                    "fulcrum_sync_acked_entries_total",
                    "Entries the peer acknowledged.",
                    p.acked,
                ),
                (
                    "fulcrum_sync_retransmitted_entries_total",
                    "Entries resent after a reconnect.",
                    p.retransmitted,
                ),
                (
                    "fulcrum_sync_dropped_entries_total",
                    "Entries dropped for the peer because it fell behind (it was resynced).",
                    p.dropped,
                ),
                (
                    "fulcrum_sync_rejected_entries_total",
                    "Entries the peer could not install.",
                    p.rejected,
                ),
                (
                    "fulcrum_sync_resyncs_total",
                    "Full snapshots sent to the peer.",
                    p.resyncs,
                ),
                (
                    "fulcrum_sync_snapshot_entries_total",
                    "Entries sent in snapshots.",
                    p.snapshot_entries,
                ),
                (
                    "fulcrum_sync_sent_bytes_total",
                    "Record bytes sent to the peer.",
                    p.wire_bytes,
                ),
                (
                    "fulcrum_sync_connects_total",
                    "Streams opened to the peer.",
                    p.connects,
                ),
            ];
            for (name, help, v) in counters {
                w.counter(name, help, &l, v);
            }
            let mut gauges = vec![
                (
                    "fulcrum_sync_peer_current",
                    "1 when the peer is connected, complete and acknowledging in time.",
                    f64::from(u8::from(p.current)),
                ),
                (
                    "fulcrum_sync_peer_behind",
                    "1 when changes were dropped for the peer and a resync is due or under way.",
                    f64::from(u8::from(p.behind)),
                ),
                (
                    "fulcrum_sync_lag_entries",
                    "Changes queued or in flight to the peer, not yet acknowledged.",
                    p.lag_entries as f64,
                ),
                (
                    "fulcrum_sync_lag_seconds",
                    "Age of the oldest unacknowledged change.",
                    p.lag_ms as f64 / 1e3,
                ),
                (
                    "fulcrum_sync_lag_p99_seconds",
                    "p99 of change-to-acknowledgement time over recent batches.",
                    p.lag_p99_us as f64 / 1e6,
                ),
            ];
            if let Some(ms) = p.last_ack_ms {
                gauges.push((
                    "fulcrum_sync_last_ack_age_seconds",
                    "Time since the peer last acknowledged.",
                    ms as f64 / 1e3,
                ));
            }
            for (name, help, v) in gauges {
                w.gauge(name, help, &l, v);
            }
        }
        for s in self.sources() {
            let id = s.node.to_string();
            let l = [("peer", id.as_str())];
            let counters = [
                (
                    "fulcrum_sync_received_entries_total",
                    "Entries received from the peer.",
                    s.entries,
                ),
                (
                    "fulcrum_sync_received_rejected_entries_total",
                    "Entries from the peer that could not be installed.",
                    s.rejected,
                ),
                (
                    "fulcrum_sync_received_snapshots_total",
                    "Complete snapshots received from the peer.",
                    s.snapshots,
                ),
                (
                    "fulcrum_sync_received_swept_entries_total",
                    "Replicated entries removed after a snapshot from the peer no longer had them.",
                    s.swept,
                ),
            ];
            for (name, help, v) in counters {
                w.counter(name, help, &l, v);
            }
            w.gauge(
                "fulcrum_sync_source_connected",
                "1 while the peer streams to this node.",
                &l,
                u64::from(s.connected),
            );
            w.gauge(
                "fulcrum_sync_source_complete",
                "1 once a full snapshot from the peer has arrived.",
                &l,
                u64::from(s.complete),
            );
        }
        w.counter(
            "fulcrum_sync_engine_dropped_changes_total",
            "Changes the engine could not hand to the sync sender (its queues were full).",
            &[],
            self.engine_dropped(),
        );
    }

    pub fn stop(&self) {
        self.engine.set_sync(false);
        self.sender.stop();
    }
}
