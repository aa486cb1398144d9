//! Frame classification: one pass over the headers with etherparse's zero-copy header slices,
//! producing a small `Copy` summary ([`Packet`]) that owns no borrow of the frame, so the engine
//! can keep it while it rewrites the same buffer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::icmpv6::{NdpOptionSlice, NdpOptionsIterator};
use etherparse::{
    ArpPacketSlice, Ethernet2HeaderSlice, Icmpv4Slice, Icmpv6Slice, Ipv4HeaderSlice,
    Ipv6FragmentHeaderSlice, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SingleVlanHeaderSlice,
    TcpHeaderSlice, UdpHeaderSlice,
};

use super::checksum;
use super::view::{array_ref, read_u16};
use super::{Mac, Malformed, proto};

/// Ethernet header length without a VLAN tag.
pub const ETH_HEADER_LEN: usize = 14;
/// Length of one 802.1Q tag.
pub const VLAN_TAG_LEN: usize = 4;

pub(crate) const ETHERTYPE_IPV4: u16 = 0x0800;
pub(crate) const ETHERTYPE_ARP: u16 = 0x0806;
pub(crate) const ETHERTYPE_VLAN: u16 = 0x8100;
pub(crate) const ETHERTYPE_IPV6: u16 = 0x86DD;

/// At most this many IPv6 extension headers are walked before the packet is called malformed
/// (a legitimate packet has a handful; the cap bounds the work an attacker can cause).
pub const MAX_IPV6_EXT_HEADERS: usize = 12;

/// What [`classify`] found in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub eth: Ethernet,
    pub net: Net,
}

impl Packet {
    /// The IP part, if this is an IPv4 or IPv6 packet.
    pub fn ip(&self) -> Option<&Ip> {
        match &self.net {
            Net::Ip(ip) => Some(ip),
            _ => None,
        }
    }

    /// The ARP part, if this is an Ethernet/IPv4 ARP packet.
    pub fn arp(&self) -> Option<&Arp> {
        match &self.net {
            Net::Arp(arp) => Some(arp),
            _ => None,
        }
    }
}

/// The link layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ethernet {
    pub dst: Mac,
    pub src: Mac,
    /// The 802.1Q tag control information (PCP, DEI, VLAN id) when the frame carried one tag.
    pub vlan_tci: Option<u16>,
    /// The EtherType of the network layer (after the VLAN tag, if any).
    pub ether_type: u16,
    /// Where the network layer starts: 14, or 18 behind a VLAN tag.
    pub l3_offset: usize,
}

impl Ethernet {
    /// The VLAN id (low 12 bits of the TCI).
    pub fn vlan_id(&self) -> Option<u16> {
        self.vlan_tci.map(|tci| tci & 0x0FFF)
    }
}

/// The network layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    Arp(Arp),
    Ip(Ip),
    /// Another EtherType (LLDP, double-tagged frames, …): not for the engine.
    Other,
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    /// 1 = request, 2 = reply.
    pub operation: u16,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

impl Arp {
    pub const REQUEST: u16 = 1;
    pub const REPLY: u16 = 2;

    pub fn is_request(&self) -> bool {
        self.operation == Arp::REQUEST
    }

    pub fn is_reply(&self) -> bool {
        self.operation == Arp::REPLY
    }
}

/// IP version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

/// An IPv4 or IPv6 packet. All offsets are from the start of the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ip {
    pub version: IpVersion,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    /// DS field / traffic class (DSCP and ECN).
    pub tos: u8,
    /// IPv4 DF flag. IPv6 packets are never fragmented on the way, so this is `false` for them
    /// and callers check [`Ip::may_fragment`].
    pub dont_fragment: bool,
    /// IPv4 identification (0 for IPv6; see `fragment` for the IPv6 fragment id).
    pub ipv4_id: u16,
    /// `Some` when this packet is a fragment (offset > 0 or more-fragments set). An IPv6
    /// "atomic fragment" (fragment header with offset 0 and M clear, RFC 6946) is not one.
    pub fragment: Option<Fragment>,
    /// The upper-layer protocol: after IPv6 extension headers (hop-by-hop, routing, fragment,
    /// destination options). AH (51) and ESP (50) are reported as upper layers, as IPVS treats
    /// them. For a non-first IPv6 fragment it is the fragment header's next header.
    pub proto: u8,
    /// Start of the IP header.
    pub l3_offset: usize,
    /// Start of the upper-layer header (after IPv4 options / IPv6 extension headers).
    pub l4_offset: usize,
    /// Start of the upper-layer payload (after the TCP header with options, the UDP, SCTP
    /// common or ICMP header); equals `l4_offset` when there is no known L4 header.
    pub payload_offset: usize,
    /// End of the IP packet (from its length fields); bytes after it are link padding.
    pub end: usize,
    /// IPv6: a routing header still has segments left, so this node is not the final
    /// destination and the transport pseudo-header uses another address. NAT refuses these.
    pub routing_pending: bool,
    pub l4: L4,
}

