use std::net::IpAddr;

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, Icmpv4Type, Icmpv6Type, PacketBuilder,
    SlicedPacket, TransportSlice, icmpv4,
};

use super::*;
use crate::dataplane::packet::{
    Fragment, IcmpError, IcmpKind, IpVersion, L4, Malformed, Net, Ports, classify, proto,
};

#[test]
fn tcp_v4_fields_and_offsets() {
    let frame = Spec::tcp4(40000, 80).frame();
    let pkt = classify(&frame).unwrap();
    assert_eq!(pkt.eth.src, MAC_CLIENT);
    assert_eq!(pkt.eth.dst, MAC_DIRECTOR);
    assert_eq!(pkt.eth.vlan_tci, None);
    let ip = pkt.ip().unwrap();
    assert_eq!(ip.version, IpVersion::V4);
    assert_eq!(ip.src, IpAddr::V4(CLIENT4));
    assert_eq!(ip.dst, IpAddr::V4(VIP4));
    assert_eq!(ip.ttl, 64);
    assert!(ip.dont_fragment);
    assert_eq!(ip.fragment, None);
    assert_eq!(ip.proto, proto::TCP);
    assert_eq!(
        (ip.l3_offset, ip.l4_offset, ip.payload_offset),
        (14, 34, 54)
    );
    assert_eq!(ip.end, frame.len());
    assert_eq!(
        ip.ports(),
        Some(Ports {
            src: 40000,
            dst: 80
        })
    );
    let L4::Tcp(tcp) = ip.l4 else { panic!() };
    assert!(tcp.flags.ack() && !tcp.flags.syn() && !tcp.flags.fin() && !tcp.flags.rst());
    assert_eq!(&frame[ip.payload_offset..ip.end], b"hello, real server");
}

#[test]
fn vlan_tag_is_skipped() {
    let frame = Spec::udp6(5353, 53).vlan(42).frame();
    let pkt = classify(&frame).unwrap();
    assert_eq!(pkt.eth.vlan_id(), Some(42));
    assert_eq!(pkt.eth.l3_offset, 18);
    let ip = pkt.ip().unwrap();
    assert_eq!(ip.version, IpVersion::V6);
    assert_eq!((ip.l4_offset, ip.payload_offset), (58, 66));
    assert_eq!(ip.ports(), Some(Ports { src: 5353, dst: 53 }));
}

#[test]
fn ethernet_padding_is_not_payload() {
    let mut frame = Spec::udp4(1, 2).payload(vec![]).frame();
    assert_eq!(frame.len(), 42);
    frame.resize(60, 0);
    let ip = *classify(&frame).unwrap().ip().unwrap();
    assert_eq!(ip.end, 42);
    assert_eq!(ip.payload_offset, 42);
}

#[test]
fn ipv4_fragments() {
    let mut frame = Spec::udp4(1000, 53).payload(vec![7; 64]).frame();
    // First fragment: MF set, offset 0. Ports still there.
    frame[14 + 6] = 0x20;
    frame[14 + 4..14 + 6].copy_from_slice(&0xBEEFu16.to_be_bytes());
    fix_ipv4_checksum(&mut frame, 14);
    let ip = *classify(&frame).unwrap().ip().unwrap();
    assert_eq!(
        ip.fragment,
        Some(Fragment {
            id: 0xBEEF,
            offset: 0,
            more: true
        })
    );
    assert_eq!(ip.ports(), Some(Ports { src: 1000, dst: 53 }));
    assert!(!ip.is_non_first_fragment());

    // Non-first fragment: offset 185 * 8, no ports.
    frame[14 + 6..14 + 8].copy_from_slice(&185u16.to_be_bytes());
    fix_ipv4_checksum(&mut frame, 14);
    let ip = *classify(&frame).unwrap().ip().unwrap();
    assert_eq!(ip.l4, L4::Fragment);
    assert_eq!(ip.ports(), None);
    assert!(ip.is_non_first_fragment());
    assert_eq!(
        ip.fragment,
        Some(Fragment {
            id: 0xBEEF,
            offset: 1480,
            more: false
        })
    );
    assert_eq!(ip.proto, proto::UDP);
}

