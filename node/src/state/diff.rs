//! Differences between two configurations as a list of [`Change`]s.
//!
//! The list is complete: applying each change to the old configuration (taking values from
//! the new one) yields the new configuration, which is what the forwarding path reconciles by.
//! Order: VIP groups added or modified (by name), then services by key, each followed by its
//! real servers by address, then VIP groups removed. So a reader (or a consumer applying the
//! changes in order) meets a group before the services that use it, and loses it after them.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::model::{ClusterConfig, RealServer, Service, ServiceKey};

use super::change::Change;

pub fn diff(old: &ClusterConfig, new: &ClusterConfig) -> Vec<Change> {
    let mut out = Vec::new();
    let mut removed_groups = Vec::new();
    merge(&old.vip_groups, &new.vip_groups, |name, o, n| {
        match (o, n) {
            (Some(_), None) => removed_groups.push(Change::vip_group_removed(name)),
            (None, Some(n)) => out.push(Change::vip_group_added(n)),
            (Some(o), Some(n)) => out.extend(Change::vip_group_modified(o, n)),
            (None, None) => {}
        }
    });
    merge(&old.services, &new.services, |_, o, n| match (o, n) {
        (Some(o), None) => out.push(Change::service_removed(o)),
        (None, Some(n)) => service_added(n, &mut out),
        (Some(o), Some(n)) => diff_service(o, n, &mut out),
        (None, None) => {}
    });
    out.append(&mut removed_groups);
    out
}

/// The changes for adding a service: the service, then each real server.
pub(crate) fn service_added(s: &Service, out: &mut Vec<Change>) {
    out.push(Change::service_added(s));
    out.extend(s.reals.values().map(|r| Change::real_added(&s.key, r)));
}

/// A service whose key stays: its settings, then its real servers one by one.
pub(crate) fn diff_service(old: &Service, new: &Service, out: &mut Vec<Change>) {
    out.extend(Change::service_modified(old, new));
    diff_reals(&new.key, &old.reals, &new.reals, out);
}

pub(crate) fn diff_reals(
    service: &ServiceKey,
    old: &BTreeMap<SocketAddr, RealServer>,
    new: &BTreeMap<SocketAddr, RealServer>,
    out: &mut Vec<Change>,
) {
    merge(old, new, |addr, o, n| match (o, n) {
        (Some(_), None) => out.push(Change::real_removed(service, addr)),
        (None, Some(n)) => out.push(Change::real_added(service, n)),
        (Some(o), Some(n)) => out.extend(Change::real_modified(service, o, n)),
        (None, None) => {}
    });
}

