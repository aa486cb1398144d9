//! The connection entry: what the table stores per flow or persistence template, and what
//! the sync stream replicates. 92 bytes, `Copy`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::addr::{Family, ip_to_raw, raw_to_ip};
use super::key::{ConnKey, META_TEMPLATE, PersistKind, Persistence};
use super::state::{
    Activity, Direction, StateChange, TcpDir, TcpState, proto, state_count, state_is_active,
    state_name, tcp_next_state,
};
use super::timeouts::AtomicTimeouts;

/// IPVS connection flag bits (`IP_VS_CONN_F_*`, uapi `linux/ip_vs.h`), same values. Only bits
/// 0..15 exist here because only those travel to backups in IPVS.
pub mod flags {
    pub const FWD_MASK: u16 = 0x0007;
    pub const MASQ: u16 = 0x0000;
    pub const LOCALNODE: u16 = 0x0001;
    pub const TUNNEL: u16 = 0x0002;
    pub const DROUTE: u16 = 0x0003;
    pub const BYPASS: u16 = 0x0004;
    /// Created by sync (from a peer), not by a local packet.
    pub const SYNC: u16 = 0x0020;
    /// Kernel-internal; never set by Fulcrum, listed for the codec.
    pub const HASHED: u16 = 0x0040;
    /// No reply seen yet: TCP uses the INPUT_ONLY table. Set for every non-NAT method.
    pub const NOOUTPUT: u16 = 0x0080;
    /// Counted in the real server's inactive connections.
    pub const INACTIVE: u16 = 0x0100;
    pub const OUT_SEQ: u16 = 0x0200;
    pub const IN_SEQ: u16 = 0x0400;
    pub const SEQ_MASK: u16 = 0x0600;
    pub const NO_CPORT: u16 = 0x0800;
    pub const TEMPLATE: u16 = 0x1000;
    pub const ONE_PACKET: u16 = 0x2000;
}

/// Forwarding method, with IPVS's codes (`conn_flags & IP_VS_CONN_F_FWD_MASK`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FwdMethod {
    /// NAT (masquerading).
    Masq = 0,
    Local = 1,
    Tunnel = 2,
    /// Direct routing.
    DirectRoute = 3,
    Bypass = 4,
}

impl FwdMethod {
    pub const fn from_flags(f: u16) -> Option<FwdMethod> {
        match f & flags::FWD_MASK {
            0 => Some(FwdMethod::Masq),
            1 => Some(FwdMethod::Local),
            2 => Some(FwdMethod::Tunnel),
            3 => Some(FwdMethod::DirectRoute),
            4 => Some(FwdMethod::Bypass),
            _ => None,
        }
    }

    /// `ipvsadm` forward column: Masq, Local, Tunnel, Route, Bypass.
    pub const fn ipvsadm_name(self) -> &'static str {
        match self {
            FwdMethod::Masq => "Masq",
            FwdMethod::Local => "Local",
            FwdMethod::Tunnel => "Tunnel",
            FwdMethod::DirectRoute => "Route",
            FwdMethod::Bypass => "Bypass",
        }
    }

    /// Connection flags a new entry to a destination with this method starts with, as
    /// `__ip_vs_update_dest` computes them: the method, INACTIVE, and NOOUTPUT unless NAT.
    pub const fn initial_flags(self) -> u16 {
        let mut f = self as u16 | flags::INACTIVE;
        if !matches!(self, FwdMethod::Masq) {
            f |= flags::NOOUTPUT;
        }
        f
    }
}