pub fn fix_ipv4_checksum(frame: &mut [u8], l3: usize) {
    let h = etherparse::Ipv4HeaderSlice::from_slice(&frame[l3..])
        .unwrap()
        .to_header();
    let c = h.calc_header_checksum();
    frame[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// Hop-by-hop (8) → destination options (8) → fragment (8) → TCP.
pub fn v6_exts_frame(frag_offset_units: u16, more: bool, id: u32) -> Vec<u8> {
    let base = Spec::tcp6(40000, 443).payload(vec![9; 40]).frame();
    let mut exts = vec![
        proto::IPV6_DEST_OPTS,
        0,
        1,
        4,
        0,
        0,
        0,
        0, // hop-by-hop: PadN
        proto::IPV6_FRAG,
        0,
        1,
        4,
        0,
        0,
        0,
        0, // destination options: PadN
        proto::TCP,
        0, // fragment header
    ];
    let off = (frag_offset_units << 3) | u16::from(more);
    exts.extend_from_slice(&off.to_be_bytes());
    exts.extend_from_slice(&id.to_be_bytes());
    splice_ipv6_exts(&base, proto::HOP_BY_HOP, &exts)
}

#[test]
fn ipv6_extension_headers_first_fragment() {
    let frame = v6_exts_frame(0, true, 0xDEAD_BEEF);
    let ip = *classify(&frame).unwrap().ip().unwrap();
    assert_eq!(ip.proto, proto::TCP);
    assert_eq!(ip.l4_offset, 14 + 40 + 24);
    assert_eq!(ip.payload_offset, ip.l4_offset + 20);
    assert_eq!(
        ip.fragment,
        Some(Fragment {
            id: 0xDEAD_BEEF,
            offset: 0,
            more: true
        })
    );
    assert_eq!(
        ip.ports(),
        Some(Ports {
            src: 40000,
            dst: 443
        })
    );
    assert!(!ip.routing_pending);
}

#[test]
fn ipv6_extension_headers_non_first_fragment() {
    let frame = v6_exts_frame(100, false, 7);
    let ip = *classify(&frame).unwrap().ip().unwrap();
    assert_eq!(ip.l4, L4::Fragment);
    assert!(ip.is_non_first_fragment());
    assert_eq!(ip.ports(), None);
    assert_eq!(ip.l4_offset, 14 + 40 + 24);
    assert_eq!(
        ip.fragment,
        Some(Fragment {
            id: 7,
            offset: 800,
            more: false
        })
    );
}

#[test]
fn ipv6_atomic_fragment_is_not_a_fragment() {
    let frame = v6_exts_frame(0, false, 7);
    let ip = *classify(&frame).unwrap().ip().unwrap();
    assert_eq!(ip.fragment, None);
    assert_eq!(
        ip.ports(),
        Some(Ports {
            src: 40000,
            dst: 443
        })
    );
}

#[test]
fn ipv6_exts_agree_with_etherparse() {
    // Hop-by-hop → routing (segments left 0) → destination options → UDP.
    let base = Spec::udp6(7, 9).frame();
    let exts = [
        proto::IPV6_ROUTE,
        0,
        1,
        4,
        0,
        0,
        0,
        0, // hop-by-hop
        proto::IPV6_DEST_OPTS,
        0,
        0,
        0,
        0,
        0,
        0,
        0, // routing type 0, segments left 0
        proto::UDP,
        1,
        1,
        12,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0, // dest opts, 16 bytes
    ];
    let frame = splice_ipv6_exts(&base, proto::HOP_BY_HOP, &exts);
    let ip = *classify(&frame).unwrap().ip().unwrap();
    let sliced = SlicedPacket::from_ethernet(&frame).unwrap();
    let Some(TransportSlice::Udp(udp)) = sliced.transport else {
        panic!()
    };
    let theirs = udp.slice().as_ptr() as usize - frame.as_ptr() as usize;
    assert_eq!(ip.l4_offset, theirs);
    assert_eq!(ip.proto, proto::UDP);
    assert!(!ip.routing_pending);

    // The same with segments left: flagged.
    let mut exts = exts;
    exts[11] = 1;
    let frame = splice_ipv6_exts(&base, proto::HOP_BY_HOP, &exts);
    assert!(classify(&frame).unwrap().ip().unwrap().routing_pending);
}

#[test]
fn ipv6_bad_chains() {
    let base = Spec::udp6(7, 9).frame();
    // Hop-by-hop after destination options.
    let exts = [
        proto::HOP_BY_HOP,
        0,
        1,
        4,
        0,
        0,
        0,
        0,
        proto::UDP,
        0,
        1,
        4,
        0,
        0,
        0,
        0,
    ];
    let frame = splice_ipv6_exts(&base, proto::IPV6_DEST_OPTS, &exts);
    assert_eq!(classify(&frame), Err(Malformed::HopByHopNotFirst));
    // An extension header running past the packet.
    let exts = [proto::UDP, 200, 1, 4, 0, 0, 0, 0];
    let frame = splice_ipv6_exts(&base, proto::IPV6_DEST_OPTS, &exts);
    assert_eq!(classify(&frame), Err(Malformed::Ipv6ExtHeader));
    // Too many.
    let mut exts = Vec::new();
    for _ in 0..20 {
        exts.extend_from_slice(&[proto::IPV6_DEST_OPTS, 0, 1, 4, 0, 0, 0, 0]);
    }
    let frame = splice_ipv6_exts(&base, proto::IPV6_DEST_OPTS, &exts);
    assert_eq!(classify(&frame), Err(Malformed::TooManyExtHeaders));
}

#[test]
fn malformed_reasons() {
    assert_eq!(classify(&[0; 10]), Err(Malformed::Ethernet));
    let frame = Spec::tcp4(1, 2).frame();
    assert_eq!(classify(&frame[..30]), Err(Malformed::Ipv4Header));
    assert_eq!(classify(&frame[..40]), Err(Malformed::Truncated));
    let mut bad = frame.clone();
    bad[14 + 8] ^= 1; // TTL without checksum fix
    assert_eq!(classify(&bad), Err(Malformed::Ipv4Checksum));
    let mut bad = frame.clone();
    bad[14 + 20 + 12] = 0x20; // TCP data offset 2
    assert_eq!(classify(&bad), Err(Malformed::Tcp));
    let mut bad = Spec::udp4(1, 2).frame();
    bad[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&4000u16.to_be_bytes());
    assert_eq!(classify(&bad), Err(Malformed::UdpLength));
    let frame6 = Spec::tcp6(1, 2).frame();
    assert_eq!(classify(&frame6[..50]), Err(Malformed::Ipv6Header));
    let mut vlan = Spec::tcp4(1, 2).vlan(3).frame();
    vlan.truncate(16);
    assert_eq!(classify(&vlan), Err(Malformed::Vlan));
}

#[test]
fn other_ethertypes_pass() {
    let mut frame = Spec::tcp4(1, 2).frame();
    frame[12..14].copy_from_slice(&0x88CCu16.to_be_bytes()); // LLDP
    assert_eq!(classify(&frame).unwrap().net, Net::Other);
}

#[test]
fn sctp_ports() {
    let mut frame = Spec::udp4(1, 2).payload(vec![0; 8]).frame();
    frame[14 + 9] = proto::SCTP;
    fix_ipv4_checksum(&mut frame, 14);
    frame[34..38].copy_from_slice(&[0x0B, 0x59, 0x00, 0x50]);
    frame[38..42].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    let ip = *classify(&frame).unwrap().ip().unwrap();
    let L4::Sctp(s) = ip.l4 else { panic!() };
    assert_eq!(s.ports, Ports { src: 2905, dst: 80 });
    assert_eq!(s.verification_tag, 0x1234_5678);
}

#[test]
fn arp_request() {
    let frame = {
        let b = PacketBuilder::ethernet2(MAC_CLIENT, [0xFF; 6]).arp(
            ArpPacket::new(
                ArpHardwareId::ETHERNET,
                EtherType::IPV4,
                ArpOperation::REQUEST,
                &MAC_CLIENT,
                &CLIENT4.octets(),
                &[0; 6],
                &VIP4.octets(),
            )
            .unwrap(),
        );
        let mut v = Vec::new();
        b.write(&mut v).unwrap();
        v
    };
    let arp = *classify(&frame).unwrap().arp().unwrap();
    assert!(arp.is_request());
    assert_eq!(arp.sender_mac, MAC_CLIENT);
    assert_eq!(arp.sender_ip, CLIENT4);
    assert_eq!(arp.target_ip, VIP4);
}

/// An ICMPv4 "fragmentation needed" from a router about a NATed reply (VIP:80 → client:5555).
pub fn frag_needed_about_reply(quote_len: usize) -> Vec<u8> {
    let reply = ip_packet(
        &Spec::new(VIP4.into(), CLIENT4.into(), Proto::Tcp, 80, 5555).payload(vec![1; 1400]),
    );
    let router = [203, 0, 113, 1];
    let b = PacketBuilder::ethernet2(MAC_CLIENT, MAC_DIRECTOR)
        .ipv4(router, VIP4.octets(), 60)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ));
    let mut v = Vec::new();
    b.write(&mut v, &reply[..quote_len]).unwrap();
    v
}

