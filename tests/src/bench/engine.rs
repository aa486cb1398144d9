//! `fulcrum-bench engine`: forwarded packets per second of the userspace engine, side by side
//! with a bare AF_PACKET forwarding loop and with kernel nftables DNAT, on one veth link, in
//! one invocation.
//!
//! # Topology
//!
//! ```text
//!   lan namespace                                      dir namespace
//!   ┌──────────────────────────────────────┐  veth   ┌──────────────────────────────┐
//!   │ generator (CPU0) ─► eth0 ────────────┼────────►│ eth0  (the one-armed director │
//!   │ sink: nft netdev ingress drop,       │◄────────┼        under test, CPU1)      │
//!   │       counters per real-server MAC   │         └──────────────────────────────┘
//!   │ rs1, rs2: macvlans on eth0 that only │
//!   │       answer ARP for 192.0.2.33/.34  │
//!   └──────────────────────────────────────┘
//! ```
//!
//! The director has one interface, like a one-armed load balancer; the client (generator), the
//! real servers' MACs and the sink all sit at the other end of its veth. Every configuration
//! takes exactly this path: frame in on the director's `eth0`, frame out on the same `eth0`,
//! counted and dropped by the sink's netdev ingress hook (which runs after AF_PACKET taps and
//! before any IP processing, so the sink's kernel does no other work). No bridge: a bridge
//! hop would add work on both cores that belongs to none of the forwarders.
//!
//! In the userspace configurations the director's kernel drops the benchmark traffic at its
//! own netdev ingress hook (after the AF_PACKET taps), as `engine.rs` recommends, so it does
//! not also route or reject every frame. In the kernel configuration that rule is removed,
//! forwarding is on, and nftables DNATs with conntrack.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::fd::FromRawFd;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;

use super::CpuTimes;
use super::CpuUse;
use super::Spread;
use super::check_opts;
use super::cpu_times;
use super::in_netns;
use super::opt;
use super::pin_to_cpu;
use super::rate;
use super::sleep_until;
use super::traffic::Forwarder;
use super::traffic::ForwarderSpec;
use super::traffic::Frame;
use super::traffic::FrameSpec;
use super::traffic::Generator;
use super::traffic::Mac;
use super::traffic::send_once;
use super::traffic::udp_frames;
use crate::netns::Host;
use crate::netns::Lab;

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
/// The DR service (real servers on the same port) and the NAT service (to port 8080).
const PORT_DR: u16 = 5000;
const PORT_NAT: u16 = 5001;
const RS_NAT_PORT: u16 = 8080;
const RS: [(Ipv4Addr, Mac); 2] = [
    (Ipv4Addr::new(192, 0, 2, 33), [2, 0xfc, 0, 0, 0, 0x21]),
    (Ipv4Addr::new(192, 0, 2, 34), [2, 0xfc, 0, 0, 0, 0x22]),
];
const GEN_CPU: usize = 0;
const DUT_CPU: usize = 1;
/// Flows the readiness probe uses (never those of a measured run).
const PROBE_VARIANT: u16 = 899;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Baseline,
    EngineDr,
    EngineNat,
    NftDnat,
    NftDnatNoRps,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::Baseline,
        Mode::EngineDr,
        Mode::EngineNat,
        Mode::NftDnat,
        Mode::NftDnatNoRps,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline",
            Mode::EngineDr => "engine-dr",
            Mode::EngineNat => "engine-nat",
            Mode::NftDnat => "nft-dnat",
            Mode::NftDnatNoRps => "nft-dnat-norps",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Mode::Baseline => {
                "bare AF_PACKET loop (bench thread on CPU1): V3 rx ring -> rewrite dst+src MAC -> sendmmsg"
            }
            Mode::EngineDr => "fulcrumd engine, DR (MAC rewrite), 1 worker, `taskset -c 1`",
            Mode::EngineNat => {
                "fulcrumd engine, NAT inbound (dst addr+port rewrite, checksums), 1 worker, `taskset -c 1`"
            }
            Mode::NftDnat => {
                "kernel: ip_forward=1, nft `dnat to numgen inc mod 2 map {..: addr . port}`, conntrack, RPS eth0 -> CPU1"
            }
            Mode::NftDnatNoRps => "kernel nft DNAT as above, no RPS (all kernel work on CPU0)",
        }
    }

    fn port(self) -> u16 {
        match self {
            Mode::Baseline | Mode::EngineDr => PORT_DR,
            Mode::EngineNat | Mode::NftDnat | Mode::NftDnatNoRps => PORT_NAT,
        }
    }

    fn is_engine(self) -> bool {
        matches!(self, Mode::EngineDr | Mode::EngineNat)
    }

    fn parse(s: &str) -> Result<Mode> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .with_context(|| {
                format!(
                    "unknown mode {s:?}; modes: {}",
                    Mode::ALL.map(Mode::name).join(",")
                )
            })
    }
}

