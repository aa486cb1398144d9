//! The leader's record of the leases it granted: who renewed when, until when each group may
//! still be held, and which groups are being handed over. Lives only in the leader's memory;
//! a new leader starts empty and waits a full lapse before moving anything (see the module
//! docs of `vip`).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;

use super::VipTimers;
use crate::state::ClusterState;

/// What a director receives when it renews.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Groups it may answer for until `request time + lease`.
    pub groups: BTreeSet<String>,
    /// The lease length the leader granted, in milliseconds.
    pub lease_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct NodeLease {
    last_grant: Instant,
    /// Counts grants to this node.
    seq: u64,
    /// First time this node renewed in the current run of renewals (for the preempt delay).
    healthy_since: Instant,
}

#[derive(Debug, Clone, Copy)]
struct GroupLease {
    holder: u64,
    /// The holder has surely stopped by then, on the leader's clock.
    until: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handoff {
    pub from: u64,
    pub to: Option<u64>,
    /// `from`'s grant sequence number of the first grant without the group.
    pub(crate) revoked_seq: Option<u64>,
    pub released: bool,
}

#[derive(Debug)]
struct Inner {
    term: u64,
    leader_since: Instant,
    nodes: BTreeMap<u64, NodeLease>,
    groups: BTreeMap<String, GroupLease>,
    handoffs: BTreeMap<String, Handoff>,
    /// Per director, the peers its sync stream last said were current.
    sync: BTreeMap<u64, BTreeSet<u64>>,
}

#[derive(Debug)]
pub struct Registry {
    timers: VipTimers,
    inner: Mutex<Inner>,
}

impl Registry {
    pub fn new(timers: VipTimers) -> Registry {
        Registry {
            timers,
            inner: Mutex::new(Inner {
                term: 0,
                leader_since: Instant::now(),
                nodes: BTreeMap::new(),
                groups: BTreeMap::new(),
                handoffs: BTreeMap::new(),
                sync: BTreeMap::new(),
            }),
        }
    }

    pub fn timers(&self) -> &VipTimers {
        &self.timers
    }

