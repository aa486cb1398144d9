//! `fulcrum drill`, the operator's failover drill, against real clusters:
//!
//! - in the network-namespace lab of `tests/src/pair.rs` (two directors, a witness, two DR real
//!   servers running `fulcrum drill serve`, a client): a planned `vip move`, then a kill of the
//!   owner through the API, each with TCP and UDP flows over IPv4 and IPv6 from the client;
//! - on loopback: the `Kill` RPC's guards (the node's `[drill] allow_kill`, the node id) and
//!   the CLI's confirmation flag.

use std::process::Output;
use std::time::Duration;
use std::time::Instant;

use fulcrum_proto::v1 as pb;
use fulcrum_tests::TestCluster;
use fulcrum_tests::pair::Pair;
use fulcrum_tests::pair::VIP4;
use fulcrum_tests::pair::VIP6;
use fulcrum_tests::pair::bin;

/// The lab with the drill's echo services on port 8080 (TCP and UDP, both VIPs, mh, DR).
fn drill_lab(tag: &str) -> Pair {
    let mut p = Pair::new(tag, false);
    for rs in p.rs.clone() {
        // The lab put the VIPs on lo already: --vip-on-lo checks the ARP settings and keeps them.
        let idx = p
            .lab
            .spawn(
                &rs,
                &bin(fulcrum_tests::fulcrum_bin()),
                &[
                    "drill",
                    "serve",
                    "--name",
                    &rs.name,
                    "--listen",
                    "[::]:8080",
                    "--vip-on-lo",
                    VIP4,
                    "--vip-on-lo",
                    VIP6,
                ],
            )
            .unwrap();
        let line = p.lab.read_line(idx).unwrap();
        assert!(line.contains("answering as"), "drill serve: {line:?}");
    }
    let mut cfg = format!(
        "[[vip_group]]\nname = \"web\"\nvips = [\"{VIP4}\", \"{VIP6}\"]\ninterface = \"eth0\"\npreferred_owner = 1\n"
    );
    for (proto, vip, reals) in [
        (
            "tcp",
            VIP4.to_string(),
            ["192.0.2.33:8080", "192.0.2.34:8080"],
        ),
        (
            "udp",
            VIP4.to_string(),
            ["192.0.2.33:8080", "192.0.2.34:8080"],
        ),
        (
            "tcp",
            format!("[{VIP6}]"),
            ["[2001:db8::21]:8080", "[2001:db8::22]:8080"],
        ),
        (
            "udp",
            format!("[{VIP6}]"),
            ["[2001:db8::21]:8080", "[2001:db8::22]:8080"],
        ),
    ] {
        cfg.push_str(&format!(
            "\n[[service]]\nkey = \"{proto}/{vip}:8080\"\nscheduler = \"mh\"\nvip_group = \"web\"\n"
        ));
        for r in reals {
            cfg.push_str(&format!("[[service.real]]\naddress = \"{r}\"\n"));
        }
    }
    let path =
        std::env::temp_dir().join(format!("fulcrum-drill-{tag}-{}.toml", std::process::id()));
    std::fs::write(&path, cfg).unwrap();
    let o = p.cli(3, &["apply", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The new services answer through both VIPs before any drill starts.
    p.wait_for(Duration::from_secs(15), "replies on port 8080", |p| {
        p.probe_ok(&format!("{VIP4}:8080")) && p.probe_ok(&format!("[{VIP6}]:8080"))
    });
    p
}

/// `fulcrum --json drill ARGS` from the client, through node `via`; its report.
fn drill(p: &Pair, via: u64, args: &[&str]) -> (Output, serde_json::Value) {
    let t = Instant::now();
    let o = p
        .client
        .command(&bin(fulcrum_tests::fulcrum_bin()))
        .args(["--server", &p.addr(via), "--json", "drill"])
        .args(args)
        .output()
        .unwrap();
    eprintln!(
        "fulcrum drill {} took {:.1} s",
        args.join(" "),
        t.elapsed().as_secs_f64()
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "drill printed no report ({e}); exit {:?}\nstdout: {}\nstderr: {}\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            p.logs()
        )
    });
    if let Some(e) = report.get("error") {
        panic!("drill failed: {e}\n{}", p.logs());
    }
    (o, report)
}

