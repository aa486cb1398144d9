//! Small mutable views over headers inside a frame buffer.
//!
//! Each view borrows a fixed-size array (`&mut [u8; N]`) carved out of the frame once, at
//! construction, with a checked range: afterwards every field access is a constant index into
//! that array, so it can neither panic nor touch bytes outside the header. Setters that change
//! a field covered by a checksum update that checksum incrementally (RFC 1624) and return the
//! [`Delta`] for checksums further up the stack (the TCP/UDP pseudo-header).

use super::checksum::Delta;
use super::{Mac, RewriteError};

/// Carves `N` bytes at `off` out of `buf` as an array.
#[inline]
pub(crate) fn array_mut<const N: usize>(buf: &mut [u8], off: usize) -> Option<&mut [u8; N]> {
    let end = off.checked_add(N)?;
    buf.get_mut(off..end)?.try_into().ok()
}

/// Reads `N` bytes at `off` of `buf` as an array.
#[inline]
pub(crate) fn array_ref<const N: usize>(buf: &[u8], off: usize) -> Option<&[u8; N]> {
    let end = off.checked_add(N)?;
    buf.get(off..end)?.try_into().ok()
}

#[inline]
pub(crate) fn read_u16(buf: &[u8], off: usize) -> Option<u16> {
    array_ref::<2>(buf, off).map(|b| u16::from_be_bytes(*b))
}

#[inline]
pub(crate) fn write_u16(buf: &mut [u8], off: usize, value: u16) -> Option<()> {
    *array_mut::<2>(buf, off)? = value.to_be_bytes();
    Some(())
}

/// Which address (and port) of a packet a rewrite changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

impl Side {
    /// The other side (the embedded packet of an ICMP error travels the other way).
    pub fn flip(self) -> Side {
        match self {
            Side::Src => Side::Dst,
            Side::Dst => Side::Src,
        }
    }
}

/// The Ethernet header (destination and source MAC, EtherType) at the start of a frame.
#[derive(Debug)]
pub struct EthMut<'a> {
    b: &'a mut [u8; 14],
}

impl<'a> EthMut<'a> {
    pub fn new(frame: &'a mut [u8]) -> Result<EthMut<'a>, RewriteError> {
        Ok(EthMut {
            b: array_mut(frame, 0).ok_or(RewriteError::Truncated)?,
        })
    }

    pub fn dst(&self) -> Mac {
        let [d0, d1, d2, d3, d4, d5, ..] = *self.b;
        [d0, d1, d2, d3, d4, d5]
    }

    pub fn src(&self) -> Mac {
        let [_, _, _, _, _, _, s0, s1, s2, s3, s4, s5, ..] = *self.b;
        [s0, s1, s2, s3, s4, s5]
    }

    pub fn set_dst(&mut self, mac: Mac) {
        let [d0, d1, d2, d3, d4, d5, ..] = self.b;
        [*d0, *d1, *d2, *d3, *d4, *d5] = mac;
    }

    pub fn set_src(&mut self, mac: Mac) {
        let [_, _, _, _, _, _, s0, s1, s2, s3, s4, s5, ..] = self.b;
        [*s0, *s1, *s2, *s3, *s4, *s5] = mac;
    }
}

const V4_TTL_PROTO: usize = 8;
const V4_CHECKSUM: usize = 10;
const V4_SRC: usize = 12;
const V4_DST: usize = 16;

/// The fixed 20 bytes of an IPv4 header (options, if any, are left alone: nothing here needs
/// them, and an incremental update does not have to read them).
#[derive(Debug)]
pub struct Ipv4HeaderMut<'a> {
    b: &'a mut [u8; 20],
}

