//! What `fulcrumd` exposes. Each source reads state that exists anyway (the engine's atomic
//! counters, the Raft metrics watch, the applied state, the VIP holder's view) and writes it
//! with a `write_*` function that takes plain data, so the families can be tested without a
//! running node.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;
use std::time::SystemTime;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver as _;

use super::Metrics;
use super::MetricsSource;
use super::MetricsWriter;
use crate::cluster::Cluster;
use crate::dataplane::engine::Engine;
use crate::dataplane::engine::ServiceStatsView;
use crate::dataplane::forward::DropReason;
use crate::model::Role;
use crate::raft::RaftMetrics;
use crate::state::VipOwner;
use crate::vip::manager::LocalView;
use crate::vip::manager::VipHandle;

/// The built-in sources of a node: node info, Raft, VIP ownership, the engine (or its
/// absence). Needs a tokio runtime (the Raft source follows the metrics watch).
pub fn node_metrics(
    cluster: &Cluster,
    engine: Option<Arc<Engine>>,
    vip: &VipHandle,
    role: Role,
) -> Metrics {
    let m = Metrics::default();
    m.add(NodeSource::new(cluster.id(), role));
    m.add(RaftSource::spawn(cluster.clone()));
    m.add(VipSource::new(cluster.clone(), vip.clone()));
    m.add(EngineSource::new(engine));
    m
}

// ---------------------------------------------------------------------------------------------
// Node

pub struct NodeSource {
    id: u64,
    role: Role,
    started: f64,
}

impl NodeSource {
    pub fn new(id: u64, role: Role) -> Self {
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        NodeSource { id, role, started }
    }
}

impl MetricsSource for NodeSource {
    fn write(&self, w: &mut MetricsWriter) {
        w.gauge(
            "fulcrum_node_info",
            "This node's id, role and fulcrumd version; always 1.",
            &[
                ("id", &self.id.to_string()),
                ("role", self.role.as_str()),
                ("version", env!("CARGO_PKG_VERSION")),
            ],
            1u64,
        );
        w.gauge(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds.",
            &[],
            self.started,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Raft

/// Counts leader changes as this node observes them: a leader, or the same leader in a new
/// term, seen for the first time. Stepping through "no leader" is not a change by itself.
#[derive(Debug, Default)]
pub struct LeaderTracker {
    last: Option<(u64, u64)>,
    changes: u64,
}

impl LeaderTracker {
    /// Returns true when this observation counted as a change.
    pub fn observe(&mut self, term: u64, leader: Option<u64>) -> bool {
        let Some(l) = leader else { return false };
        if self.last == Some((term, l)) {
            return false;
        }
        self.last = Some((term, l));
        self.changes += 1;
        true
    }

    pub fn changes(&self) -> u64 {
        self.changes
    }
}

pub struct RaftSource {
    cluster: Cluster,
    leaders: Arc<Mutex<LeaderTracker>>,
}

impl RaftSource {
    /// Starts following openraft's metrics watch to count leader changes (every change of
    /// the watched value is seen, except ones overwritten before the task ran — so rapid
    /// flapping may be under-counted, never over-counted).
    pub fn spawn(cluster: Cluster) -> Self {
        let leaders = Arc::new(Mutex::new(LeaderTracker::default()));
        let mut rx = cluster.raft().metrics();
        type Watch = openraft::alias::WatchReceiverOf<crate::raft::TypeConfig, RaftMetrics>;
        let observe = |rx: &Watch, leaders: &Mutex<LeaderTracker>| {
            let (term, leader, state) = {
                let m = rx.borrow_watched();
                (m.current_term, m.current_leader, m.state)
            };
            leaders
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .observe(term, leader);
            state
        };
        observe(&rx, &leaders);
        let l = leaders.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                if observe(&rx, &l) == ServerState::Shutdown {
                    break;
                }
            }
        });
        RaftSource { cluster, leaders }
    }
}

impl MetricsSource for RaftSource {
    fn write(&self, w: &mut MetricsWriter) {
        let m = self.cluster.metrics();
        let changes = self
            .leaders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .changes();
        write_raft(w, &m, changes);
    }
}

