//! `fulcrum drill`: an operator's failover drill against a running cluster, and
//! `fulcrum drill serve`, the echo target to run on real servers for it.
//!
//! A drill opens long-lived flows through the VIPs of one VIP group (TCP and UDP, to each
//! service of the group on the drill port, IPv4 and IPv6 as the group has them), lets them
//! exchange numbered messages for a warm-up, triggers the failover asked for — a planned
//! `vip move`, or the unplanned loss of the owner (`--kill`: the owner is asked through the
//! API to exit at once, which it does only when its config allows it) — keeps the flows going
//! and reports what they saw (see [`report`] for the definitions). It exits 0 when every flow
//! survived and the group moved, 3 when not, 1 when the drill could not run.

mod flow;
mod lo;
mod report;
mod serve;

use std::net::IpAddr;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use anyhow::Result;
use anyhow::anyhow;
use anyhow::bail;
use clap::Args;
use clap::Subcommand;
use fulcrum_node::model::Protocol;
use fulcrum_node::model::ServiceKey;
use fulcrum_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Conn;
use flow::FlowSpec;
use flow::Proto;
use report::Director;
use report::Report;

/// The exit status of a drill whose flows broke (or whose group did not move).
pub const EXIT_FAILED: i32 = 3;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DrillArgs {
    #[command(subcommand)]
    pub cmd: Option<DrillCmd>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum DrillCmd {
    /// Echo target for drills, to run on the real servers: answers each TCP line and UDP
    /// datagram M with "NAME M", until SIGTERM/SIGINT.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Serve TCP and UDP here (repeat for several). [::] takes IPv4 too.
    #[arg(long, default_value = "[::]:8080", value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
    /// The name put in every reply (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Put this VIP on lo first, as a DR real server needs (repeat for several; needs
    /// CAP_NET_ADMIN; refused for IPv4 unless arp_ignore/arp_announce are set). Removed again
    /// on exit if it was not there before.
    #[arg(long = "vip-on-lo", value_name = "IP")]
    pub vip_on_lo: Vec<IpAddr>,
    /// At most this many TCP connections at once; more are closed at once.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The VIP group to drill (default: the only one).
    #[arg(long)]
    pub group: Option<String>,
    /// Drill the group's TCP and UDP services on this port (where `fulcrum drill serve`
    /// answers on the real servers).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Drill these services instead (keys like tcp/192.0.2.1:8080; repeat for several).
    #[arg(long = "service", value_name = "KEY")]
    pub services: Vec<String>,
    /// Long-lived flows to open, spread over the services.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub flows: u32,
    /// Messages per second on each flow.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rate: u32,
    /// Seconds the flows run, warm-up included.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..=600))]
    pub duration: u32,
    /// Seconds of traffic before the failover is triggered.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=300))]
    pub warmup: u32,
    /// Trigger a planned move of the group (`vip move`).
    #[arg(long = "move", conflicts_with = "kill")]
    pub planned: bool,
    /// With --move: the director to move to (default: the cluster picks).
    #[arg(long, requires = "planned")]
    pub to: Option<u64>,
    /// Trigger an unplanned loss: the owner is asked through the API to exit at once, as if
    /// killed with SIGKILL. Needs --yes-kill-the-owner, and `[drill] allow_kill = true` in the
    /// owner's fulcrumd.toml.
    #[arg(long)]
    pub kill: bool,
    /// Confirms --kill.
    #[arg(long, requires = "kill")]
    pub yes_kill_the_owner: bool,
}

/// The whole `fulcrum drill` command. Gives the process exit status.
pub async fn main(server: &str, timeout: Duration, json: bool, args: DrillArgs) -> Result<i32> {
    match args.cmd {
        Some(DrillCmd::Serve(s)) => serve::serve(s).await.map(|()| 0),
        None => {
            let report = run(server, timeout, args.run).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("encoding the report")?
                );
            } else {
                report.print_human();
            }
            Ok(if report.passed { 0 } else { EXIT_FAILED })
        }
    }
}

