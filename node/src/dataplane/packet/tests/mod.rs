//! Tests of the packet layer. Frames are built with etherparse's `PacketBuilder` (tests may
//! allocate) and every result is re-parsed and checked with etherparse's own full checksum
//! computations, so the code under test is never its own judge.

#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable
)]

mod alloc;
mod build;
mod classify;
mod encap;
mod rewrite;
mod robust;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    Ipv4HeaderSlice, NetSlice, PacketBuilder, SlicedPacket, TransportSlice, UdpHeader, VlanId,
};

use super::Mac;

pub const MAC_CLIENT: Mac = [0x02, 0, 0, 0, 0, 0x01];
pub const MAC_DIRECTOR: Mac = [0x02, 0, 0, 0, 0, 0x02];
pub const MAC_REAL: Mac = [0x02, 0, 0, 0, 0, 0x03];

pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
pub const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const REAL4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 7);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
pub const REAL6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x101);

/// SplitMix64: small, deterministic, good enough to pick test inputs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn u16(&mut self) -> u16 {
        self.next_u64() as u16
    }

    pub fn u8(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn bool(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }

    pub fn ipv4(&mut self) -> Ipv4Addr {
        Ipv4Addr::from(self.next_u64() as u32)
    }

    pub fn ipv6(&mut self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.next_u64()) << 64 | u128::from(self.next_u64()))
    }
}

/// Transport of a test frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// A test frame description.
#[derive(Debug, Clone)]
pub struct Spec {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Proto,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
    pub vlan: Option<u16>,
}

impl Spec {
    pub fn new(src: IpAddr, dst: IpAddr, proto: Proto, sport: u16, dport: u16) -> Spec {
        Spec {
            src,
            dst,
            proto,
            sport,
            dport,
            payload: b"hello, real server".to_vec(),
            vlan: None,
        }
    }

    pub fn tcp4(sport: u16, dport: u16) -> Spec {
        Spec::new(CLIENT4.into(), VIP4.into(), Proto::Tcp, sport, dport)
    }

    pub fn udp4(sport: u16, dport: u16) -> Spec {
        Spec::new(CLIENT4.into(), VIP4.into(), Proto::Udp, sport, dport)
    }

    pub fn tcp6(sport: u16, dport: u16) -> Spec {
        Spec::new(CLIENT6.into(), VIP6.into(), Proto::Tcp, sport, dport)
    }

    pub fn udp6(sport: u16, dport: u16) -> Spec {
        Spec::new(CLIENT6.into(), VIP6.into(), Proto::Udp, sport, dport)
    }

    pub fn payload(mut self, payload: Vec<u8>) -> Spec {
        self.payload = payload;
        self
    }

    pub fn vlan(mut self, vlan: u16) -> Spec {
        self.vlan = Some(vlan);
        self
    }

    /// The Ethernet frame (client MAC → director MAC).
    pub fn frame(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(MAC_CLIENT, MAC_DIRECTOR);
        let mut out = Vec::new();
        macro_rules! finish {
            ($ip:expr) => {
                match self.proto {
                    Proto::Tcp => {
                        let b = $ip.tcp(self.sport, self.dport, 0x1234_5678, 64240).ack(77);
                        b.write(&mut out, &self.payload).unwrap();
                    }
                    Proto::Udp => {
                        let b = $ip.udp(self.sport, self.dport);
                        b.write(&mut out, &self.payload).unwrap();
                    }
                }
            };
        }
        match (self.src, self.dst, self.vlan) {
            (IpAddr::V4(s), IpAddr::V4(d), None) => finish!(eth.ipv4(s.octets(), d.octets(), 64)),
            (IpAddr::V4(s), IpAddr::V4(d), Some(v)) => finish!(
                eth.single_vlan(VlanId::try_new(v).unwrap())
                    .ipv4(s.octets(), d.octets(), 64)
            ),
            (IpAddr::V6(s), IpAddr::V6(d), None) => finish!(eth.ipv6(s.octets(), d.octets(), 64)),
            (IpAddr::V6(s), IpAddr::V6(d), Some(v)) => finish!(
                eth.single_vlan(VlanId::try_new(v).unwrap())
                    .ipv6(s.octets(), d.octets(), 64)
            ),
            _ => panic!("mixed families"),
        }
        out
    }
}

