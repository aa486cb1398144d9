//! `/metrics` end to end: real `fulcrumd` processes scraped over HTTP.
//!
//! - On loopback (no root): a one-node cluster started with `--metrics-listen`; Raft families,
//!   HTTP behaviour (404, 400, 405, 431, HEAD, concurrent scrapes); a bad address refused.
//! - In the director-pair lab (root): real UDP traffic through the VIPs moves the per-service
//!   and per-real-server counters on the owner; Raft and VIP ownership families agree across
//!   the three nodes; a planned VIP move shows in owner, epoch and transition counters.

use std::time::Duration;
use std::time::Instant;

use fulcrum_tests::NodeOpts;
use fulcrum_tests::TestCluster;
use fulcrum_tests::free_port;
use fulcrum_tests::metrics::Exposition;
use fulcrum_tests::metrics::HttpResponse;
use fulcrum_tests::metrics::exchange;
use fulcrum_tests::metrics::exchange_in;
use fulcrum_tests::metrics::scrape;
use fulcrum_tests::pair::Pair;
use fulcrum_tests::pair::VIP4;
use fulcrum_tests::pair::VIP6;
use fulcrum_tests::pair::bin;

/// Every reason `DropReason::name` gives; the exporter writes them all, zeros included.
const DROP_REASONS: [&str; 14] = [
    "malformed",
    "not_ours",
    "no_service",
    "not_syn",
    "no_real_server",
    "table_full",
    "no_neighbour",
    "ttl_expired",
    "too_big",
    "fragment",
    "no_connection",
    "no_tunnel_source",
    "rewrite",
    "tx_full",
];

fn http(ns: Option<&str>, addr: &str, req: &[u8]) -> HttpResponse {
    let raw = match ns {
        Some(ns) => exchange_in(ns, addr, req),
        None => exchange(addr, req),
    }
    .unwrap();
    HttpResponse::parse(&raw).unwrap()
}

