//! What the engine does with one frame: answer ARP/NDP for owned VIPs, schedule new flows,
//! forward known ones (DR, NAT, tunnel), NAT the replies, route ICMP errors to their flow.
//!
//! Runs on the packet threads: no allocation, no await, no lock beyond one connection-table
//! shard and the neighbour table's read lock.

use std::cell::RefCell;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use fulcrum_sync::conn::Activity;
use fulcrum_sync::conn::ConnEntry;
use fulcrum_sync::conn::ConnKey;
use fulcrum_sync::conn::ConnTable;
use fulcrum_sync::conn::Direction;
use fulcrum_sync::conn::FwdMethod;
use fulcrum_sync::conn::InsertError;
use fulcrum_sync::conn::PersistKind;
use fulcrum_sync::conn::Persistence;
use fulcrum_sync::conn::ReplyKey;
use fulcrum_sync::conn::StateChange;

use super::neigh::Neighbours;
use super::packet;
use super::packet::EncapError;
use super::packet::Icmp;
use super::packet::IcmpKind;
use super::packet::IcmpNat;
use super::packet::Ip;
use super::packet::L4;
use super::packet::Mac;
use super::packet::Net;
use super::packet::Packet;
use super::packet::Ports;
use super::packet::Tunnel;
use super::sched::Dest;
use super::sched::SchedInput;
use super::services::ServiceRt;
use super::services::Snapshot;
use crate::model::Forward;

/// Why a frame was dropped; each has a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    Malformed,
    NotOurs,
    NoService,
    NotSyn,
    NoRealServer,
    TableFull,
    NoNeighbour,
    TtlExpired,
    TooBig,
    Fragment,
    NoConnection,
    NoTunnelSource,
    Rewrite,
    TxFull,
}

impl DropReason {
    pub const ALL: [DropReason; 14] = [
        DropReason::Malformed,
        DropReason::NotOurs,
        DropReason::NoService,
        DropReason::NotSyn,
        DropReason::NoRealServer,
        DropReason::TableFull,
        DropReason::NoNeighbour,
        DropReason::TtlExpired,
        DropReason::TooBig,
        DropReason::Fragment,
        DropReason::NoConnection,
        DropReason::NoTunnelSource,
        DropReason::Rewrite,
        DropReason::TxFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NotOurs => "not_ours",
            DropReason::NoService => "no_service",
            DropReason::NotSyn => "not_syn",
            DropReason::NoRealServer => "no_real_server",
            DropReason::TableFull => "table_full",
            DropReason::NoNeighbour => "no_neighbour",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::TooBig => "too_big",
            DropReason::Fragment => "fragment",
            DropReason::NoConnection => "no_connection",
            DropReason::NoTunnelSource => "no_tunnel_source",
            DropReason::Rewrite => "rewrite",
            DropReason::TxFull => "tx_full",
        }
    }
}

#[derive(Debug, Default)]
pub struct Drops([AtomicU64; 14]);

impl Drops {
    pub fn count(&self, d: DropReason) {
        self.0[d as usize].fetch_add(1, Relaxed);
    }

    pub fn get(&self, d: DropReason) -> u64 {
        self.0[d as usize].load(Relaxed)
    }
}

/// What to do with the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Rewritten in place: send it.
    Send,
    /// A new frame of this length was written into the scratch buffer: send that instead.
    SendScratch(usize),
    /// Nothing to send (learned from it, or it needs no answer).
    Consumed,
    Drop(DropReason),
}

/// The director's own link: its MAC, addresses (ARP/NS sources, tunnel outer sources), MTU.
#[derive(Debug, Clone)]
pub struct Local {
    pub mac: Mac,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub mtu: u16,
}

pub struct Ctx<'a> {
    pub snap: &'a Snapshot,
    pub table: &'a ConnTable,
    pub neigh: &'a Neighbours,
    pub drops: &'a Drops,
    pub local: &'a Local,
    /// Coarse seconds for the connection table; the instant for schedulers.
    pub now: u32,
    pub instant: Instant,
    pub expire_nodest_conn: bool,
    /// Changes for the sync stream, handed over by the worker after each block (capacity
    /// reserved: a full vector drops the change rather than allocate).
    pub sync: &'a RefCell<Vec<ConnEntry>>,
    /// Whether a sync sender takes changes at all.
    pub sync_on: bool,
    pub sync_dropped: &'a AtomicU64,
}