/// One connection or persistence template.
///
/// Layout (92 bytes, `repr(C)`, no padding): key 38 | dport 2 | daddr 16 | expires 4 |
/// timeout 4 | service 4 | fwmark 4 | n_control 4 | flags 2 | state 1 | dfamily 1 |
/// persist prefix 1 | persist kind 1 | origin 1 | pe 1 | client MAC 6 | synced-at 2.
///
/// Times are whole seconds on the caller's coarse clock (see `CoarseClock`): `expires` is the
/// last second the entry is alive, so it is removed once `now > expires` — never before its
/// timeout has run, at most a second (plus one sweep period) after.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct ConnEntry {
    pub(crate) key: ConnKey,
    dport: u16,
    daddr: [u8; 16],
    expires: u32,
    timeout: u32,
    service: u32,
    fwmark: u32,
    /// Templates: connections currently tied to this template (IPVS `n_control`).
    pub(crate) n_control: u32,
    flags: u16,
    state: u8,
    dfamily: u8,
    persist_prefix: u8,
    /// 0 = not controlled by a template, else `PersistKind`.
    persist_kind: u8,
    origin: u8,
    pe: u8,
    /// The link-layer source the flow's packets arrive from (the client, or its router):
    /// NAT replies go back to it.
    client_mac: [u8; 6],
    /// Low 16 bits of the second this entry last went to the sync stream (see `sync_due`).
    synced_at: u16,
}

const _: () = assert!(std::mem::size_of::<ConnEntry>() == 92);

/// Why an entry cannot go into the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Invalid {
    State,
    NatMixedFamily,
}

impl ConnEntry {
    /// A new connection to real server `dest` via `fwd`, for engine service index `service`.
    /// State NONE, not yet expiring (the table sets expiry from the first packet), flags as
    /// IPVS gives a fresh connection (`FwdMethod::initial_flags`). A template key passed here
    /// loses its template mark (use `ConnEntry::template` for templates).
    pub fn new(key: ConnKey, dest: SocketAddr, fwd: FwdMethod, service: u32) -> ConnEntry {
        let (dfamily, daddr) = ip_to_raw(dest.ip());
        let mut key = key;
        key.meta &= !META_TEMPLATE;
        ConnEntry {
            key,
            dport: dest.port(),
            daddr,
            expires: 0,
            timeout: 0,
            service,
            fwmark: 0,
            n_control: 0,
            flags: fwd.initial_flags(),
            state: 0,
            dfamily: dfamily.tag(),
            persist_prefix: 0,
            persist_kind: 0,
            origin: 0,
            pe: 0,
            client_mac: [0; 6],
            synced_at: 0,
        }
    }

    /// A persistence template (`key` from `ConnKey::template` or `Persistence::template_key`)
    /// pointing at `dest`, alive for `timeout` seconds (the service's persistence timeout).
    pub fn template(
        key: ConnKey,
        dest: SocketAddr,
        fwd: FwdMethod,
        service: u32,
        timeout: u32,
        now: u32,
    ) -> ConnEntry {
        let mut e = ConnEntry::new(key, dest, fwd, service);
        e.key.meta |= META_TEMPLATE;
        e.flags |= flags::TEMPLATE;
        e.set_expiry(now, timeout);
        e
    }

    pub fn key(&self) -> &ConnKey {
        &self.key
    }

    pub fn protocol(&self) -> u8 {
        self.key.proto
    }

    /// Family of the client/virtual side.
    pub fn family(&self) -> Family {
        self.key.family()
    }

    pub fn client(&self) -> SocketAddr {
        self.key.client()
    }

    pub fn virtual_addr(&self) -> SocketAddr {
        self.key.virtual_addr()
    }

    /// Real server address:port; its family may differ from the key's (tunnel to a v4 real
    /// server behind a v6 VIP).
    pub fn dest(&self) -> SocketAddr {
        SocketAddr::new(raw_to_ip(self.dest_family(), &self.daddr), self.dport)
    }

    pub fn dest_family(&self) -> Family {
        Family::from_tag(self.dfamily).unwrap_or(Family::V4)
    }

    pub fn dest_raw(&self) -> (&[u8; 16], u16) {
        (&self.daddr, self.dport)
    }