/// The IP packet alone (no Ethernet header) of a spec.
pub fn ip_packet(spec: &Spec) -> Vec<u8> {
    let frame = spec.frame();
    let l3 = if spec.vlan.is_some() { 18 } else { 14 };
    frame[l3..].to_vec()
}

/// Sets or clears DF of the IPv4 header at `l3` and fixes its checksum (with etherparse).
pub fn set_df(frame: &mut [u8], l3: usize, df: bool) {
    let mut h = Ipv4HeaderSlice::from_slice(&frame[l3..])
        .unwrap()
        .to_header();
    h.dont_fragment = df;
    h.header_checksum = h.calc_header_checksum();
    let bytes = h.to_bytes();
    frame[l3..l3 + bytes.len()].copy_from_slice(&bytes);
}

/// What a re-parse with etherparse found, after checking every checksum in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    /// The transport checksum field as found (equal to the full recomputation).
    pub l4_checksum: u16,
    pub payload: Vec<u8>,
}

/// Re-parses an Ethernet frame with etherparse and asserts that the IPv4 header checksum and
/// the TCP/UDP checksum equal etherparse's full computations (a UDP/IPv4 checksum of 0 is
/// accepted as "none").
pub fn check_frame(frame: &[u8]) -> Checked {
    let sliced = SlicedPacket::from_ethernet(frame).expect("etherparse re-parse");
    let (src, dst, ttl, v4) = match sliced.net.as_ref().expect("net layer") {
        NetSlice::Ipv4(ip) => {
            let h = ip.header();
            let full = h.to_header().calc_header_checksum();
            assert_eq!(h.header_checksum(), full, "IPv4 header checksum");
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                h.ttl(),
                Some((h.source(), h.destination())),
            )
        }
        NetSlice::Ipv6(ip) => {
            let h = ip.header();
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                h.hop_limit(),
                None,
            )
        }
        other => panic!("unexpected net layer {other:?}"),
    };
    let (sport, dport, l4_checksum, payload) = match sliced.transport.as_ref().expect("transport") {
        TransportSlice::Tcp(tcp) => {
            let full = match (v4, src, dst) {
                (Some((s, d)), _, _) => tcp.calc_checksum_ipv4(s, d).unwrap(),
                (None, IpAddr::V6(s), IpAddr::V6(d)) => {
                    tcp.calc_checksum_ipv6(s.octets(), d.octets()).unwrap()
                }
                _ => unreachable!(),
            };
            assert_eq!(tcp.checksum(), full, "TCP checksum");
            (
                tcp.source_port(),
                tcp.destination_port(),
                full,
                tcp.payload().to_vec(),
            )
        }
        TransportSlice::Udp(udp) => {
            let header: UdpHeader = udp.to_header();
            let stored = udp.checksum();
            let full = match (v4, src, dst) {
                (Some((s, d)), _, _) => header.calc_checksum_ipv4_raw(s, d, udp.payload()).unwrap(),
                (None, IpAddr::V6(s), IpAddr::V6(d)) => header
                    .calc_checksum_ipv6_raw(s.octets(), d.octets(), udp.payload())
                    .unwrap(),
                _ => unreachable!(),
            };
            if !(v4.is_some() && stored == 0) {
                assert_eq!(stored, full, "UDP checksum");
            }
            (
                udp.source_port(),
                udp.destination_port(),
                stored,
                udp.payload().to_vec(),
            )
        }
        other => panic!("unexpected transport {other:?}"),
    };
    Checked {
        src,
        dst,
        sport,
        dport,
        ttl,
        l4_checksum,
        payload,
    }
}

/// Splices IPv6 extension headers (`exts`, whose first next-header byte chain the caller
/// built) in front of the upper layer of an IPv6 frame without extension headers.
pub fn splice_ipv6_exts(frame: &[u8], first_next_header: u8, exts: &[u8]) -> Vec<u8> {
    let l3 = 14;
    let mut out = frame[..l3 + 40].to_vec();
    out.extend_from_slice(exts);
    out.extend_from_slice(&frame[l3 + 40..]);
    let plen = u16::from_be_bytes([out[l3 + 4], out[l3 + 5]]) + exts.len() as u16;
    out[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
    out[l3 + 6] = first_next_header;
    out
}
