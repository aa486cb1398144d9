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
        Bed::with(tag, "")
    }

    /// `engine_extra`: more `[engine]` settings, one per line.
    fn with(tag: &str, engine_extra: &str) -> Bed {
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
                "id = 1\nlisten = \"127.0.0.1:7070\"\ndata_dir = \"{}\"\n[bootstrap]\n[engine]\ninterface = \"eth0\"\n{engine_extra}\n",
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
    // Two packet workers in one fanout group: flows spread over them, none is lost.
    let bed = Bed::with("eng", "workers = 2");
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

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

impl Bed {
    /// Starts a capture of IP protocol `proto` frames on real server `i`.
    fn capture(&mut self, i: usize, proto: u8) -> usize {
        let rs = self.rs[i].clone();
        let p = proto.to_string();
        let idx = self
            .lab
            .spawn(
                &rs,
                &bin(fulcrum_tests::testsrv_bin()),
                &[
                    "capture",
                    "--iface",
                    "eth0",
                    "--ip-proto",
                    &p,
                    "--count",
                    "1",
                    "--ms",
                    "8000",
                ],
            )
            .unwrap();
        assert_eq!(self.lab.read_line(idx).unwrap().trim(), "ready");
        idx
    }

    /// Starts `count` long-lived TCP connections from the client through the DR VIP, exchanging
    /// a line every 100 ms for `seconds` (`fulcrum-testsrv hold`); read the report with
    /// `lab.read_line`.
    fn hold(&mut self, count: u32, seconds: u32, timeout_ms: u32) -> usize {
        let client = self.client.clone();
        let (target, count, seconds, timeout) = (
            format!("{VIP_DR}:80"),
            count.to_string(),
            seconds.to_string(),
            timeout_ms.to_string(),
        );
        self.lab
            .spawn(
                &client,
                &bin(fulcrum_tests::testsrv_bin()),
                &[
                    "hold",
                    "--tcp",
                    &target,
                    "--count",
                    &count,
                    "--seconds",
                    &seconds,
                    "--interval-ms",
                    "100",
                    "--timeout-ms",
                    &timeout,
                ],
            )
            .unwrap()
    }

    /// The client's kernel's view of the path MTU to `vip`.
    fn route_mtu(&self, vip: &str) -> String {
        self.client.sh(&format!("ip route get {vip}")).unwrap()
    }
}

/// Tunnel mode: this kernel cannot decapsulate (no ipip/ip6tnl), so the real server's raw
/// frames are checked: IPv4-in-IPv4 and IPv6-in-IPv6 from the director to the real server,
/// carrying the client's packet unchanged but for its TTL. A packet too big for the tunnel
/// gets "fragmentation needed" / "packet too big" back, which the client's kernel takes in.
#[test]
fn tunnel_encapsulates_exact_frames_and_answers_too_big() {
    let mut bed = Bed::new("tun");
    let one_real = |vip: &str, real: &str| {
        format!(
            "[[service]]\nkey = \"udp/{vip}:53\"\nscheduler = \"rr\"\n[[service.real]]\naddress = \"{real}:53\"\nforward = \"tun\"\n\n\
             [[service]]\nkey = \"tcp/{vip}:80\"\nscheduler = \"rr\"\n[[service.real]]\naddress = \"{real}:80\"\nforward = \"tun\"\n\n"
        )
    };
    let cfg =
        one_real(VIP_TUN, "192.0.2.33") + &one_real(&format!("[{VIP_TUN6}]"), "[2001:db8::21]");
    bed.apply(&cfg);
    let dir_mac = hex(&bed.dir.mac.replace(':', ""));
    let rs_mac = hex(&bed.rs[0].mac.replace(':', ""));

    for (vip, outer_proto) in [(VIP_TUN.to_string(), 4u8), (format!("[{VIP_TUN6}]"), 41u8)] {
        // The real server's MAC may need a moment to resolve: retry the send until captured.
        let deadline = Instant::now() + Duration::from_secs(15);
        let frame = loop {
            let cap = bed.capture(0, outer_proto);
            let _ = bed.probe("--udp", &format!("{vip}:53"), 1);
            let line = bed.lab.read_line(cap).unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if let Some(f) = v["frames"][0].as_str() {
                break hex(f);
            }
            assert!(
                Instant::now() < deadline,
                "no tunnel frame for {vip}:\n{}",
                bed.log()
            );
        };
        assert_eq!(&frame[0..6], &rs_mac[..], "to the real server's MAC");
        assert_eq!(&frame[6..12], &dir_mac[..], "from the director's MAC");
        let outer = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
        match outer.net.unwrap() {
            etherparse::NetSlice::Ipv4(ip) => {
                let h = ip.header();
                assert_eq!(h.protocol(), etherparse::IpNumber(4));
                assert_eq!(h.source_addr().to_string(), bed.dir.ip4);
                assert_eq!(h.destination_addr().to_string(), "192.0.2.33");
                let inner = etherparse::SlicedPacket::from_ip(ip.payload().payload).unwrap();
                let Some(etherparse::NetSlice::Ipv4(iip)) = inner.net else {
                    panic!("inner not IPv4")
                };
                assert_eq!(iip.header().source_addr().to_string(), bed.client.ip4);
                assert_eq!(iip.header().destination_addr().to_string(), VIP_TUN);
                assert_eq!(iip.header().ttl(), 63, "decremented once, as IPVS does");
                let Some(etherparse::TransportSlice::Udp(u)) = inner.transport else {
                    panic!("inner not UDP")
                };
                assert_eq!(u.destination_port(), 53);
                assert_eq!(u.payload(), b"probe-0");
            }
            etherparse::NetSlice::Ipv6(ip) => {
                let h = ip.header();
                assert_eq!(h.next_header(), etherparse::IpNumber(41));
                assert_eq!(h.source_addr().to_string(), bed.dir.ip6);
                assert_eq!(h.destination_addr().to_string(), "2001:db8::21");
                let inner = etherparse::SlicedPacket::from_ip(ip.payload().payload).unwrap();
                let Some(etherparse::NetSlice::Ipv6(iip)) = inner.net else {
                    panic!("inner not IPv6")
                };
                assert_eq!(iip.header().source_addr().to_string(), bed.client.ip6);
                assert_eq!(iip.header().destination_addr().to_string(), VIP_TUN6);
                assert_eq!(iip.header().hop_limit(), 63);
                let Some(etherparse::TransportSlice::Udp(u)) = inner.transport else {
                    panic!("inner not UDP")
                };
                assert_eq!(u.payload(), b"probe-0");
            }
            other => panic!("unexpected outer {other:?}"),
        }
    }

    // TCP too: the client's SYN arrives encapsulated, untouched but for the TTL.
    for (vip, outer_proto) in [(VIP_TUN.to_string(), 4u8), (format!("[{VIP_TUN6}]"), 41u8)] {
        let cap = bed.capture(0, outer_proto);
        let _ = bed
            .client
            .command(&bin(fulcrum_tests::testsrv_bin()))
            .args([
                "probe",
                "--tcp",
                &format!("{vip}:80"),
                "--count",
                "1",
                "--timeout-ms",
                "300",
            ])
            .output();
        let line = bed.lab.read_line(cap).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let frame = hex(v["frames"][0]
            .as_str()
            .unwrap_or_else(|| panic!("no TCP tunnel frame for {vip}: {v}")));
        let outer = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
        let payload = match outer.net.unwrap() {
            etherparse::NetSlice::Ipv4(ip) => ip.payload().payload.to_vec(),
            etherparse::NetSlice::Ipv6(ip) => ip.payload().payload.to_vec(),
            other => panic!("unexpected outer {other:?}"),
        };
        let inner = etherparse::SlicedPacket::from_ip(&payload).unwrap();
        let Some(etherparse::TransportSlice::Tcp(t)) = inner.transport else {
            panic!("inner not TCP")
        };
        assert!(t.syn() && !t.ack(), "the client's SYN");
        assert_eq!(t.destination_port(), 80);
    }

    // Too big for the tunnel (1500-byte link, 20/40 bytes of outer header): the client is told
    // the tunnel's MTU and its kernel caches it for the VIP.
    let _ = bed.probe("--udp", &format!("{VIP_TUN}:53"), 1);
    let v4 = bed
        .client
        .command(&bin(fulcrum_tests::testsrv_bin()))
        .args([
            "probe",
            "--udp",
            &format!("{VIP_TUN}:53"),
            "--count",
            "1",
            "--size",
            "1460",
            "--timeout-ms",
            "500",
        ])
        .output()
        .unwrap();
    assert!(v4.status.success());
    let v6 = bed
        .client
        .command(&bin(fulcrum_tests::testsrv_bin()))
        .args([
            "probe",
            "--udp",
            &format!("[{VIP_TUN6}]:53"),
            "--count",
            "1",
            "--size",
            "1440",
            "--timeout-ms",
            "500",
        ])
        .output()
        .unwrap();
    assert!(v6.status.success());
    let r4 = bed.route_mtu(VIP_TUN);
    assert!(r4.contains("mtu 1480"), "client's route to the VIP: {r4}");
    let r6 = bed.route_mtu(VIP_TUN6);
    assert!(r6.contains("mtu 1460"), "client's route to the VIP: {r6}");
}

/// A quiesced real server (weight 0) gets no new flows while its established flows go on.
#[test]
fn quiesced_real_server_keeps_its_flows_and_gets_no_new_ones() {
    let mut bed = Bed::new("qui");
    bed.apply(&config("dr", VIP_DR, VIP_DR6, 80, "rr", 1, 1));
    bed.probe_ok("--tcp", &format!("{VIP_DR}:80"), 2);
    // Long-lived flows, half of them on rs2 (rr).
    let hold = bed.hold(6, 6, 2000);
    std::thread::sleep(Duration::from_secs(2));
    let o = bed.cli(&[
        "real",
        "edit",
        "-t",
        &format!("{VIP_DR}:80"),
        "-r",
        "192.0.2.34:80",
        "-w",
        "0",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::thread::sleep(Duration::from_millis(300));
    let v = bed.probe("--tcp", &format!("{VIP_DR}:80"), 20);
    assert_eq!(
        replies(&v, "rs1"),
        20,
        "new flows avoid the quiesced server: {v}"
    );
    let line = bed.lab.read_line(hold).unwrap();
    let report: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(report["broken"], 0, "old flows live on: {report}");
    let on_rs2 = report["conns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["server"] == "rs2")
        .count();
    assert!(
        on_rs2 >= 2,
        "some held flows were on rs2 throughout: {report}"
    );
}

/// Persistence: every new connection of one client goes to the same real server, even under
/// rr; the template shows in `conn list`.
#[test]
fn persistent_service_keeps_a_client_on_one_real_server() {
    let bed = Bed::new("per");
    let mut cfg = config("dr", VIP_DR, VIP_DR6, 80, "rr", 1, 1);
    cfg = cfg.replacen(
        "scheduler = \"rr\"\n",
        "scheduler = \"rr\"\npersistence_timeout = 300\n",
        1,
    );
    bed.apply(&cfg);
    let v = bed.probe_ok("--tcp", &format!("{VIP_DR}:80"), 20);
    let (a, b) = (replies(&v, "rs1"), replies(&v, "rs2"));
    assert_eq!(a + b, 20, "{v}");
    assert!(
        a == 0 || b == 0,
        "one server for all of one client's flows: {v}"
    );
    let o = bed.cli(&[
        "--json",
        "conn",
        "list",
        "--service",
        &format!("tcp/{VIP_DR}:80"),
    ]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let templates = list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["template"] == true)
        .count();
    assert_eq!(templates, 1, "{list}");
}

/// A real server removed from the config: by default its flows run on (IPVS's default);
/// with `expire_nodest_conn` they end at their next packet.
#[test]
fn removed_real_server_flows_follow_expire_nodest_conn() {
    for (expire, tag) in [(false, "nd0"), (true, "nd1")] {
        let mut bed = Bed::with(tag, &format!("expire_nodest_conn = {expire}"));
        bed.apply(&config("dr", VIP_DR, VIP_DR6, 80, "rr", 1, 1));
        bed.probe_ok("--tcp", &format!("{VIP_DR}:80"), 2);
        let hold = bed.hold(4, 5, 1500);
        std::thread::sleep(Duration::from_secs(2));
        let o = bed.cli(&[
            "real",
            "delete",
            "-t",
            &format!("{VIP_DR}:80"),
            "-r",
            "192.0.2.34:80",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let line = bed.lab.read_line(hold).unwrap();
        let report: serde_json::Value = serde_json::from_str(&line).unwrap();
        let broken_on_rs2 = report["conns"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["server"] == "rs2" && !c["error"].is_null())
            .count();
        let on_rs2 = report["conns"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["server"] == "rs2")
            .count();
        assert!(on_rs2 >= 1, "{report}");
        if expire {
            assert_eq!(
                broken_on_rs2, on_rs2,
                "flows of the removed server end: {report}"
            );
        } else {
            assert_eq!(
                report["broken"], 0,
                "flows of the removed server run on: {report}"
            );
        }
    }
}
