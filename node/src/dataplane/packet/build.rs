//! Control frames the engine sends, written by hand into caller buffers: ICMP errors
//! (fragmentation needed, packet too big, time exceeded, port unreachable), ARP replies and
//! gratuitous ARP, IPv6 neighbour advertisements (solicited and unsolicited).
//!
//! etherparse's `PacketBuilder` could write these (`write_to_slice` does not allocate), but it
//! carries every possible IPv6 extension header inline (kilobytes moved through each builder
//! step) and wants the payload separately; these frames are small and fixed, so they are
//! written directly. Tests re-parse all of them with etherparse.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::checksum;
use super::classify::{
    ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, Icmp, IcmpKind, Ip, IpVersion,
    L4, Packet,
};
use super::view::array_mut;
use super::{BuildError, Mac, proto};

/// Ethernet broadcast.
pub const BROADCAST_MAC: Mac = [0xFF; 6];
/// The Ethernet address of ff02::1 (all nodes, RFC 2464 §7).
pub const ALL_NODES_MAC: Mac = [0x33, 0x33, 0, 0, 0, 1];
/// ff02::1
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xFF02, 0, 0, 0, 0, 0, 0, 1);
/// Shortest Ethernet frame without FCS; ARP frames are padded to it.
pub const MIN_FRAME_LEN: usize = 60;
/// An ICMPv4 error is at most this long (RFC 1812 §4.3.2.3).
pub const ICMPV4_ERROR_MAX: usize = 576;
/// An ICMPv6 error is at most this long (RFC 4443 §2.4 (c): the IPv6 minimum MTU).
pub const ICMPV6_ERROR_MAX: usize = 1280;
/// TTL / hop limit of the ICMP errors built here.
pub const ICMP_ERROR_TTL: u8 = 64;

/// A write cursor over a caller buffer: every write is checked, none allocates.
#[derive(Debug)]
pub(crate) struct Cursor<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Cursor<'a> {
        Cursor { buf, pos: 0 }
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> usize {
        self.pos
    }

    /// Room left.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&mut [u8], BuildError> {
        let end = self.pos.checked_add(n).ok_or(BuildError::BufferTooSmall)?;
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(BuildError::BufferTooSmall)?;
        self.pos = end;
        Ok(dst)
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) -> Result<(), BuildError> {
        self.take(bytes.len())?.copy_from_slice(bytes);
        Ok(())
    }

    pub(crate) fn zeros(&mut self, n: usize) -> Result<(), BuildError> {
        self.take(n)?.fill(0);
        Ok(())
    }

    /// What was written from `start` on.
    pub(crate) fn written_mut(&mut self, start: usize) -> Result<&mut [u8], BuildError> {
        self.buf
            .get_mut(start..self.pos)
            .ok_or(BuildError::BufferTooSmall)
    }
}

/// Writes an Ethernet header, with an 802.1Q tag when `vlan_tci` is set.
pub(crate) fn put_eth(
    w: &mut Cursor<'_>,
    dst: Mac,
    src: Mac,
    vlan_tci: Option<u16>,
    ether_type: u16,
) -> Result<(), BuildError> {
    w.put(&dst)?;
    w.put(&src)?;
    if let Some(tci) = vlan_tci {
        w.put(&ETHERTYPE_VLAN.to_be_bytes())?;
        w.put(&tci.to_be_bytes())?;
    }
    w.put(&ether_type.to_be_bytes())
}

/// Fields of a fresh 20-byte IPv4 header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ipv4Fields {
    pub tos: u8,
    /// Header + payload.
    pub total_len: usize,
    pub id: u16,
    pub df: bool,
    pub ttl: u8,
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

pub(crate) fn put_ipv4_header(w: &mut Cursor<'_>, f: Ipv4Fields) -> Result<(), BuildError> {
    let total_len = u16::try_from(f.total_len).map_err(|_| BuildError::TooLong)?;
    let h: &mut [u8; 20] = array_mut(w.take(20)?, 0).ok_or(BuildError::BufferTooSmall)?;
    let [t0, t1] = total_len.to_be_bytes();
    let [i0, i1] = f.id.to_be_bytes();
    let [s0, s1, s2, s3] = f.src.octets();
    let [d0, d1, d2, d3] = f.dst.octets();
    let flags = if f.df { 0x40 } else { 0 };
    *h = [
        0x45, f.tos, t0, t1, i0, i1, flags, 0, f.ttl, f.proto, 0, 0, s0, s1, s2, s3, d0, d1, d2, d3,
    ];
    let [c0, c1] = checksum::finish(checksum::sum_bytes(0, h)).to_be_bytes();
    h[10] = c0;
    h[11] = c1;
    Ok(())
}

