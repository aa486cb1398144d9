//! Kernel constants of the sync protocol (`ip_vs_sync.c`, uapi `linux/ip_vs.h`).
//!
//! Layouts, all fields big-endian:
//!
//! ```text
//! v1 header (8):   0 reserved=0 | 1 syncid | 2 size:16 | 4 nr_conns | 5 version=1 | 6 spare:16=0
//! v1 record:       0 type (bit0 INET6) | 1 protocol | 2 ver_size:16 (version<<12 | length)
//!                  4 flags:32 | 8 state:16 | 10 cport | 12 vport | 14 dport | 16 fwmark:32
//!                  20 timeout:32 (s) | 24 caddr, vaddr, daddr: 4 bytes each (record 36)
//!                  or 16 bytes each (record 72)
//!                  then options: type:8 len:8 data[len]; next record at a 32-bit boundary
//! v0 header (4):   0 nr_conns | 1 syncid | 2 size:16
//! v0 record (24):  0 reserved | 1 protocol | 2 cport | 4 vport | 6 dport | 8 caddr
//!                  12 vaddr | 16 daddr | 20 flags:16 | 22 state:16 [+ 24 bytes seq if SEQ flags]
//! ```

use std::net::Ipv4Addr;

use crate::conn::{Family, flags};

/// `SYNC_PROTO_VER`: the `version` byte of a v1 header.
pub const SYNC_PROTO_VER: u8 = 1;
/// `IP_VS_SYNC_PORT`: the default UDP port (sync thread `id` uses `port + id`).
pub const SYNC_PORT: u16 = 8848;
/// `IP_VS_SYNC_GROUP`: the default IPv4 multicast group.
pub const SYNC_GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 81);

/// Default master `sync_maxlen` over IPv4: 1500 − 20 (IPv4) − 8 (UDP). The kernel never
/// defaults above an MTU of 1500, and `ipvsadm --help` prints this value.
pub const DEFAULT_SYNC_MAXLEN: u16 = 1472;
/// Default master `sync_maxlen` when the multicast group is IPv6: 1500 − 40 − 8.
pub const DEFAULT_SYNC_MAXLEN_V6: u16 = 1452;

/// `struct ip_vs_sync_mesg` (v1 header).
pub const V1_HEADER_LEN: usize = 8;
/// `struct ip_vs_sync_mesg_v0`.
pub const V0_HEADER_LEN: usize = 4;
/// `struct ip_vs_sync_v4`, options excluded.
pub const V4_RECORD_LEN: usize = 36;
/// `struct ip_vs_sync_v6`, options excluded.
pub const V6_RECORD_LEN: usize = 72;
/// `struct ip_vs_sync_conn_v0` (`SIMPLE_CONN_SIZE`).
pub const V0_RECORD_LEN: usize = 24;
/// `struct ip_vs_sync_conn_options`: `in_seq` and `out_seq`, 3 × u32 each.
pub const SEQ_DATA_LEN: usize = 24;
/// `IP_VS_PEDATA_MAXLEN`.
pub const PE_DATA_MAXLEN: usize = 255;
/// `IP_VS_PENAME_MAXLEN`.
pub const PE_NAME_MAXLEN: usize = 16;
/// `nr_conns` is one byte. The kernel does not check it (large `sync_maxlen` values can
/// wrap it), so the encoder starts a new message after this many records.
pub const MAX_CONNS_PER_MESSAGE: usize = 255;
/// Timeout the kernel backup gives a template whose record carries none (v0, or a v1 timeout
/// of 0): `3*60*HZ`.
pub const TEMPLATE_DEFAULT_TIMEOUT: u32 = 180;

/// `IP_VS_CONN_F_BACKUP_MASK`: the flags a backup takes from a record for a new entry
/// (forwarding method, NOOUTPUT, INACTIVE, SEQ bits, NO_CPORT, TEMPLATE).
pub const BACKUP_FLAGS_MASK: u32 = (flags::FWD_MASK
    | flags::NOOUTPUT
    | flags::INACTIVE
    | flags::SEQ_MASK
    | flags::NO_CPORT
    | flags::TEMPLATE) as u32;

/// Option (TLV) types that can follow a v1 record's addresses.
pub mod opt {
    /// `IPVS_OPT_SEQ_DATA`: `in_seq` then `out_seq`, 24 bytes.
    pub const SEQ_DATA: u8 = 1;
    /// `IPVS_OPT_PE_DATA`: persistence-engine data, 1..=255 bytes.
    pub const PE_DATA: u8 = 2;
    /// `IPVS_OPT_PE_NAME`: persistence-engine name (e.g. `sip`), 1..=16 bytes.
    pub const PE_NAME: u8 = 3;
    /// `IPVS_OPT_PARAM`: reserved, never sent by the kernel.
    pub const PARAM: u8 = 7;
    /// `IPVS_OPT_F_PARAM` (1 << 6). An option with this bit set may be skipped if unknown. An
    /// unknown option without it is mandatory, and the record is dropped.
    pub const F_OPTIONAL: u8 = 1 << (PARAM - 1);
}

/// `STYPE_F_INET6`: bit 0 of a v1 record's `type` byte.
pub(crate) const TYPE_F_INET6: u8 = 1;
/// `SVER_SHIFT` / `SVER_MASK`: `ver_size` is a 4-bit record version over a 12-bit length.
pub(crate) const SVER_SHIFT: u16 = 12;
pub(crate) const SVER_MASK: u16 = 0x0fff;

/// Size of one v1 record without options: 36 bytes for IPv4, 72 for IPv6.
pub const fn record_len(family: Family) -> usize {
    match family {
        Family::V4 => V4_RECORD_LEN,
        Family::V6 => V6_RECORD_LEN,
    }
}

/// How many option-less v1 records of `family` fit in one message of `max_len` bytes (40
/// IPv4 or 20 IPv6 at the default 1472). At least 1, because a record bigger than
/// `max_len` is still sent alone; at most [`MAX_CONNS_PER_MESSAGE`].
pub const fn records_per_message(family: Family, max_len: u16) -> usize {
    let rec = record_len(family);
    // Option-less records are multiples of four bytes long, so no padding falls between them.
    let fit = (max_len as usize).saturating_sub(V1_HEADER_LEN) / rec;
    if fit == 0 {
        1
    } else if fit > MAX_CONNS_PER_MESSAGE {
        MAX_CONNS_PER_MESSAGE
    } else {
        fit
    }
}
