//! The userspace forwarding engine: packet worker threads over AF_PACKET, a housekeeping
//! thread (neighbour resolution, connection expiry, rates), and the control entry points the
//! daemon calls when the replicated configuration changes.
//!
//! # Keeping the kernel out
//! The VIPs are never configured on an interface. The engine answers ARP and neighbour
//! solicitations for the VIPs it owns, and takes their packets off the wire through its
//! AF_PACKET sockets. The kernel sees those packets too (a packet tap does not steal), but
//! with IP forwarding off on the interface it drops packets for addresses it does not own
//! without a word (no ICMP, no RST) — so the engine refuses to start when forwarding is on.
//! An `nftables` netdev ingress drop for the same traffic would save the kernel that work;
//! it is an optimisation, not needed for correctness.

use std::collections::HashSet;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::RwLock;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::Ordering::SeqCst;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

use fulcrum_sync::conn::CoarseClock;
use fulcrum_sync::conn::ConnEntry;
use fulcrum_sync::conn::ConnTable;
use fulcrum_sync::conn::TableConfig;
use fulcrum_sync::stream::ChangeQueue;

use super::afpacket;
use super::afpacket::PacketSocket;
use super::afpacket::RingConfig;
use super::afpacket::TX_BATCH;
use super::afpacket::TxSocket;
use super::filter;
use super::forward;
use super::forward::Ctx;
use super::forward::DropReason;
use super::forward::Drops;
use super::forward::Local;
use super::forward::Verdict;
use super::neigh;
use super::neigh::Neighbours;
use super::sched::SchedConfig;
use super::services;
use super::services::Snapshot;
use crate::config::EngineConfig;
use crate::model::ClusterConfig;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("interface {iface}: {source}")]
    Interface {
        iface: String,
        source: std::io::Error,
    },
    #[error(
        "IP forwarding is on for {0}: the kernel would route VIP traffic alongside the engine. \
         Set net.ipv4.conf.{0}.forwarding=0 and net.ipv6.conf.{0}.forwarding=0 (and .all)"
    )]
    KernelForwarding(String),
    #[error("AF_PACKET socket on {iface}: {source} (the engine needs CAP_NET_RAW)")]
    Socket {
        iface: String,
        source: std::io::Error,
    },
    #[error("connection table: {0}")]
    Table(String),
}

/// Shared between the control side and the threads.
struct Shared {
    snap: RwLock<Arc<Snapshot>>,
    generation: AtomicU64,
    table: ConnTable,
    neigh: Neighbours,
    drops: Drops,
    local: Local,
    clock: CoarseClock,
    stop: AtomicBool,
    expire_nodest_conn: bool,
    sched_cfg: SchedConfig,
    rates: Mutex<Rates>,
    workers: Vec<WorkerSync>,
    /// One per packet thread: changes for the sync stream.
    sync_queues: Vec<ChangeQueue>,
    /// Changes lost because a thread's per-block vector was full.
    sync_dropped: AtomicU64,
}