impl Ip {
    pub fn is_v4(&self) -> bool {
        self.version == IpVersion::V4
    }

    pub fn is_v6(&self) -> bool {
        self.version == IpVersion::V6
    }

    /// Length of the IP packet (header included).
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.l3_offset)
    }

    /// Whether the IP packet is empty (never for a classified packet).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a router may fragment this packet (IPv4 without DF).
    pub fn may_fragment(&self) -> bool {
        self.is_v4() && !self.dont_fragment
    }

    /// Transport ports (TCP, UDP, SCTP), `None` for other protocols and non-first fragments.
    pub fn ports(&self) -> Option<Ports> {
        match self.l4 {
            L4::Tcp(Tcp { ports, .. })
            | L4::Udp(Udp { ports, .. })
            | L4::Sctp(Sctp { ports, .. }) => Some(ports),
            _ => None,
        }
    }

    /// A fragment other than the first: no transport header, follow the first fragment by
    /// (src, dst, proto, fragment id).
    pub fn is_non_first_fragment(&self) -> bool {
        matches!(self.fragment, Some(f) if f.offset != 0)
    }
}

/// Fragment information (IPv4 header or IPv6 fragment header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// IPv4 identification (16 bits) or IPv6 fragment identification (32 bits).
    pub id: u32,
    /// Offset of this fragment's data in the original payload, in bytes.
    pub offset: u16,
    /// More fragments follow.
    pub more: bool,
}

impl Fragment {
    pub fn is_first(&self) -> bool {
        self.offset == 0
    }
}

/// Transport ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

/// The upper layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp(Tcp),
    Udp(Udp),
    Sctp(Sctp),
    /// ICMPv4 in IPv4 or ICMPv6 in IPv6.
    Icmp(Icmp),
    /// A non-first fragment: the transport header is in the first fragment.
    Fragment,
    /// Any other protocol (ESP, AH, GRE, …) or a misplaced ICMP version.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp {
    pub ports: Ports,
    pub flags: TcpFlags,
}

/// TCP flags (byte 13 of the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;

    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp {
    pub ports: Ports,
    /// The checksum field (0 = none in IPv4).
    pub checksum: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sctp {
    pub ports: Ports,
    pub verification_tag: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmp {
    pub icmp_type: u8,
    pub code: u8,
    pub kind: IcmpKind,
}

/// What an ICMP/ICMPv6 message means to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpKind {
    Echo {
        request: bool,
        id: u16,
        seq: u16,
    },
    /// An error quoting a packet: route it to the flow of `inner`.
    Error {
        error: IcmpError,
        inner: Inner,
    },
    /// IPv6 neighbour solicitation (hop limit 255 and the RFC 4861 §7.1.1 checks passed).
    NeighborSolicitation {
        target: Ipv6Addr,
        /// The Source Link-Layer Address option.
        source_mac: Option<Mac>,
    },
    /// IPv6 neighbour advertisement (hop limit 255 and the RFC 4861 §7.1.2 checks passed).
    NeighborAdvertisement {
        target: Ipv6Addr,
        router: bool,
        solicited: bool,
        override_flag: bool,
        /// The Target Link-Layer Address option.
        target_mac: Option<Mac>,
    },
    Other,
}

/// ICMP/ICMPv6 error types the engine routes to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpError {
    /// ICMPv4 type 3 (except code 4) or ICMPv6 type 1; the code is the raw code.
    DestUnreachable { code: u8 },
    /// ICMPv4 type 3 code 4 with the next-hop MTU (0 from pre-RFC 1191 routers).
    FragNeeded { mtu: u16 },
    /// ICMPv6 type 2.
    PacketTooBig { mtu: u32 },
    /// ICMPv4 type 11 / ICMPv6 type 3.
    TimeExceeded { code: u8 },
    /// ICMPv4 type 12 / ICMPv6 type 4 (pointer: one byte in ICMPv4, 32 bits in ICMPv6).
    ParameterProblem { code: u8, pointer: u32 },
}

