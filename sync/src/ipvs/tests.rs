//! Codec tests. The wire bytes are written out by hand from the kernel's struct layouts
//! (`ip_vs_sync_mesg`, `ip_vs_sync_v4`, `ip_vs_sync_v6`, `ip_vs_sync_conn_v0`), so they
//! check the encoder against the kernel's format rather than against the decoder.

use std::net::SocketAddr;

use super::*;
use crate::conn::{
    ConnEntry, ConnKey, ConnTable, Family, FwdMethod, PersistKind, Persistence, SctpState,
    TableConfig, TcpState, TemplateTarget, Timeouts, flags, proto,
};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn conn(protocol: u8, flags: u32, state: u16, c: &str, v: &str, d: &str) -> SyncConn {
    SyncConn {
        protocol,
        flags,
        state,
        client: sa(c),
        virtual_addr: sa(v),
        dest: sa(d),
        fwmark: 0,
        timeout_s: 0,
        seq: None,
        pe: None,
    }
}

/// A v4 TCP ESTABLISHED direct-routing connection, as the table holds it after the handshake.
fn dr_established() -> ConnEntry {
    let key = ConnKey::v4(proto::TCP, [198, 51, 100, 7], 40000, [192, 0, 2, 10], 80);
    let mut e = ConnEntry::new(key, sa("10.0.0.2:80"), FwdMethod::DirectRoute, 0);
    e.set_state(TcpState::Established as u8);
    e.set_expiry(100, 900);
    e
}

fn encode_one(c: &SyncConn, syncid: u8) -> Vec<u8> {
    let msgs = encode(
        &SyncMessage {
            syncid,
            conns: vec![c.clone()],
        },
        DEFAULT_SYNC_MAXLEN,
    )
    .unwrap();
    assert_eq!(msgs.len(), 1);
    msgs.into_iter().next().unwrap()
}

/// A v1 message around hand-written records (each already padded by the caller as needed).
fn v1_message(syncid: u8, nr_conns: u8, body: &[u8]) -> Vec<u8> {
    let size = (8 + body.len()) as u16;
    let mut m = vec![0, syncid, (size >> 8) as u8, size as u8, nr_conns, 1, 0, 0];
    m.extend_from_slice(body);
    m
}

/// A bare 36-byte IPv4 record: TCP, given flags/state, 198.51.100.7:40000 -> 192.0.2.10:80 ->
/// 10.0.0.2:80, with `extra` option bytes appended and `ver_size` covering them.
fn v4_record(protocol: u8, flags: u32, state: u16, extra: &[u8]) -> Vec<u8> {
    let size = (36 + extra.len()) as u16;
    let mut r = vec![0u8; 36];
    r[0] = 0; // type: IPv4
    r[1] = protocol;
    r[2..4].copy_from_slice(&size.to_be_bytes());
    r[4..8].copy_from_slice(&flags.to_be_bytes());
    r[8..10].copy_from_slice(&state.to_be_bytes());
    r[10..12].copy_from_slice(&40000u16.to_be_bytes());
    r[12..14].copy_from_slice(&80u16.to_be_bytes());
    r[14..16].copy_from_slice(&80u16.to_be_bytes());
    r[16..20].copy_from_slice(&0u32.to_be_bytes());
    r[20..24].copy_from_slice(&900u32.to_be_bytes());
    r[24..28].copy_from_slice(&[198, 51, 100, 7]);
    r[28..32].copy_from_slice(&[192, 0, 2, 10]);
    r[32..36].copy_from_slice(&[10, 0, 0, 2]);
    r.extend_from_slice(extra);
    while !r.len().is_multiple_of(4) {
        r.push(0);
    }
    r
}

const TCP_DR_EST: u32 = 0x0083; // DROUTE | NOOUTPUT, INACTIVE cleared by ESTABLISHED

// ---------------------------------------------------------------------------------------------
// Exact bytes

#[test]
fn ipv4_tcp_established_dr_exact_bytes() {
    let e = dr_established();
    let c = SyncConn::from_entry(&e, e.timeout()).unwrap();
    let bytes = encode_one(&c, 7);

    #[rustfmt::skip]
    let expected: [u8; 44] = [
        // ip_vs_sync_mesg
        0x00,             // 0 reserved: 0 so v0 receivers see no records
        0x07,             // 1 syncid
        0x00, 0x2c,       // 2 size = 8 + 36 = 44
        0x01,             // 4 nr_conns
        0x01,             // 5 version
        0x00, 0x00,       // 6 spare
        // ip_vs_sync_v4 (message offset 8)
        0x00,             // +0 type: IPv4
        0x06,             // +1 protocol: TCP
        0x00, 0x24,       // +2 ver_size: version 0, size 36
        0x00, 0x00, 0x00, 0x83, // +4 flags: DROUTE | NOOUTPUT
        0x00, 0x01,       // +8 state: ESTABLISHED
        0x9c, 0x40,       // +10 cport 40000
        0x00, 0x50,       // +12 vport 80
        0x00, 0x50,       // +14 dport 80
        0x00, 0x00, 0x00, 0x00, // +16 fwmark
        0x00, 0x00, 0x03, 0x84, // +20 timeout 900 s
        198, 51, 100, 7,  // +24 caddr
        192, 0, 2, 10,    // +28 vaddr
        10, 0, 0, 2,      // +32 daddr
    ];
    assert_eq!(bytes, expected);
    assert_eq!(record_len(Family::V4), 36);
    assert_eq!(c.encoded_len(), 36);

    let d = decode(&bytes, 7).unwrap();
    assert_eq!(d.version, WireVersion::V1);
    assert_eq!(d.message.syncid, 7);
    assert_eq!(d.message.conns, vec![c]);
    assert!(d.dropped.is_empty());
    assert!(d.aborted.is_none());
}