/// Queues `e` for the backups.
#[inline]
fn emit(ctx: &Ctx, e: &ConnEntry) {
    if !ctx.sync_on {
        return;
    }
    let mut v = ctx.sync.borrow_mut();
    if v.len() < v.capacity() {
        v.push(*e);
    } else {
        ctx.sync_dropped.fetch_add(1, Relaxed);
    }
}

fn fwd_method(f: Forward) -> FwdMethod {
    match f {
        Forward::Dr => FwdMethod::DirectRoute,
        Forward::Nat => FwdMethod::Masq,
        Forward::Tun => FwdMethod::Tunnel,
    }
}

/// Keeps a real server's active/inactive counters in step with a state change.
fn account(dest: &Dest, change: &StateChange) {
    match change.activity {
        Activity::Unchanged => {}
        Activity::BecameActive => dest.conn_activated(),
        Activity::BecameInactive => dest.conn_deactivated(),
    }
}

/// `csum_not_ready`: the frame's transport checksum is a partial one left by an offloading
/// sender (veth); it is completed first, as the rewrites update checksums incrementally.
pub fn process(frame: &mut [u8], csum_not_ready: bool, scratch: &mut [u8], ctx: &Ctx) -> Verdict {
    let pkt = match packet::classify(frame) {
        Ok(p) => p,
        Err(_) => return Verdict::Drop(DropReason::Malformed),
    };
    if csum_not_ready && pkt.ip().is_some() && packet::fill_l4_checksum(frame, &pkt).is_err() {
        return Verdict::Drop(DropReason::Malformed);
    }
    match &pkt.net {
        Net::Arp(arp) => {
            ctx.neigh
                .learn(IpAddr::V4(arp.sender_ip), arp.sender_mac, ctx.instant);
            if arp.is_request() && ctx.snap.answers(&IpAddr::V4(arp.target_ip)) {
                return match packet::build_arp_reply(&pkt, scratch, ctx.local.mac) {
                    Ok(n) => Verdict::SendScratch(n),
                    Err(_) => Verdict::Drop(DropReason::Malformed),
                };
            }
            Verdict::Consumed
        }
        Net::Ip(ip) => {
            if let L4::Icmp(Icmp { kind, .. }) = &ip.l4 {
                match kind {
                    IcmpKind::NeighborSolicitation { target, .. } => {
                        if ctx.snap.answers(&IpAddr::V6(*target)) {
                            return match packet::build_neighbor_advertisement(
                                &pkt,
                                scratch,
                                ctx.local.mac,
                            ) {
                                Ok(n) => Verdict::SendScratch(n),
                                Err(_) => Verdict::Drop(DropReason::Malformed),
                            };
                        }
                        return Verdict::Consumed;
                    }
                    IcmpKind::NeighborAdvertisement {
                        target, target_mac, ..
                    } => {
                        if let Some(mac) = target_mac {
                            ctx.neigh.learn(IpAddr::V6(*target), *mac, ctx.instant);
                        }
                        return Verdict::Consumed;
                    }
                    _ => {}
                }
            }
            if ctx.snap.owns(&ip.dst) {
                inbound(frame, scratch, &pkt, ip, ctx)
            } else {
                outbound(frame, &pkt, ip, ctx)
            }
        }
        Net::Other => Verdict::Drop(DropReason::NotOurs),
    }
}

fn ports_of(ip: &Ip) -> Option<(Ports, u8)> {
    match &ip.l4 {
        L4::Tcp(t) => Some((t.ports, t.flags.0)),
        L4::Udp(u) => Some((u.ports, 0)),
        L4::Sctp(s) => Some((s.ports, 0)),
        _ => None,
    }
}

