//! `fulcrumd.toml`: the node's own settings (not the replicated service config).
//! Every key has a default; unknown keys are an error. Parsed into [`FileConfig`], then
//! merged with flags/env and validated into [`NodeConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;

use crate::model::Role;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// The file as written. All fields optional: the defaults are in [`NodeConfig`].
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// This node's id, unique in the cluster, never 0.
    pub id: Option<u64>,
    /// Where the gRPC server (Raft transport + control API) listens.
    pub listen: Option<SocketAddr>,
    /// The address other nodes and clients use to reach this node (default: `listen`).
    pub advertise: Option<String>,
    /// Directory for the Raft log, vote and snapshots.
    pub data_dir: Option<PathBuf>,
    /// "director" (default) or "witness".
    pub role: Option<Role>,
    pub cluster_name: Option<String>,
    #[serde(default)]
    pub bootstrap: Option<BootstrapFile>,
    /// Address of any running member to join through, when the data dir is empty.
    pub join: Option<String>,
    #[serde(default)]
    pub raft: RaftFile,
    /// The userspace forwarding engine; absent or without `interface`, this node forwards nothing.
    #[serde(default)]
    pub engine: EngineFile,
    /// VIP ownership timers, announcements and the notify hook.
    #[serde(default)]
    pub vip: VipFile,
    /// Failover drills.
    #[serde(default)]
    pub drill: DrillFile,
    /// The Prometheus scrape endpoint (`GET /metrics`); off unless `listen` is set.
    #[serde(default)]
    pub metrics: MetricsFile,
    /// Connection-table sync between directors.
    #[serde(default)]
    pub sync: SyncFile,
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "fulcrum_node=debug".
    pub log: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyncFile {
    /// Replicate this director's connection table to the other directors (default true).
    pub enabled: Option<bool>,
    /// Longest a change waits before it is sent, in milliseconds (default 2).
    pub batch_interval_ms: Option<u64>,
    /// Records per batch (default 2048).
    pub batch_entries: Option<usize>,
    /// Unacknowledged batches in flight per peer (default 64).
    pub window: Option<usize>,
    /// Changes queued for one peer beyond which it is marked behind and resynced (default
    /// 262144).
    pub max_lag_entries: Option<usize>,
}

