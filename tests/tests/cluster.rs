//! End to end: real `fulcrumd` processes on loopback, driven through the real CLI and API.

use std::time::Duration;
use std::time::Instant;

use fulcrum_proto::v1 as pb;
use fulcrum_tests::NodeOpts;
use fulcrum_tests::TestCluster;
use fulcrum_tests::stderr;
use fulcrum_tests::stdout;

const T: Duration = Duration::from_secs(20);

fn service_names(c: &pb::ClusterConfig) -> Vec<String> {
    c.services.iter().map(|s| s.key.clone()).collect()
}

/// A change made through any node is visible on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_changes_made_through_any_node() {
    let mut c = TestCluster::start(3, NodeOpts::default()).await.unwrap();
    let leader = c.wait_leader(T).await.unwrap();
    let follower = (1..=3).find(|id| *id != leader).unwrap();

    // Through a follower: the write is forwarded to the leader.
    let o = c
        .node(follower)
        .cli(&["service", "add", "-t", "192.0.2.1:80", "-s", "rr"]);
    assert!(o.status.success(), "service add failed: {}", stderr(&o));
    assert!(
        stdout(&o).contains("+ service tcp/192.0.2.1:80"),
        "{}",
        stdout(&o)
    );
    let o = c.node(leader).cli(&[
        "real",
        "add",
        "tcp/192.0.2.1:80",
        "-r",
        "198.51.100.10:80",
        "-w",
        "3",
        "-m",
    ]);
    assert!(o.status.success(), "real add failed: {}", stderr(&o));

    let index = c.status(leader).await.unwrap().applied_index;
    for id in 1..=3 {
        c.wait_applied(id, index, T).await.unwrap();
        let cfg = c.export_local(id).await.unwrap();
        assert_eq!(service_names(&cfg), vec!["tcp/192.0.2.1:80"], "node {id}");
        let real = &cfg.services[0].reals[0];
        assert_eq!(
            (real.address.as_str(), real.weight, real.forward.as_str()),
            ("198.51.100.10:80", 3, "nat")
        );
    }

    // A linearizable read through a follower sees a write made through another node at once.
    let other = (1..=3).find(|id| *id != leader && *id != follower).unwrap();
    let o = c.node(other).cli(&[
        "service",
        "add",
        "-u",
        "[2001:db8::1]:53",
        "-s",
        "sh",
        "-b",
        "sh-port",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = c
        .node(follower)
        .cli(&["--json", "service", "show", "udp/[2001:db8::1]:53"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["scheduler"], "sh");
    assert_eq!(v["scheduler_flags"][0], "sh-port");

    // Status shows every member healthy from the leader's point of view.
    let s = c.status(leader).await.unwrap();
    assert_eq!(s.members.len(), 3);
    assert!(s.members.iter().all(|m| m.voter));
    for p in &s.peers {
        assert!(
            p.state == "ok" || p.state == "self",
            "peer {} is {}",
            p.id,
            p.state
        );
    }
}

/// SIGKILL the leader: a new one is elected and writes succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_a_new_one() {
    let mut c = TestCluster::start(3, NodeOpts::default()).await.unwrap();
    let old = c.wait_leader(T).await.unwrap();
    let survivor = (1..=3).find(|id| *id != old).unwrap();
    let o = c
        .node(survivor)
        .cli(&["service", "add", "tcp/192.0.2.1:443"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let killed_at = Instant::now();
    c.node(old).kill();
    // Keep writing through a survivor until one succeeds: that is the outage a user sees.
    let mut n = 0;
    let recovered = loop {
        n += 1;
        let key = format!("tcp/192.0.2.2:{}", 1000 + n);
        let o = c
            .node(survivor)
            .cli(&["--timeout", "2", "service", "add", &key]);
        if o.status.success() {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < T,
            "no write succeeded within {T:?}: {}",
            stderr(&o)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let new = c.wait_leader(T).await.unwrap();
    assert_ne!(new, old);
    // Recorded, not asserted: timing belongs in BENCHMARKS.md.
    eprintln!(
        "write availability restored {recovered:?} after SIGKILL of leader {old}; new leader {new}"
    );

    // The old leader comes back as a follower and catches up.
    c.node(old).start(&[]).unwrap();
    let index = c.status(new).await.unwrap().applied_index;
    c.wait_applied(old, index, T).await.unwrap();
    let cfg = c.export_local(old).await.unwrap();
    assert!(service_names(&cfg).contains(&"tcp/192.0.2.1:443".to_string()));
}

/// Stop everything, start again: the configuration is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_of_the_whole_cluster_keeps_the_config() {
    let mut c = TestCluster::start(3, NodeOpts::default()).await.unwrap();
    let leader = c.wait_leader(T).await.unwrap();
    let file = c.dir.path().join("cluster.toml");
    std::fs::write(&file, EXAMPLE).unwrap();
    let o = c.node(leader).cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = c.export_local(leader).await.unwrap();
    assert_eq!(before.services.len(), 3);

    for id in 1..=3 {
        assert_eq!(
            c.node(id).stop(),
            Some(0),
            "node {id} did not exit cleanly on SIGTERM:\n{}",
            c.node(id).log()
        );
    }
    for id in 1..=3 {
        c.node(id).start(&[]).unwrap();
    }
    let leader = c.wait_leader(T).await.unwrap();
    let o = c.node(leader).cli(&["export"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for id in 1..=3 {
        let o = c.node(id).cli(&["--json", "export"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let after = c.export_local(id).await.unwrap();
        assert_eq!(after, before, "node {id} lost configuration across restart");
    }
}

/// A node whose data dir is wiped rejoins and catches up from a snapshot (its log was purged
/// on the leader), and a dead member can be replaced by a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_node_catches_up_from_a_snapshot_and_dead_member_is_replaced() {
    let opts = NodeOpts {
        snapshot_every: Some(10),
        keep_after_snapshot: Some(0),
        ..NodeOpts::default()
    };
    let mut c = TestCluster::start(3, opts).await.unwrap();
    let leader = c.wait_leader(T).await.unwrap();
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    c.node(victim).kill();
    for i in 0..30 {
        let key = format!("tcp/192.0.2.3:{}", 2000 + i);
        let o = c.node(leader).cli(&["service", "add", &key]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let s = c.status(leader).await.unwrap();
    assert!(
        s.purged_index.is_some(),
        "leader never purged its log: {s:?}"
    );

    std::fs::remove_dir_all(&c.node(victim).data_dir).unwrap();
    let join = c.node(leader).addr.clone();
    c.node(victim).start(&["--join", &join]).unwrap();
    if let Err(e) = c.wait_applied(victim, s.applied_index, T).await {
        panic!(
            "{e}\n--- victim\n{}\n--- leader\n{}",
            c.node(victim).log(),
            c.node(leader).log()
        );
    }
    let vs = c.status(victim).await.unwrap();
    assert!(
        vs.snapshot_index.is_some(),
        "rejoined node should have installed a snapshot: {vs:?}"
    );
    assert_eq!(
        c.export_local(victim).await.unwrap(),
        c.export_local(leader).await.unwrap()
    );

    // Replace the victim by a brand-new node 4 on another port.
    c.node(victim).kill();
    let o = c
        .node(leader)
        .cli(&["cluster", "leave", &victim.to_string()]);
    assert!(
        o.status.success(),
        "{}\n{}",
        stderr(&o),
        c.node(leader).log()
    );
    let port = fulcrum_tests::free_port();
    let dir4 = c.dir.path().join("node4");
    let mut n4 = std::process::Command::new(fulcrum_tests::fulcrumd_bin())
        .args(["--id", "4", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&dir4)
        .args(["--join", &join])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + T;
    let members = loop {
        let o = c.node(leader).cli(&["--json", "cluster", "members"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let ids: Vec<u64> = v["members"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|m| m["voter"] == true)
                    .filter_map(|m| m["id"].as_u64())
                    .collect()
            })
            .unwrap_or_default();
        if ids.contains(&4) || Instant::now() > deadline {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = n4.kill();
    let _ = n4.wait();
    assert!(
        members.contains(&4) && !members.contains(&victim),
        "members: {members:?}"
    );
}

const EXAMPLE: &str = r#"
[[vip_group]]
name = "web"
vips = ["192.0.2.100", "2001:db8::100"]
interface = "eth0"

[[service]]
key = "tcp/192.0.2.100:80"
scheduler = "wlc"
vip_group = "web"

[[service.real]]
address = "198.51.100.10:80"
weight = 2
forward = "dr"

[[service.real]]
address = "198.51.100.11:80"

[[service]]
key = "tcp/[2001:db8::100]:443"
scheduler = "mh"
flags = ["mh-port"]
persistence_timeout = 300
persistence_prefix = 64
vip_group = "web"

[[service.real]]
address = "[2001:db8:1::10]:443"
forward = "nat"

[[service]]
key = "fwmark/7"
scheduler = "rr"
"#;

/// Bad commands and files are refused with a precise message, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_rejected_and_changes_nothing() {
    let mut c = TestCluster::start(3, NodeOpts::default()).await.unwrap();
    let leader = c.wait_leader(T).await.unwrap();
    let n = c.node(leader);
    assert!(
        n.cli(&["service", "add", "tcp/192.0.2.1:80"])
            .status
            .success()
    );
    let before = c.export_local(leader).await.unwrap();

    let cases: &[(&[&str], &str)] = &[
        (&["service", "add", "tcp/192.0.2.1:80"], "already exists"),
        (
            &["service", "add", "tcp/192.0.2.9:80", "-s", "fastest"],
            "fastest",
        ),
        (&["service", "add", "tcp/192.0.2.9:0"], "persistence"),
        (
            &[
                "service",
                "add",
                "tcp/192.0.2.9:81",
                "-s",
                "rr",
                "-b",
                "sh-port",
            ],
            "sh-port",
        ),
        (
            &[
                "real",
                "add",
                "tcp/192.0.2.1:80",
                "-r",
                "198.51.100.1:80",
                "-w",
                "70000",
            ],
            "65535",
        ),
        (
            &[
                "real",
                "add",
                "tcp/192.0.2.1:80",
                "-r",
                "[2001:db8::5]:80",
                "-g",
            ],
            "needs forward = tun",
        ),
        (
            &["real", "add", "tcp/192.0.2.77:80", "-r", "198.51.100.1:80"],
            "no such service",
        ),
        (
            &["service", "delete", "tcp/192.0.2.77:80"],
            "no such service",
        ),
        (&["service", "add", "tcp/192.0.2.300:80"], "192.0.2.300"),
        (
            &[
                "vip-group",
                "add",
                "g",
                "--vip",
                "192.0.2.50",
                "--interface",
                "this-name-is-too-long",
            ],
            "interface",
        ),
    ];
    let existing = c.node(leader).addr.clone();
    let join_args = ["cluster", "join", "--id", "2", "--addr", existing.as_str()];
    let o = c.node(leader).cli(&join_args);
    assert!(
        !o.status.success(),
        "joining an existing id without --replace must fail"
    );
    assert!(stderr(&o).contains("already"), "{}", stderr(&o));
    let c_ref = &mut c;
    for (args, needle) in cases {
        let o = c_ref.node(leader).cli(args);
        assert!(!o.status.success(), "{args:?} should fail");
        let err = stderr(&o);
        assert!(
            err.to_lowercase().contains(&needle.to_lowercase()),
            "{args:?}: error {err:?} should mention {needle:?}"
        );
    }

    // Declarative files: unknown key, bad address, duplicate real.
    let dir = c.dir.path().to_path_buf();
    let files = [
        (
            "unknown.toml",
            "[[service]]\nkey = \"tcp/192.0.2.1:80\"\nschedular = \"rr\"\n",
            "schedular",
        ),
        (
            "dup.toml",
            "[[service]]\nkey = \"tcp/192.0.2.1:80\"\n[[service.real]]\naddress = \"198.51.100.1:80\"\n[[service.real]]\naddress = \"198.51.100.1:80\"\n",
            "198.51.100.1:80",
        ),
        ("syntax.toml", "[[service]\n", "toml"),
    ];
    for (name, text, needle) in files {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        let o = c.node(leader).cli(&["apply", "-f", p.to_str().unwrap()]);
        assert!(!o.status.success(), "{name} should be rejected");
        let err = stderr(&o);
        assert!(
            err.to_lowercase().contains(&needle.to_lowercase()),
            "{name}: {err}"
        );
    }

    let after = c.export_local(leader).await.unwrap();
    assert_eq!(after, before, "a rejected command changed the state");

    // A node config with an unknown key: fulcrumd refuses to start, saying which key.
    let bad = dir.join("bad-node.toml");
    std::fs::write(
        &bad,
        "id = 9\ndata_dir = \"/tmp/none\"\nlisten_address = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let o = std::process::Command::new(fulcrum_tests::fulcrumd_bin())
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("listen_address"), "{}", stderr(&o));
}

/// `apply` then `export` round-trips; `--dry-run` prints the diff and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_export_round_trip_and_dry_run() {
    let mut c = TestCluster::start(3, NodeOpts::default()).await.unwrap();
    let leader = c.wait_leader(T).await.unwrap();
    let dir = c.dir.path().to_path_buf();
    let file = dir.join("cluster.toml");
    std::fs::write(&file, EXAMPLE).unwrap();

    let o = c
        .node(leader)
        .cli(&["apply", "--dry-run", "-f", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("+ service tcp/192.0.2.100:80"), "{out}");
    assert!(out.contains("dry run"), "{out}");
    assert!(
        c.export_local(leader).await.unwrap().services.is_empty(),
        "dry run changed state"
    );

    let o = c.node(leader).cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = c.node(leader).cli(&["export"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let exported = stdout(&o);
    let again = dir.join("exported.toml");
    std::fs::write(&again, &exported).unwrap();

    // Applying the export is a no-op.
    let o = c
        .node(leader)
        .cli(&["--json", "apply", "-f", again.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["changes"].as_array().map(|a| a.len()),
        Some(0),
        "export did not round-trip: {v}"
    );

    // Changing one weight in the file yields exactly one change.
    let edited = exported.replacen("weight = 2", "weight = 5", 1);
    assert_ne!(edited, exported);
    std::fs::write(&again, &edited).unwrap();
    let o = c.node(leader).cli(&[
        "--json",
        "apply",
        "--dry-run",
        "-f",
        again.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let changes = v["changes"].as_array().cloned().unwrap_or_default();
    assert_eq!(changes.len(), 1, "{v}");
    assert_eq!(changes[0]["object"], "real");
    assert!(
        changes[0]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("2 -> 5"),
        "{v}"
    );
}

/// A witness votes: with one director down, director + witness still commit writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witness_keeps_a_director_pair_writable() {
    let opts = NodeOpts {
        witness: true,
        ..NodeOpts::default()
    };
    let mut c = TestCluster::start(3, opts).await.unwrap();
    let s = c.status(1).await.unwrap();
    let roles: Vec<(u64, String)> = s.members.iter().map(|m| (m.id, m.role.clone())).collect();
    assert_eq!(
        roles,
        vec![
            (1, "director".into()),
            (2, "director".into()),
            (3, "witness".into())
        ]
    );

    // A witness can never be a VIP group's preferred owner.
    let o = c.node(1).cli(&[
        "vip-group",
        "add",
        "g",
        "--vip",
        "192.0.2.10",
        "--interface",
        "eth0",
        "--preferred-owner",
        "3",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("witness"), "{}", stderr(&o));

    let leader = c.wait_leader(T).await.unwrap();
    let director_to_kill = if leader == 3 { 1 } else { leader };
    c.node(director_to_kill).kill();
    let survivor = if director_to_kill == 1 { 2 } else { 1 };
    let deadline = Instant::now() + T;
    loop {
        let o = c
            .node(survivor)
            .cli(&["--timeout", "2", "service", "add", "tcp/192.0.2.10:80"]);
        if o.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pair + witness not writable: {}",
            stderr(&o)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The API answers with gRPC codes a client can act on, and `Watch` streams applied changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_error_codes_and_watch_stream() {
    let mut c = TestCluster::start(3, NodeOpts::default()).await.unwrap();
    let leader = c.wait_leader(T).await.unwrap();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let mut api = c.node(follower).config().await.unwrap();
    let mut watch = api.watch(pb::WatchRequest {}).await.unwrap().into_inner();

    let svc = pb::Service {
        key: "tcp/192.0.2.5:80".into(),
        scheduler: "wrr".into(),
        ..Default::default()
    };
    let r = api.add_service(svc.clone()).await.unwrap().into_inner();
    assert!(r.index > 0);
    let code = |r: Result<tonic::Response<pb::WriteReply>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(api.add_service(svc.clone()).await),
        tonic::Code::AlreadyExists
    );
    assert_eq!(
        code(
            api.delete_service(pb::ServiceKeyRequest {
                key: "tcp/192.0.2.6:80".into()
            })
            .await
        ),
        tonic::Code::NotFound
    );
    let bad = pb::Service {
        scheduler: "nope".into(),
        ..svc.clone()
    };
    assert_eq!(
        code(api.edit_service(bad).await),
        tonic::Code::InvalidArgument
    );
    let in_use = pb::Service {
        key: "tcp/192.0.2.7:80".into(),
        scheduler: "rr".into(),
        vip_group: "missing".into(),
        ..Default::default()
    };
    assert_eq!(
        code(api.add_service(in_use).await),
        tonic::Code::FailedPrecondition
    );

    // The watcher on the follower saw exactly the one successful change, with its index.
    let ev = tokio::time::timeout(T, watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.index, r.index);
    assert_eq!(ev.changes.len(), 1);
    assert_eq!(ev.changes[0].key, "tcp/192.0.2.5:80");
    assert_eq!(ev.changes[0].op, pb::ChangeOp::Add as i32);
    // A later change arrives as the next event (nothing from the rejected ones in between).
    api.delete_service(pb::ServiceKeyRequest {
        key: svc.key.clone(),
    })
    .await
    .unwrap();
    let ev = tokio::time::timeout(T, watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.changes[0].op, pb::ChangeOp::Remove as i32);
}

/// `fulcrum cluster transfer` hands leadership over; completions are generated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_transfer_and_completions() {
    let mut c = TestCluster::start(3, NodeOpts::default()).await.unwrap();
    let leader = c.wait_leader(T).await.unwrap();
    let target = (1..=3).find(|id| *id != leader).unwrap();
    let o = c
        .node(leader)
        .cli(&["cluster", "transfer", "--to", &target.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("leader is now node {target}")),
        "{}",
        stdout(&o)
    );
    assert_eq!(c.wait_leader(T).await.unwrap(), target);
    // Writes work under the new leader.
    let o = c.node(leader).cli(&["service", "add", "tcp/192.0.2.8:80"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Transfer to a non-member is refused.
    let o = c.node(target).cli(&["cluster", "transfer", "--to", "9"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a voter"), "{}", stderr(&o));

    let o = c.node(leader).cli(&["completions", "bash"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("fulcrum") && stdout(&o).contains("vip-group"));
}

/// A node killed mid-write whose log ends in a torn record comes back with every committed
/// entry: the torn tail is cut off, the rest is kept and the node catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_log_tail_after_a_crash_loses_no_committed_entry() {
    let mut c = TestCluster::start(3, NodeOpts::default()).await.unwrap();
    let leader = c.wait_leader(T).await.unwrap();
    for i in 0..10 {
        let key = format!("udp/192.0.2.9:{}", 5000 + i);
        assert!(
            c.node(leader)
                .cli(&["service", "add", &key])
                .status
                .success()
        );
    }
    let before = c.export_local(leader).await.unwrap();
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    let index = c.status(leader).await.unwrap().applied_index;
    c.wait_applied(victim, index, T).await.unwrap();
    c.node(victim).kill();

    // A crash in the middle of an append: a record header promising more bytes than follow.
    let seg = c.node(victim).data_dir.join("raft-log").join("log.seg");
    let committed_len = std::fs::metadata(&seg).unwrap().len();
    let mut torn = 4096u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&0xdead_beef_u32.to_le_bytes());
    torn.extend_from_slice(b"{\"log_id\":");
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, &torn).unwrap();
    drop(f);

    c.node(victim).start(&[]).unwrap();
    c.wait_applied(victim, index, T).await.unwrap();
    assert_eq!(c.export_local(victim).await.unwrap(), before);
    assert!(
        c.node(victim).log().contains("torn"),
        "the torn tail should be reported"
    );
    // The file was cut back to the last whole record before new appends went on.
    assert!(std::fs::metadata(&seg).unwrap().len() >= committed_len);
    assert!(
        c.node(leader)
            .cli(&["service", "add", "udp/192.0.2.9:6000"])
            .status
            .success()
    );
}
