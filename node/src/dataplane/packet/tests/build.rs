use std::net::IpAddr;

use etherparse::icmpv6::{NdpOptionSlice, NeighborAdvertisementPayloadSlice};
use etherparse::{
    ArpOperation, Icmpv4Type, Icmpv6Type, NetSlice, SlicedPacket, TransportSlice, icmpv4,
};

use super::classify::{fix_ipv4_checksum, ns_frame};
use super::*;
use crate::dataplane::packet::{
    ALL_NODES, ALL_NODES_MAC, BuildError, ICMPV6_ERROR_MAX, IcmpError, IcmpErrorReply, IcmpKind,
    L4, Ports, build_arp_reply, build_frag_needed, build_gratuitous_arp, build_icmp_error,
    build_neighbor_advertisement, build_packet_too_big, build_unsolicited_na, classify,
};

#[test]
fn frag_needed_answer() {
    let frame = Spec::tcp4(40000, 80)
        .payload(vec![0x61; 1460])
        .vlan(12)
        .frame();
    let pkt = classify(&frame).unwrap();
    let mut out = [0u8; 1600];
    let n = build_frag_needed(&frame, &pkt, &mut out, VIP4, 1400).unwrap();
    let out = &out[..n];
    // MACs swapped, VLAN kept.
    assert_eq!(&out[..6], &MAC_CLIENT);
    assert_eq!(&out[6..12], &MAC_DIRECTOR);
    let sliced = SlicedPacket::from_ethernet(out).unwrap();
    assert_eq!(sliced.vlan_ids().first().map(|v| v.value()), Some(12));
    let Some(NetSlice::Ipv4(ip)) = &sliced.net else {
        panic!()
    };
    let h = ip.header();
    assert_eq!(h.source_addr(), VIP4);
    assert_eq!(h.destination_addr(), CLIENT4);
    assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
    assert_eq!(usize::from(h.total_len()), 576);
    let Some(TransportSlice::Icmpv4(icmp)) = &sliced.transport else {
        panic!()
    };
    assert_eq!(
        icmp.icmp_type(),
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1400
        })
    );
    let mut hdr = icmp.header();
    let stored = hdr.checksum;
    hdr.update_checksum(icmp.payload());
    assert_eq!(hdr.checksum, stored);
    // The quote is the start of the original IP packet.
    assert_eq!(icmp.payload(), &frame[18..18 + 548]);
    // Round trip: the engine can route its own error back to the flow.
    let back = classify(out).unwrap();
    let L4::Icmp(i) = back.ip().unwrap().l4 else {
        panic!()
    };
    let IcmpKind::Error { error, inner } = i.kind else {
        panic!()
    };
    assert_eq!(error, IcmpError::FragNeeded { mtu: 1400 });
    assert_eq!(inner.src, IpAddr::V4(CLIENT4));
    assert_eq!(
        inner.ports,
        Some(Ports {
            src: 40000,
            dst: 80
        })
    );
}

#[test]
fn frag_needed_small_buffer_quotes_less_but_enough() {
    let frame = Spec::tcp4(40000, 80).payload(vec![0x61; 1000]).frame();
    let pkt = classify(&frame).unwrap();
    let mut out = [0u8; 14 + 28 + 28];
    let n = build_frag_needed(&frame, &pkt, &mut out, VIP4, 1400).unwrap();
    assert_eq!(n, out.len());
    let mut tiny = [0u8; 14 + 28 + 27];
    assert_eq!(
        build_frag_needed(&frame, &pkt, &mut tiny, VIP4, 1400),
        Err(BuildError::BufferTooSmall)
    );
}

