//! Benchmark traffic over AF_PACKET: prebuilt 64-byte UDP frames over many flows, a generator
//! that sends them with `sendmmsg` in batches of 64, and the bare receive → rewrite MACs → send
//! forwarder that is the baseline for the engine. Both use the engine's own socket types
//! (`fulcrum_node::dataplane::afpacket`), so the baseline pays for the same I/O.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

use anyhow::Result;
use anyhow::anyhow;
use anyhow::bail;
use fulcrum_node::dataplane::afpacket::PacketSocket;
use fulcrum_node::dataplane::afpacket::RingConfig;
use fulcrum_node::dataplane::afpacket::TX_BATCH;
use fulcrum_node::dataplane::afpacket::TxSocket;
use fulcrum_node::dataplane::filter;

use super::enter_netns;
use super::pin_to_cpu;

/// A minimum Ethernet frame: 60 bytes here, 64 on the wire with the FCS.
pub const FRAME_LEN: usize = 60;
pub type Frame = [u8; FRAME_LEN];
/// Client addresses come from 198.51.100.0/24, 64 source ports each.
const PORTS_PER_CLIENT: usize = 64;
const CLIENTS: usize = 250;
pub const MAX_FLOWS: usize = PORTS_PER_CLIENT * CLIENTS;

pub type Mac = [u8; 6];

/// What the generated frames look like.
#[derive(Debug, Clone, Copy)]
pub struct FrameSpec {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub dst_ip: Ipv4Addr,
    pub dst_port: u16,
    /// Distinct (source address, source port) pairs, 1..=[`MAX_FLOWS`].
    pub flows: usize,
    /// Picks a different block of source ports (0..900), so each run can start with flows
    /// no table has seen yet.
    pub variant: u16,
}

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One frame per flow: Ethernet, IPv4 (TTL 64, DF), UDP with a valid checksum, 18 bytes of
/// payload.
pub fn udp_frames(spec: &FrameSpec) -> Result<Vec<Frame>> {
    if spec.flows == 0 || spec.flows > MAX_FLOWS {
        bail!("flows must be 1..={MAX_FLOWS}, not {}", spec.flows);
    }
    if spec.variant >= 900 {
        bail!("variant must be below 900");
    }
    let mut out = Vec::with_capacity(spec.flows);
    for i in 0..spec.flows {
        let src = Ipv4Addr::new(198, 51, 100, 1 + (i / PORTS_PER_CLIENT) as u8);
        let sport = 1024 + spec.variant * PORTS_PER_CLIENT as u16 + (i % PORTS_PER_CLIENT) as u16;
        let mut f = [0u8; FRAME_LEN];
        f[0..6].copy_from_slice(&spec.dst_mac);
        f[6..12].copy_from_slice(&spec.src_mac);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip_len = (FRAME_LEN - 14) as u16;
        let udp_len = ip_len - 20;
        {
            let ip = &mut f[14..34];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
            ip[4..6].copy_from_slice(&(i as u16).to_be_bytes());
            ip[6] = 0x40; // DF
            ip[8] = 64;
            ip[9] = 17;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&spec.dst_ip.octets());
            let c = csum_fold(csum_add(0, ip));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        }
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&spec.dst_port.to_be_bytes());
        f[38..40].copy_from_slice(&udp_len.to_be_bytes());
        for (k, b) in f[42..].iter_mut().enumerate() {
            *b = b"fulcrum-bench-flow"[k % 18];
        }
        let mut sum = csum_add(0, &src.octets());
        sum = csum_add(sum, &spec.dst_ip.octets());
        sum += 17 + u32::from(udp_len);
        sum = csum_add(sum, &f[34..]);
        let c = match csum_fold(sum) {
            0 => 0xffff,
            c => c,
        };
        f[40..42].copy_from_slice(&c.to_be_bytes());
        out.push(f);
    }
    Ok(out)
}

/// What a generator did.
#[derive(Debug, Clone, Copy)]
pub struct GenReport {
    pub sent: u64,
    pub elapsed: Duration,
}

/// A sending thread: cycles through `frames` in batches of [`TX_BATCH`] until it has sent
/// `max_packets` or run `max_time`, or is stopped; as fast as it can, or paced to a rate.
pub struct Generator {
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<GenReport>>,
}

