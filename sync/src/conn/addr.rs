//! Compact address storage: a family tag plus 16 raw bytes.
//!
//! `std::net::SocketAddr` is 32 bytes for IPv6 and carries flow info and scope id we never use;
//! the table stores addresses as `[u8; 16]` (IPv4 in the first 4 bytes, the rest zero) next to a
//! one-byte family tag, which is also how the IPVS sync v1 record lays them out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Address family of one side of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Family {
    V4 = 4,
    V6 = 6,
}

impl Family {
    /// Decodes the one-byte tag used inside entries (4 or 6).
    pub const fn from_tag(tag: u8) -> Option<Family> {
        match tag {
            4 => Some(Family::V4),
            6 => Some(Family::V6),
            _ => None,
        }
    }

    pub const fn tag(self) -> u8 {
        self as u8
    }

    /// Longest prefix length of this family (32 or 128).
    pub const fn max_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    pub const fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// Raw bytes of an IPv4 address in the table's 16-byte form.
pub const fn v4_bytes(a: [u8; 4]) -> [u8; 16] {
    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

pub fn ip_to_raw(ip: IpAddr) -> (Family, [u8; 16]) {
    match ip {
        IpAddr::V4(a) => (Family::V4, v4_bytes(a.octets())),
        IpAddr::V6(a) => (Family::V6, a.octets()),
    }
}

pub fn raw_to_ip(family: Family, raw: &[u8; 16]) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(*raw)),
    }
}

/// Keeps the first `prefix_len` bits (clamped to the family's width), zeroes the rest.
pub fn mask_prefix(family: Family, raw: &[u8; 16], prefix_len: u8) -> [u8; 16] {
    let bits = prefix_len.min(family.max_prefix()) as usize;
    let mut out = [0u8; 16];
    let full = bits / 8;
    out[..full].copy_from_slice(&raw[..full]);
    let rem = bits % 8;
    if rem != 0 {
        out[full] = raw[full] & (0xFFu8 << (8 - rem));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_mask() {
        let ip: IpAddr = "192.0.2.77".parse().unwrap();
        let (f, raw) = ip_to_raw(ip);
        assert_eq!(f, Family::V4);
        assert_eq!(raw_to_ip(f, &raw), ip);
        let m = mask_prefix(f, &raw, 24);
        assert_eq!(raw_to_ip(f, &m), "192.0.2.0".parse::<IpAddr>().unwrap());
        let m = mask_prefix(f, &raw, 20);
        assert_eq!(raw_to_ip(f, &m), "192.0.0.0".parse::<IpAddr>().unwrap());
        // A v6-sized prefix on a v4 address is clamped, so bytes 4.. stay zero.
        assert_eq!(mask_prefix(f, &raw, 128), raw);

        let ip6: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let (f6, raw6) = ip_to_raw(ip6);
        let m6 = mask_prefix(f6, &raw6, 64);
        assert_eq!(
            raw_to_ip(f6, &m6),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(mask_prefix(f6, &raw6, 0), [0u8; 16]);
    }
}