#[test]
fn packet_too_big_answer() {
    let frame = Spec::tcp6(40000, 443).payload(vec![0x62; 1400]).frame();
    let pkt = classify(&frame).unwrap();
    let mut out = [0u8; 2000];
    let n = build_packet_too_big(&frame, &pkt, &mut out, VIP6, 1300).unwrap();
    assert_eq!(n, 14 + ICMPV6_ERROR_MAX);
    let out = &out[..n];
    let sliced = SlicedPacket::from_ethernet(out).unwrap();
    let Some(NetSlice::Ipv6(ip)) = &sliced.net else {
        panic!()
    };
    let (s, d) = (ip.header().source(), ip.header().destination());
    assert_eq!(s, VIP6.octets());
    assert_eq!(d, CLIENT6.octets());
    let Some(TransportSlice::Icmpv6(icmp)) = &sliced.transport else {
        panic!()
    };
    assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1300 });
    assert!(icmp.is_checksum_valid(s, d));
    assert_eq!(icmp.payload(), &frame[14..14 + 1232]);
    // MTUs below the IPv6 minimum are raised to 1280.
    let n = build_packet_too_big(&frame, &pkt, &mut [0u8; 2000], VIP6, 600).unwrap();
    assert!(n > 0);
    let mut out = [0u8; 2000];
    build_packet_too_big(&frame, &pkt, &mut out, VIP6, 600).unwrap();
    assert_eq!(&out[14 + 44..14 + 48], &1280u32.to_be_bytes());
}

#[test]
fn time_exceeded_and_port_unreachable() {
    for spec in [Spec::udp4(1, 2), Spec::udp6(1, 2)] {
        let frame = spec.frame();
        let pkt = classify(&frame).unwrap();
        for reply in [
            IcmpErrorReply::TimeExceeded,
            IcmpErrorReply::PortUnreachable,
        ] {
            let src: IpAddr = if spec.src.is_ipv4() {
                VIP4.into()
            } else {
                VIP6.into()
            };
            let mut out = [0u8; 1500];
            let n = build_icmp_error(&frame, &pkt, &mut out, src, reply).unwrap();
            let back = classify(&out[..n]).unwrap();
            let L4::Icmp(i) = back.ip().unwrap().l4 else {
                panic!()
            };
            assert!(matches!(i.kind, IcmpKind::Error { .. }));
            let expected = match (reply, spec.src.is_ipv4()) {
                (IcmpErrorReply::TimeExceeded, true) => (11, 0),
                (IcmpErrorReply::TimeExceeded, false) => (3, 0),
                (_, true) => (3, 3),
                (_, false) => (1, 4),
            };
            assert_eq!((i.icmp_type, i.code), expected);
        }
    }
}

#[test]
fn icmp_error_rules() {
    let mut out = [0u8; 1500];
    // Never about an ICMP error.
    let err = super::classify::frag_needed_about_reply(28);
    let pkt = classify(&err).unwrap();
    assert!(matches!(
        build_frag_needed(&err, &pkt, &mut out, VIP4, 1400),
        Err(BuildError::NotAllowed(_))
    ));
    // Never about a non-first fragment.
    let mut frag = Spec::udp4(1, 2).payload(vec![0; 64]).frame();
    frag[14 + 6..14 + 8].copy_from_slice(&10u16.to_be_bytes());
    fix_ipv4_checksum(&mut frag, 14);
    let pkt = classify(&frag).unwrap();
    assert!(matches!(
        build_frag_needed(&frag, &pkt, &mut out, VIP4, 1400),
        Err(BuildError::NotAllowed(_))
    ));
    // Never to a broadcast link-layer destination (IPv4).
    let mut bcast = Spec::udp4(1, 2).frame();
    bcast[..6].copy_from_slice(&[0xFF; 6]);
    let pkt = classify(&bcast).unwrap();
    assert!(matches!(
        build_icmp_error(
            &bcast,
            &pkt,
            &mut out,
            VIP4.into(),
            IcmpErrorReply::PortUnreachable
        ),
        Err(BuildError::NotAllowed(_))
    ));
    // Wrong family / wrong kind.
    let frame = Spec::tcp4(1, 2).frame();
    let pkt = classify(&frame).unwrap();
    assert_eq!(
        build_icmp_error(
            &frame,
            &pkt,
            &mut out,
            VIP6.into(),
            IcmpErrorReply::TimeExceeded
        ),
        Err(BuildError::FamilyMismatch)
    );
    assert!(matches!(
        build_icmp_error(
            &frame,
            &pkt,
            &mut out,
            VIP4.into(),
            IcmpErrorReply::PacketTooBig { mtu: 1280 }
        ),
        Err(BuildError::NotApplicable(_))
    ));
}