impl SyncFile {
    fn validate(&self) -> Result<Option<fulcrum_sync::stream::SyncTimers>, ConfigError> {
        if self.enabled == Some(false) {
            return Ok(None);
        }
        let d = fulcrum_sync::stream::SyncTimers::default();
        let t = fulcrum_sync::stream::SyncTimers {
            batch_interval: self
                .batch_interval_ms
                .map(Duration::from_millis)
                .unwrap_or(d.batch_interval),
            batch_entries: self.batch_entries.unwrap_or(d.batch_entries),
            window: self.window.unwrap_or(d.window),
            max_lag_entries: self.max_lag_entries.unwrap_or(d.max_lag_entries),
            ..d
        };
        t.validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(Some(t))
    }
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapFile {
    /// Initial voters. Empty: this node alone.
    #[serde(default)]
    pub members: Vec<MemberFile>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemberFile {
    pub id: u64,
    pub addr: String,
    #[serde(default)]
    pub role: Role,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RaftFile {
    pub heartbeat_ms: Option<u64>,
    pub election_timeout_min_ms: Option<u64>,
    pub election_timeout_max_ms: Option<u64>,
    /// Take a snapshot after this many applied entries.
    pub snapshot_every: Option<u64>,
    /// Log entries kept after a snapshot, for followers slightly behind.
    pub keep_after_snapshot: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EngineFile {
    /// The service interface: VIP traffic arrives and leaves here.
    pub interface: Option<String>,
    /// Packet worker threads (one AF_PACKET socket each, in one fanout group).
    pub workers: Option<u32>,
    /// Connection table size; new flows beyond it are refused and counted.
    pub max_connections: Option<u64>,
    /// Drop the flows of a removed real server at their next packet (IPVS
    /// `expire_nodest_conn`); otherwise they run on until they expire.
    pub expire_nodest_conn: Option<bool>,
    /// Idle timeouts in seconds, like `ipvsadm --set TCP TCPFIN UDP`.
    pub tcp_timeout: Option<u32>,
    pub tcp_fin_timeout: Option<u32>,
    pub udp_timeout: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DrillFile {
    /// Let `fulcrum drill --kill` make this node exit at once through the API (default false).
    pub allow_kill: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VipFile {
    pub lease_ms: Option<u64>,
    pub renew_ms: Option<u64>,
    pub margin_ms: Option<u64>,
    pub preempt_delay_ms: Option<u64>,
    pub garp_repeat: Option<u32>,
    pub garp_interval_ms: Option<u64>,
    pub garp_refresh_ms: Option<u64>,
    /// Run as `notify GROUP OLD_STATE NEW_STATE` on every transition of this node
    /// (states: master, backup, fault), like keepalived's notify scripts.
    pub notify: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    /// "IP:PORT" to serve `/metrics` on, e.g. "127.0.0.1:9470"; absent: no metrics server.
    pub listen: Option<String>,
}

impl MetricsFile {
    fn validate(&self, grpc: SocketAddr) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(text) = &self.listen else {
            return Ok(None);
        };
        let addr: SocketAddr = text.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "metrics.listen {text:?} is not an IP:PORT address (e.g. \"127.0.0.1:9470\" or \"[::]:9470\")"
            ))
        })?;
        if addr.port() == 0 {
            return Err(ConfigError::Invalid(format!(
                "metrics.listen {text:?}: the port must not be 0 (scrapers need a fixed port)"
            )));
        }
        if addr.port() == grpc.port()
            && (addr.ip() == grpc.ip() || addr.ip().is_unspecified() || grpc.ip().is_unspecified())
        {
            return Err(ConfigError::Invalid(format!(
                "metrics.listen {addr} collides with the gRPC `listen` address {grpc}"
            )));
        }
        Ok(Some(addr))
    }
}

impl VipFile {
    fn validate(&self) -> Result<(crate::vip::VipTimers, Option<PathBuf>), ConfigError> {
        let d = crate::vip::VipTimers::default();
        let ms = |v: Option<u64>, def: Duration| v.map(Duration::from_millis).unwrap_or(def);
        let t = crate::vip::VipTimers {
            lease: ms(self.lease_ms, d.lease),
            renew: ms(self.renew_ms, d.renew),
            margin: ms(self.margin_ms, d.margin),
            preempt_delay: ms(self.preempt_delay_ms, d.preempt_delay),
            garp_repeat: self.garp_repeat.unwrap_or(d.garp_repeat),
            garp_interval: ms(self.garp_interval_ms, d.garp_interval),
            garp_refresh: ms(self.garp_refresh_ms, d.garp_refresh),
        };
        t.validate().map_err(ConfigError::Invalid)?;
        if let Some(n) = &self.notify
            && !n.is_absolute()
        {
            return Err(ConfigError::Invalid(format!(
                "vip.notify must be an absolute path, not {}",
                n.display()
            )));
        }
        Ok((t, self.notify.clone()))
    }
}

/// Validated engine settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    pub interface: String,
    pub workers: u32,
    pub max_connections: u64,
    pub expire_nodest_conn: bool,
    pub tcp_timeout: u32,
    pub tcp_fin_timeout: u32,
    pub udp_timeout: u32,
}

