//! Command-line syntax. Services are named by their key ("tcp/192.0.2.1:80") or with
//! ipvsadm's flags (-t/-u/--sctp-service ADDR, -f MARK [-6]); real servers by -r ADDR.

use std::path::PathBuf;

use anyhow::Result;
use anyhow::bail;
use clap::Args;
use clap::Parser;
use clap::Subcommand;
use fulcrum_proto::v1 as pb;

#[derive(Parser, Debug)]
#[command(
    name = "fulcrum",
    version,
    about = "Drive a Fulcrum load-balancer cluster",
    propagate_version = true
)]
pub struct Cli {
    /// Any node of the cluster (its gRPC address).
    #[arg(
        long,
        short = 'S',
        global = true,
        env = "FULCRUM_SERVER",
        default_value = "127.0.0.1:7070"
    )]
    pub server: String,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for an answer.
    #[arg(long, global = true, default_value_t = 10.0, value_parser = parse_timeout)]
    pub timeout: f64,
    #[command(subcommand)]
    pub cmd: Cmd,
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 3600"
        )),
    }
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Cluster membership and leadership.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// Virtual services.
    Service {
        #[command(subcommand)]
        cmd: ServiceCmd,
    },
    /// Real servers of a virtual service.
    Real {
        #[command(subcommand)]
        cmd: RealCmd,
    },
    /// VIP groups (addresses that move between directors together).
    VipGroup {
        #[command(subcommand)]
        cmd: VipGroupCmd,
    },
    /// VIP ownership: planned moves.
    Vip {
        #[command(subcommand)]
        cmd: VipCmd,
    },
    /// Follow VIP ownership transitions as the contacted node sees them (until interrupted,
    /// or for --seconds).
    Events {
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Connection entries in the contacted node's forwarding path (like `ipvsadm -Lnc`).
    Conn {
        #[command(subcommand)]
        cmd: ConnCmd,
    },
    /// Connection sync between directors, as the node asked sees it.
    Sync {
        #[command(subcommand)]
        cmd: SyncCmd,
    },
    /// Replace the whole service configuration with a declarative TOML file, atomically.
    Apply(ApplyArgs),
    /// Print the current configuration as TOML that `apply` accepts back unchanged.
    Export {
        /// Serve from the contacted node without checking with the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Failover drill: long-lived TCP/UDP flows through a VIP group while it moves (--move) or
    /// loses its owner (--kill); reports takeover time, broken flows and stalls. Exit status 3
    /// when flows broke. `drill serve` is the echo target for the real servers.
    Drill(crate::drill::DrillArgs),
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The cluster config file ("-" for standard input).
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    /// Show what would change, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Leader, term, indexes, members and their health, as this node sees them.
    Status,
    /// Members with address, role and voting state.
    Members {
        #[arg(long)]
        stale: bool,
    },
    /// Add a node (it must be running); it catches up as a learner, then votes.
    Join {
        #[arg(long)]
        id: u64,
        /// The node's gRPC address, host:port.
        #[arg(long)]
        addr: String,
        /// director or witness.
        #[arg(long, default_value = "director")]
        role: String,
        /// The id is already a member whose node lost its data or moved: remove it, then re-add it.
        #[arg(long)]
        replace: bool,
    },
    /// Remove a node (also how a dead member is replaced: leave, then join the new one).
    Leave { id: u64 },
    /// Hand leadership to another voter (the most caught-up one if --to is not given).
    Transfer {
        #[arg(long)]
        to: Option<u64>,
    },
}

/// Which virtual service: a key, or ipvsadm's way of saying it.
#[derive(Args, Debug, Clone)]
pub struct ServiceSel {
    /// Service key: tcp/192.0.2.1:80, udp/[2001:db8::1]:53, tcp/192.0.2.1:8000-8099, fwmark/7, fwmark6/7.
    #[arg(value_name = "SERVICE", required_unless_present_any = ["tcp_service", "udp_service", "sctp_service", "fwmark_service"])]
    pub key: Option<String>,
    /// TCP service at VIP:PORT (ipvsadm -t).
    #[arg(short = 't', long, value_name = "VIP:PORT", conflicts_with_all = ["key", "udp_service", "sctp_service", "fwmark_service"])]
    pub tcp_service: Option<String>,
    /// UDP service at VIP:PORT (ipvsadm -u).
    #[arg(short = 'u', long, value_name = "VIP:PORT", conflicts_with_all = ["key", "sctp_service", "fwmark_service"])]
    pub udp_service: Option<String>,
    /// SCTP service at VIP:PORT (ipvsadm --sctp-service).
    #[arg(long, value_name = "VIP:PORT", conflicts_with_all = ["key", "fwmark_service"])]
    pub sctp_service: Option<String>,
    /// Firewall-mark service (ipvsadm -f).
    #[arg(short = 'f', long, value_name = "MARK", conflicts_with = "key")]
    pub fwmark_service: Option<u32>,
    /// With -f: the mark is for IPv6 traffic (ipvsadm -6).
    #[arg(short = '6', long = "ipv6", requires = "fwmark_service")]
    pub ipv6: bool,
}

impl ServiceSel {
    pub fn key(&self) -> Result<String> {
        let (proto, addr) = match (
            &self.key,
            &self.tcp_service,
            &self.udp_service,
            &self.sctp_service,
        ) {
            (Some(k), ..) => return Ok(k.clone()),
            (_, Some(a), _, _) => ("tcp", a),
            (_, _, Some(a), _) => ("udp", a),
            (_, _, _, Some(a)) => ("sctp", a),
            _ => match self.fwmark_service {
                Some(m) => {
                    return Ok(format!(
                        "{}/{m}",
                        if self.ipv6 { "fwmark6" } else { "fwmark" }
                    ));
                }
                None => {
                    bail!("name a service: a key like tcp/192.0.2.1:80, or -t/-u/--sctp-service/-f")
                }
            },
        };
        Ok(format!("{proto}/{addr}"))
    }
}

#[derive(Args, Debug)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub service: ServiceSel,
    /// Scheduler: rr wrr lc wlc lblc lblcr dh sh sed nq fo ovf mh twos.
    #[arg(short = 's', long, default_value = "wlc")]
    pub scheduler: String,
    /// Scheduler flags, comma separated: sh-fallback, sh-port, mh-fallback, mh-port.
    #[arg(short = 'b', long = "sched-flags", value_delimiter = ',')]
    pub flags: Vec<String>,
    /// Persistence timeout in seconds (ipvsadm -p; 300 if given without a value).
    #[arg(short = 'p', long, num_args = 0..=1, default_missing_value = "300")]
    pub persistent: Option<u32>,
    /// Persistence granularity as a prefix length (ipvsadm -M, as a length: 24 for 255.255.255.0).
    #[arg(short = 'M', long = "netmask", value_name = "PREFIX")]
    pub persistence_prefix: Option<u32>,
    /// One-packet scheduling (UDP).
    #[arg(short = 'o', long = "ops")]
    pub one_packet: bool,
    /// The VIP group carrying this service's VIP.
    #[arg(long)]
    pub vip_group: Option<String>,
}

