//! Fulcrum's own sync record: one connection entry as it travels between directors.
//!
//! Smaller than an IPVS v1 record for the common case although it carries more (the
//! client-side MAC that NAT replies go back to, persistence): addresses take 4 bytes for IPv4,
//! optional fields are present only when set, and the two times are LEB128 varints.
//!
//! ```text
//! u8   bits: 0 key IPv6 | 1 dest IPv6 | 2 fwmark | 3 persistence | 4 pe | 5 mac | 6 template
//! u8   protocol
//! u16  flags (IPVS bits; SYNC cleared)
//! u8   state
//! var  seconds until the deadline (on the sender's clock, at encoding time)
//! var  timeout (nominal, seconds)
//! u16  client port, virtual port, dest port
//! 4|16 client address, virtual address (key family); 4|16 dest address (dest family)
//! [u32 fwmark] [u8 persistence kind, u8 prefix] [u8 pe] [6 mac]
//! ```
//! Integers are big-endian. The service index is not sent: it is local to each director, so
//! the receiver finds its own from the virtual address.

use std::net::SocketAddr;

use crate::conn::{ConnEntry, ConnKey, Family, FwdMethod, PersistKind, Persistence, flags};

/// Bumped when the layout changes; a receiver refuses a stream of another version.
pub const RECORD_VERSION: u32 = 1;

const B_KEY6: u8 = 1 << 0;
const B_DEST6: u8 = 1 << 1;
const B_FWMARK: u8 = 1 << 2;
const B_PERSIST: u8 = 1 << 3;
const B_PE: u8 = 1 << 4;
const B_MAC: u8 = 1 << 5;
const B_TEMPLATE: u8 = 1 << 6;
const B_KNOWN: u8 = 0x7f;

/// Longest encoding (IPv6 everywhere, every option, 5-byte varints).
pub const MAX_RECORD: usize = 1 + 1 + 2 + 1 + 5 + 5 + 6 + 48 + 4 + 2 + 1 + 6;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record truncated at byte {0}")]
    Truncated(usize),
    #[error("unknown record bits {0:#04x}")]
    UnknownBits(u8),
    #[error("bad varint at byte {0}")]
    Varint(usize),
    #[error("unknown persistence kind {0}")]
    Persistence(u8),
    #[error("invalid forwarding method in flags {0:#06x}")]
    Forward(u16),
    #[error("state {state} is out of range for protocol {protocol}")]
    State { protocol: u8, state: u8 },
}

fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `e`'s record to `out`; `now` is the sender's table clock (the deadline travels as
/// time left, so the clocks of the two directors need not agree).
pub fn encode(e: &ConnEntry, now: u32, out: &mut Vec<u8>) {
    let key = e.key();
    let kfam = key.family();
    let dfam = e.dest_family();
    let p = e.persistence();
    let mac = e.client_mac();
    let mut bits = 0u8;
    if kfam == Family::V6 {
        bits |= B_KEY6;
    }
    if dfam == Family::V6 {
        bits |= B_DEST6;
    }
    if e.fwmark() != 0 {
        bits |= B_FWMARK;
    }
    if p.is_some() {
        bits |= B_PERSIST;
    }
    if e.pe() != 0 {
        bits |= B_PE;
    }
    if mac != [0; 6] {
        bits |= B_MAC;
    }
    if e.is_template() {
        bits |= B_TEMPLATE;
    }
    out.push(bits);
    out.push(key.protocol());
    out.extend_from_slice(&(e.flags() & !flags::SYNC).to_be_bytes());
    out.push(e.state());
    put_varint(out, e.remaining(now));
    put_varint(out, e.timeout());
    let (caddr, cport) = key.client_raw();
    let (vaddr, vport) = key.virtual_raw();
    let (daddr, dport) = e.dest_raw();
    out.extend_from_slice(&cport.to_be_bytes());
    out.extend_from_slice(&vport.to_be_bytes());
    out.extend_from_slice(&dport.to_be_bytes());
    let klen = if kfam == Family::V6 { 16 } else { 4 };
    let dlen = if dfam == Family::V6 { 16 } else { 4 };
    out.extend_from_slice(&caddr[..klen]);
    out.extend_from_slice(&vaddr[..klen]);
    out.extend_from_slice(&daddr[..dlen]);
    if e.fwmark() != 0 {
        out.extend_from_slice(&e.fwmark().to_be_bytes());
    }
    if let Some(p) = p {
        out.push(p.kind as u8);
        out.push(p.prefix_len);
    }
    if e.pe() != 0 {
        out.push(e.pe());
    }
    if mac != [0; 6] {
        out.extend_from_slice(&mac);
    }
}

/// Reads records one at a time from a batch's bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(RecordError::Truncated(self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, RecordError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn varint(&mut self) -> Result<u32, RecordError> {
        let start = self.pos;
        let mut v: u64 = 0;
        for i in 0..5 {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return u32::try_from(v).map_err(|_| RecordError::Varint(start));
            }
        }
        Err(RecordError::Varint(start))
    }

    fn addr(&mut self, fam: Family) -> Result<[u8; 16], RecordError> {
        let mut a = [0u8; 16];
        let n = if fam == Family::V6 { 16 } else { 4 };
        a[..n].copy_from_slice(self.take(n)?);
        Ok(a)
    }

    /// The next entry, its deadline converted to this director's clock `now`; `None` at the
    /// end. After an error the rest of the buffer cannot be framed: stop reading.
    pub fn next_entry(&mut self, now: u32) -> Option<Result<ConnEntry, RecordError>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let r = self.read(now);
        if r.is_err() {
            self.pos = self.buf.len();
        }
        Some(r)
    }

    fn read(&mut self, now: u32) -> Result<ConnEntry, RecordError> {
        let bits = self.u8()?;
        if bits & !B_KNOWN != 0 {
            return Err(RecordError::UnknownBits(bits));
        }
        let protocol = self.u8()?;
        let fl = self.u16()?;
        let state = self.u8()?;
        let left = self.varint()?;
        let timeout = self.varint()?;
        let cport = self.u16()?;
        let vport = self.u16()?;
        let dport = self.u16()?;
        let kfam = if bits & B_KEY6 != 0 {
            Family::V6
        } else {
            Family::V4
        };
        let dfam = if bits & B_DEST6 != 0 {
            Family::V6
        } else {
            Family::V4
        };
        let caddr = self.addr(kfam)?;
        let vaddr = self.addr(kfam)?;
        let daddr = self.addr(dfam)?;
        let fwmark = if bits & B_FWMARK != 0 {
            let b = self.take(4)?;
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        } else {
            0
        };
        let persistence = if bits & B_PERSIST != 0 {
            let kind = self.u8()?;
            let prefix = self.u8()?;
            let k = match kind {
                1 => PersistKind::Port,
                2 => PersistKind::AnyPort,
                3 => PersistKind::Fwmark,
                other => return Err(RecordError::Persistence(other)),
            };
            Some(Persistence::new(k, prefix))
        } else {
            None
        };
        let pe = if bits & B_PE != 0 { self.u8()? } else { 0 };
        let mac = if bits & B_MAC != 0 {
            let mut m = [0u8; 6];
            m.copy_from_slice(self.take(6)?);
            m
        } else {
            [0; 6]
        };
        let fwd = FwdMethod::from_flags(fl).ok_or(RecordError::Forward(fl))?;
        let template = bits & B_TEMPLATE != 0;
        let key = ConnKey::from_raw(protocol, kfam, caddr, cport, vaddr, vport, template);
        let dest = SocketAddr::new(crate::conn::raw_to_ip(dfam, &daddr), dport);
        let mut e = if template {
            ConnEntry::template(key, dest, fwd, 0, timeout, now)
        } else {
            ConnEntry::new(key, dest, fwd, 0)
        };
        e.set_flags(fl & !flags::SYNC);
        if !e.state_in_range(state) {
            return Err(RecordError::State { protocol, state });
        }
        e.set_state(state);
        e.set_deadline(now.saturating_add(left), timeout);
        e.set_fwmark(fwmark);
        e.set_persistence(persistence);
        e.set_pe(pe);
        e.set_client_mac(mac);
        // Received now: a snapshot's end sweeps copies older than the snapshot.
        e.mark_synced(now);
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{TcpState, proto};

    fn sample_v4() -> ConnEntry {
        let k = ConnKey::v4(proto::TCP, [198, 51, 100, 7], 40000, [192, 0, 2, 100], 80);
        let mut e = ConnEntry::new(
            k,
            "192.0.2.33:80".parse().unwrap(),
            FwdMethod::DirectRoute,
            9,
        );
        e.set_state(TcpState::Established as u8);
        e.set_expiry(1000, 900);
        e.set_client_mac([2, 0xfc, 0, 0, 0, 10]);
        e
    }

    fn round_trip(e: &ConnEntry, now_tx: u32, now_rx: u32) -> (ConnEntry, usize) {
        let mut buf = Vec::new();
        encode(e, now_tx, &mut buf);
        let mut r = Reader::new(&buf);
        let got = r.next_entry(now_rx).unwrap().unwrap();
        assert!(r.next_entry(now_rx).is_none());
        (got, buf.len())
    }

    #[test]
    fn ipv4_record_is_smaller_than_ipvs_v1_and_round_trips() {
        let e = sample_v4();
        let (got, len) = round_trip(&e, 1100, 5);
        assert_eq!(
            len, 33,
            "IPVS v1 needs 36 bytes for this entry, without the MAC"
        );
        assert_eq!(got.key(), e.key());
        assert_eq!(got.dest(), e.dest());
        assert_eq!(got.state(), e.state());
        assert_eq!(got.flags(), e.flags());
        assert_eq!(got.client_mac(), e.client_mac());
        assert_eq!(got.timeout(), 900);
        // 800 s were left at the sender; the receiver's clock reads 5.
        assert_eq!(got.expires(), 805);
        assert_eq!(got.service(), 0, "service indexes are local");
        assert_eq!(got.origin(), 0, "the receiver sets the origin");
    }

    #[test]
    fn ipv6_mixed_family_templates_and_options_round_trip() {
        // IPv6 VIP, IPv4 real server over a tunnel.
        let k = ConnKey::new(
            proto::UDP,
            "[2001:db8::10]:5353".parse().unwrap(),
            "[2001:db8::100]:53".parse().unwrap(),
        )
        .unwrap();
        let mut e = ConnEntry::new(k, "192.0.2.33:53".parse().unwrap(), FwdMethod::Tunnel, 1);
        e.set_expiry(10, 300);
        e.set_fwmark(7);
        e.set_persistence(Some(Persistence::new(PersistKind::Port, 64)));
        e.set_pe(1);
        let (got, len) = round_trip(&e, 10, 10);
        assert_eq!(len, 1 + 1 + 2 + 1 + 2 + 2 + 6 + 32 + 4 + 4 + 2 + 1);
        assert_eq!(got.key(), e.key());
        assert_eq!(got.dest(), e.dest());
        assert_eq!(got.fwd_method(), FwdMethod::Tunnel);
        assert_eq!(got.fwmark(), 7);
        assert_eq!(got.persistence(), e.persistence());
        assert_eq!(got.pe(), 1);
        assert_eq!(got.expires(), 310);

        let tk = ConnKey::template(
            proto::TCP,
            "2001:db8::10".parse().unwrap(),
            64,
            crate::conn::TemplateTarget::Virtual("[2001:db8::100]:443".parse().unwrap()),
        )
        .unwrap();
        let t = ConnEntry::template(
            tk,
            "[2001:db8::33]:443".parse().unwrap(),
            FwdMethod::DirectRoute,
            3,
            360,
            50,
        );
        let (got, _) = round_trip(&t, 50, 0);
        assert!(got.is_template());
        assert_eq!(got.key(), t.key());
        assert_eq!(got.expires(), 360);
        assert_eq!(got.timeout(), 360);
    }

    #[test]
    fn a_sync_flag_never_travels() {
        let mut e = sample_v4();
        e.set_synced_from(3);
        let (got, _) = round_trip(&e, 1000, 1000);
        assert!(!got.has_flag(flags::SYNC));
    }

    #[test]
    fn bad_input_is_an_error_never_a_panic() {
        let mut buf = Vec::new();
        encode(&sample_v4(), 1000, &mut buf);
        for cut in 0..buf.len() {
            let mut r = Reader::new(&buf[..cut]);
            if cut == 0 {
                assert!(r.next_entry(0).is_none());
            } else {
                assert!(matches!(r.next_entry(0), Some(Err(_))), "cut at {cut}");
                assert!(r.next_entry(0).is_none(), "an error ends the batch");
            }
        }
        let mut bad = buf.clone();
        bad[0] |= 0x80;
        assert_eq!(
            Reader::new(&bad).next_entry(0),
            Some(Err(RecordError::UnknownBits(bad[0])))
        );
        let mut bad = buf.clone();
        bad[4] = 200;
        assert!(matches!(
            Reader::new(&bad).next_entry(0),
            Some(Err(RecordError::State { .. }))
        ));
        let mut bad = buf.clone();
        bad[3] = (bad[3] & !0x07) | 0x07;
        assert!(matches!(
            Reader::new(&bad).next_entry(0),
            Some(Err(RecordError::Forward(_)))
        ));
        // Random bytes: errors or entries, nothing else.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let len = (x % 120) as usize;
            let mut b = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push(x as u8);
            }
            let mut r = Reader::new(&b);
            let mut n = 0;
            while r.next_entry(0).is_some() {
                n += 1;
                assert!(n <= len);
            }
        }
    }
}