/// The packet quoted in an ICMP error: one this side sent earlier, so its source is the
/// error's destination (for a reply sent from a VIP, `src` is the VIP and `dst` the client).
/// Offsets are from the start of the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inner {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// From the first 4 bytes of its TCP/UDP/SCTP header; `None` for other protocols,
    /// non-first fragments, or when the quote stops before them.
    pub ports: Option<Ports>,
    pub fragment: Option<Fragment>,
    pub l3_offset: usize,
    /// Where its transport header starts (it may be cut short by the end of the quote).
    pub l4_offset: usize,
}

/// Classifies an Ethernet II frame (optionally with one 802.1Q tag).
///
/// Checks what forwarding relies on: header lengths against the frame, IPv4 header checksum,
/// IPv4 total length / IPv6 payload length, the IPv6 extension header chain, the transport
/// header of unfragmented and first-fragment packets, the quoted packet of ICMP errors, and the
/// RFC 4861 validity rules for neighbour solicitations/advertisements (their checksum
/// included). It does not verify TCP/UDP/ICMP checksums of other packets (see
/// [`verify_l4_checksum`](super::verify_l4_checksum)): incremental rewrites keep a bad checksum
/// bad, so the receiver still drops a corrupted packet.
pub fn classify(frame: &[u8]) -> Result<Packet, Malformed> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| Malformed::Ethernet)?;
    let mut ether_type = eth.ether_type().0;
    let mut l3_offset = ETH_HEADER_LEN;
    let mut vlan_tci = None;
    if ether_type == ETHERTYPE_VLAN {
        let rest = frame.get(l3_offset..).ok_or(Malformed::Vlan)?;
        let vlan = SingleVlanHeaderSlice::from_slice(rest).map_err(|_| Malformed::Vlan)?;
        vlan_tci = Some(read_u16(vlan.slice(), 0).ok_or(Malformed::Vlan)?);
        ether_type = vlan.ether_type().0;
        l3_offset += VLAN_TAG_LEN;
    }
    let net = match ether_type {
        ETHERTYPE_ARP => Net::Arp(parse_arp(frame, l3_offset)?),
        ETHERTYPE_IPV4 => Net::Ip(parse_ipv4(frame, l3_offset)?),
        ETHERTYPE_IPV6 => Net::Ip(parse_ipv6(frame, l3_offset)?),
        _ => Net::Other,
    };
    Ok(Packet {
        eth: Ethernet {
            dst: eth.destination(),
            src: eth.source(),
            vlan_tci,
            ether_type,
            l3_offset,
        },
        net,
    })
}

fn mac_from(b: &[u8]) -> Option<Mac> {
    b.try_into().ok()
}

fn ipv4_from(b: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(b).ok().map(Ipv4Addr::from)
}

fn parse_arp(frame: &[u8], off: usize) -> Result<Arp, Malformed> {
    let data = frame.get(off..).ok_or(Malformed::Arp)?;
    let arp = ArpPacketSlice::from_slice(data).map_err(|_| Malformed::Arp)?;
    if arp.hw_addr_type() != etherparse::ArpHardwareId::ETHERNET
        || arp.proto_addr_type() != etherparse::EtherType::IPV4
    {
        return Err(Malformed::Arp);
    }
    Ok(Arp {
        operation: arp.operation().0,
        sender_mac: mac_from(arp.sender_hw_addr()).ok_or(Malformed::Arp)?,
        sender_ip: ipv4_from(arp.sender_protocol_addr()).ok_or(Malformed::Arp)?,
        target_mac: mac_from(arp.target_hw_addr()).ok_or(Malformed::Arp)?,
        target_ip: ipv4_from(arp.target_protocol_addr()).ok_or(Malformed::Arp)?,
    })
}