fn arp_request_frame(vlan: Option<u16>) -> Vec<u8> {
    let arp = etherparse::ArpPacket::new(
        etherparse::ArpHardwareId::ETHERNET,
        etherparse::EtherType::IPV4,
        ArpOperation::REQUEST,
        &MAC_CLIENT,
        &CLIENT4.octets(),
        &[0; 6],
        &VIP4.octets(),
    )
    .unwrap();
    let mut v = Vec::new();
    match vlan {
        None => etherparse::PacketBuilder::ethernet2(MAC_CLIENT, [0xFF; 6])
            .arp(arp)
            .write(&mut v)
            .unwrap(),
        Some(id) => etherparse::PacketBuilder::ethernet2(MAC_CLIENT, [0xFF; 6])
            .single_vlan(etherparse::VlanId::try_new(id).unwrap())
            .arp(arp)
            .write(&mut v)
            .unwrap(),
    }
    v
}

#[test]
fn arp_reply() {
    for vlan in [None, Some(30)] {
        let frame = arp_request_frame(vlan);
        let pkt = classify(&frame).unwrap();
        let mut out = [0u8; 64];
        let n = build_arp_reply(&pkt, &mut out, MAC_DIRECTOR).unwrap();
        assert_eq!(n, 60);
        let sliced = SlicedPacket::from_ethernet(&out[..n]).unwrap();
        assert_eq!(sliced.vlan_ids().first().map(|v| v.value()), vlan);
        let Some(NetSlice::Arp(arp)) = &sliced.net else {
            panic!()
        };
        assert_eq!(arp.operation(), ArpOperation::REPLY);
        assert_eq!(arp.sender_hw_addr(), &MAC_DIRECTOR);
        assert_eq!(arp.sender_protocol_addr(), &VIP4.octets());
        assert_eq!(arp.target_hw_addr(), &MAC_CLIENT);
        assert_eq!(arp.target_protocol_addr(), &CLIENT4.octets());
        assert_eq!(&out[..6], &MAC_CLIENT);
        assert_eq!(&out[6..12], &MAC_DIRECTOR);
    }
    // Not for a reply or a non-ARP frame.
    let frame = Spec::tcp4(1, 2).frame();
    let pkt = classify(&frame).unwrap();
    assert!(matches!(
        build_arp_reply(&pkt, &mut [0u8; 64], MAC_DIRECTOR),
        Err(BuildError::NotApplicable(_))
    ));
}

#[test]
fn gratuitous_arp() {
    let mut out = [0u8; 64];
    let n = build_gratuitous_arp(&mut out, MAC_DIRECTOR, VIP4, None).unwrap();
    assert_eq!(n, 60);
    assert_eq!(&out[..6], &[0xFF; 6]);
    {
        let sliced = SlicedPacket::from_ethernet(&out[..n]).unwrap();
        let Some(NetSlice::Arp(arp)) = &sliced.net else {
            panic!()
        };
        assert_eq!(arp.operation(), ArpOperation::REQUEST);
        assert_eq!(arp.sender_hw_addr(), &MAC_DIRECTOR);
        assert_eq!(arp.sender_protocol_addr(), &VIP4.octets());
        assert_eq!(arp.target_protocol_addr(), &VIP4.octets());
        assert_eq!(arp.target_hw_addr(), &[0; 6]);
    }
    assert_eq!(
        build_gratuitous_arp(&mut out[..59], MAC_DIRECTOR, VIP4, None),
        Err(BuildError::BufferTooSmall)
    );
    let n = build_gratuitous_arp(&mut out, MAC_DIRECTOR, VIP4, Some(100)).unwrap();
    assert_eq!(n, 60);
    let sliced = SlicedPacket::from_ethernet(&out[..n]).unwrap();
    assert_eq!(sliced.vlan_ids().first().map(|v| v.value()), Some(100));
}