/// An ICMPv6 "packet too big" about a reply (VIP:53 → client:5353), quoting it whole.
pub fn packet_too_big_about_reply() -> Vec<u8> {
    let reply = ip_packet(
        &Spec::new(VIP6.into(), CLIENT6.into(), Proto::Udp, 53, 5353).payload(vec![2; 300]),
    );
    let router = "2001:db8:ffff::1".parse::<std::net::Ipv6Addr>().unwrap();
    let b = PacketBuilder::ethernet2(MAC_CLIENT, MAC_DIRECTOR)
        .ipv6(router.octets(), VIP6.octets(), 60)
        .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 });
    let mut v = Vec::new();
    b.write(&mut v, &reply).unwrap();
    v
}

#[test]
fn icmpv4_error_inner_tuple() {
    let frame = frag_needed_about_reply(28);
    let ip = *classify(&frame).unwrap().ip().unwrap();
    let L4::Icmp(icmp) = ip.l4 else { panic!() };
    assert_eq!((icmp.icmp_type, icmp.code), (3, 4));
    let IcmpKind::Error { error, inner } = icmp.kind else {
        panic!()
    };
    assert_eq!(error, IcmpError::FragNeeded { mtu: 1400 });
    assert_eq!(inner.src, IpAddr::V4(VIP4));
    assert_eq!(inner.dst, IpAddr::V4(CLIENT4));
    assert_eq!(inner.proto, proto::TCP);
    assert_eq!(inner.ports, Some(Ports { src: 80, dst: 5555 }));
    assert_eq!(inner.l3_offset, 14 + 20 + 8);
    assert_eq!(inner.l4_offset, 14 + 20 + 8 + 20);

    // A quote that stops inside the inner transport header: no ports, still routable by address.
    let frame = frag_needed_about_reply(22);
    let ip = *classify(&frame).unwrap().ip().unwrap();
    let L4::Icmp(icmp) = ip.l4 else { panic!() };
    let IcmpKind::Error { inner, .. } = icmp.kind else {
        panic!()
    };
    assert_eq!(inner.ports, None);
    // A quote without even the inner IP header is malformed.
    assert_eq!(
        classify(&frag_needed_about_reply(12)),
        Err(Malformed::IcmpInner)
    );
}

