//! The packet layer of the userspace forwarding engine: classify Ethernet frames, rewrite them
//! in place with incremental checksums, encapsulate them into IP tunnels, and build the control
//! frames the engine answers with (ICMP errors, ARP, NDP).
//!
//! # Rules of the road
//!
//! - Frames are Ethernet II, as AF_PACKET (`SOCK_RAW`) hands them over, with at most one 802.1Q
//!   tag (it is skipped on input and kept on answers).
//! - Nothing here allocates, blocks or awaits. Inputs are `&[u8]`/`&mut [u8]`; new frames are
//!   written into caller buffers and the functions return their length.
//! - No input can make it panic: all access to frame bytes is bounds-checked (`get`, fixed-size
//!   array views carved out once), `clippy::indexing_slicing` is denied in this module, and a
//!   test feeds 100k random and mutated frames to every entry point. A [`Packet`] applied to
//!   another frame than the one it came from gives an error or a wrong rewrite, never a panic.
//! - [`classify`] returns a `Copy` summary that borrows nothing, with offsets into the frame, so
//!   the rewrites reuse it instead of parsing again.
//!
//! # Decisions
//!
//! - **TTL / hop limit.** The rewrites never touch it ([`rewrite_dr`] is MACs only).
//!   Kernel IPVS (since Linux 4.10, `decrement_ttl()` in `ip_vs_xmit.c`) decrements it once for
//!   every packet it forwards to another host — DR, NAT both ways, and the inner packet before
//!   tunnelling — and answers TTL ≤ 1 with ICMP time exceeded. The engine should do the same by
//!   calling [`decrement_ttl`] first; it refuses (frame unchanged) when the packet must die, and
//!   [`build_icmp_error`] with [`IcmpErrorReply::TimeExceeded`] builds the answer.
//! - **UDP checksum 0.** In IPv4 it means "no checksum" and stays 0 through every rewrite. In
//!   IPv6 it is invalid (RFC 8200 §8.1) except for tunnels under RFC 6935/6936; it is forwarded
//!   as 0 too, so the receiver applies its own policy exactly as if the director were not
//!   there. An updated checksum that comes out as 0 is written as 0xFFFF (RFC 768), in both
//!   families, so a rewrite never turns a checksummed datagram into an unchecksummed one.
//! - **Incremental checksums.** RFC 1624 eqn. 3; on a packet whose checksums were correct the
//!   result equals a full recomputation bit for bit (tested on thousands of random rewrites),
//!   and a corrupted packet stays corrupted. Offloaded frames whose checksum is not finished yet
//!   (AF_PACKET `TP_STATUS_CSUMNOTREADY`) must go through [`fill_l4_checksum`] first.
//! - **Tunnel outer header**: TTL 64, DSCP/ECN copied, DF copied from IPv4 (clear for IPv6
//!   inside), no outer fragmentation: see [`encap`].

#![deny(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented
)]

mod build;
mod checksum;
mod classify;
mod encap;
mod rewrite;
mod view;

#[cfg(test)]
mod tests;

pub use build::{
    ALL_NODES, ALL_NODES_MAC, BROADCAST_MAC, ICMP_ERROR_TTL, ICMPV4_ERROR_MAX, ICMPV6_ERROR_MAX,
    IcmpErrorReply, MIN_FRAME_LEN, build_arp_reply, build_frag_needed, build_gratuitous_arp,
    build_icmp_error, build_neighbor_advertisement, build_packet_too_big, build_unsolicited_na,
};
pub use checksum::{Crc32c, Delta, crc32c, finish as checksum_finish, pseudo_header_v6, sum_bytes};
pub use classify::{
    Arp, ETH_HEADER_LEN, Ethernet, Fragment, Icmp, IcmpError, IcmpKind, Inner, Ip, IpVersion, L4,
    MAX_IPV6_EXT_HEADERS, Net, Packet, Ports, Sctp, Tcp, TcpFlags, Udp, VLAN_TAG_LEN, classify,
};
pub use encap::{OUTER_TTL, Tunnel, encap};
pub use rewrite::{
    IcmpNat, decrement_ttl, fill_l4_checksum, rewrite_dr, rewrite_icmp_error_inner, rewrite_nat_in,
    rewrite_nat_out, verify_l4_checksum,
};
pub use view::{EthMut, Ipv4HeaderMut, Ipv6HeaderMut, Side, TcpMut, UdpMut};