impl<'a> Ipv4HeaderMut<'a> {
    /// The header at `off` in `buf`; checks the length and the version nibble.
    pub fn new(buf: &'a mut [u8], off: usize) -> Result<Ipv4HeaderMut<'a>, RewriteError> {
        let b: &mut [u8; 20] = array_mut(buf, off).ok_or(RewriteError::Truncated)?;
        if b[0] >> 4 != 4 {
            return Err(RewriteError::Mismatch);
        }
        Ok(Ipv4HeaderMut { b })
    }

    pub fn bytes(&self) -> &[u8; 20] {
        self.b
    }

    fn word(&self, off: usize) -> u16 {
        read_u16(self.b, off).unwrap_or(0)
    }

    fn addr(&self, off: usize) -> [u8; 4] {
        array_ref::<4>(self.b, off).copied().unwrap_or([0; 4])
    }

    pub fn src(&self) -> [u8; 4] {
        self.addr(V4_SRC)
    }

    pub fn dst(&self) -> [u8; 4] {
        self.addr(V4_DST)
    }

    pub fn ttl(&self) -> u8 {
        self.b[V4_TTL_PROTO]
    }

    pub fn checksum(&self) -> u16 {
        self.word(V4_CHECKSUM)
    }

    fn adjust_checksum(&mut self, delta: Delta) {
        let c = delta.apply(self.checksum());
        [self.b[V4_CHECKSUM], self.b[V4_CHECKSUM + 1]] = c.to_be_bytes();
    }

    /// Sets the source or destination address, updates the header checksum and returns the
    /// change for the transport pseudo-header.
    pub fn set_addr(&mut self, side: Side, addr: [u8; 4]) -> Delta {
        let off = match side {
            Side::Src => V4_SRC,
            Side::Dst => V4_DST,
        };
        let old = self.addr(off);
        let mut delta = Delta::new();
        delta.bytes(&old, &addr);
        if let Some(field) = array_mut::<4>(self.b, off) {
            *field = addr;
        }
        self.adjust_checksum(delta);
        delta
    }

    /// Decrements the TTL (and updates the checksum). Refuses, changing nothing, when the TTL
    /// is 0 or 1: the packet must not be forwarded.
    pub fn decrement_ttl(&mut self) -> Result<u8, RewriteError> {
        let ttl = self.ttl();
        if ttl <= 1 {
            return Err(RewriteError::TtlExpired);
        }
        let old = self.word(V4_TTL_PROTO);
        self.b[V4_TTL_PROTO] = ttl - 1;
        let mut delta = Delta::new();
        delta.word(old, self.word(V4_TTL_PROTO));
        self.adjust_checksum(delta);
        Ok(ttl - 1)
    }
}

const V6_HOP_LIMIT: usize = 7;
const V6_SRC: usize = 8;
const V6_DST: usize = 24;

/// The fixed 40-byte IPv6 header.
#[derive(Debug)]
pub struct Ipv6HeaderMut<'a> {
    b: &'a mut [u8; 40],
}

impl<'a> Ipv6HeaderMut<'a> {
    /// The header at `off` in `buf`; checks the length and the version nibble.
    pub fn new(buf: &'a mut [u8], off: usize) -> Result<Ipv6HeaderMut<'a>, RewriteError> {
        let b: &mut [u8; 40] = array_mut(buf, off).ok_or(RewriteError::Truncated)?;
        if b[0] >> 4 != 6 {
            return Err(RewriteError::Mismatch);
        }
        Ok(Ipv6HeaderMut { b })
    }

    pub fn bytes(&self) -> &[u8; 40] {
        self.b
    }

    fn addr(&self, off: usize) -> [u8; 16] {
        array_ref::<16>(self.b, off).copied().unwrap_or([0; 16])
    }

    pub fn src(&self) -> [u8; 16] {
        self.addr(V6_SRC)
    }

    pub fn dst(&self) -> [u8; 16] {
        self.addr(V6_DST)
    }

    pub fn hop_limit(&self) -> u8 {
        self.b[V6_HOP_LIMIT]
    }

    /// Sets the source or destination address and returns the change for the transport
    /// pseudo-header (IPv6 has no header checksum).
    pub fn set_addr(&mut self, side: Side, addr: [u8; 16]) -> Delta {
        let off = match side {
            Side::Src => V6_SRC,
            Side::Dst => V6_DST,
        };
        let old = self.addr(off);
        let mut delta = Delta::new();
        delta.bytes(&old, &addr);
        if let Some(field) = array_mut::<16>(self.b, off) {
            *field = addr;
        }
        delta
    }

    /// Decrements the hop limit; refuses, changing nothing, when it is 0 or 1.
    pub fn decrement_hop_limit(&mut self) -> Result<u8, RewriteError> {
        let hop_limit = self.hop_limit();
        if hop_limit <= 1 {
            return Err(RewriteError::TtlExpired);
        }
        self.b[V6_HOP_LIMIT] = hop_limit - 1;
        Ok(hop_limit - 1)
    }
}

/// Sets the source (offset 0) or destination (offset 2) port of a TCP/UDP/SCTP header and
/// returns the change.
fn set_port(b: &mut [u8], side: Side, port: u16) -> Delta {
    let off = match side {
        Side::Src => 0,
        Side::Dst => 2,
    };
    let mut delta = Delta::new();
    if let Some(old) = read_u16(b, off) {
        delta.word(old, port);
        let _ = write_u16(b, off, port);
    }
    delta
}

/// The fixed 20 bytes of a TCP header.
#[derive(Debug)]
pub struct TcpMut<'a> {
    b: &'a mut [u8; 20],
}

