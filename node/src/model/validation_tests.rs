//! The model's rules, each rejected with a message that names the facts.

use super::config::ConfigBuilder;
use super::testutil::*;
use super::*;

/// Validates `cfg` both ways (whole config, and entry by entry as the file and protobuf
/// loaders do); both must agree. Returns both messages on error.
fn check(cfg: &ClusterConfig) -> Result<(), Vec<String>> {
    let whole = cfg.validate();
    let mut builder = ConfigBuilder::default();
    let built = cfg
        .vip_groups
        .values()
        .try_for_each(|g| builder.add_vip_group(g.clone()))
        .and_then(|()| {
            cfg.services
                .values()
                .try_for_each(|s| builder.add_service(s.clone()))
        });
    match (whole, built) {
        (Ok(()), Ok(())) => {
            assert_eq!(&builder.finish(), cfg);
            Ok(())
        }
        (Err(a), Err(b)) => Err(vec![a.to_string(), b.to_string()]),
        (a, b) => panic!("validate() says {a:?} but the builder says {b:?}"),
    }
}

#[track_caller]
fn rejected(cfg: &ClusterConfig, facts: &[&str]) {
    let messages = check(cfg).expect_err("config should be rejected");
    for msg in &messages {
        for fact in facts {
            assert!(msg.contains(fact), "{msg:?} lacks {fact:?}");
        }
    }
}

#[track_caller]
fn rejected_service(s: Service, facts: &[&str]) {
    rejected(&config(vec![], vec![s]), facts);
}

#[test]
fn rich_config_is_valid() {
    check(&rich_config()).unwrap();
    check(&ClusterConfig::default()).unwrap();
}

#[test]
fn port_zero_needs_persistence() {
    let mut s = service("tcp/192.0.2.1:0", &[]);
    s.persistence = None;
    let err = s.validate().unwrap_err().to_string();
    assert_eq!(
        err,
        "service tcp/192.0.2.1:0: port 0 (all ports) needs persistence (persistence_timeout > 0)"
    );
    rejected_service(s, &["tcp/192.0.2.1:0", "needs persistence"]);
}

#[test]
fn persistence_prefix_bounded_by_family() {
    let mut s = service("tcp/192.0.2.1:80", &[]);
    s.persistence = Some(Persistence {
        timeout_s: 300,
        prefix: 33,
    });
    rejected_service(
        s,
        &[
            "tcp/192.0.2.1:80",
            "persistence_prefix 33",
            "IPv4",
            "0..=32",
        ],
    );
    let mut s = service("fwmark6/3", &[]);
    s.persistence = Some(Persistence {
        timeout_s: 300,
        prefix: 129,
    });
    rejected_service(
        s.clone(),
        &["fwmark6/3", "persistence_prefix 129", "IPv6", "0..=128"],
    );
    s.persistence = Some(Persistence {
        timeout_s: 300,
        prefix: 128,
    });
    check(&config(vec![], vec![s.clone()])).unwrap();
    s.persistence = Some(Persistence {
        timeout_s: 0,
        prefix: 128,
    });
    rejected_service(s, &["persistence timeout 0"]);
}

#[test]
fn weight_and_thresholds() {
    let mut s = service("tcp/192.0.2.1:80", &[]);
    let mut r = real("198.51.100.1:80");
    r.weight = 65536;
    s.reals.insert(r.addr, r.clone());
    rejected_service(
        s.clone(),
        &[
            "service tcp/192.0.2.1:80: real 198.51.100.1:80: weight 65536",
            "0..=65535",
        ],
    );
    r.weight = 65535;
    r.upper_threshold = 10;
    r.lower_threshold = 11;
    s.reals.insert(r.addr, r.clone());
    rejected_service(
        s.clone(),
        &[
            "real 198.51.100.1:80",
            "lower_threshold 11 is above upper_threshold 10",
        ],
    );
    // Without an upper threshold the lower one is not compared.
    r.upper_threshold = 0;
    s.reals.insert(r.addr, r);
    check(&config(vec![], vec![s])).unwrap();
}

#[test]
fn mixed_family_only_through_tunnels() {
    let mut s = service("tcp/192.0.2.1:80", &["[2001:db8::10]:80"]);
    rejected_service(
        s.clone(),
        &[
            "real [2001:db8::10]:80",
            "IPv6 real server on an IPv4 service",
            "forward = tun",
            "forward is dr",
        ],
    );
    for r in s.reals.values_mut() {
        r.forward = Forward::Tun;
    }
    check(&config(vec![], vec![s])).unwrap();
    let mut s = service("fwmark6/1", &["198.51.100.1:0"]);
    for r in s.reals.values_mut() {
        r.forward = Forward::Nat;
    }
    rejected_service(
        s,
        &["IPv4 real server on an IPv6 service", "forward is nat"],
    );
}

