//! Receiving side: the checks and record walk of the kernel backup (`ip_vs_process_message`,
//! `ip_vs_proc_sync_conn`, `ip_vs_process_message_v0`).
//!
//! The kernel gives up on a message at three levels, and so does [`decode`]:
//! - A bad datagram (too short, `size` ≠ length, foreign SyncID) is ignored whole:
//!   [`MessageError`].
//! - A malformed record stops the walk. Records before it are already applied, and the rest of
//!   the buffer is dropped: [`DecodedMessage::aborted`].
//! - A well-formed record the backup cannot use (unknown protocol, state out of range, unknown
//!   mandatory option, PE data without a name) is skipped, and the walk goes on:
//!   [`DecodedMessage::dropped`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::conn::{Family, SctpState, TcpState, flags, proto};

use super::record::{PeData, SeqAdjust, SeqData, SyncConn, SyncMessage};
use super::wire::{
    PE_NAME_MAXLEN, SEQ_DATA_LEN, SVER_MASK, SVER_SHIFT, SYNC_PROTO_VER, TYPE_F_INET6,
    V0_HEADER_LEN, V0_RECORD_LEN, V1_HEADER_LEN, V4_RECORD_LEN, opt, record_len,
};

/// Which header the datagram carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireVersion {
    V0,
    V1,
}

/// The whole datagram is ignored, and nothing in it is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("datagram of {len} bytes is shorter than a sync header")]
    TooShort { len: usize },
    #[error("header size {header} does not match the datagram length {actual}")]
    SizeMismatch { header: u16, actual: usize },
    #[error("SyncID {message} is not this backup's SyncID {backup}")]
    SyncIdMismatch { message: u8, backup: u8 },
}

/// Why a well-formed record was skipped. The records after it are still decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("unsupported protocol {0}")]
    UnknownProtocol(u8),
    #[error("state {state} is out of range for protocol {protocol} ({count} states)")]
    InvalidState {
        protocol: u8,
        state: u16,
        count: u16,
    },
    #[error("unknown mandatory option type {0:#04x}")]
    UnknownMandatoryOption(u8),
    #[error("persistence-engine data without an engine name")]
    PeDataWithoutName,
    /// The kernel would find no engine by that name and drop the record too.
    #[error("persistence-engine name is not UTF-8")]
    PeNameNotUtf8,
}

/// What was wrong with the record that stopped the walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StructuralErrorKind {
    #[error("fewer than {needed} bytes left for the record")]
    Truncated { needed: usize },
    #[error("record length {size} runs past the end of the datagram")]
    Overrun { size: usize },
    #[error("unknown record version {0}")]
    RecordVersion(u8),
    #[error("unknown record type {0:#04x}")]
    RecordType(u8),
    #[error("record length {size} is shorter than its fixed part ({needed} bytes)")]
    RecordTooShort { size: usize, needed: usize },
    #[error("option header runs past the record's end")]
    OptionTruncated,
    #[error("option {ptype:#04x} has length {len}: zero or past the record's end")]
    OptionLength { ptype: u8, len: u8 },
    #[error("sequence option has length {0}, not 24")]
    SeqLength(u8),
    #[error("persistence-engine name of {0} bytes is longer than 16")]
    PeNameTooLong(u8),
    #[error("option {0:#04x} appears twice")]
    DuplicateOption(u8),
}

/// A malformed record: decoding stopped here, and the rest of the datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("record {index} at byte {offset}: {kind}; rest of the message dropped")]
pub struct StructuralError {
    /// Position of the record in the message (0-based).
    pub index: usize,
    /// Byte offset of the record in the datagram.
    pub offset: usize,
    pub kind: StructuralErrorKind,
}

/// A record skipped by the kernel's per-record checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedEntry {
    pub index: usize,
    pub offset: usize,
    pub error: EntryError,
}

/// The outcome for a datagram the backup accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedMessage {
    pub version: WireVersion,
    /// The records the kernel would apply, in wire order, with the message's SyncID.
    pub message: SyncMessage,
    /// Records skipped individually.
    pub dropped: Vec<DroppedEntry>,
    /// Set if a malformed record stopped decoding. `message` still holds the records before
    /// it, because the kernel has already applied those.
    pub aborted: Option<StructuralError>,
}

