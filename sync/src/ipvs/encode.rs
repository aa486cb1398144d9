//! Sending side: v1 messages laid out as the kernel master builds them (`ip_vs_sync_conn`,
//! `ip_vs_sync_buff_create`).
//!
//! Layout rules taken from the kernel:
//! - Each record starts on a 32-bit boundary. The padding goes *before* a record that follows
//!   an unaligned one, so a message never ends in padding, and `ver_size` never counts it.
//! - Options come after the addresses in the order SEQ_DATA, PE_DATA, PE_NAME.
//! - A record is added to the open message if it fits within `max_len`. Otherwise the message
//!   is closed and a new one starts. A record too big for an empty message goes alone into an
//!   oversized one (the kernel allocates `max(len + header, sync_maxlen)`).
//!
//! One departure: a message is also closed at 255 records, because `nr_conns` is one byte and
//! the kernel lets it wrap when `sync_maxlen` is large.

use std::net::IpAddr;

use super::record::{SeqAdjust, SyncConn, SyncMessage};
use super::wire::{
    DEFAULT_SYNC_MAXLEN, MAX_CONNS_PER_MESSAGE, PE_DATA_MAXLEN, PE_NAME_MAXLEN, SEQ_DATA_LEN,
    SVER_MASK, SYNC_PROTO_VER, TYPE_F_INET6, V1_HEADER_LEN, opt,
};
use crate::conn::Family;

/// Why a record cannot be encoded. The encoder is left as it was before the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A v1 record has one family bit for all three addresses.
    #[error(
        "addresses of mixed families (client {client:?}, virtual {virtual_addr:?}, real server {dest:?}) cannot be sent in IPVS sync v1"
    )]
    MixedFamily {
        client: Family,
        virtual_addr: Family,
        dest: Family,
    },
    #[error("persistence-engine name of {0} bytes: must be 1..=16")]
    PeNameLength(usize),
    #[error("persistence-engine data of {0} bytes: must be 1..=255")]
    PeDataLength(usize),
}

/// Packs records into v1 messages of at most `max_len` bytes each.
#[derive(Debug)]
pub struct Encoder {
    syncid: u8,
    max_len: usize,
    done: Vec<Vec<u8>>,
    /// The open message; empty when there is none.
    cur: Vec<u8>,
    /// Size the open message may grow to: `max(first record + header, max_len)`.
    cap: usize,
}

impl Encoder {
    /// `max_len` is the UDP payload limit, [`DEFAULT_SYNC_MAXLEN`] for a 1500-byte MTU.
    pub fn new(syncid: u8, max_len: u16) -> Encoder {
        Encoder {
            syncid,
            max_len: usize::from(max_len),
            done: Vec::new(),
            cur: Vec::new(),
            cap: 0,
        }
    }

    /// Appends one record. On error nothing is written.
    pub fn push(&mut self, conn: &SyncConn) -> Result<(), EncodeError> {
        let family = validate(conn)?;
        let len = conn.encoded_len();
        if !self.cur.is_empty() {
            let pad = self.cur.len().wrapping_neg() & 3;
            let full = usize::from(self.cur[4]) >= MAX_CONNS_PER_MESSAGE;
            if full || self.cur.len() + pad + len > self.cap {
                self.close();
            } else {
                self.cur.resize(self.cur.len() + pad, 0);
            }
        }
        if self.cur.is_empty() {
            self.cap = self.max_len.max(len + V1_HEADER_LEN);
            self.cur.reserve(self.cap);
            // reserved (0 so v0 receivers see no records), syncid, size, nr_conns, version, spare.
            self.cur
                .extend_from_slice(&[0, self.syncid, 0, 0, 0, SYNC_PROTO_VER, 0, 0]);
        }
        write_record(&mut self.cur, conn, family, len);
        self.cur[4] += 1;
        let size = self.cur.len() as u16;
        self.cur[2..4].copy_from_slice(&size.to_be_bytes());
        Ok(())
    }

