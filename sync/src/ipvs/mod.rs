//! The Linux kernel's IPVS connection-sync protocol (`net/netfilter/ipvs/ip_vs_sync.c`):
//! encode version 1, decode versions 1 and 0, and convert records to and from [`ConnEntry`].
//!
//! With this codec Fulcrum can exchange connection state with kernel IPVS sync daemons (a
//! kernel master feeding a Fulcrum backup, or the reverse), so the kernel forwarding path
//! can join the cluster sync.
//!
//! - [`encode`] / [`Encoder`]: pack [`SyncConn`]s into datagrams of at most `max_len` bytes,
//!   laid out byte for byte as the kernel master lays them out.
//! - [`decode`]: validate a received datagram as the kernel backup does. It never panics,
//!   and it reports each record it drops ([`DroppedEntry`]) and where it stopped on a
//!   structural error ([`StructuralError`]).
//! - [`SyncConn::from_entry`] / [`SyncConn::to_entry`]: map records to and from the table.
//!
//! Limits of the format:
//! - A v1 record has one family bit for all three addresses. An entry whose real server is in
//!   a different family from its VIP (an IPv6 VIP tunnelled to an IPv4 real server) cannot be
//!   represented. Conversion and encoding reject such entries with `MixedFamily`. The kernel
//!   refuses to start a sync daemon at all while mixed-family services exist.
//! - v1 carries PE data (e.g. the SIP Call-ID) but [`ConnEntry`] has no room for it, so
//!   [`SyncConn::to_entry`] refuses templates that carry PE data. Connections may drop it: the
//!   kernel only needs it on templates too.
//! - [`ConnEntry`] carries no TCP sequence-adjustment state, so that part of a record is
//!   decoded and encoded but not stored (see [`SyncConn::to_entry`]).

#![forbid(unsafe_code)]

mod convert;
mod decode;
mod encode;
mod record;
mod wire;

#[cfg(test)]
mod tests;

pub use convert::{ConvertError, ImportContext};
pub use decode::{
    DecodedMessage, DroppedEntry, EntryError, MessageError, StructuralError, StructuralErrorKind,
    WireVersion, decode, protocol_state_count,
};
pub use encode::{EncodeError, Encoder, encode};
pub use record::{PeData, SeqAdjust, SeqData, SyncConn, SyncMessage};
pub use wire::{
    BACKUP_FLAGS_MASK, DEFAULT_SYNC_MAXLEN, DEFAULT_SYNC_MAXLEN_V6, MAX_CONNS_PER_MESSAGE,
    PE_DATA_MAXLEN, PE_NAME_MAXLEN, SEQ_DATA_LEN, SYNC_GROUP_V4, SYNC_PORT, SYNC_PROTO_VER,
    TEMPLATE_DEFAULT_TIMEOUT, V0_HEADER_LEN, V0_RECORD_LEN, V1_HEADER_LEN, V4_RECORD_LEN,
    V6_RECORD_LEN, opt, record_len, records_per_message,
};

#[cfg(doc)]
use crate::conn::ConnEntry;