    pub fn set_dest(&mut self, dest: SocketAddr) {
        let (f, raw) = ip_to_raw(dest.ip());
        self.dfamily = f.tag();
        self.daddr = raw;
        self.dport = dest.port();
    }

    pub fn fwd_method(&self) -> FwdMethod {
        // The mask leaves 0..=7 and setters only store valid methods.
        FwdMethod::from_flags(self.flags).unwrap_or(FwdMethod::Masq)
    }

    /// IPVS connection flags (the template bit always matches the key).
    pub fn flags(&self) -> u16 {
        self.flags
    }

    pub fn has_flag(&self, f: u16) -> bool {
        self.flags & f == f
    }

    /// Replaces the flags (e.g. from a sync record). An invalid forwarding method is replaced
    /// by the current one, and TEMPLATE follows the key; both are fixed by the key/method.
    pub fn set_flags(&mut self, f: u16) {
        let fwd = if FwdMethod::from_flags(f).is_some() {
            f & flags::FWD_MASK
        } else {
            self.flags & flags::FWD_MASK
        };
        let tpl = if self.key.is_template() {
            flags::TEMPLATE
        } else {
            0
        };
        self.flags = (f & !(flags::FWD_MASK | flags::TEMPLATE)) | fwd | tpl;
    }

    pub fn is_template(&self) -> bool {
        self.key.is_template()
    }

    /// Counted in the real server's active connections (never true for templates).
    pub fn is_active(&self) -> bool {
        !self.is_template() && self.flags & flags::INACTIVE == 0
    }

    /// Protocol state (IPVS number; see `TcpState`, `SctpState`; 0 for UDP and templates).
    pub fn state(&self) -> u8 {
        self.state
    }

    pub fn tcp_state(&self) -> Option<TcpState> {
        if self.key.proto == proto::TCP && !self.is_template() {
            TcpState::from_u8(self.state)
        } else {
            None
        }
    }