/// The endpoint refuses what is not a scrape, and never falls over.
fn check_http_behaviour(ns: Option<&str>, addr: &str) {
    let st = |req: &[u8]| http(ns, addr, req).status;
    assert_eq!(st(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"), 404);
    assert_eq!(st(b"GET / HTTP/1.0\r\n\r\n"), 404);
    assert_eq!(
        st(b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
        405
    );
    assert_eq!(st(b"NOT HTTP AT ALL\r\n\r\n"), 400);
    assert_eq!(
        st(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n"),
        400
    );
    let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
    for _ in 0..400 {
        big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    big.extend_from_slice(b"\r\n");
    assert_eq!(st(&big), 431);
    let head = http(ns, addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(
        head.header("content-length")
            .and_then(|l| l.parse::<usize>().ok())
            .is_some_and(|n| n > 0)
    );
    // Many scrapes at once all get a full, valid exposition.
    let threads: Vec<_> = (0..24)
        .map(|_| {
            let (ns, addr) = (ns.map(String::from), addr.to_string());
            std::thread::spawn(move || scrape(ns.as_deref(), &addr))
        })
        .collect();
    for t in threads {
        let e = t.join().unwrap().unwrap();
        assert!(e.get("fulcrum_raft_term", &[]).is_some());
    }
}

fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_node_serves_raft_metrics_and_refuses_non_scrapes() {
    let mut c = TestCluster::prepare(1, NodeOpts::default()).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    // The flag overrides the (absent) [metrics] section.
    c.node(1).start(&["--metrics-listen", &addr]).unwrap();
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let addr2 = addr.clone();
    tokio::task::spawn_blocking(move || {
        let mut e = Exposition::default();
        wait_until(Duration::from_secs(10), "a leader in the metrics", || {
            e = scrape(None, &addr2).unwrap();
            e.get("fulcrum_raft_is_leader", &[]) == Some(1.0)
        });
        for (name, want) in [
            ("fulcrum_raft_leader_id", 1.0),
            ("fulcrum_raft_members", 1.0),
            ("fulcrum_raft_voters", 1.0),
            ("fulcrum_engine_enabled", 0.0),
        ] {
            assert_eq!(e.get(name, &[]), Some(want), "{name}\n{}", e.text);
        }
        assert!(e.get("fulcrum_raft_term", &[]).unwrap() >= 1.0);
        assert!(e.get("fulcrum_raft_applied_index", &[]).unwrap() >= 1.0);
        assert!(e.get("fulcrum_raft_leader_changes_total", &[]).unwrap() >= 1.0);
        assert_eq!(e.kind("fulcrum_raft_leader_changes_total"), Some("counter"));
        assert_eq!(
            e.get("fulcrum_raft_state", &[("state", "leader")]),
            Some(1.0)
        );
        let info = e.matching("fulcrum_node_info", &[("id", "1"), ("role", "director")]);
        assert!(info.len() == 1 && info[0].value == 1.0, "{}", e.text);
        // No engine here: no service families.
        assert!(!e.text.contains("fulcrum_service_"), "{}", e.text);
        check_http_behaviour(None, &addr2);
    })
    .await
    .unwrap();
    assert!(c.node(1).is_running(), "{}", c.node(1).log());
}

#[test]
fn a_bad_metrics_address_is_refused_with_a_clear_error() {
    let c = TestCluster::prepare(1, NodeOpts::default()).unwrap();
    let node = &c.nodes[0];
    let check = |extra: &[&str], want: &str| {
        let o = std::process::Command::new(fulcrum_tests::fulcrumd_bin())
            .arg("--config")
            .arg(&node.config_path)
            .args(extra)
            .arg("--check-config")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?} accepted");
        assert!(
            err.contains("metrics.listen") && err.contains(want),
            "{extra:?}: {err}"
        );
    };
    check(&["--metrics-listen", "localhost:9470"], "not an IP:PORT");
    check(&["--metrics-listen", "127.0.0.1:0"], "must not be 0");
    check(&["--metrics-listen", &node.addr], "collides");
    // The same from the file.
    let text = std::fs::read_to_string(&node.config_path).unwrap();
    std::fs::write(
        &node.config_path,
        format!("{text}[metrics]\nlisten = \"9470\"\n"),
    )
    .unwrap();
    check(&[], "not an IP:PORT");
    // A flag wins over the file.
    let o = std::process::Command::new(fulcrum_tests::fulcrumd_bin())
        .arg("--config")
        .arg(&node.config_path)
        .args(["--metrics-listen", "127.0.0.1:9470", "--check-config"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // A port that is taken stops the daemon at start, naming the listener.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    std::fs::write(&node.config_path, text).unwrap();
    let o = std::process::Command::new(fulcrum_tests::fulcrumd_bin())
        .arg("--config")
        .arg(&node.config_path)
        .args(["--metrics-listen", &taken_addr])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains(&format!("metrics listener on {taken_addr}")),
        "{err}"
    );
}

/// Real traffic through the pair lab's VIPs; every node scraped from its own namespace.
#[test]
fn traffic_raft_and_vip_ownership_show_in_the_metrics() {
    let p = Pair::new("met", false);
    let ns = |id: u64| p.host(id).ns.clone();
    let scrape_node = |id: u64| -> Exposition {
        scrape(Some(&ns(id)), &p.metrics_addr(id))
            .unwrap_or_else(|e| panic!("scraping node {id}: {e:#}\n{}", p.logs()))
    };

    // --- Raft: one leader, agreed on by all; three voters.
    let mut leader = 0.0;
    wait_until(Duration::from_secs(10), "agreement on the leader", || {
        let es: Vec<Exposition> = (1..=3).map(scrape_node).collect();
        leader = es[0].get("fulcrum_raft_leader_id", &[]).unwrap_or(0.0);
        leader > 0.0
            && es.iter().all(|e| {
                e.get("fulcrum_raft_leader_id", &[]) == Some(leader)
                    && e.get("fulcrum_raft_applied_index", &[])
                        == es[0].get("fulcrum_raft_applied_index", &[])
            })
    });
    let es: Vec<Exposition> = (1..=3).map(scrape_node).collect();
    let leaders: f64 = es
        .iter()
        .map(|e| e.get("fulcrum_raft_is_leader", &[]).unwrap())
        .sum();
    assert_eq!(leaders, 1.0);
    for (i, e) in es.iter().enumerate() {
        assert_eq!(
            e.get("fulcrum_raft_members", &[]),
            Some(3.0),
            "node {}",
            i + 1
        );
        assert_eq!(e.get("fulcrum_raft_voters", &[]), Some(3.0));
        assert!(e.get("fulcrum_raft_term", &[]).unwrap() >= 1.0);
        assert!(e.get("fulcrum_raft_leader_changes_total", &[]).unwrap() >= 1.0);
        assert!(
            e.get("fulcrum_raft_committed_index", &[]).unwrap()
                >= e.get("fulcrum_raft_applied_index", &[]).unwrap()
        );
        // --- VIP: node 1 owns "web", everyone knows it.
        let web = [("group", "web")];
        assert_eq!(e.get("fulcrum_vip_group_owner_id", &web), Some(1.0));
        assert!(e.get("fulcrum_vip_group_epoch", &web).unwrap() >= 1.0);
        let owned = if i == 0 { 1.0 } else { 0.0 };
        assert_eq!(
            e.get("fulcrum_vip_group_owned", &web),
            Some(owned),
            "node {}",
            i + 1
        );
    }
    let e1 = &es[0];
    let acquired = [("group", "web"), ("direction", "acquired")];
    let released = [("group", "web"), ("direction", "released")];
    assert!(
        e1.get("fulcrum_vip_group_transitions_total", &acquired)
            .unwrap()
            >= 1.0
    );
    assert!(
        e1.get("fulcrum_vip_group_transitions_total", &released)
            .is_some()
    );
    assert_eq!(e1.get("fulcrum_vip_lease_valid", &[]), Some(1.0));
    assert_eq!(es[2].get("fulcrum_vip_lease_valid", &[]), Some(0.0));
    // --- Engine: on both directors, every drop reason; none on the witness.
    for e in &es[..2] {
        assert_eq!(e.get("fulcrum_engine_enabled", &[]), Some(1.0));
        for r in DROP_REASONS {
            assert!(
                e.get("fulcrum_engine_dropped_packets_total", &[("reason", r)])
                    .is_some(),
                "drop reason {r}\n{}",
                e.text
            );
        }
        assert_eq!(
            e.kind("fulcrum_engine_dropped_packets_total"),
            Some("counter")
        );
        assert_eq!(
            e.get("fulcrum_engine_connection_table_max_entries", &[]),
            Some(1_048_576.0)
        );
    }
    assert_eq!(es[2].get("fulcrum_engine_enabled", &[]), Some(0.0));
    assert!(!es[2].text.contains("fulcrum_service_"));

    // --- Traffic: 40 new UDP flows to each VIP through director 1 (DR).
    let svc4 = format!("udp/{VIP4}:53");
    let svc6 = format!("udp/[{VIP6}]:53");
    let before = scrape_node(1);
    for target in [format!("{VIP4}:53"), format!("[{VIP6}]:53")] {
        let o = p
            .client
            .command(&bin(fulcrum_tests::testsrv_bin()))
            .args(["probe", "--udp", &target, "--count", "40"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["failed"], 0, "{target}: {v}");
    }
    let after = scrape_node(1);
    for svc in [&svc4, &svc6] {
        let l = [("service", svc.as_str())];
        let grew =
            |name: &str| after.get(name, &l).unwrap_or(0.0) - before.get(name, &l).unwrap_or(0.0);
        // Every probe is one datagram from a fresh socket; the kernel may hand out a source
        // port twice, which is one flow, so connections are checked loosely.
        assert!(
            grew("fulcrum_service_in_packets_total") >= 40.0,
            "{svc}\nbefore:\n{}\nafter:\n{}",
            before.text,
            after.text
        );
        assert!(grew("fulcrum_service_connections_total") >= 30.0);
        assert!(grew("fulcrum_service_in_bytes_total") >= 40.0 * 28.0);
        // Per real server: both got some (mh spreads 40 flows), together all of them.
        let reals = after.matching("fulcrum_real_server_in_packets_total", &l);
        assert_eq!(reals.len(), 2, "{}", after.text);
        let sum_after = after.sum("fulcrum_real_server_in_packets_total", &l);
        let sum_before = before.sum("fulcrum_real_server_in_packets_total", &l);
        assert!(sum_after - sum_before >= 40.0);
        assert!(
            after.sum("fulcrum_real_server_connections_total", &l)
                - before.sum("fulcrum_real_server_connections_total", &l)
                >= 30.0
        );
        for r in &reals {
            let rl = [
                ("service", svc.as_str()),
                ("real", r.labels["real"].as_str()),
            ];
            assert_eq!(after.get("fulcrum_real_server_weight", &rl), Some(1.0));
            assert_eq!(after.get("fulcrum_real_server_quiesced", &rl), Some(0.0));
            assert!(
                after
                    .get("fulcrum_real_server_inactive_connections", &rl)
                    .is_some()
            );
            assert!(
                after
                    .get("fulcrum_real_server_active_connections", &rl)
                    .is_some()
            );
        }
        assert!(
            after
                .get("fulcrum_service_in_packets_per_second", &l)
                .is_some()
        );
    }
    assert!(
        after
            .get(
                "fulcrum_real_server_in_packets_total",
                &[("service", &svc4), ("real", "192.0.2.33:53")]
            )
            .is_some(),
        "{}",
        after.text
    );
    assert!(
        after
            .get("fulcrum_engine_connection_table_entries", &[])
            .unwrap()
            >= 80.0
    );

    // Rates follow steady traffic (the engine samples every 2 s).
    let pinger =
        fulcrum_tests::drill::Pinger::start(&p.client, "udp", &format!("{VIP4}:53"), 5, 6000)
            .unwrap();
    let l4 = [("service", svc4.as_str())];
    wait_until(Duration::from_secs(6), "a packet rate", || {
        scrape_node(1)
            .get("fulcrum_service_in_packets_per_second", &l4)
            .is_some_and(|r| r > 10.0)
    });
    let _ = pinger.stop();

    // --- A planned move to director 2: owner, epoch and both nodes' transitions follow.
    let epoch_before = scrape_node(3)
        .get("fulcrum_vip_group_epoch", &[("group", "web")])
        .unwrap();
    let released_before = scrape_node(1)
        .get("fulcrum_vip_group_transitions_total", &released)
        .unwrap();
    let acquired_before = scrape_node(2)
        .get("fulcrum_vip_group_transitions_total", &acquired)
        .unwrap();
    // A leadership hand-over (to the witness) may be under way: the new leader accepts the
    // move once node 2 has renewed its lease with it.
    p.wait_for(Duration::from_secs(10), "the move to be accepted", |p| {
        let o = p.cli(3, &["vip", "move", "web", "--to", "2"]);
        if !o.status.success() {
            eprintln!("vip move: {}", String::from_utf8_lossy(&o.stderr).trim());
        }
        o.status.success()
    });
    wait_until(
        Duration::from_secs(10),
        "node 2 to report the group",
        || scrape_node(2).get("fulcrum_vip_group_owned", &[("group", "web")]) == Some(1.0),
    );
    let (e1, e2) = (scrape_node(1), scrape_node(2));
    assert_eq!(
        e1.get("fulcrum_vip_group_owned", &[("group", "web")]),
        Some(0.0)
    );
    assert_eq!(
        e1.get("fulcrum_vip_group_transitions_total", &released),
        Some(released_before + 1.0)
    );
    assert_eq!(
        e2.get("fulcrum_vip_group_transitions_total", &acquired),
        Some(acquired_before + 1.0)
    );
    for e in [&e1, &e2] {
        assert_eq!(
            e.get("fulcrum_vip_group_owner_id", &[("group", "web")]),
            Some(2.0)
        );
        assert!(
            e.get("fulcrum_vip_group_epoch", &[("group", "web")])
                .unwrap()
                > epoch_before
        );
    }

    // --- HTTP behaviour on a real director.
    check_http_behaviour(Some(&ns(1)), &p.metrics_addr(1));
}