const STATES: [(ServerState, &str); 5] = [
    (ServerState::Learner, "learner"),
    (ServerState::Follower, "follower"),
    (ServerState::Candidate, "candidate"),
    (ServerState::Leader, "leader"),
    (ServerState::Shutdown, "shutdown"),
];

pub fn write_raft(w: &mut MetricsWriter, m: &RaftMetrics, leader_changes: u64) {
    w.gauge(
        "fulcrum_raft_term",
        "Current Raft term.",
        &[],
        m.current_term,
    );
    w.gauge(
        "fulcrum_raft_leader_id",
        "Id of the Raft leader this node knows of; 0 when it knows none.",
        &[],
        m.current_leader.unwrap_or(0),
    );
    w.gauge(
        "fulcrum_raft_is_leader",
        "1 when this node is the Raft leader.",
        &[],
        m.state == ServerState::Leader,
    );
    for (s, name) in STATES {
        w.gauge(
            "fulcrum_raft_state",
            "This node's Raft state: 1 for the current one.",
            &[("state", name)],
            m.state == s,
        );
    }
    w.gauge(
        "fulcrum_raft_last_log_index",
        "Index of the last entry in this node's Raft log.",
        &[],
        m.last_log_index.unwrap_or(0),
    );
    w.gauge(
        "fulcrum_raft_committed_index",
        "Index of the last Raft entry this node knows is committed.",
        &[],
        m.local_committed.as_ref().map_or(0, |l| l.index),
    );
    w.gauge(
        "fulcrum_raft_applied_index",
        "Index of the last Raft entry applied to this node's state.",
        &[],
        m.last_applied.as_ref().map_or(0, |l| l.index),
    );
    w.gauge(
        "fulcrum_raft_snapshot_index",
        "Index of the last Raft entry in this node's latest snapshot.",
        &[],
        m.snapshot.as_ref().map_or(0, |l| l.index),
    );
    w.counter(
        "fulcrum_raft_leader_changes_total",
        "Raft leader changes this node observed since it started (a new leader, or a new term of the same one).",
        &[],
        leader_changes,
    );
    let membership = m.membership_config.membership();
    w.gauge(
        "fulcrum_raft_members",
        "Nodes in the Raft membership (voters and learners).",
        &[],
        membership.nodes().count(),
    );
    w.gauge(
        "fulcrum_raft_voters",
        "Voting members of the Raft membership.",
        &[],
        membership.voter_ids().count(),
    );
}

// ---------------------------------------------------------------------------------------------
// VIP ownership

pub struct VipSource {
    cluster: Cluster,
    handle: VipHandle,
}

impl VipSource {
    pub fn new(cluster: Cluster, handle: VipHandle) -> Self {
        VipSource { cluster, handle }
    }
}

impl MetricsSource for VipSource {
    fn write(&self, w: &mut MetricsWriter) {
        let groups: BTreeMap<String, VipOwner> = self.cluster.with_applied(|a| {
            a.state
                .config
                .vip_groups
                .keys()
                .map(|g| (g.clone(), a.state.owner(g)))
                .collect()
        });
        write_vip(w, &groups, &self.handle.view(), Instant::now());
    }
}

/// `groups`: the configured groups and their assignments as applied here.
pub fn write_vip(
    w: &mut MetricsWriter,
    groups: &BTreeMap<String, VipOwner>,
    view: &LocalView,
    now: Instant,
) {
    for (g, o) in groups {
        let l = [("group", g.as_str())];
        w.gauge(
            "fulcrum_vip_group_owned",
            "1 while this node answers for the VIP group's addresses.",
            &l,
            view.held.contains(g),
        );
        w.gauge(
            "fulcrum_vip_group_owner_id",
            "Node the cluster assigned the VIP group to (as applied here); 0 for none.",
            &l,
            o.owner.unwrap_or(0),
        );
        w.gauge(
            "fulcrum_vip_group_epoch",
            "Assignment epoch of the VIP group: grows with every change of owner.",
            &l,
            o.epoch,
        );
    }
    // Groups removed from the config keep their counts.
    let names: BTreeSet<&String> = groups.keys().chain(view.transitions.keys()).collect();
    for g in names {
        let t = view.transitions.get(g).copied().unwrap_or_default();
        for (direction, n) in [("acquired", t.acquired), ("released", t.released)] {
            w.counter(
                "fulcrum_vip_group_transitions_total",
                "Times this node started (acquired) or stopped (released) answering for the VIP group.",
                &[("group", g.as_str()), ("direction", direction)],
                n,
            );
        }
    }
    w.gauge(
        "fulcrum_vip_lease_valid",
        "1 while this director holds a valid VIP lease from the Raft leader.",
        &[],
        view.lease_until.is_some_and(|u| now < u),
    );
}

