//! In-place rewrites of a classified frame: MACs (direct routing), addresses and ports (NAT, both
//! directions, ICMP errors included), TTL; every checksum is updated incrementally (RFC 1624),
//! so the cost does not depend on the payload size and a corrupted packet stays detectably
//! corrupted.
//!
//! Every function checks all it needs before it writes, so an `Err` leaves the frame unchanged.

use std::net::IpAddr;

use super::checksum::{self, Delta};
use super::classify::{Icmp, IcmpKind, Ip, IpVersion, L4, Packet};
use super::view::{
    EthMut, Ipv4HeaderMut, Ipv6HeaderMut, Side, TcpMut, UdpMut, adjust_checksum_at, array_mut,
    array_ref, read_u16, set_port_at,
};
use super::{Mac, RewriteError, proto};

/// Direct routing: only the MAC addresses change (the IP packet is untouched).
pub fn rewrite_dr(frame: &mut [u8], dst_mac: Mac, src_mac: Mac) -> Result<(), RewriteError> {
    let mut eth = EthMut::new(frame)?;
    eth.set_dst(dst_mac);
    eth.set_src(src_mac);
    Ok(())
}

/// NAT toward a real server: destination address and port become `new_dst_ip`:`new_dst_port`.
///
/// Updates the IPv4 header checksum and the TCP/UDP checksum (pseudo-header and port), the
/// ICMPv6 checksum (pseudo-header) and the SCTP CRC32c (recomputed when the port changes; SCTP
/// does not cover addresses). The port is ignored for packets without ports (ICMP, other
/// protocols, non-first fragments: only their IP header changes). A first fragment gets its
/// transport checksum updated for the address change of the whole datagram.
pub fn rewrite_nat_in(
    frame: &mut [u8],
    pkt: &Packet,
    new_dst_ip: IpAddr,
    new_dst_port: u16,
) -> Result<(), RewriteError> {
    rewrite_nat(frame, pkt, Side::Dst, new_dst_ip, new_dst_port)
}

/// NAT of a reply from a real server: source address and port become `new_src_ip`:
/// `new_src_port` (the VIP and virtual port). Same checksum handling as [`rewrite_nat_in`].
pub fn rewrite_nat_out(
    frame: &mut [u8],
    pkt: &Packet,
    new_src_ip: IpAddr,
    new_src_port: u16,
) -> Result<(), RewriteError> {
    rewrite_nat(frame, pkt, Side::Src, new_src_ip, new_src_port)
}

fn ip_of(pkt: &Packet) -> Result<&Ip, RewriteError> {
    pkt.ip().ok_or(RewriteError::NotIp)
}

/// Checks that `addr` has the packet's family.
fn check_family(ip: &Ip, addr: IpAddr) -> Result<(), RewriteError> {
    match (ip.version, addr) {
        (IpVersion::V4, IpAddr::V4(_)) | (IpVersion::V6, IpAddr::V6(_)) => Ok(()),
        _ => Err(RewriteError::FamilyMismatch),
    }
}

