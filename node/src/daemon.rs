//! Starting and stopping a node: storage, Raft, the gRPC server, bootstrap or join.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use anyhow::bail;
use fulcrum_proto::raft::raft_server::RaftServer;
use fulcrum_proto::v1::JoinRequest;
use fulcrum_proto::v1::LeaveRequest;
use fulcrum_proto::v1::cluster_client::ClusterClient;
use fulcrum_proto::v1::cluster_server::ClusterServer;
use fulcrum_proto::v1::config_server::ConfigServer;
use fulcrum_proto::v1::connections_server::ConnectionsServer;
use tokio_util::sync::CancellationToken;

use fulcrum_node::api::ClusterApi;
use fulcrum_node::api::ConfigApi;
use fulcrum_node::api::ConnectionsApi;
use fulcrum_node::cluster::Cluster;
use fulcrum_node::config::NodeConfig;
use fulcrum_node::dataplane::engine::Engine;
use fulcrum_node::fsutil;
use fulcrum_node::model::NodeInfo;
use fulcrum_node::raft::Raft;
use fulcrum_node::raft::log_store::LogStore;
use fulcrum_node::raft::network::MAX_MESSAGE_BYTES;
use fulcrum_node::raft::network::Network;
use fulcrum_node::raft::network::Peers;
use fulcrum_node::raft::service::RaftService;
use fulcrum_node::raft::state_machine::StateMachine;

/// openraft settings derived from our validated timers.
fn raft_config(cfg: &NodeConfig) -> anyhow::Result<openraft::Config> {
    let t = &cfg.raft;
    let c = openraft::Config {
        cluster_name: cfg.cluster_name.clone(),
        heartbeat_interval: t.heartbeat.as_millis() as u64,
        election_timeout_min: t.election_min.as_millis() as u64,
        election_timeout_max: t.election_max.as_millis() as u64,
        // Snapshots travel as one streamed RPC; give big configs time to arrive.
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_every),
        max_in_snapshot_log_to_keep: t.keep_after_snapshot,
        // Pre-vote keeps a node that was cut off from bumping the term and unseating a healthy
        // leader when it comes back.
        enable_pre_vote: Some(true),
        ..Default::default()
    };
    Ok(c.validate()?)
}