impl Generator {
    /// Starts sending on `ifname` inside namespace `ns`, pinned to `cpu` if given, at most
    /// `rate` packets per second if given. Returns once the socket is open (so setup errors
    /// surface here).
    pub fn start(
        ns: &str,
        ifname: &str,
        frames: Vec<Frame>,
        cpu: Option<usize>,
        max_time: Duration,
        max_packets: u64,
        rate: Option<f64>,
    ) -> Result<Generator> {
        if frames.is_empty() {
            bail!("no frames to send");
        }
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (ns, ifname) = (ns.to_string(), ifname.to_string());
        let (sent2, stop2) = (sent.clone(), stop.clone());
        let handle = std::thread::Builder::new().name("bench-gen".into()).spawn(
            move || -> Result<GenReport> {
                let setup = (|| {
                    enter_netns(&ns)?;
                    if let Some(c) = cpu {
                        pin_to_cpu(c)?;
                    }
                    Ok(TxSocket::open(&ifname)?)
                })();
                let tx = match setup {
                    Ok(t) => {
                        let _ = ready_tx.send(Ok(()));
                        t
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        let _ = ready_tx.send(Err(e));
                        bail!("generator setup: {msg}");
                    }
                };
                let start = Instant::now();
                let mut next = 0usize;
                let mut total = 0u64;
                let mut batch: [&[u8]; TX_BATCH] = [&[]; TX_BATCH];
                while total < max_packets && !stop2.load(Relaxed) && start.elapsed() < max_time {
                    let n = (max_packets - total).min(TX_BATCH as u64) as usize;
                    for slot in batch.iter_mut().take(n) {
                        *slot = &frames[next][..];
                        next = (next + 1) % frames.len();
                    }
                    let s = tx.send_batch(&batch[..n])?;
                    // What the device did not take is offered again, in order.
                    next = (next + frames.len() - (n - s) % frames.len()) % frames.len();
                    total += s as u64;
                    sent2.store(total, Relaxed);
                    if let Some(r) = rate {
                        // Paced: wait until this many packets are due (sleep when the wait is
                        // long enough for the timer, spin otherwise).
                        let due = start + Duration::from_secs_f64(total as f64 / r);
                        loop {
                            let now = Instant::now();
                            if now >= due {
                                break;
                            }
                            if due - now > Duration::from_micros(200) {
                                std::thread::sleep(due - now - Duration::from_micros(100));
                            } else {
                                std::hint::spin_loop();
                            }
                        }
                    }
                }
                Ok(GenReport {
                    sent: total,
                    elapsed: start.elapsed(),
                })
            },
        )?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Generator { sent, stop, handle }),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(_) => Err(anyhow!("generator thread died during setup")),
        }
    }

    /// Frames sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Relaxed)
    }

    /// Waits for the generator to finish (it is bounded by its own limits).
    pub fn join(self) -> Result<GenReport> {
        self.handle
            .join()
            .map_err(|_| anyhow!("generator thread panicked"))?
    }

    pub fn stop(self) -> Result<GenReport> {
        self.stop.store(true, Relaxed);
        self.join()
    }
}

/// Sends `frames` once, unpinned (probes, warm-up).
pub fn send_once(ns: &str, ifname: &str, frames: &[Frame]) -> Result<u64> {
    let g = Generator::start(
        ns,
        ifname,
        frames.to_vec(),
        None,
        Duration::from_secs(2),
        frames.len() as u64,
        None,
    )?;
    Ok(g.join()?.sent)
}

/// What the baseline forwarder did.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwarderReport {
    pub received: u64,
    pub sent: u64,
    /// Frames the kernel dropped because the receive ring was full.
    pub ring_drops: u64,
}

/// Where the baseline sends frames and how its sockets are set up.
#[derive(Debug, Clone)]
pub struct ForwarderSpec {
    pub ns: String,
    pub ifname: String,
    /// The socket filter admits IPv4 to this address (and ARP), like the engine's.
    pub vip: Ipv4Addr,
    pub own_mac: Mac,
    /// Destination MACs, used in turn.
    pub dst_macs: [Mac; 2],
    pub cpu: usize,
    /// Stops by itself after this long.
    pub max_time: Duration,
}