/// Fields of a fresh IPv6 header (no extension headers).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ipv6Fields {
    pub traffic_class: u8,
    pub flow_label: u32,
    pub payload_len: usize,
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
}

pub(crate) fn put_ipv6_header(w: &mut Cursor<'_>, f: Ipv6Fields) -> Result<(), BuildError> {
    let payload_len = u16::try_from(f.payload_len).map_err(|_| BuildError::TooLong)?;
    let first = (6u32 << 28) | (u32::from(f.traffic_class) << 20) | (f.flow_label & 0x000F_FFFF);
    w.put(&first.to_be_bytes())?;
    w.put(&payload_len.to_be_bytes())?;
    w.put(&[f.next_header, f.hop_limit])?;
    w.put(&f.src.octets())?;
    w.put(&f.dst.octets())
}

/// Stores the checksum of an ICMP(v6)/transport message written at `start` (its checksum field
/// at `start + field` must hold zero), given the pseudo-header sum (0 for ICMPv4).
fn seal_checksum(
    w: &mut Cursor<'_>,
    start: usize,
    field: usize,
    pseudo: u64,
) -> Result<(), BuildError> {
    let msg = w.written_mut(start)?;
    let c = checksum::finish(checksum::sum_bytes(pseudo, msg));
    *array_mut::<2>(msg, field).ok_or(BuildError::BufferTooSmall)? = c.to_be_bytes();
    Ok(())
}

/// An ICMP error to send in answer to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpErrorReply {
    /// ICMPv4 destination unreachable / fragmentation needed (type 3 code 4) with the next-hop
    /// MTU (raised to 68, RFC 791's minimum).
    FragNeeded { mtu: u16 },
    /// ICMPv6 packet too big (type 2) with the MTU (raised to 1280, RFC 8200's minimum).
    PacketTooBig { mtu: u32 },
    /// Time exceeded in transit (ICMPv4 type 11 / ICMPv6 type 3, code 0).
    TimeExceeded,
    /// Port unreachable (ICMPv4 type 3 code 3 / ICMPv6 type 1 code 4), e.g. UDP to a virtual
    /// service without an available real server, as IPVS answers.
    PortUnreachable,
}

