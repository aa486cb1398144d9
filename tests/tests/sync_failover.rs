//! Connection-sync drills in a network-namespace lab: real `fulcrumd` directors, a real
//! client holding hundreds of long-lived TCP flows through the VIPs (IPv4 and IPv6, DR and
//! NAT, each exchanging data continuously and checking every echo), real servers. The owner
//! is SIGKILLed; every flow must go on, on the same real server, with its data intact.
//!
//! The services use `wlc` and `rr`, not `mh`: without sync the new owner would not know the
//! flows (it drops a mid-stream segment of an unknown flow, as IPVS does), so these tests
//! fail if sync does not work. The last test covers `mh` without sync.

use std::time::Duration;

use fulcrum_tests::drill::BridgeBlock;
use fulcrum_tests::pair::Pair;
use fulcrum_tests::pair::bin;
use serde_json::Value;

/// DR services on port 80; NAT services on 8080, persistent (their templates are synced too).
/// The VIPs plus the real servers' gateway for NAT replies (192.0.2.1 / 2001:db8::1): part of
/// the group, so it moves with it and the new owner gets the replies.
fn cluster_toml(scheduler_dr: &str, scheduler_nat: &str) -> String {
    cluster_toml_with(scheduler_dr, scheduler_nat, true)
}

fn cluster_toml_with(scheduler_dr: &str, scheduler_nat: &str, preempt: bool) -> String {
    let mut t = format!(
        r#"
[[vip_group]]
name = "web"
vips = ["192.0.2.100", "2001:db8::100", "192.0.2.1", "2001:db8::1"]
interface = "eth0"
preferred_owner = 1
preempt = {preempt}
"#
    );
    for (vip, r1, r2) in [
        ("192.0.2.100", "192.0.2.33", "192.0.2.34"),
        ("[2001:db8::100]", "[2001:db8::21]", "[2001:db8::22]"),
    ] {
        t.push_str(&format!(
            r#"
[[service]]
key = "tcp/{vip}:80"
scheduler = "{scheduler_dr}"
vip_group = "web"
[[service.real]]
address = "{r1}:80"
[[service.real]]
address = "{r2}:80"

[[service]]
key = "tcp/{vip}:8080"
scheduler = "{scheduler_nat}"
vip_group = "web"
persistence_timeout = 300
[[service.real]]
address = "{r1}:80"
forward = "nat"
[[service.real]]
address = "{r2}:80"
forward = "nat"
"#
        ));
    }
    t
}

