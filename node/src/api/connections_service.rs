//! `fulcrum.v1.Connections`: this node's connection table and traffic counters.

use std::sync::Arc;

use fulcrum_proto::v1 as pb;
use fulcrum_proto::v1::connections_server::Connections as ConnectionsRpc;
use fulcrum_sync::conn::FwdMethod;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::dataplane::engine::Engine;
use crate::replication::Replication;

pub struct ConnectionsApi {
    engine: Option<Arc<Engine>>,
    replication: Option<Replication>,
    me: u64,
}

impl ConnectionsApi {
    pub fn new(engine: Option<Arc<Engine>>) -> Self {
        ConnectionsApi {
            engine,
            replication: None,
            me: 0,
        }
    }

    /// Serves `SyncStatus` from this node's sync endpoints.
    pub fn with_sync(mut self, me: u64, replication: Option<Replication>) -> Self {
        self.me = me;
        self.replication = replication;
        self
    }
}

fn age(ms: Option<u64>) -> i64 {
    ms.map_or(-1, |m| i64::try_from(m).unwrap_or(i64::MAX))
}

fn forward_name(f: FwdMethod) -> &'static str {
    match f {
        FwdMethod::Masq => "nat",
        FwdMethod::Tunnel => "tun",
        FwdMethod::DirectRoute => "dr",
        FwdMethod::Local => "local",
        FwdMethod::Bypass => "bypass",
    }
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        0 => "ip".into(),
        n => n.to_string(),
    }
}

#[tonic::async_trait]
impl ConnectionsRpc for ConnectionsApi {
    async fn list(
        &self,
        request: Request<pb::ConnListRequest>,
    ) -> Result<Response<pb::ConnListReply>, Status> {
        let req = request.into_inner();
        let Some(engine) = &self.engine else {
            return Ok(Response::new(pb::ConnListReply::default()));
        };
        let limit = if req.limit == 0 {
            10_000
        } else {
            req.limit as usize
        };
        let service = (!req.service.is_empty()).then_some(req.service.as_str());
        // One more than asked tells whether the list was cut.
        let (mut list, total) = engine.connections(service, limit + 1);
        let truncated = list.len() > limit;
        list.truncate(limit);
        let connections = list
            .into_iter()
            .map(|c| {
                let e = &c.entry;
                pb::Connection {
                    protocol: proto_name(e.protocol()),
                    client: e.client().to_string(),
                    virtual_addr: e.virtual_addr().to_string(),
                    real: e.dest().to_string(),
                    state: e.state_name().to_string(),
                    expires_in_secs: c.expires_in,
                    forward: forward_name(e.fwd_method()).into(),
                    template: e.is_template(),
                    origin: if e.origin() == 0 {
                        "local".into()
                    } else {
                        format!("synced from {}", e.origin())
                    },
                    service: c.service,
                }
            })
            .collect();
        Ok(Response::new(pb::ConnListReply {
            connections,
            total,
            truncated,
        }))
    }

    async fn sync_status(
        &self,
        _request: Request<pb::SyncStatusRequest>,
    ) -> Result<Response<pb::SyncStatusReply>, Status> {
        let Some(r) = &self.replication else {
            return Ok(Response::new(pb::SyncStatusReply {
                node: self.me,
                ..Default::default()
            }));
        };
        let peers = r
            .peers()
            .into_iter()
            .map(|p| pb::SyncPeer {
                node: p.node,
                addr: p.addr,
                state: p.state.as_str().into(),
                current: p.current,
                behind: p.behind,
                lag_entries: p.lag_entries,
                lag_ms: p.lag_ms,
                last_ack_ms: age(p.last_ack_ms),
                lag_p99_us: p.lag_p99_us,
                sent: p.sent,
                acked: p.acked,
                retransmitted: p.retransmitted,
                dropped: p.dropped,
                rejected: p.rejected,
                resyncs: p.resyncs,
                snapshot_entries: p.snapshot_entries,
                wire_bytes: p.wire_bytes,
            })
            .collect();
        let sources = r
            .sources()
            .into_iter()
            .map(|s| pb::SyncSource {
                node: s.node,
                connected: s.connected,
                complete: s.complete,
                applied_seq: s.applied_seq,
                entries: s.entries,
                rejected: s.rejected,
                snapshots: s.snapshots,
                last_batch_ms: age(s.last_batch_ms),
                swept: s.swept,
            })
            .collect();
        Ok(Response::new(pb::SyncStatusReply {
            node: self.me,
            enabled: true,
            peers,
            sources,
            engine_dropped: r.engine_dropped(),
        }))
    }

    async fn stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsReply>, Status> {
        let req = request.into_inner();
        let Some(engine) = &self.engine else {
            return Ok(Response::new(pb::StatsReply::default()));
        };
        let service = (!req.service.is_empty()).then_some(req.service.as_str());
        let (services, drops) = engine.stats(service);
        let services = services
            .into_iter()
            .map(|s| pb::ServiceStats {
                key: s.key,
                conns: s.counts[0],
                in_packets: s.counts[1],
                out_packets: s.counts[2],
                in_bytes: s.counts[3],
                out_bytes: s.counts[4],
                cps: s.rates[0],
                in_pps: s.rates[1],
                out_pps: s.rates[2],
                in_bps: s.rates[3] * 8.0,
                out_bps: s.rates[4] * 8.0,
                reals: s
                    .reals
                    .into_iter()
                    .map(|r| pb::RealStats {
                        address: r.addr,
                        active_conns: u64::from(r.active),
                        inactive_conns: u64::from(r.inactive),
                        conns: r.counts[0],
                        in_packets: r.counts[1],
                        out_packets: r.counts[2],
                        in_bytes: r.counts[3],
                        out_bytes: r.counts[4],
                        weight: r.weight,
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::StatsReply {
            services,
            drops: drops
                .into_iter()
                .map(|(reason, count)| pb::DropCounter {
                    reason: reason.into(),
                    count,
                })
                .collect(),
            engine: true,
        }))
    }
}