#[derive(Debug, Clone)]
pub struct Opts {
    pub seconds: f64,
    pub warmup: f64,
    pub runs: usize,
    pub flows: usize,
    pub modes: Vec<Mode>,
}

impl Opts {
    pub fn parse(args: &[String]) -> Result<Opts> {
        check_opts(
            args,
            &["--seconds", "--warmup", "--runs", "--flows", "--modes"],
        )?;
        let modes = match opt::<String>(args, "--modes")? {
            Some(list) => list
                .split(',')
                .map(Mode::parse)
                .collect::<Result<Vec<_>>>()?,
            None => vec![
                Mode::Baseline,
                Mode::EngineDr,
                Mode::EngineNat,
                Mode::NftDnat,
            ],
        };
        let o = Opts {
            seconds: opt(args, "--seconds")?.unwrap_or(5.0),
            warmup: opt(args, "--warmup")?.unwrap_or(1.0),
            runs: opt(args, "--runs")?.unwrap_or(3),
            flows: opt(args, "--flows")?.unwrap_or(1024),
            modes,
        };
        if !(0.5..=60.0).contains(&o.seconds) || !(0.0..=10.0).contains(&o.warmup) {
            bail!("--seconds must be 0.5..=60 and --warmup 0..=10");
        }
        if !(1..=20).contains(&o.runs) {
            bail!("--runs must be 1..=20");
        }
        Ok(o)
    }
}

/// How the director namespace is set up right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirMode {
    /// Forwarding off, netdev ingress drop of the benchmark traffic (after the taps).
    Userspace,
    /// Forwarding on, nft DNAT; RPS of eth0 to CPU1 or not.
    Kernel { rps: bool },
}

struct Bed {
    lab: Lab,
    lan: Host,
    dir: Host,
    lan_mac: Mac,
    dir_mac: Mac,
    tmp: tempfile::TempDir,
    dir_mode: DirMode,
    fulcrumd: Option<(usize, PathBuf)>,
    engine_starts: usize,
}

fn parse_mac(s: &str) -> Result<Mac> {
    let mut m = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("bad MAC {s:?}");
    }
    for (b, p) in m.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16)?;
    }
    Ok(m)
}