/// Applies the TCP services and routes the reals' NAT replies (those from their own address)
/// through the group's gateway address; DR replies (from the VIP) still go straight back.
fn setup(pair: &mut Pair, toml: &str) {
    let (c4, c6) = (pair.client.ip4.clone(), pair.client.ip6.clone());
    for r in &pair.rs {
        r.sh(&format!(
            "ip rule add from {ip4} table 100 && ip route add {c4}/32 via 192.0.2.1 table 100 && \
             ip -6 rule add from {ip6} table 100 && ip -6 route add {c6}/128 via 2001:db8::1 table 100",
            ip4 = r.ip4,
            ip6 = r.ip6
        ))
        .unwrap();
    }
    let path = std::env::temp_dir().join(format!("fulcrum-sync-{}.toml", pair.lab.prefix));
    std::fs::write(&path, toml).unwrap();
    let o = pair.cli(3, &["apply", "-f", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_file(&path);
    pair.wait_for(Duration::from_secs(20), "director 1 to own the VIPs", |p| {
        p.state_here(1) == "master"
    });
    for target in TARGETS {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let r = Holder::start(pair, target, 1, 1, false).report(pair);
            if r.as_ref().is_ok_and(|r| r["broken"].as_u64() == Some(0)) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no TCP through {target}: {r:?}\n{}",
                pair.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

const TARGETS: [&str; 4] = [
    "192.0.2.100:80",
    "[2001:db8::100]:80",
    "192.0.2.100:8080",
    "[2001:db8::100]:8080",
];

/// A `fulcrum-testsrv hold` on the client: `count` connections to `target`, each sending a
/// numbered line every 50 ms and checking the echo and the real server's name.
struct Holder {
    idx: usize,
    target: String,
}

impl Holder {
    fn start(pair: &mut Pair, target: &str, count: u32, seconds: u32, ready: bool) -> Holder {
        Holder::start_every(pair, target, count, seconds, 50, ready)
    }

    /// As `start`, a message every `interval_ms` on each connection.
    fn start_every(
        pair: &mut Pair,
        target: &str,
        count: u32,
        seconds: u32,
        interval_ms: u32,
        ready: bool,
    ) -> Holder {
        let mut args = vec![
            "hold".to_string(),
            "--tcp".into(),
            target.into(),
            "--count".into(),
            count.to_string(),
            "--seconds".into(),
            seconds.to_string(),
            "--interval-ms".into(),
            interval_ms.to_string(),
            "--timeout-ms".into(),
            "4000".into(),
        ];
        if ready {
            args.push("--ready".into());
        }
        let client = pair.client.clone();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let idx = pair
            .lab
            .spawn(&client, &bin(fulcrum_tests::testsrv_bin()), &argv)
            .unwrap();
        if ready {
            let line = pair.lab.read_line(idx).unwrap();
            assert_eq!(line.trim(), "connected", "hold to {target}: {line}");
        }
        Holder {
            idx,
            target: target.into(),
        }
    }

    /// The report, or what came instead (a hold that could not connect prints none).
    fn report(&mut self, pair: &mut Pair) -> Result<Value, String> {
        let line = pair.lab.read_line(self.idx).map_err(|e| e.to_string())?;
        serde_json::from_str(&line).map_err(|e| format!("hold to {}: {e}: {line:?}", self.target))
    }

    fn finish(&mut self, pair: &mut Pair) -> Value {
        self.report(pair)
            .unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()))
    }
}

fn assert_unbroken(pair: &Pair, name: &str, r: &Value, count: u64) {
    let conns = r["conns"].as_array().unwrap();
    assert_eq!(conns.len() as u64, count, "{name}");
    let broken: Vec<&Value> = conns.iter().filter(|c| !c["error"].is_null()).collect();
    assert!(
        broken.is_empty(),
        "{name}: {} of {count} flows broke, e.g. {:?}\n{}",
        broken.len(),
        broken.first(),
        pair.logs()
    );
    for c in conns {
        assert!(
            c["ok"].as_u64().unwrap_or(0) >= 20,
            "{name}: a flow stalled: {c}"
        );
    }
}

/// A short hold: every connection answered, all by `server`.
fn assert_unbroken_short(pair: &Pair, r: &Value, server: &str) {
    for c in r["conns"].as_array().unwrap() {
        assert!(c["error"].is_null(), "{c}\n{}", pair.logs());
        assert_eq!(c["server"].as_str(), Some(server), "persistence: {r}");
    }
}

fn sync_status(pair: &Pair, via: u64) -> Value {
    let o = pair.cli(via, &["--json", "sync", "status"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn peer(status: &Value, node: u64) -> Value {
    status["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["node"].as_u64() == Some(node)))
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn flows_survive_owner_kill_restart_failback_and_a_second_kill() {
    let mut pair = Pair::new("sy1", true);
    setup(&mut pair, &cluster_toml("wlc", "rr"));
    pair.wait_for(Duration::from_secs(15), "director 2 current", |p| {
        peer(&sync_status(p, 1), 2)["current"] == Value::Bool(true)
    });
    // 400 long-lived flows: IPv4 and IPv6, DR and NAT.
    let mut long: Vec<Holder> = TARGETS
        .iter()
        .map(|t| Holder::start(&mut pair, t, 100, 40, false))
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let r = Holder::start(&mut pair, TARGETS[2], 4, 1, false).finish(&mut pair);
    let persistent_server = r["conns"][0]["server"].as_str().unwrap().to_string();
    assert_unbroken_short(&pair, &r, &persistent_server);
    let templates = pair.cli(2, &["--json", "conn", "list"]);
    let text = String::from_utf8_lossy(&templates.stdout);
    assert!(
        text.contains("\"template\": true"),
        "director 2 holds the synced persistence templates: {text}"
    );
    // And flows opened in the last few milliseconds before the kill.
    let mut fresh = [
        Holder::start(&mut pair, TARGETS[0], 25, 36, true),
        Holder::start(&mut pair, TARGETS[3], 25, 36, true),
    ];
    std::thread::sleep(Duration::from_millis(10));
    pair.kill(1);
    pair.wait_for(Duration::from_secs(10), "director 2 to take over", |p| {
        p.state_here(2) == "master"
    });
    // Persistence templates came along: new connections from the client still go to the
    // real server its earlier ones went to.
    let r = Holder::start(&mut pair, TARGETS[2], 4, 1, false).finish(&mut pair);
    assert_unbroken_short(&pair, &r, &persistent_server);
    // The entries on director 2 came from director 1.
    let conns = pair.cli(2, &["--json", "conn", "list"]);
    let text = String::from_utf8_lossy(&conns.stdout);
    assert!(text.contains("synced from 1"), "{text}");

    // Director 1 returns as a backup mid-traffic: it gets a full snapshot from director 2,
    // is current, and only then does the fail-back (preempt) move the group back.
    std::thread::sleep(Duration::from_secs(2));
    pair.start(1);
    pair.wait_for(Duration::from_secs(30), "director 1 current again", |p| {
        let s = sync_status(p, 2);
        let p1 = peer(&s, 1);
        p1["current"] == Value::Bool(true) && p1["resyncs"].as_u64().unwrap_or(0) >= 1
    });
    pair.wait_for(Duration::from_secs(30), "fail-back to director 1", |p| {
        p.state_here(1) == "master"
    });
    std::thread::sleep(Duration::from_secs(2));
    // Kill the new owner after the fail-back: director 2 takes over again.
    pair.wait_for(Duration::from_secs(15), "director 2 current", |p| {
        peer(&sync_status(p, 1), 2)["current"] == Value::Bool(true)
    });
    pair.kill(1);
    pair.wait_for(
        Duration::from_secs(10),
        "director 2 to take over again",
        |p| p.state_here(2) == "master",
    );
    for (h, t) in long.iter_mut().zip(TARGETS) {
        let r = h.finish(&mut pair);
        assert_unbroken(&pair, &format!("long-lived flows to {t}"), &r, 100);
    }
    for (i, h) in fresh.iter_mut().enumerate() {
        let r = h.finish(&mut pair);
        assert_unbroken(
            &pair,
            &format!("flows opened just before the kill ({i})"),
            &r,
            25,
        );
    }
}

#[test]
fn a_partitioned_backup_falls_behind_resyncs_and_then_carries_the_flows() {
    // A small lag bound so the partition overflows it.
    let mut pair = Pair::with_vip(
        "sy2",
        true,
        "\n[sync]\nbatch_entries = 16\nwindow = 4\nmax_lag_entries = 64\n",
    );
    setup(&mut pair, &cluster_toml("wlc", "rr"));
    pair.wait_for(Duration::from_secs(15), "director 2 current", |p| {
        peer(&sync_status(p, 1), 2)["current"] == Value::Bool(true)
    });
    let scrape = |pair: &Pair| {
        fulcrum_tests::metrics::scrape(Some(&pair.dirs[0].ns), &pair.metrics_addr(1)).unwrap()
    };
    let m0 = scrape(&pair);
    let mut before = Holder::start(&mut pair, TARGETS[0], 50, 30, true);
    let block = BridgeBlock::between(&pair.lab, &pair.dirs[0], &pair.dirs[1]).unwrap();
    // New flows while director 2 cannot hear director 1: more changes than the bound.
    let mut during = Holder::start(&mut pair, TARGETS[2], 100, 26, true);
    pair.wait_for(Duration::from_secs(10), "director 2 marked behind", |p| {
        let p2 = peer(&sync_status(p, 1), 2);
        p2["behind"] == Value::Bool(true)
            && p2["current"] == Value::Bool(false)
            && p2["dropped"].as_u64().unwrap_or(0) > 0
    });
    drop(block);
    pair.wait_for(Duration::from_secs(30), "director 2 resynced", |p| {
        let p2 = peer(&sync_status(p, 1), 2);
        p2["current"] == Value::Bool(true)
            && p2["behind"] == Value::Bool(false)
            && p2["resyncs"].as_u64().unwrap_or(0) >= 2
    });
    // The metrics tell the same story.
    let m1 = scrape(&pair);
    let peer2 = [("peer", "2")];
    let moved =
        |name: &str| m1.get(name, &peer2).unwrap_or(0.0) - m0.get(name, &peer2).unwrap_or(0.0);
    assert!(moved("fulcrum_sync_sent_entries_total") >= 150.0, "sent");
    assert!(moved("fulcrum_sync_acked_entries_total") >= 150.0, "acked");
    assert!(moved("fulcrum_sync_dropped_entries_total") > 0.0, "dropped");
    assert!(moved("fulcrum_sync_resyncs_total") >= 1.0, "resyncs");
    assert_eq!(m1.get("fulcrum_sync_peer_current", &peer2), Some(1.0));
    assert_eq!(m1.get("fulcrum_sync_peer_behind", &peer2), Some(0.0));
    assert_eq!(
        m1.kind("fulcrum_sync_retransmitted_entries_total"),
        Some("counter")
    );
    pair.kill(1);
    pair.wait_for(Duration::from_secs(10), "director 2 to take over", |p| {
        p.state_here(2) == "master"
    });
    let m2 = fulcrum_tests::metrics::scrape(Some(&pair.dirs[1].ns), &pair.metrics_addr(2)).unwrap();
    assert!(
        m2.get("fulcrum_sync_received_entries_total", &[("peer", "1")])
            .unwrap_or(0.0)
            >= 150.0,
        "director 2 counted what it received"
    );
    let r = before.finish(&mut pair);
    assert_unbroken(&pair, "flows from before the partition", &r, 50);
    let r = during.finish(&mut pair);
    assert_unbroken(&pair, "flows opened during the partition", &r, 100);
}

#[test]
fn maglev_flows_too_new_to_sync_stay_on_their_real_server() {
    // Sync off: the new owner knows none of the flows; Maglev maps each to the same server.
    let mut pair = Pair::with_vip("sy3", true, "\n[sync]\nenabled = false\n");
    setup(&mut pair, &cluster_toml("mh", "mh"));
    let s = sync_status(&pair, 1);
    assert_eq!(s["enabled"], Value::Bool(false), "{s}");
    let mut holds: Vec<Holder> = TARGETS
        .iter()
        .map(|t| Holder::start(&mut pair, t, 50, 14, false))
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    pair.kill(1);
    pair.wait_for(Duration::from_secs(10), "director 2 to take over", |p| {
        p.state_here(2) == "master"
    });
    for (h, t) in holds.iter_mut().zip(TARGETS) {
        let r = h.finish(&mut pair);
        assert_unbroken(&pair, &format!("mh flows to {t}"), &r, 50);
    }
    let conns = pair.cli(2, &["--json", "conn", "list"]);
    let text = String::from_utf8_lossy(&conns.stdout);
    assert!(!text.contains("synced from"), "nothing was synced: {text}");
}

#[test]
fn idle_flows_taken_over_survive_the_old_owner_coming_back_empty() {
    // No fail-back: the flows stay on director 2, which must keep its copies of director 1's
    // idle flows when director 1 returns with an empty table and sends its (empty) snapshot.
    let mut pair = Pair::new("sy4", false);
    setup(&mut pair, &cluster_toml_with("wlc", "rr", false));
    pair.wait_for(Duration::from_secs(15), "director 2 current", |p| {
        peer(&sync_status(p, 1), 2)["current"] == Value::Bool(true)
    });
    // One message now, the next 10 s later: silent across the kill and the return.
    let mut idle: Vec<Holder> = [TARGETS[0], TARGETS[3]]
        .iter()
        .map(|t| Holder::start_every(&mut pair, t, 40, 14, 10_000, true))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    pair.kill(1);
    pair.wait_for(Duration::from_secs(10), "director 2 to take over", |p| {
        p.state_here(2) == "master"
    });
    pair.start(1);
    pair.wait_for(
        Duration::from_secs(8),
        "director 1's snapshot at director 2",
        |p| {
            let s = sync_status(p, 2);
            s["sources"].as_array().is_some_and(|v| {
                v.iter()
                    .any(|x| x["node"].as_u64() == Some(1) && x["complete"] == Value::Bool(true))
            })
        },
    );
    assert_eq!(pair.state_here(2), "master", "no fail-back without preempt");
    for (h, t) in idle.iter_mut().zip([TARGETS[0], TARGETS[3]]) {
        let r = h.finish(&mut pair);
        for c in r["conns"].as_array().unwrap() {
            assert!(
                c["error"].is_null(),
                "idle flow to {t}: {c}\n{}",
                pair.logs()
            );
            assert_eq!(c["ok"].as_u64(), Some(2), "idle flow to {t}: {c}");
        }
    }
}
