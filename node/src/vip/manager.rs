//! The running parts of VIP ownership:
//! - on every node, the **assigner**: while this node leads, decides group ownership ([`plan`])
//!   and commits it;
//! - on every director, the **holder**: renews the lease, and acts on it — hands the engine the
//!   VIPs it may answer for, announces them when gained (gratuitous ARP / unsolicited NA), runs
//!   the notify hook, publishes events.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use openraft::ServerState;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::sync::broadcast;

use super::Decision;
use super::GroupView;
use super::TICK;
use super::VipState;
use super::plan;
use super::vips_for;
use crate::cluster::Cluster;
use crate::dataplane::engine::Engine;
use crate::model::Role;
use crate::state::Command;

/// A transition of one group on one node, or an ownership decision seen applied.
#[derive(Debug, Clone, Serialize)]
pub struct VipEvent {
    pub node: u64,
    pub group: String,
    /// "master" | "backup" | "fault" (this node's state changed), or "assigned" (the cluster's
    /// owner changed: `detail` says to whom).
    pub kind: String,
    pub old: String,
    pub new: String,
    pub detail: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// What this node knows about its groups, for status.
#[derive(Debug, Clone, Default)]
pub struct LocalView {
    pub held: BTreeSet<String>,
    pub lease_started: Option<Instant>,
    pub lease_until: Option<Instant>,
    /// Group → when its owner (as applied here) last changed.
    pub last_transition: BTreeMap<String, Instant>,
    /// Group → how often this node started and stopped answering for it (for metrics).
    pub transitions: BTreeMap<String, Transitions>,
}

/// Counts of one group's transitions on this node since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transitions {
    /// Became master.
    pub acquired: u64,
    /// Stopped being master (to backup or fault).
    pub released: u64,
}

/// Shared between the holder, the API and the daemon.
#[derive(Clone)]
pub struct VipHandle {
    pub view: Arc<Mutex<LocalView>>,
    pub events: broadcast::Sender<VipEvent>,
}

impl Default for VipHandle {
    fn default() -> Self {
        VipHandle {
            view: Arc::default(),
            events: broadcast::channel(256).0,
        }
    }
}

impl VipHandle {
    pub fn view(&self) -> LocalView {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Leader side: every tick, while this node leads, plan each group and act.
pub fn spawn_assigner(cluster: Cluster) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_placement = Instant::now() - Duration::from_secs(3);
        loop {
            tick.tick().await;
            let m = cluster.metrics();
            if m.state == ServerState::Shutdown {
                return;
            }
            if m.state != ServerState::Leader {
                continue;
            }
            let term = m.current_term;
            if last_placement.elapsed() > Duration::from_secs(3) {
                last_placement = Instant::now();
                place_leadership(&cluster, &m).await;
            }
            let reg = cluster.vip_registry().clone();
            let now = Instant::now();
            let timers = reg.timers().clone();
            let views: Vec<GroupView> = cluster.with_applied(|a| {
                let members = a.members();
                let voters: BTreeSet<u64> = a.membership.membership().voter_ids().collect();
                let directors: BTreeSet<u64> = members
                    .iter()
                    .filter(|(id, n)| n.role == Role::Director && voters.contains(id))
                    .map(|(id, _)| *id)
                    .collect();
                let alive: BTreeSet<u64> = directors
                    .iter()
                    .copied()
                    .filter(|d| reg.alive(term, *d, now))
                    .collect();
                let settled = alive
                    .iter()
                    .copied()
                    .filter(|d| reg.healthy_for(term, *d, now, timers.preempt_delay))
                    .collect();
                a.state
                    .config
                    .vip_groups
                    .values()
                    .map(|g| GroupView {
                        name: g.name.clone(),
                        assigned: a.state.owner(&g.name),
                        preferred: g.preferred_owner,
                        preempt: g.preempt,
                        directors: directors.clone(),
                        alive: alive.clone(),
                        settled: BTreeSet::clone(&settled),
                        lapsed: reg.lapsed(term, &g.name, now),
                        handoff: reg.handoff(term, &g.name, now),
                        sync_current: a
                            .state
                            .owner(&g.name)
                            .owner
                            .and_then(|o| reg.sync_current(term, o, now)),
                    })
                    .collect()
            });
            for v in views {
                match plan(&v) {
                    Decision::Keep => {}
                    Decision::BeginHandoff { from, to } => {
                        tracing::info!(group = %v.name, from, ?to, "vip: handing over (fail-back)");
                        reg.begin_handoff(term, &v.name, from, to, now);
                    }
                    Decision::Assign { owner } => {
                        let cmd = Command::AssignVip {
                            group: v.name.clone(),
                            owner,
                            epoch: v.assigned.epoch,
                        };
                        match cluster.write(cmd).await {
                            Ok(_) => {
                                tracing::info!(group = %v.name, from = ?v.assigned.owner, to = ?owner, "vip: assigned");
                                reg.assigned(term, &v.name, Instant::now());
                                reg.end_handoff(term, &v.name, Instant::now());
                            }
                            Err(e) => {
                                tracing::warn!(group = %v.name, "vip: assignment not committed: {e}")
                            }
                        }
                    }
                }
            }
        }
    });
}