/// Checks an NA with etherparse; returns (eth dst, ip dst, solicited).
fn check_na(frame: &[u8], target: Ipv6Addr, mac: Mac) -> (Mac, Ipv6Addr, bool) {
    let sliced = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(NetSlice::Ipv6(ip)) = &sliced.net else {
        panic!()
    };
    let h = ip.header();
    assert_eq!(h.hop_limit(), 255);
    assert_eq!(h.source_addr(), target);
    let Some(TransportSlice::Icmpv6(icmp)) = &sliced.transport else {
        panic!()
    };
    assert!(icmp.is_checksum_valid(h.source(), h.destination()));
    let Icmpv6Type::NeighborAdvertisement(flags) = icmp.icmp_type() else {
        panic!()
    };
    assert!(!flags.router);
    assert!(flags.r#override);
    let payload = NeighborAdvertisementPayloadSlice::from_slice(icmp.payload()).unwrap();
    assert_eq!(payload.target_address(), target);
    let opts: Vec<_> = payload
        .options_iterator()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(opts.len(), 1);
    let NdpOptionSlice::TargetLinkLayerAddress(tll) = &opts[0] else {
        panic!()
    };
    assert_eq!(tll.link_layer_address(), &mac);
    (
        frame[..6].try_into().unwrap(),
        h.destination_addr(),
        flags.solicited,
    )
}

#[test]
fn neighbor_advertisement_reply() {
    let frame = ns_frame(CLIENT6, VIP6, true);
    let pkt = classify(&frame).unwrap();
    let mut out = [0u8; 128];
    let n = build_neighbor_advertisement(&pkt, &mut out, MAC_DIRECTOR).unwrap();
    let (eth_dst, dst, solicited) = check_na(&out[..n], VIP6, MAC_DIRECTOR);
    assert_eq!((eth_dst, dst, solicited), (MAC_CLIENT, CLIENT6, true));
    let out = out;
    // The engine's own classifier accepts it.
    let back = classify(&out[..n]).unwrap();
    let L4::Icmp(i) = back.ip().unwrap().l4 else {
        panic!()
    };
    assert!(matches!(
        i.kind,
        IcmpKind::NeighborAdvertisement { target, solicited: true, override_flag: true, target_mac: Some(m), .. }
            if target == VIP6 && m == MAC_DIRECTOR
    ));

    // DAD probe: answered to all nodes, not solicited.
    let frame = ns_frame(Ipv6Addr::UNSPECIFIED, VIP6, false);
    let pkt = classify(&frame).unwrap();
    let mut out = [0u8; 128];
    let n = build_neighbor_advertisement(&pkt, &mut out, MAC_DIRECTOR).unwrap();
    assert_eq!(
        check_na(&out[..n], VIP6, MAC_DIRECTOR),
        (ALL_NODES_MAC, ALL_NODES, false)
    );
}

#[test]
fn unsolicited_neighbor_advertisement() {
    let mut out = [0u8; 128];
    let n = build_unsolicited_na(&mut out, MAC_DIRECTOR, VIP6, None).unwrap();
    assert_eq!(n, 14 + 40 + 32);
    assert_eq!(
        check_na(&out[..n], VIP6, MAC_DIRECTOR),
        (ALL_NODES_MAC, ALL_NODES, false)
    );
    assert!(classify(&out[..n]).is_ok());
}
