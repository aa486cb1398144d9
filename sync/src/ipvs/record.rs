//! The decoded form of sync records and messages.

use std::net::SocketAddr;

use crate::conn::{Family, flags};

use super::wire::{SEQ_DATA_LEN, record_len};

/// One direction's TCP sequence adjustment (`struct ip_vs_seq`). IPVS keeps these for NAT
/// connections whose payload an application helper resized (the FTP helper), so that it can
/// rewrite later sequence numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqAdjust {
    pub init_seq: u32,
    pub delta: u32,
    pub previous_delta: u32,
}

/// The `IPVS_OPT_SEQ_DATA` option (or the v0 trailer when the SEQ flags are set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqData {
    pub in_seq: SeqAdjust,
    pub out_seq: SeqAdjust,
}

/// Persistence-engine state: the engine's name (`IPVS_OPT_PE_NAME`, e.g. `sip`) and its data
/// (`IPVS_OPT_PE_DATA`, e.g. a SIP Call-ID).
///
/// They form one field because the kernel treats them as a pair. It sends the name only
/// together with data, drops a record that has data but no name, and ignores a name that
/// comes without data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeData {
    /// 1..=16 bytes on the wire.
    pub name: String,
    /// 1..=255 bytes on the wire.
    pub data: Vec<u8>,
}

/// One connection or persistence-template record, with fields in host order.
///
/// The address family is not stored separately: it is the family the three addresses share,
/// so a record cannot claim one family while holding addresses of another (see
/// [`SyncConn::family`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConn {
    /// IP protocol number (`IPPROTO_*`). Fwmark templates use 0 (`IPPROTO_IP`).
    pub protocol: u8,
    /// `IP_VS_CONN_F_*` exactly as on the wire (v0's 16 bits are zero-extended). The kernel
    /// backup keeps only [`BACKUP_FLAGS_MASK`](super::BACKUP_FLAGS_MASK) of them.
    pub flags: u32,
    /// Protocol state (IPVS numbering), or the template state for templates.
    pub state: u16,
    /// Client address:port. Templates carry the masked client address and port 0.
    pub client: SocketAddr,
    /// Virtual address:port. Fwmark templates hold the fwmark in the address's first four
    /// bytes, with port 0.
    pub virtual_addr: SocketAddr,
    /// Real server address:port.
    pub dest: SocketAddr,
    /// Firewall mark of the packet that created the entry (0 in v0).
    pub fwmark: u32,
    /// Timeout in seconds. 0 (always the case in v0) means "use the receiver's default for the
    /// state".
    pub timeout_s: u32,
    pub seq: Option<SeqData>,
    pub pe: Option<PeData>,
}

impl SyncConn {
    /// The family of the three addresses, or `None` if they differ. A v1 record cannot
    /// represent that case.
    pub fn family(&self) -> Option<Family> {
        let f = Family::of(&self.client.ip());
        let same = Family::of(&self.virtual_addr.ip()) == f && Family::of(&self.dest.ip()) == f;
        same.then_some(f)
    }

    /// Whether this is a persistence template (`IP_VS_CONN_F_TEMPLATE`).
    pub fn is_template(&self) -> bool {
        self.flags & u32::from(flags::TEMPLATE) != 0
    }

    /// The v1 record's length with its options and without trailing alignment padding. This
    /// is the value of its `ver_size` length field.
    pub fn encoded_len(&self) -> usize {
        let family = Family::of(&self.client.ip());
        let mut len = record_len(family);
        if self.seq.is_some() {
            len += 2 + SEQ_DATA_LEN;
        }
        if let Some(pe) = &self.pe {
            len += 2 + pe.data.len() + 2 + pe.name.len();
        }
        len
    }
}

/// One datagram's worth of records, and the SyncID that filters it on the backups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncMessage {
    /// 0..=255. A backup configured with SyncID 0 accepts every SyncID.
    pub syncid: u8,
    pub conns: Vec<SyncConn>,
}