impl EngineFile {
    fn validate(&self) -> Result<Option<EngineConfig>, ConfigError> {
        let Some(interface) = self.interface.clone() else {
            if self.workers.is_some() || self.max_connections.is_some() {
                return Err(ConfigError::Invalid(
                    "engine settings given without engine.interface: set the service interface to enable the engine"
                        .into(),
                ));
            }
            return Ok(None);
        };
        crate::model::check_interface_name(&interface)
            .map_err(|e| ConfigError::Invalid(format!("engine.interface: {e}")))?;
        let workers = self.workers.unwrap_or(1);
        if !(1..=64).contains(&workers) {
            return Err(ConfigError::Invalid(format!(
                "engine.workers must be 1..=64, not {workers}"
            )));
        }
        let max_connections = self.max_connections.unwrap_or(1 << 20);
        if !(1..=100_000_000).contains(&max_connections) {
            return Err(ConfigError::Invalid(format!(
                "engine.max_connections must be 1..=100000000, not {max_connections}"
            )));
        }
        let secs = |name: &str, v: Option<u32>, def: u32| -> Result<u32, ConfigError> {
            match v.unwrap_or(def) {
                0 => Err(ConfigError::Invalid(format!(
                    "engine.{name} must be > 0 seconds"
                ))),
                n if n > 86_400 * 30 => Err(ConfigError::Invalid(format!(
                    "engine.{name} must be at most 30 days"
                ))),
                n => Ok(n),
            }
        };
        Ok(Some(EngineConfig {
            interface,
            workers,
            max_connections,
            expire_nodest_conn: self.expire_nodest_conn.unwrap_or(false),
            tcp_timeout: secs("tcp_timeout", self.tcp_timeout, 900)?,
            tcp_fin_timeout: secs("tcp_fin_timeout", self.tcp_fin_timeout, 120)?,
            udp_timeout: secs("udp_timeout", self.udp_timeout, 300)?,
        }))
    }
}

/// Validated node settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    pub listen: SocketAddr,
    pub advertise: String,
    pub data_dir: PathBuf,
    pub role: Role,
    pub cluster_name: String,
    pub bootstrap: Option<Vec<MemberFile>>,
    pub join: Option<String>,
    pub raft: RaftTimers,
    pub engine: Option<EngineConfig>,
    pub vip: crate::vip::VipTimers,
    pub notify: Option<PathBuf>,
    /// `[drill] allow_kill`: the API's `Kill` may make this node exit (failover drills).
    pub allow_kill: bool,
    /// Where `/metrics` is served; `None`: not at all.
    pub metrics: Option<SocketAddr>,
    /// Connection sync settings; `None`: sync is off (`[sync] enabled = false`).
    pub sync: Option<fulcrum_sync::stream::SyncTimers>,
    pub log: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RaftTimers {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    pub snapshot_every: u64,
    pub keep_after_snapshot: u64,
}

impl Default for RaftTimers {
    /// Tuned for sub-second failover on a LAN: a dead leader is noticed within 300–600 ms
    /// and a new one elected right after. Heartbeats at a third of the minimum election
    /// timeout tolerate two lost heartbeats before anyone campaigns.
    fn default() -> Self {
        RaftTimers {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(300),
            election_max: Duration::from_millis(600),
            snapshot_every: 5000,
            keep_after_snapshot: 1000,
        }
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

impl FileConfig {
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Applies the defaults and checks every setting.
    pub fn validate(self) -> Result<NodeConfig, ConfigError> {
        let id = self.id.ok_or_else(|| {
            ConfigError::Invalid("`id` is required (a unique non-zero node id)".into())
        })?;
        if id == 0 {
            return Err(ConfigError::Invalid("`id` must not be 0".into()));
        }
        let listen = match self.listen {
            Some(l) => l,
            None => DEFAULT_LISTEN
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("{e}")))?,
        };
        let advertise = match self.advertise {
            Some(a) => {
                check_host_port(&a)
                    .map_err(|e| ConfigError::Invalid(format!("`advertise` {a:?}: {e}")))?;
                a
            }
            None if listen.ip().is_unspecified() => {
                return Err(ConfigError::Invalid(format!(
                    "`listen` is {listen}: set `advertise` to the address other nodes reach this node on"
                )));
            }
            None => listen.to_string(),
        };
        let data_dir = self
            .data_dir
            .ok_or_else(|| ConfigError::Invalid("`data_dir` is required".into()))?;
        let role = self.role.unwrap_or_default();
        let cluster_name = self.cluster_name.unwrap_or_else(|| "fulcrum".into());
        if self.bootstrap.is_some() && self.join.is_some() {
            return Err(ConfigError::Invalid(
                "`bootstrap` and `join` exclude each other: bootstrap starts a new cluster, join enters a running one"
                    .into(),
            ));
        }
        let bootstrap = match self.bootstrap {
            None => None,
            Some(b) => {
                let mut members = b.members;
                if members.is_empty() {
                    members.push(MemberFile {
                        id,
                        addr: advertise.clone(),
                        role,
                    });
                }
                check_members(id, &advertise, role, &members)?;
                Some(members)
            }
        };
        if let Some(j) = &self.join {
            check_host_port(j).map_err(|e| ConfigError::Invalid(format!("`join` {j:?}: {e}")))?;
        }
        let raft = self.raft.validate()?;
        let engine = self.engine.validate()?;
        let (vip, notify) = self.vip.validate()?;
        let metrics = self.metrics.validate(listen)?;
        let sync = self.sync.validate()?;
        if engine.is_some() && role == Role::Witness {
            return Err(ConfigError::Invalid(
                "a witness never carries traffic: remove [engine] or make the node a director"
                    .into(),
            ));
        }
        Ok(NodeConfig {
            id,
            listen,
            advertise,
            data_dir,
            role,
            cluster_name,
            bootstrap,
            join: self.join,
            raft,
            engine,
            vip,
            notify,
            allow_kill: self.drill.allow_kill.unwrap_or(false),
            metrics,
            sync,
            log: self.log.unwrap_or_else(|| "info".into()),
        })
    }
}

