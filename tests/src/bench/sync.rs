//! `fulcrum-bench sync`: the connection-table sync stream between two directors, over real
//! gRPC on loopback.
//!
//! The sender (`fulcrum_sync::stream::Sender`, default `SyncTimers`) runs in this process on
//! one tokio worker, with the change generator (the bench's main thread), both pinned to CPU0. The receiver runs in a
//! child process, `fulcrum-bench sync-receiver`, pinned to CPU1: a `Receiver` over a
//! `TableReplica` (a bare `ConnTable`) on one tokio worker, serving on 127.0.0.1. It counts
//! the bytes it reads from the TCP connection and timestamps every batch it installs, and
//! answers `stats` on its stdin with one JSON line. Every phase starts a fresh child (an empty
//! table) and a fresh sender.
//!
//! Entries: established TCP connections, alternately IPv4 and IPv6, 3/4 DR and 1/4 NAT, to
//! 10 real servers behind one VIP per family (ports 80 and 443), each with the client-side
//! MAC the engine records. The sender's changes go through a `ChangeQueue` of the engine's
//! capacity, in blocks of at most the engine's per-block size, and the drain loop takes them
//! every `batch_interval` (2 ms).
//!
//! 1. Throughput: N changes pushed as fast as the stream takes them without dropping any:
//!    never more than the queue's free room, never more than `batch_entries × window`
//!    (131,072) pushed and not yet acknowledged, the most a peer may lag and still be
//!    current (beyond `max_lag_entries` queued for a peer the sender would drop its changes
//!    and resync it instead: the engine itself never waits). Measured from the first push to
//!    the sender counting the last acknowledgement (and to the receiver installing the last
//!    entry).
//!    Side by side, in this process on one thread: the same entries encoded, decoded and
//!    installed in a fresh table without gRPC (the upper bound of one core), its parts, and
//!    the IPVS sync v1 codec on the same entries.
//! 2. Lag at a paced rate (100,000 changes/s for 5 s): each change carries the instant it
//!    was pushed into the queue (CLOCK_MONOTONIC, in microseconds, in the 6 bytes of its
//!    client-MAC field, which every engine entry carries anyway, so sizes do not change); the
//!    receiver reads the same clock right after its batch was upserted into its table. Lag =
//!    that difference, for every change. Next to it, the sender's own `lag_p99_us` (drain
//!    before the batch's → acknowledgement; see `PeerStatus`).
//! 3. Bytes: `record::encode` lengths for typical entries next to IPVS v1 (`record_len`, and
//!    the encoder's datagrams); and, measured in phases 1 and 2, the TCP payload bytes the
//!    receiver read (HTTP/2 frames, gRPC message prefix, protobuf) against the record bytes
//!    the sender encoded (`PeerStatus::wire_bytes`).
//! 4. Full resync: a sender whose table holds 1,000,000 entries (half IPv4, half IPv6) and a
//!    fresh receiver; from `set_peers` until the sender sees the snapshot acknowledged
//!    (state live, `snapshot_entries` = N, N acknowledged); the receiver's table is checked.

use std::io::BufRead;
use std::io::BufReader;
use std::io::Write;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Child;
use std::process::ChildStdin;
use std::process::ChildStdout;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Context as TaskContext;
use std::task::Poll;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use fulcrum_sync::conn::CoarseClock;
use fulcrum_sync::conn::ConnEntry;
use fulcrum_sync::conn::ConnKey;
use fulcrum_sync::conn::ConnTable;
use fulcrum_sync::conn::Family;
use fulcrum_sync::conn::FwdMethod;
use fulcrum_sync::conn::PersistKind;
use fulcrum_sync::conn::Persistence;
use fulcrum_sync::conn::TableConfig;
use fulcrum_sync::conn::TcpState;
use fulcrum_sync::conn::TemplateTarget;
use fulcrum_sync::conn::Timeouts;
use fulcrum_sync::conn::proto;
use fulcrum_sync::ipvs;
use fulcrum_sync::stream::ChangeQueue;
use fulcrum_sync::stream::LinkState;
use fulcrum_sync::stream::PeerStatus;
use fulcrum_sync::stream::Receiver;
use fulcrum_sync::stream::Replica;
use fulcrum_sync::stream::Sender;
use fulcrum_sync::stream::SyncTimers;
use fulcrum_sync::stream::TableReplica;
use fulcrum_sync::stream::TableSource;
use fulcrum_sync::stream::origin_slot;
use fulcrum_sync::stream::record;
use serde_json::Value;
use serde_json::json;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
// tonic's re-export, so this crate needs no dependency of its own for one listener stream.
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::Connected;
use tonic::transport::server::TcpConnectInfo;

use super::Spread;
use super::check_opts;
use super::loadavg;
use super::machine;
use super::opt;
use super::pin_to_cpu;
use super::rate;

/// The engine's per-worker `ChangeQueue` capacity and per-block change vector
/// (`node/src/dataplane/engine.rs`).
const QUEUE_CAP: usize = 262_144;
const BLOCK: usize = 16_384;
const CLUSTER: &str = "bench";
const SENDER_ID: u64 = 1;
const RECEIVER_ID: u64 = 2;

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// CLOCK_MONOTONIC in nanoseconds: one clock for both processes (`Instant` reads it too, but
/// cannot cross a process boundary).
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A push instant (µs) in the 6 bytes of the client-MAC field, big-endian (48 bits of
/// microseconds is 8.9 years of uptime; never all zero, so the field is always sent).
fn stamp_mac(us: u64) -> [u8; 6] {
    let b = us.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

fn mac_stamp(mac: [u8; 6]) -> u64 {
    u64::from_be_bytes([0, 0, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]])
}

/// A process's scheduler times so far, summed over its threads (`/proc/PID/task/*/schedstat`):
/// (nanoseconds on a CPU, nanoseconds ready but waiting for one).
fn sched_ns(pid: u32) -> (u64, u64) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    let mut t = (0, 0);
    for e in dir.flatten() {
        if let Some((run, wait)) = e
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
            .and_then(|tid| super::task_times(pid, tid))
        {
            t.0 += run;
            t.1 += wait;
        }
    }
    t
}

/// CPU use of a process between two `sched_ns` samples over `wall` seconds: (share of one
/// core on a CPU, share of one core spent waiting for a CPU held by someone else).
fn cpu_share(a: (u64, u64), b: (u64, u64), wall: f64) -> (f64, f64) {
    (
        b.0.saturating_sub(a.0) as f64 / 1e9 / wall,
        b.1.saturating_sub(a.1) as f64 / 1e9 / wall,
    )
}