    fn lock(&self, term: u64, now: Instant) -> std::sync::MutexGuard<'_, Inner> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.term != term {
            // A new term of leadership here: nothing granted before is known.
            g.term = term;
            g.leader_since = now;
            g.nodes.clear();
            g.groups.clear();
            g.handoffs.clear();
            g.sync.clear();
        }
        g
    }

    /// Records which peers `node`'s connection sync keeps current (sent with its renewals).
    pub fn report_sync(&self, term: u64, node: u64, current: BTreeSet<u64>, now: Instant) {
        self.lock(term, now).sync.insert(node, current);
    }

    /// What `node` last reported of its sync peers (None: it never reported this term, e.g.
    /// it does not sync); kept after it dies, which is when it matters.
    pub fn sync_current(&self, term: u64, node: u64, now: Instant) -> Option<BTreeSet<u64>> {
        self.lock(term, now).sync.get(&node).cloned()
    }

    /// Grants `node` its groups. Call only after confirming leadership with a quorum.
    pub fn grant(&self, term: u64, node: u64, state: &ClusterState, now: Instant) -> Grant {
        let mut g = self.lock(term, now);
        let lease = g.nodes.entry(node).or_insert(NodeLease {
            last_grant: now,
            seq: 0,
            healthy_since: now,
        });
        if now.duration_since(lease.last_grant) > self.timers.lease {
            lease.healthy_since = now;
        }
        lease.seq += 1;
        lease.last_grant = now;
        let seq = lease.seq;
        let mut groups = BTreeSet::new();
        for (name, owner) in &state.owners {
            if owner.owner != Some(node) || !state.config.vip_groups.contains_key(name) {
                continue;
            }
            match g.handoffs.get_mut(name) {
                Some(h) if h.from == node => {
                    // Withheld: once this node renews after a grant without it, it has stopped.
                    match h.revoked_seq {
                        None => h.revoked_seq = Some(seq),
                        Some(r) if seq > r => h.released = true,
                        Some(_) => {}
                    }
                    continue;
                }
                _ => {}
            }
            groups.insert(name.clone());
        }
        let until = now + self.timers.lapse();
        for name in &groups {
            g.groups.insert(
                name.clone(),
                GroupLease {
                    holder: node,
                    until,
                },
            );
        }
        Grant {
            groups,
            lease_ms: self.timers.lease.as_millis() as u64,
        }
    }

    /// Whether `node` renewed within the last lease (it is up and reaches the leader).
    pub fn alive(&self, term: u64, node: u64, now: Instant) -> bool {
        let g = self.lock(term, now);
        g.nodes
            .get(&node)
            .is_some_and(|l| now.duration_since(l.last_grant) <= self.timers.lease)
    }

    /// Whether `node` has been renewing steadily for at least `d`.
    pub fn healthy_for(&self, term: u64, node: u64, now: Instant, d: std::time::Duration) -> bool {
        let g = self.lock(term, now);
        g.nodes.get(&node).is_some_and(|l| {
            now.duration_since(l.last_grant) <= self.timers.lease
                && now.duration_since(l.healthy_since) >= d
        })
    }

    /// Whether no director can still be acting on `group` under a lease from this leader or
    /// an earlier one.
    pub fn lapsed(&self, term: u64, group: &str, now: Instant) -> bool {
        let g = self.lock(term, now);
        if now < g.leader_since + self.timers.lapse() {
            return false;
        }
        g.groups.get(group).is_none_or(|l| now >= l.until)
    }

    /// Milliseconds since `node` last renewed, if it has under this leader.
    pub fn last_grant_age_ms(&self, term: u64, node: u64, now: Instant) -> Option<u64> {
        let g = self.lock(term, now);
        g.nodes
            .get(&node)
            .map(|l| now.duration_since(l.last_grant).as_millis() as u64)
    }

    /// Starts moving `group` away from `from`: its next grants leave the group out.
    pub fn begin_handoff(&self, term: u64, group: &str, from: u64, to: Option<u64>, now: Instant) {
        let mut g = self.lock(term, now);
        let keep = g
            .handoffs
            .get(group)
            .is_some_and(|h| h.from == from && h.to == to);
        if !keep {
            g.handoffs.insert(
                group.to_string(),
                Handoff {
                    from,
                    to,
                    revoked_seq: None,
                    released: false,
                },
            );
        }
    }

    pub fn handoff(&self, term: u64, group: &str, now: Instant) -> Option<Handoff> {
        self.lock(term, now).handoffs.get(group).copied()
    }

    pub fn end_handoff(&self, term: u64, group: &str, now: Instant) {
        self.lock(term, now).handoffs.remove(group);
    }

    /// Records that `group` now belongs to `holder` from this moment on (after a commit), so
    /// the lapse clock of the previous holder does not apply to it.
    pub fn assigned(&self, term: u64, group: &str, now: Instant) {
        let mut g = self.lock(term, now);
        g.groups.remove(group);
    }

    /// Holder of the group's latest grant, with its remaining validity.
    pub fn holder(&self, term: u64, group: &str, now: Instant) -> Option<(u64, bool)> {
        let g = self.lock(term, now);
        g.groups.get(group).map(|l| (l.holder, now < l.until))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::parse_cluster_toml;
    use crate::state::VipOwner;

    fn state(owner: u64) -> ClusterState {
        let config = parse_cluster_toml(
            "[[vip_group]]\nname = \"g\"\nvips = [\"192.0.2.100\"]\ninterface = \"eth0\"\n",
        )
        .unwrap();
        let mut s = ClusterState::new(config);
        s.owners.insert(
            "g".into(),
            VipOwner {
                owner: Some(owner),
                epoch: 1,
            },
        );
        s
    }

    #[test]
    fn a_new_leader_waits_a_full_lapse_and_grants_push_the_lapse_out() {
        let r = Registry::new(VipTimers::default());
        let t0 = Instant::now();
        let lapse = VipTimers::default().lapse();
        assert!(!r.lapsed(1, "g", t0), "nothing known: wait");
        assert!(r.lapsed(1, "g", t0 + lapse));
        let g = r.grant(1, 2, &state(2), t0 + lapse);
        assert_eq!(g.groups, BTreeSet::from(["g".to_string()]));
        assert!(!r.lapsed(1, "g", t0 + lapse + Duration::from_millis(100)));
        assert!(r.lapsed(1, "g", t0 + lapse + lapse));
        // Another term: forget everything, wait again.
        assert!(!r.lapsed(2, "g", t0 + lapse * 3));
    }

    #[test]
    fn handoff_is_released_by_the_renewal_after_a_grant_without_the_group() {
        let r = Registry::new(VipTimers::default());
        let t = Instant::now();
        let s = state(1);
        assert!(!r.grant(1, 1, &s, t).groups.is_empty());
        r.begin_handoff(1, "g", 1, Some(2), t);
        assert!(r.grant(1, 1, &s, t).groups.is_empty(), "withheld");
        assert!(!r.handoff(1, "g", t).unwrap().released, "not yet confirmed");
        assert!(r.grant(1, 1, &s, t).groups.is_empty());
        assert!(
            r.handoff(1, "g", t).unwrap().released,
            "renewed after the shrunk grant"
        );
    }

    #[test]
    fn liveness_follows_renewals() {
        let r = Registry::new(VipTimers::default());
        let t = Instant::now();
        assert!(!r.alive(1, 3, t));
        r.grant(1, 3, &state(1), t);
        assert!(r.alive(1, 3, t + Duration::from_millis(100)));
        assert!(!r.alive(1, 3, t + Duration::from_millis(400)));
        assert!(!r.healthy_for(1, 3, t, Duration::from_secs(1)));
        r.grant(1, 3, &state(1), t + Duration::from_millis(1100));
        assert!(
            !r.healthy_for(
                1,
                3,
                t + Duration::from_millis(1100),
                Duration::from_secs(1)
            ),
            "gap reset"
        );
    }
}
