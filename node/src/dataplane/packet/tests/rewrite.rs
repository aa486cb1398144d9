use std::net::IpAddr;

use etherparse::{
    Icmpv4Slice, Icmpv6Slice, Ipv4HeaderSlice, SlicedPacket, TcpSlice, TransportSlice, UdpHeader,
};

use super::classify::{
    fix_ipv4_checksum, frag_needed_about_reply, packet_too_big_about_reply, v6_exts_frame,
};
use super::*;
use crate::dataplane::packet::{
    IcmpKind, IcmpNat, L4, Ports, RewriteError, classify, decrement_ttl, fill_l4_checksum,
    rewrite_dr, rewrite_icmp_error_inner, rewrite_nat_in, rewrite_nat_out, verify_l4_checksum,
};

#[test]
fn dr_changes_macs_only() {
    let orig = Spec::tcp4(40000, 80).vlan(7).frame();
    let mut frame = orig.clone();
    rewrite_dr(&mut frame, MAC_REAL, MAC_DIRECTOR).unwrap();
    assert_eq!(&frame[..6], &MAC_REAL);
    assert_eq!(&frame[6..12], &MAC_DIRECTOR);
    assert_eq!(&frame[12..], &orig[12..]);
    assert_eq!(
        rewrite_dr(&mut [0u8; 11], MAC_REAL, MAC_DIRECTOR),
        Err(RewriteError::Truncated)
    );
}

fn nat_in_then_check(spec: Spec, new_ip: IpAddr, new_port: u16) -> Checked {
    let mut frame = spec.frame();
    let pkt = classify(&frame).unwrap();
    rewrite_nat_in(&mut frame, &pkt, new_ip, new_port).unwrap();
    let c = check_frame(&frame);
    assert_eq!(c.dst, new_ip);
    assert_eq!(c.dport, new_port);
    assert_eq!(c.src, spec.src);
    assert_eq!(c.sport, spec.sport);
    assert_eq!(c.payload, spec.payload);
    assert_eq!(
        verify_l4_checksum(&frame, &classify(&frame).unwrap()),
        Some(true)
    );
    c
}

fn nat_out_then_check(spec: Spec, new_ip: IpAddr, new_port: u16) -> Checked {
    let mut frame = spec.frame();
    let pkt = classify(&frame).unwrap();
    rewrite_nat_out(&mut frame, &pkt, new_ip, new_port).unwrap();
    let c = check_frame(&frame);
    assert_eq!(c.src, new_ip);
    assert_eq!(c.sport, new_port);
    assert_eq!(c.dst, spec.dst);
    assert_eq!(c.dport, spec.dport);
    c
}

#[test]
fn nat_v4_v6_tcp_udp() {
    for vlan in [None, Some(9)] {
        let with = |s: Spec| if let Some(v) = vlan { s.vlan(v) } else { s };
        nat_in_then_check(with(Spec::tcp4(40000, 80)), REAL4.into(), 8080);
        nat_in_then_check(with(Spec::udp4(40000, 53)), REAL4.into(), 5353);
        nat_in_then_check(with(Spec::tcp6(40000, 443)), REAL6.into(), 8443);
        nat_in_then_check(with(Spec::udp6(40000, 53)), REAL6.into(), 53);
        let reply = |p: Proto, v6: bool| {
            if v6 {
                Spec::new(REAL6.into(), CLIENT6.into(), p, 8080, 40000)
            } else {
                Spec::new(REAL4.into(), CLIENT4.into(), p, 8080, 40000)
            }
        };
        nat_out_then_check(with(reply(Proto::Tcp, false)), VIP4.into(), 80);
        nat_out_then_check(with(reply(Proto::Udp, false)), VIP4.into(), 53);
        nat_out_then_check(with(reply(Proto::Tcp, true)), VIP6.into(), 443);
        nat_out_then_check(with(reply(Proto::Udp, true)), VIP6.into(), 53);
    }
}

#[test]
fn nat_family_mismatch_leaves_frame_alone() {
    let orig = Spec::tcp4(1, 2).frame();
    let mut frame = orig.clone();
    let pkt = classify(&frame).unwrap();
    assert_eq!(
        rewrite_nat_in(&mut frame, &pkt, REAL6.into(), 1),
        Err(RewriteError::FamilyMismatch)
    );
    assert_eq!(frame, orig);
}

