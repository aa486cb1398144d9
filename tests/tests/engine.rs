//! The userspace forwarding engine end to end: a real `fulcrumd` with its engine on a
//! director in a network namespace, real kernel TCP/UDP stacks on the client and the real
//! servers, one L2 segment. DR, NAT and tunnel, IPv4 and IPv6, TCP and UDP.

use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use fulcrum_tests::netns::Host;
use fulcrum_tests::netns::Lab;

const VIP_DR: &str = "192.0.2.100";
const VIP_DR6: &str = "2001:db8::100";
const VIP_NAT: &str = "192.0.2.101";
const VIP_NAT6: &str = "2001:db8::101";
const VIP_TUN: &str = "192.0.2.102";
const VIP_TUN6: &str = "2001:db8::102";

struct Bed {
    lab: Lab,
    client: Host,
    dir: Host,
    rs: Vec<Host>,
    dir_log: PathBuf,
    _tmp: tempfile::TempDir,
}

fn bin(p: PathBuf) -> String {
    p.to_str().unwrap().to_string()
}

impl Bed {
    /// client .10, director .11, real servers .21/.22 (all dual-stack on one bridge).
    fn new(tag: &str) -> Bed {
        let mut lab = Lab::new(tag).unwrap();
        let client = lab.host("client", 10).unwrap();
        let dir = lab.host("dir", 11).unwrap();
        let rs = vec![
            lab.host("rs1", 0x21).unwrap(),
            lab.host("rs2", 0x22).unwrap(),
        ];
        let tmp = tempfile::tempdir().unwrap();
        for (i, r) in rs.iter().enumerate() {
            // DR: the VIPs on loopback, never answered for on the wire; replies from them go
            // straight to the client. NAT: replies from the server's own address go back
            // through the director (policy routing by source, as a NAT real server's default
            // route would do).
            r.sh(&format!(
                "sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 && \
                 ip addr add {VIP_DR}/32 dev lo && ip -6 addr add {VIP_DR6}/128 dev lo && \
                 ip rule add from {r4} lookup 100 && ip route add {c4}/32 via {d4} table 100 && \
                 ip -6 rule add from {r6} lookup 100 && ip -6 route add {c6}/128 via {d6} table 100",
                r4 = r.ip4,
                r6 = r.ip6,
                c4 = client.ip4,
                d4 = dir.ip4,
                c6 = client.ip6,
                d6 = dir.ip6
            ))
            .unwrap();
            let name = format!("rs{}", i + 1);
            // UDP answers come from the address asked: bind each one (a wildcard socket would
            // answer DR requests from the server's own address).
            let udp = [
                format!("{VIP_DR}:53"),
                format!("[{VIP_DR6}]:53"),
                format!("{}:53", r.ip4),
                format!("[{}]:53", r.ip6),
            ];
            let mut args = vec![
                "serve",
                "--name",
                &name,
                "--tcp",
                "[::]:80",
                "--tcp",
                "[::]:8080",
            ];
            for u in &udp {
                args.extend(["--udp", u.as_str()]);
            }
            let idx = lab
                .spawn(r, &bin(fulcrum_tests::testsrv_bin()), &args)
                .unwrap();
            assert_eq!(lab.read_line(idx).unwrap().trim(), "ready");
        }
        // The director must not route: the kernel then ignores VIP traffic it does not own.
        dir.sh(
            "sysctl -qw net.ipv4.ip_forward=0 net.ipv4.conf.all.forwarding=0 net.ipv4.conf.eth0.forwarding=0 \
             net.ipv6.conf.all.forwarding=0 net.ipv6.conf.eth0.forwarding=0",
        )
        .unwrap();
        let config = tmp.path().join("fulcrumd.toml");
        std::fs::write(
            &config,
            format!(
                "id = 1\nlisten = \"127.0.0.1:7070\"\ndata_dir = \"{}\"\n[bootstrap]\n[engine]\ninterface = \"eth0\"\n",
                tmp.path().join("data").display()
            ),
        )
        .unwrap();
        let dir_log = tmp.path().join("fulcrumd.log");
        lab.spawn_logged(
            &dir,
            &bin(fulcrum_tests::fulcrumd_bin()),
            &["--config", config.to_str().unwrap()],
            &dir_log,
        )
        .unwrap();
        let bed = Bed {
            lab,
            client,
            dir,
            rs,
            dir_log,
            _tmp: tmp,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let o = bed.cli(&["cluster", "status"]);
            if o.status.success() && String::from_utf8_lossy(&o.stdout).contains("leader") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "fulcrumd did not come up:\n{}",
                bed.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        bed
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.dir_log).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        self.dir
            .command(&bin(fulcrum_tests::fulcrum_bin()))
            .args(["--server", "127.0.0.1:7070"])
            .args(args)
            .output()
            .unwrap()
    }

