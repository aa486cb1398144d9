//! What the CLI prints: tables for people, JSON (`--json`) for scripts.

use fulcrum_proto::v1 as pb;
use serde_json::Value;
use serde_json::json;

pub struct Out {
    pub json: bool,
}

fn op_name(op: i32) -> &'static str {
    match pb::ChangeOp::try_from(op) {
        Ok(pb::ChangeOp::Add) => "add",
        Ok(pb::ChangeOp::Remove) => "remove",
        Ok(pb::ChangeOp::Modify) => "modify",
        _ => "unknown",
    }
}

fn op_sign(op: i32) -> &'static str {
    match pb::ChangeOp::try_from(op) {
        Ok(pb::ChangeOp::Add) => "+",
        Ok(pb::ChangeOp::Remove) => "-",
        Ok(pb::ChangeOp::Modify) => "~",
        _ => "?",
    }
}

pub fn config_json(c: &pb::ClusterConfig) -> Value {
    serde_json::to_value(c).unwrap_or(Value::Null)
}

/// Left-aligned columns, two spaces apart, header first.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{:<w$}  ", c, w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

impl Out {
    pub fn print_json(&self, v: &Value) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }

    pub fn changes(&self, index: u64, changes: &[pb::Change], dry_run: bool) {
        if self.json {
            let list: Vec<Value> = changes
                .iter()
                .map(|c| json!({"op": op_name(c.op), "object": c.object, "key": c.key, "detail": c.detail}))
                .collect();
            self.print_json(&json!({"index": index, "dry_run": dry_run, "changes": list}));
            return;
        }
        for c in changes {
            if c.detail.is_empty() {
                println!("{} {} {}", op_sign(c.op), c.object, c.key);
            } else {
                println!("{} {} {}: {}", op_sign(c.op), c.object, c.key, c.detail);
            }
        }
        match (dry_run, changes.is_empty()) {
            (true, true) => println!("no changes (dry run)"),
            (true, false) => println!(
                "{} change(s) would be made (dry run; nothing applied)",
                changes.len()
            ),
            (false, true) => println!("no changes"),
            (false, false) => println!("applied at index {index}"),
        }
    }

    pub fn done(&self, what: &str, index: u64) {
        if self.json {
            self.print_json(&json!({"result": what, "index": index}));
        } else {
            println!("{what} (index {index})");
        }
    }

    pub fn status(&self, s: &pb::ClusterStatus) {
        if self.json {
            self.print_json(&serde_json::to_value(s).unwrap_or(Value::Null));
            return;
        }
        let leader = s
            .leader_id
            .map(|l| l.to_string())
            .unwrap_or_else(|| "none".into());
        println!("cluster:   {}", s.cluster_name);
        println!("node:      {} ({})", s.node_id, s.raft_state);
        println!("leader:    {leader}");
        println!("term:      {}", s.term);
        println!(
            "log:       last {}  committed {}  applied {}",
            s.last_log_index, s.committed_index, s.applied_index
        );
        if let Some(ms) = s.millis_since_quorum_ack {
            println!("quorum:    acked {ms} ms ago");
        }
        println!();
        let rows: Vec<Vec<String>> = s
            .members
            .iter()
            .map(|m| {
                let peer = s.peers.iter().find(|p| p.id == m.id);
                let health = peer
                    .map(|p| p.state.clone())
                    .unwrap_or_else(|| "unknown".into());
                let matched = peer
                    .and_then(|p| p.matched_index)
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "-".into());
                let ack = peer
                    .and_then(|p| p.last_ack_ms)
                    .map(|i| format!("{i}ms"))
                    .unwrap_or_else(|| "-".into());
                let mark = if Some(m.id) == s.leader_id { "*" } else { "" };
                vec![
                    format!("{}{mark}", m.id),
                    m.addr.clone(),
                    m.role.clone(),
                    if m.voter {
                        "voter".into()
                    } else {
                        "learner".into()
                    },
                    health,
                    matched,
                    ack,
                ]
            })
            .collect();
        table(
            &[
                "ID", "ADDRESS", "ROLE", "VOTE", "HEALTH", "MATCHED", "LAST-ACK",
            ],
            &rows,
        );
        if !s.vip_groups.is_empty() {
            println!();
            let rows: Vec<Vec<String>> = s
                .vip_groups
                .iter()
                .map(|g| {
                    vec![
                        g.name.clone(),
                        g.owner.map(|o| o.to_string()).unwrap_or_else(|| "-".into()),
                        g.state_here.clone(),
                        g.lease_age_ms
                            .map(|a| format!("{a}ms"))
                            .unwrap_or_else(|| "-".into()),
                        g.last_transition_ms
                            .map(|a| format!("{:.1}s ago", a as f64 / 1000.0))
                            .unwrap_or_else(|| "-".into()),
                        g.vips.join(","),
                    ]
                })
                .collect();
            table(
                &[
                    "VIP-GROUP",
                    "OWNER",
                    "HERE",
                    "LEASE-AGE",
                    "LAST-CHANGE",
                    "VIPS",
                ],
                &rows,
            );
        }
    }

    pub fn event(&self, e: &pb::Event) {
        if self.json {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
        } else {
            println!(
                "{} node {} vip_group {}: {}",
                e.at_ms, e.node, e.group, e.detail
            );
        }
    }

    pub fn members(&self, m: &pb::MembersReply) {
        if self.json {
            self.print_json(&serde_json::to_value(m).unwrap_or(Value::Null));
            return;
        }
        let rows: Vec<Vec<String>> = m
            .members
            .iter()
            .map(|x| {
                vec![
                    x.id.to_string(),
                    x.addr.clone(),
                    x.role.clone(),
                    if x.voter {
                        "voter".into()
                    } else {
                        "learner".into()
                    },
                    if Some(x.id) == m.leader_id {
                        "leader".into()
                    } else {
                        String::new()
                    },
                ]
            })
            .collect();
        table(&["ID", "ADDRESS", "ROLE", "VOTE", ""], &rows);
    }

    /// Like `ipvsadm -Ln`: each service, then its real servers indented under it.
    pub fn services(&self, services: &[pb::Service]) {
        if self.json {
            self.print_json(&serde_json::to_value(services).unwrap_or(Value::Null));
            return;
        }
        println!("Service                                  Scheduler  Flags");
        println!("  -> RealServer                          Forward  Weight  Thresholds");
        for s in services {
            print_service(s);
        }
    }

    pub fn service_detail(&self, s: &pb::Service) {
        if self.json {
            self.print_json(&serde_json::to_value(s).unwrap_or(Value::Null));
            return;
        }
        println!("service:      {}", s.key);
        println!("scheduler:    {}", s.scheduler);
        if !s.scheduler_flags.is_empty() {
            println!("flags:        {}", s.scheduler_flags.join(","));
        }
        if s.persistence_timeout > 0 {
            let prefix = s
                .persistence_prefix
                .map(|p| format!(" /{p}"))
                .unwrap_or_default();
            println!("persistence:  {} s{prefix}", s.persistence_timeout);
        }
        if s.one_packet {
            println!("one-packet:   yes");
        }
        if !s.vip_group.is_empty() {
            println!("vip group:    {}", s.vip_group);
        }
        println!("real servers: {}", s.reals.len());
        for r in &s.reals {
            println!("  -> {}", real_line(r));
        }
    }

    pub fn vip_groups(&self, groups: &[pb::VipGroup]) {
        if self.json {
            self.print_json(&serde_json::to_value(groups).unwrap_or(Value::Null));
            return;
        }
        let rows: Vec<Vec<String>> = groups
            .iter()
            .map(|g| {
                vec![
                    g.name.clone(),
                    g.interface.clone(),
                    if g.preferred_owner == 0 {
                        "-".into()
                    } else {
                        g.preferred_owner.to_string()
                    },
                    if g.preempt { "yes".into() } else { "no".into() },
                    g.vips.join(","),
                ]
            })
            .collect();
        table(
            &["NAME", "INTERFACE", "PREFERRED", "PREEMPT", "VIPS"],
            &rows,
        );
    }
}

