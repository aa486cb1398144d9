//! The Internet checksum (RFC 1071), its incremental update (RFC 1624) and CRC32c (SCTP,
//! RFC 9260 appendix A).
//!
//! Sums are kept unfolded in a `u64`: 32-bit big-endian words can be added directly because
//! 2^16 ≡ 1 (mod 0xFFFF), so folding at the end gives the same one's-complement sum as adding
//! 16-bit words. A `u64` cannot overflow for any buffer shorter than 2^32 words.

/// Adds `data` to `acc` as big-endian 16-bit words (an odd trailing byte is padded with a zero
/// low byte, as RFC 1071 says). `data` must start at an even offset from the start of what the
/// checksum covers.
#[inline]
pub fn sum_bytes(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        if let Ok(word) = <[u8; 4]>::try_from(chunk) {
            acc += u64::from(u32::from_be_bytes(word));
        }
    }
    let mut rest = chunks.remainder().iter();
    while let Some(&hi) = rest.next() {
        let lo = rest.next().copied().unwrap_or(0);
        acc += u64::from(u16::from_be_bytes([hi, lo]));
    }
    acc
}

/// Folds an unfolded sum into 16 bits with end-around carry. A non-zero sum never folds to 0.
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xFFFF {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    // The loop leaves acc <= 0xFFFF.
    u16::try_from(acc).unwrap_or(0xFFFF)
}

/// The checksum field value for an unfolded sum of everything it covers (with the field zeroed).
#[inline]
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// The IPv4 pseudo-header (RFC 793/768) sum.
#[inline]
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u64 {
    let acc = sum_bytes(0, &src);
    let acc = sum_bytes(acc, &dst);
    acc + u64::from(proto) + len as u64
}

/// The IPv6 pseudo-header (RFC 8200 §8.1) sum.
#[inline]
pub fn pseudo_header_v6(src: [u8; 16], dst: [u8; 16], proto: u8, len: usize) -> u64 {
    let acc = sum_bytes(0, &src);
    let acc = sum_bytes(acc, &dst);
    acc + u64::from(proto) + len as u64
}

/// An RFC 1624 incremental checksum update, accumulated over every 16-bit word a rewrite
/// changes: `HC' = ~(~HC + Σ~m + Σm')` (eqn. 3).
///
/// When the old checksum was computed in full (so it is never 0xFFFF for TCP, ICMP or an IPv4
/// header), the result is bit-for-bit what a full recomputation gives: both sums are non-zero,
/// congruent modulo 0xFFFF and in `1..=0xFFFF`. Unchanged words are skipped so that a no-op
/// rewrite leaves the checksum exactly as it was.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delta(u64);

impl Delta {
    /// No change.
    pub const fn new() -> Delta {
        Delta(0)
    }

    /// Records that the word `old` became `new`.
    #[inline]
    pub fn word(&mut self, old: u16, new: u16) {
        if old != new {
            self.0 += u64::from(!old) + u64::from(new);
        }
    }

    /// Records that `old` became `new` (equal lengths, starting at an even offset from the
    /// start of what the checksum covers).
    #[inline]
    pub fn bytes(&mut self, old: &[u8], new: &[u8]) {
        for (o, n) in old.chunks(2).zip(new.chunks(2)) {
            self.word(be16_padded(o), be16_padded(n));
        }
    }

    /// Adds another delta (for a checksum that covers both changes).
    #[inline]
    pub fn add(&mut self, other: Delta) {
        self.0 += other.0;
    }

    /// Whether nothing changed.
    #[inline]
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Applies the delta to a checksum field value.
    #[inline]
    pub fn apply(self, checksum: u16) -> u16 {
        if self.is_empty() {
            return checksum;
        }
        !fold(u64::from(!checksum) + self.0)
    }
}

#[inline]
fn be16_padded(b: &[u8]) -> u16 {
    match *b {
        [hi, lo, ..] => u16::from_be_bytes([hi, lo]),
        [hi] => u16::from_be_bytes([hi, 0]),
        [] => 0,
    }
}

const CRC32C_POLY_REFLECTED: u32 = 0x82F6_3B78;

// Evaluated at compile time: an index out of bounds here fails the build, it cannot panic.
#[allow(clippy::indexing_slicing)]
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ CRC32C_POLY_REFLECTED
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// A running CRC32c (Castagnoli): start from [`Crc32c::new`], feed bytes, then
/// [`Crc32c::finish`].
#[derive(Debug, Clone, Copy)]
pub struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Self {
        Crc32c::new()
    }
}

impl Crc32c {
    pub const fn new() -> Crc32c {
        Crc32c(!0)
    }

    #[inline]
    pub fn update(&mut self, data: &[u8]) {
        let mut crc = self.0;
        for &byte in data {
            let index = usize::from((crc as u8) ^ byte);
            crc = CRC32C_TABLE.get(index).copied().unwrap_or(0) ^ (crc >> 8);
        }
        self.0 = crc;
    }

    #[inline]
    pub fn finish(self) -> u32 {
        !self.0
    }
}

/// CRC32c of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = Crc32c::new();
    crc.update(data);
    crc.finish()
}

/// The SCTP checksum of a whole SCTP packet (common header + chunks), computed as if its
/// checksum field (bytes 8..12) were zero, in the byte order it is stored on the wire.
pub fn sctp_checksum(sctp: &[u8]) -> Option<[u8; 4]> {
    let head = sctp.get(..8)?;
    let tail = sctp.get(12..)?;
    let mut crc = Crc32c::new();
    crc.update(head);
    crc.update(&[0; 4]);
    crc.update(tail);
    // RFC 9260 appendix A / Linux `sctp_compute_cksum`: the CRC is stored little-endian.
    Some(crc.finish().to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C (iSCSI) for "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_bytes(0, &data)), 0xddf2);
        // Odd lengths pad with a zero byte.
        assert_eq!(fold(sum_bytes(0, &[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
    }

    #[test]
    fn delta_matches_recompute() {
        let mut data = [
            0x45u8, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let c0 = finish(sum_bytes(0, &data));
        let old = [10, 0, 0, 2];
        let new = [192, 168, 77, 9];
        data[16..20].copy_from_slice(&new);
        let mut d = Delta::new();
        d.bytes(&old, &new);
        assert_eq!(d.apply(c0), finish(sum_bytes(0, &data)));
        assert_eq!(Delta::new().apply(0x1234), 0x1234);
    }
}