/// A packet to an owned VIP: a new or known flow, or an ICMP error about one of our replies.
fn inbound(frame: &mut [u8], scratch: &mut [u8], pkt: &Packet, ip: &Ip, ctx: &Ctx) -> Verdict {
    if let L4::Icmp(Icmp {
        kind: IcmpKind::Error { inner, .. },
        ..
    }) = &ip.l4
    {
        // It quotes a packet the VIP sent: inner source is the VIP side, destination the client.
        let Some(ports) = inner.ports else {
            return Verdict::Drop(DropReason::NoConnection);
        };
        let key = ConnKey::new(
            inner.proto,
            SocketAddr::new(inner.dst, ports.dst),
            SocketAddr::new(inner.src, ports.src),
        );
        let Some(entry) = key.and_then(|k| ctx.table.lookup(&k)) else {
            return Verdict::Drop(DropReason::NoConnection);
        };
        return forward(frame, scratch, pkt, ip, &entry, ctx, true);
    }
    if ip.fragment.is_some_and(|f| f.offset > 0) {
        // Non-first fragments carry no ports to find their flow by.
        return Verdict::Drop(DropReason::Fragment);
    }
    let Some((ports, flags)) = ports_of(ip) else {
        return Verdict::Drop(DropReason::NoService);
    };
    let client = SocketAddr::new(ip.src, ports.src);
    let virt = SocketAddr::new(ip.dst, ports.dst);
    let Some(key) = ConnKey::new(ip.proto, client, virt) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    let entry = match ctx
        .table
        .update_on_packet(&key, Direction::Input, flags, ctx.now)
    {
        Some((entry, change)) => {
            if let Some(d) = dest_of(ctx.snap, &entry) {
                account(d, &change);
            }
            if change.sync {
                emit(ctx, &entry);
            }
            entry
        }
        None => match new_flow(&key, pkt, ip, ports, flags, ctx) {
            Ok(e) => e,
            Err(d) => return Verdict::Drop(d),
        },
    };
    forward(frame, scratch, pkt, ip, &entry, ctx, false)
}

/// The real server a flow is bound to, also after it left the config (IPVS's trash).
pub(super) fn dest_of<'s>(
    snap: &'s Snapshot,
    entry: &ConnEntry,
) -> Option<&'s std::sync::Arc<Dest>> {
    let addr = entry.dest();
    snap.by_id(entry.service())
        .and_then(|s| s.real(&addr))
        .map(|r| &r.dest)
        .or_else(|| snap.retired(entry.service(), &addr))
}

fn new_flow(
    key: &ConnKey,
    pkt: &Packet,
    ip: &Ip,
    ports: Ports,
    flags: u8,
    ctx: &Ctx,
) -> Result<ConnEntry, DropReason> {
    let svc = ctx
        .snap
        .lookup(ip.proto, ip.dst, ports.dst)
        .ok_or(DropReason::NoService)?;
    // As IPVS: a TCP flow starts with a SYN; anything else for an unknown flow is dropped.
    // Except with Maglev hashing: every director builds the same table from the same config,
    // so a flow too new to have been synced before a takeover hashes to the real server that
    // already carries it, and the new owner picks it up mid-stream (like IPVS's sloppy_tcp).
    if ip.proto == packet::proto::TCP
        && (flags & 0x02 == 0 || flags & (0x10 | 0x04) != 0)
        && !(svc.svc.scheduler == crate::model::Scheduler::Mh && flags & 0x04 == 0)
    {
        return Err(DropReason::NotSyn);
    }
    let persistence = svc.svc.persistence.map(|p| {
        let kind = match &svc.svc.key {
            crate::model::ServiceKey::Addr { port: 0, .. } => PersistKind::AnyPort,
            _ => PersistKind::Port,
        };
        (Persistence::new(kind, p.prefix), p.timeout_s)
    });
    let template_key = persistence.map(|(p, _)| p.template_key(key, 0));
    let mut idx = None;
    if let Some(tk) = &template_key
        && let Some(t) = ctx.table.lookup_template(tk)
    {
        // Persistence: the client network's server, while it can still take flows.
        idx = svc.reals.iter().position(|r| {
            r.dest.addr() == t.dest() && r.dest.weight() > 0 && !r.dest.is_overloaded()
        });
    }
    let from_template = idx.is_some();
    let idx = match idx {
        Some(i) => i,
        None => svc
            .sched
            .pick(&SchedInput {
                client: SocketAddr::new(ip.src, ports.src),
                vip: SocketAddr::new(ip.dst, ports.dst),
                proto: ip.proto,
                now: ctx.instant,
            })
            .ok_or(DropReason::NoRealServer)?,
    };
    let real = svc.reals.get(idx).ok_or(DropReason::NoRealServer)?;
    let raddr = real.dest.addr();
    // Real-server port 0: the port the client asked for.
    let dport = if raddr.port() == 0 {
        ports.dst
    } else {
        raddr.port()
    };
    let fwd = fwd_method(real.forward);
    let mut entry = ConnEntry::new(*key, SocketAddr::new(raddr.ip(), dport), fwd, svc.id);
    entry.set_client_mac(pkt.eth.src);
    if let Some((p, _)) = persistence {
        entry.set_persistence(Some(p));
    }
    let entry = match ctx.table.insert_on_packet(entry, flags, ctx.now) {
        Ok((e, _)) => {
            real.dest.conn_bound(e.is_active());
            count_new(svc, idx);
            // From its first packet, half-open included: a takeover right after keeps it.
            emit(ctx, &e);
            e
        }
        // Another packet thread created it a moment ago: use theirs.
        Err(InsertError::Exists(e)) => e,
        Err(InsertError::Full) => return Err(DropReason::TableFull),
        Err(_) => return Err(DropReason::Malformed),
    };
    if let (Some(tk), Some((_, timeout)), false) = (template_key, persistence, from_template) {
        let t = ConnEntry::template(tk, raddr, fwd, svc.id, timeout, ctx.now);
        if ctx.table.insert_template(t).is_ok() {
            real.dest.template_bound();
            emit(ctx, &t);
        }
    } else if let (Some(tk), true, true) = (template_key, from_template, ctx.sync_on)
        && let Some(t) = ctx.table.lookup_template(&tk)
    {
        // The new flow pushed the template's deadline out: the backups follow.
        emit(ctx, &t);
    }
    Ok(entry)
}