/// The baseline: a TPACKET_V3 ring in, destination and source MAC rewritten in place, batches
/// of up to 64 out with `sendmmsg` — the engine's I/O pattern with no per-packet logic.
pub struct Forwarder {
    stop: Arc<AtomicBool>,
    tid: i32,
    handle: JoinHandle<Result<ForwarderReport>>,
}

impl Forwarder {
    pub fn start(spec: ForwarderSpec) -> Result<Forwarder> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<i32>>();
        let handle = std::thread::Builder::new().name("bench-fwd".into()).spawn(
            move || -> Result<ForwarderReport> {
                let setup = (|| {
                    enter_netns(&spec.ns)?;
                    pin_to_cpu(spec.cpu)?;
                    // The engine's ring geometry and socket filter: the kernel hands both
                    // loops exactly the same frames.
                    let rx = PacketSocket::open(&spec.ifname, RingConfig::default())?;
                    rx.set_filter(&filter::build(&filter::FilterSpec {
                        vips4: vec![spec.vip],
                        ..Default::default()
                    }))?;
                    let tx = TxSocket::open(&spec.ifname)?;
                    Ok((rx, tx))
                })();
                let (mut rx, tx) = match setup {
                    Ok(s) => {
                        // SAFETY: gettid has no preconditions.
                        let _ = ready_tx.send(Ok(unsafe { libc::gettid() }));
                        s
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        let _ = ready_tx.send(Err(e));
                        bail!("forwarder setup: {msg}");
                    }
                };
                let start = Instant::now();
                let mut report = ForwarderReport::default();
                let mut turn = 0usize;
                while !stop2.load(Relaxed) && start.elapsed() < spec.max_time {
                    let Some(mut block) = rx.next_block(100)? else {
                        continue;
                    };
                    let mut batch: [&[u8]; TX_BATCH] = [&[]; TX_BATCH];
                    let mut n = 0usize;
                    for frame in block.frames() {
                        if n == TX_BATCH {
                            report.sent += tx.send_batch(&batch[..n])? as u64;
                            n = 0;
                        }
                        let data = frame.data;
                        if data.len() < 14 {
                            continue;
                        }
                        data[0..6].copy_from_slice(&spec.dst_macs[turn & 1]);
                        data[6..12].copy_from_slice(&spec.own_mac);
                        turn = turn.wrapping_add(1);
                        report.received += 1;
                        batch[n] = data;
                        n += 1;
                    }
                    report.sent += tx.send_batch(&batch[..n])? as u64;
                    drop(block);
                }
                let (_, drops) = rx.stats()?;
                report.ring_drops = u64::from(drops);
                Ok(report)
            },
        )?;
        match ready_rx.recv() {
            Ok(Ok(tid)) => Ok(Forwarder { stop, tid, handle }),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(_) => Err(anyhow!("forwarder thread died during setup")),
        }
    }

    /// The forwarding thread's id (for its scheduler statistics).
    pub fn tid(&self) -> i32 {
        self.tid
    }

    pub fn stop(self) -> Result<ForwarderReport> {
        self.stop.store(true, Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow!("forwarder thread panicked"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_valid_udp_over_ipv4() {
        let spec = FrameSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            dst_ip: Ipv4Addr::new(192, 0, 2, 100),
            dst_port: 5000,
            flows: 1024,
            variant: 3,
        };
        let frames = udp_frames(&spec).unwrap();
        assert_eq!(frames.len(), 1024);
        let mut seen = std::collections::HashSet::new();
        for f in &frames {
            let p = etherparse::SlicedPacket::from_ethernet(f).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
                panic!("not IPv4")
            };
            let h = ip.header().to_header();
            assert_eq!(h.calc_header_checksum(), h.header_checksum);
            let Some(etherparse::TransportSlice::Udp(u)) = &p.transport else {
                panic!("not UDP")
            };
            let udp = u.to_header();
            assert_eq!(
                udp.calc_checksum_ipv4(&h, u.payload()).unwrap(),
                udp.checksum
            );
            assert_eq!(udp.destination_port, 5000);
            seen.insert((h.source, udp.source_port));
        }
        assert_eq!(seen.len(), 1024, "every frame is its own flow");
    }
}