/// The `i`th benchmark entry: IPv4 for even `i`, IPv6 for odd; 3/4 DR, 1/4 NAT; established;
/// 900 s timeout; a client MAC. Distinct for every `i` below 2^34.
fn entry(i: u64, now: u32) -> ConnEntry {
    let v6 = i % 2 == 1;
    let j = i / 2;
    let host = (j / 8) as u32;
    let k = j % 8;
    // Ephemeral ports, distinct per host (k * 3677 < 28000 for k < 8).
    let cport = 32768 + ((k * 3677 + u64::from(host) * 13) % 28000) as u16;
    let vport = if j.is_multiple_of(3) { 443 } else { 80 };
    let real = (j % 10) as u8;
    let nat = j % 4 == 3;
    let (client, virt, dest) = if v6 {
        let h = host.to_be_bytes();
        let c = Ipv6Addr::from([
            0x20, 0x01, 0x0d, 0xb8, 0, 0x0c, 0, 0, 0, 0, 0, 0, h[0], h[1], h[2], h[3],
        ]);
        let d = if nat {
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::new(
                    0xfd00,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0x10 + u16::from(real),
                )),
                8080,
            )
        } else {
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0x10 + u16::from(real),
                )),
                vport,
            )
        };
        (
            SocketAddr::new(IpAddr::V6(c), cport),
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100)),
                vport,
            ),
            d,
        )
    } else {
        let c = Ipv4Addr::from(0x0a00_0000u32 + host);
        let d = if nat {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 10 + real)), 8080)
        } else {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10 + real)), vport)
        };
        (
            SocketAddr::new(IpAddr::V4(c), cport),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100)), vport),
            d,
        )
    };
    let key = ConnKey::new(proto::TCP, client, virt).expect("same-family key");
    let fwd = if nat {
        FwdMethod::Masq
    } else {
        FwdMethod::DirectRoute
    };
    let mut e = ConnEntry::new(key, dest, fwd, (j % 3) as u32);
    e.set_state(TcpState::Established as u8);
    e.set_expiry(now, 900);
    let h = host.to_be_bytes();
    e.set_client_mac([0x02, 0x5e, h[0], h[1], h[2], h[3]]);
    e
}

fn entries(n: u64, now: u32) -> Vec<ConnEntry> {
    (0..n).map(|i| entry(i, now)).collect()
}

fn table_for(n: u64) -> Result<ConnTable> {
    let cap = (n + n / 4).max(1024) as usize;
    Ok(ConnTable::new(TableConfig::new(cap))?)
}

fn percentile_u32(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

// ---------------------------------------------------------------------------------------------
// The receiver process: `fulcrum-bench sync-receiver`
// ---------------------------------------------------------------------------------------------

/// What the receiver process counts, read by `stats`.
#[derive(Default)]
struct RxStats {
    /// Non-empty batches installed (heartbeats excluded).
    batches: u64,
    entries: u64,
    rejected: u64,
    first_ns: u64,
    last_ns: u64,
    /// Per entry: install instant − the push instant carried in its MAC field, µs.
    lags_us: Vec<u32>,
}

/// A `TableReplica` that also timestamps what it installs.
struct TimedReplica {
    inner: TableReplica,
    lag: bool,
    stats: Mutex<RxStats>,
}

impl Replica for TimedReplica {
    fn now(&self) -> u32 {
        self.inner.now()
    }

    fn install(&self, from: u64, entries: &mut [ConnEntry]) -> u64 {
        if entries.is_empty() {
            return 0;
        }
        let rejected = self.inner.install(from, entries);
        // Installed in the table: from here a lookup finds every entry of the batch.
        let t = mono_ns();
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        if s.batches == 0 {
            s.first_ns = t;
        }
        s.last_ns = t;
        s.batches += 1;
        s.entries += entries.len() as u64;
        s.rejected += rejected;
        if self.lag {
            let now_us = t / 1000;
            for e in entries.iter() {
                let lag = now_us.saturating_sub(mac_stamp(e.client_mac()));
                s.lags_us.push(lag.min(u64::from(u32::MAX)) as u32);
            }
        }
        rejected
    }
    fn sweep(&self, from: u64, older_than: u32) -> u64 {
        self.inner.sweep(from, older_than)
    }
}

/// A TCP connection that counts the bytes read and written through it.
struct Counted {
    io: tokio::net::TcpStream,
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.read
                .fetch_add((buf.filled().len() - before) as u64, Relaxed);
        }
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.written.fetch_add(n as u64, Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.written.fetch_add(n as u64, Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

/// `fulcrum-bench sync-receiver [--listen 127.0.0.1:0] [--cpu 1] [--capacity N] [--lag 1]`:
/// serves a sync `Receiver` (node id 2, cluster "bench") over a `TableReplica`, prints
/// `ready ADDR`, then answers each `stats` line on stdin with one JSON line; exits on `quit`
/// or end of input.
pub fn receiver(args: &[String]) -> Result<()> {
    check_opts(args, &["--listen", "--cpu", "--capacity", "--lag"])?;
    let listen: SocketAddr = opt(args, "--listen")?.unwrap_or(([127, 0, 0, 1], 0).into());
    if !listen.ip().is_loopback() {
        bail!("sync-receiver listens on loopback only");
    }
    let cpu: Option<usize> = opt(args, "--cpu")?;
    let capacity: u64 = opt(args, "--capacity")?.unwrap_or(1 << 20);
    let lag = opt::<u8>(args, "--lag")?.unwrap_or(0) != 0;
    if let Some(c) = cpu {
        // Before the runtime exists: its threads inherit this thread's affinity.
        pin_to_cpu(c)?;
    }
    let replica = Arc::new(TimedReplica {
        inner: TableReplica {
            table: Arc::new(table_for(capacity)?),
            clock: CoarseClock::new(),
        },
        lag,
        stats: Mutex::new(RxStats {
            lags_us: Vec::with_capacity(if lag { capacity as usize } else { 0 }),
            ..RxStats::default()
        }),
    });
    let rx = Receiver::new(RECEIVER_ID, CLUSTER.into(), replica.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let read = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let listener = rt.block_on(tokio::net::TcpListener::bind(listen))?;
    let addr = listener.local_addr()?;
    {
        let (read, written) = (read.clone(), written.clone());
        let svc = rx.clone().into_service();
        let incoming = TcpListenerStream::new(listener).map(move |s| {
            s.map(|io| {
                let _ = io.set_nodelay(true);
                Counted {
                    io,
                    read: read.clone(),
                    written: written.clone(),
                }
            })
        });
        rt.spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await;
        });
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {addr}")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        match line?.trim() {
            "stats" => {
                let (mut lags, s) = {
                    let s = replica.stats.lock().unwrap_or_else(|p| p.into_inner());
                    (
                        s.lags_us.clone(),
                        json!({
                            "batches": s.batches,
                            "entries": s.entries,
                            "rejected": s.rejected,
                            "first_ns": s.first_ns,
                            "last_ns": s.last_ns,
                        }),
                    )
                };
                lags.sort_unstable();
                let st = rx.status();
                let v = json!({
                    "installed": s,
                    "table_len": replica.inner.table.len(),
                    "complete": st.first().is_some_and(|p| p.complete),
                    "rx_bytes": read.load(Relaxed),
                    "tx_bytes": written.load(Relaxed),
                    "lag_us": {
                        "n": lags.len(),
                        "p50": percentile_u32(&lags, 0.5),
                        "p90": percentile_u32(&lags, 0.9),
                        "p99": percentile_u32(&lags, 0.99),
                        "p999": percentile_u32(&lags, 0.999),
                        "max": lags.last().copied().unwrap_or(0),
                    },
                });
                writeln!(out, "{v}")?;
                out.flush()?;
            }
            "quit" => break,
            "" => {}
            other => bail!("sync-receiver: unknown command {other:?}"),
        }
    }
    rt.shutdown_background();
    Ok(())
}

/// A `sync-receiver` child process; killed when dropped.
struct ReceiverProc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    addr: String,
}

