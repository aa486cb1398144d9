//! Table-level tests: state tracking through the table, expiry, limits, NAT replies,
//! persistence templates, families, memory budget and concurrency.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::state::tcp_flags::*;
use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn table(max: usize) -> ConnTable {
    let mut c = TableConfig::new(max);
    c.hash_seed = Some(7);
    ConnTable::new(c).unwrap()
}

fn tcp_key(cport: u16) -> ConnKey {
    ConnKey::v4(proto::TCP, [198, 51, 100, 1], cport, [192, 0, 2, 10], 80)
}

/// A distinct key per `i` (IPv4 or IPv6 by parity) for bulk tests.
fn bulk_key(i: u32) -> ConnKey {
    let b = i.to_be_bytes();
    if i.is_multiple_of(2) {
        ConnKey::v4(
            proto::TCP,
            [10, b[1], b[2], b[3]],
            1024 + (i % 50_000) as u16,
            [192, 0, 2, 1],
            443,
        )
    } else {
        let mut c = [0u8; 16];
        c[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        c[12..].copy_from_slice(&b);
        let mut v = [0u8; 16];
        v[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        v[15] = 1;
        ConnKey::v6(proto::TCP, c, 1024 + (i % 50_000) as u16, v, 443)
    }
}

fn bulk_entry(i: u32, now: u32) -> ConnEntry {
    let k = bulk_key(i);
    let (dest, fwd) = match (k.family(), i % 3) {
        (Family::V4, 0) => (sa("10.1.0.2:443"), FwdMethod::Masq),
        (Family::V4, _) => (sa("10.1.0.3:443"), FwdMethod::DirectRoute),
        (Family::V6, 0) => (sa("[2001:db8:ff::2]:443"), FwdMethod::Masq),
        (Family::V6, _) => (sa("10.1.0.4:443"), FwdMethod::Tunnel),
    };
    let mut e = ConnEntry::new(k, dest, fwd, i % 10);
    e.set_state(TcpState::Established as u8);
    e.set_expiry(now, 900);
    e
}

#[test]
fn tcp_dr_open_close_uses_input_only_table() {
    let t = table(100);
    let k = tcp_key(40000);
    let e = ConnEntry::new(k, sa("10.0.0.2:80"), FwdMethod::DirectRoute, 1);
    let (e, c) = t.insert_on_packet(e, SYN, 0).unwrap();
    assert_eq!(e.tcp_state(), Some(TcpState::SynRecv));
    assert_eq!(c.activity, Activity::BecameActive);
    assert_eq!(e.expires(), 60);

    let (e, c) = t.update_on_packet(&k, Direction::Input, ACK, 1).unwrap();
    assert_eq!(
        (e.tcp_state(), c.activity),
        (Some(TcpState::Established), Activity::Unchanged)
    );
    assert_eq!(e.expires(), 901);

    // Client FIN without ever seeing a reply: INPUT_ONLY moves ES -> FIN_WAIT.
    let (e, c) = t
        .update_on_packet(&k, Direction::Input, FIN | ACK, 2)
        .unwrap();
    assert_eq!(e.tcp_state(), Some(TcpState::FinWait));
    assert_eq!(c.activity, Activity::BecameInactive);
    assert_eq!(
        (c.old, c.new),
        (TcpState::Established as u8, TcpState::FinWait as u8)
    );
    assert_eq!(e.expires(), 122);
    assert!(e.has_flag(flags::NOOUTPUT));

    let (e, c) = t.update_on_packet(&k, Direction::Input, ACK, 3).unwrap();
    assert_eq!(e.tcp_state(), Some(TcpState::FinWait));
    assert!(!c.changed());
}

#[test]
fn tcp_nat_open_close_through_replies() {
    let t = table(100);
    let k = tcp_key(40001);
    let real = sa("10.0.0.2:8080");
    let reply = ReplyKey::v4(proto::TCP, [10, 0, 0, 2], 8080, [198, 51, 100, 1], 40001);
    let e = ConnEntry::new(k, real, FwdMethod::Masq, 1);
    let steps: &[(Option<Direction>, u8, TcpState, u32)] = &[
        (None, SYN, TcpState::SynRecv, 60),
        (Some(Direction::Output), SYN | ACK, TcpState::SynRecv, 60),
        (Some(Direction::Input), ACK, TcpState::Established, 900),
        (Some(Direction::Output), FIN | ACK, TcpState::FinWait, 120),
        (Some(Direction::Input), ACK, TcpState::FinWait, 120),
        (Some(Direction::Input), FIN | ACK, TcpState::TimeWait, 120),
        (Some(Direction::Output), ACK, TcpState::TimeWait, 120),
    ];
    for (now, &(dir, fl, want, timeout)) in steps.iter().enumerate() {
        let now = now as u32 * 10;
        let (got, _) = match dir {
            None => t.insert_on_packet(e, fl, now).unwrap(),
            Some(Direction::Input) => t.update_on_packet(&k, Direction::Input, fl, now).unwrap(),
            Some(Direction::Output) => t.update_on_reply(&reply, fl, now).unwrap(),
        };
        assert_eq!(got.tcp_state(), Some(want), "step at t={now}");
        assert_eq!(got.expires(), now + timeout);
        assert_eq!(got.timeout(), timeout);
    }
    assert!(!t.lookup(&k).unwrap().is_active());
}

#[test]
fn rst_closes_and_expires_after_close_timeout() {
    let t = table(100);
    let k = tcp_key(40002);
    let e = ConnEntry::new(k, sa("10.0.0.2:80"), FwdMethod::DirectRoute, 1);
    t.insert_on_packet(e, SYN, 0).unwrap();
    t.update_on_packet(&k, Direction::Input, ACK, 0).unwrap();
    let (e, c) = t
        .update_on_packet(&k, Direction::Input, RST | ACK, 5)
        .unwrap();
    assert_eq!(e.tcp_state(), Some(TcpState::Close));
    assert_eq!(c.activity, Activity::BecameInactive);
    assert_eq!(e.expires(), 15);
    let mut out = Vec::new();
    assert_eq!(t.expire(15, 1000, &mut out).expired, 0);
    assert_eq!(t.expire(16, 1000, &mut out).expired, 1);
    assert_eq!(out[0].tcp_state(), Some(TcpState::Close));
    assert!(t.lookup(&k).is_none());
}

#[test]
fn half_open_syn_expires_after_syn_recv_timeout() {
    let t = table(100);
    let k = tcp_key(40003);
    let e = ConnEntry::new(k, sa("10.0.0.2:80"), FwdMethod::Masq, 1);
    let (e, _) = t.insert_on_packet(e, SYN, 100).unwrap();
    assert_eq!(e.tcp_state(), Some(TcpState::SynRecv));
    // Retransmitted SYNs keep it in SYN_RECV and push the deadline.
    let (e, c) = t.update_on_packet(&k, Direction::Input, SYN, 110).unwrap();
    assert_eq!(
        (e.tcp_state(), c.changed()),
        (Some(TcpState::SynRecv), false)
    );
    assert_eq!(e.expires(), 170);
    let mut out = Vec::new();
    t.expire(170, 1000, &mut out);
    assert!(out.is_empty());
    t.expire(171, 1000, &mut out);
    assert_eq!(out.len(), 1);
    // Still active when it dies: the engine takes it off the active counter.
    assert!(out[0].is_active());
    assert!(
        t.lookup_reply(&ReplyKey::v4(
            6,
            [10, 0, 0, 2],
            80,
            [198, 51, 100, 1],
            40003
        ))
        .is_none()
    );
}

#[test]
fn timeouts_per_state_and_runtime_change() {
    let t = table(100);
    let defaults = Timeouts::default();
    let k = tcp_key(40004);
    t.insert(ConnEntry::new(
        k,
        sa("10.0.0.2:80"),
        FwdMethod::DirectRoute,
        0,
    ))
    .unwrap();
    for s in TcpState::ALL {
        let (e, _) = t.set_state(&k, s as u8, 1000).unwrap();
        assert_eq!(e.expires(), 1000 + defaults.tcp[s as usize], "{s:?}");
        assert_eq!(e.is_active(), s.is_active());
    }
    assert!(t.set_state(&k, TcpState::COUNT as u8, 0).is_none());

    let mut changed = defaults.clone();
    changed.set_ipvsadm(7200, 30, 20);
    t.set_timeouts(&changed);
    assert_eq!(t.timeouts().ipvsadm(), (7200, 30, 20));
    let (e, _) = t.update_on_packet(&k, Direction::Input, ACK, 0).unwrap();
    assert_eq!(e.tcp_state(), Some(TcpState::Established));
    assert_eq!(e.expires(), 7200);

    let uk = ConnKey::v4(proto::UDP, [198, 51, 100, 1], 5353, [192, 0, 2, 10], 53);
    let (u, c) = t
        .insert_on_packet(
            ConnEntry::new(uk, sa("10.0.0.2:53"), FwdMethod::Masq, 0),
            0,
            50,
        )
        .unwrap();
    assert_eq!(
        (u.state_name(), u.expires(), c.activity),
        ("UDP", 70, Activity::Unchanged)
    );
    assert!(!u.is_active());

    let sk = ConnKey::v4(proto::SCTP, [198, 51, 100, 1], 5000, [192, 0, 2, 10], 3868);
    t.insert(ConnEntry::new(
        sk,
        sa("10.0.0.2:3868"),
        FwdMethod::DirectRoute,
        0,
    ))
    .unwrap();
    let (s, c) = t.set_state(&sk, SctpState::Established as u8, 10).unwrap();
    assert_eq!(
        (s.state_name(), s.expires(), c.activity),
        ("ESTABLISHED", 910, Activity::BecameActive)
    );
    let (s, _) = t.update_on_packet(&sk, Direction::Input, 0, 20).unwrap();
    assert_eq!(s.expires(), 920);
}

#[test]
fn expiry_sweep_removes_exactly_the_expired() {
    let t = table(10_000);
    for i in 0..1000u32 {
        let mut e = bulk_entry(i, 0);
        e.set_deadline(i % 100, 0);
        t.insert(e).unwrap();
    }
    let mut out = Vec::new();
    // A small budget scans at most that many slots; repeated calls cover the whole table.
    let mut calls = 0;
    while out.len() < 490 {
        let r = t.expire(49, 64, &mut out);
        assert!(r.scanned <= 64);
        calls += 1;
        assert!(calls < 10_000, "sweeper does not make progress");
    }
    // Another full pass finds nothing more.
    t.expire(49, usize::MAX, &mut out);
    t.expire(49, usize::MAX, &mut out);
    let total = out.len();
    assert_eq!(total, 490);
    assert!(out.iter().all(|e| e.expires() < 49));
    assert_eq!(t.len(), 510);
    for i in 0..1000u32 {
        assert_eq!(t.lookup(&bulk_key(i)).is_some(), i % 100 >= 49, "entry {i}");
    }
    let st = t.stats();
    assert_eq!((st.entries, st.expired), (510, 490));
}

#[test]
fn max_entries_refusal_counts() {
    let t = table(100);
    for i in 0..100 {
        t.insert(bulk_entry(i, 0)).unwrap();
    }
    assert_eq!(t.insert(bulk_entry(100, 0)), Err(InsertError::Full));
    assert_eq!(t.insert(bulk_entry(101, 0)), Err(InsertError::Full));
    assert_eq!(t.stats().refused_full, 2);
    // A duplicate is reported as such, not as a refusal.
    assert!(
        matches!(t.insert(bulk_entry(5, 0)), Err(InsertError::Exists(e)) if e.key() == &bulk_key(5))
    );
    assert_eq!(t.stats().refused_full, 2);
    t.remove(&bulk_key(0)).unwrap();
    t.insert(bulk_entry(100, 0)).unwrap();
    assert_eq!(t.len(), 100);

    // Sharded: the global cap is exact, shard slack absorbs the hash spread.
    let mut cfg = TableConfig::new(5000);
    cfg.shards = 16;
    cfg.hash_seed = Some(11);
    let t = ConnTable::new(cfg).unwrap();
    let refused = (0..5050)
        .filter(|&i| t.insert(bulk_entry(i, 0)).is_err())
        .count();
    assert_eq!((t.len(), refused, t.stats().refused_full), (5000, 50, 50));
}

#[test]
fn nat_reverse_index() {
    let t = table(10_000);
    let real4 = sa("10.0.0.2:8080");
    let real6 = sa("[2001:db8:ff::2]:8080");
    for p in 0..500u16 {
        let k4 = ConnKey::v4(
            proto::TCP,
            [198, 51, 100, 9],
            20000 + p,
            [192, 0, 2, 10],
            80,
        );
        t.insert(ConnEntry::new(k4, real4, FwdMethod::Masq, 0))
            .unwrap();
        let k6 = ConnKey::new(
            proto::TCP,
            sa(&format!("[2001:db8:c::9]:{}", 20000 + p)),
            sa("[2001:db8::10]:80"),
        )
        .unwrap();
        t.insert(ConnEntry::new(k6, real6, FwdMethod::Masq, 0))
            .unwrap();
    }
    // A DR flow is not reachable by replies (they never come through the director).
    let kd = ConnKey::v4(proto::TCP, [198, 51, 100, 9], 1, [192, 0, 2, 10], 80);
    t.insert(ConnEntry::new(kd, real4, FwdMethod::DirectRoute, 0))
        .unwrap();
    assert_eq!(t.stats().nat_entries, 1000);
    assert!(
        t.lookup_reply(&ReplyKey::v4(6, [10, 0, 0, 2], 8080, [198, 51, 100, 9], 1))
            .is_none()
    );

    let r = ReplyKey::new(proto::TCP, real6, sa("[2001:db8:c::9]:20007")).unwrap();
    let e = t.lookup_reply(&r).unwrap();
    assert_eq!(e.virtual_addr(), sa("[2001:db8::10]:80"));
    assert_eq!(e.client(), sa("[2001:db8:c::9]:20007"));
    // Wrong protocol or port: no match.
    assert!(
        t.lookup_reply(&ReplyKey::new(proto::UDP, real6, sa("[2001:db8:c::9]:20007")).unwrap())
            .is_none()
    );
    assert!(
        t.lookup_reply(
            &ReplyKey::new(
                proto::TCP,
                sa("[2001:db8:ff::2]:8081"),
                sa("[2001:db8:c::9]:20007")
            )
            .unwrap()
        )
        .is_none()
    );

    // Remove every other v4 flow; the rest stay reachable both ways.
    for p in (0..500u16).step_by(2) {
        t.remove(&ConnKey::v4(
            proto::TCP,
            [198, 51, 100, 9],
            20000 + p,
            [192, 0, 2, 10],
            80,
        ))
        .unwrap();
    }
    for p in 0..500u16 {
        let r = ReplyKey::v4(
            proto::TCP,
            [10, 0, 0, 2],
            8080,
            [198, 51, 100, 9],
            20000 + p,
        );
        assert_eq!(t.lookup_reply(&r).is_some(), p % 2 == 1, "port {p}");
    }
    assert_eq!(t.stats().nat_entries, 750);

    // Upsert moving the flow to another real server re-indexes its replies.
    let k = ConnKey::v4(proto::TCP, [198, 51, 100, 9], 20001, [192, 0, 2, 10], 80);
    let old = t
        .upsert(ConnEntry::new(k, sa("10.0.0.3:8080"), FwdMethod::Masq, 0))
        .unwrap()
        .unwrap();
    assert_eq!(old.dest(), real4);
    assert!(
        t.lookup_reply(&ReplyKey::v4(
            6,
            [10, 0, 0, 2],
            8080,
            [198, 51, 100, 9],
            20001
        ))
        .is_none()
    );
    assert!(
        t.lookup_reply(&ReplyKey::v4(
            6,
            [10, 0, 0, 3],
            8080,
            [198, 51, 100, 9],
            20001
        ))
        .is_some()
    );
    // ... and turning it into a DR flow takes it out of the reverse index.
    t.upsert(ConnEntry::new(
        k,
        sa("10.0.0.3:8080"),
        FwdMethod::DirectRoute,
        0,
    ))
    .unwrap();
    assert!(
        t.lookup_reply(&ReplyKey::v4(
            6,
            [10, 0, 0, 3],
            8080,
            [198, 51, 100, 9],
            20001
        ))
        .is_none()
    );
    assert_eq!(t.stats().nat_entries, 749);
}

#[test]
fn templates_v4_slash24_control_and_postpone() {
    let t = table(1000);
    let vip = sa("192.0.2.10:443");
    let pers = Persistence::new(PersistKind::Port, 24);
    let real = sa("10.0.0.7:443");

    let c1 = ConnKey::new(proto::TCP, sa("198.51.100.77:1111"), vip).unwrap();
    let tk = pers.template_key(&c1, 0);
    assert!(t.lookup_template(&tk).is_none());
    t.insert_template(ConnEntry::template(
        tk,
        real,
        FwdMethod::DirectRoute,
        3,
        300,
        0,
    ))
    .unwrap();
    assert_eq!(
        t.insert_template(ConnEntry::new(c1, real, FwdMethod::DirectRoute, 3)),
        Err(InsertError::NotTemplate)
    );

    // Any client in the /24 maps to the same template; a neighbour /24 does not.
    let same = ConnKey::template(
        proto::TCP,
        ip("198.51.100.200"),
        24,
        TemplateTarget::Virtual(vip),
    )
    .unwrap();
    assert_eq!(same, tk);
    assert_eq!(t.lookup_template(&same).unwrap().dest(), real);
    let other = ConnKey::template(
        proto::TCP,
        ip("198.51.101.1"),
        24,
        TemplateTarget::Virtual(vip),
    )
    .unwrap();
    assert!(t.lookup_template(&other).is_none());
    // A template is not a connection and vice versa.
    assert!(
        t.lookup(&ConnKey::new(proto::TCP, sa("198.51.100.0:0"), vip).unwrap())
            .is_none()
    );

    let mut e1 = ConnEntry::new(c1, real, FwdMethod::DirectRoute, 3);
    e1.set_persistence(Some(pers));
    t.insert_on_packet(e1, SYN, 100).unwrap();
    let c2 = ConnKey::new(proto::TCP, sa("198.51.100.78:2222"), vip).unwrap();
    let mut e2 = ConnEntry::new(c2, real, FwdMethod::DirectRoute, 3);
    e2.set_persistence(Some(pers));
    t.insert_on_packet(e2, SYN, 200).unwrap();
    let tpl = t.lookup_template(&tk).unwrap();
    assert_eq!(tpl.n_control(), 2);
    assert_eq!(tpl.expires(), 500, "refreshed to now + persistence timeout");
    assert_eq!(tpl.state_name(), "NONE");

    // Keep both connections alive past the template's deadline.
    t.update_on_packet(&c1, Direction::Input, ACK, 400).unwrap();
    t.update_on_packet(&c2, Direction::Input, ACK, 400).unwrap();
    let mut out = Vec::new();
    let r = t.expire(501, 10_000, &mut out);
    assert_eq!((r.expired, r.postponed), (0, 1));
    assert_eq!(t.lookup_template(&tk).unwrap().expires(), 561);

    // Still controlling both at its next deadline: re-armed again.
    let r = t.expire(600, 10_000, &mut out);
    assert_eq!((r.expired, r.postponed), (0, 1));
    assert_eq!(t.lookup_template(&tk).unwrap().expires(), 660);

    // A controlled connection that expires through the sweeper is counted out.
    t.set_state(&c2, TcpState::Close as u8, 600).unwrap();
    let r = t.expire(611, 10_000, &mut out);
    assert_eq!(r.expired, 1);
    assert_eq!(out.last().unwrap().key(), &c2);
    assert_eq!(t.lookup_template(&tk).unwrap().n_control(), 1);

    // The last connection goes; the template is released at its deadline.
    t.remove(&c1).unwrap();
    assert_eq!(t.lookup_template(&tk).unwrap().n_control(), 0);
    let st = t.stats();
    assert_eq!((st.templates, st.entries), (1, 1));
    assert_eq!(t.expire(660, 10_000, &mut out).expired, 0);
    let r = t.expire(661, 10_000, &mut out);
    assert_eq!(r.expired, 1);
    assert!(out.last().unwrap().is_template());
    assert!(t.is_empty());
}

#[test]
fn templates_v6_slash64_fwmark() {
    let t = table(1000);
    let pers = Persistence::new(PersistKind::Fwmark, 64);
    let c = ConnKey::new(
        proto::UDP,
        sa("[2001:db8:1:2:aaaa::1]:5000"),
        sa("[2001:db8::10]:53"),
    )
    .unwrap();
    let tk = pers.template_key(&c, 42);
    assert_eq!(tk.protocol(), proto::ANY);
    assert_eq!(tk.client().ip(), ip("2001:db8:1:2::"));
    t.insert_template(ConnEntry::template(
        tk,
        sa("[2001:db8:ff::5]:0"),
        FwdMethod::Masq,
        9,
        360,
        0,
    ))
    .unwrap();

    let near = ConnKey::template(
        proto::TCP,
        ip("2001:db8:1:2:ffff::9"),
        64,
        TemplateTarget::Fwmark(42),
    )
    .unwrap();
    assert_eq!(
        t.lookup_template(&near).unwrap().dest(),
        sa("[2001:db8:ff::5]:0")
    );
    let far = ConnKey::template(
        proto::TCP,
        ip("2001:db8:1:3::1"),
        64,
        TemplateTarget::Fwmark(42),
    )
    .unwrap();
    assert!(t.lookup_template(&far).is_none());
    let other_mark = ConnKey::template(
        proto::TCP,
        ip("2001:db8:1:2::1"),
        64,
        TemplateTarget::Fwmark(43),
    )
    .unwrap();
    assert!(t.lookup_template(&other_mark).is_none());

    // Upserting the template (a sync refresh) keeps the local control count.
    let mut e = ConnEntry::new(c, sa("[2001:db8:ff::5]:53"), FwdMethod::Masq, 9);
    e.set_fwmark(42);
    e.set_persistence(Some(pers));
    t.insert_on_packet(e, 0, 10).unwrap();
    assert_eq!(t.lookup_template(&tk).unwrap().n_control(), 1);
    let mut refreshed =
        ConnEntry::template(tk, sa("[2001:db8:ff::5]:0"), FwdMethod::Masq, 9, 360, 100);
    refreshed.set_synced_from(2);
    assert!(t.upsert(refreshed).unwrap().is_some());
    let got = t.lookup_template(&tk).unwrap();
    assert_eq!((got.n_control(), got.expires(), got.origin()), (1, 460, 2));
    assert!(got.has_flag(flags::SYNC | flags::TEMPLATE));
}

#[test]
fn ipv6_and_mixed_family_entries() {
    let t = table(1000);
    let k = ConnKey::new(
        proto::TCP,
        sa("[2001:db8:c::1]:40000"),
        sa("[2001:db8::10]:443"),
    )
    .unwrap();
    // IPv6 VIP, IPv4 real server over an IPIP tunnel.
    let e = ConnEntry::new(k, sa("10.0.0.9:443"), FwdMethod::Tunnel, 4);
    t.insert_on_packet(e, SYN, 0).unwrap();
    let got = t.lookup(&k).unwrap();
    assert_eq!((got.family(), got.dest_family()), (Family::V6, Family::V4));
    assert_eq!(got.dest(), sa("10.0.0.9:443"));
    assert_eq!(got.client(), sa("[2001:db8:c::1]:40000"));
    assert_eq!(got.virtual_addr(), sa("[2001:db8::10]:443"));
    assert_eq!(got.fwd_method(), FwdMethod::Tunnel);
    assert_eq!(got.service(), 4);

    // NAT cannot cross families: its replies would never match.
    let k2 = ConnKey::new(
        proto::TCP,
        sa("[2001:db8:c::1]:40001"),
        sa("[2001:db8::10]:443"),
    )
    .unwrap();
    assert_eq!(
        t.insert(ConnEntry::new(k2, sa("10.0.0.9:443"), FwdMethod::Masq, 4)),
        Err(InsertError::NatMixedFamily)
    );

    // Same numeric address in both families stays distinct.
    let a = ConnKey::new(proto::TCP, sa("1.2.3.4:5"), sa("5.6.7.8:80")).unwrap();
    let b = ConnKey::from_raw(
        proto::TCP,
        Family::V6,
        *a.client_raw().0,
        5,
        *a.virtual_raw().0,
        80,
        false,
    );
    assert_ne!(a, b);
    t.insert(ConnEntry::new(
        a,
        sa("10.0.0.1:80"),
        FwdMethod::DirectRoute,
        0,
    ))
    .unwrap();
    assert!(t.lookup(&b).is_none());

    // Out-of-range state is rejected at the door.
    let mut bad = ConnEntry::new(k2, sa("[2001:db8:ff::1]:443"), FwdMethod::Masq, 0);
    bad.set_state(TcpState::COUNT as u8);
    assert_eq!(t.insert(bad), Err(InsertError::InvalidState));
}

#[test]
fn snapshot_and_for_each_see_every_entry_once() {
    let t = table(20_000);
    for i in 0..10_000 {
        t.insert(bulk_entry(i, 0)).unwrap();
    }
    for i in (0..10_000).step_by(3) {
        t.remove(&bulk_key(i)).unwrap();
    }
    let mut cursor = SnapshotCursor::new();
    let mut all = Vec::new();
    let mut chunks = 0;
    while !t.snapshot_chunk(&mut cursor, 100, &mut all) {
        chunks += 1;
        assert!(all.len() <= chunks * 100);
    }
    let mut keys: Vec<_> = all.iter().map(|e| *e.key()).collect();
    keys.sort_by_key(|k| (k.client(), k.virtual_addr()));
    keys.dedup();
    assert_eq!(keys.len(), t.len());
    assert_eq!(all.len(), t.len());
    let mut n = 0;
    t.for_each(|_| n += 1);
    assert_eq!(n, t.len());
}

#[test]
fn remove_where_flushes_a_service() {
    let t = table(1000);
    for i in 0..300 {
        t.insert(bulk_entry(i, 0)).unwrap();
    }
    let mut out = Vec::new();
    let n = t.remove_where(|e| e.service() == 2, &mut out);
    assert_eq!(n, 30);
    assert!(out.iter().all(|e| e.service() == 2));
    assert_eq!(t.len(), 270);
    assert_eq!(t.stats().removed, 30);
}

/// The memory budget: ≤ 128 bytes per entry, table filled to its configured maximum.
#[test]
fn bytes_per_entry_at_capacity() {
    for max in [1_000_000usize, 10_000_000] {
        let nat = TableConfig::new(max).layout().unwrap();
        let mut dr_cfg = TableConfig::new(max);
        dr_cfg.max_nat_entries = 0;
        let dr = dr_cfg.layout().unwrap();
        eprintln!(
            "{max} entries: NAT-capable {:.1} B/entry, DR/TUN-only {:.1} B/entry, reverse index {:.1} B per NAT entry, {} shards × {} slots",
            nat.bytes_per_entry(),
            dr.bytes_per_entry(),
            nat.reverse_index_bytes_per_nat_entry(),
            nat.shards,
            nat.slots_per_shard
        );
        assert!(nat.bytes_per_entry() <= 128.0);
        assert!(dr.bytes_per_entry() < nat.bytes_per_entry());
        assert!((dr.bytes_per_entry() - nat.bytes_per_entry_without_nat()).abs() < 0.01);
    }

    // Fill a 1M table to its maximum and measure what it really allocated.
    let max = 1_000_000;
    let mut cfg = TableConfig::new(max);
    cfg.hash_seed = Some(3);
    let t = ConnTable::new(cfg).unwrap();
    for i in 0..max as u32 {
        t.insert(bulk_entry(i, 0)).unwrap();
    }
    assert_eq!(t.len(), max);
    assert_eq!(t.insert(bulk_entry(max as u32, 0)), Err(InsertError::Full));
    let per_entry = t.allocated_bytes() as f64 / t.len() as f64;
    eprintln!("filled 1M: {per_entry:.1} B/entry allocated");
    assert!(per_entry <= 128.0, "{per_entry}");
    assert!((per_entry - t.layout().bytes_per_entry()).abs() < 0.1);
}

/// At 10M entries the planned layout (what `new` allocates, checked against real allocation
/// at 1M above) stays within budget; filling 10M is a benchmark (`fulcrum-bench conntable`).
#[test]
fn bytes_per_entry_layout_10m() {
    let layout = TableConfig::new(10_000_000).layout().unwrap();
    assert!(
        layout.bytes_per_entry() <= 128.0,
        "{}",
        layout.bytes_per_entry()
    );
}

/// Two packet threads insert, look up and update while a sweeper expires; counts reconcile.
#[test]
fn concurrent_packets_and_sweeper() {
    const PER_THREAD: u32 = 50_000;
    let started = Instant::now();
    let mut cfg = TableConfig::new(8192);
    cfg.shards = 16;
    // Short-lived flows so the sweeper has work while the packet threads run.
    cfg.timeouts.tcp[TcpState::Established as usize] = 2;
    let t = Arc::new(ConnTable::new(cfg).unwrap());
    let now = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let inserted = Arc::new(AtomicU64::new(0));

    let workers: Vec<_> = (0..2u32)
        .map(|w| {
            let (t, now, inserted) = (t.clone(), now.clone(), inserted.clone());
            std::thread::spawn(move || {
                let mut full = 0u64;
                for i in 0..PER_THREAD {
                    let id = w * PER_THREAD + i;
                    let n = now.load(Ordering::Relaxed);
                    let k = bulk_key(id);
                    let mut e = bulk_entry(id, n);
                    e.set_expiry(n, 1);
                    match t.insert(e) {
                        Ok(()) => {
                            inserted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(InsertError::Full) => full += 1,
                        Err(e) => panic!("{e}"),
                    }
                    // Touch a few recent flows, as packets of live connections would.
                    let back = bulk_key(w * PER_THREAD + i.saturating_sub(7));
                    let _ = t.update_on_packet(&back, Direction::Input, ACK, n);
                    let _ = t.lookup(&k);
                }
                full
            })
        })
        .collect();

    let sweeper = {
        let (t, now, done) = (t.clone(), now.clone(), done.clone());
        std::thread::spawn(move || {
            let mut out = Vec::with_capacity(4096);
            let mut expired = 0usize;
            let mut rounds = 0u32;
            while !done.load(Ordering::Relaxed) {
                rounds += 1;
                if rounds.is_multiple_of(2) {
                    now.fetch_add(1, Ordering::Relaxed);
                }
                out.clear();
                t.expire(now.load(Ordering::Relaxed), 2048, &mut out);
                expired += out.len();
                std::thread::yield_now();
            }
            expired
        })
    };

    let refused: u64 = workers.into_iter().map(|h| h.join().unwrap()).sum();
    done.store(true, Ordering::Relaxed);
    let mut expired = sweeper.join().unwrap();
    assert!(
        expired > 0,
        "the sweeper ran concurrently with the packet threads"
    );

    // Drain the rest.
    let mut out = Vec::new();
    let end = now.load(Ordering::Relaxed) + 10_000;
    for _ in 0..t.shard_count() + 1 {
        out.clear();
        t.expire(end, usize::MAX, &mut out);
        expired += out.len();
    }
    let st = t.stats();
    assert_eq!(st.refused_full, refused);
    assert_eq!(
        inserted.load(Ordering::Relaxed) + refused,
        2 * PER_THREAD as u64
    );
    assert_eq!(st.inserted, inserted.load(Ordering::Relaxed));
    assert_eq!(expired as u64, st.expired);
    assert_eq!(st.expired, st.inserted);
    assert_eq!((t.len(), st.entries), (0, 0));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// Counts heap allocations per thread, so one test can prove the packet path allocates
/// nothing while other tests run in parallel.
mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        // const-initialised Cell: no destructor, so no allocation on first use.
        static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    pub(super) struct Counting;

    fn bump() {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    }

    pub(super) fn count() -> u64 {
        COUNT.with(|c| c.get())
    }

    // SAFETY: forwards every call to the system allocator unchanged; only counts.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            bump();
            // SAFETY: same contract as the caller's.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            bump();
            // SAFETY: same contract as the caller's.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            bump();
            // SAFETY: same contract as the caller's.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: same contract as the caller's.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;
}

#[test]
fn packet_path_never_allocates() {
    let t = table(4096);
    let pers = Persistence::new(PersistKind::Port, 24);
    let mut swept = Vec::with_capacity(8192);
    let before = alloc_count::count();
    for round in 0..3u32 {
        let now = round * 1000;
        for i in 0..2000u16 {
            let k = ConnKey::v4(
                proto::TCP,
                [198, 51, 100, (i % 200) as u8],
                10_000 + i,
                [192, 0, 2, 10],
                80,
            );
            let tk = pers.template_key(&k, 0);
            let dest = match t.lookup_template(&tk) {
                Some(tpl) => tpl.dest(),
                None => {
                    let d = sa("10.0.0.2:8080");
                    let _ =
                        t.insert_template(ConnEntry::template(tk, d, FwdMethod::Masq, 1, 300, now));
                    d
                }
            };
            assert!(t.lookup(&k).is_none());
            let mut e = ConnEntry::new(k, dest, FwdMethod::Masq, 1);
            e.set_persistence(Some(pers));
            t.insert_on_packet(e, SYN, now).unwrap();
            let r = ReplyKey::v4(
                proto::TCP,
                [10, 0, 0, 2],
                8080,
                [198, 51, 100, (i % 200) as u8],
                10_000 + i,
            );
            t.update_on_reply(&r, SYN | ACK, now).unwrap();
            t.update_on_packet(&k, Direction::Input, ACK, now).unwrap();
            if i % 2 == 0 {
                t.remove(&k).unwrap();
            }
        }
        // Everything from this round is dead by the next one.
        t.expire(now + 999, usize::MAX, &mut swept);
        t.expire(now + 999, usize::MAX, &mut swept);
        swept.clear();
    }
    assert_eq!(alloc_count::count() - before, 0);
    // The counter does see allocations on this thread.
    let v: Vec<u8> = std::hint::black_box(Vec::with_capacity(16));
    assert!(alloc_count::count() > before);
    drop(v);
    // Templates seen while their connections were still counted were re-armed; they go next.
    assert_eq!(t.len(), t.stats().templates);
    t.expire(10_000, usize::MAX, &mut swept);
    t.expire(10_000, usize::MAX, &mut swept);
    assert!(t.is_empty());
}

#[test]
fn sync_is_due_on_new_flows_state_changes_refreshes_and_adoption() {
    let t = table(64);
    let k = tcp_key(4000);
    let e = ConnEntry::new(k, sa("10.0.0.2:80"), FwdMethod::DirectRoute, 1);
    let (_, c) = t.insert_on_packet(e, SYN, 100).unwrap();
    assert!(c.sync, "a half-open flow is synced from its first packet");
    // Same state, same second: nothing new for the backups.
    let (_, c) = t.update_on_packet(&k, Direction::Input, SYN, 100).unwrap();
    assert!(!c.sync);
    let (_, c) = t.update_on_packet(&k, Direction::Input, ACK, 101).unwrap();
    assert!(c.sync, "SYN_RECV -> ESTABLISHED is a state change");
    let (e, c) = t.update_on_packet(&k, Direction::Input, ACK, 102).unwrap();
    assert!(!c.sync);
    // Established (900 s): refreshed once a minute while traffic flows.
    let period = super::entry::refresh_period(e.timeout());
    assert_eq!(period, 60);
    let (_, c) = t
        .update_on_packet(&k, Direction::Input, ACK, 101 + 59)
        .unwrap();
    assert!(!c.sync);
    let (_, c) = t
        .update_on_packet(&k, Direction::Input, ACK, 101 + 60)
        .unwrap();
    assert!(c.sync);
    let (_, c) = t
        .update_on_packet(&k, Direction::Input, ACK, 101 + 61)
        .unwrap();
    assert!(!c.sync);
    // A replicated entry that sees traffic here was taken over: it becomes local and goes out.
    let mut synced = t.lookup(&k).unwrap();
    synced.set_synced_from(2);
    t.upsert(synced).unwrap();
    let (e, c) = t.update_on_packet(&k, Direction::Input, ACK, 170).unwrap();
    assert!(c.sync);
    assert_eq!(e.origin(), 0);
    assert!(!e.has_flag(flags::SYNC));
    // One-packet flows never are.
    let k2 = tcp_key(4001);
    let mut e = ConnEntry::new(k2, sa("10.0.0.2:80"), FwdMethod::DirectRoute, 1);
    e.set_flags(e.flags() | flags::ONE_PACKET);
    t.insert_on_packet(e, SYN, 100).unwrap();
    let (_, c) = t.update_on_packet(&k2, Direction::Input, ACK, 101).unwrap();
    assert!(!c.sync);
}