    fn apply(&self, toml: &str) {
        let path = self._tmp.path().join("cluster.toml");
        std::fs::write(&path, toml).unwrap();
        let o = self.cli(&["apply", "-f", path.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "apply: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// `fulcrum-testsrv probe` from the client: which real server answered how often.
    fn probe(&self, kind: &str, target: &str, count: u32) -> serde_json::Value {
        let o = self
            .client
            .command(&bin(fulcrum_tests::testsrv_bin()))
            .args([
                "probe",
                kind,
                target,
                "--count",
                &count.to_string(),
                "--timeout-ms",
                "3000",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Probes until every flow is answered (the engine resolves real servers' MACs right
    /// after a config change), then returns the counts of a fresh round.
    fn probe_ok(&self, kind: &str, target: &str, count: u32) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let v = self.probe(kind, target, 1);
            if v["failed"] == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{kind} {target} never answered: {v}\n{}\n{}",
                String::from_utf8_lossy(&self.cli(&["service", "stats"]).stdout),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.probe(kind, target, count)
    }
}

fn config(forward: &str, v4: &str, v6: &str, port: u16, sched: &str, w1: u32, w2: u32) -> String {
    let mut s = String::new();
    for (proto, vip) in [
        ("tcp", v4.to_string()),
        ("udp", v4.to_string()),
        ("tcp", format!("[{v6}]")),
        ("udp", format!("[{v6}]")),
    ] {
        let (vport, rport) = match proto {
            "tcp" => (80, port),
            _ => (53, 53),
        };
        let six = vip.starts_with('[');
        let (r1, r2) = if six {
            (
                format!("[2001:db8::21]:{rport}"),
                format!("[2001:db8::22]:{rport}"),
            )
        } else {
            (format!("192.0.2.33:{rport}"), format!("192.0.2.34:{rport}"))
        };
        s.push_str(&format!(
            "[[service]]\nkey = \"{proto}/{vip}:{vport}\"\nscheduler = \"{sched}\"\n\
             [[service.real]]\naddress = \"{r1}\"\nforward = \"{forward}\"\nweight = {w1}\n\
             [[service.real]]\naddress = \"{r2}\"\nforward = \"{forward}\"\nweight = {w2}\n\n"
        ));
    }
    s
}

fn replies(v: &serde_json::Value, name: &str) -> u64 {
    v["replies"][name].as_u64().unwrap_or(0)
}

/// Direct routing and NAT, both families, TCP and UDP: every flow answered, by the real
/// servers in the scheduler's proportions.
#[test]
fn dr_and_nat_forward_tcp_and_udp_over_ipv4_and_ipv6() {
    let bed = Bed::new("eng");
    let mut cfg = config("dr", VIP_DR, VIP_DR6, 80, "wrr", 3, 1);
    cfg.push_str(&config("nat", VIP_NAT, VIP_NAT6, 8080, "rr", 1, 1));
    bed.apply(&cfg);
    for (kind, target, want) in [
        ("--tcp", format!("{VIP_DR}:80"), (30, 10)),
        ("--udp", format!("{VIP_DR}:53"), (30, 10)),
        ("--tcp", format!("[{VIP_DR6}]:80"), (30, 10)),
        ("--udp", format!("[{VIP_DR6}]:53"), (30, 10)),
        ("--tcp", format!("{VIP_NAT}:80"), (20, 20)),
        ("--udp", format!("{VIP_NAT}:53"), (20, 20)),
        ("--tcp", format!("[{VIP_NAT6}]:80"), (20, 20)),
        ("--udp", format!("[{VIP_NAT6}]:53"), (20, 20)),
    ] {
        let v = bed.probe_ok(kind, &target, 40);
        assert_eq!(v["failed"], 0, "{kind} {target}: {v}");
        let got = (replies(&v, "rs1"), replies(&v, "rs2"));
        // The warm-up flow moved the scheduler on by one; the totals are exact, the split
        // follows the weights within that one flow.
        assert_eq!(got.0 + got.1, 40, "{kind} {target}: {v}");
        assert!(
            got.0.abs_diff(want.0) <= 1,
            "{kind} {target}: {v}, want {want:?}"
        );
    }
    let stats = bed.cli(&["--json", "service", "stats"]);
    let s: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(s["engine"], true);
    let nat = s["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["key"] == "tcp/192.0.2.101:80")
        .unwrap();
    assert!(
        nat["out_packets"].as_u64().unwrap() > 0,
        "NAT replies counted: {nat}"
    );
    let conns = bed.cli(&["conn", "list", "--service", "tcp/192.0.2.101:80"]);
    let text = String::from_utf8_lossy(&conns.stdout);
    assert!(text.contains("IPVS connection entries"), "{text}");
    assert!(text.contains("192.0.2.101:80"), "{text}");
}