impl<'a> TcpMut<'a> {
    pub fn new(buf: &'a mut [u8], off: usize) -> Result<TcpMut<'a>, RewriteError> {
        Ok(TcpMut {
            b: array_mut(buf, off).ok_or(RewriteError::Truncated)?,
        })
    }

    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes([self.b[0], self.b[1]])
    }

    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes([self.b[2], self.b[3]])
    }

    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.b[16], self.b[17]])
    }

    /// Sets a port and returns the change (not yet applied to the checksum).
    pub fn set_port(&mut self, side: Side, port: u16) -> Delta {
        set_port(self.b, side, port)
    }

    /// Applies a change (pseudo-header and/or ports) to the checksum.
    pub fn adjust_checksum(&mut self, delta: Delta) {
        let c = delta.apply(self.checksum());
        [self.b[16], self.b[17]] = c.to_be_bytes();
    }
}

/// The 8-byte UDP header.
#[derive(Debug)]
pub struct UdpMut<'a> {
    b: &'a mut [u8; 8],
}

impl<'a> UdpMut<'a> {
    pub fn new(buf: &'a mut [u8], off: usize) -> Result<UdpMut<'a>, RewriteError> {
        Ok(UdpMut {
            b: array_mut(buf, off).ok_or(RewriteError::Truncated)?,
        })
    }

    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes([self.b[0], self.b[1]])
    }

    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes([self.b[2], self.b[3]])
    }

    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.b[6], self.b[7]])
    }

    /// Sets a port and returns the change (not yet applied to the checksum).
    pub fn set_port(&mut self, side: Side, port: u16) -> Delta {
        set_port(self.b, side, port)
    }

    /// Applies a change to the checksum. A zero checksum means "none" and is left alone (in
    /// IPv4 that is legal; in IPv6 it is invalid except for RFC 6935 tunnels, and the receiver
    /// applies its own policy to it, so it is forwarded as it came). A result of zero is sent
    /// as 0xFFFF (RFC 768).
    pub fn adjust_checksum(&mut self, delta: Delta) {
        let old = self.checksum();
        if old == 0 {
            return;
        }
        let c = match delta.apply(old) {
            0 => 0xFFFF,
            c => c,
        };
        [self.b[6], self.b[7]] = c.to_be_bytes();
    }
}

/// Adds `delta` to the 16-bit checksum at `off` in `buf` (ICMP, ICMPv6, an embedded header).
pub(crate) fn adjust_checksum_at(buf: &mut [u8], off: usize, delta: Delta) -> Option<()> {
    let field = array_mut::<2>(buf, off)?;
    *field = delta.apply(u16::from_be_bytes(*field)).to_be_bytes();
    Some(())
}

/// Sets a port of a TCP/UDP/SCTP header at `off` in `buf`, whatever is left of it.
pub(crate) fn set_port_at(buf: &mut [u8], off: usize, side: Side, port: u16) -> Option<Delta> {
    let ports = array_mut::<4>(buf, off)?;
    Some(set_port(ports, side, port))
}