#[test]
fn icmpv6_error_inner_tuple() {
    let frame = packet_too_big_about_reply();
    let ip = *classify(&frame).unwrap().ip().unwrap();
    let L4::Icmp(icmp) = ip.l4 else { panic!() };
    let IcmpKind::Error { error, inner } = icmp.kind else {
        panic!()
    };
    assert_eq!(error, IcmpError::PacketTooBig { mtu: 1280 });
    assert_eq!(inner.src, IpAddr::V6(VIP6));
    assert_eq!(inner.dst, IpAddr::V6(CLIENT6));
    assert_eq!(inner.proto, proto::UDP);
    assert_eq!(inner.ports, Some(Ports { src: 53, dst: 5353 }));
    assert_eq!(inner.l4_offset, 14 + 40 + 8 + 40);
}

#[test]
fn icmpv6_error_inner_with_fragment_header() {
    // The quoted packet is a non-first fragment: address and fragment id, no ports.
    let inner_frame = v6_exts_frame(10, true, 99);
    let inner = &inner_frame[14..];
    let b = PacketBuilder::ethernet2(MAC_CLIENT, MAC_DIRECTOR)
        .ipv6(REAL6.octets(), CLIENT6.octets(), 60)
        .icmpv6(Icmpv6Type::TimeExceeded(
            etherparse::icmpv6::TimeExceededCode::HopLimitExceeded,
        ));
    let mut v = Vec::new();
    b.write(&mut v, inner).unwrap();
    let ip = *classify(&v).unwrap().ip().unwrap();
    let L4::Icmp(icmp) = ip.l4 else { panic!() };
    let IcmpKind::Error { error, inner } = icmp.kind else {
        panic!()
    };
    assert_eq!(error, IcmpError::TimeExceeded { code: 0 });
    assert_eq!(inner.ports, None);
    assert_eq!(inner.fragment.map(|f| (f.id, f.offset)), Some((99, 80)));
}