#[test]
fn real_server_ports() {
    let svc_with = |k: &str, addr: &str, fwd: Forward| {
        let mut s = service(k, &[]);
        let mut r = real(addr);
        r.forward = fwd;
        s.reals.insert(r.addr, r);
        s
    };
    // NAT on a port service must name the port.
    rejected_service(
        svc_with("tcp/192.0.2.1:80", "198.51.100.1:0", Forward::Nat),
        &[
            "real 198.51.100.1:0",
            "nat needs the real server's port",
            "198.51.100.1:80",
        ],
    );
    // DR and TUN cannot change the port.
    rejected_service(
        svc_with("tcp/192.0.2.1:80", "198.51.100.1:8080", Forward::Dr),
        &["dr cannot change the destination port", "port 80"],
    );
    rejected_service(
        svc_with("tcp/192.0.2.1:0", "198.51.100.1:80", Forward::Tun),
        &["tun cannot change the destination port", "use port 0"],
    );
    for ok in [
        svc_with("tcp/192.0.2.1:80", "198.51.100.1:0", Forward::Dr),
        svc_with("tcp/192.0.2.1:80", "198.51.100.1:80", Forward::Tun),
        svc_with("tcp/192.0.2.1:80", "198.51.100.1:8080", Forward::Nat),
        svc_with("tcp/192.0.2.1:0", "198.51.100.1:0", Forward::Nat),
        svc_with("tcp/192.0.2.1:0", "198.51.100.1:80", Forward::Nat),
        svc_with("fwmark/1", "198.51.100.1:0", Forward::Nat),
        svc_with("fwmark/1", "198.51.100.1:80", Forward::Dr),
        svc_with("tcp/192.0.2.1:80-81", "198.51.100.1:8080", Forward::Nat),
    ] {
        check(&config(vec![], vec![ok])).unwrap();
    }
    rejected_service(
        svc_with("tcp/192.0.2.1:80", "0.0.0.0:80", Forward::Dr),
        &["address 0.0.0.0 is not a usable address"],
    );
}

#[test]
fn fwmark_zero() {
    let s = Service::new(ServiceKey::Fwmark {
        mark: 0,
        family: Family::V4,
    });
    rejected_service(s, &["fwmark 0 is not a mark"]);
}

#[test]
fn scheduler_flags_match_scheduler() {
    let mut s = service("tcp/192.0.2.1:80", &[]);
    s.flags = SchedFlags::parse_list(&["mh-port"]).unwrap();
    s.scheduler = Scheduler::Sh;
    rejected_service(
        s.clone(),
        &[
            "service tcp/192.0.2.1:80",
            "mh-port needs scheduler mh (scheduler is sh)",
        ],
    );
    s.scheduler = Scheduler::Mh;
    check(&config(vec![], vec![s])).unwrap();
}

#[test]
fn one_packet_is_for_udp() {
    let mut s = service("tcp/192.0.2.1:80", &[]);
    s.one_packet = true;
    rejected_service(s, &["one_packet applies to UDP only", "tcp service"]);
    let mut s = service("fwmark/1", &[]);
    s.one_packet = true;
    check(&config(vec![], vec![s])).unwrap();
}

#[test]
fn vip_group_names_and_interfaces() {
    for bad in ["", "a b", "wéb", "a/b", &"x".repeat(65)] {
        let g = group(bad, &["192.0.2.1"]);
        rejected(
            &config(vec![g], vec![]),
            &["VIP group name", "1 to 64 characters"],
        );
    }
    check(&config(vec![group("Web-1.a_b", &["192.0.2.1"])], vec![])).unwrap();
    check(&config(
        vec![group(&"x".repeat(64), &["192.0.2.1"])],
        vec![],
    ))
    .unwrap();

    for bad in [
        "",
        "eth0/1",
        "eth 0",
        "eth0:1",
        ".",
        "..",
        "interface0123456",
        "eth\n",
    ] {
        let g = VipGroup {
            interface: bad.to_owned(),
            ..group("web", &["192.0.2.1"])
        };
        rejected(
            &config(vec![g], vec![]),
            &[
                "vip_group web: interface",
                "not a valid Linux interface name",
                "1 to 15 bytes",
            ],
        );
    }
    for ok in ["bond0.42", "interface012345", "eth-0_x"] {
        let g = VipGroup {
            interface: ok.to_owned(),
            ..group("web", &["192.0.2.1"])
        };
        check(&config(vec![g], vec![])).unwrap();
    }
}

#[test]
fn vip_group_contents() {
    rejected(
        &config(vec![group("web", &[])], vec![]),
        &["vip_group web: no VIPs"],
    );
    rejected(
        &config(vec![group("web", &["0.0.0.0"])], vec![]),
        &["vip_group web: VIP 0.0.0.0 is not a usable address"],
    );
    let g = VipGroup {
        preferred_owner: Some(0),
        ..group("web", &["192.0.2.1"])
    };
    rejected(
        &config(vec![g], vec![]),
        &["vip_group web: preferred_owner 0 is not a node id"],
    );
    rejected(
        &config(
            vec![
                group("a", &["192.0.2.1", "192.0.2.2"]),
                group("b", &["2001:db8::1", "192.0.2.2"]),
            ],
            vec![],
        ),
        &[
            "VIP 192.0.2.2",
            "vip_group a",
            "vip_group b",
            "one group only",
        ],
    );
}