fn parse_ipv4(frame: &[u8], off: usize) -> Result<Ip, Malformed> {
    let data = frame.get(off..).ok_or(Malformed::Truncated)?;
    let h = Ipv4HeaderSlice::from_slice(data).map_err(|_| Malformed::Ipv4Header)?;
    let header_len = h.slice().len();
    let total_len = usize::from(h.total_len());
    if total_len < header_len {
        return Err(Malformed::Ipv4TotalLength);
    }
    if total_len > data.len() {
        return Err(Malformed::Truncated);
    }
    if checksum::fold(checksum::sum_bytes(0, h.slice())) != 0xFFFF {
        return Err(Malformed::Ipv4Checksum);
    }
    let end = off + total_len;
    let l4_offset = off + header_len;
    let frag_units = h.fragments_offset().value();
    let more = h.more_fragments();
    let fragment = (frag_units != 0 || more).then(|| Fragment {
        id: u32::from(h.identification()),
        offset: frag_units << 3,
        more,
    });
    let proto = h.protocol().0;
    let ctx = L3Ctx {
        version: IpVersion::V4,
        fragmented: fragment.is_some(),
        ttl: h.ttl(),
        src: IpAddr::V4(h.source_addr()),
        dst: IpAddr::V4(h.destination_addr()),
    };
    let (l4, payload_offset) = if frag_units != 0 {
        (L4::Fragment, l4_offset)
    } else {
        parse_l4(frame, l4_offset, end, proto, &ctx)?
    };
    Ok(Ip {
        version: IpVersion::V4,
        src: ctx.src,
        dst: ctx.dst,
        ttl: h.ttl(),
        tos: h.slice().get(1).copied().unwrap_or(0),
        dont_fragment: h.dont_fragment(),
        ipv4_id: h.identification(),
        fragment,
        proto,
        l3_offset: off,
        l4_offset,
        payload_offset,
        end,
        routing_pending: false,
        l4,
    })
}

/// The result of walking an IPv6 extension header chain.
struct V6Chain {
    /// The upper-layer protocol (or the last next-header value reached).
    proto: u8,
    /// Offset of the upper-layer header.
    l4_offset: usize,
    fragment: Option<Fragment>,
    /// A non-first fragment: nothing after the fragment header is a header.
    non_first: bool,
    routing_pending: bool,
    /// The chain ran past the end of the data (only tolerated for quoted packets).
    truncated: bool,
}

/// Walks the extension headers from `start` (just after the fixed header) to `end`. With
/// `lax`, a chain cut short by `end` is reported as `truncated` instead of an error (quotes in
/// ICMP errors end anywhere).
fn walk_ipv6_exts(
    frame: &[u8],
    first: u8,
    start: usize,
    end: usize,
    lax: bool,
) -> Result<V6Chain, Malformed> {
    let mut chain = V6Chain {
        proto: first,
        l4_offset: start,
        fragment: None,
        non_first: false,
        routing_pending: false,
        truncated: false,
    };
    let mut seen = 0usize;
    loop {
        let nh = chain.proto;
        if !matches!(
            nh,
            proto::HOP_BY_HOP | proto::IPV6_ROUTE | proto::IPV6_FRAG | proto::IPV6_DEST_OPTS
        ) {
            return Ok(chain);
        }
        if nh == proto::HOP_BY_HOP && seen != 0 {
            return Err(Malformed::HopByHopNotFirst);
        }
        seen += 1;
        if seen > MAX_IPV6_EXT_HEADERS {
            return Err(Malformed::TooManyExtHeaders);
        }
        let data = frame.get(chain.l4_offset..end).unwrap_or(&[]);
        if nh == proto::IPV6_FRAG {
            let frag = match Ipv6FragmentHeaderSlice::from_slice(data) {
                Ok(f) => f,
                Err(_) if lax => {
                    chain.truncated = true;
                    return Ok(chain);
                }
                Err(_) => return Err(Malformed::Ipv6ExtHeader),
            };
            if chain.fragment.is_some() {
                return Err(Malformed::DuplicateFragmentHeader);
            }
            let offset = frag.fragment_offset().value() << 3;
            let more = frag.more_fragments();
            if offset != 0 || more {
                chain.fragment = Some(Fragment {
                    id: frag.identification(),
                    offset,
                    more,
                });
            }
            chain.proto = frag.next_header().0;
            chain.l4_offset += frag.slice().len();
            if offset != 0 {
                chain.non_first = true;
                return Ok(chain);
            }
        } else {
            let ext = match Ipv6RawExtHeaderSlice::from_slice(data) {
                Ok(e) => e,
                Err(_) if lax => {
                    chain.truncated = true;
                    return Ok(chain);
                }
                Err(_) => return Err(Malformed::Ipv6ExtHeader),
            };
            if nh == proto::IPV6_ROUTE && ext.slice().get(3).is_some_and(|&left| left != 0) {
                chain.routing_pending = true;
            }
            chain.proto = ext.next_header().0;
            chain.l4_offset += ext.slice().len();
        }
    }
}