/// Number of states the kernel defines for `protocol` (`pp->num_states`), or `None` if
/// kernel IPVS does not handle it. A backup drops non-template records of other protocols.
/// AH and ESP count as handled, as in kernels built with `CONFIG_IP_VS_PROTO_AH_ESP`.
pub const fn protocol_state_count(protocol: u8) -> Option<u16> {
    match protocol {
        proto::TCP => Some(TcpState::COUNT as u16),
        proto::SCTP => Some(SctpState::COUNT as u16),
        proto::UDP | proto::AH | proto::ESP => Some(1),
        _ => None,
    }
}

/// Decodes one received datagram as a kernel backup with SyncID `backup_syncid` would. A
/// SyncID of 0 accepts every message.
///
/// Byte 0 must be 0, `version` 1 and `spare` 0 for the datagram to be read as v1. Anything
/// else is read as v0, where byte 0 is the record count. A datagram shorter than a v1 header
/// is always read as v0 (the kernel would read stale bytes from its receive buffer there).
/// Bytes after the last counted record are ignored, as in the kernel.
///
/// Never panics, whatever `buf` holds.
pub fn decode(buf: &[u8], backup_syncid: u8) -> Result<DecodedMessage, MessageError> {
    let Some(head) = buf.first_chunk::<V0_HEADER_LEN>() else {
        return Err(MessageError::TooShort { len: buf.len() });
    };
    let size = u16::from_be_bytes([head[2], head[3]]);
    if usize::from(size) != buf.len() {
        return Err(MessageError::SizeMismatch {
            header: size,
            actual: buf.len(),
        });
    }
    let syncid = head[1];
    if backup_syncid != 0 && syncid != backup_syncid {
        return Err(MessageError::SyncIdMismatch {
            message: syncid,
            backup: backup_syncid,
        });
    }
    let mut out = DecodedMessage {
        version: WireVersion::V0,
        message: SyncMessage {
            syncid,
            conns: Vec::new(),
        },
        dropped: Vec::new(),
        aborted: None,
    };
    match buf.first_chunk::<V1_HEADER_LEN>() {
        Some(h) if h[0] == 0 && h[5] == SYNC_PROTO_VER && h[6] == 0 && h[7] == 0 => {
            out.version = WireVersion::V1;
            walk_records(buf, V1_HEADER_LEN, h[4], v1_record, &mut out);
        }
        _ => walk_records(buf, V0_HEADER_LEN, head[0], v0_record, &mut out),
    }
    Ok(out)
}

/// What one record walk step produced: the record's verdict, and how far to move on.
type Step = Result<(Result<SyncConn, EntryError>, usize), StructuralErrorKind>;

/// Walks `nr_conns` records after a header of `header_len` bytes: each record's verdict goes
/// to `out`; a structural error ends the walk (the kernel drops the rest of the buffer).
fn walk_records(
    buf: &[u8],
    header_len: usize,
    nr_conns: u8,
    record: fn(&[u8]) -> Step,
    out: &mut DecodedMessage,
) {
    let mut offset = header_len;
    for index in 0..usize::from(nr_conns) {
        match record(buf.get(offset..).unwrap_or_default()) {
            Ok((verdict, advance)) => {
                out.push(index, offset, verdict);
                offset += advance;
            }
            Err(kind) => {
                out.abort(index, offset, kind);
                return;
            }
        }
    }
}