#[test]
fn service_vip_group_references() {
    let mut s = service("tcp/192.0.2.1:80", &[]);
    s.vip_group = Some("web".to_owned());
    rejected(
        &config(vec![], vec![s.clone()]),
        &["service tcp/192.0.2.1:80: vip_group web does not exist"],
    );
    rejected(
        &config(
            vec![group("web", &["192.0.2.2", "2001:db8::2"])],
            vec![s.clone()],
        ),
        &[
            "service tcp/192.0.2.1:80: VIP 192.0.2.1 is not in vip_group web",
            "192.0.2.2, 2001:db8::2",
        ],
    );
    check(&config(vec![group("web", &["192.0.2.1"])], vec![s])).unwrap();
    // A fwmark service has no VIP of its own; the group only has to exist.
    let mut m = service("fwmark/9", &[]);
    m.vip_group = Some("web".to_owned());
    check(&config(vec![group("web", &["192.0.2.1"])], vec![m.clone()])).unwrap();
    m.vip_group = Some("bad name".to_owned());
    rejected(
        &config(vec![], vec![m]),
        &["fwmark/9: vip_group: VIP group name \"bad name\""],
    );
}

#[test]
fn port_groups_must_not_overlap() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["tcp/192.0.2.1:8000-8099", "tcp/192.0.2.1:8050-8150"],
            &[
                "ports 8050-8099 are also served by",
                "tcp/192.0.2.1:8000-8099",
                "tcp/192.0.2.1:8050-8150",
            ],
        ),
        (
            &["tcp/192.0.2.1:8000-8099,8443", "tcp/192.0.2.1:8443"],
            &[
                "port 8443 is also served by",
                "tcp/192.0.2.1:8000-8099,8443",
                "tcp/192.0.2.1:8443",
            ],
        ),
        (
            &[
                "udp/[2001:db8::1]:1-100",
                "udp/[2001:db8::1]:50,200-300",
                "udp/[2001:db8::1]:400-500",
            ],
            &[
                "port 50 is also served by",
                "udp/[2001:db8::1]:1-100",
                "udp/[2001:db8::1]:50,200-300",
            ],
        ),
        (
            // A long range hides behind a short one in the sweep.
            &[
                "tcp/192.0.2.1:10-1000",
                "tcp/192.0.2.1:20-30",
                "tcp/192.0.2.1:500,2000",
            ],
            &["also served by", "tcp/192.0.2.1:10-1000"],
        ),
    ];
    for (keys, facts) in cases {
        let services = keys.iter().map(|k| service(k, &[])).collect();
        rejected(&config(vec![], services), facts);
    }
    // Other protocols, other VIPs, port 0 and fwmarks do not conflict.
    let fine = [
        "tcp/192.0.2.1:8000-8099",
        "udp/192.0.2.1:8000-8099",
        "tcp/192.0.2.2:8000-8099",
        "tcp/192.0.2.1:0",
        "tcp/192.0.2.1:80",
        "tcp/192.0.2.1:8100-8200",
        "tcp/192.0.2.1:7999",
        "fwmark/8000",
    ];
    check(&config(
        vec![],
        fine.iter().map(|k| service(k, &[])).collect(),
    ))
    .unwrap();
}

#[test]
fn inconsistent_maps_are_caught() {
    let mut cfg = rich_config();
    let s = service("tcp/192.0.2.1:81", &[]);
    cfg.services.insert(key("tcp/192.0.2.1:80"), s);
    let err = cfg.validate().unwrap_err().to_string();
    assert!(
        err.contains("stored under the key tcp/192.0.2.1:80"),
        "{err}"
    );

    let mut s = service("tcp/192.0.2.1:80", &[]);
    s.reals
        .insert(real("198.51.100.1:80").addr, real("198.51.100.2:80"));
    let err = s.validate().unwrap_err().to_string();
    assert!(
        err.contains("listed under 198.51.100.1:80 has address 198.51.100.2:80"),
        "{err}"
    );
}

#[test]
fn serde_round_trip_and_duplicates() {
    let cfg = rich_config();
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(serde_json::from_str::<ClusterConfig>(&json).unwrap(), cfg);
    let dup = r#"{"services":[],"vip_groups":[
        {"name":"a","vips":["192.0.2.1"],"interface":"eth0","preferred_owner":null,"preempt":false},
        {"name":"a","vips":["192.0.2.2"],"interface":"eth0","preferred_owner":null,"preempt":false}]}"#;
    // Optional fields may be missing (data written by an older version).
    let minimal: Service =
        serde_json::from_str(r#"{"key":"tcp/192.0.2.1:80","scheduler":"rr"}"#).unwrap();
    assert_eq!(
        minimal,
        Service {
            scheduler: Scheduler::Rr,
            ..service("tcp/192.0.2.1:80", &[])
        }
    );
    let err = serde_json::from_str::<ClusterConfig>(dup)
        .unwrap_err()
        .to_string();
    assert!(err.contains("a is listed twice"), "{err}");
}