#[test]
fn ipv6_udp_nat_record_is_72_bytes() {
    let mut c = conn(
        proto::UDP,
        u32::from(flags::INACTIVE), // MASQ = 0
        0,
        "[2001:db8::7]:40000",
        "[2001:db8::10]:443",
        "[2001:db8:1::2]:8443",
    );
    c.fwmark = 0x2a;
    c.timeout_s = 300;
    let bytes = encode_one(&c, 3);
    assert_eq!(bytes.len(), 80);
    assert_eq!(record_len(Family::V6), 72);

    let mut exp = vec![0u8; 80];
    exp[0..8].copy_from_slice(&[0, 3, 0, 80, 1, 1, 0, 0]);
    let r = 8;
    exp[r] = 0x01; // type: STYPE_F_INET6
    exp[r + 1] = 17;
    exp[r + 2..r + 4].copy_from_slice(&[0x00, 72]);
    exp[r + 4..r + 8].copy_from_slice(&[0, 0, 0x01, 0x00]);
    exp[r + 8..r + 10].copy_from_slice(&[0, 0]);
    exp[r + 10..r + 12].copy_from_slice(&40000u16.to_be_bytes());
    exp[r + 12..r + 14].copy_from_slice(&443u16.to_be_bytes());
    exp[r + 14..r + 16].copy_from_slice(&8443u16.to_be_bytes());
    exp[r + 16..r + 20].copy_from_slice(&[0, 0, 0, 0x2a]);
    exp[r + 20..r + 24].copy_from_slice(&[0, 0, 0x01, 0x2c]);
    let ip6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
    exp[r + 24..r + 40].copy_from_slice(&ip6("2001:db8::7"));
    exp[r + 40..r + 56].copy_from_slice(&ip6("2001:db8::10"));
    exp[r + 56..r + 72].copy_from_slice(&ip6("2001:db8:1::2"));
    assert_eq!(bytes, exp);

    let d = decode(&bytes, 0).unwrap();
    assert_eq!(d.message.conns, vec![c]);
}

#[test]
fn seq_option_is_26_bytes_and_next_record_is_aligned() {
    let mut c = conn(
        proto::TCP,
        u32::from(flags::IN_SEQ | flags::OUT_SEQ), // MASQ with both deltas
        TcpState::Established as u16,
        "198.51.100.7:40000",
        "192.0.2.10:21",
        "10.0.0.2:21",
    );
    c.timeout_s = 900;
    c.seq = Some(SeqData {
        in_seq: SeqAdjust {
            init_seq: 0x0102_0304,
            delta: 5,
            previous_delta: 3,
        },
        out_seq: SeqAdjust {
            init_seq: 0xa0b0_c0d0,
            delta: 0xffff_fffe,
            previous_delta: 0,
        },
    });
    assert_eq!(c.encoded_len(), 36 + 2 + 24);

    // Alone: 62-byte record, no trailing padding (the kernel pads before the next record).
    let one = encode_one(&c, 1);
    assert_eq!(one.len(), 8 + 62);
    assert_eq!(&one[2..4], &[0, 70]);
    let r = 8;
    assert_eq!(&one[r + 2..r + 4], &[0, 62]); // ver_size excludes padding
    #[rustfmt::skip]
    let opt: [u8; 26] = [
        0x01, 24,                   // IPVS_OPT_SEQ_DATA, len 24
        0x01, 0x02, 0x03, 0x04,     // in_seq.init_seq
        0x00, 0x00, 0x00, 0x05,     // in_seq.delta
        0x00, 0x00, 0x00, 0x03,     // in_seq.previous_delta
        0xa0, 0xb0, 0xc0, 0xd0,     // out_seq.init_seq
        0xff, 0xff, 0xff, 0xfe,     // out_seq.delta
        0x00, 0x00, 0x00, 0x00,     // out_seq.previous_delta
    ];
    assert_eq!(&one[r + 36..r + 62], &opt);

    // Two: the second starts at 8 + 64, after two zero padding bytes.
    let two = encode(
        &SyncMessage {
            syncid: 1,
            conns: vec![c.clone(), c.clone()],
        },
        DEFAULT_SYNC_MAXLEN,
    )
    .unwrap();
    assert_eq!(two.len(), 1);
    let m = &two[0];
    assert_eq!(m.len(), 8 + 64 + 62);
    assert_eq!(&m[2..4], &134u16.to_be_bytes());
    assert_eq!(m[4], 2);
    assert_eq!(&m[70..72], &[0, 0]);
    assert_eq!(&m[72..74], &[0x00, 0x06]); // type IPv4, TCP
    assert_eq!(&m[74..76], &[0, 62]);

    let d = decode(m, 0).unwrap();
    assert_eq!(d.message.conns, vec![c.clone(), c]);
}

