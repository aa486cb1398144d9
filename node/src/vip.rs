//! Which VIPs this director answers for.
//!
//! Interim rule until Raft-fenced VIP ownership lands: a VIP group belongs to its preferred
//! owner; a group without one, and a service VIP in no group, belong to every director that
//! runs an engine (right for a single director, and for tests). Never to a witness.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::model::ClusterConfig;

pub fn owned_vips(config: &ClusterConfig, me: u64) -> HashSet<IpAddr> {
    let mut owned = HashSet::new();
    let mut grouped = HashSet::new();
    for g in config.vip_groups.values() {
        grouped.extend(g.vips.iter().copied());
        if g.preferred_owner.is_none_or(|o| o == me) {
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
    fn preferred_owner_decides_and_ungrouped_vips_are_everyones() {
        let c = parse_cluster_toml(
            r#"
[[vip_group]]
name = "a"
vips = ["192.0.2.100"]
interface = "eth0"
preferred_owner = 1
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
        let one = owned_vips(&c, 1);
        assert!(
            one.contains(&ip("192.0.2.100"))
                && one.contains(&ip("2001:db8::100"))
                && one.contains(&ip("192.0.2.101"))
        );
        let two = owned_vips(&c, 2);
        assert!(!two.contains(&ip("192.0.2.100")));
        assert!(two.contains(&ip("2001:db8::100")) && two.contains(&ip("192.0.2.101")));
    }
}