/// A director that leads and dies costs an election before its VIPs can move; a witness that
/// leads costs nothing. So a leading director hands leadership to an up-to-date witness.
async fn place_leadership(cluster: &Cluster, m: &crate::raft::RaftMetrics) {
    let me = cluster.id();
    let members = cluster.members();
    if members
        .iter()
        .any(|(id, n, _)| *id == me && n.role == Role::Witness)
    {
        return;
    }
    let last = m.last_log_index.unwrap_or(0);
    let witness = members.iter().find(|(id, n, voter)| {
        *voter
            && n.role == Role::Witness
            && m.replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .is_some_and(|l| l.index + 1 >= last)
    });
    if let Some((w, _, _)) = witness {
        tracing::info!(
            to = w,
            "handing Raft leadership to the witness (faster VIP takeover)"
        );
        if let Err(e) = cluster.transfer_leader(Some(*w)).await {
            tracing::debug!("leadership placement: {e}");
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Lease {
    until: Option<Instant>,
    started: Option<Instant>,
    groups: BTreeSet<String>,
}

/// Director side: renew the lease; act on it. A witness (`director == false`) never renews,
/// so it never holds anything; it still follows assignments for status and events.
pub fn spawn_holder(
    cluster: Cluster,
    engine: Option<Arc<Engine>>,
    handle: VipHandle,
    timers: super::VipTimers,
    notify: Option<PathBuf>,
    director: bool,
) {
    let lease = Arc::new(Mutex::new(Lease::default()));
    let renew_now = Arc::new(Notify::new());
    // Renewals: one at a time, every `renew`, or at once after a grant that took groups away
    // (so the leader learns quickly that they were dropped).
    if director {
        let (cluster, lease, renew_now) = (cluster.clone(), lease.clone(), renew_now.clone());
        let timers = timers.clone();
        tokio::spawn(async move {
            loop {
                let t0 = Instant::now();
                let res = tokio::time::timeout(timers.lease, cluster.renew_lease()).await;
                if cluster.metrics().state == ServerState::Shutdown {
                    return;
                }
                match res {
                    Ok(Ok(grant)) => {
                        let shrank = {
                            let mut l = lease.lock().unwrap_or_else(|e| e.into_inner());
                            let shrank = !l.groups.is_subset(&grant.groups)
                                && l.until.is_some_and(|u| Instant::now() < u);
                            l.until =
                                Some(t0 + Duration::from_millis(grant.lease_ms).min(timers.lease));
                            l.started = Some(t0);
                            l.groups = grant.groups;
                            shrank
                        };
                        if shrank {
                            // Give the holder a tick to stop answering, then confirm.
                            tokio::time::sleep(TICK * 2).await;
                            continue;
                        }
                    }
                    Ok(Err(e)) => tracing::debug!("vip lease renewal: {e}"),
                    Err(_) => tracing::debug!("vip lease renewal timed out"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(timers.renew.saturating_sub(t0.elapsed())) => {}
                    _ = renew_now.notified() => {}
                }
            }
        });
    }
    // Acting: every tick, compare what may be held with what is held.
    tokio::spawn(async move {
        let me = cluster.id();
        let mut held: BTreeSet<String> = BTreeSet::new();
        // Groups given up recently: their VIPs are still forwarded (not answered for) until the
        // new owner's announcements have moved the clients, so a planned move loses nothing.
        let mut draining: BTreeMap<String, Instant> = BTreeMap::new();
        let mut forwarding: BTreeSet<String> = BTreeSet::new();
        let mut owners_seen: BTreeMap<String, Option<u64>> = BTreeMap::new();
        let mut applied_seen = u64::MAX;
        let mut config = Arc::new(crate::model::ClusterConfig::default());
        let mut last_refresh = Instant::now();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if cluster.metrics().state == ServerState::Shutdown {
                return;
            }
            let now = Instant::now();
            let l = lease.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let valid = l.until.is_some_and(|u| now < u);
            // The config is copied only when something was applied since the last copy.
            let (fresh, owners, applied) = cluster.with_applied(|a| {
                (
                    (a.applied_index() != applied_seen).then(|| a.state.config.clone()),
                    a.state
                        .owners
                        .iter()
                        .map(|(g, o)| (g.clone(), o.owner))
                        .collect::<BTreeMap<_, _>>(),
                    a.applied_index(),
                )
            });
            if let Some(c) = fresh {
                config = Arc::new(c);
            }
            // Held: granted by a live lease AND named owner in the applied state.
            let may: BTreeSet<String> = if valid {
                l.groups
                    .iter()
                    .filter(|g| owners.get(*g).copied().flatten() == Some(me))
                    .cloned()
                    .collect()
            } else {
                BTreeSet::new()
            };
            // Ownership decisions as applied here: events + transition times.
            for (g, o) in &owners {
                if owners_seen.get(g) != Some(o) {
                    let old = owners_seen.get(g).copied().flatten();
                    handle
                        .view
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .last_transition
                        .insert(g.clone(), now);
                    if owners_seen.contains_key(g) || o.is_some() {
                        let name =
                            |o: Option<u64>| o.map_or("none".to_string(), |o| format!("node {o}"));
                        let _ = handle.events.send(VipEvent {
                            node: me,
                            group: g.clone(),
                            kind: "assigned".into(),
                            old: name(old),
                            new: name(*o),
                            detail: format!("owner {} -> {}", name(old), name(*o)),
                            at_ms: now_ms(),
                        });
                    }
                }
            }
            owners_seen = owners.clone();
            let changed = may != held;
            for g in held.difference(&may) {
                draining.insert(g.clone(), now + timers.lapse());
            }
            draining.retain(|g, until| now < *until && !may.contains(g));
            let fwd: BTreeSet<String> = may
                .union(&draining.keys().cloned().collect())
                .cloned()
                .collect();
            if changed || fwd != forwarding || applied != applied_seen {
                applied_seen = applied;
                forwarding = fwd;
                if let Some(engine) = &engine {
                    let answering = vips_for(&config, &may);
                    let forwarded = vips_for(&config, &forwarding);
                    let engine = engine.clone();
                    let cfg = Arc::clone(&config);
                    // One atomic swap: stops answering for lost groups, starts for gained ones.
                    let _ = tokio::task::spawn_blocking(move || {
                        engine.apply(&cfg, &forwarded, &answering)
                    })
                    .await;
                }
            }
            if changed {
                let gained: Vec<String> = may.difference(&held).cloned().collect();
                let lost: Vec<String> = held.difference(&may).cloned().collect();
                for g in &lost {
                    let new = if valid {
                        VipState::Backup
                    } else {
                        VipState::Fault
                    };
                    tracing::info!(group = %g, state = new.as_str(), "vip: stopped answering");
                    transition(&handle, me, g, VipState::Master, new, notify.as_ref());
                }
                for g in &gained {
                    tracing::info!(group = %g, "vip: answering");
                    transition(
                        &handle,
                        me,
                        g,
                        VipState::Backup,
                        VipState::Master,
                        notify.as_ref(),
                    );
                }
                if !gained.is_empty()
                    && let Some(engine) = &engine
                {
                    announce(
                        engine.clone(),
                        &config,
                        gained,
                        lease.clone(),
                        timers.clone(),
                    );
                }
                if !lost.is_empty() {
                    renew_now.notify_one();
                }
                held = may.clone();
            }
            if timers.garp_refresh > Duration::ZERO && now - last_refresh >= timers.garp_refresh {
                last_refresh = now;
                if let Some(engine) = &engine {
                    let vips: Vec<_> = vips_for(&config, &held).into_iter().collect();
                    engine.announce(&vips);
                }
            }
            let mut v = handle.view.lock().unwrap_or_else(|e| e.into_inner());
            v.held = held.clone();
            v.lease_until = l.until;
            v.lease_started = l.started;
        }
    });
}

/// Sends the announcements for newly held groups: `garp_repeat` rounds, `garp_interval`
/// apart, each only while the groups are still held.
fn announce(
    engine: Arc<Engine>,
    config: &crate::model::ClusterConfig,
    groups: Vec<String>,
    lease: Arc<Mutex<Lease>>,
    timers: super::VipTimers,
) {
    let per_group: Vec<(String, Vec<std::net::IpAddr>)> = groups
        .iter()
        .filter_map(|g| {
            config
                .vip_groups
                .get(g)
                .map(|vg| (g.clone(), vg.vips.iter().copied().collect()))
        })
        .collect();
    tokio::spawn(async move {
        for round in 0..timers.garp_repeat.max(1) {
            if round > 0 {
                tokio::time::sleep(timers.garp_interval).await;
            }
            let l = lease.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let valid = l.until.is_some_and(|u| Instant::now() < u);
            let vips: Vec<std::net::IpAddr> = per_group
                .iter()
                .filter(|(g, _)| valid && l.groups.contains(g))
                .flat_map(|(_, v)| v.iter().copied())
                .collect();
            if vips.is_empty() {
                return;
            }
            let e = engine.clone();
            let _ = tokio::task::spawn_blocking(move || e.announce(&vips)).await;
        }
    });
}

fn transition(
    handle: &VipHandle,
    me: u64,
    group: &str,
    old: VipState,
    new: VipState,
    notify: Option<&PathBuf>,
) {
    {
        let mut v = handle.view.lock().unwrap_or_else(|e| e.into_inner());
        let t = v.transitions.entry(group.to_string()).or_default();
        if new == VipState::Master {
            t.acquired += 1;
        } else if old == VipState::Master {
            t.released += 1;
        }
    }
    let _ = handle.events.send(VipEvent {
        node: me,
        group: group.to_string(),
        kind: new.as_str().into(),
        old: old.as_str().into(),
        new: new.as_str().into(),
        detail: format!("node {me}: {} -> {}", old.as_str(), new.as_str()),
        at_ms: now_ms(),
    });
    if let Some(cmd) = notify {
        let mut c = tokio::process::Command::new(cmd);
        c.args([group, old.as_str(), new.as_str()])
            .kill_on_drop(false);
        match c.spawn() {
            Ok(mut child) => {
                let cmd = cmd.clone();
                tokio::spawn(async move {
                    match child.wait().await {
                        Ok(st) if !st.success() => {
                            tracing::warn!(cmd = %cmd.display(), "notify hook exited {st}")
                        }
                        Err(e) => tracing::warn!(cmd = %cmd.display(), "notify hook: {e}"),
                        _ => {}
                    }
                });
            }
            Err(e) => tracing::warn!(cmd = %cmd.display(), "notify hook: {e}"),
        }
    }
}