#[test]
fn pe_name_sip_and_pe_data() {
    let call_id = b"a84b4c76e66710"; // 14 bytes
    let mut t = conn(
        proto::UDP,
        u32::from(flags::TEMPLATE | flags::DROUTE | flags::INACTIVE | flags::NOOUTPUT),
        0,
        "198.51.100.0:0",
        "192.0.2.10:5060",
        "10.0.0.2:5060",
    );
    t.timeout_s = 360;
    t.pe = Some(PeData {
        name: "sip".into(),
        data: call_id.to_vec(),
    });
    // 36 + (2 + 14) + (2 + 3) = 57: not a multiple of 4.
    assert_eq!(t.encoded_len(), 57);
    let bytes = encode(
        &SyncMessage {
            syncid: 0,
            conns: vec![t.clone(), t.clone()],
        },
        DEFAULT_SYNC_MAXLEN,
    )
    .unwrap()
    .remove(0);
    let r = 8;
    assert_eq!(&bytes[r + 2..r + 4], &[0, 57]);
    assert_eq!(&bytes[r + 4..r + 8], &[0, 0, 0x11, 0x83]);
    // PE data first, then the name, as the kernel writes them.
    assert_eq!(&bytes[r + 36..r + 38], &[0x02, 14]);
    assert_eq!(&bytes[r + 38..r + 52], call_id);
    assert_eq!(&bytes[r + 52..r + 54], &[0x03, 3]);
    assert_eq!(&bytes[r + 54..r + 57], b"sip");
    // Three bytes of padding, then the second record at 8 + 60.
    assert_eq!(&bytes[r + 57..r + 60], &[0, 0, 0]);
    assert_eq!(&bytes[r + 60 + 2..r + 60 + 4], &[0, 57]);
    assert_eq!(bytes.len(), 8 + 60 + 57);

    let d = decode(&bytes, 0).unwrap();
    assert_eq!(d.message.conns, vec![t.clone(), t.clone()]);

    // The table cannot hold PE data: a template keyed by it is refused, a connection drops it.
    let timeouts = Timeouts::default();
    let ctx = ImportContext {
        service: 1,
        now: 10,
        origin: 2,
        persistence: None,
        timeouts: &timeouts,
    };
    assert_eq!(t.to_entry(&ctx), Err(ConvertError::TemplatePeData));
    let mut c = t.clone();
    c.flags &= !u32::from(flags::TEMPLATE);
    c.client = sa("198.51.100.7:5060");
    let e = c.to_entry(&ctx).unwrap();
    assert_eq!(e.client(), c.client);
}

// ---------------------------------------------------------------------------------------------
// Entry <-> record round trips

fn tcp_like_state(protocol: u8) -> u8 {
    match protocol {
        proto::TCP => TcpState::Established as u8,
        proto::SCTP => SctpState::Established as u8,
        _ => 0,
    }
}

/// Connections and templates over both families, TCP/UDP/SCTP and every forwarding method.
fn sample_entries(now: u32) -> Vec<ConnEntry> {
    let fwds = [
        FwdMethod::Masq,
        FwdMethod::Local,
        FwdMethod::Tunnel,
        FwdMethod::DirectRoute,
        FwdMethod::Bypass,
    ];
    let families = [
        ("198.51.100.7", "192.0.2.10", "10.0.0.2"),
        ("2001:db8::7", "2001:db8::10", "2001:db8:1::2"),
    ];
    let mut out = Vec::new();
    let mut port = 30000u16;
    for (c, v, d) in families {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        for protocol in [proto::TCP, proto::UDP, proto::SCTP] {
            for fwd in fwds {
                port += 1;
                let key = ConnKey::new(
                    protocol,
                    SocketAddr::new(ip(c), port),
                    SocketAddr::new(ip(v), 443),
                )
                .unwrap();
                let mut e = ConnEntry::new(key, SocketAddr::new(ip(d), 8443), fwd, 4);
                e.set_state(tcp_like_state(protocol));
                e.set_fwmark(u32::from(port) % 3);
                e.set_expiry(now, 100 + u32::from(port % 50));
                out.push(e);
            }
            // A plain persistent-service template and a port-0 one.
            for vport in [443, 0] {
                let key = ConnKey::template(
                    protocol,
                    ip(c),
                    24,
                    TemplateTarget::Virtual(SocketAddr::new(ip(v), vport)),
                )
                .unwrap();
                let mut t = ConnEntry::template(
                    key,
                    SocketAddr::new(ip(d), vport),
                    FwdMethod::DirectRoute,
                    4,
                    300,
                    now,
                );
                t.set_state(1); // ASSURED
                out.push(t);
            }
        }
        // A fwmark template: protocol 0, fwmark in the virtual address.
        let key = ConnKey::template(proto::TCP, ip(c), 32, TemplateTarget::Fwmark(7)).unwrap();
        let mut t = ConnEntry::template(
            key,
            SocketAddr::new(ip(d), 0),
            FwdMethod::Tunnel,
            4,
            600,
            now,
        );
        t.set_fwmark(7);
        out.push(t);
    }
    out
}

#[test]
fn entries_round_trip_through_the_wire() {
    let now = 1000;
    let entries = sample_entries(now);
    let mut enc = Encoder::new(9, DEFAULT_SYNC_MAXLEN);
    for e in &entries {
        enc.push(&SyncConn::from_entry(e, e.timeout()).unwrap())
            .unwrap();
    }
    let msgs = enc.finish();
    assert!(msgs.len() > 1, "a full table dump spans several messages");

    let timeouts = Timeouts::default();
    let ctx = ImportContext {
        service: 4,
        now,
        origin: 3,
        persistence: None,
        timeouts: &timeouts,
    };
    let mut decoded = Vec::new();
    for m in &msgs {
        assert!(m.len() <= usize::from(DEFAULT_SYNC_MAXLEN));
        let d = decode(m, 9).unwrap();
        assert!(d.dropped.is_empty() && d.aborted.is_none(), "{d:?}");
        decoded.extend(d.message.conns);
    }
    assert_eq!(decoded.len(), entries.len());

    let table = ConnTable::new(TableConfig::new(1024)).unwrap();
    for (orig, rec) in entries.iter().zip(&decoded) {
        let got = rec.to_entry(&ctx).unwrap();
        let mut want = *orig;
        want.set_synced_from(3);
        assert_eq!(got, want, "record {rec:?}");
        assert_eq!(rec.is_template(), orig.is_template());
        if orig.is_template() {
            assert_eq!(rec.client.port(), 0, "IPVS templates carry cport 0");
        }
        table.upsert(got).unwrap();
        assert_eq!(table.lookup(got.key()), Some(got));
    }
}