fn mac_str(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

const SINK_NFT: &str = "fbsink";
const DIR_DROP_NFT: &str = "fbdrop";
const DIR_LB_NFT: &str = "fblb";

impl Bed {
    fn new() -> Result<Bed> {
        let mut lab = Lab::new("bn")?;
        let (lan, dir) = lab.pair(("lan", 10), ("dir", 11))?;
        let tmp = tempfile::tempdir()?;
        // The real servers: two MACs on the lan side that answer ARP for their address only.
        let mut script = String::from(
            "sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.rp_filter=0 \
             net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0",
        );
        for (i, (ip, mac)) in RS.iter().enumerate() {
            script.push_str(&format!(
                " && ip link add rs{n} link eth0 address {mac} type macvlan mode bridge \
                 && ip addr add {ip}/32 dev rs{n} && ip link set rs{n} up",
                n = i + 1,
                mac = mac_str(mac)
            ));
        }
        lan.sh(&script)?;
        // The sink: count per real-server MAC, drop everything UDP before the IP stack.
        let sink = format!(
            "table netdev {SINK_NFT} {{\n  chain in {{\n    type filter hook ingress device \"eth0\" priority 0;\n    \
             ether daddr {m1} meta l4proto udp counter drop\n    \
             ether daddr {m2} meta l4proto udp counter drop\n    \
             meta l4proto udp counter drop\n  }}\n}}\n",
            m1 = mac_str(&RS[0].1),
            m2 = mac_str(&RS[1].1)
        );
        let bed = Bed {
            lan_mac: parse_mac(&lan.mac)?,
            dir_mac: parse_mac(&dir.mac)?,
            lab,
            lan,
            dir,
            tmp,
            dir_mode: DirMode::Kernel { rps: false },
            fulcrumd: None,
            engine_starts: 0,
        };
        bed.nft(&bed.lan, "sink.nft", &sink)?;
        // The director never sends redirects (one-armed: in and out on the same interface)
        // and does no reverse-path filtering; clients are reached over eth0.
        bed.dir.sh(
            "sysctl -qw net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0 \
             net.ipv4.conf.eth0.send_redirects=0 net.ipv4.conf.all.rp_filter=0 \
             net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0 \
             net.ipv6.conf.all.forwarding=0 net.ipv6.conf.eth0.forwarding=0 && \
             ip route add 198.51.100.0/24 dev eth0",
        )?;
        let mut bed = bed;
        bed.set_dir_mode(DirMode::Userspace)?;
        Ok(bed)
    }

    /// Loads an nft ruleset (from a file: nft 1.0.6 misparses some one-line rulesets).
    fn nft(&self, host: &Host, name: &str, rules: &str) -> Result<()> {
        let path = self.tmp.path().join(name);
        std::fs::write(&path, rules)?;
        host.sh(&format!("nft -f {}", path.display()))?;
        Ok(())
    }

    fn set_dir_mode(&mut self, mode: DirMode) -> Result<()> {
        if self.dir_mode == mode {
            return Ok(());
        }
        match mode {
            DirMode::Userspace => {
                let _ = self.dir.sh(&format!("nft delete table ip {DIR_LB_NFT}"));
                self.dir.sh(
                    "sysctl -qw net.ipv4.ip_forward=0 net.ipv4.conf.all.forwarding=0 \
                     net.ipv4.conf.eth0.forwarding=0 && \
                     echo 0 > /sys/class/net/eth0/queues/rx-0/rps_cpus",
                )?;
                let drop = format!(
                    "table netdev {DIR_DROP_NFT} {{\n  chain in {{\n    type filter hook ingress device \"eth0\" priority 0;\n    \
                     ip daddr {VIP} meta l4proto udp counter drop\n  }}\n}}\n"
                );
                self.nft(&self.dir, "dir-drop.nft", &drop)?;
            }
            DirMode::Kernel { rps } => {
                let _ = self
                    .dir
                    .sh(&format!("nft delete table netdev {DIR_DROP_NFT}"));
                let _ = self.dir.sh(&format!("nft delete table ip {DIR_LB_NFT}"));
                let lb = format!(
                    "table ip {DIR_LB_NFT} {{\n  chain pre {{\n    type nat hook prerouting priority dstnat;\n    \
                     ip daddr {VIP} udp dport {PORT_NAT} counter dnat ip to numgen inc mod 2 map \
                     {{ 0 : {r1} . {RS_NAT_PORT}, 1 : {r2} . {RS_NAT_PORT} }}\n  }}\n}}\n",
                    r1 = RS[0].0,
                    r2 = RS[1].0
                );
                self.nft(&self.dir, "dir-lb.nft", &lb)?;
                let mut s = String::from(
                    "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.forwarding=1 \
                     net.ipv4.conf.eth0.forwarding=1",
                );
                for (ip, mac) in RS {
                    s.push_str(&format!(
                        " && ip neigh replace {ip} lladdr {} dev eth0 nud permanent",
                        mac_str(&mac)
                    ));
                }
                s.push_str(&format!(
                    " && echo {} > /sys/class/net/eth0/queues/rx-0/rps_cpus",
                    if rps { 1 << DUT_CPU } else { 0 }
                ));
                self.dir.sh(&s)?;
            }
        }
        self.dir_mode = mode;
        Ok(())
    }

    fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        let out = self
            .dir
            .command(crate::fulcrum_bin().to_str().context("path")?)
            .args(["--server", "127.0.0.1:7070"])
            .args(args)
            .output()?;
        Ok(out)
    }

    fn engine_log(&self) -> String {
        self.fulcrumd
            .as_ref()
            .and_then(|(_, log)| std::fs::read_to_string(log).ok())
            .map(|s| {
                let lines: Vec<&str> = s.lines().collect();
                lines[lines.len().saturating_sub(30)..].join("\n")
            })
            .unwrap_or_default()
    }

    /// Starts `fulcrumd` in the director namespace, every thread of it on CPU1, one packet
    /// worker, and gives it the DR and the NAT service.
    fn start_engine(&mut self) -> Result<()> {
        if self.fulcrumd.is_some() {
            return Ok(());
        }
        self.set_dir_mode(DirMode::Userspace)?;
        self.engine_starts += 1;
        let n = self.engine_starts;
        let data = self.tmp.path().join(format!("data{n}"));
        let config = self.tmp.path().join(format!("fulcrumd{n}.toml"));
        let log = self.tmp.path().join(format!("fulcrumd{n}.log"));
        std::fs::write(
            &config,
            format!(
                "id = 1\nlisten = \"127.0.0.1:7070\"\ndata_dir = \"{}\"\n[bootstrap]\n\
                 [engine]\ninterface = \"eth0\"\nworkers = 1\n",
                data.display()
            ),
        )?;
        let fulcrumd = crate::fulcrumd_bin();
        let idx = self.lab.spawn_logged(
            &self.dir.clone(),
            "taskset",
            &[
                "-c",
                &DUT_CPU.to_string(),
                fulcrumd.to_str().context("path")?,
                "--config",
                config.to_str().context("path")?,
            ],
            &log,
        )?;
        self.fulcrumd = Some((idx, log));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let o = self.cli(&["cluster", "status"])?;
            if o.status.success() && String::from_utf8_lossy(&o.stdout).contains("leader") {
                break;
            }
            if Instant::now() > deadline {
                bail!("fulcrumd did not come up:\n{}", self.engine_log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut services = String::new();
        for (port, fwd, rport) in [(PORT_DR, "dr", PORT_DR), (PORT_NAT, "nat", RS_NAT_PORT)] {
            services.push_str(&format!(
                "[[service]]\nkey = \"udp/{VIP}:{port}\"\nscheduler = \"rr\"\n"
            ));
            for (ip, _) in RS {
                services.push_str(&format!(
                    "[[service.real]]\naddress = \"{ip}:{rport}\"\nforward = \"{fwd}\"\nweight = 1\n"
                ));
            }
        }
        let path = self.tmp.path().join("services.toml");
        std::fs::write(&path, services)?;
        let o = self.cli(&["apply", "-f", path.to_str().context("path")?])?;
        if !o.status.success() {
            bail!(
                "fulcrum apply: {}\n{}",
                String::from_utf8_lossy(&o.stderr),
                self.engine_log()
            );
        }
        Ok(())
    }

    /// The engine's drop counters (`fulcrum service stats`), as "reason=count" pairs.
    fn engine_drops(&self) -> String {
        let Ok(o) = self.cli(&["--json", "service", "stats"]) else {
            return String::new();
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) else {
            return String::new();
        };
        v["drops"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|d| format!("{}={}", d["reason"].as_str().unwrap_or("?"), d["count"]))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    }

    fn stop_engine(&mut self) {
        if let Some((idx, _)) = self.fulcrumd.take() {
            self.lab.kill(idx);
        }
    }

    fn prepare(&mut self, mode: Mode) -> Result<()> {
        match mode {
            Mode::Baseline => {
                self.stop_engine();
                self.set_dir_mode(DirMode::Userspace)
            }
            Mode::EngineDr | Mode::EngineNat => self.start_engine(),
            Mode::NftDnat => {
                self.stop_engine();
                self.set_dir_mode(DirMode::Kernel { rps: true })
            }
            Mode::NftDnatNoRps => {
                self.stop_engine();
                self.set_dir_mode(DirMode::Kernel { rps: false })
            }
        }
    }

    /// The sink's counters: [to rs1's MAC, to rs2's MAC, other UDP].
    fn sink_counters(&self) -> Result<[u64; 3]> {
        let o = crate::netns::run(
            self.lan
                .command("nft")
                .args(["-j", "list", "table", "netdev", SINK_NFT]),
        )?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
        let mut counts = Vec::new();
        for item in v["nftables"].as_array().context("nft json")? {
            if let Some(exprs) = item["rule"]["expr"].as_array() {
                for e in exprs {
                    if let Some(p) = e["counter"]["packets"].as_u64() {
                        counts.push(p);
                    }
                }
            }
        }
        if counts.len() != 3 {
            bail!("sink has {} counters, want 3", counts.len());
        }
        Ok([counts[0], counts[1], counts[2]])
    }

    fn frames(&self, mode: Mode, flows: usize, variant: u16) -> Result<Vec<Frame>> {
        udp_frames(&FrameSpec {
            src_mac: self.lan_mac,
            dst_mac: self.dir_mac,
            dst_ip: VIP,
            dst_port: mode.port(),
            flows,
            variant,
        })
    }

    /// Sends probe bursts until frames reach the sink at both real-server MACs (the engine
    /// resolves the real servers' MACs after a config change).
    fn wait_path(&self, mode: Mode) -> Result<()> {
        let probe = self.frames(mode, 64, PROBE_VARIANT)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let before = self.sink_counters()?;
            send_once(&self.lan.ns, "eth0", &probe)?;
            std::thread::sleep(Duration::from_millis(50));
            let after = self.sink_counters()?;
            if after[0] > before[0] && after[1] > before[1] {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: probe frames never reached both real servers (sink {before:?} -> {after:?})\n{}",
                    mode.name(),
                    self.engine_log()
                );
            }
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.stop_engine();
    }
}

/// Deletes every conntrack entry of the calling thread's namespace (ctnetlink
/// IPCTNL_MSG_CT_DELETE without a tuple = flush, as `conntrack -F` does).
fn conntrack_flush() -> Result<()> {
    const NFNL_SUBSYS_CTNETLINK: u16 = 1;
    const IPCTNL_MSG_CT_DELETE: u16 = 2;
    // SAFETY: plain socket(2).
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if raw < 0 {
        bail!("netlink socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut msg = [0u8; 20];
    msg[0..4].copy_from_slice(&20u32.to_ne_bytes());
    msg[4..6].copy_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE).to_ne_bytes());
    msg[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    msg[16] = libc::AF_INET as u8; // nfgen_family; version 0, res_id 0
    // SAFETY: sending our buffer on our socket (to the kernel: no address needed).
    if unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        bail!("netlink send: {}", std::io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    // SAFETY: receiving into our buffer.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 20 {
        bail!("netlink ack: {}", std::io::Error::last_os_error());
    }
    let ty = u16::from_ne_bytes([buf[4], buf[5]]);
    if ty == libc::NLMSG_ERROR as u16 {
        let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        // ENOENT: nothing to flush.
        if err != 0 && err != -libc::ENOENT {
            bail!(
                "conntrack flush: {}",
                std::io::Error::from_raw_os_error(-err)
            );
        }
    }
    Ok(())
}

fn conntrack_count() -> u64 {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

struct Sample {
    at: Instant,
    sink: [u64; 3],
    cpu: Vec<CpuTimes>,
    gen_sent: u64,
}

fn sample(bed: &Bed, generator: &Generator) -> Result<Sample> {
    let g0 = generator.sent();
    let t0 = Instant::now();
    let sink = bed.sink_counters()?;
    let t1 = Instant::now();
    let g1 = generator.sent();
    let cpu = cpu_times();
    Ok(Sample {
        at: t0 + (t1 - t0) / 2,
        sink,
        cpu,
        gen_sent: (g0 + g1) / 2,
    })
}

#[derive(Debug, Clone)]
struct RunResult {
    mode: Mode,
    fwd_pps: f64,
    gen_pps: f64,
    loss: f64,
    per_rs: [u64; 2],
    stray: u64,
    cpu0: CpuUse,
    cpu1: CpuUse,
    /// CPU1 busy time per forwarded packet.
    ns_per_pkt: f64,
    note: String,
}

fn run_once(bed: &Bed, mode: Mode, variant: u16, o: &Opts) -> Result<RunResult> {
    let frames = bed.frames(mode, o.flows, variant)?;
    let total = Duration::from_secs_f64(o.warmup + o.seconds + 0.5);
    let forwarder = if mode == Mode::Baseline {
        Some(Forwarder::start(ForwarderSpec {
            ns: bed.dir.ns.clone(),
            ifname: "eth0".into(),
            vip: VIP,
            own_mac: bed.dir_mac,
            dst_macs: [RS[0].1, RS[1].1],
            cpu: DUT_CPU,
            max_time: total + Duration::from_secs(40),
        })?)
    } else {
        None
    };
    bed.wait_path(mode)?;
    let mut note = String::new();
    if matches!(mode, Mode::NftDnat | Mode::NftDnatNoRps) {
        let left = in_netns(&bed.dir.ns, || {
            conntrack_flush()?;
            Ok(conntrack_count())
        })?;
        if left != 0 {
            note.push_str(&format!("conntrack after flush: {left}; "));
        }
    }
    let generator = Generator::start(&bed.lan.ns, "eth0", frames, Some(GEN_CPU), total, u64::MAX)?;
    let started = Instant::now();
    sleep_until(started + Duration::from_secs_f64(o.warmup));
    let a = sample(bed, &generator)?;
    sleep_until(a.at + Duration::from_secs_f64(o.seconds));
    let b = sample(bed, &generator)?;
    let gen_report = generator.join()?;
    std::thread::sleep(Duration::from_millis(100));
    if let Some(f) = forwarder {
        let r = f.stop()?;
        note.push_str(&format!(
            "fwd rx {} tx {} ring drops {}; ",
            r.received, r.sent, r.ring_drops
        ));
    }
    if matches!(mode, Mode::NftDnat | Mode::NftDnatNoRps) {
        let n = in_netns(&bed.dir.ns, || Ok(conntrack_count()))?;
        note.push_str(&format!("conntrack entries {n}; "));
    }
    let dt = (b.at - a.at).as_secs_f64();
    let per_rs = [b.sink[0] - a.sink[0], b.sink[1] - a.sink[1]];
    let fwd = (per_rs[0] + per_rs[1]) as f64;
    let sent = b.gen_sent.saturating_sub(a.gen_sent) as f64;
    let cpu = |i: usize| match (a.cpu.get(i), b.cpu.get(i)) {
        (Some(x), Some(y)) => CpuUse::between(x, y),
        _ => CpuUse::default(),
    };
    let (cpu0, cpu1) = (cpu(GEN_CPU), cpu(DUT_CPU));
    note.push_str(&format!(
        "gen total {} in {:.2}s",
        gen_report.sent,
        gen_report.elapsed.as_secs_f64()
    ));
    Ok(RunResult {
        mode,
        fwd_pps: fwd / dt,
        gen_pps: sent / dt,
        loss: if sent > 0.0 {
            (1.0 - fwd / sent).max(0.0)
        } else {
            0.0
        },
        per_rs,
        stray: b.sink[2] - a.sink[2],
        cpu0,
        cpu1,
        ns_per_pkt: if fwd > 0.0 {
            cpu1.busy * dt * 1e9 / fwd
        } else {
            0.0
        },
        note,
    })
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

fn print_run(round: usize, r: &RunResult) {
    println!(
        "  run {round} {:<15} fwd {:>9.0} pps  gen {:>9.0} pps  loss {:>5.1}%  \
         CPU0 {:>4}  CPU1 {:>4} (usr {} sys {} si {})  {:>5.0} ns/pkt on CPU1  rs {}/{}{}  [{}]",
        r.mode.name(),
        r.fwd_pps,
        r.gen_pps,
        r.loss * 100.0,
        pct(r.cpu0.busy),
        pct(r.cpu1.busy),
        pct(r.cpu1.user),
        pct(r.cpu1.system),
        pct(r.cpu1.softirq),
        r.ns_per_pkt,
        r.per_rs[0],
        r.per_rs[1],
        if r.stray > 0 {
            format!(" stray {}", r.stray)
        } else {
            String::new()
        },
        r.note
    );
}

fn check_tools() -> Result<()> {
    let nft = Command::new("nft").arg("--version").output();
    if !nft.is_ok_and(|o| o.status.success()) {
        bail!(
            "`nft` (nftables) is needed for the sink and the kernel DNAT comparison: \
             install it with `apt-get install -y nftables`"
        );
    }
    for tool in ["ip", "taskset", "sysctl"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            bail!("`{tool}` is needed (iproute2 / util-linux / procps)");
        }
    }
    Ok(())
}

pub fn run(args: &[String]) -> Result<()> {
    let o = Opts::parse(args)?;
    check_tools()?;
    if std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        < 2
    {
        bail!("needs 2 CPUs: the generator on CPU0, the code under test on CPU1");
    }
    // Build (or check) fulcrumd and fulcrum before pinning ourselves to one core.
    let _ = crate::fulcrumd_bin();
    println!("machine: {}", super::machine());
    println!("load average before: {}", super::loadavg());
    println!(
        "traffic: 64-byte frames (60 B + FCS), UDP/IPv4 to {VIP}, {} flows ({} client addresses x 64 source ports), \
         {} run(s) per configuration, {:.1} s measured after {:.1} s warm-up, rounds interleave the configurations",
        o.flows,
        o.flows.div_ceil(64),
        o.runs,
        o.seconds,
        o.warmup
    );
    // This thread (and the processes it starts: nft, the CLI) stays off the core under test.
    pin_to_cpu(GEN_CPU)?;
    let mut bed = Bed::new()?;
    println!(
        "topology: lan ns [generator CPU0, sink nft netdev ingress drop, rs1/rs2 macvlans answering ARP] \
         --veth-- dir ns [eth0, one-armed director under test on CPU1]"
    );
    for m in &o.modes {
        println!("  {:<15} {}", m.name(), m.describe());
    }
    let mut results: Vec<RunResult> = Vec::new();
    let mut variant = 0u16;
    for round in 1..=o.runs {
        for &mode in &o.modes {
            bed.prepare(mode)?;
            let r = run_once(&bed, mode, variant, &o)
                .with_context(|| format!("{} run {round}", mode.name()))?;
            variant = (variant + 1) % PROBE_VARIANT;
            print_run(round, &r);
            if mode.is_engine() && o.modes.iter().rev().find(|m| m.is_engine()) == Some(&mode) {
                let drops = bed.engine_drops();
                if !drops.is_empty() {
                    println!("  engine drop counters so far: {drops}");
                }
            }
            results.push(r);
        }
    }
    bed.stop_engine();
    println!("load average after: {}", super::loadavg());
    summarize(&o, &results);
    let _ = std::io::stdout().flush();
    Ok(())
}

fn summarize(o: &Opts, results: &[RunResult]) {
    println!();
    println!(
        "| configuration | forwarded pps, median [min–max] | generator pps | loss | CPU0 busy | CPU1 busy (usr/sys/si) | CPU1 ns per packet |"
    );
    println!("|---|---|---|---|---|---|---|");
    let of = |m: Mode| -> Vec<&RunResult> { results.iter().filter(|r| r.mode == m).collect() };
    let med = |v: &[&RunResult], f: fn(&RunResult) -> f64| -> Spread {
        Spread::of(&v.iter().map(|r| f(r)).collect::<Vec<_>>())
    };
    for &m in &o.modes {
        let v = of(m);
        if v.is_empty() {
            continue;
        }
        let fwd = med(&v, |r| r.fwd_pps);
        println!(
            "| {} | **{}** [{}–{}] | {} | {:.1} % | {} | {} ({}/{}/{}) | {:.0} |",
            m.name(),
            rate(fwd.median),
            rate(fwd.min),
            rate(fwd.max),
            rate(med(&v, |r| r.gen_pps).median),
            med(&v, |r| r.loss).median * 100.0,
            pct(med(&v, |r| r.cpu0.busy).median),
            pct(med(&v, |r| r.cpu1.busy).median),
            pct(med(&v, |r| r.cpu1.user).median),
            pct(med(&v, |r| r.cpu1.system).median),
            pct(med(&v, |r| r.cpu1.softirq).median),
            med(&v, |r| r.ns_per_pkt).median,
        );
    }
    println!();
    // Ratios per round (the configurations of one round ran back to back), then their median.
    let ratio = |num: Mode, den: Mode, f: fn(&RunResult) -> f64, label: &str, goal: &str| {
        let (n, d) = (of(num), of(den));
        if n.is_empty() || d.is_empty() {
            return;
        }
        let per_round: Vec<f64> = n.iter().zip(&d).map(|(a, b)| f(a) / f(b)).collect();
        let s = Spread::of(&per_round);
        println!(
            "{label:<44} {:.2}  (per round {:.2}–{:.2}){goal}",
            s.median, s.min, s.max
        );
    };
    println!("ratios of forwarded pps:");
    for e in [Mode::EngineDr, Mode::EngineNat] {
        ratio(
            e,
            Mode::Baseline,
            |r| r.fwd_pps,
            &format!("  {} / baseline", e.name()),
            "   goal >= 0.80",
        );
        for k in [Mode::NftDnat, Mode::NftDnatNoRps] {
            ratio(
                e,
                k,
                |r| r.fwd_pps,
                &format!("  {} / {}", e.name(), k.name()),
                "   goal >= 1.00",
            );
        }
    }
    println!("ratios of CPU1 cost per packet (other / engine: > 1 means the engine is cheaper):");
    for e in [Mode::EngineDr, Mode::EngineNat] {
        for other in [Mode::Baseline, Mode::NftDnat] {
            ratio(
                other,
                e,
                |r| r.ns_per_pkt,
                &format!("  {} ns / {} ns", other.name(), e.name()),
                "",
            );
        }
    }
}