/// Builds an ICMP/ICMPv6 error about the packet in `frame` (classified as `pkt`) into `out`,
/// from `src` (the VIP or a director address) to the packet's sender, with the Ethernet
/// addresses swapped and the VLAN tag kept. Quotes as much of the original IP packet as fits in
/// 576 bytes (ICMPv4, RFC 1812) / 1280 bytes (ICMPv6, RFC 4443) and in `out` — at least the IP
/// header plus 8 bytes, as RFC 792 requires, or [`BuildError::BufferTooSmall`].
///
/// Refuses ([`BuildError::NotAllowed`]) what RFC 1122 §3.2.2 and RFC 4443 §2.4 (e) forbid:
/// answering an ICMP error, a non-first fragment, a packet sent to a broadcast/multicast
/// address (IPv6: except for packet too big), or from an address that is not a single host.
/// Rate limiting is the caller's job.
pub fn build_icmp_error(
    frame: &[u8],
    pkt: &Packet,
    out: &mut [u8],
    src: IpAddr,
    reply: IcmpErrorReply,
) -> Result<usize, BuildError> {
    let ip = pkt
        .ip()
        .ok_or(BuildError::NotApplicable("not an IP packet"))?;
    may_send_icmp_error(pkt, ip, reply)?;
    let original = frame
        .get(ip.l3_offset..ip.end)
        .ok_or(BuildError::Truncated)?;
    let header_and_8 = ip
        .l4_offset
        .saturating_sub(ip.l3_offset)
        .saturating_add(8)
        .min(original.len());
    let mut w = Cursor::new(out);
    match (ip.src, src) {
        (IpAddr::V4(to), IpAddr::V4(from)) => {
            let (icmp_type, code, rest) = match reply {
                IcmpErrorReply::FragNeeded { mtu } => {
                    let [m0, m1] = mtu.max(68).to_be_bytes();
                    (3, 4, [0, 0, m0, m1])
                }
                IcmpErrorReply::TimeExceeded => (11, 0, [0; 4]),
                IcmpErrorReply::PortUnreachable => (3, 3, [0; 4]),
                IcmpErrorReply::PacketTooBig { .. } => {
                    return Err(BuildError::NotApplicable("packet too big is ICMPv6"));
                }
            };
            put_eth(
                &mut w,
                pkt.eth.src,
                pkt.eth.dst,
                pkt.eth.vlan_tci,
                ETHERTYPE_IPV4,
            )?;
            let room = w.remaining().saturating_sub(28);
            let quote = original.len().min(ICMPV4_ERROR_MAX - 28).min(room);
            if quote < header_and_8 {
                return Err(BuildError::BufferTooSmall);
            }
            let quoted = original.get(..quote).ok_or(BuildError::Truncated)?;
            put_ipv4_header(
                &mut w,
                Ipv4Fields {
                    // Precedence "internetwork control", as Linux sends its ICMP errors.
                    tos: 0xC0,
                    total_len: 28 + quote,
                    // Never fragmented (at most 576 bytes): an atomic datagram (RFC 6864).
                    id: 0,
                    df: true,
                    ttl: ICMP_ERROR_TTL,
                    proto: proto::ICMP,
                    src: from,
                    dst: to,
                },
            )?;
            let start = w.len();
            w.put(&[icmp_type, code, 0, 0])?;
            w.put(&rest)?;
            w.put(quoted)?;
            seal_checksum(&mut w, start, 2, 0)?;
        }
        (IpAddr::V6(to), IpAddr::V6(from)) => {
            let (icmp_type, code, rest) = match reply {
                IcmpErrorReply::PacketTooBig { mtu } => (2, 0, mtu.max(1280).to_be_bytes()),
                IcmpErrorReply::TimeExceeded => (3, 0, [0; 4]),
                IcmpErrorReply::PortUnreachable => (1, 4, [0; 4]),
                IcmpErrorReply::FragNeeded { .. } => {
                    return Err(BuildError::NotApplicable("fragmentation needed is ICMPv4"));
                }
            };
            put_eth(
                &mut w,
                pkt.eth.src,
                pkt.eth.dst,
                pkt.eth.vlan_tci,
                ETHERTYPE_IPV6,
            )?;
            let room = w.remaining().saturating_sub(48);
            let quote = original.len().min(ICMPV6_ERROR_MAX - 48).min(room);
            if quote < header_and_8 {
                return Err(BuildError::BufferTooSmall);
            }
            let quoted = original.get(..quote).ok_or(BuildError::Truncated)?;
            put_ipv6_header(
                &mut w,
                Ipv6Fields {
                    traffic_class: 0,
                    flow_label: 0,
                    payload_len: 8 + quote,
                    next_header: proto::ICMPV6,
                    hop_limit: ICMP_ERROR_TTL,
                    src: from,
                    dst: to,
                },
            )?;
            let start = w.len();
            w.put(&[icmp_type, code, 0, 0])?;
            w.put(&rest)?;
            w.put(quoted)?;
            let pseudo =
                checksum::pseudo_header_v6(from.octets(), to.octets(), proto::ICMPV6, 8 + quote);
            seal_checksum(&mut w, start, 2, pseudo)?;
        }
        _ => return Err(BuildError::FamilyMismatch),
    }
    Ok(w.len())
}

/// ICMPv4 "fragmentation needed" (type 3 code 4) with `mtu` as next-hop MTU: see
/// [`build_icmp_error`].
pub fn build_frag_needed(
    frame: &[u8],
    pkt: &Packet,
    out: &mut [u8],
    src: Ipv4Addr,
    mtu: u16,
) -> Result<usize, BuildError> {
    build_icmp_error(
        frame,
        pkt,
        out,
        IpAddr::V4(src),
        IcmpErrorReply::FragNeeded { mtu },
    )
}