fn check_report(p: &Pair, o: &Output, r: &serde_json::Value, trigger: &str, from: u64, to: u64) {
    let summary = format!(
        "{trigger}: takeover {} ms, broken {}, max stall {} ms, before {} after {}",
        r["takeover_ms"], r["broken"], r["max_stall_ms"], r["before"], r["after"]
    );
    eprintln!("{summary}");
    let flows = r["per_flow"].as_array().unwrap();
    for f in flows {
        eprintln!(
            "  flow {} {} {} -> {}: recovered {} ms, longest stall {} ms",
            f["flow"],
            f["proto"],
            f["target"],
            f["server"],
            f["recovered_ms"],
            f["longest_stall_ms"]
        );
    }
    let broken: Vec<&serde_json::Value> = flows.iter().filter(|f| f["broken"] == true).collect();
    assert!(
        broken.is_empty() && r["passed"] == true && o.status.success(),
        "{summary}\nbroken flows: {broken:#?}\nexit {:?}\n{}",
        o.status.code(),
        p.logs()
    );
    assert_eq!(r["trigger"], trigger);
    assert_eq!(r["before"]["node"], from);
    assert_eq!(r["after"]["node"], to);
    assert!(r["takeover_ms"].as_f64().is_some());
    // TCP and UDP, IPv4 and IPv6, every flow answered throughout.
    for (proto, v6) in [("tcp", false), ("tcp", true), ("udp", false), ("udp", true)] {
        assert!(
            flows.iter().any(
                |f| f["proto"] == proto && f["target"].as_str().unwrap().starts_with('[') == v6
            ),
            "no {proto} flow over IPv{}",
            if v6 { 6 } else { 4 }
        );
    }
    for f in flows {
        assert!(f["replies"].as_u64().unwrap() > 50, "{f}");
    }
    // The owner forwarded the flows before the event: they were in its connection table.
    assert_eq!(
        r["before"]["flows_in_table"],
        flows.len(),
        "{}",
        r["before"]
    );
}

/// A planned move, then an unplanned loss of the new owner (killed through the API), from the
/// client: every flow survives both and the report names the directors.
#[test]
fn drill_move_then_kill_in_the_lab() {
    let p = drill_lab("dri");
    let common = [
        "--flows",
        "8",
        "--rate",
        "50",
        "--duration",
        "6",
        "--warmup",
        "2",
    ];

    let mut args = vec!["--move", "--to", "2"];
    args.extend(common);
    let (o, r) = drill(&p, 3, &args);
    check_report(&p, &o, &r, "move", 1, 2);
    assert_eq!(p.owner(3), Some(2));

    let mut args = vec!["--kill", "--yes-kill-the-owner"];
    args.extend(common);
    // Through the owner itself: the drill watches the takeover from another node.
    let (o, r) = drill(&p, 2, &args);
    check_report(&p, &o, &r, "kill", 2, 1);
    // The killed director is gone for good (nothing restarts it here), the other owns the group.
    assert_eq!(p.owner(3), Some(1));
    assert!(p.status(2).is_none(), "node 2 still answers");
}

/// The node decides whether a drill may kill it, and checks that it is the node meant; the
/// CLI wants the kill confirmed before it talks to anyone.
#[tokio::test]
async fn kill_needs_the_nodes_consent_and_the_right_id() {
    let mut c = TestCluster::start(1, Default::default()).await.unwrap();
    let mut client = c.nodes[0].cluster().await.unwrap();
    let kill = |node_id, check| pb::KillRequest {
        node_id,
        reason: "test".into(),
        check,
    };
    let e = client.kill(kill(1, true)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("allow_kill"), "{e}");
    let e = client.kill(kill(1, false)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(c.nodes[0].is_running());

    // Allowed now.
    c.nodes[0].stop();
    let cfg = std::fs::read_to_string(&c.nodes[0].config_path).unwrap();
    std::fs::write(
        &c.nodes[0].config_path,
        format!("{cfg}\n[drill]\nallow_kill = true\n"),
    )
    .unwrap();
    c.nodes[0].start(&[]).unwrap();
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let mut client = c.nodes[0].cluster().await.unwrap();
    let e = client.kill(kill(7, false)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    client.kill(kill(1, true)).await.unwrap();
    assert!(c.nodes[0].is_running(), "a check must not kill");
    let e = client.kill(kill(1, false)).await.unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
        ),
        "{e}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.nodes[0].is_running() {
        assert!(Instant::now() < deadline, "node 1 did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        c.nodes[0]
            .log()
            .contains("exiting now for a failover drill")
    );

    // The CLI asks for the confirmation before it reaches out.
    let o = fulcrum_tests::cli(&c.nodes[0].addr, &["drill", "--kill"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--yes-kill-the-owner"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