/// An Ethernet (MAC-48) address.
pub type Mac = [u8; 6];

/// IP protocol numbers used here.
pub mod proto {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const IPV4_IN_IP: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6_IN_IP: u8 = 41;
    pub const IPV6_ROUTE: u8 = 43;
    pub const IPV6_FRAG: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const IPV6_DEST_OPTS: u8 = 60;
    pub const SCTP: u8 = 132;
}

/// Why [`classify`] rejected a frame (the engine counts these as "malformed" and drops).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("frame shorter than an Ethernet header")]
    Ethernet,
    #[error("truncated 802.1Q tag")]
    Vlan,
    #[error("ARP packet truncated or not Ethernet/IPv4")]
    Arp,
    #[error("IP packet longer than the frame")]
    Truncated,
    #[error("bad IPv4 header (version, header length)")]
    Ipv4Header,
    #[error("IPv4 total length shorter than its header")]
    Ipv4TotalLength,
    #[error("bad IPv4 header checksum")]
    Ipv4Checksum,
    #[error("bad IPv6 header")]
    Ipv6Header,
    #[error("truncated IPv6 extension header")]
    Ipv6ExtHeader,
    #[error("IPv6 hop-by-hop options header not first")]
    HopByHopNotFirst,
    #[error("more than {MAX_IPV6_EXT_HEADERS} IPv6 extension headers")]
    TooManyExtHeaders,
    #[error("two IPv6 fragment headers")]
    DuplicateFragmentHeader,
    #[error("truncated or invalid TCP header")]
    Tcp,
    #[error("truncated UDP header")]
    Udp,
    #[error("UDP length does not match the IP payload")]
    UdpLength,
    #[error("truncated SCTP common header")]
    Sctp,
    #[error("truncated ICMP header")]
    Icmp,
    #[error("ICMP error without a usable quoted packet")]
    IcmpInner,
    #[error("invalid neighbour discovery message")]
    Ndp,
    #[error("bad checksum")]
    Checksum,
}

/// Why an in-place rewrite was refused (the frame is unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    #[error("frame too short for the classified headers")]
    Truncated,
    #[error("frame does not match its classification")]
    Mismatch,
    #[error("not an IP packet")]
    NotIp,
    #[error("new address is of the other IP family")]
    FamilyMismatch,
    #[error("not an ICMP error")]
    NotIcmpError,
    #[error("TTL / hop limit expired")]
    TtlExpired,
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

/// Why [`encap`] produced no frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncapError {
    /// Too big for the tunnel and may not be fragmented (IPv4 with DF, or IPv6): answer with
    /// ICMP fragmentation needed / packet too big carrying `mtu`, the largest inner packet the
    /// tunnel carries.
    #[error("packet too big for the tunnel (inner MTU {mtu})")]
    TooBig { mtu: u16 },
    /// Too big for the tunnel, IPv4 without DF: would need fragmenting, which this layer does
    /// not do.
    #[error("packet needs fragmentation for the tunnel (inner MTU {mtu})")]
    NeedsFragmentation { mtu: u16 },
    #[error("output buffer too small")]
    BufferTooSmall,
    #[error("not an IP packet")]
    NotIp,
    #[error("frame does not match its classification")]
    Truncated,
    #[error("tunnel endpoints of different IP families")]
    FamilyMismatch,
}

/// Why a control frame was not built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("output buffer too small")]
    BufferTooSmall,
    #[error("frame does not match its classification")]
    Truncated,
    #[error("packet longer than an IP length field allows")]
    TooLong,
    #[error("address of the other IP family")]
    FamilyMismatch,
    #[error("not applicable: {0}")]
    NotApplicable(&'static str),
    /// The ICMP error rules forbid an answer (RFC 1122 §3.2.2, RFC 4443 §2.4).
    #[error("ICMP error not allowed: {0}")]
    NotAllowed(&'static str),
}

impl From<BuildError> for EncapError {
    fn from(e: BuildError) -> Self {
        match e {
            BuildError::FamilyMismatch => EncapError::FamilyMismatch,
            BuildError::Truncated => EncapError::Truncated,
            _ => EncapError::BufferTooSmall,
        }
    }
}