/// ICMPv6 "packet too big" (type 2) with `mtu`: see [`build_icmp_error`].
pub fn build_packet_too_big(
    frame: &[u8],
    pkt: &Packet,
    out: &mut [u8],
    src: Ipv6Addr,
    mtu: u32,
) -> Result<usize, BuildError> {
    build_icmp_error(
        frame,
        pkt,
        out,
        IpAddr::V6(src),
        IcmpErrorReply::PacketTooBig { mtu },
    )
}

/// Whether an address identifies a single IPv4 host (RFC 1122 §3.2.2).
fn single_host_v4(a: Ipv4Addr) -> bool {
    !(a.is_unspecified()
        || a.is_broadcast()
        || a.is_multicast()
        || a.is_loopback()
        || a.octets()[0] >= 240)
}

fn may_send_icmp_error(pkt: &Packet, ip: &Ip, reply: IcmpErrorReply) -> Result<(), BuildError> {
    if ip.is_non_first_fragment() {
        return Err(BuildError::NotAllowed("non-first fragment"));
    }
    let link_group = pkt.eth.dst[0] & 1 != 0;
    match (ip.version, ip.src, ip.dst) {
        (IpVersion::V4, IpAddr::V4(s), IpAddr::V4(d)) => {
            if let L4::Icmp(Icmp { icmp_type, .. }) = ip.l4
                && matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
            {
                return Err(BuildError::NotAllowed("answer to an ICMP error"));
            }
            if link_group || d.is_broadcast() || d.is_multicast() {
                return Err(BuildError::NotAllowed(
                    "sent to a broadcast/multicast address",
                ));
            }
            if !single_host_v4(s) {
                return Err(BuildError::NotAllowed("source is not a single host"));
            }
        }
        (IpVersion::V6, IpAddr::V6(s), IpAddr::V6(d)) => {
            if let L4::Icmp(Icmp { icmp_type, .. }) = ip.l4
                && (icmp_type < 128 || icmp_type == 137)
            {
                return Err(BuildError::NotAllowed(
                    "answer to an ICMPv6 error or redirect",
                ));
            }
            let too_big = matches!(reply, IcmpErrorReply::PacketTooBig { .. });
            if (link_group || d.is_multicast()) && !too_big {
                return Err(BuildError::NotAllowed("sent to a multicast address"));
            }
            if s.is_unspecified() || s.is_multicast() || s.is_loopback() {
                return Err(BuildError::NotAllowed("source is not a single host"));
            }
        }
        _ => return Err(BuildError::Truncated),
    }
    Ok(())
}

/// Writes an Ethernet/IPv4 ARP packet padded to the minimum frame size.
#[allow(clippy::too_many_arguments)]
fn put_arp(
    w: &mut Cursor<'_>,
    eth_dst: Mac,
    vlan_tci: Option<u16>,
    operation: u16,
    sender_mac: Mac,
    sender_ip: Ipv4Addr,
    target_mac: Mac,
    target_ip: Ipv4Addr,
) -> Result<usize, BuildError> {
    put_eth(w, eth_dst, sender_mac, vlan_tci, ETHERTYPE_ARP)?;
    // Hardware type Ethernet (1), protocol IPv4, address sizes 6 and 4.
    w.put(&[0, 1, 0x08, 0x00, 6, 4])?;
    w.put(&operation.to_be_bytes())?;
    w.put(&sender_mac)?;
    w.put(&sender_ip.octets())?;
    w.put(&target_mac)?;
    w.put(&target_ip.octets())?;
    let pad = MIN_FRAME_LEN.saturating_sub(w.len());
    w.zeros(pad)?;
    Ok(w.len())
}

/// ARP reply for an ARP request (`pkt`) asking for an address we answer for (the engine checks
/// that the target is one of its VIPs): "target_ip is at `mac`", sent to the requester, with
/// the request's VLAN tag. ARP probes (sender 0.0.0.0, RFC 5227) are answered too, as Linux
/// does.
pub fn build_arp_reply(pkt: &Packet, out: &mut [u8], mac: Mac) -> Result<usize, BuildError> {
    let arp = pkt
        .arp()
        .filter(|a| a.is_request())
        .ok_or(BuildError::NotApplicable("not an ARP request"))?;
    put_arp(
        &mut Cursor::new(out),
        arp.sender_mac,
        pkt.eth.vlan_tci,
        super::Arp::REPLY,
        mac,
        arp.target_ip,
        arp.sender_mac,
        arp.sender_ip,
    )
}