    /// Takes the messages completed so far and leaves the open one open.
    pub fn take_ready(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.done)
    }

    /// Closes the open message and returns every message not yet taken.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.close();
        self.done
    }

    fn close(&mut self) {
        if !self.cur.is_empty() {
            self.done.push(std::mem::take(&mut self.cur));
        }
    }
}

impl Default for Encoder {
    /// SyncID 0 and [`DEFAULT_SYNC_MAXLEN`].
    fn default() -> Self {
        Encoder::new(0, DEFAULT_SYNC_MAXLEN)
    }
}

/// Encodes `msg` into as many datagrams as `max_len` requires. Returns none for no records.
pub fn encode(msg: &SyncMessage, max_len: u16) -> Result<Vec<Vec<u8>>, EncodeError> {
    let mut enc = Encoder::new(msg.syncid, max_len);
    for conn in &msg.conns {
        enc.push(conn)?;
    }
    Ok(enc.finish())
}

fn validate(conn: &SyncConn) -> Result<Family, EncodeError> {
    let family = conn.family().ok_or(EncodeError::MixedFamily {
        client: Family::of(&conn.client.ip()),
        virtual_addr: Family::of(&conn.virtual_addr.ip()),
        dest: Family::of(&conn.dest.ip()),
    })?;
    if let Some(pe) = &conn.pe {
        // Empty options are malformed on the wire; the kernel never sends them.
        if pe.name.is_empty() || pe.name.len() > PE_NAME_MAXLEN {
            return Err(EncodeError::PeNameLength(pe.name.len()));
        }
        if pe.data.is_empty() || pe.data.len() > PE_DATA_MAXLEN {
            return Err(EncodeError::PeDataLength(pe.data.len()));
        }
    }
    Ok(family)
}

/// Writes one record of `len` bytes (validated: at most 72 + 26 + 257 + 18, well inside the
/// 12-bit length field).
fn write_record(out: &mut Vec<u8>, conn: &SyncConn, family: Family, len: usize) {
    let start = out.len();
    let kind = match family {
        Family::V4 => 0,
        Family::V6 => TYPE_F_INET6,
    };
    // Record version 0 in the top four bits.
    let ver_size = len as u16 & SVER_MASK;
    out.push(kind);
    out.push(conn.protocol);
    out.extend_from_slice(&ver_size.to_be_bytes());
    out.extend_from_slice(&conn.flags.to_be_bytes());
    out.extend_from_slice(&conn.state.to_be_bytes());
    out.extend_from_slice(&conn.client.port().to_be_bytes());
    out.extend_from_slice(&conn.virtual_addr.port().to_be_bytes());
    out.extend_from_slice(&conn.dest.port().to_be_bytes());
    out.extend_from_slice(&conn.fwmark.to_be_bytes());
    out.extend_from_slice(&conn.timeout_s.to_be_bytes());
    for ip in [conn.client.ip(), conn.virtual_addr.ip(), conn.dest.ip()] {
        match ip {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
        }
    }
    if let Some(seq) = &conn.seq {
        out.extend_from_slice(&[opt::SEQ_DATA, SEQ_DATA_LEN as u8]);
        put_seq(out, &seq.in_seq);
        put_seq(out, &seq.out_seq);
    }
    if let Some(pe) = &conn.pe {
        // Lengths validated to fit a byte.
        out.extend_from_slice(&[opt::PE_DATA, pe.data.len() as u8]);
        out.extend_from_slice(&pe.data);
        out.extend_from_slice(&[opt::PE_NAME, pe.name.len() as u8]);
        out.extend_from_slice(pe.name.as_bytes());
    }
    debug_assert_eq!(out.len() - start, len);
}

fn put_seq(out: &mut Vec<u8>, s: &SeqAdjust) {
    out.extend_from_slice(&s.init_seq.to_be_bytes());
    out.extend_from_slice(&s.delta.to_be_bytes());
    out.extend_from_slice(&s.previous_delta.to_be_bytes());
}