/// Incremental updates equal etherparse's full recomputation, bit for bit, over random
/// addresses, ports, payloads, families and protocols.
#[test]
fn incremental_equals_full_recompute() {
    let mut rng = Rng::new(0x5EED);
    for i in 0..4000 {
        let v6 = rng.bool();
        let proto = if rng.bool() { Proto::Tcp } else { Proto::Udp };
        let (src, dst, new): (IpAddr, IpAddr, IpAddr) = if v6 {
            (rng.ipv6().into(), rng.ipv6().into(), rng.ipv6().into())
        } else {
            (rng.ipv4().into(), rng.ipv4().into(), rng.ipv4().into())
        };
        let len = rng.below(300);
        let spec = Spec::new(src, dst, proto, rng.u16(), rng.u16()).payload(rng.bytes(len));
        let spec = if i % 5 == 0 {
            spec.vlan(rng.u16() & 0xFFF)
        } else {
            spec
        };
        let new_port = rng.u16();
        let mut frame = spec.frame();
        let pkt = classify(&frame).unwrap();
        if rng.bool() {
            rewrite_nat_in(&mut frame, &pkt, new, new_port).unwrap();
        } else {
            rewrite_nat_out(&mut frame, &pkt, new, new_port).unwrap();
        }
        // check_frame asserts stored == full for the IPv4 header and TCP/UDP.
        let checked = check_frame(&frame);
        assert_eq!(checked.payload, spec.payload);
        if rng.below(4) == 0 {
            let pkt = classify(&frame).unwrap();
            decrement_ttl(&mut frame, &pkt).unwrap();
            assert_eq!(check_frame(&frame).ttl, 63);
        }
    }
}