impl Shared {
    /// The service snapshot in force now.
    fn snapshot(&self) -> Arc<Snapshot> {
        self.snap.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Per-block change vector of a packet thread; its queue holds up to this many too.
const SYNC_BLOCK_CAP: usize = 16_384;
const SYNC_QUEUE_CAP: usize = 262_144;

/// What `apply` needs to know of a packet thread to be sure it no longer uses an old
/// snapshot: a thread is either idle (waiting for frames; it reloads before processing) or
/// busy with a snapshot of a known generation.
#[derive(Default)]
struct WorkerSync {
    busy: AtomicBool,
    seen: AtomicU64,
}

/// Per-service counter samples for the rate columns of `service stats`.
#[derive(Default)]
struct Rates {
    at: Option<Instant>,
    prev: std::collections::HashMap<u32, [u64; 5]>,
    rates: std::collections::HashMap<u32, [f64; 5]>,
}

pub struct Engine {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// For control frames (gratuitous ARP, unsolicited NA).
    control_tx: Mutex<TxSocket>,
    /// The packet threads' socket filters, replaced by `apply` before it returns.
    filters: Vec<afpacket::FilterHandle>,
}

/// One connection entry as `conn list` shows it.
#[derive(Debug, Clone)]
pub struct ConnView {
    pub entry: ConnEntry,
    pub expires_in: u32,
    pub service: String,
}

/// Counters of one service and its real servers.
#[derive(Debug, Clone)]
pub struct ServiceStatsView {
    pub key: String,
    /// conns, in packets, out packets, in bytes, out bytes.
    pub counts: [u64; 5],
    /// per second: conns, in packets, out packets, in bytes, out bytes.
    pub rates: [f64; 5],
    pub reals: Vec<RealStatsView>,
}

#[derive(Debug, Clone)]
pub struct RealStatsView {
    pub addr: String,
    pub weight: u32,
    pub active: u32,
    pub inactive: u32,
    pub counts: [u64; 5],
}

fn sysctl_on(path: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.trim() != "0")
}

/// The interface's first IPv4 address and first global IPv6 address (link-local if none).
fn local_addrs(iface: &str) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let mut v4 = None;
    let mut v6 = None;
    let mut v6_ll = None;
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk and free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return (None, None);
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated name from the kernel.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if name.to_bytes() != iface.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr whose family says which struct it is.
        match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET if v4.is_none() => {
                // SAFETY: AF_INET means sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                v4 = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            libc::AF_INET6 => {
                // SAFETY: AF_INET6 means sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                let a = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                if a.segments()[0] & 0xffc0 == 0xfe80 {
                    v6_ll.get_or_insert(a);
                } else {
                    v6.get_or_insert(a);
                }
            }
            _ => {}
        }
    }
    // SAFETY: freeing what getifaddrs returned.
    unsafe { libc::freeifaddrs(ifap) };
    (v4, v6.or(v6_ll))
}