    /// The `ipvsadm -Lnc` state column.
    pub fn state_name(&self) -> &'static str {
        state_name(self.key.proto, self.state, self.is_template())
    }

    /// Sets the raw protocol state (sync receiver, codecs). The table validates it on insert.
    /// The INACTIVE flag follows the state, as IPVS keeps it.
    pub fn set_state(&mut self, state: u8) {
        self.state = state;
        if !self.is_template() {
            if state_is_active(self.key.proto, state) {
                self.flags &= !flags::INACTIVE;
            } else {
                self.flags |= flags::INACTIVE;
            }
        }
    }

    /// Whether `state` exists for this entry's protocol (and kind: templates have one state).
    pub fn state_in_range(&self, state: u8) -> bool {
        state < state_count(self.key.proto, self.is_template())
    }

    /// Last second (on the table clock) this entry is alive.
    pub fn expires(&self) -> u32 {
        self.expires
    }

    /// Timeout last applied, in seconds (what an IPVS v1 sync record carries).
    pub fn timeout(&self) -> u32 {
        self.timeout
    }

    /// Seconds left at `now` (0 once expired).
    pub fn remaining(&self, now: u32) -> u32 {
        self.expires.saturating_sub(now)
    }

    /// Alive until `now + timeout` (saturating).
    pub fn set_expiry(&mut self, now: u32, timeout: u32) {
        self.timeout = timeout;
        self.expires = now.saturating_add(timeout);
    }

    /// Sets an absolute deadline directly (a replicated entry's deadline, already converted to
    /// this node's clock), keeping `timeout` as the nominal value for the wire.
    pub fn set_deadline(&mut self, expires: u32, timeout: u32) {
        self.expires = expires;
        self.timeout = timeout;
    }

    pub fn service(&self) -> u32 {
        self.service
    }

    pub fn set_service(&mut self, service: u32) {
        self.service = service;
    }

    /// Firewall mark of the packet that created the entry (0 = none).
    pub fn fwmark(&self) -> u32 {
        self.fwmark
    }

    pub fn set_fwmark(&mut self, fwmark: u32) {
        self.fwmark = fwmark;
    }

    /// Templates: how many connections this template currently controls.
    pub fn n_control(&self) -> u32 {
        self.n_control
    }

    /// Ties this connection to a persistence template; the table then counts it in the
    /// template's `n_control` while both exist and refreshes the template on insert.
    pub fn set_persistence(&mut self, p: Option<Persistence>) {
        match p {
            Some(p) if !self.is_template() => {
                self.persist_kind = p.kind as u8;
                self.persist_prefix = p.prefix_len;
            }
            _ => {
                self.persist_kind = 0;
                self.persist_prefix = 0;
            }
        }
    }

    pub fn persistence(&self) -> Option<Persistence> {
        PersistKind::from_u8(self.persist_kind).map(|k| Persistence::new(k, self.persist_prefix))
    }

    /// Key of the template controlling this connection, if it is tied to one.
    pub fn template_key(&self) -> Option<ConnKey> {
        self.persistence()
            .map(|p| p.template_key(&self.key, self.fwmark))
    }

    /// 0 = created locally; otherwise the sync peer slot it was replicated from (assigned by
    /// the sync receiver, which maps slots to node ids).
    pub fn origin(&self) -> u8 {
        self.origin
    }

    /// Marks the entry as replicated from peer slot `origin` (sets IPVS's SYNC flag).
    pub fn set_synced_from(&mut self, origin: u8) {
        self.origin = origin;
        self.flags |= flags::SYNC;
    }

    /// Marks the entry as local again (after a takeover the new owner owns its flows).
    pub fn set_local(&mut self) {
        self.origin = 0;
        self.flags &= !flags::SYNC;
    }

    /// Persistence-engine marker (0 = none). Only a marker: PE data (e.g. a SIP Call-ID, up to
    /// 255 bytes in IPVS) does not fit the per-entry budget.
    pub fn pe(&self) -> u8 {
        self.pe
    }

    pub fn set_pe(&mut self, pe: u8) {
        self.pe = pe;
    }

    /// Where the flow's packets come from on the link (all zero: unknown).
    pub fn client_mac(&self) -> [u8; 6] {
        self.client_mac
    }

    pub fn set_client_mac(&mut self, mac: [u8; 6]) {
        self.client_mac = mac;
    }

    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if self.state >= state_count(self.key.proto, self.is_template()) {
            return Err(Invalid::State);
        }
        if self.in_reverse_index() && self.dfamily != self.key.meta & 0x0F {
            return Err(Invalid::NatMixedFamily);
        }
        Ok(())
    }

    /// Whether this entry must be replicated now, after `change` at second `now`; if so it is
    /// stamped as synced. Due: on any state change; when the entry was replicated from a
    /// peer and now carries traffic here (a takeover adopts it: it becomes local); and when
    /// its deadline has moved on by a refresh period since the last sync, so a backup's copy
    /// never expires long before the owner's. One-packet flows are never synced (IPVS).
    pub(crate) fn sync_due(&mut self, change: &StateChange, now: u32) -> bool {
        if self.flags & flags::ONE_PACKET != 0 {
            return false;
        }
        let adopted = self.origin != 0;
        if adopted {
            self.set_local();
        }
        let elapsed = (now as u16).wrapping_sub(self.synced_at);
        let due = adopted || change.changed() || u32::from(elapsed) >= refresh_period(self.timeout);
        if due {
            self.synced_at = now as u16;
        }
        due
    }

    /// Stamps the entry as synced at `now`: on the sender, a new entry replicated right away; on
    /// a receiver, an entry just received (its age then tells stale copies from fresh ones).
    pub fn mark_synced(&mut self, now: u32) {
        self.synced_at = now as u16;
    }

    /// Seconds since the entry was last stamped by `mark_synced` (modulo 65536).
    pub fn synced_age(&self, now: u32) -> u32 {
        u32::from((now as u16).wrapping_sub(self.synced_at))
    }

    /// NAT connections are found by their replies too.
    pub(crate) fn in_reverse_index(&self) -> bool {
        !self.is_template() && self.flags & flags::FWD_MASK == flags::MASQ
    }

    /// State transition and expiry refresh for one packet (kernel `set_tcp_state` and the
    /// single-state protocols' `state_transition`).
    pub(crate) fn apply_packet(
        &mut self,
        dir: Direction,
        tcp_flags: u8,
        now: u32,
        timeouts: &AtomicTimeouts,
    ) -> StateChange {
        let old = self.state;
        if self.is_template() {
            // Templates have no protocol state; traffic only refreshes them.
            let t = self.timeout;
            self.set_expiry(now, t);
            return StateChange {
                old,
                new: old,
                activity: Activity::Unchanged,
                sync: false,
            };
        }
        let was_active = self.is_active();
        if self.key.proto == proto::TCP {
            let tdir = match dir {
                Direction::Output => {
                    // A reply proves the path back through us: leave INPUT_ONLY for good.
                    self.flags &= !flags::NOOUTPUT;
                    TcpDir::Output
                }
                Direction::Input if self.flags & flags::NOOUTPUT != 0 => TcpDir::InputOnly,
                Direction::Input => TcpDir::Input,
            };
            let cur = TcpState::from_u8(self.state).unwrap_or(TcpState::None);
            self.set_state(tcp_next_state(cur, tdir, tcp_flags) as u8);
        } else if dir == Direction::Output {
            self.flags &= !flags::NOOUTPUT;
        }
        let timeout = timeouts.for_state(self.key.proto, self.state);
        self.set_expiry(now, timeout);
        StateChange {
            old,
            new: self.state,
            activity: activity(was_active, self.is_active()),
            sync: false,
        }
    }

    /// A state set by the caller (SCTP, control code), with the matching timeout.
    pub(crate) fn apply_state(
        &mut self,
        state: u8,
        now: u32,
        timeouts: &AtomicTimeouts,
    ) -> StateChange {
        let old = self.state;
        let was_active = self.is_active();
        self.set_state(state);
        self.set_expiry(now, timeouts.for_state(self.key.proto, self.state));
        StateChange {
            old,
            new: self.state,
            activity: activity(was_active, self.is_active()),
            sync: false,
        }
    }

    /// Slot filler for the table's free list: `next` is the next free slot + 1 (0 = end).
    pub(crate) const fn free_slot(next: u32) -> ConnEntry {
        ConnEntry {
            key: ConnKey::FREE,
            dport: 0,
            daddr: [0; 16],
            expires: 0,
            timeout: 0,
            service: 0,
            fwmark: 0,
            n_control: next,
            flags: 0,
            state: 0,
            dfamily: 0,
            persist_prefix: 0,
            persist_kind: 0,
            origin: 0,
            pe: 0,
            client_mac: [0; 6],
            synced_at: 0,
        }
    }

    pub(crate) fn is_free(&self) -> bool {
        self.key.is_free()
    }

    pub(crate) fn set_expires_raw(&mut self, expires: u32) {
        self.expires = expires;
    }

    pub(crate) fn dest_ip(&self) -> IpAddr {
        raw_to_ip(self.dest_family(), &self.daddr)
    }
}