impl RaftFile {
    fn validate(&self) -> Result<RaftTimers, ConfigError> {
        let d = RaftTimers::default();
        let ms = |v: Option<u64>, def: Duration| v.map(Duration::from_millis).unwrap_or(def);
        let t = RaftTimers {
            heartbeat: ms(self.heartbeat_ms, d.heartbeat),
            election_min: ms(self.election_timeout_min_ms, d.election_min),
            election_max: ms(self.election_timeout_max_ms, d.election_max),
            snapshot_every: self.snapshot_every.unwrap_or(d.snapshot_every),
            keep_after_snapshot: self.keep_after_snapshot.unwrap_or(d.keep_after_snapshot),
        };
        if t.heartbeat.is_zero() {
            return Err(ConfigError::Invalid("raft.heartbeat_ms must be > 0".into()));
        }
        // A follower must hear at least two heartbeats per election timeout, or it campaigns
        // against a healthy leader whenever one heartbeat is late.
        if t.election_min < t.heartbeat * 2 {
            return Err(ConfigError::Invalid(format!(
                "raft.election_timeout_min_ms ({}) must be at least twice raft.heartbeat_ms ({})",
                t.election_min.as_millis(),
                t.heartbeat.as_millis()
            )));
        }
        if t.election_max <= t.election_min {
            return Err(ConfigError::Invalid(format!(
                "raft.election_timeout_max_ms ({}) must be greater than raft.election_timeout_min_ms ({})",
                t.election_max.as_millis(),
                t.election_min.as_millis()
            )));
        }
        if t.snapshot_every == 0 {
            return Err(ConfigError::Invalid(
                "raft.snapshot_every must be > 0".into(),
            ));
        }
        Ok(t)
    }
}

fn check_members(
    id: u64,
    advertise: &str,
    role: Role,
    members: &[MemberFile],
) -> Result<(), ConfigError> {
    let mut ids = std::collections::BTreeSet::new();
    let mut addrs = std::collections::BTreeSet::new();
    for m in members {
        if m.id == 0 {
            return Err(ConfigError::Invalid(
                "bootstrap member id must not be 0".into(),
            ));
        }
        if !ids.insert(m.id) {
            return Err(ConfigError::Invalid(format!(
                "bootstrap member id {} listed twice",
                m.id
            )));
        }
        if !addrs.insert(m.addr.clone()) {
            return Err(ConfigError::Invalid(format!(
                "bootstrap member address {} listed twice",
                m.addr
            )));
        }
        check_host_port(&m.addr).map_err(|e| {
            ConfigError::Invalid(format!("bootstrap member {} addr {:?}: {e}", m.id, m.addr))
        })?;
    }
    match members.iter().find(|m| m.id == id) {
        None => Err(ConfigError::Invalid(format!(
            "bootstrap members must include this node (id {id})"
        ))),
        Some(me) if me.addr != advertise || me.role != role => Err(ConfigError::Invalid(format!(
            "bootstrap member {id} is listed as {} ({:?}) but this node advertises {advertise} ({role:?})",
            me.addr, me.role
        ))),
        Some(_) if !members.iter().any(|m| m.role == Role::Director) => Err(ConfigError::Invalid(
            "bootstrap members need at least one director".into(),
        )),
        Some(_) => Ok(()),
    }
}