fn count_new(svc: &ServiceRt, idx: usize) {
    svc.stats.conns.fetch_add(1, Relaxed);
    if let Some(r) = svc.reals.get(idx) {
        r.stats.conns.fetch_add(1, Relaxed);
    }
}

/// Sends a client packet of `entry`'s flow to its real server.
fn forward(
    frame: &mut [u8],
    scratch: &mut [u8],
    pkt: &Packet,
    ip: &Ip,
    entry: &ConnEntry,
    ctx: &Ctx,
    icmp_error: bool,
) -> Verdict {
    let dest = entry.dest();
    let svc = ctx.snap.by_id(entry.service());
    let live = svc.and_then(|s| s.real(&dest));
    if live.is_none() && ctx.expire_nodest_conn {
        // The real server left the config: this flow ends now (IPVS expire_nodest_conn).
        if let Some(gone) = ctx.table.remove(entry.key())
            && let Some(d) = ctx.snap.retired(gone.service(), &gone.dest())
        {
            d.conn_unbound(gone.is_active());
        }
        return Verdict::Drop(DropReason::NoRealServer);
    }
    let len = frame.len();
    if let Some(s) = svc {
        s.stats.count_in(len);
    }
    if let Some(r) = live {
        r.stats.count_in(len);
    }
    let Some(mac) = ctx.neigh.get(&dest.ip()) else {
        return Verdict::Drop(DropReason::NoNeighbour);
    };
    if packet::decrement_ttl(frame, pkt).is_err() {
        return Verdict::Drop(DropReason::TtlExpired);
    }
    match entry.fwd_method() {
        FwdMethod::DirectRoute => match packet::rewrite_dr(frame, mac, ctx.local.mac) {
            Ok(()) => Verdict::Send,
            Err(_) => Verdict::Drop(DropReason::Rewrite),
        },
        FwdMethod::Masq => {
            let r = if icmp_error {
                packet::rewrite_icmp_error_inner(frame, pkt, IcmpNat::In, dest.ip(), dest.port())
            } else {
                packet::rewrite_nat_in(frame, pkt, dest.ip(), dest.port())
            };
            match r.and_then(|()| packet::rewrite_dr(frame, mac, ctx.local.mac)) {
                Ok(()) => Verdict::Send,
                Err(_) => Verdict::Drop(DropReason::Rewrite),
            }
        }
        FwdMethod::Tunnel => {
            let src = match dest.ip() {
                IpAddr::V4(_) => ctx.local.ipv4.map(IpAddr::V4),
                IpAddr::V6(_) => ctx.local.ipv6.map(IpAddr::V6),
            };
            let Some(src) = src else {
                return Verdict::Drop(DropReason::NoTunnelSource);
            };
            let tunnel = Tunnel {
                src,
                dst: dest.ip(),
                src_mac: ctx.local.mac,
                dst_mac: mac,
                vlan_tci: pkt.eth.vlan_tci,
                mtu: ctx.local.mtu,
            };
            match packet::encap(frame, pkt, scratch, &tunnel) {
                Ok(n) => Verdict::SendScratch(n),
                Err(EncapError::TooBig { mtu }) => too_big(frame, scratch, pkt, ip, mtu, ctx),
                Err(EncapError::NeedsFragmentation { .. }) => Verdict::Drop(DropReason::TooBig),
                Err(_) => Verdict::Drop(DropReason::Rewrite),
            }
        }
        FwdMethod::Local | FwdMethod::Bypass => Verdict::Drop(DropReason::NotOurs),
    }
}