#[test]
fn udp_v4_zero_checksum_stays_zero() {
    let mut frame = Spec::udp4(40000, 53).frame();
    frame[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    let pkt = classify(&frame).unwrap();
    rewrite_nat_in(&mut frame, &pkt, REAL4.into(), 5353).unwrap();
    assert_eq!(&frame[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
    let c = check_frame(&frame);
    assert_eq!((c.dst, c.dport), (IpAddr::V4(REAL4), 5353));
}

#[test]
fn udp_checksum_never_becomes_zero() {
    // Search for a rewrite whose incremental result is zero: it must be written as 0xFFFF,
    // which is what etherparse's full computation gives too.
    let mut rng = Rng::new(77);
    let mut hits = 0;
    for _ in 0..1000 {
        let spec = Spec::udp6(rng.u16(), rng.u16()).payload(vec![]);
        let mut frame = spec.frame();
        let pkt = classify(&frame).unwrap();
        let before = u16::from_be_bytes([frame[14 + 40 + 6], frame[14 + 40 + 7]]);
        // Choose the new port so that the checksum lands exactly on 0 / 0xFFFF.
        let old_port = spec.dport;
        // ~C' = ~C + ~old + new (one's complement); aim at C' = 0, i.e. ~C' ≡ 0 (mod 0xFFFF).
        let mut new = 0xFFFF * 2 - u32::from(!before) - u32::from(!old_port);
        while new > 0xFFFF {
            new = (new & 0xFFFF) + (new >> 16);
        }
        let new_port = new as u16;
        rewrite_nat_in(&mut frame, &pkt, spec.dst, new_port).unwrap();
        let after = u16::from_be_bytes([frame[14 + 40 + 6], frame[14 + 40 + 7]]);
        assert_ne!(after, 0);
        check_frame(&frame);
        if after == 0xFFFF {
            hits += 1;
        }
    }
    assert!(hits > 0, "never hit the zero case");
}

#[test]
fn first_fragment_checksum_follows_address_change() {
    // A TCP first fragment (whole segment inside, so the checksum can be verified) behind
    // IPv6 extension headers.
    let mut frame = v6_exts_frame(0, true, 1);
    let pkt = classify(&frame).unwrap();
    let ip = *pkt.ip().unwrap();
    rewrite_nat_in(&mut frame, &pkt, REAL6.into(), 8443).unwrap();
    let tcp = TcpSlice::from_slice(&frame[ip.l4_offset..ip.end]).unwrap();
    assert_eq!(tcp.destination_port(), 8443);
    let src = super::CLIENT6.octets();
    assert_eq!(
        tcp.checksum(),
        tcp.calc_checksum_ipv6(src, REAL6.octets()).unwrap()
    );

    // A non-first fragment: only the address changes.
    let orig = v6_exts_frame(100, false, 1);
    let mut frame = orig.clone();
    let pkt = classify(&frame).unwrap();
    rewrite_nat_in(&mut frame, &pkt, REAL6.into(), 8443).unwrap();
    assert_eq!(&frame[14 + 24..14 + 40], &REAL6.octets());
    assert_eq!(&frame[14 + 40..], &orig[14 + 40..]);
}

#[test]
fn ipv4_non_first_fragment_header_checksum() {
    let mut frame = Spec::udp4(1, 2).payload(vec![5; 100]).frame();
    frame[14 + 6..14 + 8].copy_from_slice(&100u16.to_be_bytes());
    fix_ipv4_checksum(&mut frame, 14);
    let orig = frame.clone();
    let pkt = classify(&frame).unwrap();
    assert_eq!(pkt.ip().unwrap().l4, L4::Fragment);
    rewrite_nat_in(&mut frame, &pkt, REAL4.into(), 99).unwrap();
    let h = Ipv4HeaderSlice::from_slice(&frame[14..]).unwrap();
    assert_eq!(h.destination_addr(), REAL4);
    assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
    assert_eq!(&frame[34..], &orig[34..]);
}

#[test]
fn ttl_decrement_and_expiry() {
    let mut frame = Spec::tcp4(1, 2).frame();
    let pkt = classify(&frame).unwrap();
    assert_eq!(decrement_ttl(&mut frame, &pkt), Ok(63));
    assert_eq!(check_frame(&frame).ttl, 63);
    frame[14 + 8] = 1;
    fix_ipv4_checksum(&mut frame, 14);
    let orig = frame.clone();
    let pkt = classify(&frame).unwrap();
    assert_eq!(
        decrement_ttl(&mut frame, &pkt),
        Err(RewriteError::TtlExpired)
    );
    assert_eq!(frame, orig);

    let mut frame = Spec::udp6(1, 2).frame();
    let pkt = classify(&frame).unwrap();
    assert_eq!(decrement_ttl(&mut frame, &pkt), Ok(63));
    assert_eq!(check_frame(&frame).ttl, 63);
}

#[test]
fn sctp_port_rewrite_recomputes_crc() {
    let mut frame = Spec::udp6(1, 2).payload(vec![0xAB; 20]).frame();
    // Turn the UDP datagram into an SCTP packet: 12-byte common header + 16 bytes of chunk.
    frame[14 + 6] = crate::dataplane::packet::proto::SCTP;
    let l4 = 14 + 40;
    frame[l4..l4 + 4].copy_from_slice(&[0x0B, 0x59, 0x0B, 0x59]);
    frame[l4 + 4..l4 + 8].copy_from_slice(&[1, 2, 3, 4]);
    let pkt = classify(&frame).unwrap();
    fill_l4_checksum(&mut frame, &pkt).unwrap();
    assert_eq!(verify_l4_checksum(&frame, &pkt), Some(true));
    rewrite_nat_in(&mut frame, &pkt, REAL6.into(), 2906).unwrap();
    let pkt = classify(&frame).unwrap();
    assert_eq!(
        pkt.ip().unwrap().ports(),
        Some(Ports {
            src: 2905,
            dst: 2906
        })
    );
    assert_eq!(verify_l4_checksum(&frame, &pkt), Some(true));
    // The CRC is independent: compare with a straight CRC32c over the zeroed packet.
    let mut copy = frame[l4..].to_vec();
    let stored = [copy[8], copy[9], copy[10], copy[11]];
    copy[8..12].fill(0);
    assert_eq!(
        stored,
        crate::dataplane::packet::crc32c(&copy).to_le_bytes()
    );
}

#[test]
fn fill_checksum_after_offload() {
    // A frame whose checksum field holds garbage (as with CHECKSUM_PARTIAL) is repaired.
    for spec in [
        Spec::tcp4(1, 2),
        Spec::udp4(3, 4),
        Spec::tcp6(5, 6),
        Spec::udp6(7, 8),
    ] {
        let mut frame = spec.frame();
        let pkt = classify(&frame).unwrap();
        let off = pkt.ip().unwrap().l4_offset + if spec.proto == Proto::Tcp { 16 } else { 6 };
        frame[off] ^= 0x5A;
        assert_eq!(verify_l4_checksum(&frame, &pkt), Some(false));
        fill_l4_checksum(&mut frame, &pkt).unwrap();
        assert_eq!(verify_l4_checksum(&frame, &pkt), Some(true));
        check_frame(&frame);
    }
}

fn icmpv4_checksum_ok(frame: &[u8]) -> bool {
    let sliced = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(TransportSlice::Icmpv4(icmp)) = sliced.transport else {
        panic!()
    };
    let mut h = icmp.header();
    let stored = h.checksum;
    h.update_checksum(icmp.payload());
    h.checksum == stored
}

#[test]
fn icmpv4_error_nat_in() {
    // The error from the client side about a reply goes to the real server: outer dst and
    // quoted src become the real server, the quoted src port the real port.
    for quote in [28, 40, 60] {
        let mut frame = frag_needed_about_reply(quote);
        let pkt = classify(&frame).unwrap();
        assert!(icmpv4_checksum_ok(&frame));
        rewrite_icmp_error_inner(&mut frame, &pkt, IcmpNat::In, REAL4.into(), 8080).unwrap();
        let outer = Ipv4HeaderSlice::from_slice(&frame[14..]).unwrap();
        assert_eq!(outer.destination_addr(), REAL4);
        assert_eq!(
            outer.header_checksum(),
            outer.to_header().calc_header_checksum()
        );
        assert!(icmpv4_checksum_ok(&frame));
        let icmp = Icmpv4Slice::from_slice(&frame[34..]).unwrap();
        let inner = Ipv4HeaderSlice::from_slice(icmp.payload()).unwrap();
        assert_eq!(inner.source_addr(), REAL4);
        assert_eq!(
            inner.header_checksum(),
            inner.to_header().calc_header_checksum()
        );
        let pkt = classify(&frame).unwrap();
        let L4::Icmp(i) = pkt.ip().unwrap().l4 else {
            panic!()
        };
        let IcmpKind::Error { inner, .. } = i.kind else {
            panic!()
        };
        assert_eq!(
            inner.ports,
            Some(Ports {
                src: 8080,
                dst: 5555
            })
        );
        assert_eq!(inner.src, IpAddr::V4(REAL4));
        if quote >= 60 {
            // The quoted TCP checksum was updated for the new address and port: the quote holds
            // only part of the segment, so compare with the same segment built for REAL4:8080.
            let full = ip_packet(
                &Spec::new(REAL4.into(), CLIENT4.into(), Proto::Tcp, 8080, 5555)
                    .payload(vec![1; 1400]),
            );
            assert_eq!(&icmp.payload()[36..38], &full[36..38]);
        }
    }
}

#[test]
fn icmpv4_error_nat_out() {
    // An error from the real-server side about a request (client → real server after NAT)
    // goes to the client: outer src and quoted dst become the VIP and virtual port.
    let request = ip_packet(
        &Spec::new(CLIENT4.into(), REAL4.into(), Proto::Udp, 5555, 8053).payload(vec![3; 30]),
    );
    let b = etherparse::PacketBuilder::ethernet2(MAC_REAL, MAC_DIRECTOR)
        .ipv4(REAL4.octets(), CLIENT4.octets(), 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ));
    let mut frame = Vec::new();
    b.write(&mut frame, &request).unwrap();
    let pkt = classify(&frame).unwrap();
    rewrite_icmp_error_inner(&mut frame, &pkt, IcmpNat::Out, VIP4.into(), 53).unwrap();
    assert!(icmpv4_checksum_ok(&frame));
    let outer = Ipv4HeaderSlice::from_slice(&frame[14..]).unwrap();
    assert_eq!(outer.source_addr(), VIP4);
    assert_eq!(
        outer.header_checksum(),
        outer.to_header().calc_header_checksum()
    );
    // The whole UDP datagram is quoted: its checksum must be right for VIP:53.
    let quoted = &frame[42..];
    let inner = Ipv4HeaderSlice::from_slice(quoted).unwrap();
    assert_eq!(inner.destination_addr(), VIP4);
    assert_eq!(
        inner.header_checksum(),
        inner.to_header().calc_header_checksum()
    );
    let udp = etherparse::UdpSlice::from_slice(&quoted[20..]).unwrap();
    assert_eq!(udp.destination_port(), 53);
    let h: UdpHeader = udp.to_header();
    assert_eq!(
        udp.checksum(),
        h.calc_checksum_ipv4_raw(CLIENT4.octets(), VIP4.octets(), udp.payload())
            .unwrap()
    );
}

#[test]
fn icmpv6_error_nat_in() {
    let mut frame = packet_too_big_about_reply();
    let pkt = classify(&frame).unwrap();
    rewrite_icmp_error_inner(&mut frame, &pkt, IcmpNat::In, REAL6.into(), 5300).unwrap();
    let sliced = SlicedPacket::from_ethernet(&frame).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = &sliced.net else {
        panic!()
    };
    let (s, d) = (ip.header().source(), ip.header().destination());
    assert_eq!(d, REAL6.octets());
    let Some(TransportSlice::Icmpv6(icmp)) = &sliced.transport else {
        panic!()
    };
    assert!(icmp.is_checksum_valid(s, d));
    let quoted = icmp.payload();
    let inner = etherparse::Ipv6HeaderSlice::from_slice(quoted).unwrap();
    assert_eq!(inner.source_addr(), REAL6);
    let udp = etherparse::UdpSlice::from_slice(&quoted[40..]).unwrap();
    assert_eq!(udp.source_port(), 5300);
    let h: UdpHeader = udp.to_header();
    assert_eq!(
        udp.checksum(),
        h.calc_checksum_ipv6_raw(REAL6.octets(), CLIENT6.octets(), udp.payload())
            .unwrap()
    );
    let _ = Icmpv6Slice::from_slice(&frame[54..]).unwrap();
}

#[test]
fn icmp_error_rewrite_refuses_non_errors() {
    let mut frame = Spec::tcp4(1, 2).frame();
    let pkt = classify(&frame).unwrap();
    assert_eq!(
        rewrite_icmp_error_inner(&mut frame, &pkt, IcmpNat::In, REAL4.into(), 1),
        Err(RewriteError::NotIcmpError)
    );
}