fn print_service(s: &pb::Service) {
    let mut flags: Vec<String> = s.scheduler_flags.clone();
    if s.persistence_timeout > 0 {
        flags.push(format!("persistent {}", s.persistence_timeout));
        if let Some(p) = s.persistence_prefix {
            flags.push(format!("mask /{p}"));
        }
    }
    if s.one_packet {
        flags.push("ops".into());
    }
    println!(
        "{:<40} {:<10} {}",
        s.key,
        s.scheduler,
        flags.join(" ").trim_end()
    );
    for r in &s.reals {
        println!("  -> {}", real_line(r));
    }
}

fn real_line(r: &pb::RealServer) -> String {
    let forward = match r.forward.as_str() {
        "dr" => "Route",
        "nat" => "Masq",
        "tun" => "Tunnel",
        other => other,
    };
    let thresholds = if r.upper_threshold == 0 && r.lower_threshold == 0 {
        String::new()
    } else {
        format!("{}/{}", r.lower_threshold, r.upper_threshold)
    };
    format!(
        "{:<35} {:<8} {:<7} {}",
        r.address, forward, r.weight, thresholds
    )
    .trim_end()
    .to_string()
}

/// `MM:SS` as ipvsadm prints connection expiry.
fn expire(secs: u32) -> String {
    format!("{:02}:{:02}", secs / 60, secs % 60)
}

/// ipvsadm's way with large counters: exact below 10^8, else scaled with K/M/G/T.
fn count(n: u64) -> String {
    if n < 100_000_000 {
        return n.to_string();
    }
    let mut v = n;
    for unit in ["K", "M", "G", "T"] {
        v /= 1000;
        if v < 100_000_000 {
            return format!("{v}{unit}");
        }
    }
    format!("{v}T")
}

