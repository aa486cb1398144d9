//! IP-in-IP tunnel encapsulation (IPVS "tunnel" forwarding): IPv4-in-IPv4 (RFC 2003),
//! IPv6-in-IPv6 (RFC 2473) and the mixed forms, written into a caller buffer.

use std::net::IpAddr;

use super::build::{Cursor, put_eth, put_ipv4_header, put_ipv6_header};
use super::classify::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, Ip, IpVersion, Packet};
use super::{EncapError, Mac, proto};

/// TTL / hop limit of the outer header. (Kernel IPVS copies the inner TTL instead; a fixed
/// value keeps the tunnel hop from inheriting a nearly expired TTL.)
pub const OUTER_TTL: u8 = 64;

/// Where and how to tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    /// Outer source (a director address) and destination (the real server).
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Ethernet addresses of the outgoing frame (ours, and the next hop toward `dst`).
    pub src_mac: Mac,
    pub dst_mac: Mac,
    /// 802.1Q TCI for the outgoing frame, if the link is tagged.
    pub vlan_tci: Option<u16>,
    /// MTU of the outgoing link: the largest outer IP packet it carries.
    pub mtu: u16,
}

/// Encapsulates the IP packet of `frame` (classified as `pkt`) into a new frame in `out` and
/// returns its length.
///
/// The outer header: IPv4 protocol 4 (IPv4 inside) or 41 (IPv6 inside), or IPv6 next header 4
/// or 41; TTL/hop limit [`OUTER_TTL`]; DSCP and ECN copied from the inner packet (RFC 6040
/// normal mode). An IPv4 outer header copies DF from an IPv4 inner packet and has DF clear for
/// IPv6 inside (as IPVS: the IPv6 packet already fits, and routers may still fragment the
/// outer one); its identification is the inner IPv4 id, or a hash of the inner IPv6 header.
/// An IPv6 outer header gets a flow label hashed from the inner addresses and ports (RFC 6438).
///
/// If the result would exceed `tunnel.mtu`: [`EncapError::TooBig`] when the inner packet may not
/// be fragmented (IPv4 with DF, or IPv6) — answer the sender with
/// [`build_frag_needed`](super::build_frag_needed) / [`build_packet_too_big`](super::build_packet_too_big)
/// carrying the returned MTU; [`EncapError::NeedsFragmentation`] for IPv4 without DF (this
/// layer does not fragment: drop it, or fragment the inner packet before).
pub fn encap(
    frame: &[u8],
    pkt: &Packet,
    out: &mut [u8],
    tunnel: &Tunnel,
) -> Result<usize, EncapError> {
    let ip = pkt.ip().ok_or(EncapError::NotIp)?;
    let inner = frame
        .get(ip.l3_offset..ip.end)
        .ok_or(EncapError::Truncated)?;
    let inner_version = inner.first().map(|b| b >> 4);
    let (inner_proto, want_version) = match ip.version {
        IpVersion::V4 => (proto::IPV4_IN_IP, 4),
        IpVersion::V6 => (proto::IPV6_IN_IP, 6),
    };
    if inner_version != Some(want_version) {
        return Err(EncapError::Truncated);
    }
    let outer_header_len = match (tunnel.src, tunnel.dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => 20,
        (IpAddr::V6(_), IpAddr::V6(_)) => 40,
        _ => return Err(EncapError::FamilyMismatch),
    };
    let mtu = usize::from(tunnel.mtu);
    let outer_len = outer_header_len + inner.len();
    let fits_ip_length = match outer_header_len {
        20 => outer_len <= usize::from(u16::MAX),
        _ => inner.len() <= usize::from(u16::MAX),
    };
    if outer_len > mtu || !fits_ip_length {
        let inner_mtu = mtu.saturating_sub(outer_header_len);
        let inner_mtu = u16::try_from(inner_mtu).unwrap_or(u16::MAX);
        return Err(if ip.may_fragment() {
            EncapError::NeedsFragmentation { mtu: inner_mtu }
        } else {
            EncapError::TooBig { mtu: inner_mtu }
        });
    }

    let mut w = Cursor::new(out);
    match (tunnel.src, tunnel.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            put_eth(
                &mut w,
                tunnel.dst_mac,
                tunnel.src_mac,
                tunnel.vlan_tci,
                ETHERTYPE_IPV4,
            )?;
            let id = if ip.is_v4() {
                ip.ipv4_id
            } else {
                // Varies per packet (the quoted bytes hold sequence numbers, lengths, …).
                let h = fnv1a(FNV_OFFSET, inner.get(..64).unwrap_or(inner));
                (h ^ (h >> 16)) as u16
            };
            let df = ip.is_v4() && ip.dont_fragment;
            put_ipv4_header(
                &mut w,
                super::build::Ipv4Fields {
                    tos: ip.tos,
                    total_len: outer_len,
                    id,
                    df,
                    ttl: OUTER_TTL,
                    proto: inner_proto,
                    src,
                    dst,
                },
            )?;
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            put_eth(
                &mut w,
                tunnel.dst_mac,
                tunnel.src_mac,
                tunnel.vlan_tci,
                ETHERTYPE_IPV6,
            )?;
            put_ipv6_header(
                &mut w,
                super::build::Ipv6Fields {
                    traffic_class: ip.tos,
                    flow_label: flow_hash(ip) & 0x000F_FFFF,
                    payload_len: inner.len(),
                    next_header: inner_proto,
                    hop_limit: OUTER_TTL,
                    src,
                    dst,
                },
            )?;
        }
        _ => return Err(EncapError::FamilyMismatch),
    }
    w.put(inner)?;
    Ok(w.len())
}

const FNV_OFFSET: u32 = 0x811C_9DC5;

fn fnv1a(mut h: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// FNV-1a over the inner addresses, protocol and ports: stable per flow. Fragments hash
/// without ports so that every fragment of a datagram gets the same label.
fn flow_hash(ip: &Ip) -> u32 {
    let mut h = FNV_OFFSET;
    match (ip.src, ip.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h = fnv1a(h, &s.octets());
            h = fnv1a(h, &d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            h = fnv1a(h, &s.octets());
            h = fnv1a(h, &d.octets());
        }
        _ => {}
    }
    h = fnv1a(h, &[ip.proto]);
    if ip.fragment.is_none()
        && let Some(p) = ip.ports()
    {
        h = fnv1a(h, &p.src.to_be_bytes());
        h = fnv1a(h, &p.dst.to_be_bytes());
    }
    h
}