/// Walks two sorted maps together in key order, calling `f` once per key in either.
fn merge<K: Ord, V>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    mut f: impl FnMut(&K, Option<&V>, Option<&V>),
) {
    let mut a = old.iter().peekable();
    let mut b = new.iter().peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => return,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        match order {
            Ordering::Less => {
                if let Some((k, v)) = a.next() {
                    f(k, Some(v), None);
                }
            }
            Ordering::Greater => {
                if let Some((k, v)) = b.next() {
                    f(k, None, Some(v));
                }
            }
            Ordering::Equal => {
                if let (Some((k, va)), Some((_, vb))) = (a.next(), b.next()) {
                    f(k, Some(va), Some(vb));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::{IpAddr, SocketAddr};

    use super::*;
    use crate::model::testutil::*;
    use crate::model::{Forward, Persistence, PortRange, Protocol, SchedFlag, Scheduler, VipGroup};
    use crate::state::change::{ChangeOp, ObjectKind, parse_real_key};

    /// xorshift64*: a tiny deterministic generator, so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len() as u64) as usize]
        }
    }

    const VIPS: [&str; 4] = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"];
    const REALS: [&str; 5] = [
        "198.51.100.1:80",
        "198.51.100.2:80",
        "198.51.100.3:0",
        "[2001:db8:1::1]:80",
        "[2001:db8:1::2]:0",
    ];

    /// A random config from small pools, so that two of them share many objects. Diffs do
    /// not need valid configs, so the generator does not bother with the rules.
    fn gen_config(rng: &mut Rng) -> ClusterConfig {
        let mut cfg = ClusterConfig::default();
        for name in ["a", "b", "c"] {
            if rng.chance(60) {
                let vips: BTreeSet<IpAddr> = (0..=rng.below(3))
                    .map(|_| rng.pick(&VIPS).parse().unwrap())
                    .collect();
                let g = VipGroup {
                    interface: rng.pick(&["eth0", "eth1"]).to_string(),
                    preferred_owner: *rng.pick(&[None, Some(1), Some(2)]),
                    preempt: rng.chance(50),
                    vips,
                    ..group(name, &[])
                };
                cfg.vip_groups.insert(name.to_owned(), g);
            }
        }
        for _ in 0..rng.below(8) {
            let vip: IpAddr = rng.pick(&VIPS).parse().unwrap();
            let protocol = *rng.pick(&Protocol::ALL);
            let key = match rng.below(4) {
                0 => ServiceKey::Fwmark {
                    mark: 1 + rng.below(3) as u32,
                    family: *rng.pick(&[crate::model::Family::V4, crate::model::Family::V6]),
                },
                1 => ServiceKey::port_group(
                    protocol,
                    vip,
                    [PortRange::new(8000, 8000 + rng.below(3) as u16 + 1)],
                )
                .unwrap(),
                _ => ServiceKey::Addr {
                    protocol,
                    vip,
                    port: *rng.pick(&[0, 80, 443]),
                },
            };
            let mut s = Service::new(key);
            s.scheduler = *rng.pick(&[Scheduler::Wlc, Scheduler::Rr, Scheduler::Sh]);
            if rng.chance(30) {
                s.flags.insert(*rng.pick(&SchedFlag::ALL));
            }
            s.persistence = *rng.pick(&[
                None,
                Some(Persistence {
                    timeout_s: 300,
                    prefix: 24,
                }),
                Some(Persistence {
                    timeout_s: 60,
                    prefix: 24,
                }),
            ]);
            s.one_packet = rng.chance(20);
            s.vip_group = rng.pick(&[None, Some("a"), Some("b")]).map(str::to_owned);
            for _ in 0..rng.below(4) {
                let addr = *rng.pick(&REALS);
                let mut r = real(addr);
                r.weight = *rng.pick(&[0, 1, 3]);
                r.forward = *rng.pick(&[Forward::Dr, Forward::Nat, Forward::Tun]);
                r.upper_threshold = *rng.pick(&[0, 100]);
                r.lower_threshold = *rng.pick(&[0, 50]);
                s.reals.insert(r.addr, r);
            }
            cfg.services.insert(s.key.clone(), s);
        }
        cfg
    }

    /// Applies `changes` to `old` strictly (an add must be new, a remove or modify must find
    /// its object, a modify must change something), taking values from `new`.
    fn replay(old: &ClusterConfig, changes: &[Change], new: &ClusterConfig) -> ClusterConfig {
        let mut cur = old.clone();
        for c in changes {
            match (c.object, c.op) {
                (ObjectKind::VipGroup, ChangeOp::Add) => {
                    assert!(!cur.vip_groups.contains_key(&c.key), "{c}");
                    cur.vip_groups
                        .insert(c.key.clone(), new.vip_groups[&c.key].clone());
                }
                (ObjectKind::VipGroup, ChangeOp::Modify) => {
                    assert_ne!(cur.vip_groups[&c.key], new.vip_groups[&c.key], "{c}");
                    cur.vip_groups
                        .insert(c.key.clone(), new.vip_groups[&c.key].clone());
                }
                (ObjectKind::VipGroup, ChangeOp::Remove) => {
                    assert!(cur.vip_groups.remove(&c.key).is_some(), "{c}");
                }
                (ObjectKind::Service, op) => {
                    let key: ServiceKey = c.key.parse().unwrap();
                    match op {
                        ChangeOp::Add => {
                            assert!(!cur.services.contains_key(&key), "{c}");
                            cur.services
                                .insert(key.clone(), new.services[&key].settings());
                        }
                        ChangeOp::Modify => {
                            let s = cur.services.get_mut(&key).unwrap();
                            assert!(!s.settings_eq(&new.services[&key]), "{c}");
                            let reals = std::mem::take(&mut s.reals);
                            *s = Service {
                                reals,
                                ..new.services[&key].settings()
                            };
                        }
                        ChangeOp::Remove => assert!(cur.services.remove(&key).is_some(), "{c}"),
                    }
                }
                (ObjectKind::Real, op) => {
                    let (key, addr) = parse_real_key(&c.key).unwrap();
                    let reals = &mut cur.services.get_mut(&key).unwrap().reals;
                    let wanted = new.services.get(&key).and_then(|s| s.reals.get(&addr));
                    match op {
                        ChangeOp::Add => {
                            assert!(reals.insert(addr, wanted.unwrap().clone()).is_none(), "{c}");
                        }
                        ChangeOp::Modify => {
                            let old = reals.insert(addr, wanted.unwrap().clone());
                            assert_ne!(old.as_ref(), wanted, "{c}");
                        }
                        ChangeOp::Remove => assert!(reals.remove(&addr).is_some(), "{c}"),
                    }
                }
                (ObjectKind::Member, _) => panic!("diff made a member change: {c}"),
            }
            if c.op == ChangeOp::Modify {
                assert!(!c.detail.is_empty(), "{c}");
            }
        }
        cur
    }

    #[test]
    fn diffs_are_complete() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut seen_ops = BTreeSet::new();
        for _ in 0..300 {
            let a = gen_config(&mut rng);
            let b = gen_config(&mut rng);
            for (old, new) in [(&a, &b), (&b, &a), (&a, &ClusterConfig::default())] {
                let changes = diff(old, new);
                assert_eq!(replay(old, &changes, new), *new, "{changes:#?}");
                assert_eq!(changes, diff(old, new), "diff is not deterministic");
                seen_ops.extend(changes.iter().map(|c| (c.object, c.op)));
            }
            assert!(diff(&a, &a).is_empty());
        }
        // The generator reached every kind of change.
        assert_eq!(seen_ops.len(), 9, "{seen_ops:?}");
    }

    #[test]
    fn rich_config_from_and_to_nothing() {
        let cfg = rich_config();
        let added = diff(&ClusterConfig::default(), &cfg);
        assert_eq!(replay(&ClusterConfig::default(), &added, &cfg), cfg);
        let reals: usize = cfg.services.values().map(|s| s.reals.len()).sum();
        assert_eq!(
            added.len(),
            cfg.vip_groups.len() + cfg.services.len() + reals
        );
        // Removing everything needs no per-real lines: a service remove takes its reals along.
        let removed = diff(&cfg, &ClusterConfig::default());
        assert_eq!(removed.len(), cfg.vip_groups.len() + cfg.services.len());
        assert!(removed.iter().all(|c| c.op == ChangeOp::Remove));
    }

    #[test]
    fn only_what_changed() {
        let old = rich_config();
        let mut new = old.clone();
        let k = key("tcp/192.0.2.100:80");
        let a: SocketAddr = "198.51.100.10:80".parse().unwrap();
        new.services
            .get_mut(&k)
            .unwrap()
            .reals
            .get_mut(&a)
            .unwrap()
            .weight = 3;
        let changes = diff(&old, &new);
        let text: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            ["~ real tcp/192.0.2.100:80 198.51.100.10:80: weight 1 -> 3"]
        );

        let mut new = old.clone();
        let s = new.services.get_mut(&k).unwrap();
        s.scheduler = Scheduler::Wrr;
        s.persistence = Some(Persistence {
            timeout_s: 300,
            prefix: 24,
        });
        let r = s.reals.get_mut(&a).unwrap();
        r.forward = Forward::Tun;
        r.upper_threshold = 10;
        let g = new.vip_groups.get_mut("web").unwrap();
        g.vips.insert("192.0.2.101".parse().unwrap());
        g.vips.remove(&"2001:db8::100".parse::<IpAddr>().unwrap());
        g.preferred_owner = None;
        let text: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "~ vip_group web: vips +192.0.2.101 -2001:db8::100, preferred_owner 1 -> none",
                "~ service tcp/192.0.2.100:80: scheduler wlc -> wrr, persistence_timeout 0 -> 300, persistence_prefix 32 -> 24",
                "~ real tcp/192.0.2.100:80 198.51.100.10:80: forward dr -> tun, upper_threshold 0 -> 10",
            ]
        );
    }

    #[test]
    fn order_groups_then_services_then_removed_groups() {
        let old = config(
            vec![group("old", &["192.0.2.9"]), group("z", &["192.0.2.8"])],
            vec![service("tcp/192.0.2.9:80", &["198.51.100.1:80"])],
        );
        let mut s = service("udp/192.0.2.1:53", &["198.51.100.1:53", "198.51.100.2:53"]);
        s.vip_group = Some("new".to_owned());
        let new = config(
            vec![group("new", &["192.0.2.1"]), group("z", &["192.0.2.7"])],
            vec![s, service("tcp/192.0.2.1:80", &[])],
        );
        let text: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "+ vip_group new (192.0.2.1 on eth0)",
                "~ vip_group z: vips +192.0.2.7 -192.0.2.8",
                "+ service tcp/192.0.2.1:80 (wlc)",
                "- service tcp/192.0.2.9:80 (1 real)",
                "+ service udp/192.0.2.1:53 (wlc, vip_group new)",
                "+ real udp/192.0.2.1:53 198.51.100.1:53 (dr, weight 1)",
                "+ real udp/192.0.2.1:53 198.51.100.2:53 (dr, weight 1)",
                "- vip_group old",
            ]
        );
    }
}