impl Out {
    /// Like `ipvsadm -Lnc`, with the entry's origin as a last column.
    pub fn connections(&self, r: &pb::ConnListReply) {
        if self.json {
            self.print_json(&serde_json::to_value(r).unwrap_or(Value::Null));
            return;
        }
        println!("IPVS connection entries");
        println!(
            "pro expire state       source             virtual            destination        origin"
        );
        for c in &r.connections {
            let state = if c.template { "NONE" } else { c.state.as_str() };
            println!(
                "{:<3} {:<6} {:<11} {:<18} {:<18} {:<18} {}",
                c.protocol.to_uppercase(),
                expire(c.expires_in_secs),
                state,
                c.client,
                c.virtual_addr,
                c.real,
                c.origin
            );
        }
        if r.truncated {
            eprintln!("(showing {} of {} entries)", r.connections.len(), r.total);
        }
    }

    /// `sync status`: the node's outgoing links, then its incoming ones.
    pub fn sync_status(&self, r: &pb::SyncStatusReply) {
        if self.json {
            self.print_json(&serde_json::to_value(r).unwrap_or(Value::Null));
            return;
        }
        if !r.enabled {
            println!(
                "node {}: connection sync is off (witness, no engine, or [sync] enabled = false)",
                r.node
            );
            return;
        }
        let ms = |v: i64| {
            if v < 0 {
                "never".to_string()
            } else {
                format!("{v}ms")
            }
        };
        println!("node {} sends to:", r.node);
        println!(
            "{:<6} {:<22} {:<10} {:<8} {:>10} {:>8} {:>9} {:>9} {:>8} {:>12} {:>12} {:>8} {:>8}",
            "peer",
            "address",
            "state",
            "current",
            "lag",
            "lag_ms",
            "p99",
            "last_ack",
            "resyncs",
            "sent",
            "acked",
            "retrans",
            "dropped"
        );
        for p in &r.peers {
            let current = if p.current {
                "yes"
            } else if p.behind {
                "BEHIND"
            } else {
                "no"
            };
            println!(
                "{:<6} {:<22} {:<10} {:<8} {:>10} {:>8} {:>9} {:>9} {:>8} {:>12} {:>12} {:>8} {:>8}",
                p.node,
                p.addr,
                p.state,
                current,
                p.lag_entries,
                p.lag_ms,
                format!("{:.1}ms", p.lag_p99_us as f64 / 1000.0),
                ms(p.last_ack_ms),
                p.resyncs,
                p.sent,
                p.acked,
                p.retransmitted,
                p.dropped
            );
        }
        println!("node {} receives from:", r.node);
        println!(
            "{:<6} {:<10} {:<9} {:>10} {:>12} {:>9} {:>8} {:>10}",
            "peer", "connected", "complete", "applied", "entries", "snapshots", "swept", "last"
        );
        for s in &r.sources {
            println!(
                "{:<6} {:<10} {:<9} {:>10} {:>12} {:>9} {:>8} {:>10}",
                s.node,
                if s.connected { "yes" } else { "no" },
                if s.complete { "yes" } else { "no" },
                s.applied_seq,
                s.entries,
                s.snapshots,
                s.swept,
                ms(s.last_batch_ms)
            );
        }
        if r.engine_dropped > 0 {
            println!(
                "changes dropped before the sync sender: {}",
                r.engine_dropped
            );
        }
    }

    /// Like `ipvsadm -Ln --stats`, then `--rate`.
    pub fn stats(&self, r: &pb::StatsReply) {
        if self.json {
            self.print_json(&serde_json::to_value(r).unwrap_or(Value::Null));
            return;
        }
        if !r.engine {
            println!("this node runs no forwarding engine");
        }
        println!(
            "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "Prot LocalAddress:Port", "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"
        );
        println!("  -> RemoteAddress:Port");
        for s in &r.services {
            println!(
                "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}",
                s.key,
                count(s.conns),
                count(s.in_packets),
                count(s.out_packets),
                count(s.in_bytes),
                count(s.out_bytes)
            );
            for d in &s.reals {
                println!(
                    "  -> {:<28} {:>8} {:>8} {:>8} {:>8} {:>8}",
                    d.address,
                    count(d.conns),
                    count(d.in_packets),
                    count(d.out_packets),
                    count(d.in_bytes),
                    count(d.out_bytes)
                );
            }
        }
        println!();
        println!(
            "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "Prot LocalAddress:Port", "CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"
        );
        for s in &r.services {
            println!(
                "{:<33} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0}",
                s.key, s.cps, s.in_pps, s.out_pps, s.in_bps, s.out_bps
            );
        }
        if !r.drops.is_empty() {
            println!();
            println!("dropped packets:");
            for d in &r.drops {
                println!("  {:<20} {}", d.reason, d.count);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_scale_like_ipvsadm() {
        assert_eq!(count(99_999_999), "99999999");
        assert_eq!(count(100_000_000), "100000K");
        assert_eq!(count(123_456_789_012), "123456M");
        assert_eq!(expire(899), "14:59");
        assert_eq!(expire(5), "00:05");
    }
}