/// Tells the client, from the VIP, that the packet does not fit the tunnel (the original is
/// dropped). The TTL was already decremented; the quote shows the packet as it arrived but
/// for that byte and its checksum, which clients do not check.
fn too_big(
    frame: &[u8],
    scratch: &mut [u8],
    pkt: &Packet,
    ip: &Ip,
    mtu: u16,
    ctx: &Ctx,
) -> Verdict {
    let _ = ctx;
    let built = match ip.dst {
        IpAddr::V4(vip) => packet::build_frag_needed(frame, pkt, scratch, vip, mtu),
        IpAddr::V6(vip) => packet::build_packet_too_big(frame, pkt, scratch, vip, u32::from(mtu)),
    };
    match built {
        Ok(n) => Verdict::SendScratch(n),
        Err(_) => Verdict::Drop(DropReason::TooBig),
    }
}

/// A packet not to a VIP: a NAT reply from a real server (or an ICMP error it sends about a
/// request), else not ours.
fn outbound(frame: &mut [u8], pkt: &Packet, ip: &Ip, ctx: &Ctx) -> Verdict {
    let (rkey, flags, icmp) = match &ip.l4 {
        L4::Icmp(Icmp {
            kind: IcmpKind::Error { inner, .. },
            ..
        }) => {
            // Quotes a request we forwarded: inner source is the client, destination the real.
            let Some(ports) = inner.ports else {
                return Verdict::Drop(DropReason::NotOurs);
            };
            let k = ReplyKey::new(
                inner.proto,
                SocketAddr::new(inner.dst, ports.dst),
                SocketAddr::new(inner.src, ports.src),
            );
            (k, 0, true)
        }
        _ => {
            let Some((ports, flags)) = ports_of(ip) else {
                return Verdict::Drop(DropReason::NotOurs);
            };
            let k = ReplyKey::new(
                ip.proto,
                SocketAddr::new(ip.src, ports.src),
                SocketAddr::new(ip.dst, ports.dst),
            );
            (k, flags, false)
        }
    };
    let Some(rkey) = rkey else {
        return Verdict::Drop(DropReason::NotOurs);
    };
    let found = if icmp {
        ctx.table.lookup_reply(&rkey).map(|e| (e, None))
    } else {
        ctx.table
            .update_on_reply(&rkey, flags, ctx.now)
            .map(|(e, c)| (e, Some(c)))
    };
    let Some((entry, change)) = found else {
        return Verdict::Drop(DropReason::NotOurs);
    };
    if change.is_some_and(|c| c.sync) {
        emit(ctx, &entry);
    }
    if !ctx.snap.answers(&entry.virtual_addr().ip()) {
        // Drained after a move: the new owner sends from the VIP now, not this director.
        return Verdict::Drop(DropReason::NotOurs);
    }
    let dest = dest_of(ctx.snap, &entry);
    if let (Some(d), Some(c)) = (dest, &change) {
        account(d, c);
    }
    let virt = entry.virtual_addr();
    let r = if icmp {
        packet::rewrite_icmp_error_inner(frame, pkt, IcmpNat::Out, virt.ip(), virt.port())
    } else {
        packet::rewrite_nat_out(frame, pkt, virt.ip(), virt.port())
    };
    if r.is_err() {
        return Verdict::Drop(DropReason::Rewrite);
    }
    if packet::decrement_ttl(frame, pkt).is_err() {
        return Verdict::Drop(DropReason::TtlExpired);
    }
    if packet::rewrite_dr(frame, entry.client_mac(), ctx.local.mac).is_err() {
        return Verdict::Drop(DropReason::Rewrite);
    }
    let len = frame.len();
    if let Some(s) = ctx.snap.by_id(entry.service()) {
        s.stats.count_out(len);
        if let Some(r) = s.real(&entry.dest()) {
            r.stats.count_out(len);
        }
    }
    Verdict::Send
}
