//! VIP failover drills: two directors and a witness (three real `fulcrumd`), a client and two
//! DR real servers on one L2 segment, an IPv4 and an IPv6 VIP in one group. An independent
//! observer on the switch records every frame that claims a VIP; the checks are that service
//! resumes and that two directors never claim a VIP at overlapping times.

use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use fulcrum_tests::drill;
use fulcrum_tests::drill::BridgeBlock;
use fulcrum_tests::drill::Observer;
use fulcrum_tests::drill::Pinger;
use fulcrum_tests::drill::mono_us;
use fulcrum_tests::netns::Host;
use fulcrum_tests::netns::Lab;

const VIP4: &str = "192.0.2.100";
const VIP6: &str = "2001:db8::100";

fn bin(p: PathBuf) -> String {
    p.to_str().unwrap().to_string()
}

struct Pair {
    lab: Lab,
    client: Host,
    dirs: Vec<Host>,
    wit: Host,
    procs: Vec<Option<usize>>,
    tmp: tempfile::TempDir,
}

impl Pair {
    /// client .10, directors .11/.12 (ids 1, 2), witness .13 (id 3), real servers .33/.34.
    fn new(tag: &str, preempt: bool) -> Pair {
        assert!(
            drill::nft_available(),
            "nft not found: install nftables (.ci/run does)"
        );
        let mut lab = Lab::new(tag).unwrap();
        let client = lab.host("client", 10).unwrap();
        let dirs = vec![lab.host("dir1", 11).unwrap(), lab.host("dir2", 12).unwrap()];
        let wit = lab.host("wit", 13).unwrap();
        let rs = [
            lab.host("rs1", 0x21).unwrap(),
            lab.host("rs2", 0x22).unwrap(),
        ];
        for (i, r) in rs.iter().enumerate() {
            r.sh(&format!(
                "sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 && \
                 ip addr add {VIP4}/32 dev lo && ip -6 addr add {VIP6}/128 dev lo"
            ))
            .unwrap();
            let name = format!("rs{}", i + 1);
            let (u4, u6) = (format!("{VIP4}:53"), format!("[{VIP6}]:53"));
            let idx = lab
                .spawn(
                    r,
                    &bin(fulcrum_tests::testsrv_bin()),
                    &[
                        "serve", "--name", &name, "--tcp", "[::]:80", "--udp", &u4, "--udp", &u6,
                    ],
                )
                .unwrap();
            assert_eq!(lab.read_line(idx).unwrap().trim(), "ready");
        }
        for d in &dirs {
            d.sh("sysctl -qw net.ipv4.ip_forward=0 net.ipv4.conf.all.forwarding=0 net.ipv6.conf.all.forwarding=0")
                .unwrap();
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut pair = Pair {
            lab,
            client,
            dirs,
            wit,
            procs: vec![None; 3],
            tmp,
        };
        for id in 1..=3 {
            pair.write_config(id);
            pair.start(id);
        }
        pair.wait_for(Duration::from_secs(20), "a leader", |p| {
            p.status(3)
                .is_some_and(|s| s["leader_id"].as_u64().is_some())
        });
        let cfg = pair.tmp.path().join("cluster.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"
[[vip_group]]
name = "web"
vips = ["{VIP4}", "{VIP6}"]
interface = "eth0"
preferred_owner = 1
preempt = {preempt}

[[service]]
key = "udp/{VIP4}:53"
scheduler = "mh"
vip_group = "web"
[[service.real]]
address = "192.0.2.33:53"
[[service.real]]
address = "192.0.2.34:53"

[[service]]
key = "udp/[{VIP6}]:53"
scheduler = "mh"
vip_group = "web"
[[service.real]]
address = "[2001:db8::21]:53"
[[service.real]]
address = "[2001:db8::22]:53"
"#
            ),
        )
        .unwrap();
        let o = pair.cli(3, &["apply", "-f", cfg.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        pair.wait_for(Duration::from_secs(20), "director 1 to own the VIPs", |p| {
            p.state_here(1) == "master"
        });
        // Service through the VIPs works before any drill starts.
        pair.wait_for(Duration::from_secs(15), "replies through the VIPs", |p| {
            p.probe_ok(&format!("{VIP4}:53")) && p.probe_ok(&format!("[{VIP6}]:53"))
        });
        pair
    }

    fn addr(&self, id: u64) -> String {
        match id {
            1 | 2 => format!("{}:7070", self.dirs[id as usize - 1].ip4),
            _ => format!("{}:7070", self.wit.ip4),
        }
    }

    fn host(&self, id: u64) -> &Host {
        match id {
            1 | 2 => &self.dirs[id as usize - 1],
            _ => &self.wit,
        }
    }

    fn write_config(&self, id: u64) {
        let mut text = format!(
            "id = {id}\nlisten = \"{}\"\ndata_dir = \"{}\"\n",
            self.addr(id),
            self.tmp.path().join(format!("data{id}")).display()
        );
        if id == 3 {
            text.push_str("role = \"witness\"\n");
        }
        if id == 1 {
            text.push_str(&format!(
                "[bootstrap]\nmembers = [{{ id = 1, addr = \"{}\" }}, {{ id = 2, addr = \"{}\" }}, {{ id = 3, addr = \"{}\", role = \"witness\" }}]\n",
                self.addr(1),
                self.addr(2),
                self.addr(3)
            ));
        }
        if id != 3 {
            text.push_str("[engine]\ninterface = \"eth0\"\n");
        }
        text.push_str("[vip]\npreempt_delay_ms = 500\n");
        // keepalived-style notify hook: records its arguments.
        let hook = self.tmp.path().join(format!("notify{id}.sh"));
        let out = self.tmp.path().join(format!("notify{id}.out"));
        std::fs::write(
            &hook,
            format!("#!/bin/sh\necho \"$1 $2 $3\" >> {}\n", out.display()),
        )
        .unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        text.push_str(&format!("notify = \"{}\"\n", hook.display()));
        std::fs::write(self.tmp.path().join(format!("node{id}.toml")), text).unwrap();
    }

    fn start(&mut self, id: u64) {
        let host = self.host(id).clone();
        let cfg = self.tmp.path().join(format!("node{id}.toml"));
        let log = self.tmp.path().join(format!("node{id}.log"));
        let idx = self
            .lab
            .spawn_logged(
                &host,
                &bin(fulcrum_tests::fulcrumd_bin()),
                &["--config", cfg.to_str().unwrap()],
                &log,
            )
            .unwrap();
        self.procs[id as usize - 1] = Some(idx);
    }

    fn kill(&mut self, id: u64) {
        if let Some(idx) = self.procs[id as usize - 1].take() {
            self.lab.kill(idx);
        }
    }

    /// The nodes' log lines about VIPs, leadership and errors (the rest is noise here).
    fn logs(&self) -> String {
        // Whole logs kept for a post-mortem; the message carries the interesting lines.
        let keep = std::env::temp_dir().join(format!("fulcrum-drill-{}", self.lab.prefix));
        if std::fs::create_dir_all(&keep).is_ok() {
            for id in 1..=3 {
                let _ = std::fs::copy(
                    self.tmp.path().join(format!("node{id}.log")),
                    keep.join(format!("node{id}.log")),
                );
            }
        }
        (1..=3)
            .map(|id| {
                let t = std::fs::read_to_string(self.tmp.path().join(format!("node{id}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = t
                    .lines()
                    .filter(|l| {
                        (l.contains("vip")
                            || l.contains("leader")
                            || l.contains("ERROR")
                            || l.contains("engine"))
                            && !l.contains("update progress")
                    })
                    .collect();
                format!(
                    "--- node {id}\n{}",
                    lines[lines.len().saturating_sub(60)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `fulcrum` run from inside node `via`'s namespace against that node.
    fn cli(&self, via: u64, args: &[&str]) -> std::process::Output {
        self.host(via)
            .command(&bin(fulcrum_tests::fulcrum_bin()))
            .args(["--server", &self.addr(via), "--timeout", "3"])
            .args(args)
            .output()
            .unwrap()
    }

    fn status(&self, via: u64) -> Option<serde_json::Value> {
        let o = self.cli(via, &["--json", "cluster", "status"]);
        if !o.status.success() {
            return None;
        }
        serde_json::from_slice(&o.stdout).ok()
    }

    /// This node's own view of group "web": master or backup.
    fn state_here(&self, id: u64) -> String {
        self.status(id)
            .and_then(|s| s["vip_groups"][0]["state_here"].as_str().map(String::from))
            .unwrap_or_default()
    }

    fn owner(&self, via: u64) -> Option<u64> {
        self.status(via)
            .and_then(|s| s["vip_groups"][0]["owner"].as_u64())
    }

    fn probe_ok(&self, target: &str) -> bool {
        let o = self
            .client
            .command(&bin(fulcrum_tests::testsrv_bin()))
            .args([
                "probe",
                "--udp",
                target,
                "--count",
                "1",
                "--timeout-ms",
                "300",
            ])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&o.stdout).is_ok_and(|v| v["failed"] == 0)
    }

    fn wait_for(&self, timeout: Duration, what: &str, mut f: impl FnMut(&Pair) -> bool) {
        let deadline = Instant::now() + timeout;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What node `id`'s notify hook was called with, one call per line.
    fn notified(&self, id: u64) -> String {
        std::fs::read_to_string(self.tmp.path().join(format!("notify{id}.out"))).unwrap_or_default()
    }

    fn macs(&self) -> (String, String) {
        (self.dirs[0].mac.clone(), self.dirs[1].mac.clone())
    }
}

/// The claims seen follow `expected` in order (an owner that claimed before the observer
/// started may be missing at the front), and no two directors' claims ever interleave.
fn assert_owners(obs: &drill::Observation, expected: &[&str]) {
    for vip in [VIP4, VIP6] {
        let ip = vip.parse().unwrap();
        let seq = drill::owners_sequence(&obs.events, ip);
        let macs: Vec<&str> = seq.iter().map(|t| t.mac.as_str()).collect();
        let tail = &expected[expected.len() - macs.len().min(expected.len())..];
        assert!(
            macs.len() <= expected.len() && macs == tail,
            "{vip}: owners {macs:?}, expected (a tail of) {expected:?}\n{seq:?}"
        );
        if expected
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == expected.len()
        {
            let overlaps = drill::overlapping_owners(&obs.events, ip);
            assert!(
                overlaps.is_empty(),
                "{vip}: two owners at once: {overlaps:?}"
            );
        }
    }
    assert_eq!(
        obs.kernel_drops, 0,
        "the observer lost frames: its verdict would not be proof"
    );
}

/// SIGKILL the owner while the client sends UDP to both VIPs every 5 ms: service resumes on
/// the other director, and the observer never sees both claiming a VIP at once. The killed
/// director, restarted, rejoins as backup and claims nothing.
#[test]
fn killing_the_owner_moves_the_vips_and_a_restarted_owner_stays_quiet() {
    let mut p = Pair::new("fok", false);
    let (m1, m2) = p.macs();
    assert!(
        p.notified(1).contains("web backup master"),
        "hook on node 1: {:?}",
        p.notified(1)
    );
    // `fulcrum events` on the witness follows the move.
    let events = p
        .host(3)
        .command(&bin(fulcrum_tests::fulcrum_bin()))
        .args(["--server", &p.addr(3), "--json", "events", "--seconds", "4"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let obs = Observer::start(&p.lab, &[VIP4, VIP6], &[&m1, &m2], 20_000).unwrap();
    let p4 = Pinger::start(&p.client, "udp", &format!("{VIP4}:53"), 5, 5000).unwrap();
    let p6 = Pinger::start(&p.client, "udp", &format!("[{VIP6}]:53"), 5, 5000).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let t_kill = mono_us();
    p.kill(1);
    let r4 = p4.wait().unwrap();
    let r6 = p6.wait().unwrap();
    for (name, r) in [("v4", &r4), ("v6", &r6)] {
        assert!(
            r.tail_gap_ms < 500.0,
            "{name}: service did not resume: {:?}\n{}",
            r.raw,
            p.logs()
        );
        eprintln!(
            "{name}: outage around the kill {:?} ms (worst gap {:.1} ms)",
            r.gap_around(t_kill),
            r.worst_gap_ms()
        );
    }
    assert_eq!(p.owner(3), Some(2));
    p.wait_for(Duration::from_secs(5), "node 2's notify hook", |p| {
        p.notified(2).contains("web backup master")
    });
    let ev = events.wait_with_output().unwrap();
    let ev = String::from_utf8_lossy(&ev.stdout);
    assert!(
        ev.lines()
            .any(|l| l.contains("\"assigned\"") && l.contains("owner node 1 -> node 2")),
        "events: {ev}"
    );

    // The old owner comes back: it rejoins as backup and announces nothing (preempt is off).
    let t_restart = mono_us();
    p.start(1);
    p.wait_for(Duration::from_secs(20), "director 1 back as backup", |p| {
        p.state_here(1) == "backup"
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(p.owner(3), Some(2), "no fail-back without preempt");
    let o = obs.finish().unwrap();
    assert_owners(&o, &[&m1, &m2]);
    let after = o.window(o.at(t_restart), u64::MAX);
    assert!(
        after.iter().all(|e| e.owner() != m1),
        "the restarted director claimed a VIP: {:?}",
        after.iter().filter(|e| e.owner() == m1).collect::<Vec<_>>()
    );
}

/// Cut the owner off (its link stays up; the switch drops its frames): it stops answering
/// by itself when its lease runs out, and only then does the other director take over. After
/// healing: no flapping without preempt; an orderly fail-back with preempt.
#[test]
fn a_partitioned_owner_steps_down_by_itself_and_failback_follows_preempt() {
    for preempt in [false, true] {
        let p = Pair::new(if preempt { "fpp" } else { "fpn" }, preempt);
        let (m1, m2) = p.macs();
        let obs = Observer::start(&p.lab, &[VIP4, VIP6], &[&m1, &m2], 20_000).unwrap();
        let ping = Pinger::start(&p.client, "udp", &format!("{VIP4}:53"), 5, 4000).unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        let cut = BridgeBlock::isolate(&p.lab, &p.dirs[0]).unwrap();
        p.wait_for(Duration::from_secs(10), "director 2 to take over", |p| {
            p.state_here(2) == "master"
        });
        let r = ping.wait().unwrap();
        assert!(r.tail_gap_ms < 500.0, "service did not resume: {:?}", r.raw);
        let healed_at = mono_us();
        cut.remove().unwrap();
        if preempt {
            p.wait_for(Duration::from_secs(15), "fail-back to director 1", |p| {
                p.state_here(1) == "master"
            });
            std::thread::sleep(Duration::from_millis(500));
            let o = obs.finish().unwrap();
            assert_owners(&o, &[&m1, &m2, &m1]);
        } else {
            std::thread::sleep(Duration::from_secs(2));
            assert_eq!(p.owner(3), Some(2), "no fail-back without preempt");
            assert_eq!(p.state_here(1), "backup");
            let o = obs.finish().unwrap();
            assert_owners(&o, &[&m1, &m2]);
            let after = o.window(o.at(healed_at), u64::MAX);
            assert!(
                after.iter().all(|e| e.owner() != m1),
                "director 1 claimed after healing"
            );
        }
    }
}

/// A planned move: the old owner stops answering, then the new one announces; a client
/// sending every 20 ms loses nothing (the old owner keeps forwarding what still reaches it).
#[test]
fn planned_move_loses_no_packets() {
    let p = Pair::new("fmv", false);
    let (m1, m2) = p.macs();
    let obs = Observer::start(&p.lab, &[VIP4, VIP6], &[&m1, &m2], 20_000).unwrap();
    let p4 = Pinger::start_with(
        &p.client,
        "udp",
        &format!("{VIP4}:53"),
        20,
        3000,
        &["--timeout-ms", "2000"],
    )
    .unwrap();
    let p6 = Pinger::start_with(
        &p.client,
        "udp",
        &format!("[{VIP6}]:53"),
        20,
        3000,
        &["--timeout-ms", "2000"],
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let o = p.cli(3, &["vip", "move", "web", "--to", "2"]);
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        p.logs()
    );
    let r4 = p4.wait().unwrap();
    let r6 = p6.wait().unwrap();
    assert_eq!(p.owner(3), Some(2));
    for (name, r) in [("v4", &r4), ("v6", &r6)] {
        assert_eq!(
            r.raw["lost"], 0,
            "{name}: lost packets in a planned move: {:?}",
            r.raw
        );
        assert!(r.sent > 100);
    }
    let o = obs.finish().unwrap();
    assert_owners(&o, &[&m1, &m2]);
}
