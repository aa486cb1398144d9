//! Fixed, seedless hashes and the twos random source.
//!
//! Every hash here is a pure function of its input and a compile-time constant: no per-process
//! random key, no dependence on the platform's byte order or pointer width. Two directors given
//! the same configuration therefore build the same sh/dh/mh tables and send a flow that was
//! too young to be synced to the same real server after a takeover. Changing a constant here
//! changes where flows land on every director at once: treat them as part of the wire format.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Seeds of the independent hash functions (arbitrary distinct constants, ASCII tags).
pub(crate) const SEED_SH: u64 = 0x5348_2d66_756c_6372; // "SH-fulcr"
pub(crate) const SEED_SH_PROBE: u64 = 0x5348_2d70_726f_6265; // "SH-probe"
pub(crate) const SEED_DH: u64 = 0x4448_2d66_756c_6372;
pub(crate) const SEED_MH_FLOW: u64 = 0x4d48_2d66_6c6f_7731;
pub(crate) const SEED_MH_PROBE: u64 = 0x4d48_2d70_726f_6265;
pub(crate) const SEED_MH_OFFSET: u64 = 0x4d48_2d6f_6666_7331;
pub(crate) const SEED_MH_SKIP: u64 = 0x4d48_2d73_6b69_7031;
pub(crate) const SEED_LOCALITY: u64 = 0x4c42_4c43_2d66_756c;

/// The murmur3 64-bit finaliser: a bijection with full avalanche.
pub(crate) fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// An address as 128 bits; IPv4 as its IPv4-mapped IPv6 form, so one key space serves both.
pub(crate) fn ip_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Hash of an IP address (all 16 bytes of IPv6, the 4 bytes of IPv4) and a port.
pub(crate) fn hash_ip_port(ip: IpAddr, port: u16, seed: u64) -> u64 {
    let bits = ip_bits(ip);
    let mut h = fmix64(seed ^ (bits >> 64) as u64);
    h = fmix64(h ^ bits as u64 ^ seed.rotate_left(17));
    fmix64(h ^ u64::from(port) ^ seed.rotate_left(41))
}

pub(crate) fn hash_sockaddr(addr: SocketAddr, seed: u64) -> u64 {
    hash_ip_port(addr.ip(), addr.port(), seed)
}

/// `x` scaled into `0..n` without the modulo bias of `x % n` (Lemire's multiply-shift).
pub(crate) fn reduce(x: u64, n: u64) -> u64 {
    ((u128::from(x) * u128::from(n)) >> 64) as u64
}

/// A lock-free random source for twos: a splitmix64 stream whose position is one atomic
/// counter, so a draw is one `fetch_add` and a mix — no lock, no allocation, and concurrent
/// draws never return the same value.
#[derive(Debug)]
pub(crate) struct AtomicRng(AtomicU64);

impl AtomicRng {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    pub(crate) fn new(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    pub(crate) fn next_u64(&self) -> u64 {
        let x = self
            .0
            .fetch_add(Self::GAMMA, Relaxed)
            .wrapping_add(Self::GAMMA);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn state(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_fixed_values() {
        // Pinned: if these change, directors running different builds disagree on sh/dh/mh.
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(hash_ip_port(v4, 0, SEED_SH), hash_ip_port(v4, 0, SEED_SH));
        assert_ne!(hash_ip_port(v4, 0, SEED_SH), hash_ip_port(v4, 1, SEED_SH));
        assert_ne!(hash_ip_port(v4, 0, SEED_SH), hash_ip_port(v4, 0, SEED_DH));
        assert_ne!(hash_ip_port(v6, 0, SEED_SH), hash_ip_port(v4, 0, SEED_SH));
        assert_eq!(fmix64(1), 0xb456_bcfc_34c2_cb2c);
        let pinned = [
            hash_ip_port(v4, 80, SEED_MH_FLOW),
            hash_ip_port(v6, 80, SEED_MH_FLOW),
        ];
        assert_eq!(pinned, PINNED);
    }

    const PINNED: [u64; 2] = [7_289_653_622_268_888_384, 4_801_222_432_513_558_374];

    #[test]
    fn v6_hash_uses_every_byte() {
        let base: u128 = "2001:db8::".parse::<std::net::Ipv6Addr>().unwrap().into();
        let h0 = hash_ip_port(IpAddr::V6(base.into()), 0, SEED_SH);
        for byte in 0..16 {
            let flipped = base ^ (1u128 << (byte * 8));
            assert_ne!(h0, hash_ip_port(IpAddr::V6(flipped.into()), 0, SEED_SH));
        }
    }

    #[test]
    fn rng_and_reduce() {
        let rng = AtomicRng::new(7);
        let a = rng.next_u64();
        let b = rng.next_u64();
        assert_ne!(a, b);
        assert!(reduce(u64::MAX, 10) < 10);
        assert_eq!(reduce(0, 10), 0);
    }
}
