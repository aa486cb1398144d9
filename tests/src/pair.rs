//! A director pair plus witness in a network-namespace lab, for failover drills and the
//! takeover benchmark: two directors and a witness (three real `fulcrumd`), a client and two
//! DR real servers on one L2 segment, an IPv4 and an IPv6 VIP in one group.

use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use crate::drill;
use crate::netns::Host;
use crate::netns::Lab;

pub const VIP4: &str = "192.0.2.100";
pub const VIP6: &str = "2001:db8::100";
/// Every node serves `/metrics` on this port of its own address.
pub const METRICS_PORT: u16 = 9470;

pub fn bin(p: PathBuf) -> String {
    p.to_str().unwrap().to_string()
}

pub struct Pair {
    pub lab: Lab,
    pub client: Host,
    pub dirs: Vec<Host>,
    pub wit: Host,
    /// The real servers (.33 and .34 in IPv4, ::21 and ::22 in IPv6).
    pub rs: Vec<Host>,
    procs: Vec<Option<usize>>,
    tmp: tempfile::TempDir,
    /// More `[vip]` settings for every node, one per line.
    vip_extra: String,
}

impl Pair {
    /// client .10, directors .11/.12 (ids 1, 2), witness .13 (id 3), real servers .33/.34.
    pub fn new(tag: &str, preempt: bool) -> Pair {
        Pair::with_vip(tag, preempt, "")
    }

    /// As [`Pair::new`], with more `[vip]` settings (timers) for every node; the text may go
    /// on with further sections (`[sync]`).
    pub fn with_vip(tag: &str, preempt: bool, vip_extra: &str) -> Pair {
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
                    &bin(crate::testsrv_bin()),
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
            rs: rs.to_vec(),
            procs: vec![None; 3],
            tmp,
            vip_extra: vip_extra.to_string(),
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

    pub fn addr(&self, id: u64) -> String {
        match id {
            1 | 2 => format!("{}:7070", self.dirs[id as usize - 1].ip4),
            _ => format!("{}:7070", self.wit.ip4),
        }
    }

    /// Where node `id` serves `/metrics`, inside its namespace.
    pub fn metrics_addr(&self, id: u64) -> String {
        format!("{}:{METRICS_PORT}", self.host(id).ip4)
    }

    pub fn host(&self, id: u64) -> &Host {
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
        text.push_str(&format!(
            "[metrics]\nlisten = \"{}\"\n",
            self.metrics_addr(id)
        ));
        // Labs let `fulcrum drill --kill` crash their nodes through the API.
        text.push_str("[drill]\nallow_kill = true\n");
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
        // Last: it may open further sections.
        text.push_str(&self.vip_extra);
        text.push('\n');
        std::fs::write(self.tmp.path().join(format!("node{id}.toml")), text).unwrap();
    }

    pub fn start(&mut self, id: u64) {
        let host = self.host(id).clone();
        let cfg = self.tmp.path().join(format!("node{id}.toml"));
        let log = self.tmp.path().join(format!("node{id}.log"));
        let idx = self
            .lab
            .spawn_logged(
                &host,
                &bin(crate::fulcrumd_bin()),
                &["--config", cfg.to_str().unwrap()],
                &log,
            )
            .unwrap();
        self.procs[id as usize - 1] = Some(idx);
    }

    pub fn kill(&mut self, id: u64) {
        if let Some(idx) = self.procs[id as usize - 1].take() {
            self.lab.kill(idx);
        }
    }

    /// The nodes' log lines about VIPs, leadership and errors (the rest is noise here).
    pub fn logs(&self) -> String {
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
    pub fn cli(&self, via: u64, args: &[&str]) -> std::process::Output {
        self.host(via)
            .command(&bin(crate::fulcrum_bin()))
            .args(["--server", &self.addr(via), "--timeout", "3"])
            .args(args)
            .output()
            .unwrap()
    }

    pub fn status(&self, via: u64) -> Option<serde_json::Value> {
        let o = self.cli(via, &["--json", "cluster", "status"]);
        if !o.status.success() {
            return None;
        }
        serde_json::from_slice(&o.stdout).ok()
    }

    /// This node's own view of group "web": master or backup.
    pub fn state_here(&self, id: u64) -> String {
        self.status(id)
            .and_then(|s| s["vip_groups"][0]["state_here"].as_str().map(String::from))
            .unwrap_or_default()
    }

    pub fn owner(&self, via: u64) -> Option<u64> {
        self.status(via)
            .and_then(|s| s["vip_groups"][0]["owner"].as_u64())
    }

    pub fn probe_ok(&self, target: &str) -> bool {
        let o = self
            .client
            .command(&bin(crate::testsrv_bin()))
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

    pub fn wait_for(&self, timeout: Duration, what: &str, mut f: impl FnMut(&Pair) -> bool) {
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
    pub fn notified(&self, id: u64) -> String {
        std::fs::read_to_string(self.tmp.path().join(format!("notify{id}.out"))).unwrap_or_default()
    }

    pub fn macs(&self) -> (String, String) {
        (self.dirs[0].mac.clone(), self.dirs[1].mac.clone())
    }
}