/// Gratuitous ARP announcing that `vip` is at `mac`: the request form (sender = target = VIP,
/// target MAC zero, RFC 5227 "ARP announcement"), broadcast.
pub fn build_gratuitous_arp(
    out: &mut [u8],
    mac: Mac,
    vip: Ipv4Addr,
    vlan_tci: Option<u16>,
) -> Result<usize, BuildError> {
    put_arp(
        &mut Cursor::new(out),
        BROADCAST_MAC,
        vlan_tci,
        super::Arp::REQUEST,
        mac,
        vip,
        [0; 6],
        vip,
    )
}

/// Writes an Ethernet/IPv6 neighbour advertisement for `target` at `mac` with a Target
/// Link-Layer Address option, hop limit 255 (RFC 4861 §4.4, §7.2.4).
fn put_na(
    w: &mut Cursor<'_>,
    eth_dst: Mac,
    vlan_tci: Option<u16>,
    mac: Mac,
    target: Ipv6Addr,
    dst: Ipv6Addr,
    solicited: bool,
) -> Result<usize, BuildError> {
    const NA_LEN: usize = 32; // ICMPv6 header 8 + target 16 + option 8
    put_eth(w, eth_dst, mac, vlan_tci, ETHERTYPE_IPV6)?;
    put_ipv6_header(
        w,
        Ipv6Fields {
            traffic_class: 0,
            flow_label: 0,
            payload_len: NA_LEN,
            next_header: proto::ICMPV6,
            hop_limit: 255,
            src: target,
            dst,
        },
    )?;
    let start = w.len();
    // Router 0, Solicited as asked, Override 1.
    let flags = if solicited { 0x60 } else { 0x20 };
    w.put(&[136, 0, 0, 0, flags, 0, 0, 0])?;
    w.put(&target.octets())?;
    w.put(&[2, 1])?;
    w.put(&mac)?;
    let pseudo = checksum::pseudo_header_v6(target.octets(), dst.octets(), proto::ICMPV6, NA_LEN);
    seal_checksum(w, start, 2, pseudo)?;
    Ok(w.len())
}

/// Neighbour advertisement answering a neighbour solicitation (`pkt`) for an address we answer
/// for (the engine checks the target is one of its VIPs): solicited and override set, target
/// link-layer address `mac`, from the target address, to the solicitor (its Source Link-Layer
/// Address option, else the frame's source MAC), with the solicitation's VLAN tag. A DAD probe
/// (source ::) is answered to ff02::1 with the solicited flag clear (RFC 4861 §7.2.4).
pub fn build_neighbor_advertisement(
    pkt: &Packet,
    out: &mut [u8],
    mac: Mac,
) -> Result<usize, BuildError> {
    let ip = pkt
        .ip()
        .ok_or(BuildError::NotApplicable("not an IP packet"))?;
    let (
        L4::Icmp(Icmp {
            kind: IcmpKind::NeighborSolicitation { target, source_mac },
            ..
        }),
        IpAddr::V6(solicitor),
    ) = (ip.l4, ip.src)
    else {
        return Err(BuildError::NotApplicable("not a neighbour solicitation"));
    };
    let mut w = Cursor::new(out);
    if solicitor.is_unspecified() {
        put_na(
            &mut w,
            ALL_NODES_MAC,
            pkt.eth.vlan_tci,
            mac,
            target,
            ALL_NODES,
            false,
        )
    } else {
        let eth_dst = source_mac.unwrap_or(pkt.eth.src);
        put_na(
            &mut w,
            eth_dst,
            pkt.eth.vlan_tci,
            mac,
            target,
            solicitor,
            true,
        )
    }
}

/// Unsolicited neighbour advertisement for `vip` at `mac` to ff02::1, override set (RFC 4861
/// §7.2.6), for taking over a VIP.
pub fn build_unsolicited_na(
    out: &mut [u8],
    mac: Mac,
    vip: Ipv6Addr,
    vlan_tci: Option<u16>,
) -> Result<usize, BuildError> {
    put_na(
        &mut Cursor::new(out),
        ALL_NODES_MAC,
        vlan_tci,
        mac,
        vip,
        ALL_NODES,
        false,
    )
}
