//! The failover-drill harness itself, without any `fulcrumd`: the observer on the switch
//! records claims sent by hand (gratuitous ARP, unsolicited NA, frames from the VIP) and the
//! analysis orders the owners; the prober measures outages made with nft in the switch.
//! Needs root, like every network-namespace test, and `nft` (CI installs nftables).

use std::net::IpAddr;
use std::time::Duration;

use fulcrum_tests::drill;
use fulcrum_tests::drill::BridgeBlock;
use fulcrum_tests::drill::ClaimKind;
use fulcrum_tests::drill::Observer;
use fulcrum_tests::drill::Pinger;
use fulcrum_tests::drill::mono_us;
use fulcrum_tests::netns::Host;
use fulcrum_tests::netns::Lab;

const VIP4: &str = "192.0.2.100";
const VIP6: &str = "2001:db8::100";

fn srv() -> String {
    drill::testsrv().to_str().unwrap().to_string()
}

fn need_nft() {
    assert!(
        drill::nft_available(),
        "nft not found: install nftables (.ci/run does)"
    );
}

/// The client's neighbour entry for `vip` names `mac`.
fn client_sees(client: &Host, vip: &str, mac: &str) -> bool {
    let fam = if vip.contains(':') { "-6" } else { "-4" };
    client
        .sh(&format!("ip {fam} neigh show {vip} dev eth0"))
        .is_ok_and(|o| o.contains(mac))
}

