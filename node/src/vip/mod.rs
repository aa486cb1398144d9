//! VIP ownership: exactly one director answers for a VIP group at a time.
//!
//! # How
//! - The **assignment** (group → owner, with an epoch) is replicated state, written only by
//!   the Raft leader ([`plan`] decides; `Command::AssignVip` is compare-and-set on the epoch).
//! - A director **acts** as owner of a group only while it holds a **lease** that covers the
//!   group. It renews the lease with the leader every `renew` (a forwarded request); the
//!   leader first confirms with a quorum round that it still leads (a ReadIndex), then grants
//!   the groups its applied state assigns to that director. The director records the time
//!   `t0` at which it *sent* the request, and acts until `t0 + lease`.
//! - The leader hands a group to another director only when it knows the previous holder's
//!   lease is over: either `lease + margin` has passed since the last grant that covered the
//!   group (the holder is dead or cut off), or the holder renewed *again* after receiving a
//!   grant without the group (a graceful move: it has stopped answering).
//!
//! # Why never two owners
//! Let `G` be the leader's grant of group `g` to director `D` in response to a request `D`
//! sent at `t0`. The grant happens after `t0` (cause before effect), so `D` stops acting at
//! `t0 + lease` which is before `grant + lease`; the leader waits until `grant + lease +
//! margin` on its own clock, and `margin` covers the difference in clock *rates* over one
//! lease (timers here are monotonic; offsets do not matter). A leader change: a new leader
//! knows no grants, but every grant of the old leader was confirmed by a quorum round in the
//! old term, so before the new leader was elected; the new leader therefore waits `lease +
//! margin` after it took office before moving any group. The directors' own clocks decide
//! when they stop: a director that cannot reach the leader stops at `t0 + lease` by itself,
//! partitioned or not. Two more rules close the gaps: a director also stops when its applied
//! state no longer names it owner (the leader never grants what it has not committed), and
//! the check runs every `tick`, which `margin` also covers.
//!
//! Timer relations (checked by [`VipTimers::validate`]): `renew ≤ lease / 3` (a healthy owner
//! renews at least twice per lease, so one lost round trip does not drop the VIP), `margin ≥
//! tick + lease / 20` (5 % clock-rate tolerance plus the check period).

pub mod manager;
mod plan;
mod registry;

use std::collections::BTreeSet;
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

pub use plan::Decision;
pub use plan::GroupView;
pub use plan::plan;
pub use registry::Grant;
pub use registry::Registry;
use serde::Deserialize;
use serde::Serialize;

use crate::model::ClusterConfig;

/// How often each director checks its lease and acts on changes.
pub const TICK: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, PartialEq)]
pub struct VipTimers {
    pub lease: Duration,
    pub renew: Duration,
    pub margin: Duration,
    /// A returning preferred owner must have renewed for this long before a fail-back.
    pub preempt_delay: Duration,
    /// Gratuitous ARP / unsolicited NA: how many on taking over, how far apart, and how often
    /// to repeat them while owning (zero: never), as keepalived's garp_master_*.
    pub garp_repeat: u32,
    pub garp_interval: Duration,
    pub garp_refresh: Duration,
}

impl Default for VipTimers {
    fn default() -> Self {
        VipTimers {
            lease: Duration::from_millis(200),
            renew: Duration::from_millis(50),
            margin: Duration::from_millis(30),
            preempt_delay: Duration::from_secs(2),
            garp_repeat: 3,
            garp_interval: Duration::from_millis(50),
            garp_refresh: Duration::ZERO,
        }
    }
}

impl VipTimers {
    /// Refuses settings that break the argument in the module docs.
    pub fn validate(&self) -> Result<(), String> {
        if self.lease < Duration::from_millis(30) {
            return Err("vip.lease_ms must be at least 30".into());
        }
        if self.renew.is_zero() || self.renew * 3 > self.lease {
            return Err(format!(
                "vip.renew_ms ({}) must be > 0 and at most a third of vip.lease_ms ({})",
                self.renew.as_millis(),
                self.lease.as_millis()
            ));
        }
        let min_margin = TICK + self.lease / 20;
        if self.margin < min_margin {
            return Err(format!(
                "vip.margin_ms ({}) must be at least {} (the {} ms check period plus 5% of the lease)",
                self.margin.as_millis(),
                min_margin.as_millis(),
                TICK.as_millis()
            ));
        }
        if self.garp_repeat > 100 {
            return Err("vip.garp_repeat must be at most 100".into());
        }
        Ok(())
    }

    /// After this long without a grant, a group's holder has surely stopped.
    pub fn lapse(&self) -> Duration {
        self.lease + self.margin
    }
}

/// A director's role for one group, keepalived's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VipState {
    Master,
    Backup,
    Fault,
}

impl VipState {
    pub fn as_str(self) -> &'static str {
        match self {
            VipState::Master => "master",
            VipState::Backup => "backup",
            VipState::Fault => "fault",
        }
    }
}

/// The VIPs a director answers for: those of the groups it holds, plus VIPs of services in no
/// group (a single director needs no groups; with several directors, put VIPs in groups).
pub fn vips_for(config: &ClusterConfig, groups: &BTreeSet<String>) -> HashSet<IpAddr> {
    let mut owned = HashSet::new();
    let mut grouped = HashSet::new();
    for g in config.vip_groups.values() {
        grouped.extend(g.vips.iter().copied());
        if groups.contains(&g.name) {
            owned.extend(g.vips.iter().copied());
        }
    }
    for s in config.services.values() {
        if let Some(v) = s.key.vip()
            && !grouped.contains(&v)
        {
            owned.insert(v);
        }
    }
    owned
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_cluster_toml;

    #[test]
    fn held_groups_and_ungrouped_vips_are_answered() {
        let c = parse_cluster_toml(
            r#"
[[vip_group]]
name = "a"
vips = ["192.0.2.100"]
interface = "eth0"
[[vip_group]]
name = "b"
vips = ["2001:db8::100"]
interface = "eth0"
[[service]]
key = "tcp/192.0.2.100:80"
vip_group = "a"
[[service]]
key = "tcp/192.0.2.101:80"
"#,
        )
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = vips_for(&c, &BTreeSet::from(["a".to_string()]));
        assert_eq!(a, HashSet::from([ip("192.0.2.100"), ip("192.0.2.101")]));
        let none = vips_for(&c, &BTreeSet::new());
        assert_eq!(none, HashSet::from([ip("192.0.2.101")]));
    }

    #[test]
    fn unsafe_timers_are_refused() {
        assert!(VipTimers::default().validate().is_ok());
        let t = VipTimers {
            renew: Duration::from_millis(100),
            ..VipTimers::default()
        };
        assert!(t.validate().unwrap_err().contains("third"));
        let t = VipTimers {
            margin: Duration::from_millis(5),
            ..VipTimers::default()
        };
        assert!(t.validate().unwrap_err().contains("margin"));
    }
}