/// One v1 record at the start of `rest`, with the checks in the kernel's order (so that a
/// record with several faults reports the one the kernel stops at).
fn v1_record(rest: &[u8]) -> Step {
    // The kernel checks that a whole IPv4 record fits before it reads `ver_size`, for either
    // family.
    let Some(fixed) = rest.first_chunk::<V4_RECORD_LEN>() else {
        return Err(StructuralErrorKind::Truncated {
            needed: V4_RECORD_LEN,
        });
    };
    let ver_size = u16::from_be_bytes([fixed[2], fixed[3]]);
    let size = usize::from(ver_size & SVER_MASK);
    let Some(rec) = rest.get(..size) else {
        return Err(StructuralErrorKind::Overrun { size });
    };
    let version = (ver_size >> SVER_SHIFT) as u8;
    if version != 0 {
        return Err(StructuralErrorKind::RecordVersion(version));
    }
    // Bit 0 set means IPv6 whatever the other bits hold; otherwise the byte must be 0.
    let kind = fixed[0];
    let family = if kind & TYPE_F_INET6 != 0 {
        Family::V6
    } else if kind == 0 {
        Family::V4
    } else {
        return Err(StructuralErrorKind::RecordType(kind));
    };
    let fixed_len = record_len(family);
    let too_short = StructuralErrorKind::RecordTooShort {
        size,
        needed: fixed_len,
    };
    let options = match rec.get(fixed_len..) {
        Some(o) => parse_options(o)?,
        None => return Err(too_short),
    };
    // The next record starts on a 32-bit boundary; padding is not part of `size`.
    let advance = (size + 3) & !3;
    let options = match options {
        Ok(o) => o,
        Err(e) => return Ok((Err(e), advance)),
    };

    let mut r = Reader(rec);
    let fields = r.v1_fixed(family).ok_or(too_short)?;
    if let Err(e) = check_state(fields.protocol, fields.flags, fields.state) {
        return Ok((Err(e), advance));
    }
    let pe = match (options.pe_data, options.pe_name) {
        (Some(data), Some(name)) => match std::str::from_utf8(name) {
            Ok(name) => Some(PeData {
                name: name.to_owned(),
                data: data.to_vec(),
            }),
            Err(_) => return Ok((Err(EntryError::PeNameNotUtf8), advance)),
        },
        (Some(_), None) => return Ok((Err(EntryError::PeDataWithoutName), advance)),
        // The kernel ignores a name that comes without data.
        (None, _) => None,
    };
    let conn = SyncConn {
        protocol: fields.protocol,
        flags: fields.flags,
        state: fields.state,
        client: SocketAddr::new(fields.addrs[0], fields.cport),
        virtual_addr: SocketAddr::new(fields.addrs[1], fields.vport),
        dest: SocketAddr::new(fields.addrs[2], fields.dport),
        fwmark: fields.fwmark,
        timeout_s: fields.timeout,
        seq: options.seq,
        pe,
    };
    Ok((Ok(conn), advance))
}

#[derive(Default)]
struct Options<'a> {
    seq: Option<SeqData>,
    pe_data: Option<&'a [u8]>,
    pe_name: Option<&'a [u8]>,
}

/// The TLVs after a record's addresses. The outer error is structural. The inner one is an
/// unknown mandatory option, which drops the record without looking at the options after
/// it, as the kernel does.
fn parse_options(mut rest: &[u8]) -> Result<Result<Options<'_>, EntryError>, StructuralErrorKind> {
    let mut o = Options::default();
    while !rest.is_empty() {
        let Some(&[ptype, plen]) = rest.first_chunk::<2>() else {
            return Err(StructuralErrorKind::OptionTruncated);
        };
        let len = usize::from(plen);
        let data = match rest.get(2..2 + len) {
            Some(d) if len != 0 => d,
            _ => return Err(StructuralErrorKind::OptionLength { ptype, len: plen }),
        };
        // The optional bit only matters for types this end does not know: 0x41 is SEQ_DATA.
        match ptype & !opt::F_OPTIONAL {
            opt::SEQ_DATA => {
                let Some(d) = data
                    .first_chunk::<SEQ_DATA_LEN>()
                    .filter(|_| len == SEQ_DATA_LEN)
                else {
                    return Err(StructuralErrorKind::SeqLength(plen));
                };
                if o.seq.is_some() {
                    return Err(StructuralErrorKind::DuplicateOption(ptype));
                }
                o.seq = Some(seq_data(d, u32::from_be_bytes));
            }
            opt::PE_DATA if o.pe_data.is_some() => {
                return Err(StructuralErrorKind::DuplicateOption(ptype));
            }
            // A one-byte length cannot exceed IP_VS_PEDATA_MAXLEN (255).
            opt::PE_DATA => o.pe_data = Some(data),
            opt::PE_NAME if len > PE_NAME_MAXLEN => {
                return Err(StructuralErrorKind::PeNameTooLong(plen));
            }
            opt::PE_NAME if o.pe_name.is_some() => {
                return Err(StructuralErrorKind::DuplicateOption(ptype));
            }
            opt::PE_NAME => o.pe_name = Some(data),
            _ if ptype & opt::F_OPTIONAL == 0 => {
                return Ok(Err(EntryError::UnknownMandatoryOption(ptype)));
            }
            _ => {}
        }
        rest = rest.get(2 + len..).unwrap_or_default();
    }
    Ok(Ok(o))
}