fn parse_ipv6(frame: &[u8], off: usize) -> Result<Ip, Malformed> {
    let data = frame.get(off..).ok_or(Malformed::Truncated)?;
    let h = Ipv6HeaderSlice::from_slice(data).map_err(|_| Malformed::Ipv6Header)?;
    let total_len = 40 + usize::from(h.payload_length());
    if total_len > data.len() {
        return Err(Malformed::Truncated);
    }
    let end = off + total_len;
    let chain = walk_ipv6_exts(frame, h.next_header().0, off + 40, end, false)?;
    let ctx = L3Ctx {
        version: IpVersion::V6,
        fragmented: chain.fragment.is_some(),
        ttl: h.hop_limit(),
        src: IpAddr::V6(h.source_addr()),
        dst: IpAddr::V6(h.destination_addr()),
    };
    let (l4, payload_offset) = if chain.non_first {
        (L4::Fragment, chain.l4_offset)
    } else {
        parse_l4(frame, chain.l4_offset, end, chain.proto, &ctx)?
    };
    Ok(Ip {
        version: IpVersion::V6,
        src: ctx.src,
        dst: ctx.dst,
        ttl: h.hop_limit(),
        tos: h.traffic_class(),
        dont_fragment: false,
        ipv4_id: 0,
        fragment: chain.fragment,
        proto: chain.proto,
        l3_offset: off,
        l4_offset: chain.l4_offset,
        payload_offset,
        end,
        routing_pending: chain.routing_pending,
        l4,
    })
}

/// What the transport parser needs to know about the IP layer.
struct L3Ctx {
    version: IpVersion,
    /// A first fragment: the transport payload is incomplete.
    fragmented: bool,
    ttl: u8,
    src: IpAddr,
    dst: IpAddr,
}

fn ports_at(frame: &[u8], off: usize, end: usize) -> Option<Ports> {
    let b = array_ref::<4>(frame.get(..end)?, off)?;
    Some(Ports {
        src: u16::from_be_bytes([b[0], b[1]]),
        dst: u16::from_be_bytes([b[2], b[3]]),
    })
}

fn parse_l4(
    frame: &[u8],
    off: usize,
    end: usize,
    proto: u8,
    ctx: &L3Ctx,
) -> Result<(L4, usize), Malformed> {
    let data = frame.get(off..end).ok_or(Malformed::Truncated)?;
    match (proto, ctx.version) {
        (proto::TCP, _) => {
            let tcp = TcpHeaderSlice::from_slice(data).map_err(|_| Malformed::Tcp)?;
            let flags = TcpFlags(tcp.slice().get(13).copied().unwrap_or(0));
            let ports = Ports {
                src: tcp.source_port(),
                dst: tcp.destination_port(),
            };
            Ok((L4::Tcp(Tcp { ports, flags }), off + tcp.slice().len()))
        }
        (proto::UDP, _) => {
            let udp = UdpHeaderSlice::from_slice(data).map_err(|_| Malformed::Udp)?;
            let len = usize::from(udp.length());
            if !ctx.fragmented && (len < 8 || len > data.len()) {
                return Err(Malformed::UdpLength);
            }
            let ports = Ports {
                src: udp.source_port(),
                dst: udp.destination_port(),
            };
            let checksum = udp.checksum();
            Ok((L4::Udp(Udp { ports, checksum }), off + 8))
        }
        (proto::SCTP, _) => {
            let common = array_ref::<12>(data, 0).ok_or(Malformed::Sctp)?;
            let ports = ports_at(common, 0, 12).ok_or(Malformed::Sctp)?;
            let verification_tag = u32::from_be_bytes([common[4], common[5], common[6], common[7]]);
            Ok((
                L4::Sctp(Sctp {
                    ports,
                    verification_tag,
                }),
                off + 12,
            ))
        }
        (proto::ICMP, IpVersion::V4) => {
            let icmp = parse_icmpv4(frame, off, end)?;
            Ok((L4::Icmp(icmp), off + 8))
        }
        (proto::ICMPV6, IpVersion::V6) => {
            let icmp = parse_icmpv6(frame, off, end, ctx)?;
            Ok((L4::Icmp(icmp), off + 8))
        }
        _ => Ok((L4::Other, off)),
    }
}