#[test]
fn fwmark_template_wire_fields() {
    let key = ConnKey::template(
        proto::TCP,
        "198.51.100.77".parse().unwrap(),
        24,
        TemplateTarget::Fwmark(7),
    )
    .unwrap();
    let mut t = ConnEntry::template(key, sa("10.0.0.2:0"), FwdMethod::DirectRoute, 0, 300, 0);
    t.set_fwmark(7);
    let c = SyncConn::from_entry(&t, t.timeout()).unwrap();
    let b = encode_one(&c, 0);
    let r = 8;
    assert_eq!(b[r + 1], 0, "fwmark templates use IPPROTO_IP");
    assert_eq!(&b[r + 4..r + 8], &[0, 0, 0x11, 0x83]); // TEMPLATE|INACTIVE|NOOUTPUT|DROUTE
    assert_eq!(&b[r + 10..r + 12], &[0, 0]); // cport
    assert_eq!(&b[r + 12..r + 14], &[0, 0]); // vport
    assert_eq!(&b[r + 16..r + 20], &[0, 0, 0, 7]); // fwmark
    assert_eq!(&b[r + 20..r + 24], &[0, 0, 0x01, 0x2c]); // 300 s
    assert_eq!(&b[r + 24..r + 28], &[198, 51, 100, 0]); // masked client
    assert_eq!(&b[r + 28..r + 32], &[0, 0, 0, 7]); // fwmark as the virtual address
}

#[test]
fn persistence_link_comes_from_the_context() {
    let e = dr_established();
    let c = SyncConn::from_entry(&e, 900).unwrap();
    let timeouts = Timeouts::default();
    let p = Persistence::new(PersistKind::Port, 24);
    let ctx = ImportContext {
        service: 0,
        now: 100,
        origin: 1,
        persistence: Some(p),
        timeouts: &timeouts,
    };
    let got = c.to_entry(&ctx).unwrap();
    assert_eq!(got.persistence(), Some(p));
}

#[test]
fn mixed_family_entries_are_refused() {
    // IPv6 VIP tunnelled to an IPv4 real server: one `type` bit cannot describe both.
    let key = ConnKey::new(
        proto::TCP,
        sa("[2001:db8::7]:40000"),
        sa("[2001:db8::10]:80"),
    )
    .unwrap();
    let e = ConnEntry::new(key, sa("10.0.0.2:80"), FwdMethod::Tunnel, 0);
    assert_eq!(
        SyncConn::from_entry(&e, 60),
        Err(ConvertError::MixedFamily {
            client: Family::V6,
            virtual_addr: Family::V6,
            dest: Family::V4,
        })
    );

    let c = conn(
        proto::TCP,
        0x3,
        1,
        "[2001:db8::7]:40000",
        "[2001:db8::10]:80",
        "10.0.0.2:80",
    );
    assert_eq!(c.family(), None);
    let mut enc = Encoder::new(0, DEFAULT_SYNC_MAXLEN);
    enc.push(&dr_conn()).unwrap();
    assert!(matches!(
        enc.push(&c),
        Err(EncodeError::MixedFamily {
            dest: Family::V4,
            ..
        })
    ));
    // The failed push left the open message untouched.
    let msgs = enc.finish();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].len(), 44);
    let timeouts = Timeouts::default();
    let ctx = ImportContext {
        service: 0,
        now: 0,
        origin: 1,
        persistence: None,
        timeouts: &timeouts,
    };
    assert!(matches!(
        c.to_entry(&ctx),
        Err(ConvertError::MixedFamily { .. })
    ));
}

fn dr_conn() -> SyncConn {
    let e = dr_established();
    SyncConn::from_entry(&e, e.timeout()).unwrap()
}