/// How long a flow's deadline may run ahead of its backups' copies: an eighth of its
/// timeout, between 1 s and 60 s (a 900 s established TCP flow refreshes at most once a
/// minute, a busy UDP flow with 300 s every 37 s).
pub const fn refresh_period(timeout: u32) -> u32 {
    let p = timeout / 8;
    if p < 1 {
        1
    } else if p > 60 {
        60
    } else {
        p
    }
}

fn activity(was: bool, now: bool) -> Activity {
    match (was, now) {
        (false, true) => Activity::BecameActive,
        (true, false) => Activity::BecameInactive,
        _ => Activity::Unchanged,
    }
}

impl fmt::Debug for ConnEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_free() {
            return f.write_str("ConnEntry(free)");
        }
        f.debug_struct("ConnEntry")
            .field("key", &self.key)
            .field("dest", &SocketAddr::new(self.dest_ip(), self.dport))
            .field("fwd", &self.fwd_method())
            .field("state", &self.state_name())
            .field("flags", &format_args!("{:#06x}", self.flags))
            .field("expires", &self.expires)
            .field("timeout", &self.timeout)
            .field("service", &self.service)
            .field("fwmark", &self.fwmark)
            .field("n_control", &self.n_control)
            .field("persistence", &self.persistence())
            .field("origin", &self.origin)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::key::TemplateTarget;
    use crate::conn::state::tcp_flags::*;
    use crate::conn::timeouts::Timeouts;

    #[test]
    fn layout_is_92_bytes() {
        assert_eq!(std::mem::size_of::<ConnEntry>(), 92);
        assert_eq!(std::mem::align_of::<ConnEntry>(), 4);
    }

    #[test]
    fn new_entry_flags_follow_ipvs() {
        let k = ConnKey::v4(proto::TCP, [198, 51, 100, 1], 1234, [192, 0, 2, 1], 80);
        let d: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        let dr = ConnEntry::new(k, d, FwdMethod::DirectRoute, 3);
        assert_eq!(
            dr.flags(),
            flags::DROUTE | flags::INACTIVE | flags::NOOUTPUT
        );
        assert_eq!(dr.fwd_method(), FwdMethod::DirectRoute);
        assert!(!dr.is_active());
        let nat = ConnEntry::new(k, d, FwdMethod::Masq, 3);
        assert_eq!(nat.flags(), flags::INACTIVE);
        assert!(nat.in_reverse_index());
        assert!(!dr.in_reverse_index());
        assert_eq!(nat.dest(), d);
        assert_eq!(nat.state_name(), "NONE");
    }

    #[test]
    fn apply_packet_moves_activity_and_expiry() {
        let t = AtomicTimeouts::new(&Timeouts::default());
        let k = ConnKey::v4(proto::TCP, [198, 51, 100, 1], 1234, [192, 0, 2, 1], 80);
        let mut e = ConnEntry::new(k, "10.0.0.2:80".parse().unwrap(), FwdMethod::Tunnel, 0);
        let c = e.apply_packet(Direction::Input, SYN, 100, &t);
        assert_eq!(c.new, TcpState::SynRecv as u8);
        assert_eq!(c.activity, Activity::BecameActive);
        assert_eq!(e.expires(), 160);
        let c = e.apply_packet(Direction::Input, FIN | ACK, 101, &t);
        // INPUT_ONLY: a FIN from the client of an established-or-not flow.
        assert_eq!(c.new, TcpState::TimeWait as u8);
        assert_eq!(c.activity, Activity::BecameInactive);
        assert_eq!(e.expires(), 221);
    }

    #[test]
    fn flags_setter_keeps_invariants() {
        let t = ConnKey::template(
            proto::TCP,
            "198.51.100.1".parse().unwrap(),
            24,
            TemplateTarget::Fwmark(1),
        )
        .unwrap();
        let mut e = ConnEntry::template(
            t,
            "10.0.0.2:0".parse().unwrap(),
            FwdMethod::DirectRoute,
            1,
            300,
            5,
        );
        assert!(e.has_flag(flags::TEMPLATE));
        e.set_flags(0x0007); // invalid method, no template bit
        assert!(e.has_flag(flags::TEMPLATE));
        assert_eq!(e.fwd_method(), FwdMethod::DirectRoute);
        assert_eq!(e.expires(), 305);
        assert!(!e.is_active());
    }
}