fn parse_icmpv4(frame: &[u8], off: usize, end: usize) -> Result<Icmp, Malformed> {
    let data = frame.get(off..end).ok_or(Malformed::Truncated)?;
    let icmp = Icmpv4Slice::from_slice(data).map_err(|_| Malformed::Icmp)?;
    let (icmp_type, code) = (icmp.type_u8(), icmp.code_u8());
    let [b4, b5, b6, b7] = icmp.bytes5to8();
    let error = match icmp_type {
        0 | 8 => {
            return Ok(Icmp {
                icmp_type,
                code,
                kind: IcmpKind::Echo {
                    request: icmp_type == 8,
                    id: u16::from_be_bytes([b4, b5]),
                    seq: u16::from_be_bytes([b6, b7]),
                },
            });
        }
        3 if code == 4 => IcmpError::FragNeeded {
            mtu: u16::from_be_bytes([b6, b7]),
        },
        3 => IcmpError::DestUnreachable { code },
        11 => IcmpError::TimeExceeded { code },
        12 => IcmpError::ParameterProblem {
            code,
            pointer: u32::from(b4),
        },
        _ => {
            return Ok(Icmp {
                icmp_type,
                code,
                kind: IcmpKind::Other,
            });
        }
    };
    let inner = parse_inner(frame, off + 8, end, IpVersion::V4)?;
    Ok(Icmp {
        icmp_type,
        code,
        kind: IcmpKind::Error { error, inner },
    })
}

fn is_multicast_v6(a: &Ipv6Addr) -> bool {
    a.octets()[0] == 0xFF
}

fn parse_icmpv6(frame: &[u8], off: usize, end: usize, ctx: &L3Ctx) -> Result<Icmp, Malformed> {
    let data = frame.get(off..end).ok_or(Malformed::Truncated)?;
    let icmp = Icmpv6Slice::from_slice(data).map_err(|_| Malformed::Icmp)?;
    let (icmp_type, code) = (icmp.type_u8(), icmp.code_u8());
    let b = icmp.bytes5to8();
    let word = u32::from_be_bytes(b);
    let error = match icmp_type {
        1 => IcmpError::DestUnreachable { code },
        2 => IcmpError::PacketTooBig { mtu: word },
        3 => IcmpError::TimeExceeded { code },
        4 => IcmpError::ParameterProblem {
            code,
            pointer: word,
        },
        128 | 129 => {
            let [b4, b5, b6, b7] = b;
            return Ok(Icmp {
                icmp_type,
                code,
                kind: IcmpKind::Echo {
                    request: icmp_type == 128,
                    id: u16::from_be_bytes([b4, b5]),
                    seq: u16::from_be_bytes([b6, b7]),
                },
            });
        }
        135 | 136 => {
            let kind = parse_ndp(frame, off, end, &icmp, ctx)?;
            return Ok(Icmp {
                icmp_type,
                code,
                kind,
            });
        }
        _ => {
            return Ok(Icmp {
                icmp_type,
                code,
                kind: IcmpKind::Other,
            });
        }
    };
    let inner = parse_inner(frame, off + 8, end, IpVersion::V6)?;
    Ok(Icmp {
        icmp_type,
        code,
        kind: IcmpKind::Error { error, inner },
    })
}