/// "host:port" with a non-zero port; host may be a name, an IPv4 or a bracketed IPv6 address.
pub fn check_host_port(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = s.rsplit_once(':').ok_or("expected host:port")?;
    let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    if port == 0 {
        return Err("port must not be 0".into());
    }
    if host.is_empty() || host.contains(['/', ' ', '[', ']']) {
        return Err(format!("bad host {host:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig, String> {
        FileConfig::parse(text)?
            .validate()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse("id = 3\ndata_dir = \"/tmp/x\"\n").unwrap();
        assert_eq!(c.id, 3);
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.advertise, DEFAULT_LISTEN);
        assert_eq!(c.role, Role::Director);
        assert_eq!(c.raft, RaftTimers::default());
        assert!(c.bootstrap.is_none());
        assert!(!c.allow_kill);
        let c = parse("id = 3\ndata_dir = \"/tmp/x\"\n[drill]\nallow_kill = true\n").unwrap();
        assert!(c.allow_kill);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = parse("id = 1\ndata_dir = \"/x\"\nlisten_addr = \"1.2.3.4:5\"\n").unwrap_err();
        assert!(e.contains("unknown field `listen_addr`"), "{e}");
        let e = parse("id = 1\ndata_dir = \"/x\"\n[raft]\nheartbeat = 5\n").unwrap_err();
        assert!(e.contains("unknown field `heartbeat`"), "{e}");
    }

    #[test]
    fn timers_that_break_elections_are_rejected() {
        let e = parse("id = 1\ndata_dir = \"/x\"\n[raft]\nheartbeat_ms = 200\nelection_timeout_min_ms = 300\n")
            .unwrap_err();
        assert!(e.contains("at least twice"), "{e}");
        let e = parse(
            "id = 1\ndata_dir = \"/x\"\n[raft]\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 500\n",
        )
        .unwrap_err();
        assert!(e.contains("must be greater"), "{e}");
    }

    #[test]
    fn bootstrap_must_name_this_node_consistently() {
        let base = "id = 1\ndata_dir = \"/x\"\nlisten = \"127.0.0.1:7001\"\n";
        let ok = format!(
            "{base}[bootstrap]\nmembers = [{{id = 1, addr = \"127.0.0.1:7001\"}}, {{id = 2, addr = \"127.0.0.1:7002\", role = \"witness\"}}]\n"
        );
        assert_eq!(parse(&ok).unwrap().bootstrap.unwrap().len(), 2);
        let missing =
            format!("{base}[bootstrap]\nmembers = [{{id = 2, addr = \"127.0.0.1:7002\"}}]\n");
        assert!(
            parse(&missing)
                .unwrap_err()
                .contains("must include this node")
        );
        let dup = format!(
            "{base}[bootstrap]\nmembers = [{{id = 1, addr = \"127.0.0.1:7001\"}}, {{id = 1, addr = \"127.0.0.1:7002\"}}]\n"
        );
        assert!(parse(&dup).unwrap_err().contains("listed twice"));
        let both = format!("{base}join = \"127.0.0.1:7002\"\n[bootstrap]\n");
        assert!(parse(&both).unwrap_err().contains("exclude each other"));
    }

    #[test]
    fn engine_section_is_validated() {
        let base = "id = 1\ndata_dir = \"/x\"\n";
        assert!(parse(base).unwrap().engine.is_none());
        let c = parse(&format!("{base}[engine]\ninterface = \"eth0\"\n")).unwrap();
        let e = c.engine.unwrap();
        assert_eq!(
            (
                e.workers,
                e.max_connections,
                e.tcp_timeout,
                e.tcp_fin_timeout,
                e.udp_timeout
            ),
            (1, 1 << 20, 900, 120, 300)
        );
        assert!(!e.expire_nodest_conn);
        let bad = parse(&format!(
            "{base}[engine]\ninterface = \"eth0\"\nworkers = 0\n"
        ))
        .unwrap_err();
        assert!(bad.contains("workers"), "{bad}");
        let bad = parse(&format!("{base}[engine]\nworkers = 2\n")).unwrap_err();
        assert!(bad.contains("engine.interface"), "{bad}");
        let bad = parse(&format!(
            "{base}role = \"witness\"\n[engine]\ninterface = \"eth0\"\n"
        ))
        .unwrap_err();
        assert!(bad.contains("witness"), "{bad}");
        let bad = parse(&format!(
            "{base}[engine]\ninterface = \"eth0\"\nudp_timeout = 0\n"
        ))
        .unwrap_err();
        assert!(bad.contains("udp_timeout"), "{bad}");
    }

    #[test]
    fn vip_timers_are_checked() {
        let base = "id = 1\ndata_dir = \"/x\"\n";
        assert_eq!(parse(base).unwrap().vip, crate::vip::VipTimers::default());
        let bad = parse(&format!("{base}[vip]\nlease_ms = 100\nrenew_ms = 50\n")).unwrap_err();
        assert!(bad.contains("renew_ms"), "{bad}");
        let bad = parse(&format!("{base}[vip]\nnotify = \"notify.sh\"\n")).unwrap_err();
        assert!(bad.contains("absolute"), "{bad}");
    }

    #[test]
    fn metrics_listen_is_validated() {
        let base = "id = 1\ndata_dir = \"/x\"\nlisten = \"127.0.0.1:7070\"\n";
        assert_eq!(parse(base).unwrap().metrics, None);
        let c = parse(&format!("{base}[metrics]\nlisten = \"[::]:9470\"\n")).unwrap();
        assert_eq!(c.metrics, Some("[::]:9470".parse().unwrap()));
        for (bad, why) in [
            ("localhost:9470", "not an IP:PORT"),
            ("127.0.0.1", "not an IP:PORT"),
            ("127.0.0.1:99999", "not an IP:PORT"),
            ("", "not an IP:PORT"),
            ("127.0.0.1:0", "must not be 0"),
            ("127.0.0.1:7070", "collides"),
            ("0.0.0.0:7070", "collides"),
        ] {
            let e = parse(&format!("{base}[metrics]\nlisten = \"{bad}\"\n")).unwrap_err();
            assert!(
                e.contains("metrics.listen") && e.contains(why),
                "{bad}: {e}"
            );
        }
        let e = parse(&format!("{base}[metrics]\nport = 9470\n")).unwrap_err();
        assert!(e.contains("unknown field `port`"), "{e}");
    }

    #[test]
    fn unspecified_listen_needs_advertise() {
        let e = parse("id = 1\ndata_dir = \"/x\"\nlisten = \"0.0.0.0:7000\"\n").unwrap_err();
        assert!(e.contains("advertise"), "{e}");
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    /// The documented example parses and states exactly the defaults.
    #[test]
    fn shipped_example_is_valid_and_matches_the_defaults() {
        let text = include_str!("../fulcrumd.toml");
        let c = FileConfig::parse(text).unwrap().validate().unwrap();
        assert_eq!(c.raft, RaftTimers::default());
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.role, Role::Director);
        assert_eq!(c.log, "info");
        assert_eq!(c.cluster_name, "fulcrum");
        assert_eq!(c.metrics, None);
        assert!(!c.allow_kill);
        assert_eq!(c.sync, Some(fulcrum_sync::stream::SyncTimers::default()));
    }

    #[test]
    fn sync_settings_are_validated() {
        let base = "id = 1\ndata_dir = \"/x\"\n";
        let off = FileConfig::parse(&format!("{base}[sync]\nenabled = false\n"))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(off.sync, None);
        let bad = FileConfig::parse(&format!("{base}[sync]\nwindow = 0\n"))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(bad.contains("sync.window"), "{bad}");
        let bad = FileConfig::parse(&format!("{base}[sync]\nmax_lag_entries = 10\n"))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(bad.contains("max_lag_entries"), "{bad}");
        assert!(FileConfig::parse(&format!("{base}[sync]\nbogus = 1\n")).is_err());
    }
}