/// A validated IP header view (either family).
enum IpHeaderMut<'a> {
    V4(Ipv4HeaderMut<'a>),
    V6(Ipv6HeaderMut<'a>),
}

impl<'a> IpHeaderMut<'a> {
    fn new(buf: &'a mut [u8], ip: &Ip) -> Result<IpHeaderMut<'a>, RewriteError> {
        Ok(match ip.version {
            IpVersion::V4 => IpHeaderMut::V4(Ipv4HeaderMut::new(buf, ip.l3_offset)?),
            IpVersion::V6 => IpHeaderMut::V6(Ipv6HeaderMut::new(buf, ip.l3_offset)?),
        })
    }

    /// Sets an address (family checked by the caller) and returns the pseudo-header change.
    fn set_addr(&mut self, side: Side, addr: IpAddr) -> Delta {
        match (self, addr) {
            (IpHeaderMut::V4(h), IpAddr::V4(a)) => h.set_addr(side, a.octets()),
            (IpHeaderMut::V6(h), IpAddr::V6(a)) => h.set_addr(side, a.octets()),
            _ => Delta::new(),
        }
    }
}

/// The transport header a NAT rewrite has to touch, validated before anything is written.
enum L4Mut<'a> {
    Tcp(TcpMut<'a>),
    Udp(UdpMut<'a>),
    /// The SCTP packet, from its common header to the end of the IP packet.
    Sctp(&'a mut [u8]),
    /// ICMPv6: only the checksum (pseudo-header) changes.
    Icmpv6(&'a mut [u8; 4]),
    None,
}

fn rewrite_nat(
    frame: &mut [u8],
    pkt: &Packet,
    side: Side,
    addr: IpAddr,
    port: u16,
) -> Result<(), RewriteError> {
    let ip = ip_of(pkt)?;
    check_family(ip, addr)?;
    if ip.routing_pending {
        return Err(RewriteError::Unsupported(
            "IPv6 routing header with segments left",
        ));
    }
    let l4_len = ip
        .end
        .checked_sub(ip.l4_offset)
        .ok_or(RewriteError::Mismatch)?;
    let (head, tail) = frame
        .split_at_mut_checked(ip.l4_offset)
        .ok_or(RewriteError::Truncated)?;
    let tail = tail.get_mut(..l4_len).ok_or(RewriteError::Truncated)?;
    let mut l4 = match ip.l4 {
        L4::Tcp(_) => L4Mut::Tcp(TcpMut::new(tail, 0)?),
        L4::Udp(_) => L4Mut::Udp(UdpMut::new(tail, 0)?),
        L4::Sctp(s) => {
            let old = match side {
                Side::Src => s.ports.src,
                Side::Dst => s.ports.dst,
            };
            if old != port && ip.fragment.is_some() {
                return Err(RewriteError::Unsupported(
                    "SCTP port change in a fragment (CRC32c covers the whole packet)",
                ));
            }
            if tail.len() < 12 {
                return Err(RewriteError::Truncated);
            }
            L4Mut::Sctp(tail)
        }
        L4::Icmp(_) if ip.is_v6() => {
            L4Mut::Icmpv6(array_mut(tail, 0).ok_or(RewriteError::Truncated)?)
        }
        _ => L4Mut::None,
    };
    let mut header = IpHeaderMut::new(head, ip)?;

    let mut delta = header.set_addr(side, addr);
    match &mut l4 {
        L4Mut::Tcp(tcp) => {
            delta.add(tcp.set_port(side, port));
            tcp.adjust_checksum(delta);
        }
        L4Mut::Udp(udp) => {
            delta.add(udp.set_port(side, port));
            udp.adjust_checksum(delta);
        }
        L4Mut::Sctp(sctp) => {
            let changed = set_port_at(sctp, 0, side, port).unwrap_or_default();
            if !changed.is_empty()
                && let Some(crc) = checksum::sctp_checksum(sctp)
                && let Some(field) = array_mut::<4>(sctp, 8)
            {
                *field = crc;
            }
        }
        L4Mut::Icmpv6(head) => {
            let _ = adjust_checksum_at(head.as_mut_slice(), 2, delta);
        }
        L4Mut::None => {}
    }
    Ok(())
}

/// Decrements the IPv4 TTL (updating the header checksum) or the IPv6 hop limit. Returns the
/// new value, or [`RewriteError::TtlExpired`] (frame unchanged) when it was 0 or 1: drop the
/// packet and, if rate limits allow, answer with ICMP time exceeded.
pub fn decrement_ttl(frame: &mut [u8], pkt: &Packet) -> Result<u8, RewriteError> {
    let ip = ip_of(pkt)?;
    match IpHeaderMut::new(frame, ip)? {
        IpHeaderMut::V4(mut h) => h.decrement_ttl(),
        IpHeaderMut::V6(mut h) => h.decrement_hop_limit(),
    }
}

/// Which way an ICMP error is NATed, named after the data rewrite it mirrors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpNat {
    /// The error comes from the client side about a packet the VIP sent (a NATed reply) and goes
    /// to the real server, like [`rewrite_nat_in`]: outer destination := real server; quoted
    /// source address and port := real server address and port.
    In,
    /// The error comes from the real-server side about a request the director forwarded and
    /// goes to the client, like [`rewrite_nat_out`]: outer source := VIP; quoted destination
    /// address and port := VIP and virtual port (as IPVS does, the outer source becomes the VIP
    /// even when a router between director and real server sent the error).
    Out,
}

/// NAT for an ICMP/ICMPv6 error: rewrites the outer address and the quoted packet's address
/// and port (see [`IcmpNat`]) and fixes, incrementally, the outer IPv4 header checksum, the
/// quoted IPv4 header checksum, the quoted TCP/UDP checksum when the quote reaches it, and the
/// ICMP checksum (which for ICMPv6 also covers the outer addresses).
pub fn rewrite_icmp_error_inner(
    frame: &mut [u8],
    pkt: &Packet,
    dir: IcmpNat,
    new_ip: IpAddr,
    new_port: u16,
) -> Result<(), RewriteError> {
    let ip = ip_of(pkt)?;
    let L4::Icmp(Icmp {
        kind: IcmpKind::Error { inner, .. },
        ..
    }) = ip.l4
    else {
        return Err(RewriteError::NotIcmpError);
    };
    check_family(ip, new_ip)?;
    let outer_side = match dir {
        IcmpNat::In => Side::Dst,
        IcmpNat::Out => Side::Src,
    };
    let inner_side = outer_side.flip();

    // Offsets inside the ICMP message, which runs from l4_offset to end.
    let icmp_len = ip
        .end
        .checked_sub(ip.l4_offset)
        .ok_or(RewriteError::Mismatch)?;
    let inner_l3 = inner
        .l3_offset
        .checked_sub(ip.l4_offset)
        .ok_or(RewriteError::Mismatch)?;
    let inner_l4 = inner
        .l4_offset
        .checked_sub(ip.l4_offset)
        .ok_or(RewriteError::Mismatch)?;
    let (head, tail) = frame
        .split_at_mut_checked(ip.l4_offset)
        .ok_or(RewriteError::Truncated)?;
    let icmp = tail.get_mut(..icmp_len).ok_or(RewriteError::Truncated)?;
    // Everything must be there before anything is written.
    if icmp.len() < 8 {
        return Err(RewriteError::Truncated);
    }
    let inner_header_len = match ip.version {
        IpVersion::V4 => 20,
        IpVersion::V6 => 40,
    };
    if inner_l3
        .checked_add(inner_header_len)
        .is_none_or(|e| e > icmp.len())
        || inner_l4 < inner_l3 + inner_header_len
    {
        return Err(RewriteError::Truncated);
    }
    let mut outer = IpHeaderMut::new(head, ip)?;

    let mut icmp_delta = Delta::new();

    // The quoted IP header: address (and, for IPv4, its header checksum).
    let pseudo_delta = match ip.version {
        IpVersion::V4 => {
            let mut h = Ipv4HeaderMut::new(icmp, inner_l3)?;
            let before = *h.bytes();
            let IpAddr::V4(a) = new_ip else {
                return Err(RewriteError::FamilyMismatch);
            };
            let d = h.set_addr(inner_side, a.octets());
            icmp_delta.bytes(&before, h.bytes());
            d
        }
        IpVersion::V6 => {
            let mut h = Ipv6HeaderMut::new(icmp, inner_l3)?;
            let before = *h.bytes();
            let IpAddr::V6(a) = new_ip else {
                return Err(RewriteError::FamilyMismatch);
            };
            let d = h.set_addr(inner_side, a.octets());
            icmp_delta.bytes(&before, h.bytes());
            d
        }
    };

    // The quoted transport header: port, and its checksum when quoted.
    if inner.ports.is_some() {
        let avail = icmp.len().saturating_sub(inner_l4).min(20);
        if let Some(l4) = icmp.get_mut(inner_l4..inner_l4 + avail) {
            let mut before = [0u8; 20];
            if let Some(b) = before.get_mut(..avail) {
                b.copy_from_slice(l4);
            }
            let mut l4_delta = pseudo_delta;
            l4_delta.add(set_port_at(l4, 0, inner_side, new_port).unwrap_or_default());
            match inner.proto {
                proto::TCP => {
                    let _ = adjust_checksum_at(l4, 16, l4_delta);
                }
                proto::UDP => {
                    // Zero means "no checksum" (IPv4) and stays zero.
                    if let Some(c) = read_u16(l4, 6).filter(|&c| c != 0) {
                        let c = match l4_delta.apply(c) {
                            0 => 0xFFFF,
                            c => c,
                        };
                        if let Some(field) = array_mut::<2>(l4, 6) {
                            *field = c.to_be_bytes();
                        }
                    }
                }
                // SCTP's CRC32c covers the whole (unquoted) packet: left as it is, as IPVS does.
                _ => {}
            }
            if let Some(b) = before.get(..avail) {
                icmp_delta.bytes(b, l4);
            }
        }
    }

    // The outer header; ICMPv6 covers the outer addresses through its pseudo-header.
    let outer_delta = outer.set_addr(outer_side, new_ip);
    if ip.is_v6() {
        icmp_delta.add(outer_delta);
    }
    adjust_checksum_at(icmp, 2, icmp_delta).ok_or(RewriteError::Truncated)?;
    Ok(())
}

/// The full transport checksum of a classified, unfragmented packet as it is now in `frame`
/// (computed with the checksum field taken as zero), and where it goes. `None` when it has no
/// such checksum (fragments, other protocols) or the frame does not match.
fn full_l4_checksum(frame: &[u8], ip: &Ip) -> Option<(usize, ChecksumValue)> {
    if ip.fragment.is_some() {
        return None;
    }
    let l4 = frame.get(ip.l4_offset..ip.end)?;
    let (field, pseudo_proto) = match ip.l4 {
        L4::Tcp(_) => (16, Some(proto::TCP)),
        L4::Udp(_) => (6, Some(proto::UDP)),
        L4::Icmp(_) if ip.is_v6() => (2, Some(proto::ICMPV6)),
        L4::Icmp(_) => (2, None),
        L4::Sctp(_) => {
            return checksum::sctp_checksum(l4).map(|c| (8, ChecksumValue::Crc32c(c)));
        }
        _ => return None,
    };
    // UDP covers its own length field's worth of bytes.
    let l4 = match ip.l4 {
        L4::Udp(_) => l4.get(..usize::from(read_u16(l4, 4)?))?,
        _ => l4,
    };
    let mut acc = match (pseudo_proto, ip.src, ip.dst) {
        (Some(p), IpAddr::V4(s), IpAddr::V4(d)) => {
            checksum::pseudo_header_v4(s.octets(), d.octets(), p, l4.len())
        }
        (Some(p), IpAddr::V6(s), IpAddr::V6(d)) => {
            checksum::pseudo_header_v6(s.octets(), d.octets(), p, l4.len())
        }
        (None, _, _) => 0,
        _ => return None,
    };
    acc = checksum::sum_bytes(acc, l4);
    // Take the stored checksum out again: the sum must be over a zero field.
    let stored = read_u16(l4, field)?;
    acc += u64::from(!stored);
    let mut c = checksum::finish(acc);
    if matches!(ip.l4, L4::Udp(_)) && c == 0 {
        c = 0xFFFF;
    }
    Some((field, ChecksumValue::Internet(c)))
}

enum ChecksumValue {
    Internet(u16),
    Crc32c([u8; 4]),
}

/// Verifies the transport checksum (TCP, UDP, ICMP, ICMPv6, SCTP) with a full computation.
/// `None` when it cannot be verified: fragments, protocols without one, UDP over IPv4 without
/// checksum. Not called by the fast path; use it before acting on ICMP errors if you want
/// IPVS's strictness, and in tests.
pub fn verify_l4_checksum(frame: &[u8], pkt: &Packet) -> Option<bool> {
    let ip = pkt.ip()?;
    let l4 = frame.get(ip.l4_offset..ip.end)?;
    if let L4::Udp(_) = ip.l4
        && ip.is_v4()
        && read_u16(l4, 6)? == 0
    {
        return None;
    }
    let (field, value) = full_l4_checksum(frame, ip)?;
    Some(match value {
        ChecksumValue::Internet(c) => read_u16(l4, field)? == c,
        ChecksumValue::Crc32c(c) => array_ref::<4>(l4, field)? == &c,
    })
}

/// Computes the transport checksum from scratch and stores it. For frames the kernel hands over
/// with the checksum still to be done by offload (AF_PACKET `TP_STATUS_CSUMNOTREADY`, typical on
/// veth and for locally generated packets): incremental updates are only right on complete
/// checksums, so finish those first. Fragments cannot be fixed this way.
pub fn fill_l4_checksum(frame: &mut [u8], pkt: &Packet) -> Result<(), RewriteError> {
    let ip = ip_of(pkt)?;
    let (field, value) = full_l4_checksum(frame, ip).ok_or(RewriteError::Unsupported(
        "no full transport checksum for this packet",
    ))?;
    let at = ip
        .l4_offset
        .checked_add(field)
        .ok_or(RewriteError::Mismatch)?;
    match value {
        ChecksumValue::Internet(c) => {
            *array_mut::<2>(frame, at).ok_or(RewriteError::Truncated)? = c.to_be_bytes();
        }
        ChecksumValue::Crc32c(c) => {
            *array_mut::<4>(frame, at).ok_or(RewriteError::Truncated)? = c;
        }
    }
    Ok(())
}