#[test]
fn to_entry_applies_backup_rules() {
    let timeouts = Timeouts::default();
    let ctx = ImportContext {
        service: 2,
        now: 50,
        origin: 5,
        persistence: None,
        timeouts: &timeouts,
    };
    // Bits a backup never takes: HASHED, ONE_PACKET, NFCT (bit 16), junk above; SEQ bits are
    // dropped because the table keeps no deltas. SYNC is set by the import itself.
    let mut c = dr_conn();
    c.flags = TCP_DR_EST
        | u32::from(flags::HASHED | flags::ONE_PACKET | flags::SEQ_MASK)
        | (1 << 16)
        | 0x8000_0000;
    c.timeout_s = 0;
    let e = c.to_entry(&ctx).unwrap();
    assert_eq!(
        e.flags(),
        flags::DROUTE | flags::NOOUTPUT | flags::SYNC,
        "{:#x}",
        e.flags()
    );
    assert_eq!(e.origin(), 5);
    assert_eq!(e.service(), 2);
    // No timeout on the wire: the state's default (ESTABLISHED 900 s).
    assert_eq!(e.timeout(), 900);
    assert_eq!(e.expires(), 950);
    assert!(e.is_active());

    let mut t = c.clone();
    t.flags = u32::from(flags::TEMPLATE | flags::DROUTE);
    t.client = sa("198.51.100.0:0");
    t.state = 0;
    let te = t.to_entry(&ctx).unwrap();
    assert!(te.is_template());
    assert_eq!(te.timeout(), TEMPLATE_DEFAULT_TIMEOUT);

    let mut bad = c.clone();
    bad.flags = 5;
    assert_eq!(bad.to_entry(&ctx), Err(ConvertError::UnknownForwarding(5)));
    let mut bad = c.clone();
    bad.state = 11;
    assert!(matches!(
        bad.to_entry(&ctx),
        Err(ConvertError::InvalidState { state: 11, .. })
    ));
    let mut bad = t.clone();
    bad.state = 2;
    assert!(matches!(
        bad.to_entry(&ctx),
        Err(ConvertError::InvalidState { template: true, .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Receiver validation

#[test]
fn header_checks() {
    let good = encode_one(&dr_conn(), 7);
    assert_eq!(
        decode(&good[..3], 0),
        Err(MessageError::TooShort { len: 3 })
    );
    // Size field must equal the datagram length: trailing bytes and truncation both fail.
    let mut longer = good.clone();
    longer.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(
        decode(&longer, 0),
        Err(MessageError::SizeMismatch {
            header: 44,
            actual: 48
        })
    );
    assert!(matches!(
        decode(&good[..43], 0),
        Err(MessageError::SizeMismatch { .. })
    ));
    // SyncID filter: 0 on the backup accepts all.
    assert_eq!(
        decode(&good, 8),
        Err(MessageError::SyncIdMismatch {
            message: 7,
            backup: 8
        })
    );
    assert_eq!(decode(&good, 0).unwrap().message.conns.len(), 1);
    assert_eq!(decode(&good, 7).unwrap().message.conns.len(), 1);
}

#[test]
fn not_v1_unless_version_1_reserved_0_spare_0() {
    let good = encode_one(&dr_conn(), 7);
    // version 2, or a nonzero spare: read as v0, whose count byte (reserved) is 0.
    for (off, val) in [(5, 2u8), (5, 0), (6, 1), (7, 1)] {
        let mut m = good.clone();
        m[off] = val;
        let d = decode(&m, 0).unwrap();
        assert_eq!(d.version, WireVersion::V0, "byte {off} = {val}");
        assert!(d.message.conns.is_empty());
        assert!(d.aborted.is_none());
    }
    // A nonzero first byte is a v0 record count.
    let mut m = good.clone();
    m[0] = 1;
    let d = decode(&m, 0).unwrap();
    assert_eq!(d.version, WireVersion::V0);
    assert_ne!(d.message.conns, vec![dr_conn()]);
}

#[test]
fn unknown_mandatory_option_drops_only_that_record() {
    let first = v4_record(proto::TCP, TCP_DR_EST, 1, &[0x05, 2, 0xaa, 0xbb]);
    assert_eq!(first.len(), 40);
    let second = v4_record(proto::TCP, TCP_DR_EST, 1, &[]);
    let m = v1_message(0, 2, &[first, second].concat());
    let d = decode(&m, 0).unwrap();
    assert_eq!(d.message.conns.len(), 1);
    assert_eq!(
        d.dropped,
        vec![DroppedEntry {
            index: 0,
            offset: 8,
            error: EntryError::UnknownMandatoryOption(5)
        }]
    );
    assert!(d.aborted.is_none());
}

#[test]
fn unknown_optional_option_is_skipped() {
    // Type 0x45 = 5 | IPVS_OPT_F_PARAM; a 41-byte record padded to 44.
    let first = v4_record(proto::TCP, TCP_DR_EST, 1, &[0x45, 3, 1, 2, 3]);
    assert_eq!(first.len(), 44);
    let m = v1_message(
        0,
        2,
        &[first, v4_record(proto::UDP, 0x100, 0, &[])].concat(),
    );
    let d = decode(&m, 0).unwrap();
    assert_eq!(d.message.conns.len(), 2);
    assert!(d.dropped.is_empty() && d.aborted.is_none());
    assert_eq!(d.message.conns[0].state, 1);
    assert_eq!(d.message.conns[1].protocol, proto::UDP);
    // The optional bit on a known type does not hide it: 0x41 is SEQ_DATA.
    let mut seq = vec![0x41, 24];
    seq.extend_from_slice(&[0u8; 24]);
    let m = v1_message(0, 1, &v4_record(proto::TCP, TCP_DR_EST, 1, &seq));
    assert_eq!(
        decode(&m, 0).unwrap().message.conns[0].seq,
        Some(SeqData::default())
    );
}

#[test]
fn malformed_options_drop_the_rest_of_the_message() {
    let ok = v4_record(proto::TCP, TCP_DR_EST, 1, &[]);
    let mut seq = vec![0x01, 24];
    seq.extend_from_slice(&[0u8; 24]);
    let cases: Vec<(Vec<u8>, StructuralErrorKind)> = vec![
        (
            [&b"\x03\x03sip"[..], &b"\x03\x03sip"[..]].concat(),
            StructuralErrorKind::DuplicateOption(3),
        ),
        (
            [&b"\x02\x01x"[..], &b"\x02\x01y"[..]].concat(),
            StructuralErrorKind::DuplicateOption(2),
        ),
        (
            [&seq[..], &[0x41, 24][..], &[0u8; 24][..]].concat(),
            StructuralErrorKind::DuplicateOption(0x41),
        ),
        (
            vec![0x45, 0],
            StructuralErrorKind::OptionLength {
                ptype: 0x45,
                len: 0,
            },
        ),
        (
            vec![0x02, 9, 1, 2],
            StructuralErrorKind::OptionLength { ptype: 2, len: 9 },
        ),
        (vec![0x02], StructuralErrorKind::OptionTruncated),
        (
            [&[0x01, 20][..], &[0u8; 20][..]].concat(),
            StructuralErrorKind::SeqLength(20),
        ),
        (
            [&[0x03, 17][..], &[b'a'; 17][..]].concat(),
            StructuralErrorKind::PeNameTooLong(17),
        ),
    ];
    for (opts, kind) in cases {
        let bad = v4_record(proto::TCP, TCP_DR_EST, 1, &opts);
        let m = v1_message(0, 3, &[ok.clone(), bad, ok.clone()].concat());
        let d = decode(&m, 0).unwrap();
        assert_eq!(d.message.conns.len(), 1, "{kind:?}");
        assert_eq!(
            d.aborted,
            Some(StructuralError {
                index: 1,
                offset: 8 + 36,
                kind
            })
        );
    }
}

#[test]
fn bad_state_or_protocol_drops_only_that_record() {
    let tpl = u32::from(flags::TEMPLATE | flags::DROUTE);
    let records = [
        v4_record(proto::TCP, TCP_DR_EST, 1, &[]),
        v4_record(proto::TCP, TCP_DR_EST, 11, &[]), // TCP has 11 states
        v4_record(proto::UDP, 0x100, 1, &[]),       // UDP has one
        v4_record(proto::SCTP, 0x100, 13, &[]),     // SCTP CLOSED: fine
        v4_record(proto::SCTP, 0x100, 14, &[]),
        v4_record(47, 0x100, 0, &[]),       // GRE: IPVS has no handler
        v4_record(0, tpl, 0, &[]),          // fwmark template: protocol 0 allowed
        v4_record(proto::TCP, tpl, 9, &[]), // template states are not checked
        v4_record(proto::ESP, 0x100, 0, &[]),
    ];
    let m = v1_message(0, records.len() as u8, &records.concat());
    let d = decode(&m, 0).unwrap();
    assert!(d.aborted.is_none());
    let errors: Vec<_> = d
        .dropped
        .iter()
        .map(|x| (x.index, x.error.clone()))
        .collect();
    assert_eq!(
        errors,
        vec![
            (
                1,
                EntryError::InvalidState {
                    protocol: 6,
                    state: 11,
                    count: 11
                }
            ),
            (
                2,
                EntryError::InvalidState {
                    protocol: 17,
                    state: 1,
                    count: 1
                }
            ),
            (
                4,
                EntryError::InvalidState {
                    protocol: 132,
                    state: 14,
                    count: 14
                }
            ),
            (5, EntryError::UnknownProtocol(47)),
        ]
    );
    assert_eq!(d.dropped[1].offset, 8 + 2 * 36);
    let kept: Vec<_> = d
        .message
        .conns
        .iter()
        .map(|c| (c.protocol, c.state))
        .collect();
    assert_eq!(kept, vec![(6, 1), (132, 13), (0, 0), (6, 9), (50, 0)]);
}

#[test]
fn pe_pairing_rules() {
    // Data without a name: the kernel finds no engine and drops the record.
    let m = v1_message(0, 1, &v4_record(proto::UDP, 0x100, 0, b"\x02\x02id"));
    let d = decode(&m, 0).unwrap();
    assert_eq!(d.dropped[0].error, EntryError::PeDataWithoutName);
    // A name without data is ignored.
    let m = v1_message(0, 1, &v4_record(proto::UDP, 0x100, 0, b"\x03\x03sip"));
    let d = decode(&m, 0).unwrap();
    assert_eq!(d.message.conns[0].pe, None);
    // Name order does not matter on receive.
    let m = v1_message(
        0,
        1,
        &v4_record(proto::UDP, 0x100, 0, b"\x03\x03sip\x02\x02id"),
    );
    let d = decode(&m, 0).unwrap();
    assert_eq!(
        d.message.conns[0].pe,
        Some(PeData {
            name: "sip".into(),
            data: b"id".to_vec()
        })
    );
    let m = v1_message(
        0,
        1,
        &v4_record(proto::UDP, 0x100, 0, b"\x03\x02\xff\xfe\x02\x02id"),
    );
    assert_eq!(
        decode(&m, 0).unwrap().dropped[0].error,
        EntryError::PeNameNotUtf8
    );
}

#[test]
fn record_framing_errors() {
    let ok = v4_record(proto::TCP, TCP_DR_EST, 1, &[]);
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut bad = ok.clone();
        f(&mut bad);
        let m = v1_message(0, 2, &[ok.clone(), bad].concat());
        decode(&m, 0).unwrap()
    };
    let kind = |d: DecodedMessage| {
        assert_eq!(d.message.conns.len(), 1);
        d.aborted.unwrap().kind
    };
    // type: bit 0 selects IPv6; any other nonzero value is malformed.
    assert_eq!(
        kind(with(&|r| r[0] = 2)),
        StructuralErrorKind::RecordType(2)
    );
    // type 3 has bit 0: an IPv6 record, which needs 72 bytes.
    assert_eq!(
        kind(with(&|r| r[0] = 3)),
        StructuralErrorKind::RecordTooShort {
            size: 36,
            needed: 72
        }
    );
    assert_eq!(
        kind(with(&|r| r[2] = 0x10)),
        StructuralErrorKind::RecordVersion(1)
    );
    assert_eq!(
        kind(with(&|r| r[3] = 20)),
        StructuralErrorKind::RecordTooShort {
            size: 20,
            needed: 36
        }
    );
    assert_eq!(
        kind(with(&|r| r[3] = 40)),
        StructuralErrorKind::Overrun { size: 40 }
    );
    // More records announced than present.
    let m = v1_message(0, 3, &[ok.clone(), ok.clone()].concat());
    let d = decode(&m, 0).unwrap();
    assert_eq!(d.message.conns.len(), 2);
    assert_eq!(
        d.aborted,
        Some(StructuralError {
            index: 2,
            offset: 80,
            kind: StructuralErrorKind::Truncated { needed: 36 }
        })
    );
    // Bytes after the counted records are ignored.
    let m = v1_message(0, 1, &[ok.clone(), vec![0xee; 7]].concat());
    let d = decode(&m, 0).unwrap();
    assert_eq!(d.message.conns.len(), 1);
    assert!(d.aborted.is_none());
}

#[test]
fn v0_messages_decode() {
    // ip_vs_sync_mesg_v0 + two ip_vs_sync_conn_v0, the second with the 24-byte seq trailer.
    let mut m = vec![
        2, // nr_conns
        5, // syncid
        0, 0, // size, set below
    ];
    #[rustfmt::skip]
    let first: [u8; 24] = [
        0,                      // reserved
        6,                      // protocol TCP
        0x9c, 0x40,             // cport 40000
        0x00, 0x50,             // vport 80
        0x00, 0x50,             // dport 80
        198, 51, 100, 7,        // caddr
        192, 0, 2, 10,          // vaddr
        10, 0, 0, 2,            // daddr
        0x00, 0x83,             // flags DROUTE|NOOUTPUT
        0x00, 0x01,             // state ESTABLISHED
    ];
    m.extend_from_slice(&first);
    let mut second = first;
    second[2..4].copy_from_slice(&40001u16.to_be_bytes());
    second[20..22].copy_from_slice(&0x0400u16.to_be_bytes()); // MASQ | IN_SEQ
    m.extend_from_slice(&second);
    // v0 masters copy struct ip_vs_seq in host order.
    for w in [11u32, 12, 13, 21, 22, 23] {
        m.extend_from_slice(&w.to_ne_bytes());
    }
    let size = m.len() as u16;
    assert_eq!(size, 4 + 24 + 48);
    m[2..4].copy_from_slice(&size.to_be_bytes());

    let d = decode(&m, 5).unwrap();
    assert_eq!(d.version, WireVersion::V0);
    assert_eq!(d.message.syncid, 5);
    assert!(d.aborted.is_none() && d.dropped.is_empty());
    let want0 = conn(
        6,
        0x83,
        1,
        "198.51.100.7:40000",
        "192.0.2.10:80",
        "10.0.0.2:80",
    );
    let mut want1 = conn(
        6,
        0x400,
        1,
        "198.51.100.7:40001",
        "192.0.2.10:80",
        "10.0.0.2:80",
    );
    want1.seq = Some(SeqData {
        in_seq: SeqAdjust {
            init_seq: 11,
            delta: 12,
            previous_delta: 13,
        },
        out_seq: SeqAdjust {
            init_seq: 21,
            delta: 22,
            previous_delta: 23,
        },
    });
    assert_eq!(d.message.conns, vec![want0, want1]);

    // Entry-level and structural errors follow the same rules as v1.
    let mut bad = m.clone();
    bad[4 + 23] = 11; // first record's state
    let d = decode(&bad, 0).unwrap();
    assert_eq!(d.dropped.len(), 1);
    assert_eq!(d.message.conns.len(), 1);
    let mut short = m[..4 + 24 + 30].to_vec();
    let short_len = short.len() as u16;
    short[2..4].copy_from_slice(&short_len.to_be_bytes());
    let d = decode(&short, 0).unwrap();
    assert_eq!(d.message.conns.len(), 1);
    assert_eq!(
        d.aborted.unwrap().kind,
        StructuralErrorKind::Truncated { needed: 48 }
    );

    // A v0 message with no records reads as nothing, whichever version it looks like.
    assert_eq!(decode(&[0, 1, 0, 4], 0).unwrap().message.conns, vec![]);
}

// ---------------------------------------------------------------------------------------------
// Message packing

#[test]
fn messages_are_bounded_by_max_len() {
    assert_eq!(records_per_message(Family::V4, DEFAULT_SYNC_MAXLEN), 40);
    assert_eq!(records_per_message(Family::V6, DEFAULT_SYNC_MAXLEN), 20);
    assert_eq!(records_per_message(Family::V4, 10), 1);
    assert_eq!(records_per_message(Family::V4, u16::MAX), 255);

    let v4 = dr_conn();
    let mut v6 = conn(
        proto::TCP,
        TCP_DR_EST,
        1,
        "[2001:db8::7]:1",
        "[2001:db8::10]:80",
        "[2001:db8:1::2]:80",
    );
    v6.timeout_s = 900;
    let sizes = |c: &SyncConn, n: usize, max: u16| {
        let msg = SyncMessage {
            syncid: 0,
            conns: vec![c.clone(); n],
        };
        let msgs = encode(&msg, max).unwrap();
        let mut total = 0;
        let counts: Vec<usize> = msgs
            .iter()
            .map(|m| {
                let d = decode(m, 0).unwrap();
                assert_eq!(usize::from(m[4]), d.message.conns.len());
                total += d.message.conns.len();
                d.message.conns.len()
            })
            .collect();
        assert_eq!(total, n);
        (counts, msgs.iter().map(Vec::len).max().unwrap())
    };
    assert_eq!(sizes(&v4, 100, 1472), (vec![40, 40, 20], 8 + 40 * 36));
    assert_eq!(sizes(&v6, 50, 1472), (vec![20, 20, 10], 8 + 20 * 72));
    // Large maxlen: capped by the one-byte record count.
    assert_eq!(
        sizes(&v4, 600, u16::MAX),
        (vec![255, 255, 90], 8 + 255 * 36)
    );
    // Smaller than one record: one record per (oversized) message, as the kernel does.
    assert_eq!(sizes(&v4, 3, 10), (vec![1, 1, 1], 44));
    assert!(encode(&SyncMessage::default(), 1472).unwrap().is_empty());

    // Streaming use: completed messages can be taken while one stays open.
    let mut enc = Encoder::new(0, 1472);
    for _ in 0..41 {
        enc.push(&v4).unwrap();
    }
    assert_eq!(enc.take_ready().len(), 1);
    assert!(enc.take_ready().is_empty());
    assert_eq!(enc.finish().len(), 1);
}

#[test]
fn encoder_rejects_bad_pe_lengths() {
    let mut c = dr_conn();
    let mut enc = Encoder::default();
    for (name, data, err) in [
        ("", vec![1], EncodeError::PeNameLength(0)),
        (
            "x".repeat(17).as_str(),
            vec![1],
            EncodeError::PeNameLength(17),
        ),
        ("sip", vec![], EncodeError::PeDataLength(0)),
        ("sip", vec![0; 256], EncodeError::PeDataLength(256)),
    ] {
        c.pe = Some(PeData {
            name: name.to_owned(),
            data,
        });
        assert_eq!(enc.push(&c), Err(err));
    }
    c.pe = Some(PeData {
        name: "x".repeat(16),
        data: vec![7; 255],
    });
    enc.push(&c).unwrap();
    let m = enc.finish().remove(0);
    assert_eq!(decode(&m, 0).unwrap().message.conns, vec![c]);
}

// ---------------------------------------------------------------------------------------------
// Robustness: random, truncated and mutated input

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn random_conn(rng: &mut XorShift) -> SyncConn {
    let v6 = rng.below(2) == 1;
    let addr = |rng: &mut XorShift| -> SocketAddr {
        let port = rng.next() as u16;
        if v6 {
            let b: [u8; 16] = rng.bytes(16).try_into().unwrap();
            SocketAddr::new(std::net::Ipv6Addr::from(b).into(), port)
        } else {
            let b: [u8; 4] = rng.bytes(4).try_into().unwrap();
            SocketAddr::new(std::net::Ipv4Addr::from(b).into(), port)
        }
    };
    let protocol =
        [proto::TCP, proto::UDP, proto::SCTP, proto::AH, proto::ESP][rng.below(5) as usize];
    let template = rng.below(4) == 0;
    let count = protocol_state_count(protocol).unwrap();
    let mut flags = rng.next() as u32 & !u32::from(flags::TEMPLATE);
    if template {
        flags |= u32::from(flags::TEMPLATE);
    }
    let state = if template {
        rng.next() as u16
    } else {
        rng.below(u64::from(count)) as u16
    };
    let seq = (rng.below(3) == 0).then(|| {
        let mut w = || rng.next() as u32;
        SeqData {
            in_seq: SeqAdjust {
                init_seq: w(),
                delta: w(),
                previous_delta: w(),
            },
            out_seq: SeqAdjust {
                init_seq: w(),
                delta: w(),
                previous_delta: w(),
            },
        }
    });
    let pe = (rng.below(4) == 0).then(|| {
        let name_len = 1 + rng.below(16) as usize;
        let data_len = 1 + rng.below(255) as usize;
        PeData {
            name: (0..name_len)
                .map(|_| char::from(b'a' + rng.below(26) as u8))
                .collect(),
            data: rng.bytes(data_len),
        }
    });
    SyncConn {
        protocol,
        flags,
        state,
        client: addr(rng),
        virtual_addr: addr(rng),
        dest: addr(rng),
        fwmark: rng.next() as u32,
        timeout_s: rng.next() as u32,
        seq,
        pe,
    }
}

/// Properties that hold for any accepted datagram.
fn check_decoded(buf: &[u8], d: &DecodedMessage) {
    let announced = match d.version {
        WireVersion::V1 => usize::from(buf[4]),
        WireVersion::V0 => usize::from(buf[0]),
    };
    let handled = d.message.conns.len() + d.dropped.len() + usize::from(d.aborted.is_some());
    assert!(handled <= announced);
    if d.aborted.is_none() {
        assert_eq!(handled, announced);
    }
    // Whatever was decoded re-encodes, and decodes back to itself.
    if !d.message.conns.is_empty() {
        let again = encode(&d.message, DEFAULT_SYNC_MAXLEN).unwrap();
        let back: Vec<SyncConn> = again
            .iter()
            .flat_map(|m| decode(m, 0).unwrap().message.conns)
            .collect();
        assert_eq!(back, d.message.conns);
    }
}

#[test]
fn random_records_round_trip() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..300 {
        let n = rng.below(60) as usize;
        let conns: Vec<SyncConn> = (0..n).map(|_| random_conn(&mut rng)).collect();
        let max_len = 1 + rng.below(3000) as u16;
        let msg = SyncMessage {
            syncid: rng.next() as u8,
            conns,
        };
        let msgs = encode(&msg, max_len).unwrap();
        let mut back = Vec::new();
        for m in &msgs {
            let d = decode(m, msg.syncid).unwrap();
            assert!(d.dropped.is_empty() && d.aborted.is_none());
            // Over max_len only when a single record needs it.
            assert!(
                m.len() <= usize::from(max_len) || m[4] == 1,
                "{} > {max_len}",
                m.len()
            );
            back.extend(d.message.conns);
        }
        assert_eq!(back, msg.conns);
    }
}

#[test]
fn decode_never_panics_on_random_or_damaged_input() {
    let mut rng = XorShift(0xdead_beef_cafe_f00d);
    // Valid messages to damage.
    let seeds: Vec<Vec<u8>> = (0..40)
        .flat_map(|_| {
            let n = 1 + rng.below(12) as usize;
            let conns = (0..n).map(|_| random_conn(&mut rng)).collect();
            encode(&SyncMessage { syncid: 0, conns }, 1472).unwrap()
        })
        .collect();
    let fix_size = |b: &mut Vec<u8>| {
        if b.len() >= 4 && b.len() <= usize::from(u16::MAX) {
            let s = b.len() as u16;
            b[2..4].copy_from_slice(&s.to_be_bytes());
        }
    };
    let mut accepted = 0;
    for i in 0..20_000u32 {
        let mut buf = match i % 4 {
            // Pure noise, sometimes dressed with a valid v1 header so the walk goes deeper.
            0 => {
                let n = rng.below(400) as usize;
                let mut b = rng.bytes(n);
                if b.len() >= 8 && rng.below(2) == 0 {
                    b[0] = 0;
                    b[5] = 1;
                    b[6] = 0;
                    b[7] = 0;
                }
                b
            }
            // Truncated.
            1 => {
                let s = &seeds[rng.below(seeds.len() as u64) as usize];
                s[..rng.below(s.len() as u64 + 1) as usize].to_vec()
            }
            // A few flipped bytes.
            2 => {
                let mut b = seeds[rng.below(seeds.len() as u64) as usize].clone();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(b.len() as u64) as usize;
                    b[at] = rng.next() as u8;
                }
                b
            }
            // Random record count and extra tail.
            _ => {
                let mut b = seeds[rng.below(seeds.len() as u64) as usize].clone();
                b[4] = rng.next() as u8;
                let n = rng.below(80) as usize;
                let tail = rng.bytes(n);
                b.extend_from_slice(&tail);
                b
            }
        };
        if rng.below(8) != 0 {
            fix_size(&mut buf);
        }
        if let Ok(d) = decode(&buf, 0) {
            accepted += 1;
            check_decoded(&buf, &d);
        }
    }
    // Most inputs got past the header checks, so the record walk was exercised.
    assert!(accepted > 10_000, "only {accepted} accepted");
}
