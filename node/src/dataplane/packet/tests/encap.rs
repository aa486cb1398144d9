use std::net::IpAddr;

use etherparse::{NetSlice, SlicedPacket};

use super::*;
use crate::dataplane::packet::{EncapError, OUTER_TTL, Tunnel, classify, encap};

const DIR4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const DIR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

fn tunnel(src: IpAddr, dst: IpAddr, mtu: u16) -> Tunnel {
    Tunnel {
        src,
        dst,
        src_mac: MAC_DIRECTOR,
        dst_mac: MAC_REAL,
        vlan_tci: None,
        mtu,
    }
}

/// Encapsulates and checks the result with etherparse: outer addresses, protocol, TTL,
/// checksum, and the payload equal to the inner IP packet byte for byte.
fn encap_and_check(spec: &Spec, t: &Tunnel) -> Vec<u8> {
    let frame = spec.frame();
    let pkt = classify(&frame).unwrap();
    let ip = *pkt.ip().unwrap();
    let inner = &frame[ip.l3_offset..ip.end];
    let mut out = vec![0u8; 2048];
    let n = encap(&frame, &pkt, &mut out, t).unwrap();
    let out = &out[..n];
    assert_eq!(&out[..6], &t.dst_mac);
    assert_eq!(&out[6..12], &t.src_mac);
    let sliced = SlicedPacket::from_ethernet(out).unwrap();
    let expected_proto = if ip.is_v4() { 4 } else { 41 };
    match sliced.net.unwrap() {
        NetSlice::Ipv4(o) => {
            let h = o.header();
            assert_eq!(IpAddr::V4(h.source_addr()), t.src);
            assert_eq!(IpAddr::V4(h.destination_addr()), t.dst);
            assert_eq!(h.protocol().0, expected_proto);
            assert_eq!(h.ttl(), OUTER_TTL);
            assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
            assert_eq!(h.dcp().value() << 2 | h.ecn().value(), ip.tos);
            assert_eq!(h.dont_fragment(), ip.is_v4() && ip.dont_fragment);
            assert!(!h.more_fragments() && h.fragments_offset().value() == 0);
            assert_eq!(o.payload().payload, inner);
        }
        NetSlice::Ipv6(o) => {
            let h = o.header();
            assert_eq!(IpAddr::V6(h.source_addr()), t.src);
            assert_eq!(IpAddr::V6(h.destination_addr()), t.dst);
            assert_eq!(h.next_header().0, expected_proto);
            assert_eq!(h.hop_limit(), OUTER_TTL);
            assert_eq!(h.traffic_class(), ip.tos);
            assert_eq!(o.payload().payload, inner);
        }
        other => panic!("{other:?}"),
    }
    // The inner packet is intact and classifiable as an IP packet of its own.
    out.to_vec()
}

#[test]
fn ipip_all_four_combinations() {
    let mut tos_spec = Spec::tcp4(40000, 80);
    tos_spec.payload = vec![0x42; 500];
    let v4 = tos_spec.clone();
    let v6 = Spec::udp6(40000, 53).payload(vec![0x17; 500]);
    encap_and_check(&v4, &tunnel(DIR4.into(), REAL4.into(), 1500));
    encap_and_check(&v6, &tunnel(DIR6.into(), REAL6.into(), 1500));
    encap_and_check(&v6, &tunnel(DIR4.into(), REAL4.into(), 1500));
    encap_and_check(&v4, &tunnel(DIR6.into(), REAL6.into(), 1500));
}

#[test]
fn df_and_tos_are_copied() {
    let spec = Spec::tcp4(1, 2).vlan(5);
    let mut frame = spec.frame();
    // DSCP AF41 + ECT(0), DF clear.
    frame[18 + 1] = 0x8A;
    set_df(&mut frame, 18, false);
    let pkt = classify(&frame).unwrap();
    let mut out = [0u8; 256];
    let n = encap(
        &frame,
        &pkt,
        &mut out,
        &tunnel(DIR4.into(), REAL4.into(), 1500),
    )
    .unwrap();
    let h = etherparse::Ipv4HeaderSlice::from_slice(&out[14..n]).unwrap();
    assert!(!h.dont_fragment());
    assert_eq!(out[14 + 1], 0x8A);
    assert_eq!(h.identification(), pkt.ip().unwrap().ipv4_id);
    // A tagged outgoing link.
    let mut t = tunnel(DIR4.into(), REAL4.into(), 1500);
    t.vlan_tci = Some(77);
    let n = encap(&frame, &pkt, &mut out, &t).unwrap();
    let sliced = SlicedPacket::from_ethernet(&out[..n]).unwrap();
    assert_eq!(sliced.vlan_ids().first().map(|v| v.value()), Some(77));
}

#[test]
fn too_big() {
    let big4 = Spec::tcp4(1, 2).payload(vec![0; 1460]).frame(); // 1500-byte IP packet, DF
    let pkt = classify(&big4).unwrap();
    let mut out = [0u8; 4096];
    assert_eq!(
        encap(
            &big4,
            &pkt,
            &mut out,
            &tunnel(DIR4.into(), REAL4.into(), 1500)
        ),
        Err(EncapError::TooBig { mtu: 1480 })
    );
    assert_eq!(
        encap(
            &big4,
            &pkt,
            &mut out,
            &tunnel(DIR6.into(), REAL6.into(), 1500)
        ),
        Err(EncapError::TooBig { mtu: 1460 })
    );
    // Without DF: would need fragmentation.
    let mut no_df = big4.clone();
    set_df(&mut no_df, 14, false);
    let pkt = classify(&no_df).unwrap();
    assert_eq!(
        encap(
            &no_df,
            &pkt,
            &mut out,
            &tunnel(DIR4.into(), REAL4.into(), 1500)
        ),
        Err(EncapError::NeedsFragmentation { mtu: 1480 })
    );
    // IPv6 is never fragmented on the way.
    let big6 = Spec::udp6(1, 2).payload(vec![0; 1452]).frame();
    let pkt = classify(&big6).unwrap();
    assert_eq!(
        encap(
            &big6,
            &pkt,
            &mut out,
            &tunnel(DIR6.into(), REAL6.into(), 1500)
        ),
        Err(EncapError::TooBig { mtu: 1460 })
    );
    // Fits exactly.
    assert!(
        encap(
            &big6,
            &pkt,
            &mut out,
            &tunnel(DIR6.into(), REAL6.into(), 1540)
        )
        .is_ok()
    );
    // Buffer too small.
    assert_eq!(
        encap(
            &big6,
            &pkt,
            &mut out[..100],
            &tunnel(DIR6.into(), REAL6.into(), 9000)
        ),
        Err(EncapError::BufferTooSmall)
    );
    // Mixed tunnel endpoints.
    assert_eq!(
        encap(
            &big6,
            &pkt,
            &mut out,
            &tunnel(DIR4.into(), REAL6.into(), 9000)
        ),
        Err(EncapError::FamilyMismatch)
    );
}
