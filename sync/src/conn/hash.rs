//! Seeded key hashing.
//!
//! The shard is chosen from (protocol, family, client addr:port) only, so a connection's
//! forward key and its NAT reply key land in the same shard and one lock covers both indexes.
//! Buckets use the full key. The per-table random seed keeps remote clients from aiming many
//! flows at one bucket chain; the mixer is a folded 64×64→128 multiply (as in wyhash/foldhash).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use super::entry::ConnEntry;
use super::key::{ConnKey, META_TEMPLATE, ReplyKey};

#[derive(Clone)]
pub(crate) struct KeyHasher {
    s: [u64; 6],
}

#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let p = (a as u128).wrapping_mul(b as u128);
    (p as u64) ^ ((p >> 64) as u64)
}

#[inline(always)]
fn halves(a: &[u8; 16]) -> (u64, u64) {
    let (lo, hi) = a.split_at(8);
    // Both halves are exactly 8 bytes; the conversions cannot fail.
    (
        u64::from_le_bytes(lo.try_into().unwrap_or([0; 8])),
        u64::from_le_bytes(hi.try_into().unwrap_or([0; 8])),
    )
}

impl KeyHasher {
    pub(crate) fn random() -> Self {
        let rs = RandomState::new();
        let mut h = rs.build_hasher();
        h.write_u64(0x5eed);
        let base = h.finish();
        Self::with_seed(base)
    }

    pub(crate) fn with_seed(seed: u64) -> Self {
        // splitmix64 to spread one seed over the six words.
        let mut x = seed;
        let s = std::array::from_fn(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) | 1
        });
        KeyHasher { s }
    }

    /// Shard-selecting hash of the client side.
    #[inline]
    fn client(&self, protocol: u8, meta: u8, addr: &[u8; 16], port: u16) -> u64 {
        let (lo, hi) = halves(addr);
        let small = protocol as u64 | (meta as u64) << 8 | (port as u64) << 16;
        let h = fold(lo ^ self.s[0], hi ^ self.s[1]);
        fold(h ^ small ^ self.s[2], self.s[3])
    }

    /// Bucket hash: the client hash extended with the other side (virtual or real).
    #[inline]
    fn extend(&self, h1: u64, salt: u64, addr: &[u8; 16], port: u16) -> u64 {
        let (lo, hi) = halves(addr);
        let h = fold(h1 ^ lo ^ salt, hi ^ self.s[4]);
        fold(h ^ port as u64, self.s[5] ^ salt)
    }

    /// (shard hash, bucket hash) of a forward key.
    #[inline]
    pub(crate) fn fwd(&self, k: &ConnKey) -> (u64, u64) {
        let h1 = self.client(k.proto, k.meta, &k.caddr, k.cport);
        (h1, self.extend(h1, self.s[0], &k.vaddr, k.vport))
    }

    /// (shard hash, bucket hash) of a NAT reply.
    #[inline]
    pub(crate) fn rev(&self, r: &ReplyKey) -> (u64, u64) {
        let h1 = self.client(r.proto, r.family, &r.caddr, r.cport);
        (h1, self.extend(h1, self.s[1], &r.raddr, r.rport))
    }

    /// Reverse-index hash of a stored NAT entry; equals `rev` of its reply key.
    #[inline]
    pub(crate) fn rev_of(&self, e: &ConnEntry) -> u64 {
        let k = &e.key;
        let h1 = self.client(k.proto, k.meta & !META_TEMPLATE, &k.caddr, k.cport);
        let (daddr, dport) = e.dest_raw();
        self.extend(h1, self.s[1], daddr, dport)
    }
}