/// Sends frames from the VIPs (no ARP/ND) from `host`, as a DR real server's replies would be.
fn send_from_vip(host: &Host, to4: &str, to6: &str) {
    for (vip, to) in [(VIP4, to4), (VIP6, to6)] {
        let o = host
            .command(&srv())
            .args([
                "announce",
                "--iface",
                "eth0",
                "--vip",
                vip,
                "--from-vip-to",
                to,
                "--no-announce",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn observer_records_claims_and_analysis_orders_owners() {
    need_nft();
    let mut lab = Lab::new("drh").unwrap();
    let client = lab.host("client", 0x10).unwrap();
    let a = lab.host("dira", 0x11).unwrap();
    let b = lab.host("dirb", 0x12).unwrap();
    let rs = lab.host("rs", 0x21).unwrap();
    // The client knows the VIPs at A (as after an earlier takeover by A).
    client
        .sh(&format!(
            "ip neigh replace {VIP4} lladdr {m} dev eth0 nud stale && \
             ip -6 neigh replace {VIP6} lladdr {m} dev eth0 nud stale",
            m = a.mac
        ))
        .unwrap();
    let vip4: IpAddr = VIP4.parse().unwrap();
    let vip6: IpAddr = VIP6.parse().unwrap();
    let obs = Observer::start(&lab, &[VIP4, VIP6], &[&a.mac, &b.mac], 30_000).unwrap();

    // A claims, sends from the VIP; a DR real server answers from the VIP (not a claim).
    let t_a0 = mono_us();
    drill::announce(&a, &[VIP4, VIP6], 1, 0).unwrap();
    let t_a1 = mono_us();
    send_from_vip(&a, &client.ip4, &client.ip6);
    send_from_vip(&rs, &client.ip4, &client.ip6);
    std::thread::sleep(Duration::from_millis(50));

    // B takes over: the client's caches follow (the frames are valid and effective).
    drill::announce(&b, &[VIP4, VIP6], 2, 10).unwrap();
    for vip in [VIP4, VIP6] {
        assert!(
            drill::wait_for(Duration::from_secs(3), || client_sees(&client, vip, &b.mac)
                .then_some(()))
            .is_some(),
            "client's entry for {vip} did not move to B: {}",
            client
                .sh("ip neigh show; ip -6 neigh show")
                .unwrap_or_default()
        );
    }

    // B, cut off by the switch, announces again: still an event (it was sent), delivered to
    // nobody.
    let block = BridgeBlock::isolate(&lab, &b).unwrap();
    drill::announce(&b, &[VIP4, VIP6], 1, 0).unwrap();
    let t_isolated = mono_us();
    let listing = block.list().unwrap();
    block.remove().unwrap();
    std::thread::sleep(Duration::from_millis(30));

    // Then A claims again while B's tenure is part of the record: an overlap.
    let t_split = mono_us();
    drill::announce(&a, &[VIP4, VIP6], 1, 0).unwrap();
    let o = obs.finish().unwrap();
    let dump = || {
        o.events
            .iter()
            .map(|e| e.to_json().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    eprintln!("observed:\n{}", dump());
    assert_eq!(o.kernel_drops, 0);
    assert_eq!(
        o.kernel_stamped, o.frames,
        "event times come from the kernel"
    );
    assert!(!o.truncated);

    // Event times are on the test's clock: A's first claims fall within its announce call.
    let (from, to) = (o.at(t_a0), o.at(t_a1));
    assert!(
        o.events[..2]
            .iter()
            .all(|e| e.mac == a.mac && e.t_us >= from && e.t_us <= to),
        "{from}..{to}:\n{}",
        dump()
    );

    // What was recorded.
    for (vip, kind) in [(vip4, ClaimKind::Garp), (vip6, ClaimKind::Na)] {
        for h in [&a, &b] {
            let ev: Vec<_> = o
                .events
                .iter()
                .filter(|e| e.vip == vip && e.kind == kind && e.mac == h.mac)
                .collect();
            assert!(
                !ev.is_empty(),
                "no {kind:?} for {vip} from {}:\n{}",
                h.name,
                dump()
            );
            assert!(
                ev.iter()
                    .all(|e| e.lladdr.as_deref() == Some(h.mac.as_str())
                        && e.port.as_deref() == Some(drill::port_of(h).as_str())),
                "{}",
                dump()
            );
        }
        let from_a: Vec<_> = o
            .events
            .iter()
            .filter(|e| e.vip == vip && e.kind == ClaimKind::FromVip)
            .collect();
        assert!(
            from_a.len() == 1 && from_a[0].mac == a.mac,
            "from_vip events for {vip}:\n{}",
            dump()
        );
    }
    assert_eq!(
        o.from_vip_ignored.get(&rs.mac),
        Some(&2),
        "{:?}",
        o.from_vip_ignored
    );
    // Broadcast and all-nodes claims reach every other port, except while B was isolated.
    let first_b = o.events.iter().find(|e| e.mac == b.mac).unwrap();
    for p in ["pclient", "pdira", "prs"] {
        assert!(first_b.delivered_to.iter().any(|d| d == p), "{}", dump());
    }
    let isolated: Vec<_> = o
        .events
        .iter()
        .filter(|e| e.mac == b.mac && e.t_us <= o.at(t_isolated))
        .rev()
        .take(2)
        .collect();
    assert!(
        isolated.len() == 2 && isolated.iter().all(|e| e.delivered_to.is_empty()),
        "isolated B's claims were delivered?\n{listing}\n{}",
        dump()
    );
    assert_eq!(o.delivered_to("pclient").len(), o.events.len() - 2);
    let b_first = o.first_claim_by(vip4, &b.mac, 0).unwrap();
    assert_eq!(
        (b_first.kind, b_first.t_us),
        (ClaimKind::Garp, first_b.t_us)
    );

    // The analysis: before A's second claim the VIPs moved A → B cleanly.
    let before = o.window(0, o.at(t_split));
    for vip in [vip4, vip6] {
        assert!(
            drill::overlapping_owners(&before, vip).is_empty(),
            "{vip}: {:?}",
            drill::overlapping_owners(&before, vip)
        );
        let seq = drill::check_owners(&before, vip, &[&a.mac, &b.mac]).unwrap();
        assert!(seq[0].last_us < seq[1].first_us);
    }
    // With it, A's interval [first, last] contains all of B's: two owners at once.
    for vip in [vip4, vip6] {
        let ov = drill::overlapping_owners(&o.events, vip);
        assert_eq!(ov.len(), 1, "{vip}: {ov:?}\n{}", dump());
        assert_eq!(
            (ov[0].mac_a.as_str(), ov[0].mac_b.as_str()),
            (a.mac.as_str(), b.mac.as_str())
        );
        let seq: Vec<String> = drill::owners_sequence(&o.events, vip)
            .into_iter()
            .map(|t| t.mac)
            .collect();
        assert_eq!(seq, vec![a.mac.clone(), b.mac.clone(), a.mac.clone()]);
        assert!(drill::check_owners(&o.events, vip, &[&a.mac, &b.mac]).is_err());
    }
}

struct EchoBed {
    lab: Lab,
    client: Host,
    rs: Host,
    srv_idx: usize,
}

impl EchoBed {
    fn new(tag: &str) -> EchoBed {
        let mut lab = Lab::new(tag).unwrap();
        let client = lab.host("client", 0x10).unwrap();
        let rs = lab.host("rs1", 0x21).unwrap();
        let mut bed = EchoBed {
            lab,
            client,
            rs,
            srv_idx: 0,
        };
        bed.start_server();
        bed
    }

    fn start_server(&mut self) {
        let udp4 = format!("{}:5353", self.rs.ip4);
        let udp6 = format!("[{}]:5353", self.rs.ip6);
        let idx = self
            .lab
            .spawn(
                &self.rs,
                &srv(),
                &[
                    "serve",
                    "--name",
                    "rs1",
                    "--tcp",
                    "[::]:8080",
                    "--udp",
                    &udp4,
                    "--udp",
                    &udp6,
                ],
            )
            .unwrap();
        assert_eq!(self.lab.read_line(idx).unwrap().trim(), "ready");
        self.srv_idx = idx;
    }

    /// Runs the prober for `ms` while `during` acts; returns its report.
    fn ping(
        &mut self,
        proto: &str,
        target: &str,
        ms: u64,
        during: impl FnOnce(&mut EchoBed),
    ) -> drill::PingReport {
        let p = Pinger::start(&self.client, proto, target, 5, ms).unwrap();
        during(self);
        p.wait().unwrap()
    }
}

#[test]
fn prober_sees_no_gap_on_a_quiet_segment() {
    let mut bed = EchoBed::new("drp");
    let t4 = format!("{}:5353", bed.rs.ip4);
    let t6 = format!("[{}]:5353", bed.rs.ip6);
    let tt = format!("{}:8080", bed.rs.ip4);
    for (proto, target) in [("udp", &t4), ("udp", &t6), ("tcp", &tt)] {
        let r = bed.ping(proto, target, 800, |_| {});
        assert!(r.sent >= 50, "{proto} {target}: {}", r.raw);
        assert!(r.received * 10 >= r.sent * 9, "{proto} {target}: {}", r.raw);
        assert!(r.max_gap_ms < 150.0, "{proto} {target}: {}", r.raw);
        assert_eq!(r.servers.get("rs1"), Some(&r.received), "{}", r.raw);
        assert_eq!(r.server_changes, 0);
        assert_eq!(r.reconnects, 0, "{}", r.raw);
        assert!(r.first_reply_after_ms.unwrap() < 100.0, "{}", r.raw);
    }
    // Stopped early by closing its stdin, not by the deadline.
    let p = Pinger::start(&bed.client, "udp", &t4, 5, 60_000).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let r = p.stop().unwrap();
    assert!(r.received > 0, "{}", r.raw);
    assert!(r.raw["duration_ms"].as_f64().unwrap() < 2000.0, "{}", r.raw);
}

#[test]
fn prober_measures_a_switch_level_cut() {
    need_nft();
    let mut bed = EchoBed::new("drc");
    let t4 = format!("{}:5353", bed.rs.ip4);
    let tt = format!("[{}]:8080", bed.rs.ip6);
    for (proto, target) in [("udp", &t4), ("tcp", &tt)] {
        // The cut on the prober's time axis: from when the rules were in force to just before
        // they were removed.
        let mut cut = (0u64, 0u64);
        let r = bed.ping(proto, target, 2500, |bed| {
            std::thread::sleep(Duration::from_millis(300));
            let block = BridgeBlock::between(&bed.lab, &bed.client, &bed.rs).unwrap();
            let start = block.installed_mono_us;
            std::thread::sleep(Duration::from_millis(300));
            let before_remove = mono_us();
            block.remove().unwrap();
            cut = (start, before_remove);
        });
        let ms = |t: u64| (t - r.t0_mono_us) as f64 / 1000.0;
        let (cut_from, cut_to) = (ms(cut.0), ms(cut.1));
        let cut_ms = cut_to - cut_from;
        eprintln!(
            "{proto}: cut {cut_from:.1}..{cut_to:.1} ms; report {}",
            r.raw
        );
        assert!(cut_ms >= 300.0, "{cut_ms}");
        assert!(
            r.max_gap_ms >= cut_ms && r.max_gap_ms < cut_ms + 1500.0,
            "{proto}: cut {cut_ms} ms, report {}",
            r.raw
        );
        // The one long gap covers the cut.
        let (gf, gt) = r
            .gap_around((cut.0 + cut.1) / 2)
            .unwrap_or_else(|| panic!("{proto}: no gap over the cut: {}", r.raw));
        assert!(gf <= cut_from && gt >= cut_to, "{proto}: {}", r.raw);
        assert!((gt - gf - r.max_gap_ms).abs() < 0.01, "{}", r.raw);
        // Service resumed; TCP kept its connection through a short cut.
        assert!(r.tail_gap_ms < 200.0, "{proto}: {}", r.raw);
        assert_eq!(r.reconnects, 0, "{proto}: {}", r.raw);
    }
}

#[test]
fn tcp_prober_reconnects_and_counts_the_gap() {
    let mut bed = EchoBed::new("drr");
    let tt = format!("{}:8080", bed.rs.ip4);
    let r = bed.ping("tcp", &tt, 2000, |bed| {
        std::thread::sleep(Duration::from_millis(300));
        let idx = bed.srv_idx;
        bed.lab.kill(idx);
        std::thread::sleep(Duration::from_millis(300));
        bed.start_server();
    });
    assert!(r.reconnects >= 1, "{}", r.raw);
    assert!(r.max_gap_ms >= 250.0, "{}", r.raw);
    assert!(r.tail_gap_ms < 200.0, "{}", r.raw);
    assert!(
        r.raw["connect_failures"].as_u64().unwrap() >= 1,
        "{}",
        r.raw
    );
}