enum Trigger {
    Move(Option<u64>),
    Kill,
}

impl Trigger {
    /// Whether the group is where the trigger was meant to put it.
    fn done(&self, before: u64, owner: u64) -> bool {
        match self {
            Trigger::Move(Some(to)) => owner == *to,
            _ => owner != before,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Trigger::Move(_) => "move",
            Trigger::Kill => "kill",
        }
    }
}

/// What the cluster says before the drill.
struct Target {
    group: String,
    owner: u64,
    /// The node `--server` reached.
    via: u64,
    addrs: std::collections::BTreeMap<u64, String>,
    flows: Vec<FlowSpec>,
}

async fn run(server: &str, timeout: Duration, a: RunArgs) -> Result<Report> {
    let trigger = match (a.planned, a.kill, a.yes_kill_the_owner) {
        (true, _, _) => Trigger::Move(a.to),
        (false, true, true) => Trigger::Kill,
        (false, true, false) => bail!(
            "--kill makes the director that owns the group exit at once, as if killed with \
             SIGKILL; add --yes-kill-the-owner to go ahead"
        ),
        (false, false, _) => bail!("say what to drill: --move (planned) or --kill (unplanned)"),
    };
    if a.warmup + 1 >= a.duration {
        bail!(
            "--duration {} leaves no time after a --warmup of {} s: make it at least {}",
            a.duration,
            a.warmup,
            a.warmup + 2
        );
    }
    let per_sec = u64::from(a.flows) * u64::from(a.rate);
    if per_sec > 20_000 {
        bail!("--flows x --rate is {per_sec} messages/s; the drill sends at most 20000");
    }
    let conn = Conn::open(server, timeout).await?;
    let t = discover(&conn, &a).await?;
    if let Trigger::Move(Some(to)) = trigger
        && to == t.owner
    {
        bail!(
            "node {to} already owns VIP group {:?}: --to another director",
            t.group
        );
    }
    let owner_addr = t
        .addrs
        .get(&t.owner)
        .cloned()
        .ok_or_else(|| anyhow!("owner node {} is not a member", t.owner))?;
    // The owner is asked directly: for the kill, and for its connection table.
    let owner_conn = Conn::open(&owner_addr, timeout)
        .await
        .with_context(|| format!("the owner, node {}", t.owner))?;
    if let Trigger::Kill = trigger {
        owner_conn
            .cluster()
            .kill(pb::KillRequest {
                node_id: t.owner,
                reason: String::new(),
                check: true,
            })
            .await
            .with_context(|| format!("node {} (the owner)", t.owner))?;
    }
    // Who to ask about the cluster after the event: not the node about to die.
    let observer = match trigger {
        Trigger::Kill => {
            let addr = if t.via == t.owner {
                t.addrs
                    .iter()
                    .find(|(id, _)| **id != t.owner)
                    .map(|(_, a)| a.clone())
                    .ok_or_else(|| anyhow!("no other member to watch the takeover from"))?
            } else {
                server.to_string()
            };
            Conn::open(&addr, timeout).await?
        }
        Trigger::Move(_) => Conn::open(server, timeout).await?,
    };

    // The flows.
    let start = Instant::now();
    let interval = Duration::from_secs(1) / a.rate;
    let sched = flow::Schedule {
        start,
        interval,
        stop_sending: start + Duration::from_secs(a.duration.into()),
        stop: start + Duration::from_secs(u64::from(a.duration) + 1),
        connect_timeout: Duration::from_secs(2),
    };
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (abort_tx, abort_rx) = watch::channel(false);
    let n = t.flows.len();
    let mut tasks = Vec::with_capacity(n);
    for (i, spec) in t.flows.iter().enumerate() {
        // Spread the flows' messages evenly over each interval.
        let phase = interval * i as u32 / n as u32;
        tasks.push(tokio::spawn(flow::run(
            spec.clone(),
            sched,
            phase,
            ready_tx.clone(),
            abort_rx.clone(),
        )));
    }
    drop(ready_tx);
    let trigger_at = start + Duration::from_secs(a.warmup.into());
    let mut ready = 0;
    while ready < n {
        match tokio::time::timeout_at(trigger_at, ready_rx.recv()).await {
            Ok(Some(_)) => ready += 1,
            _ => break,
        }
    }
    if ready < n {
        let _ = abort_tx.send(true);
        let mut why = Vec::new();
        for (spec, task) in t.flows.iter().zip(tasks) {
            let log = task.await.unwrap_or_default();
            if log.replies.is_empty() {
                let what = log
                    .fault
                    .map(|f| f.what)
                    .unwrap_or_else(|| "no reply".into());
                why.push(format!(
                    "flow {} ({} {}): {what}",
                    spec.id, spec.service, spec.target
                ));
            }
        }
        bail!(
            "{} of {n} flows got no answer within the {} s warm-up, so there is nothing to \
             drill (is `fulcrum drill serve` running on the real servers?):\n  {}",
            why.len(),
            a.warmup,
            why.join("\n  ")
        );
    }
    tokio::time::sleep_until(trigger_at).await;

    // Before: the owner now, and the flows in its table.
    let owner_now = group_status(&conn, &t.group).await?.owner;
    if owner_now != Some(t.owner) {
        let _ = abort_tx.send(true);
        bail!(
            "the owner of {:?} changed during the warm-up (node {} -> {owner_now:?}): not drilling",
            t.group,
            t.owner
        );
    }
    let before_in_table = flows_in_table(&owner_conn, &t).await;

    // The event.
    let event = match trigger {
        Trigger::Move(to) => {
            let at = Instant::now();
            let r = conn
                .cluster()
                .move_vip(pb::MoveVipRequest {
                    group: t.group.clone(),
                    to: to.unwrap_or(0),
                })
                .await;
            if let Err(e) = r {
                let _ = abort_tx.send(true);
                return Err(anyhow::Error::new(e).context("vip move"));
            }
            at
        }
        Trigger::Kill => {
            let r = owner_conn
                .cluster()
                .kill(pb::KillRequest {
                    node_id: t.owner,
                    reason: format!("fulcrum drill from {}", whoami()),
                    check: false,
                })
                .await;
            // The node exits instead of answering: the call fails when its connection drops.
            let at = Instant::now();
            match r {
                Err(s) if gone(&s) => at,
                Err(s) => {
                    let _ = abort_tx.send(true);
                    return Err(anyhow::Error::new(s).context(format!("killing node {}", t.owner)));
                }
                Ok(_) => {
                    let _ = abort_tx.send(true);
                    bail!("node {} answered instead of exiting", t.owner);
                }
            }
        }
    };

    // After: wait for the cluster to name the new owner.
    let mut new_owner: Option<(u64, Duration)> = None;
    while Instant::now() < sched.stop_sending {
        if let Ok(g) = group_status(&observer, &t.group).await
            && let Some(o) = g.owner
            && trigger.done(t.owner, o)
        {
            new_owner = Some((o, event.elapsed()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep_until(sched.stop_sending).await;
    let after = match new_owner {
        Some((id, seen)) => {
            let addr = t.addrs.get(&id).cloned().unwrap_or_default();
            let in_table = match Conn::open(&addr, timeout).await {
                Ok(c) => flows_in_table(&c, &t).await,
                Err(_) => None,
            };
            Some((id, addr, seen, in_table))
        }
        None => None,
    };

    let mut logs = Vec::with_capacity(n);
    for task in tasks {
        logs.push(task.await.unwrap_or_default());
    }
    let event_off = event.duration_since(start);
    let end_off = sched.stop_sending.duration_since(start);
    let locals: Vec<SocketAddr> = logs.iter().filter_map(|l| l.local).collect();
    let count = |table: Option<Vec<SocketAddr>>| {
        table.map(|clients| locals.iter().filter(|l| clients.contains(l)).count())
    };
    // A flow alive at the end had an answer to something it sent in the last second (or the
    // last three messages, when they are further apart).
    let tail = Duration::from_secs(1).max(interval * 3);
    let per_flow = t
        .flows
        .iter()
        .zip(&logs)
        .map(|(spec, log)| report::analyse(spec, log, event_off, end_off, tail))
        .collect();
    Ok(Report::new(
        report::Header {
            group: t.group.clone(),
            trigger: trigger.name(),
            rate: a.rate,
            duration: end_off,
            event: event_off,
        },
        Director {
            node: t.owner,
            addr: owner_addr,
            flows_in_table: count(before_in_table),
            owner_seen_after_ms: None,
        },
        after.map(|(node, addr, seen, in_table)| Director {
            node,
            addr,
            flows_in_table: count(in_table),
            owner_seen_after_ms: Some((seen.as_secs_f64() * 1e4).round() / 10.0),
        }),
        per_flow,
    ))
}

/// A call that failed because the node went away, not because it refused.
fn gone(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Cancelled
    )
}

fn whoami() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

async fn group_status(conn: &Conn, group: &str) -> Result<pb::VipGroupStatus> {
    let s = conn
        .cluster()
        .status(pb::StatusRequest { read: None })
        .await
        .context("cluster status")?
        .into_inner();
    s.vip_groups
        .into_iter()
        .find(|g| g.name == group)
        .ok_or_else(|| anyhow!("no VIP group {group:?}"))
}

/// The client addresses in a director's connection table for the drilled services.
async fn flows_in_table(conn: &Conn, t: &Target) -> Option<Vec<SocketAddr>> {
    let mut services: Vec<&str> = t.flows.iter().map(|f| f.service.as_str()).collect();
    services.sort();
    services.dedup();
    let mut clients = Vec::new();
    for s in services {
        let r = conn
            .connections()
            .list(pb::ConnListRequest {
                service: s.to_string(),
                limit: 100_000,
            })
            .await
            .ok()?
            .into_inner();
        clients.extend(
            r.connections
                .iter()
                .filter(|c| !c.template)
                .filter_map(|c| c.client.parse::<SocketAddr>().ok()),
        );
    }
    Some(clients)
}

/// The group, its owner, the members' addresses and the flows to open.
async fn discover(conn: &Conn, a: &RunArgs) -> Result<Target> {
    let status = conn
        .cluster()
        .status(pb::StatusRequest { read: None })
        .await
        .context("cluster status")?
        .into_inner();
    let group = match &a.group {
        Some(g) => status
            .vip_groups
            .iter()
            .find(|s| &s.name == g)
            .ok_or_else(|| anyhow!("no VIP group {g:?}"))?,
        None => match status.vip_groups.as_slice() {
            [g] => g,
            [] => bail!("the cluster has no VIP group to drill"),
            gs => bail!(
                "name the VIP group to drill with --group ({})",
                gs.iter()
                    .map(|g| g.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    let owner = group
        .owner
        .ok_or_else(|| anyhow!("VIP group {:?} has no owner now", group.name))?;
    let addrs = status
        .members
        .iter()
        .map(|m| (m.id, m.addr.clone()))
        .collect();
    let services = conn
        .config()
        .list_services(pb::ListServicesRequest { read: None })
        .await
        .context("service list")?
        .into_inner()
        .services;
    let mut targets: Vec<(Proto, String, SocketAddr)> = Vec::new();
    if a.services.is_empty() {
        for s in services.iter().filter(|s| s.vip_group == group.name) {
            if let Ok(t) = target(&s.key)
                && t.2.port() == a.port
            {
                targets.push(t);
            }
        }
        if targets.is_empty() {
            bail!(
                "VIP group {:?} has no TCP or UDP service on port {} (choose one with --port or --service)",
                group.name,
                a.port
            );
        }
    } else {
        for key in &a.services {
            let t = target(key)?;
            let s = services
                .iter()
                .find(|s| s.key == t.1)
                .ok_or_else(|| anyhow!("no service {key}"))?;
            if s.vip_group != group.name {
                bail!(
                    "service {key} is not in VIP group {:?}: a failover of the group would not move it",
                    group.name
                );
            }
            targets.push(t);
        }
    }
    // Alternate protocols and families so that every kind gets flows even when they are few.
    targets.sort_by_key(|(p, _, addr)| (*p == Proto::Udp, addr.is_ipv6(), addr.to_string()));
    let order: Vec<usize> = interleave(&targets);
    let flows = (0..a.flows as usize)
        .map(|i| {
            let (proto, service, addr) = &targets[order[i % order.len()]];
            FlowSpec {
                id: i + 1,
                proto: *proto,
                service: service.clone(),
                target: *addr,
            }
        })
        .collect();
    Ok(Target {
        group: group.name.clone(),
        owner,
        via: status.node_id,
        addrs,
        flows,
    })
}

/// tcp4, tcp6, udp4, udp6 first, then the rest: the first few flows cover every kind.
fn interleave(targets: &[(Proto, String, SocketAddr)]) -> Vec<usize> {
    let mut order: Vec<usize> = Vec::with_capacity(targets.len());
    let kinds = [
        (Proto::Tcp, false),
        (Proto::Tcp, true),
        (Proto::Udp, false),
        (Proto::Udp, true),
    ];
    let mut rest: Vec<usize> = (0..targets.len()).collect();
    loop {
        let before = order.len();
        for (p, v6) in kinds {
            if let Some(pos) = rest
                .iter()
                .position(|&i| targets[i].0 == p && targets[i].2.is_ipv6() == v6)
            {
                order.push(rest.remove(pos));
            }
        }
        if order.len() == before {
            break;
        }
    }
    order
}

/// (protocol, canonical key, address) of a single-port TCP or UDP service key.
fn target(key: &str) -> Result<(Proto, String, SocketAddr)> {
    let k: ServiceKey = key
        .parse()
        .map_err(|e| anyhow!("service key {key:?}: {e}"))?;
    match &k {
        ServiceKey::Addr {
            protocol,
            vip,
            port,
        } if *port != 0 => {
            let proto = match protocol {
                Protocol::Tcp => Proto::Tcp,
                Protocol::Udp => Proto::Udp,
                p => bail!("{key}: a drill speaks TCP and UDP, not {p}"),
            };
            Ok((proto, k.to_string(), SocketAddr::new(*vip, *port)))
        }
        _ => bail!("{key}: a drill needs a TCP or UDP service on one port"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_keys_become_targets() {
        let (p, k, a) = target("tcp/192.0.2.1:8080").unwrap();
        assert_eq!(
            (p, k.as_str(), a.to_string().as_str()),
            (Proto::Tcp, "tcp/192.0.2.1:8080", "192.0.2.1:8080")
        );
        let (p, _, a) = target("udp/[2001:db8::1]:53").unwrap();
        assert_eq!(
            (p, a.to_string().as_str()),
            (Proto::Udp, "[2001:db8::1]:53")
        );
        for bad in [
            "fwmark/7",
            "tcp/192.0.2.1:8000-8099",
            "sctp/192.0.2.1:2905",
            "tcp/192.0.2.1:0",
            "x",
        ] {
            assert!(target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn few_flows_still_cover_every_kind() {
        let t: Vec<(Proto, String, SocketAddr)> = [
            "udp/[2001:db8::1]:80",
            "tcp/[2001:db8::1]:80",
            "udp/192.0.2.1:80",
            "tcp/192.0.2.1:80",
        ]
        .iter()
        .map(|k| target(k).unwrap())
        .collect();
        let order = interleave(&t);
        let kinds: Vec<(Proto, bool)> = order.iter().map(|&i| (t[i].0, t[i].2.is_ipv6())).collect();
        assert_eq!(
            kinds,
            [
                (Proto::Tcp, false),
                (Proto::Tcp, true),
                (Proto::Udp, false),
                (Proto::Udp, true)
            ]
        );
    }
}
