//! Between sync records and connection-table entries.

use std::net::IpAddr;

use crate::conn::state::state_count;
use crate::conn::{ConnEntry, ConnKey, Family, FwdMethod, Persistence, Timeouts, flags};

use super::record::SyncConn;
use super::wire::{BACKUP_FLAGS_MASK, TEMPLATE_DEFAULT_TIMEOUT};

/// Why an entry or record cannot be converted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// An IPv6 VIP with an IPv4 real server (or the reverse). A v1 record has one family
    /// bit for all three addresses, so it cannot represent this.
    #[error(
        "mixed address families (client {client:?}, virtual {virtual_addr:?}, real server {dest:?}) cannot be carried by IPVS sync v1"
    )]
    MixedFamily {
        client: Family,
        virtual_addr: Family,
        dest: Family,
    },
    #[error("forwarding method {0} is not an IPVS method (0..=4)")]
    UnknownForwarding(u8),
    #[error("state {state} is out of range for protocol {protocol} (template: {template})")]
    InvalidState {
        protocol: u8,
        state: u16,
        template: bool,
    },
    /// The table has no room for persistence-engine data. A template keyed by PE data (a SIP
    /// Call-ID) would become a plain client-address template and persist the wrong flows.
    #[error("persistence templates with persistence-engine data cannot be stored in the table")]
    TemplatePeData,
}

/// What a record does not say about the entry it becomes.
#[derive(Clone, Copy, Debug)]
pub struct ImportContext<'a> {
    /// Engine service index for the entry. The caller finds it from the record's virtual
    /// address, protocol or fwmark.
    pub service: u32,
    /// Current second on the table clock. The entry expires `timeout` seconds later.
    pub now: u32,
    /// Sync peer slot recorded as the entry's origin (see `ConnEntry::set_synced_from`).
    pub origin: u8,
    /// The service's persistence, to tie connections to their template. IPVS records carry no
    /// such link. Ignored for templates.
    pub persistence: Option<Persistence>,
    /// Per-state timeouts for records that carry none (all v0 records, and v1 timeout 0), as
    /// the kernel backup uses its protocol tables.
    pub timeouts: &'a Timeouts,
}

impl SyncConn {
    /// The record a kernel master would send for `entry`, with `timeout_s` in the timeout
    /// field.
    ///
    /// The kernel sends the nominal timeout (`entry.timeout()`), and the backup restarts that
    /// timer when the record arrives. Passing `entry.remaining(now)` instead makes the backup
    /// expire the entry when the master does.
    ///
    /// The flags drop HASHED, as the kernel does, and the SEQ bits, because the table keeps no
    /// sequence deltas to go with them. No PE option is produced, because the table holds no PE
    /// data. Whether the entry should be synced at all (state, ONE_PACKET,
    /// `sync_threshold`) is the caller's decision.
    ///
    /// Fails with `MixedFamily` when the real server's family differs from the VIP's.
    pub fn from_entry(entry: &ConnEntry, timeout_s: u32) -> Result<SyncConn, ConvertError> {
        if entry.dest_family() != entry.family() {
            return Err(ConvertError::MixedFamily {
                client: entry.family(),
                virtual_addr: entry.family(),
                dest: entry.dest_family(),
            });
        }
        Ok(SyncConn {
            protocol: entry.protocol(),
            flags: u32::from(entry.flags() & !(flags::HASHED | flags::SEQ_MASK)),
            state: u16::from(entry.state()),
            client: entry.client(),
            virtual_addr: entry.virtual_addr(),
            dest: entry.dest(),
            fwmark: entry.fwmark(),
            timeout_s,
            seq: None,
            pe: None,
        })
    }

    /// The table entry a kernel backup would create from this record.
    ///
    /// - The flags are limited to `IP_VS_CONN_F_BACKUP_MASK`, minus the SEQ bits: the table
    ///   does not rewrite TCP sequence numbers, so the sequence deltas are dropped. A NAT flow
    ///   that relies on them (the IPVS FTP helper) cannot survive on Fulcrum.
    /// - SYNC is set and the origin is recorded. INACTIVE follows the state, as the table
    ///   keeps it.
    /// - A timeout of 0 means the state's timeout from `ctx.timeouts`, or 3 minutes for a
    ///   template, as in the kernel.
    /// - A template keeps its template key: masked client with port 0, and for fwmark services
    ///   protocol 0 with the fwmark in the virtual address.
    /// - PE data is dropped for connections, where the kernel drops it too. For templates it
    ///   is an error ([`ConvertError::TemplatePeData`]).
    pub fn to_entry(&self, ctx: &ImportContext<'_>) -> Result<ConnEntry, ConvertError> {
        let family = self.family().ok_or(ConvertError::MixedFamily {
            client: Family::of(&self.client.ip()),
            virtual_addr: Family::of(&self.virtual_addr.ip()),
            dest: Family::of(&self.dest.ip()),
        })?;
        // The mask keeps bits 0..15 only, so the value fits the table's 16-bit flags.
        let wire = (self.flags & BACKUP_FLAGS_MASK) as u16 & !flags::SEQ_MASK;
        let fwd = FwdMethod::from_flags(wire).ok_or(ConvertError::UnknownForwarding(
            (wire & flags::FWD_MASK) as u8,
        ))?;
        let template = self.is_template();
        if template && self.pe.is_some() {
            return Err(ConvertError::TemplatePeData);
        }
        let state = u8::try_from(self.state)
            .ok()
            .filter(|&s| s < state_count(self.protocol, template))
            .ok_or(ConvertError::InvalidState {
                protocol: self.protocol,
                state: self.state,
                template,
            })?;
        let timeout = match self.timeout_s {
            0 if template => TEMPLATE_DEFAULT_TIMEOUT,
            0 => ctx.timeouts.for_state(self.protocol, state),
            t => t,
        };
        let key = ConnKey::from_raw(
            self.protocol,
            family,
            raw(self.client.ip()),
            self.client.port(),
            raw(self.virtual_addr.ip()),
            self.virtual_addr.port(),
            template,
        );
        let mut e = if template {
            ConnEntry::template(key, self.dest, fwd, ctx.service, timeout, ctx.now)
        } else {
            let mut e = ConnEntry::new(key, self.dest, fwd, ctx.service);
            e.set_expiry(ctx.now, timeout);
            e.set_persistence(ctx.persistence);
            e
        };
        e.set_flags(wire);
        e.set_state(state);
        e.set_fwmark(self.fwmark);
        e.set_synced_from(ctx.origin);
        Ok(e)
    }
}

/// The table's 16-byte address form: IPv4 in the first four bytes.
fn raw(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => {
            let mut r = [0u8; 16];
            r[..4].copy_from_slice(&a.octets());
            r
        }
        IpAddr::V6(a) => a.octets(),
    }
}