/// Refuses to start on a data dir that belongs to another node id: that would let one
/// node's vote and log be used by another, which breaks Raft's safety.
fn check_node_id(dir: &Path, id: u64) -> anyhow::Result<()> {
    let path = dir.join("node_id");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let stored: u64 = s
                .trim()
                .parse()
                .with_context(|| format!("{} is corrupt", path.display()))?;
            if stored != id {
                bail!(
                    "data dir {} belongs to node {stored}, not {id}; use that id or an empty data dir",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fsutil::write_atomic(&path, format!("{id}\n").as_bytes()).context("writing node_id")
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// A running node. Dropping it does not stop it; call [`Node::shutdown`].
pub struct Node {
    raft: Raft,
    engine: Option<Arc<Engine>>,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Node {
    pub async fn start(cfg: NodeConfig) -> anyhow::Result<Node> {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
        check_node_id(&cfg.data_dir, cfg.id)?;
        let log_store =
            LogStore::open(&cfg.data_dir.join("raft-log")).context("opening raft log")?;
        let sm =
            StateMachine::open(cfg.data_dir.join("state")).context("opening state snapshot")?;
        let shared = sm.shared();
        let events = sm.events();
        let peers = Peers::new(cfg.raft.election_min);
        let network = Network {
            peers: peers.clone(),
        };
        let raft_cfg = Arc::new(raft_config(&cfg)?);
        let raft = Raft::new(cfg.id, raft_cfg, network, log_store, sm)
            .await
            .context("starting raft")?;
        let registry = Arc::new(fulcrum_node::vip::Registry::new(cfg.vip.clone()));
        let cluster = Cluster::new(
            cfg.id,
            raft.clone(),
            shared,
            events,
            peers.clone(),
            registry,
        );
        let vip = fulcrum_node::vip::manager::VipHandle::default();
        let engine = match &cfg.engine {
            Some(e) => Some(Arc::new(
                Engine::start(e).context("starting the forwarding engine")?,
            )),
            None => None,
        };

        // Connection sync: directors with an engine stream their flows to the other directors.
        let replication = match (&engine, &cfg.sync, cfg.role) {
            (Some(e), Some(timers), fulcrum_node::model::Role::Director) => {
                Some(fulcrum_node::replication::Replication::start(
                    cfg.id,
                    &cfg.cluster_name,
                    timers.clone(),
                    e.clone(),
                ))
            }
            _ => None,
        };

        // A node joining with an empty data dir stays out of Raft until its old membership (if
        // its id had one) is gone; see `RaftService`.
        let initialized = raft.is_initialized().await.context("raft stopped")?;
        let raft_open = Arc::new(std::sync::atomic::AtomicBool::new(
            initialized || cfg.join.is_none(),
        ));
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        tracing::info!(id = cfg.id, listen = %cfg.listen, advertise = %cfg.advertise, role = ?cfg.role, "fulcrumd serving");
        let stop = CancellationToken::new();
        let server = {
            let stop = stop.clone();
            let raft_svc = RaftServer::new(RaftService::new(cluster.clone(), raft_open.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let cluster_svc = ClusterServer::new(
                ClusterApi::new(cluster.clone(), cfg.cluster_name.clone(), vip.clone())
                    .allow_kill(cfg.allow_kill),
            );
            let config_svc = ConfigServer::new(ConfigApi::new(cluster.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            // Small Raft messages must not sit in Nagle's buffer waiting for a delayed ACK (40 ms).
            let conns_svc = ConnectionsServer::new(
                ConnectionsApi::new(engine.clone()).with_sync(cfg.id, replication.clone()),
            )
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let sync_svc = replication.as_ref().map(|r| r.receiver_service());
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .http2_keepalive_interval(Some(Duration::from_secs(1)))
                    .add_service(raft_svc)
                    .add_service(cluster_svc)
                    .add_service(config_svc)
                    .add_service(conns_svc)
                    .add_optional_service(sync_svc)
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await
                    .context("grpc server")
            })
        };

        let metrics = fulcrum_node::metrics::node_metrics(&cluster, engine.clone(), &vip, cfg.role);
        if let Some(r) = &replication {
            let r = r.clone();
            metrics.add(move |w: &mut fulcrum_node::metrics::MetricsWriter| r.write_metrics(w));
        }
        if let Some(addr) = cfg.metrics {
            fulcrum_node::metrics::server::spawn(addr, metrics.clone(), stop.clone()).await?;
        }

        if let Some(r) = &replication {
            r.follow_members(cluster.clone());
        }

        // Every node may lead, so every node runs the assigner; only directors hold VIPs (a
        // witness runs the holder only to follow assignments for status and events).
        fulcrum_node::vip::manager::spawn_assigner(cluster.clone());
        fulcrum_node::vip::manager::spawn_holder(
            cluster.clone(),
            engine.clone(),
            vip.clone(),
            cfg.vip.clone(),
            cfg.notify.clone(),
            cfg.role == fulcrum_node::model::Role::Director,
        );
        let node = Node {
            raft,
            engine,
            stop,
            server,
        };
        node.bootstrap_or_join(&cfg, &peers, &raft_open).await?;
        Ok(node)
    }

    async fn bootstrap_or_join(
        &self,
        cfg: &NodeConfig,
        peers: &Peers,
        raft_open: &std::sync::atomic::AtomicBool,
    ) -> anyhow::Result<()> {
        if raft_open.load(std::sync::atomic::Ordering::Acquire)
            && self.raft.is_initialized().await.context("raft stopped")?
        {
            if cfg.bootstrap.is_some() || cfg.join.is_some() {
                tracing::info!(
                    "data dir already holds cluster state; ignoring bootstrap/join settings"
                );
            }
            return Ok(());
        }
        if let Some(members) = &cfg.bootstrap {
            let members: BTreeMap<u64, NodeInfo> = members
                .iter()
                .map(|m| {
                    (
                        m.id,
                        NodeInfo {
                            addr: m.addr.clone(),
                            role: m.role,
                        },
                    )
                })
                .collect();
            tracing::info!(?members, "bootstrapping a new cluster");
            self.raft
                .initialize(members)
                .await
                .context("initializing the cluster")?;
        } else if let Some(join) = &cfg.join {
            self.join_through(join, cfg, peers, raft_open).await?;
        } else {
            tracing::warn!(
                "this node is not part of a cluster yet: start it with `bootstrap`, `join`, or add it with `fulcrum cluster join`"
            );
        }
        Ok(())
    }

    /// Asks a running member to add us. Retries for a while: the member may be starting too.
    async fn join_through(
        &self,
        join: &str,
        cfg: &NodeConfig,
        peers: &Peers,
        raft_open: &std::sync::atomic::AtomicBool,
    ) -> anyhow::Result<()> {
        // With an empty data dir, a membership under our id belongs to a node that lost its
        // state: remove it first, then take part in Raft, then join afresh.
        let mut last = String::new();
        let mut left = false;
        for _ in 0..100 {
            let mut client =
                ClusterClient::new(peers.channel(join).map_err(|e| anyhow::anyhow!("{e}"))?);
            match client.leave(LeaveRequest { id: cfg.id }).await {
                Ok(_) => {
                    tracing::info!(
                        id = cfg.id,
                        "removed this node's old membership before re-joining"
                    );
                    left = true;
                    break;
                }
                Err(s) if s.code() == tonic::Code::NotFound => {
                    left = true;
                    break;
                }
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                    ) =>
                {
                    last = s.message().to_string();
                }
                Err(s) => bail!(
                    "re-joining through {join}: removing the old membership: {}",
                    s.message()
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !left {
            bail!("joining through {join}: gave up: {last}");
        }
        raft_open.store(true, std::sync::atomic::Ordering::Release);
        let req = JoinRequest {
            id: cfg.id,
            addr: cfg.advertise.clone(),
            role: cfg.role.to_string(),
            // We only get here with an empty data dir: if our id is still a member, that
            // member's state is gone and it must be re-added from scratch.
            replace: true,
        };
        let mut last = String::new();
        for _ in 0..100 {
            let mut client =
                ClusterClient::new(peers.channel(join).map_err(|e| anyhow::anyhow!("{e}"))?);
            match client.join(req.clone()).await {
                Ok(_) => {
                    tracing::info!(through = %join, "joined the cluster");
                    return Ok(());
                }
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                    ) =>
                {
                    last = s.message().to_string();
                }
                Err(s) => bail!("joining through {join}: {}", s.message()),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("joining through {join}: gave up: {last}")
    }

    /// Stops serving and shuts Raft down cleanly.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        if let Some(engine) = self.engine {
            // The control task holds a clone; the threads stop on the flag either way.
            match Arc::try_unwrap(engine) {
                Ok(e) => tokio::task::spawn_blocking(move || e.stop())
                    .await
                    .unwrap_or(()),
                Err(e) => drop(e),
            }
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
        match self.server.await {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("server task: {e}")),
        }
    }
}