/// One v0 record: IPv4 only, 16-bit flags, no fwmark or timeout, and a 24-byte sequence
/// trailer when the SEQ flags are set.
fn v0_record(rest: &[u8]) -> Step {
    let mut r = Reader(rest);
    let truncated = StructuralErrorKind::Truncated {
        needed: V0_RECORD_LEN,
    };
    let _reserved = r.u8().ok_or(truncated)?;
    let protocol = r.u8().ok_or(truncated)?;
    let cport = r.u16().ok_or(truncated)?;
    let vport = r.u16().ok_or(truncated)?;
    let dport = r.u16().ok_or(truncated)?;
    let caddr = r.ip(Family::V4).ok_or(truncated)?;
    let vaddr = r.ip(Family::V4).ok_or(truncated)?;
    let daddr = r.ip(Family::V4).ok_or(truncated)?;
    let flags16 = r.u16().ok_or(truncated)?;
    let state = r.u16().ok_or(truncated)?;
    let (seq, advance) = if flags16 & flags::SEQ_MASK != 0 {
        let trailer = r
            .take::<SEQ_DATA_LEN>()
            .ok_or(StructuralErrorKind::Truncated {
                needed: V0_RECORD_LEN + SEQ_DATA_LEN,
            })?;
        // v0 masters copy `struct ip_vs_seq` in their own byte order, and backups read it in
        // theirs. Native order reproduces what a kernel on this machine would see.
        (
            Some(seq_data(&trailer, u32::from_ne_bytes)),
            V0_RECORD_LEN + SEQ_DATA_LEN,
        )
    } else {
        (None, V0_RECORD_LEN)
    };
    let flags = u32::from(flags16);
    if let Err(e) = check_state(protocol, flags, state) {
        return Ok((Err(e), advance));
    }
    let conn = SyncConn {
        protocol,
        flags,
        state,
        client: SocketAddr::new(caddr, cport),
        virtual_addr: SocketAddr::new(vaddr, vport),
        dest: SocketAddr::new(daddr, dport),
        fwmark: 0,
        timeout_s: 0,
        seq,
        pe: None,
    };
    Ok((Ok(conn), advance))
}

/// The kernel's per-record protocol and state checks. It does not check templates beyond a
/// debug message, so fwmark templates (protocol 0) and any template state pass.
fn check_state(protocol: u8, flags: u32, state: u16) -> Result<(), EntryError> {
    if flags & u32::from(flags::TEMPLATE) != 0 {
        return Ok(());
    }
    let count = protocol_state_count(protocol).ok_or(EntryError::UnknownProtocol(protocol))?;
    if state >= count {
        return Err(EntryError::InvalidState {
            protocol,
            state,
            count,
        });
    }
    Ok(())
}

fn seq_data(d: &[u8; SEQ_DATA_LEN], read: fn([u8; 4]) -> u32) -> SeqData {
    let word = |i: usize| read([d[4 * i], d[4 * i + 1], d[4 * i + 2], d[4 * i + 3]]);
    SeqData {
        in_seq: SeqAdjust {
            init_seq: word(0),
            delta: word(1),
            previous_delta: word(2),
        },
        out_seq: SeqAdjust {
            init_seq: word(3),
            delta: word(4),
            previous_delta: word(5),
        },
    }
}

impl DecodedMessage {
    fn push(&mut self, index: usize, offset: usize, verdict: Result<SyncConn, EntryError>) {
        match verdict {
            Ok(conn) => self.message.conns.push(conn),
            Err(error) => self.dropped.push(DroppedEntry {
                index,
                offset,
                error,
            }),
        }
    }

    fn abort(&mut self, index: usize, offset: usize, kind: StructuralErrorKind) {
        self.aborted = Some(StructuralError {
            index,
            offset,
            kind,
        });
    }
}

/// Fixed part of a v1 record, in host order.
struct V1Fixed {
    protocol: u8,
    flags: u32,
    state: u16,
    cport: u16,
    vport: u16,
    dport: u16,
    fwmark: u32,
    timeout: u32,
    /// caddr, vaddr, daddr.
    addrs: [IpAddr; 3],
}

/// Sequential big-endian reads that return `None` instead of running past the end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.0.split_first_chunk::<N>()?;
        self.0 = tail;
        Some(*head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }

    fn ip(&mut self, family: Family) -> Option<IpAddr> {
        Some(match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(self.take::<4>()?)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(self.take::<16>()?)),
        })
    }

    fn v1_fixed(&mut self, family: Family) -> Option<V1Fixed> {
        let _type = self.u8()?;
        let protocol = self.u8()?;
        let _ver_size = self.u16()?;
        let flags = self.u32()?;
        let state = self.u16()?;
        let cport = self.u16()?;
        let vport = self.u16()?;
        let dport = self.u16()?;
        let fwmark = self.u32()?;
        let timeout = self.u32()?;
        let addrs = [self.ip(family)?, self.ip(family)?, self.ip(family)?];
        Some(V1Fixed {
            protocol,
            flags,
            state,
            cport,
            vport,
            dport,
            fwmark,
            timeout,
            addrs,
        })
    }
}
