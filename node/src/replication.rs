//! Connection sync on a director: the engine's sync sender and receiver, following the
//! membership (every other director is a peer), and what the rest of the node asks of them.

use std::sync::Arc;
use std::time::Duration;

use fulcrum_sync::stream::{PeerStatus, Receiver, ReceiverStatus, Sender, SyncTimers};
use openraft::ServerState;

use crate::cluster::Cluster;
use crate::dataplane::engine::Engine;
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

    pub fn stop(&self) {
        self.engine.set_sync(false);
        self.sender.stop();
    }
}