impl Engine {
    /// Opens the sockets (so permission and interface errors surface here) and starts the
    /// threads. Forwards nothing until [`Engine::apply`] gives it services and VIPs.
    pub fn start(cfg: &EngineConfig) -> Result<Engine, EngineError> {
        let iface = cfg.interface.clone();
        let ifname_err = |source| EngineError::Interface {
            iface: iface.clone(),
            source,
        };
        afpacket::ifindex(&iface).map_err(ifname_err)?;
        let sock_err = |source| EngineError::Socket {
            iface: iface.clone(),
            source,
        };
        if sysctl_on(&format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"))
            || sysctl_on(&format!("/proc/sys/net/ipv6/conf/{iface}/forwarding"))
            || sysctl_on("/proc/sys/net/ipv6/conf/all/forwarding")
        {
            return Err(EngineError::KernelForwarding(iface));
        }
        let mac = afpacket::mac_address(&iface).map_err(ifname_err)?;
        let mtu = afpacket::mtu(&iface)
            .map_err(ifname_err)?
            .min(u32::from(u16::MAX)) as u16;
        let (ipv4, ipv6) = local_addrs(&iface);
        let mut tcfg = TableConfig::new(cfg.max_connections as usize);
        tcfg.timeouts
            .set_ipvsadm(cfg.tcp_timeout, cfg.tcp_fin_timeout, cfg.udp_timeout);
        let table = ConnTable::new(tcfg).map_err(|e| EngineError::Table(e.to_string()))?;
        let shared = Arc::new(Shared {
            snap: RwLock::new(Arc::new(Snapshot::default())),
            generation: AtomicU64::new(1),
            table,
            neigh: Neighbours::default(),
            drops: Drops::default(),
            local: Local {
                mac,
                ipv4,
                ipv6,
                mtu,
            },
            clock: CoarseClock::new(),
            stop: AtomicBool::new(false),
            expire_nodest_conn: cfg.expire_nodest_conn,
            sched_cfg: SchedConfig::default(),
            rates: Mutex::default(),
            workers: (0..cfg.workers).map(|_| WorkerSync::default()).collect(),
            sync_queues: (0..cfg.workers)
                .map(|_| ChangeQueue::new(SYNC_QUEUE_CAP))
                .collect(),
            sync_dropped: AtomicU64::new(0),
        });
        // A fanout group id unique to this process and interface.
        let group = (std::process::id() as u16) ^ 0x5a5a;
        let mut threads = Vec::new();
        let mut filters = Vec::new();
        for w in 0..cfg.workers {
            let rx = PacketSocket::open(&iface, RingConfig::default()).map_err(|source| {
                EngineError::Socket {
                    iface: iface.clone(),
                    source,
                }
            })?;
            rx.set_filter(&filter::build(&filter::FilterSpec::default()))
                .map_err(sock_err)?;
            filters.push(rx.filter_handle().map_err(sock_err)?);
            if cfg.workers > 1 {
                rx.join_fanout(group).map_err(sock_err)?;
            }
            let tx = TxSocket::open(&iface).map_err(sock_err)?;
            let sh = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("fulcrum-pkt{w}"))
                    .spawn(move || worker(sh, w as usize, rx, tx))
                    .map_err(sock_err)?,
            );
        }
        let tx = TxSocket::open(&iface).map_err(sock_err)?;
        let sh = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("fulcrum-house".into())
                .spawn(move || housekeeping(sh, tx))
                .map_err(sock_err)?,
        );
        tracing::info!(
            %iface,
            mac = %neigh::fmt_mac(&mac),
            ?ipv4,
            ?ipv6,
            mtu,
            workers = cfg.workers,
            max_connections = cfg.max_connections,
            "forwarding engine started"
        );
        let control_tx = Mutex::new(TxSocket::open(&iface).map_err(sock_err)?);
        Ok(Engine {
            shared,
            threads,
            control_tx,
            filters,
        })
    }

    /// Follows a new configuration: rebuilds the service snapshot (unchanged services and
    /// their flows are untouched), re-targets neighbour resolution, and with
    /// `expire_nodest_conn` ends the flows of real servers that left.
    /// `owned`: VIPs to forward; `answering`: those of them to answer for (see
    /// `Snapshot::answers`).
    pub fn apply(
        &self,
        config: &ClusterConfig,
        owned: &HashSet<IpAddr>,
        answering: &HashSet<IpAddr>,
    ) {
        let prev = self.snapshot();
        let next = services::build(config, &prev, owned, answering, &self.shared.sched_cfg);
        self.shared.neigh.want(next.next_hops());
        let next = Arc::new(next);
        // The filters first: a VIP gained here must reach the packet threads from the moment
        // the caller announces it.
        let prog = filter::build(&next.filter_spec());
        for f in &self.filters {
            if let Err(e) = f.set_filter(&prog) {
                tracing::error!("socket filter: {e}");
            }
        }
        *self.shared.snap.write().unwrap_or_else(|e| e.into_inner()) = next.clone();
        let generation = self.shared.generation.fetch_add(1, SeqCst) + 1;
        // Return only once no packet thread can act on the old snapshot any more: a VIP given
        // up must not be answered for after this (the new owner may start right away).
        let deadline = Instant::now() + Duration::from_secs(1);
        for w in &self.shared.workers {
            while w.busy.load(SeqCst)
                && w.seen.load(SeqCst) < generation
                && Instant::now() < deadline
            {
                std::thread::yield_now();
            }
        }
        if self.shared.expire_nodest_conn {
            let mut gone = Vec::new();
            self.shared.table.remove_where(
                |e| {
                    // Service 0: a replicated flow whose service this node did not know when
                    // it arrived; nothing to judge it by.
                    e.service() != 0
                        && next
                            .by_id(e.service())
                            .is_none_or(|s| s.real(&e.dest()).is_none())
                },
                &mut gone,
            );
            for e in &gone {
                unbind(&next, e);
            }
        }
        tracing::info!(
            services = next.services().len(),
            vips = owned.len(),
            "engine follows the new configuration"
        );
    }

    /// Tells the segment that this director now answers for `vips`: a gratuitous ARP for each
    /// IPv4 VIP, an unsolicited neighbour advertisement (override set) for each IPv6 VIP.
    pub fn announce(&self, vips: &[IpAddr]) {
        let mut frames: Vec<([u8; 128], usize)> = Vec::with_capacity(vips.len());
        for vip in vips {
            let mut buf = [0u8; 128];
            let built = match vip {
                IpAddr::V4(a) => {
                    super::packet::build_gratuitous_arp(&mut buf, self.shared.local.mac, *a, None)
                }
                IpAddr::V6(a) => {
                    super::packet::build_unsolicited_na(&mut buf, self.shared.local.mac, *a, None)
                }
            };
            match built {
                Ok(n) => frames.push((buf, n)),
                Err(e) => tracing::warn!(%vip, "announcement: {e}"),
            }
        }
        let tx = self.control_tx.lock().unwrap_or_else(|e| e.into_inner());
        for chunk in frames.chunks(TX_BATCH) {
            let list: Vec<&[u8]> = chunk.iter().map(|(b, n)| &b[..*n]).collect();
            if let Err(e) = tx.send_batch(&list) {
                tracing::warn!("announcement: {e}");
            }
        }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot()
    }

    /// Entries for `conn list`, at most `limit`; and how many the table holds.
    pub fn connections(&self, service: Option<&str>, limit: usize) -> (Vec<ConnView>, u64) {
        let snap = self.snapshot();
        let now = self.shared.clock.now();
        let mut out = Vec::new();
        self.shared.table.for_each(|e| {
            if out.len() >= limit {
                return;
            }
            let key = snap
                .by_id(e.service())
                .map(|s| s.svc.key.to_string())
                .unwrap_or_default();
            if service.is_some_and(|want| want != key) {
                return;
            }
            out.push(ConnView {
                entry: *e,
                expires_in: e.remaining(now),
                service: key,
            });
        });
        (out, self.shared.table.len() as u64)
    }

    /// Entries in the connection table (templates included) and the most it holds; two
    /// atomic loads, for metrics.
    pub fn table_usage(&self) -> (u64, u64) {
        (
            self.shared.table.len() as u64,
            self.shared.table.max_entries() as u64,
        )
    }

    pub fn stats(
        &self,
        service: Option<&str>,
    ) -> (Vec<ServiceStatsView>, Vec<(&'static str, u64)>) {
        let snap = self.snapshot();
        let rates = self.shared.rates.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for s in snap.services() {
            let key = s.svc.key.to_string();
            if service.is_some_and(|w| w != key) {
                continue;
            }
            out.push(ServiceStatsView {
                key,
                counts: counts(&s.stats),
                rates: rates.rates.get(&s.id).copied().unwrap_or_default(),
                reals: s
                    .reals
                    .iter()
                    .map(|r| RealStatsView {
                        addr: r.dest.addr().to_string(),
                        weight: r.dest.weight(),
                        active: r.dest.active(),
                        inactive: r.dest.inactive(),
                        counts: counts(&r.stats),
                    })
                    .collect(),
            });
        }
        let drops = DropReason::ALL
            .iter()
            .map(|d| (d.name(), self.shared.drops.get(*d)))
            .filter(|(_, n)| *n > 0)
            .collect();
        (out, drops)
    }

    /// Starts or stops handing changes to a sync sender.
    pub fn set_sync(&self, on: bool) {
        for q in &self.shared.sync_queues {
            q.set_enabled(on);
        }
    }

    /// Changes lost before reaching the sync sender (its queues were full).
    pub fn sync_dropped(&self) -> u64 {
        self.shared.sync_dropped.load(Relaxed)
            + self
                .shared
                .sync_queues
                .iter()
                .map(ChangeQueue::dropped)
                .sum::<u64>()
    }

    /// The sync sender's view of this engine.
    pub fn sync_source(self: &Arc<Self>) -> Arc<dyn fulcrum_sync::stream::Source> {
        Arc::new(SyncSide(self.shared.clone()))
    }

    /// The sync receiver's view of this engine.
    pub fn sync_replica(self: &Arc<Self>) -> Arc<dyn fulcrum_sync::stream::Replica> {
        Arc::new(SyncSide(self.shared.clone()))
    }

    pub fn stop(mut self) {
        self.shared.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl std::ops::Drop for Engine {
    fn drop(&mut self) {
        self.shared.stop.store(true, Relaxed);
    }
}

fn counts(c: &services::Counters) -> [u64; 5] {
    [
        c.conns.load(Relaxed),
        c.in_packets.load(Relaxed),
        c.out_packets.load(Relaxed),
        c.in_bytes.load(Relaxed),
        c.out_bytes.load(Relaxed),
    ]
}

/// What the sync stream reads from (changes, snapshots) and writes to (replicated entries).
struct SyncSide(Arc<Shared>);

impl fulcrum_sync::stream::Source for SyncSide {
    fn drain(&self, out: &mut Vec<ConnEntry>) {
        for q in &self.0.sync_queues {
            q.drain_into(out);
        }
    }

    fn now(&self) -> u32 {
        self.0.clock.now()
    }

    /// The flows this director forwards: on VIPs it forwards now, or created here.
    fn snapshot_chunk(
        &self,
        cursor: &mut fulcrum_sync::conn::SnapshotCursor,
        max: usize,
        out: &mut Vec<ConnEntry>,
    ) -> bool {
        let snap = self.0.snapshot();
        let start = out.len();
        let done = self.0.table.snapshot_chunk(cursor, max, out);
        let mut keep = start;
        for i in start..out.len() {
            let e = out[i];
            if e.origin() == 0 || snap.owns(&e.virtual_addr().ip()) {
                out[keep] = e;
                keep += 1;
            }
        }
        out.truncate(keep);
        done
    }
}

impl fulcrum_sync::stream::Replica for SyncSide {
    fn now(&self) -> u32 {
        self.0.clock.now()
    }

    fn install(&self, from: u64, entries: &mut [ConnEntry]) -> u64 {
        let snap = self.0.snapshot();
        let slot = fulcrum_sync::stream::origin_slot(from);
        let mut rejected = 0;
        for e in entries.iter_mut() {
            let virt = e.virtual_addr();
            if let Some(cur) = self.0.table.lookup(e.key())
                && cur.origin() == 0
                && snap.answers(&virt.ip())
            {
                // This director answers for the VIP: its own view of the flow wins.
                continue;
            }
            let proto = e.protocol();
            e.set_service(snap.resolve(proto, virt.ip(), virt.port()).unwrap_or(0));
            e.set_synced_from(slot);
            match self.0.table.upsert(*e) {
                Ok(old) => {
                    if let Some(o) = old {
                        unbind(&snap, &o);
                    }
                    bind(&snap, e);
                }
                Err(_) => rejected += 1,
            }
        }
        rejected
    }

    fn sweep(&self, from: u64, older_than: u32) -> u64 {
        let snap = self.0.snapshot();
        let slot = fulcrum_sync::stream::origin_slot(from);
        let now = self.0.clock.now();
        let mut gone = Vec::new();
        // Flows of VIPs this director forwards are its own now (taken over, maybe idle and not
        // yet adopted by a packet): a peer's snapshot does not speak for them.
        self.0.table.remove_where(
            |e| {
                e.origin() == slot
                    && e.synced_age(now) > older_than
                    && !snap.owns(&e.virtual_addr().ip())
            },
            &mut gone,
        );
        for e in &gone {
            unbind(&snap, e);
        }
        gone.len() as u64
    }
}

/// Counts a replicated entry on its real server, as IPVS does on a backup.
fn bind(snap: &Snapshot, e: &ConnEntry) {
    if let Some(d) = forward::dest_of(snap, e) {
        if e.is_template() {
            d.template_bound();
        } else {
            d.conn_bound(e.is_active());
        }
    }
}

/// A removed entry no longer counts on its real server (or template).
fn unbind(snap: &Snapshot, e: &ConnEntry) {
    if let Some(d) = forward::dest_of(snap, e) {
        if e.is_template() {
            d.template_unbound();
        } else {
            d.conn_unbound(e.is_active());
        }
    }
}

/// Frames queued for one `sendmmsg`: pointers into the current ring block or the scratch
/// buffers, all valid until the batch is flushed (before the block is released and before
/// a scratch buffer is reused).
struct TxBatch {
    ptrs: [(*const u8, usize); TX_BATCH],
    n: usize,
}

impl TxBatch {
    fn flush(&mut self, tx: &TxSocket, drops: &Drops) {
        if self.n == 0 {
            return;
        }
        let mut frames: [&[u8]; TX_BATCH] = [&[]; TX_BATCH];
        for (i, (p, l)) in self.ptrs[..self.n].iter().enumerate() {
            // SAFETY: see the type's doc: each pointer/length names a live frame.
            frames[i] = unsafe { std::slice::from_raw_parts(*p, *l) };
        }
        match tx.send_batch(&frames[..self.n]) {
            Ok(sent) => {
                for _ in sent..self.n {
                    drops.count(DropReason::TxFull);
                }
            }
            Err(e) => {
                tracing::warn!("transmit: {e}");
                for _ in 0..self.n {
                    drops.count(DropReason::TxFull);
                }
            }
        }
        self.n = 0;
    }
}

fn worker(sh: Arc<Shared>, index: usize, mut rx: PacketSocket, tx: TxSocket) {
    let Some(sync) = sh.workers.get(index) else {
        return;
    };
    let mut scratch: Vec<[u8; 2048]> = vec![[0u8; 2048]; TX_BATCH];
    let mut batch = TxBatch {
        ptrs: [(std::ptr::null(), 0); TX_BATCH],
        n: 0,
    };
    // `Engine::apply` replaces this socket's filter itself; the thread only follows snapshots.
    let mut seen_gen = 0u64;
    let mut snap = sh.snapshot();
    let Some(queue) = sh.sync_queues.get(index) else {
        return;
    };
    let changes = std::cell::RefCell::new(Vec::with_capacity(SYNC_BLOCK_CAP));
    while !sh.stop.load(Relaxed) {
        let block = match rx.next_block(100) {
            Ok(Some(b)) => b,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!("receive: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let mut block = block;
        // Busy first, then look at the generation (see `Engine::apply`).
        sync.busy.store(true, SeqCst);
        let g = sh.generation.load(SeqCst);
        if g != seen_gen {
            seen_gen = g;
            snap = sh.snapshot();
        }
        sync.seen.store(seen_gen, SeqCst);
        let ctx = Ctx {
            snap: &snap,
            table: &sh.table,
            neigh: &sh.neigh,
            drops: &sh.drops,
            local: &sh.local,
            now: sh.clock.now(),
            instant: Instant::now(),
            expire_nodest_conn: sh.expire_nodest_conn,
            sync: &changes,
            sync_on: queue.enabled(),
            sync_dropped: &sh.sync_dropped,
        };
        let mut used_scratch = 0usize;
        for frame in block.frames() {
            if batch.n == TX_BATCH || used_scratch == scratch.len() {
                batch.flush(&tx, &sh.drops);
                used_scratch = 0;
            }
            let Some(buf) = scratch.get_mut(used_scratch) else {
                continue;
            };
            let csum = frame.csum_not_ready;
            let frame = frame.data;
            match forward::process(frame, csum, buf, &ctx) {
                Verdict::Send => {
                    batch.ptrs[batch.n] = (frame.as_ptr(), frame.len());
                    batch.n += 1;
                }
                Verdict::SendScratch(n) => {
                    batch.ptrs[batch.n] = (buf.as_ptr(), n.min(buf.len()));
                    batch.n += 1;
                    used_scratch += 1;
                }
                Verdict::Consumed => {}
                Verdict::Drop(d) => sh.drops.count(d),
            }
        }
        batch.flush(&tx, &sh.drops);
        drop(block);
        queue.push_from(&mut changes.borrow_mut());
        sync.busy.store(false, SeqCst);
    }
}

fn housekeeping(sh: Arc<Shared>, tx: TxSocket) {
    let mut expired = Vec::with_capacity(4096);
    let mut last_maintain = Instant::now();
    let mut last_rates = Instant::now();
    while !sh.stop.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        let snap = sh.snapshot();
        // Ask for real servers' MAC addresses that are missing or due a refresh.
        for ip in sh.neigh.due(now) {
            let sent = match ip {
                IpAddr::V4(t) => tx.send_batch(&[&neigh::arp_request(
                    sh.local.mac,
                    sh.local.ipv4.unwrap_or(Ipv4Addr::UNSPECIFIED),
                    t,
                )]),
                IpAddr::V6(t) => match sh.local.ipv6 {
                    Some(me) => {
                        tx.send_batch(&[&neigh::neighbour_solicitation(sh.local.mac, me, t)])
                    }
                    None => Ok(0),
                },
            };
            if let Err(e) = sent {
                tracing::warn!(%ip, "neighbour request: {e}");
            }
        }
        // Expire idle flows, a bounded amount per round.
        expired.clear();
        sh.table.expire(sh.clock.now(), 65_536, &mut expired);
        for e in &expired {
            unbind(&snap, e);
        }
        if now - last_maintain >= Duration::from_secs(10) {
            last_maintain = now;
            for s in snap.services() {
                s.sched.maintain(now);
            }
        }
        if now - last_rates >= Duration::from_secs(2) {
            last_rates = now;
            let mut r = sh.rates.lock().unwrap_or_else(|e| e.into_inner());
            let dt = r.at.map(|a| (now - a).as_secs_f64()).unwrap_or(0.0);
            let mut next_prev = std::collections::HashMap::new();
            for s in snap.services() {
                let c = counts(&s.stats);
                if let (Some(p), true) = (r.prev.get(&s.id), dt > 0.0) {
                    let mut rate = [0.0; 5];
                    for i in 0..5 {
                        rate[i] = c[i].saturating_sub(p[i]) as f64 / dt;
                    }
                    r.rates.insert(s.id, rate);
                }
                next_prev.insert(s.id, c);
            }
            r.prev = next_prev;
            r.at = Some(now);
        }
    }
}