impl ReceiverProc {
    fn spawn(cpu: usize, capacity: u64, lag: bool) -> Result<ReceiverProc> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args([
                "sync-receiver",
                "--cpu",
                &cpu.to_string(),
                "--capacity",
                &capacity.to_string(),
                "--lag",
                if lag { "1" } else { "0" },
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning fulcrum-bench sync-receiver")?;
        let stdin = child.stdin.take().context("child stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("ready ") else {
            let _ = child.kill();
            bail!("sync-receiver did not start: {line:?}");
        };
        let addr = addr.to_string();
        Ok(ReceiverProc {
            child,
            stdin,
            stdout,
            addr,
        })
    }

    fn stats(&mut self) -> Result<Value> {
        writeln!(self.stdin, "stats")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        serde_json::from_str(line.trim()).with_context(|| format!("receiver stats {line:?}"))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ReceiverProc {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn u(v: &Value, path: &[&str]) -> u64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The sending side
// ---------------------------------------------------------------------------------------------

fn source(table: Arc<ConnTable>, clock: CoarseClock) -> Arc<TableSource> {
    let s = Arc::new(TableSource {
        table,
        clock,
        queue: ChangeQueue::new(QUEUE_CAP),
    });
    s.queue.set_enabled(true);
    s
}

fn peer(sender: &Sender) -> PeerStatus {
    sender.status().into_iter().next().unwrap_or_default()
}

/// Polls the sender's status every 500 µs until `done`; fails after `limit`.
fn wait_status(
    sender: &Sender,
    what: &str,
    limit: Duration,
    mut done: impl FnMut(&PeerStatus) -> bool,
) -> Result<PeerStatus> {
    let deadline = Instant::now() + limit;
    loop {
        let s = peer(sender);
        if done(&s) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}: {s:?}");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

struct Link {
    rx: ReceiverProc,
    src: Arc<TableSource>,
    sender: Sender,
}

impl Link {
    /// A fresh receiver process and a sender over `table`, connected and live.
    fn start(
        rt: &tokio::runtime::Runtime,
        o: &Opts,
        table: Arc<ConnTable>,
        clock: CoarseClock,
        rx_capacity: u64,
        lag: bool,
    ) -> Result<(Link, Instant)> {
        let rx = ReceiverProc::spawn(o.receiver_cpu, rx_capacity, lag)?;
        let src = source(table, clock);
        let _g = rt.enter();
        let sender = Sender::start(
            SENDER_ID,
            CLUSTER.into(),
            SyncTimers::default(),
            src.clone(),
        );
        let t = Instant::now();
        sender.set_peers(&[(RECEIVER_ID, rx.addr.clone())]);
        Ok((Link { rx, src, sender }, t))
    }

    fn wait_live(&self) -> Result<PeerStatus> {
        wait_status(
            &self.sender,
            "the link to be live",
            Duration::from_secs(10),
            |s| s.state == LinkState::Live && s.resyncs == 1 && !s.behind,
        )
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.sender.stop();
    }
}

#[derive(Debug)]
struct Opts {
    entries: u64,
    runs: usize,
    rate: u64,
    seconds: u64,
    resync: u64,
    sender_cpu: usize,
    receiver_cpu: usize,
    json: bool,
}

// ---------------------------------------------------------------------------------------------
// 1. Throughput
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct ThroughputRun {
    /// First push → sender counted the last acknowledgement.
    secs_ack: f64,
    /// First push → receiver installed the last entry.
    secs_apply: f64,
    lag_p50_us: u64,
    lag_p99_us: u64,
    lag_max_us: u64,
    sender_lag_p99_us: u64,
    record_bytes: u64,
    tcp_bytes: u64,
    ack_bytes: u64,
    batches: u64,
    /// Share of a core the sender process (generator included) ran / waited for a CPU.
    sender_cpu: f64,
    sender_wait: f64,
    receiver_cpu: f64,
    receiver_wait: f64,
}

/// Most changes the throughput generator keeps pushed and not yet acknowledged:
/// `batch_entries × window`, the most a peer may lag and still count as current (beyond
/// `max_lag_entries` queued for it, the sender would drop its changes and resync it).
fn inflight_bound() -> u64 {
    let t = SyncTimers::default();
    (t.batch_entries * t.window) as u64
}

fn throughput_run(
    rt: &tokio::runtime::Runtime,
    o: &Opts,
    es: &[ConnEntry],
    clock: CoarseClock,
) -> Result<ThroughputRun> {
    let n = es.len() as u64;
    let (mut link, _) = Link::start(rt, o, Arc::new(table_for(0)?), clock, n, true)?;
    let live = link.wait_live()?;
    let rx0 = link.rx.stats()?;
    let bound = inflight_bound();
    let mut local: Vec<ConnEntry> = Vec::with_capacity(BLOCK);
    let (mut pushed, mut acked) = (0u64, 0u64);
    // `status()` sorts the link's lag samples: ask at most once a millisecond.
    let mut asked = Instant::now();
    let me = std::process::id();
    let (cpu_tx0, cpu_rx0) = (sched_ns(me), sched_ns(link.rx.pid()));
    let t0 = mono_ns();
    while pushed < n {
        let queued = link.src.queue.len() as u64;
        let room_q = (QUEUE_CAP as u64).saturating_sub(queued);
        let mut room_l = (acked + bound).saturating_sub(pushed);
        if room_l < BLOCK as u64 && asked.elapsed() >= Duration::from_millis(1) {
            acked = peer(&link.sender).acked - live.acked;
            asked = Instant::now();
            room_l = (acked + bound).saturating_sub(pushed);
        }
        let k = room_q.min(room_l).min(BLOCK as u64).min(n - pushed);
        if k == 0 {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        local.extend_from_slice(&es[pushed as usize..(pushed + k) as usize]);
        let mac = stamp_mac(mono_ns() / 1000);
        for e in &mut local {
            e.set_client_mac(mac);
        }
        link.src.queue.push_from(&mut local);
        pushed += k;
    }
    let st = wait_status(
        &link.sender,
        "the last acknowledgement",
        Duration::from_secs(120),
        |s| s.acked - live.acked >= n,
    )?;
    let t_ack = mono_ns();
    let (cpu_tx1, cpu_rx1) = (sched_ns(me), sched_ns(link.rx.pid()));
    let rx1 = link.rx.stats()?;
    if link.src.queue.dropped() != 0 || st.dropped != 0 || st.resyncs != 1 {
        bail!(
            "changes were dropped (queue {}, link {}, resyncs {})",
            link.src.queue.dropped(),
            st.dropped,
            st.resyncs
        );
    }
    if u(&rx1, &["table_len"]) != n || u(&rx1, &["installed", "rejected"]) != 0 {
        bail!("the receiver's table holds {} of {n}", rx1["table_len"]);
    }
    let wall = (t_ack - t0) as f64 / 1e9;
    let (sender_cpu, sender_wait) = cpu_share(cpu_tx0, cpu_tx1, wall);
    let (receiver_cpu, receiver_wait) = cpu_share(cpu_rx0, cpu_rx1, wall);
    Ok(ThroughputRun {
        secs_ack: wall,
        secs_apply: u(&rx1, &["installed", "last_ns"]).saturating_sub(t0) as f64 / 1e9,
        lag_p50_us: u(&rx1, &["lag_us", "p50"]),
        lag_p99_us: u(&rx1, &["lag_us", "p99"]),
        lag_max_us: u(&rx1, &["lag_us", "max"]),
        sender_lag_p99_us: st.lag_p99_us,
        record_bytes: st.wire_bytes - live.wire_bytes,
        tcp_bytes: u(&rx1, &["rx_bytes"]) - u(&rx0, &["rx_bytes"]),
        ack_bytes: u(&rx1, &["tx_bytes"]) - u(&rx0, &["tx_bytes"]),
        batches: u(&rx1, &["installed", "batches"]) - u(&rx0, &["installed", "batches"]),
        sender_cpu,
        sender_wait,
        receiver_cpu,
        receiver_wait,
    })
}

// ---------------------------------------------------------------------------------------------
// Baselines: one thread, no gRPC
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    Encode,
    Decode,
    DecodeInstall,
    All,
    IpvsEncode,
    IpvsAll,
}

impl Base {
    const ALL: [Base; 6] = [
        Base::Encode,
        Base::Decode,
        Base::DecodeInstall,
        Base::All,
        Base::IpvsEncode,
        Base::IpvsAll,
    ];

    fn key(self) -> &'static str {
        match self {
            Base::Encode => "fulcrum_encode",
            Base::Decode => "fulcrum_decode",
            Base::DecodeInstall => "fulcrum_decode_install",
            Base::All => "fulcrum_encode_decode_install",
            Base::IpvsEncode => "ipvs_v1_encode",
            Base::IpvsAll => "ipvs_v1_encode_decode_install",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Base::Encode => "Fulcrum record: `record::encode` into 2048-entry batches",
            Base::Decode => "Fulcrum record: decode (`record::Reader`) into a batch vector",
            Base::DecodeInstall => {
                "Fulcrum record: decode + install in a fresh table (`TableReplica::install`) = the receiver's part"
            }
            Base::All => {
                "Fulcrum record: encode + decode + install, per 2048-entry batch = both sides on one core"
            }
            Base::IpvsEncode => {
                "IPVS v1: `SyncConn::from_entry` + `ipvs::Encoder` (1472-byte datagrams)"
            }
            Base::IpvsAll => {
                "IPVS v1: encode + `ipvs::decode` + `SyncConn::to_entry` + install in a fresh table"
            }
        }
    }
}

/// Entries per second of `b` over `es`, one thread.
fn baseline(b: Base, es: &[ConnEntry], encoded: &[Vec<u8>], clock: CoarseClock) -> Result<f64> {
    let now = clock.now();
    let batch = SyncTimers::default().batch_entries;
    let replica = TableReplica {
        table: Arc::new(table_for(es.len() as u64)?),
        clock,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(batch * 72);
    let mut got: Vec<ConnEntry> = Vec::with_capacity(batch);
    let mut count = 0u64;
    let t = Instant::now();
    match b {
        Base::Encode => {
            for c in es.chunks(batch) {
                buf.clear();
                for e in c {
                    record::encode(e, now, &mut buf);
                }
                std::hint::black_box(&buf);
            }
        }
        Base::Decode | Base::DecodeInstall => {
            for bytes in encoded {
                got.clear();
                let mut r = record::Reader::new(bytes);
                while let Some(e) = r.next_entry(now) {
                    got.push(e?);
                }
                if b == Base::DecodeInstall {
                    count += replica.install(SENDER_ID, &mut got);
                } else {
                    std::hint::black_box(&got);
                }
            }
        }
        Base::All => {
            for c in es.chunks(batch) {
                buf.clear();
                for e in c {
                    record::encode(e, now, &mut buf);
                }
                got.clear();
                let mut r = record::Reader::new(&buf);
                while let Some(e) = r.next_entry(now) {
                    got.push(e?);
                }
                count += replica.install(SENDER_ID, &mut got);
            }
        }
        Base::IpvsEncode | Base::IpvsAll => {
            let timeouts = Timeouts::default();
            let ctx = ipvs::ImportContext {
                service: 0,
                now,
                origin: origin_slot(SENDER_ID),
                persistence: None,
                timeouts: &timeouts,
            };
            let mut enc = ipvs::Encoder::new(0, ipvs::DEFAULT_SYNC_MAXLEN);
            let mut flush = |msgs: Vec<Vec<u8>>| -> Result<()> {
                for m in msgs {
                    if b == Base::IpvsEncode {
                        std::hint::black_box(m);
                        continue;
                    }
                    let d = ipvs::decode(&m, 0)?;
                    for c in &d.message.conns {
                        let e = c.to_entry(&ctx)?;
                        if replica.table.upsert(e).is_err() {
                            count += 1;
                        }
                    }
                }
                Ok(())
            };
            for (i, e) in es.iter().enumerate() {
                enc.push(&ipvs::SyncConn::from_entry(e, e.timeout())?)?;
                if i % 256 == 255 {
                    flush(enc.take_ready())?;
                }
            }
            flush(enc.finish())?;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    std::hint::black_box(count);
    if matches!(b, Base::DecodeInstall | Base::All | Base::IpvsAll)
        && replica.table.len() != es.len()
    {
        bail!(
            "baseline {b:?}: table holds {} of {}",
            replica.table.len(),
            es.len()
        );
    }
    Ok(es.len() as f64 / secs)
}

// ---------------------------------------------------------------------------------------------
// 2. Lag at a paced rate
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct LagRun {
    offered: f64,
    n: u64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    sender_lag_p99_us: u64,
    record_bytes: u64,
    tcp_bytes: u64,
    ack_bytes: u64,
    batches: u64,
    /// Share of a core the sender process (generator included) ran / waited for a CPU.
    sender_cpu: f64,
    sender_wait: f64,
    receiver_cpu: f64,
    receiver_wait: f64,
}

fn lag_run(
    rt: &tokio::runtime::Runtime,
    o: &Opts,
    es: &[ConnEntry],
    clock: CoarseClock,
) -> Result<LagRun> {
    let n = es.len() as u64;
    let (mut link, _) = Link::start(rt, o, Arc::new(table_for(0)?), clock, n, true)?;
    let live = link.wait_live()?;
    let rx0 = link.rx.stats()?;
    let me = std::process::id();
    let (cpu_tx0, cpu_rx0) = (sched_ns(me), sched_ns(link.rx.pid()));
    let mut local: Vec<ConnEntry> = Vec::with_capacity(BLOCK);
    let mut pushed = 0u64;
    let start = Instant::now();
    while pushed < n {
        let due = ((start.elapsed().as_secs_f64() * o.rate as f64) as u64).min(n);
        let k = (due - pushed).min(BLOCK as u64);
        if k > 0 {
            local.extend_from_slice(&es[pushed as usize..(pushed + k) as usize]);
            let mac = stamp_mac(mono_ns() / 1000);
            for e in &mut local {
                e.set_client_mac(mac);
            }
            link.src.queue.push_from(&mut local);
            pushed += k;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let offered = n as f64 / start.elapsed().as_secs_f64();
    let wall = start.elapsed().as_secs_f64();
    let (cpu_tx1, cpu_rx1) = (sched_ns(me), sched_ns(link.rx.pid()));
    let st = wait_status(
        &link.sender,
        "the last acknowledgement",
        Duration::from_secs(60),
        |s| s.acked - live.acked >= n,
    )?;
    let rx1 = link.rx.stats()?;
    if link.src.queue.dropped() != 0 || st.dropped != 0 || u(&rx1, &["table_len"]) != n {
        bail!(
            "lag run lost changes: queue dropped {}, link dropped {}, receiver holds {}",
            link.src.queue.dropped(),
            st.dropped,
            rx1["table_len"]
        );
    }
    let (sender_cpu, sender_wait) = cpu_share(cpu_tx0, cpu_tx1, wall);
    let (receiver_cpu, receiver_wait) = cpu_share(cpu_rx0, cpu_rx1, wall);
    Ok(LagRun {
        offered,
        n: u(&rx1, &["lag_us", "n"]),
        p50_us: u(&rx1, &["lag_us", "p50"]),
        p90_us: u(&rx1, &["lag_us", "p90"]),
        p99_us: u(&rx1, &["lag_us", "p99"]),
        p999_us: u(&rx1, &["lag_us", "p999"]),
        max_us: u(&rx1, &["lag_us", "max"]),
        sender_lag_p99_us: st.lag_p99_us,
        record_bytes: st.wire_bytes - live.wire_bytes,
        tcp_bytes: u(&rx1, &["rx_bytes"]) - u(&rx0, &["rx_bytes"]),
        ack_bytes: u(&rx1, &["tx_bytes"]) - u(&rx0, &["tx_bytes"]),
        batches: u(&rx1, &["installed", "batches"]) - u(&rx0, &["installed", "batches"]),
        sender_cpu,
        sender_wait,
        receiver_cpu,
        receiver_wait,
    })
}

// ---------------------------------------------------------------------------------------------
// 4. Full resync
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct ResyncRun {
    /// `set_peers` → snapshot acknowledged (sender's view).
    secs: f64,
    /// First → last snapshot batch installed (receiver's view).
    secs_rx: f64,
    tcp_bytes: u64,
    record_bytes: u64,
}

fn resync_run(
    rt: &tokio::runtime::Runtime,
    o: &Opts,
    table: &Arc<ConnTable>,
    clock: CoarseClock,
) -> Result<ResyncRun> {
    let n = table.len() as u64;
    let (mut link, t0) = Link::start(rt, o, table.clone(), clock, n, false)?;
    let st = wait_status(
        &link.sender,
        "the snapshot to be acknowledged",
        Duration::from_secs(120),
        |s| s.state == LinkState::Live && s.snapshot_entries == n && s.acked >= n,
    )?;
    let secs = t0.elapsed().as_secs_f64();
    let rx = link.rx.stats()?;
    if u(&rx, &["table_len"]) != n || rx["complete"] != Value::Bool(true) {
        bail!(
            "resync: the receiver holds {} of {n} (complete: {})",
            rx["table_len"],
            rx["complete"]
        );
    }
    Ok(ResyncRun {
        secs,
        secs_rx: u(&rx, &["installed", "last_ns"])
            .saturating_sub(u(&rx, &["installed", "first_ns"])) as f64
            / 1e9,
        tcp_bytes: u(&rx, &["rx_bytes"]),
        record_bytes: st.wire_bytes,
    })
}

// ---------------------------------------------------------------------------------------------
// 3. Record sizes
// ---------------------------------------------------------------------------------------------

struct SizeRow {
    what: &'static str,
    fulcrum: usize,
    ipvs: usize,
}

fn sizes(now: u32) -> Result<Vec<SizeRow>> {
    let len = |e: &ConnEntry| {
        let mut b = Vec::new();
        record::encode(e, now, &mut b);
        b.len()
    };
    let ipvs_len = |e: &ConnEntry| -> Result<usize> {
        Ok(ipvs::SyncConn::from_entry(e, e.timeout())?.encoded_len())
    };
    // entry(0): IPv4 DR; entry(1): IPv6 DR; entry(6)/(7): j = 3, NAT.
    let v4 = entry(0, now);
    let v6 = entry(1, now);
    let v4nat = entry(6, now);
    let v6nat = entry(7, now);
    let mut v4p = v4;
    v4p.set_persistence(Some(Persistence::new(PersistKind::Port, 32)));
    let tpl = |e: &ConnEntry, prefix: u8| -> Result<ConnEntry> {
        let k = ConnKey::template(
            proto::TCP,
            e.client().ip(),
            prefix,
            TemplateTarget::Virtual(e.virtual_addr()),
        )
        .context("template key")?;
        Ok(ConnEntry::template(
            k,
            e.dest(),
            FwdMethod::DirectRoute,
            0,
            360,
            now,
        ))
    };
    let t4 = tpl(&v4, 32)?;
    let t6 = tpl(&v6, 128)?;
    let mut rows = Vec::new();
    for (what, e) in [
        ("IPv4 TCP established, DR, client MAC", &v4),
        ("IPv6 TCP established, DR, client MAC", &v6),
        ("IPv4 TCP established, NAT, client MAC", &v4nat),
        ("IPv6 TCP established, NAT, client MAC", &v6nat),
        (
            "IPv4 connection of a persistent service (+ persistence)",
            &v4p,
        ),
        ("IPv4 persistence template", &t4),
        ("IPv6 persistence template", &t6),
    ] {
        rows.push(SizeRow {
            what,
            fulcrum: len(e),
            ipvs: ipvs_len(e)?,
        });
    }
    for (fam, e) in [(Family::V4, &v4), (Family::V6, &v6)] {
        if ipvs_len(e)? != ipvs::record_len(fam) {
            bail!("IPVS record of {fam:?} is not record_len");
        }
    }
    Ok(rows)
}

/// IPVS v1 datagram payload bytes per entry for `es` at the default sync_maxlen (headers
/// and alignment included), and the number of datagrams.
fn ipvs_datagram_bytes(es: &[ConnEntry]) -> Result<(f64, usize)> {
    let mut enc = ipvs::Encoder::new(0, ipvs::DEFAULT_SYNC_MAXLEN);
    for e in es {
        enc.push(&ipvs::SyncConn::from_entry(e, e.timeout())?)?;
    }
    let msgs = enc.finish();
    let bytes: usize = msgs.iter().map(Vec::len).sum();
    Ok((bytes as f64 / es.len() as f64, msgs.len()))
}

// ---------------------------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------------------------

fn median(v: impl IntoIterator<Item = f64>) -> Spread {
    Spread::of(&v.into_iter().collect::<Vec<_>>())
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// `fulcrum-bench sync [--entries 2000000] [--runs 3] [--rate 100000] [--seconds 5]
/// [--resync-entries 1000000] [--sender-cpu 0] [--receiver-cpu 1] [--json]`
pub fn run(args: &[String]) -> Result<()> {
    let json_out = args.iter().any(|a| a == "--json");
    let args: Vec<String> = args.iter().filter(|a| *a != "--json").cloned().collect();
    check_opts(
        &args,
        &[
            "--entries",
            "--runs",
            "--rate",
            "--seconds",
            "--resync-entries",
            "--sender-cpu",
            "--receiver-cpu",
        ],
    )?;
    let o = Opts {
        entries: opt(&args, "--entries")?.unwrap_or(2_000_000),
        runs: opt(&args, "--runs")?.unwrap_or(3),
        rate: opt(&args, "--rate")?.unwrap_or(100_000),
        seconds: opt(&args, "--seconds")?.unwrap_or(5),
        resync: opt(&args, "--resync-entries")?.unwrap_or(1_000_000),
        sender_cpu: opt(&args, "--sender-cpu")?.unwrap_or(0),
        receiver_cpu: opt(&args, "--receiver-cpu")?.unwrap_or(1),
        json: json_out,
    };
    if o.entries == 0 || o.entries > 20_000_000 || o.resync > 20_000_000 {
        bail!("--entries and --resync-entries: 1..=20,000,000");
    }
    if o.runs == 0 || o.runs > 20 || o.seconds == 0 || o.seconds > 60 || o.rate == 0 {
        bail!("--runs 1..=20, --seconds 1..=60, --rate > 0");
    }
    if o.rate.saturating_mul(o.seconds) > 20_000_000 {
        bail!("--rate x --seconds: at most 20,000,000 changes");
    }
    let load_before = loadavg();
    // Before pinning: `machine()` counts the CPUs this thread may use.
    let machine = machine();
    eprintln!("machine: {machine}; load {load_before}");
    let clock = CoarseClock::new();
    let now = clock.now();
    let es = entries(o.entries, now);

    // Baselines: one thread on the receiver's CPU, before any child exists.
    eprintln!(
        "baselines (one thread on CPU{}, no gRPC) ...",
        o.receiver_cpu
    );
    let base: Vec<(Base, Vec<f64>)> = {
        let es = es.clone();
        let cpu = o.receiver_cpu;
        let runs = o.runs;
        std::thread::spawn(move || -> Result<Vec<(Base, Vec<f64>)>> {
            pin_to_cpu(cpu)?;
            let batch = SyncTimers::default().batch_entries;
            let encoded: Vec<Vec<u8>> = es
                .chunks(batch)
                .map(|c| {
                    let mut b = Vec::new();
                    for e in c {
                        record::encode(e, now, &mut b);
                    }
                    b
                })
                .collect();
            let mut out: Vec<(Base, Vec<f64>)> = Base::ALL.iter().map(|b| (*b, vec![])).collect();
            for _ in 0..runs {
                for (b, v) in &mut out {
                    v.push(baseline(*b, &es, &encoded, clock)?);
                }
            }
            Ok(out)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("baseline thread panicked"))??
    };
    for (b, v) in &base {
        eprintln!("  {:<32} {}/s", b.key(), rate(Spread::of(v).median));
    }

    // Everything of the sending side on the sender's CPU: this thread (the generator) and
    // the runtime's threads, which inherit its affinity.
    pin_to_cpu(o.sender_cpu)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;

    // 1. Throughput.
    let mut tp = Vec::new();
    for r in 0..o.runs {
        let x = throughput_run(&rt, &o, &es, clock)?;
        eprintln!(
            "throughput run {}: {} entries in {:.3} s (acked) -> {}/s; installed by {:.3} s; lag p50 {} p99 {}",
            r + 1,
            o.entries,
            x.secs_ack,
            rate(o.entries as f64 / x.secs_ack),
            x.secs_apply,
            ms(x.lag_p50_us),
            ms(x.lag_p99_us)
        );
        tp.push(x);
    }

    // 2. Lag at a paced rate.
    let lag_n = o.rate * o.seconds;
    let lag_es: Vec<ConnEntry> = if lag_n <= o.entries {
        es[..lag_n as usize].to_vec()
    } else {
        entries(lag_n, now)
    };
    let lag = lag_run(&rt, &o, &lag_es, clock)?;
    eprintln!(
        "lag at {}/s for {} s: p50 {} p99 {} max {} (n={})",
        rate(lag.offered),
        o.seconds,
        ms(lag.p50_us),
        ms(lag.p99_us),
        ms(lag.max_us),
        lag.n
    );

    // 4. Full resync.
    let src_table = Arc::new(table_for(o.resync)?);
    for i in 0..o.resync {
        src_table.upsert(entry(i, now))?;
    }
    let mut rs = Vec::new();
    for r in 0..o.runs {
        let x = resync_run(&rt, &o, &src_table, clock)?;
        eprintln!(
            "resync run {}: {} entries in {:.3} s -> {}/s",
            r + 1,
            o.resync,
            x.secs,
            rate(o.resync as f64 / x.secs)
        );
        rs.push(x);
    }
    drop(src_table);
    rt.shutdown_background();

    // 3. Sizes.
    let size_rows = sizes(now)?;
    let (ipvs_dgram, ipvs_msgs) = ipvs_datagram_bytes(&es)?;
    let fulcrum_record_avg = {
        let mut b = Vec::new();
        for e in &es {
            record::encode(e, now, &mut b);
        }
        b.len() as f64 / es.len() as f64
    };
    let load_after = loadavg();

    // Report.
    let bmed = |b: Base| Spread::of(&base.iter().find(|(x, _)| *x == b).unwrap().1);
    let tput = median(tp.iter().map(|x| o.entries as f64 / x.secs_ack));
    let tput_apply = median(tp.iter().map(|x| o.entries as f64 / x.secs_apply));
    let full = bmed(Base::All);
    let recv_part = bmed(Base::DecodeInstall);
    let per_entry = |tcp: u64| tcp as f64 / o.entries as f64;
    let tp_tcp = median(tp.iter().map(|x| per_entry(x.tcp_bytes)));
    let tp_rec = median(tp.iter().map(|x| per_entry(x.record_bytes)));
    let tp_batches = median(tp.iter().map(|x| x.batches as f64));
    let tp_frame = median(
        tp.iter()
            .map(|x| (x.tcp_bytes - x.record_bytes) as f64 / x.batches.max(1) as f64),
    );
    let lag_frame = (lag.tcp_bytes - lag.record_bytes) as f64 / lag.batches.max(1) as f64;
    let rs_secs = median(rs.iter().map(|x| x.secs));
    let rs_rate = median(rs.iter().map(|x| o.resync as f64 / x.secs));
    let rs_rx = median(rs.iter().map(|x| x.secs_rx));

    let mut h = String::new();
    use std::fmt::Write as _;
    writeln!(h, "machine: {machine}")?;
    writeln!(
        h,
        "load average before {load_before}, after {load_after}; sender + generator on CPU{}, receiver process on CPU{}; SyncTimers::default()",
        o.sender_cpu, o.receiver_cpu
    )?;
    writeln!(h)?;
    writeln!(
        h,
        "1. Throughput: {} changes (IPv4/IPv6 alternating, 3/4 DR, 1/4 NAT, established TCP), pushed as fast as the stream takes them without dropping; median of {} [min-max]",
        o.entries, o.runs
    )?;
    writeln!(h)?;
    writeln!(h, "| measurement | entries/s | goal |")?;
    writeln!(h, "|---|---|---|")?;
    writeln!(
        h,
        "| gRPC loopback, first push -> last acknowledgement at the sender | **{}** [{}-{}] | >= 1 M/s: {} |",
        rate(tput.median),
        rate(tput.min),
        rate(tput.max),
        if tput.median >= 1e6 { "met" } else { "MISSED" }
    )?;
    writeln!(
        h,
        "| gRPC loopback, first push -> last entry installed at the receiver | {} [{}-{}] | |",
        rate(tput_apply.median),
        rate(tput_apply.min),
        rate(tput_apply.max)
    )?;
    for b in Base::ALL {
        let s = bmed(b);
        writeln!(
            h,
            "| in-process, one thread: {} | {} [{}-{}] | |",
            b.label(),
            rate(s.median),
            rate(s.min),
            rate(s.max)
        )?;
    }
    writeln!(h)?;
    writeln!(
        h,
        "ratio gRPC / in-process encode+decode+install on one core: {:.2}; gRPC / receiver's part (decode+install) on one core: {:.2}",
        tput.median / full.median,
        tput.median / recv_part.median
    )?;
    writeln!(
        h,
        "ratio Fulcrum record / IPVS v1: encode {:.2}x, encode+decode+install {:.2}x",
        bmed(Base::Encode).median / bmed(Base::IpvsEncode).median,
        full.median / bmed(Base::IpvsAll).median
    )?;
    writeln!(
        h,
        "while saturated (up to {} changes pushed and not yet acknowledged): lag push -> installed p50 {} p99 {} max {} (median of runs); sender lag_p99_us {}; on CPU: sender process {:.0} %, receiver process {:.0} % of a core; ready but waiting for a CPU: {:.0} % / {:.0} %; {:.0} batches of {:.0} entries on average",
        inflight_bound(),
        ms(median(tp.iter().map(|x| x.lag_p50_us as f64)).median as u64),
        ms(median(tp.iter().map(|x| x.lag_p99_us as f64)).median as u64),
        ms(median(tp.iter().map(|x| x.lag_max_us as f64)).median as u64),
        ms(median(tp.iter().map(|x| x.sender_lag_p99_us as f64)).median as u64),
        100.0 * median(tp.iter().map(|x| x.sender_cpu)).median,
        100.0 * median(tp.iter().map(|x| x.receiver_cpu)).median,
        100.0 * median(tp.iter().map(|x| x.sender_wait)).median,
        100.0 * median(tp.iter().map(|x| x.receiver_wait)).median,
        tp_batches.median,
        o.entries as f64 / tp_batches.median
    )?;
    writeln!(h)?;
    writeln!(
        h,
        "2. Lag at {}/s offered for {} s ({} changes): push into the ChangeQueue -> installed in the receiver's table",
        rate(lag.offered),
        o.seconds,
        lag.n
    )?;
    writeln!(h)?;
    writeln!(h, "| p50 | p90 | p99 | p99.9 | max | goal |")?;
    writeln!(h, "|---|---|---|---|---|---|")?;
    writeln!(
        h,
        "| {} | {} | **{}** | {} | {} | p99 <= 10 ms: {} |",
        ms(lag.p50_us),
        ms(lag.p90_us),
        ms(lag.p99_us),
        ms(lag.p999_us),
        ms(lag.max_us),
        if lag.p99_us <= 10_000 {
            "met"
        } else {
            "MISSED"
        }
    )?;
    writeln!(
        h,
        "sender's own lag_p99_us (drain before the batch -> ack, last 4096 batches): {}; on CPU: sender process {:.1} %, receiver process {:.1} % of a core; ready but waiting for a CPU: {:.1} % / {:.1} %; {} batches of {:.0} entries on average",
        ms(lag.sender_lag_p99_us),
        100.0 * lag.sender_cpu,
        100.0 * lag.receiver_cpu,
        100.0 * lag.sender_wait,
        100.0 * lag.receiver_wait,
        lag.batches,
        lag.n as f64 / lag.batches.max(1) as f64
    )?;
    writeln!(h)?;
    writeln!(h, "3. Bytes per entry")?;
    writeln!(h)?;
    writeln!(h, "| entry | Fulcrum record | IPVS v1 record |")?;
    writeln!(h, "|---|---|---|")?;
    for r in &size_rows {
        writeln!(h, "| {} | {} B | {} B |", r.what, r.fulcrum, r.ipvs)?;
    }
    writeln!(h)?;
    writeln!(
        h,
        "benchmark mix: Fulcrum records {:.1} B/entry; IPVS v1 datagram payload {:.1} B/entry ({} datagrams of <= 1472 B, 8-byte header included; + 28 B UDP/IPv4 header each = {:.1} B/entry)",
        fulcrum_record_avg,
        ipvs_dgram,
        ipvs_msgs,
        ipvs_dgram + 28.0 * ipvs_msgs as f64 / es.len() as f64
    )?;
    writeln!(
        h,
        "TCP payload the receiver read (HTTP/2 + gRPC + protobuf + records) per entry: saturated {:.1} B ({:.1} B of records; {:.0} B framing per batch); at {}/s {:.1} B ({:.1} B of records; {:.0} B framing per batch of {:.0}); acks back: {:.2} B/entry saturated, {:.2} B/entry paced",
        tp_tcp.median,
        tp_rec.median,
        tp_frame.median,
        rate(lag.offered),
        lag.tcp_bytes as f64 / lag.n.max(1) as f64,
        lag.record_bytes as f64 / lag.n.max(1) as f64,
        lag_frame,
        lag.n as f64 / lag.batches.max(1) as f64,
        median(tp.iter().map(|x| per_entry(x.ack_bytes))).median,
        lag.ack_bytes as f64 / lag.n.max(1) as f64
    )?;
    writeln!(h)?;
    writeln!(
        h,
        "4. Full resync of {} entries (half IPv4, half IPv6) to a fresh receiver, median of {} [min-max]",
        o.resync, o.runs
    )?;
    writeln!(h)?;
    writeln!(h, "| measurement | result |")?;
    writeln!(h, "|---|---|")?;
    writeln!(
        h,
        "| set_peers -> snapshot acknowledged (connect included) | **{:.3} s** [{:.3}-{:.3}] = {}/s |",
        rs_secs.median,
        rs_secs.min,
        rs_secs.max,
        rate(rs_rate.median)
    )?;
    writeln!(
        h,
        "| receiver: first -> last snapshot batch installed | {:.3} s [{:.3}-{:.3}] |",
        rs_rx.median, rs_rx.min, rs_rx.max
    )?;
    writeln!(
        h,
        "| TCP payload read by the receiver per entry (records) | {:.1} B ({:.1} B) |",
        median(
            rs.iter()
                .map(|x| x.tcp_bytes as f64 / o.resync.max(1) as f64)
        )
        .median,
        median(
            rs.iter()
                .map(|x| x.record_bytes as f64 / o.resync.max(1) as f64)
        )
        .median
    )?;

    if o.json {
        eprint!("{h}");
        let sp = |s: Spread| json!({"median": s.median, "min": s.min, "max": s.max});
        let v = json!({
            "machine": machine,
            "load_before": load_before,
            "load_after": load_after,
            "options": {
                "entries": o.entries, "runs": o.runs, "rate": o.rate, "seconds": o.seconds,
                "resync_entries": o.resync, "sender_cpu": o.sender_cpu,
                "receiver_cpu": o.receiver_cpu,
            },
            "throughput": {
                "entries_per_s_acked": sp(tput),
                "entries_per_s_installed": sp(tput_apply),
                "baselines_entries_per_s": base.iter().map(|(b, v)| (b.key().to_string(), sp(Spread::of(v)))).collect::<serde_json::Map<_, _>>(),
                "ratio_to_in_process_full": tput.median / full.median,
                "ratio_to_in_process_receiver_part": tput.median / recv_part.median,
                "runs": tp.iter().map(|x| json!({
                    "secs_acked": x.secs_ack, "secs_installed": x.secs_apply,
                    "lag_p50_us": x.lag_p50_us, "lag_p99_us": x.lag_p99_us, "lag_max_us": x.lag_max_us,
                    "sender_lag_p99_us": x.sender_lag_p99_us, "record_bytes": x.record_bytes,
                    "tcp_bytes": x.tcp_bytes, "ack_bytes": x.ack_bytes, "batches": x.batches,
                    "sender_cpu": x.sender_cpu, "receiver_cpu": x.receiver_cpu,
                    "sender_wait": x.sender_wait, "receiver_wait": x.receiver_wait,
                })).collect::<Vec<_>>(),
            },
            "lag": {
                "offered_per_s": lag.offered, "n": lag.n, "p50_us": lag.p50_us,
                "p90_us": lag.p90_us, "p99_us": lag.p99_us, "p999_us": lag.p999_us,
                "max_us": lag.max_us, "sender_lag_p99_us": lag.sender_lag_p99_us,
                "record_bytes": lag.record_bytes, "tcp_bytes": lag.tcp_bytes,
                "ack_bytes": lag.ack_bytes, "batches": lag.batches,
                "sender_cpu": lag.sender_cpu, "receiver_cpu": lag.receiver_cpu,
                "sender_wait": lag.sender_wait, "receiver_wait": lag.receiver_wait,
            },
            "bytes": {
                "records": size_rows.iter().map(|r| json!({"entry": r.what, "fulcrum": r.fulcrum, "ipvs_v1": r.ipvs})).collect::<Vec<_>>(),
                "mix_fulcrum_record_per_entry": fulcrum_record_avg,
                "mix_ipvs_datagram_payload_per_entry": ipvs_dgram,
                "mix_ipvs_datagrams": ipvs_msgs,
                "tcp_payload_per_entry_saturated": tp_tcp.median,
                "framing_per_batch_saturated": tp_frame.median,
                "framing_per_batch_paced": lag_frame,
            },
            "resync": {
                "entries": o.resync,
                "secs": sp(rs_secs),
                "entries_per_s": sp(rs_rate),
                "secs_receiver_first_to_last": sp(rs_rx),
            },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{h}");
    }
    Ok(())
}