pub fn ns_frame(src: std::net::Ipv6Addr, target: std::net::Ipv6Addr, with_sll: bool) -> Vec<u8> {
    let dst = {
        let t = target.octets();
        std::net::Ipv6Addr::new(
            0xff02,
            0,
            0,
            0,
            0,
            1,
            0xff00 | u16::from(t[13]),
            u16::from_be_bytes([t[14], t[15]]),
        )
    };
    let eth_dst = [
        0x33,
        0x33,
        0xff,
        target.octets()[13],
        target.octets()[14],
        target.octets()[15],
    ];
    let mut payload = target.octets().to_vec();
    if with_sll {
        payload.extend_from_slice(&[1, 1]);
        payload.extend_from_slice(&MAC_CLIENT);
    }
    let b = PacketBuilder::ethernet2(MAC_CLIENT, eth_dst)
        .ipv6(src.octets(), dst.octets(), 255)
        .icmpv6(Icmpv6Type::NeighborSolicitation);
    let mut v = Vec::new();
    b.write(&mut v, &payload).unwrap();
    v
}

#[test]
fn neighbor_solicitation() {
    let frame = ns_frame(CLIENT6, VIP6, true);
    let ip = *classify(&frame).unwrap().ip().unwrap();
    let L4::Icmp(icmp) = ip.l4 else { panic!() };
    assert_eq!(
        icmp.kind,
        IcmpKind::NeighborSolicitation {
            target: VIP6,
            source_mac: Some(MAC_CLIENT)
        }
    );
    // Hop limit other than 255: invalid (RFC 4861 §7.1.1).
    let mut bad = frame.clone();
    bad[14 + 7] = 64;
    assert_eq!(classify(&bad), Err(Malformed::Ndp));
    // Corrupted checksum.
    let mut bad = frame.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    assert_eq!(classify(&bad), Err(Malformed::Checksum));
    // DAD probe: unspecified source, no SLLA option.
    let dad = ns_frame(std::net::Ipv6Addr::UNSPECIFIED, VIP6, false);
    assert!(classify(&dad).is_ok());
    let bad_dad = ns_frame(std::net::Ipv6Addr::UNSPECIFIED, VIP6, true);
    assert_eq!(classify(&bad_dad), Err(Malformed::Ndp));
}

#[test]
fn packet_summary_stays_small() {
    // Returned by value for every frame (208 bytes today, offsets as usize): keep it within
    // four cache lines.
    let size = std::mem::size_of::<crate::dataplane::packet::Packet>();
    assert!(size <= 256, "Packet grew to {size} bytes");
}