impl ServiceArgs {
    pub fn to_proto(&self) -> Result<pb::Service> {
        Ok(pb::Service {
            key: self.service.key()?,
            scheduler: self.scheduler.clone(),
            scheduler_flags: self.flags.clone(),
            persistence_timeout: self.persistent.unwrap_or(0),
            persistence_prefix: self.persistence_prefix,
            vip_group: self.vip_group.clone().unwrap_or_default(),
            reals: vec![],
            one_packet: self.one_packet,
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Add a virtual service (ipvsadm -A).
    Add(ServiceArgs),
    /// Change a virtual service's settings; its real servers stay (ipvsadm -E).
    Edit(ServiceArgs),
    /// Delete a virtual service and its real servers (ipvsadm -D).
    Delete {
        #[command(flatten)]
        service: ServiceSel,
    },
    /// List virtual services and their real servers.
    List {
        #[arg(long)]
        stale: bool,
    },
    /// Traffic counters and rates of the contacted node's forwarding path
    /// (like `ipvsadm -Ln --stats --rate`).
    Stats {
        /// Only this service (a key such as tcp/192.0.2.1:80).
        service: Option<String>,
    },
    /// One virtual service in detail.
    Show {
        #[command(flatten)]
        service: ServiceSel,
        #[arg(long)]
        stale: bool,
    },
}

#[derive(Args, Debug)]
pub struct RealArgs {
    #[command(flatten)]
    pub service: ServiceSel,
    /// Real server address, ADDR:PORT or [V6ADDR]:PORT (ipvsadm -r).
    #[arg(short = 'r', long = "real-server", value_name = "ADDR:PORT")]
    pub real: String,
    /// Weight 0..65535; 0 quiesces the server.
    #[arg(short = 'w', long, default_value_t = 1)]
    pub weight: u32,
    /// Direct routing (ipvsadm -g, the default).
    #[arg(short = 'g', long = "gatewaying", group = "method")]
    pub dr: bool,
    /// NAT (ipvsadm -m).
    #[arg(short = 'm', long = "masquerading", group = "method")]
    pub nat: bool,
    /// IP-in-IP tunnel (ipvsadm -i).
    #[arg(short = 'i', long = "ipip", group = "method")]
    pub tun: bool,
    /// Upper connection threshold; 0 = none (ipvsadm -x).
    #[arg(short = 'x', long = "u-threshold", default_value_t = 0)]
    pub upper: u32,
    /// Lower connection threshold; 0 = none (ipvsadm -y).
    #[arg(short = 'y', long = "l-threshold", default_value_t = 0)]
    pub lower: u32,
}

impl RealArgs {
    pub fn to_proto(&self) -> Result<pb::RealRequest> {
        let forward = if self.nat {
            "nat"
        } else if self.tun {
            "tun"
        } else {
            "dr"
        };
        Ok(pb::RealRequest {
            service: self.service.key()?,
            real: Some(pb::RealServer {
                address: self.real.clone(),
                weight: self.weight,
                forward: forward.into(),
                upper_threshold: self.upper,
                lower_threshold: self.lower,
            }),
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum RealCmd {
    /// Add a real server to a service (ipvsadm -a).
    Add(RealArgs),
    /// Change a real server (ipvsadm -e).
    Edit(RealArgs),
    /// Remove a real server (ipvsadm -d).
    Delete {
        #[command(flatten)]
        service: ServiceSel,
        #[arg(short = 'r', long = "real-server", value_name = "ADDR:PORT")]
        real: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum VipGroupCmd {
    /// Add a VIP group.
    Add {
        name: String,
        /// A VIP (repeat for several; IPv4 and IPv6 may mix).
        #[arg(long = "vip", required = true)]
        vips: Vec<String>,
        /// The interface the VIPs live on.
        #[arg(long)]
        interface: String,
        /// Node id that should own the group when it is up.
        #[arg(long)]
        preferred_owner: Option<u64>,
        /// Move the group back to the preferred owner when it returns.
        #[arg(long)]
        preempt: bool,
    },
    /// Delete a VIP group (no service may use it).
    Delete { name: String },
    /// List VIP groups.
    List {
        #[arg(long)]
        stale: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SyncCmd {
    /// Per peer: link state, whether it is current, lag (entries, ms, p99), last
    /// acknowledgement, resyncs and counters; then the streams this node receives.
    Status,
}

#[derive(Subcommand, Debug)]
pub enum ConnCmd {
    /// List connection entries: protocol, expiry, state, client, virtual, real server, origin.
    List {
        /// Only entries of this service (a key such as tcp/192.0.2.1:80).
        #[arg(long)]
        service: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 10_000)]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum VipCmd {
    /// Move a VIP group to another director without waiting for timeouts: the current owner
    /// stops answering, then the new one takes over and announces.
    Move {
        group: String,
        /// Target director id (default: the cluster picks).
        #[arg(long)]
        to: Option<u64>,
    },
}
