//! Robustness: random, truncated and mutated frames through every entry point. Nothing may
//! panic (the test runs in debug, so arithmetic overflow would panic too).

use super::classify::{
    frag_needed_about_reply, ns_frame, packet_too_big_about_reply, v6_exts_frame,
};
use super::*;
use crate::dataplane::packet::{
    IcmpErrorReply, IcmpNat, Packet, Tunnel, build_arp_reply, build_gratuitous_arp,
    build_icmp_error, build_neighbor_advertisement, build_unsolicited_na, classify, decrement_ttl,
    encap, fill_l4_checksum, rewrite_dr, rewrite_icmp_error_inner, rewrite_nat_in, rewrite_nat_out,
    verify_l4_checksum,
};

fn templates() -> Vec<Vec<u8>> {
    vec![
        Spec::tcp4(40000, 80).frame(),
        Spec::udp4(40000, 53).vlan(3).frame(),
        Spec::tcp6(40000, 443).frame(),
        Spec::udp6(40000, 53).vlan(4).frame(),
        v6_exts_frame(0, true, 5),
        v6_exts_frame(3, false, 5),
        frag_needed_about_reply(28),
        frag_needed_about_reply(60),
        packet_too_big_about_reply(),
        ns_frame(CLIENT6, VIP6, true),
        ns_frame(Ipv6Addr::UNSPECIFIED, VIP6, false),
        {
            let mut v = vec![0u8; 60];
            build_gratuitous_arp(&mut v, MAC_CLIENT, VIP4, None).unwrap();
            v
        },
    ]
}

/// Runs everything on `frame` with `pkt` (which may belong to another frame).
fn exercise(frame: &[u8], pkt: &Packet, rng: &mut Rng) {
    let out_len = rng.below(1600);
    let mut out = vec![0u8; out_len];
    let mut f = frame.to_vec();
    let v4: IpAddr = rng.ipv4().into();
    let v6: IpAddr = rng.ipv6().into();
    let addr = if rng.bool() { v4 } else { v6 };
    let port = rng.u16();
    let _ = rewrite_dr(&mut f, MAC_REAL, MAC_DIRECTOR);
    let _ = rewrite_nat_in(&mut f, pkt, addr, port);
    let _ = rewrite_nat_out(&mut f, pkt, addr, port);
    let _ = decrement_ttl(&mut f, pkt);
    let _ = rewrite_icmp_error_inner(&mut f, pkt, IcmpNat::In, addr, port);
    let _ = rewrite_icmp_error_inner(&mut f, pkt, IcmpNat::Out, addr, port);
    let _ = verify_l4_checksum(&f, pkt);
    let _ = fill_l4_checksum(&mut f, pkt);
    let tunnel = Tunnel {
        src: if rng.bool() { v4 } else { v6 },
        dst: if rng.bool() { v4 } else { v6 },
        src_mac: MAC_DIRECTOR,
        dst_mac: MAC_REAL,
        vlan_tci: if rng.bool() { Some(rng.u16()) } else { None },
        mtu: rng.u16(),
    };
    let _ = encap(frame, pkt, &mut out, &tunnel);
    for reply in [
        IcmpErrorReply::FragNeeded { mtu: rng.u16() },
        IcmpErrorReply::PacketTooBig {
            mtu: rng.next_u64() as u32,
        },
        IcmpErrorReply::TimeExceeded,
        IcmpErrorReply::PortUnreachable,
    ] {
        let _ = build_icmp_error(frame, pkt, &mut out, addr, reply);
    }
    let _ = build_arp_reply(pkt, &mut out, MAC_DIRECTOR);
    let _ = build_neighbor_advertisement(pkt, &mut out, MAC_DIRECTOR);
    let _ = build_unsolicited_na(&mut out, MAC_DIRECTOR, VIP6, None);
    let _ = build_gratuitous_arp(&mut out, MAC_DIRECTOR, VIP4, Some(1));
}

#[test]
fn random_and_mutated_frames_never_panic() {
    let templates = templates();
    let template_pkts: Vec<Packet> = templates.iter().map(|t| classify(t).unwrap()).collect();
    let mut rng = Rng::new(0xF00D);
    let mut classified = 0usize;
    for i in 0..100_000 {
        let frame: Vec<u8> = match i % 4 {
            // Pure noise, sometimes with a plausible Ethernet header.
            0 => {
                let len = rng.below(200);
                let mut f = rng.bytes(len);
                if f.len() >= 14 && rng.bool() {
                    let et: [u8; 2] =
                        [[0x08, 0x00], [0x86, 0xDD], [0x08, 0x06], [0x81, 0x00]][rng.below(4)];
                    f[12..14].copy_from_slice(&et);
                    if f.len() > 14 {
                        f[14] = if et == [0x86, 0xDD] { 0x60 } else { 0x45 };
                    }
                }
                f
            }
            // Truncated template.
            1 => {
                let t = &templates[rng.below(templates.len())];
                let len = rng.below(t.len() + 1);
                t[..len].to_vec()
            }
            // Template with random byte mutations.
            _ => {
                let mut f = templates[rng.below(templates.len())].clone();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(f.len());
                    f[at] = match rng.below(4) {
                        0 => 0,
                        1 => 0xFF,
                        _ => rng.u8(),
                    };
                }
                if rng.below(8) == 0 {
                    let len = rng.below(f.len() + 1);
                    f.truncate(len);
                }
                f
            }
        };
        if let Ok(pkt) = classify(&frame) {
            classified += 1;
            exercise(&frame, &pkt, &mut rng);
        }
        // A classification of another frame applied to this one.
        let other = template_pkts[rng.below(template_pkts.len())];
        exercise(&frame, &other, &mut rng);
    }
    // The mutations must leave enough frames classifiable to exercise the rewrites.
    eprintln!("robustness: {classified} of 100000 frames classified");
    assert!(classified > 20_000, "only {classified} frames classified");
}
