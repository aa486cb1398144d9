//! Builders for tests: short ways to make valid objects.

use std::collections::BTreeSet;

use super::*;

pub fn key(s: &str) -> ServiceKey {
    s.parse().unwrap()
}

pub fn real(addr: &str) -> RealServer {
    RealServer::new(parse_socket_addr(addr).unwrap())
}

/// A service with the given reals (default settings, persistence added for port-0 keys).
pub fn service(k: &str, reals: &[&str]) -> Service {
    let mut s = Service::new(key(k));
    if let ServiceKey::Addr { port: 0, .. } = s.key {
        s.persistence = Some(Persistence {
            timeout_s: 300,
            prefix: s.key.family().max_prefix(),
        });
    }
    for r in reals {
        let r = real(r);
        s.reals.insert(r.addr, r);
    }
    s
}

pub fn group(name: &str, vips: &[&str]) -> VipGroup {
    VipGroup {
        name: name.to_owned(),
        vips: vips
            .iter()
            .map(|v| parse_ip(v).unwrap())
            .collect::<BTreeSet<_>>(),
        interface: "eth0".to_owned(),
        preferred_owner: None,
        preempt: false,
    }
}

pub fn config(groups: Vec<VipGroup>, services: Vec<Service>) -> ClusterConfig {
    ClusterConfig {
        services: services.into_iter().map(|s| (s.key.clone(), s)).collect(),
        vip_groups: groups.into_iter().map(|g| (g.name.clone(), g)).collect(),
    }
}

/// A config that uses every feature: both families, port groups, fwmarks, persistence,
/// flags, every forwarding method, thresholds, preferred owners.
pub fn rich_config() -> ClusterConfig {
    let web = VipGroup {
        preferred_owner: Some(1),
        preempt: true,
        ..group("web", &["192.0.2.100", "2001:db8::100"])
    };
    let dns = VipGroup {
        interface: "bond0.42".to_owned(),
        ..group("dns", &["192.0.2.53"])
    };
    let mut http = service(
        "tcp/192.0.2.100:80",
        &["198.51.100.10:80", "198.51.100.11:0"],
    );
    http.vip_group = Some("web".to_owned());
    let mut nat = real("198.51.100.12:8080");
    nat.forward = Forward::Nat;
    nat.weight = 0;
    nat.upper_threshold = 100;
    nat.lower_threshold = 75;
    http.reals.insert(nat.addr, nat);
    let mut tun6 = real("[2001:db8:1::10]:80");
    tun6.forward = Forward::Tun;
    http.reals.insert(tun6.addr, tun6);

    let mut https6 = service("tcp/[2001:db8::100]:443", &["[2001:db8:1::10]:443"]);
    https6.scheduler = Scheduler::Sh;
    https6.flags = SchedFlags::parse_list(&["sh-port", "sh-fallback"]).unwrap();
    https6.persistence = Some(Persistence {
        timeout_s: 600,
        prefix: 64,
    });
    https6.vip_group = Some("web".to_owned());

    let mut range = service("tcp/192.0.2.100:8000-8099,8443", &["198.51.100.10:0"]);
    range.scheduler = Scheduler::Mh;
    range.flags = SchedFlags::parse_list(&["mh-port"]).unwrap();

    let mut dns_udp = service("udp/192.0.2.53:53", &["198.51.100.20:53"]);
    dns_udp.one_packet = true;
    dns_udp.scheduler = Scheduler::Rr;
    dns_udp.vip_group = Some("dns".to_owned());

    let all_ports = service("tcp/192.0.2.100:0", &["198.51.100.10:0"]);
    let mut mark = service("fwmark6/7", &["[2001:db8:1::10]:0"]);
    mark.scheduler = Scheduler::Twos;
    let mark4 = service("fwmark/7", &["198.51.100.10:80"]);
    let sctp = service("sctp/192.0.2.100:2905", &["198.51.100.30:2905"]);

    config(
        vec![web, dns],
        vec![http, https6, range, dns_udp, all_ports, mark, mark4, sctp],
    )
}