/// Neighbour solicitation / advertisement, with the RFC 4861 §7.1 validity checks.
fn parse_ndp(
    frame: &[u8],
    off: usize,
    end: usize,
    icmp: &Icmpv6Slice<'_>,
    ctx: &L3Ctx,
) -> Result<IcmpKind, Malformed> {
    // RFC 6980: NDP messages are never fragmented.
    if ctx.fragmented || ctx.ttl != 255 || icmp.code_u8() != 0 {
        return Err(Malformed::Ndp);
    }
    let (IpAddr::V6(src), IpAddr::V6(dst)) = (ctx.src, ctx.dst) else {
        return Err(Malformed::Ndp);
    };
    let dst = dst.octets();
    if !icmp.is_checksum_valid(src.octets(), dst) {
        return Err(Malformed::Checksum);
    }
    let body = frame.get(off + 8..end).ok_or(Malformed::Ndp)?;
    let target: [u8; 16] = array_ref::<16>(body, 0).copied().ok_or(Malformed::Ndp)?;
    let target = Ipv6Addr::from(target);
    if is_multicast_v6(&target) {
        return Err(Malformed::Ndp);
    }
    let mut link_mac = None;
    let want = if icmp.type_u8() == 135 {
        etherparse::icmpv6::NdpOptionType::SOURCE_LINK_LAYER_ADDRESS
    } else {
        etherparse::icmpv6::NdpOptionType::TARGET_LINK_LAYER_ADDRESS
    };
    for option in NdpOptionsIterator::from_slice(body.get(16..).unwrap_or(&[])) {
        let option = option.map_err(|_| Malformed::Ndp)?;
        let addr = match &option {
            NdpOptionSlice::SourceLinkLayerAddress(o) => o.link_layer_address(),
            NdpOptionSlice::TargetLinkLayerAddress(o) => o.link_layer_address(),
            _ => continue,
        };
        if option.option_type() == want {
            // Only Ethernet-sized addresses; padding after them is allowed.
            link_mac = addr.get(..6).and_then(mac_from);
        }
    }
    if icmp.type_u8() == 135 {
        // A DAD probe (unspecified source) carries no source link-layer address.
        if src.is_unspecified() && link_mac.is_some() {
            return Err(Malformed::Ndp);
        }
        Ok(IcmpKind::NeighborSolicitation {
            target,
            source_mac: link_mac,
        })
    } else {
        let flags = icmp.bytes5to8()[0];
        let solicited = flags & 0x40 != 0;
        // A solicited advertisement never goes to a multicast address.
        if solicited && dst[0] == 0xFF {
            return Err(Malformed::Ndp);
        }
        Ok(IcmpKind::NeighborAdvertisement {
            target,
            router: flags & 0x80 != 0,
            solicited,
            override_flag: flags & 0x20 != 0,
            target_mac: link_mac,
        })
    }
}

/// The packet quoted in an ICMP error, from `start` to the end of the ICMP message.
fn parse_inner(
    frame: &[u8],
    start: usize,
    end: usize,
    version: IpVersion,
) -> Result<Inner, Malformed> {
    let data = frame.get(start..end).ok_or(Malformed::IcmpInner)?;
    match version {
        IpVersion::V4 => {
            let h = Ipv4HeaderSlice::from_slice(data).map_err(|_| Malformed::IcmpInner)?;
            let frag_units = h.fragments_offset().value();
            let more = h.more_fragments();
            let fragment = (frag_units != 0 || more).then(|| Fragment {
                id: u32::from(h.identification()),
                offset: frag_units << 3,
                more,
            });
            let proto = h.protocol().0;
            let l4_offset = start + h.slice().len();
            let ports = if frag_units == 0 && has_ports(proto) {
                ports_at(frame, l4_offset, end)
            } else {
                None
            };
            Ok(Inner {
                src: IpAddr::V4(h.source_addr()),
                dst: IpAddr::V4(h.destination_addr()),
                proto,
                ports,
                fragment,
                l3_offset: start,
                l4_offset,
            })
        }
        IpVersion::V6 => {
            let h = Ipv6HeaderSlice::from_slice(data).map_err(|_| Malformed::IcmpInner)?;
            let chain = walk_ipv6_exts(frame, h.next_header().0, start + 40, end, true)?;
            let ports = if !chain.non_first && !chain.truncated && has_ports(chain.proto) {
                ports_at(frame, chain.l4_offset, end)
            } else {
                None
            };
            Ok(Inner {
                src: IpAddr::V6(h.source_addr()),
                dst: IpAddr::V6(h.destination_addr()),
                proto: chain.proto,
                ports,
                fragment: chain.fragment,
                l3_offset: start,
                l4_offset: chain.l4_offset,
            })
        }
    }
}

pub(crate) fn has_ports(proto: u8) -> bool {
    matches!(proto, proto::TCP | proto::UDP | proto::SCTP)
}