// ---------------------------------------------------------------------------------------------
// Forwarding engine

pub struct EngineSource {
    engine: Option<Arc<Engine>>,
}

impl EngineSource {
    /// `None`: this node forwards nothing (a witness, or no `[engine]`); only
    /// `fulcrum_engine_enabled 0` is written.
    pub fn new(engine: Option<Arc<Engine>>) -> Self {
        EngineSource { engine }
    }
}

impl MetricsSource for EngineSource {
    fn write(&self, w: &mut MetricsWriter) {
        match &self.engine {
            None => write_engine(w, None, &[], &[]),
            Some(e) => {
                let (services, drops) = e.stats(None);
                write_engine(w, Some(e.table_usage()), &services, &drops);
            }
        }
    }
}

/// `table`: connection table (entries, capacity), `None` without an engine. `drops`: counts
/// by reason name; reasons not listed are written as 0.
pub fn write_engine(
    w: &mut MetricsWriter,
    table: Option<(u64, u64)>,
    services: &[ServiceStatsView],
    drops: &[(&'static str, u64)],
) {
    w.gauge(
        "fulcrum_engine_enabled",
        "1 when this node runs the userspace forwarding engine.",
        &[],
        table.is_some(),
    );
    let Some((entries, capacity)) = table else {
        return;
    };
    w.gauge(
        "fulcrum_engine_connection_table_entries",
        "Entries in the connection table (connections and persistence templates).",
        &[],
        entries,
    );
    w.gauge(
        "fulcrum_engine_connection_table_max_entries",
        "Capacity of the connection table (engine.max_connections).",
        &[],
        capacity,
    );
    for reason in DropReason::ALL {
        let name = reason.name();
        let n = drops
            .iter()
            .find(|(r, _)| *r == name)
            .map_or(0, |(_, n)| *n);
        w.counter(
            "fulcrum_engine_dropped_packets_total",
            "Packets the engine dropped, by reason.",
            &[("reason", name)],
            n,
        );
    }
    for s in services {
        write_service(w, s);
    }
}

/// Counter families shared by services and real servers: suffix, help, index into `counts`.
const COUNTS: [(&str, &str, usize); 5] = [
    ("connections_total", "Connections scheduled", 0),
    ("in_packets_total", "Packets from clients", 1),
    ("out_packets_total", "Packets to clients (NAT replies)", 2),
    ("in_bytes_total", "Bytes from clients", 3),
    ("out_bytes_total", "Bytes to clients (NAT replies)", 4),
];

const RATES: [(&str, &str, usize); 5] = [
    ("connections_per_second", "New connections per second", 0),
    (
        "in_packets_per_second",
        "Packets per second from clients",
        1,
    ),
    ("out_packets_per_second", "Packets per second to clients", 2),
    ("in_bytes_per_second", "Bytes per second from clients", 3),
    ("out_bytes_per_second", "Bytes per second to clients", 4),
];

fn write_service(w: &mut MetricsWriter, s: &ServiceStatsView) {
    let sl = [("service", s.key.as_str())];
    for (suffix, help, i) in COUNTS {
        w.counter(
            &format!("fulcrum_service_{suffix}"),
            &format!("{help} by the virtual service."),
            &sl,
            s.counts[i],
        );
    }
    for (suffix, help, i) in RATES {
        w.gauge(
            &format!("fulcrum_service_{suffix}"),
            &format!(
                "{help} through the virtual service (averaged over the engine's 2 s rate window)."
            ),
            &sl,
            s.rates[i],
        );
    }
    let active: u64 = s.reals.iter().map(|r| u64::from(r.active)).sum();
    let inactive: u64 = s.reals.iter().map(|r| u64::from(r.inactive)).sum();
    w.gauge(
        "fulcrum_service_active_connections",
        "Active (established) connections of the virtual service.",
        &sl,
        active,
    );
    w.gauge(
        "fulcrum_service_inactive_connections",
        "Inactive (not established or closing) connections of the virtual service.",
        &sl,
        inactive,
    );
    w.gauge(
        "fulcrum_service_real_servers",
        "Real servers configured for the virtual service.",
        &sl,
        s.reals.len(),
    );
    for r in &s.reals {
        let rl = [("service", s.key.as_str()), ("real", r.addr.as_str())];
        for (suffix, help, i) in COUNTS {
            w.counter(
                &format!("fulcrum_real_server_{suffix}"),
                &format!("{help} to the real server."),
                &rl,
                r.counts[i],
            );
        }
        w.gauge(
            "fulcrum_real_server_active_connections",
            "Active (established) connections on the real server.",
            &rl,
            r.active,
        );
        w.gauge(
            "fulcrum_real_server_inactive_connections",
            "Inactive (not established or closing) connections on the real server.",
            &rl,
            r.inactive,
        );
        w.gauge(
            "fulcrum_real_server_weight",
            "Configured scheduling weight of the real server.",
            &rl,
            r.weight,
        );
        w.gauge(
            "fulcrum_real_server_quiesced",
            "1 when the real server's weight is 0: it keeps its connections but gets no new ones. (Configuration, not a health check.)",
            &rl,
            r.weight == 0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::engine::RealStatsView;
    use crate::vip::manager::Transitions;

    fn families(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let (n, k) = l.split_once(' ').unwrap();
                (n.to_string(), k.to_string())
            })
            .collect()
    }

    fn sample(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(String::from))
    }

    fn services() -> Vec<ServiceStatsView> {
        vec![ServiceStatsView {
            key: "tcp/192.0.2.100:80".into(),
            counts: [3, 30, 0, 3000, 0],
            rates: [1.5, 15.0, 0.0, 1500.0, 0.0],
            reals: vec![
                RealStatsView {
                    addr: "198.51.100.10:80".into(),
                    weight: 2,
                    active: 2,
                    inactive: 1,
                    counts: [3, 30, 0, 3000, 0],
                },
                RealStatsView {
                    addr: "[2001:db8::10]:80".into(),
                    weight: 0,
                    active: 0,
                    inactive: 0,
                    counts: [0; 5],
                },
            ],
        }]
    }

    fn everything() -> String {
        let mut w = MetricsWriter::new();
        NodeSource::new(1, Role::Director).write(&mut w);
        write_raft(&mut w, &RaftMetrics::new_initial(1), 2);
        let mut view = LocalView::default();
        view.held.insert("web".into());
        view.transitions.insert(
            "old".into(),
            Transitions {
                acquired: 1,
                released: 1,
            },
        );
        let groups = BTreeMap::from([(
            "web".to_string(),
            VipOwner {
                owner: Some(1),
                epoch: 4,
            },
        )]);
        write_vip(&mut w, &groups, &view, Instant::now());
        write_engine(
            &mut w,
            Some((5, 1 << 20)),
            &services(),
            &[("no_service", 7)],
        );
        assert_eq!(w.rejected(), 0);
        w.finish()
    }

    #[test]
    fn families_are_unique_and_named_by_convention() {
        let text = everything();
        let fams = families(&text);
        let names: BTreeSet<&String> = fams.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), fams.len(), "a family twice:\n{text}");
        for (n, kind) in &fams {
            assert!(
                n.starts_with("fulcrum_") || n == "process_start_time_seconds",
                "{n}"
            );
            assert_eq!(kind == "counter", n.ends_with("_total"), "{n} is a {kind}");
            assert!(
                text.contains(&format!("# HELP {n} ")),
                "{n} has no HELP line"
            );
        }
    }

    #[test]
    fn engine_counters_and_every_drop_reason() {
        let text = everything();
        let svc = "service=\"tcp/192.0.2.100:80\"";
        let real = format!("{svc},real=\"198.51.100.10:80\"");
        let real6 = format!("{svc},real=\"[2001:db8::10]:80\"");
        for (series, want) in [
            (format!("fulcrum_service_in_packets_total{{{svc}}}"), "30"),
            (format!("fulcrum_service_in_bytes_total{{{svc}}}"), "3000"),
            (
                format!("fulcrum_service_connections_per_second{{{svc}}}"),
                "1.5",
            ),
            (format!("fulcrum_service_active_connections{{{svc}}}"), "2"),
            (
                format!("fulcrum_service_inactive_connections{{{svc}}}"),
                "1",
            ),
            (
                format!("fulcrum_real_server_connections_total{{{real}}}"),
                "3",
            ),
            (format!("fulcrum_real_server_weight{{{real}}}"), "2"),
            (format!("fulcrum_real_server_quiesced{{{real}}}"), "0"),
            (format!("fulcrum_real_server_quiesced{{{real6}}}"), "1"),
            ("fulcrum_engine_connection_table_entries".into(), "5"),
            (
                "fulcrum_engine_connection_table_max_entries".into(),
                "1048576",
            ),
            (
                "fulcrum_engine_dropped_packets_total{reason=\"no_service\"}".into(),
                "7",
            ),
            (
                "fulcrum_engine_dropped_packets_total{reason=\"tx_full\"}".into(),
                "0",
            ),
        ] {
            assert_eq!(
                sample(&text, &series).as_deref(),
                Some(want),
                "{series}\n{text}"
            );
        }
        assert_eq!(
            text.matches("fulcrum_engine_dropped_packets_total{")
                .count(),
            DropReason::ALL.len()
        );
    }

    #[test]
    fn raft_and_vip_families() {
        let text = everything();
        for (series, want) in [
            ("fulcrum_raft_leader_id", "0"),
            ("fulcrum_raft_is_leader", "0"),
            ("fulcrum_raft_state{state=\"learner\"}", "1"),
            ("fulcrum_raft_state{state=\"leader\"}", "0"),
            ("fulcrum_raft_leader_changes_total", "2"),
            ("fulcrum_vip_group_owned{group=\"web\"}", "1"),
            ("fulcrum_vip_group_owner_id{group=\"web\"}", "1"),
            ("fulcrum_vip_group_epoch{group=\"web\"}", "4"),
            (
                "fulcrum_vip_group_transitions_total{group=\"web\",direction=\"acquired\"}",
                "0",
            ),
            (
                "fulcrum_vip_group_transitions_total{group=\"old\",direction=\"released\"}",
                "1",
            ),
            ("fulcrum_vip_lease_valid", "0"),
            (
                "fulcrum_node_info{id=\"1\",role=\"director\",version=\"0.1.0\"}",
                "1",
            ),
        ] {
            assert_eq!(
                sample(&text, series).as_deref(),
                Some(want),
                "{series}\n{text}"
            );
        }
    }

    #[test]
    fn without_an_engine_only_the_flag() {
        let mut w = MetricsWriter::new();
        EngineSource::new(None).write(&mut w);
        assert_eq!(
            w.finish(),
            "# HELP fulcrum_engine_enabled 1 when this node runs the userspace forwarding engine.\n\
             # TYPE fulcrum_engine_enabled gauge\nfulcrum_engine_enabled 0\n"
        );
    }

    #[test]
    fn leader_changes_count_new_leaders_and_terms() {
        let mut t = LeaderTracker::default();
        assert!(!t.observe(1, None));
        assert!(t.observe(1, Some(1)));
        assert!(!t.observe(1, Some(1)));
        assert!(!t.observe(2, None)); // election under way
        assert!(t.observe(2, Some(1))); // re-elected: a new term
        assert!(t.observe(3, Some(2)));
        assert_eq!(t.changes(), 3);
    }
}
