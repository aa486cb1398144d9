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
//!   │ sink: nft netdev ingress counter +   │◄────────┼        under test, CPU1)      │
//!   │       drop of every IPv4 frame       │         └──────────────────────────────┘
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
use super::find_process;
use super::find_task;
use super::in_netns;
use super::opt;
use super::pin_to_cpu;
use super::rate;
use super::sleep_until;
use super::task_times;
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
    /// A run in which other processes took more than this share of CPU1 is repeated ...
    pub max_others: f64,
    /// ... at most this many times (then kept, flagged).
    pub retries: usize,
    /// RPS of the director's eth0 to CPU1 in every configuration (else only for the kernel).
    pub rps_all: bool,
    /// Offered load in packets/s (default: as fast as the generator can).
    pub rate: Option<f64>,
}

impl Opts {
    pub fn parse(args: &[String]) -> Result<Opts> {
        check_opts(
            args,
            &[
                "--seconds",
                "--warmup",
                "--runs",
                "--flows",
                "--modes",
                "--max-others",
                "--retries",
                "--rps",
                "--rate",
            ],
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
            max_others: opt::<f64>(args, "--max-others")?.unwrap_or(3.0) / 100.0,
            retries: opt(args, "--retries")?.unwrap_or(3),
            rps_all: match opt::<String>(args, "--rps")?.as_deref() {
                None | Some("kernel") => false,
                Some("all") => true,
                Some(other) => bail!("--rps all|kernel, not {other:?}"),
            },
            rate: opt(args, "--rate")?,
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
    /// Forwarding off, netdev ingress drop of the benchmark traffic (after the taps); RPS
    /// of eth0 to CPU1 or not.
    Userspace { rps: bool },
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
    /// RPS to CPU1 for the userspace configurations too.
    rps_all: bool,
    /// The pid of ksoftirqd/1.
    ksoftirqd: Option<u32>,
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
    fn new(rps_all: bool) -> Result<Bed> {
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
        // The sink: count and drop every IPv4 frame before the IP stack. One rule, as cheap
        // as it gets: the sink's receive runs in the sender's softirq, on the core under test.
        let sink = format!(
            "table netdev {SINK_NFT} {{\n  chain in {{\n    type filter hook ingress device \"eth0\" priority 0;\n    \
             meta protocol ip counter drop\n  }}\n}}\n"
        );
        let bed = Bed {
            lan_mac: parse_mac(&lan.mac)?,
            dir_mac: parse_mac(&dir.mac)?,
            lab,
            lan,
            dir,
            tmp,
            dir_mode: DirMode::Kernel { rps: false },
            rps_all,
            ksoftirqd: find_process(&format!("ksoftirqd/{DUT_CPU}")),
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
        bed.set_dir_mode(bed.userspace())?;
        Ok(bed)
    }

    /// Loads an nft ruleset (from a file: nft 1.0.6 misparses some one-line rulesets).
    fn nft(&self, host: &Host, name: &str, rules: &str) -> Result<()> {
        let path = self.tmp.path().join(name);
        std::fs::write(&path, rules)?;
        host.sh(&format!("nft -f {}", path.display()))?;
        Ok(())
    }

    fn userspace(&self) -> DirMode {
        DirMode::Userspace { rps: self.rps_all }
    }

    fn set_dir_mode(&mut self, mode: DirMode) -> Result<()> {
        if self.dir_mode == mode {
            return Ok(());
        }
        match mode {
            DirMode::Userspace { rps } => {
                let _ = self.dir.sh(&format!("nft delete table ip {DIR_LB_NFT}"));
                let _ = self
                    .dir
                    .sh(&format!("nft delete table netdev {DIR_DROP_NFT}"));
                self.dir.sh(&format!(
                    "sysctl -qw net.ipv4.ip_forward=0 net.ipv4.conf.all.forwarding=0 \
                     net.ipv4.conf.eth0.forwarding=0 && \
                     echo {} > /sys/class/net/eth0/queues/rx-0/rps_cpus",
                    if rps { 1 << DUT_CPU } else { 0 }
                ))?;
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
        self.set_dir_mode(self.userspace())?;
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
                self.set_dir_mode(self.userspace())
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

    /// IPv4 frames the sink has received.
    fn sink_count(&self) -> Result<u64> {
        let o = crate::netns::run(
            self.lan
                .command("nft")
                .args(["-j", "list", "table", "netdev", SINK_NFT]),
        )?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
        for item in v["nftables"].as_array().context("nft json")? {
            if let Some(exprs) = item["rule"]["expr"].as_array() {
                for e in exprs {
                    if let Some(p) = e["counter"]["packets"].as_u64() {
                        return Ok(p);
                    }
                }
            }
        }
        bail!("the sink has no counter")
    }

    /// The engine's packet worker, for its scheduler statistics.
    fn engine_worker(&self) -> Option<(u32, i32)> {
        let (idx, _) = self.fulcrumd.as_ref()?;
        let pid = self.lab.pid(*idx)?;
        Some((pid, find_task(pid, "fulcrum-pkt0")?))
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

    /// Sends bursts of 64 probe frames (64 flows, both real servers) until a whole burst
    /// reaches the sink (the engine resolves the real servers' MACs after a config change).
    fn wait_path(&self, mode: Mode) -> Result<()> {
        let probe = self.frames(mode, 64, PROBE_VARIANT)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let before = self.sink_count()?;
            send_once(&self.lan.ns, "eth0", &probe)?;
            std::thread::sleep(Duration::from_millis(50));
            let after = self.sink_count()?;
            if after >= before + probe.len() as u64 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: probe frames never all reached the sink ({} of {})\n{}",
                    mode.name(),
                    after - before,
                    probe.len(),
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
    sink: u64,
    cpu: Vec<CpuTimes>,
    gen_sent: u64,
    /// (time on CPU, run-queue wait) of the forwarding thread (userspace configurations).
    dut: Option<(u64, u64)>,
    /// Time on CPU of ksoftirqd/1 (the director's own receive work, when it runs there).
    ksoftirqd: Option<u64>,
}

fn sample(bed: &Bed, generator: &Generator, dut: Option<(u32, i32)>) -> Result<Sample> {
    let g0 = generator.sent();
    let t0 = Instant::now();
    let sink = bed.sink_count()?;
    let t1 = Instant::now();
    let g1 = generator.sent();
    let cpu = cpu_times();
    Ok(Sample {
        at: t0 + (t1 - t0) / 2,
        sink,
        cpu,
        gen_sent: (g0 + g1) / 2,
        dut: dut.and_then(|(pid, tid)| task_times(pid, tid)),
        ksoftirqd: bed
            .ksoftirqd
            .and_then(|pid| task_times(pid, pid as i32))
            .map(|(run, _)| run),
    })
}

#[derive(Debug, Clone)]
struct RunResult {
    mode: Mode,
    fwd_pps: f64,
    gen_pps: f64,
    loss: f64,
    cpu0: CpuUse,
    cpu1: CpuUse,
    /// CPU1 busy time per forwarded packet, less what other processes took (`others`).
    cpu1_ns_per_pkt: f64,
    /// The forwarder's own CPU time per forwarded packet: the forwarding thread's time on
    /// CPU (userspace: its loop, its syscalls and the softirqs they run, i.e. the sink's
    /// receive too); for kernel forwarding, CPU1's busy time less its user and system time.
    fwd_ns_per_pkt: f64,
    /// Share of the window other processes took from the code under test on CPU1: the
    /// forwarding thread's run-queue wait (userspace), or CPU1's user+system time (kernel
    /// forwarding runs in softirq only).
    others: f64,
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
    let dut = match &forwarder {
        Some(f) => Some((std::process::id(), f.tid())),
        None if mode.is_engine() => Some(
            bed.engine_worker()
                .context("no fulcrum-pkt0 thread in fulcrumd")?,
        ),
        None => None,
    };
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
    let generator = Generator::start(
        &bed.lan.ns,
        "eth0",
        frames,
        Some(GEN_CPU),
        total,
        u64::MAX,
        o.rate,
    )?;
    let started = Instant::now();
    sleep_until(started + Duration::from_secs_f64(o.warmup));
    let a = sample(bed, &generator, dut)?;
    sleep_until(a.at + Duration::from_secs_f64(o.seconds));
    let b = sample(bed, &generator, dut)?;
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
    let fwd = b.sink.saturating_sub(a.sink) as f64;
    let sent = b.gen_sent.saturating_sub(a.gen_sent) as f64;
    let cpu = |i: usize| match (a.cpu.get(i), b.cpu.get(i)) {
        (Some(x), Some(y)) => CpuUse::between(x, y, dt),
        _ => CpuUse::default(),
    };
    let (cpu0, cpu1) = (cpu(GEN_CPU), cpu(DUT_CPU));
    let per_pkt = |secs: f64| if fwd > 0.0 { secs * 1e9 / fwd } else { 0.0 };
    let ksoftirqd = match (a.ksoftirqd, b.ksoftirqd) {
        (Some(x), Some(y)) => y.saturating_sub(x),
        _ => 0,
    };
    let (fwd_ns_per_pkt, others) = match (a.dut, b.dut) {
        // Waiting behind ksoftirqd/1 is waiting for our own receive work, not for others.
        (Some((run0, wait0)), Some((run1, wait1))) => (
            per_pkt(run1.saturating_sub(run0) as f64 / 1e9),
            wait1.saturating_sub(wait0).saturating_sub(ksoftirqd) as f64 / (dt * 1e9),
        ),
        _ if dut.is_some() => (f64::NAN, f64::NAN),
        _ => {
            let others = cpu1.user + cpu1.system;
            (per_pkt((cpu1.busy - others).max(0.0) * dt), others)
        }
    };
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
        cpu0,
        cpu1,
        cpu1_ns_per_pkt: per_pkt((cpu1.busy - others.max(0.0)).max(0.0) * dt),
        fwd_ns_per_pkt,
        others,
        note,
    })
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

fn print_run(round: usize, r: &RunResult) {
    println!(
        "  run {round} {:<15} fwd {:>7.0} pps  gen {:>7.0} pps  loss {:>4.1}%  \
         CPU0 {:>4}  CPU1 {:>4} (usr {} sys {} si {})  CPU1 {:>4.0} ns/pkt, forwarder {:>4.0} ns/pkt  \
         others on CPU1 {:.1}%{}  [{}]",
        r.mode.name(),
        r.fwd_pps,
        r.gen_pps,
        r.loss * 100.0,
        pct(r.cpu0.busy),
        pct(r.cpu1.busy),
        pct(r.cpu1.user),
        pct(r.cpu1.system),
        pct(r.cpu1.softirq),
        r.cpu1_ns_per_pkt,
        r.fwd_ns_per_pkt,
        r.others * 100.0,
        if r.others > NOISY { " (busy)" } else { "" },
        r.note
    );
}

/// Runs where other processes took more than this share of CPU1 are flagged.
const NOISY: f64 = 0.03;
/// Pause before repeating a run that other processes disturbed.
const RETRY_PAUSE: Duration = Duration::from_secs(15);

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
         {} run(s) per configuration, {:.1} s measured after {:.1} s warm-up, rounds interleave the configurations; \
         offered load: {}",
        o.flows,
        o.flows.div_ceil(64),
        o.runs,
        o.seconds,
        o.warmup,
        match o.rate {
            Some(r) => format!("{} pps (paced)", rate(r)),
            None => "as fast as the generator can send".into(),
        }
    );
    // This thread (and the processes it starts: nft, the CLI) stays off the core under test.
    pin_to_cpu(GEN_CPU)?;
    let mut bed = Bed::new(o.rps_all)?;
    println!(
        "topology: lan ns [generator CPU0, sink nft netdev ingress drop, rs1/rs2 macvlans answering ARP] \
         --veth-- dir ns [eth0, one-armed director under test on CPU1]"
    );
    println!(
        "RPS of the director's eth0 to CPU1: {}",
        if o.rps_all {
            "every configuration (the director's receive work is on CPU1 for all)"
        } else {
            "kernel configuration only (AF_PACKET configurations receive on the generator's CPU0)"
        }
    );
    for m in &o.modes {
        println!("  {:<15} {}", m.name(), m.describe());
    }
    let mut results: Vec<RunResult> = Vec::new();
    let mut variant = 0u16;
    let mut repeated = 0usize;
    for round in 1..=o.runs {
        for &mode in &o.modes {
            let mut attempt = 0;
            let r = loop {
                bed.prepare(mode)?;
                let r = run_once(&bed, mode, variant, &o)
                    .with_context(|| format!("{} run {round}", mode.name()))?;
                variant = (variant + 1) % PROBE_VARIANT;
                print_run(round, &r);
                attempt += 1;
                if r.others.is_nan() || r.others <= o.max_others || attempt > o.retries {
                    break r;
                }
                repeated += 1;
                println!(
                    "    other processes took {:.1}% of CPU1: repeating this run in {} s",
                    r.others * 100.0,
                    RETRY_PAUSE.as_secs()
                );
                std::thread::sleep(RETRY_PAUSE);
            };
            if mode.is_engine() && o.modes.iter().rev().find(|m| m.is_engine()) == Some(&mode) {
                let drops = bed.engine_drops();
                if !drops.is_empty() {
                    println!("  engine drop counters so far: {drops}");
                }
            }
            results.push(r);
        }
    }
    if repeated > 0 {
        println!(
            "{repeated} run(s) were repeated because other processes took > {:.0}% of CPU1; \
             the summary uses the last attempt of each",
            o.max_others * 100.0
        );
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
        "| configuration | forwarded pps, median [min–max] | generator pps | loss | CPU0 busy | CPU1 busy | CPU1 ns/packet, less others | forwarder CPU ns/packet [min–max] | = packets/s per core | others on CPU1 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
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
        let ns = med(&v, |r| r.fwd_ns_per_pkt);
        println!(
            "| {} | **{}** [{}–{}] | {} | {:.1} % | {} | {} | {:.0} | {:.0} [{:.0}–{:.0}] | {} | {:.1} % |",
            m.name(),
            rate(fwd.median),
            rate(fwd.min),
            rate(fwd.max),
            rate(med(&v, |r| r.gen_pps).median),
            med(&v, |r| r.loss).median * 100.0,
            pct(med(&v, |r| r.cpu0.busy).median),
            pct(med(&v, |r| r.cpu1.busy).median),
            med(&v, |r| r.cpu1_ns_per_pkt).median,
            ns.median,
            ns.min,
            ns.max,
            rate(1e9 / ns.median),
            med(&v, |r| r.others).median * 100.0,
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
            "{label:<40} {:.2}  (per round {:.2}–{:.2}){goal}",
            s.median, s.min, s.max
        );
    };
    println!("ratios of forwarded packets/s (what reached the sink):");
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
    println!(
        "ratios of packets/s per core (inverse CPU time per packet of the forwarder; the \
         generator can cap the forwarded rate, this cannot):"
    );
    for e in [Mode::EngineDr, Mode::EngineNat] {
        ratio(
            Mode::Baseline,
            e,
            |r| r.fwd_ns_per_pkt,
            &format!("  {} / baseline", e.name()),
            "   goal >= 0.80",
        );
    }
    if o.rps_all {
        println!(
            "ratios of CPU1 time per packet, other / engine (like for like: every configuration \
             receives, forwards and hands to the sink on CPU1; > 1 = the engine is cheaper):"
        );
        for e in [Mode::EngineDr, Mode::EngineNat] {
            for other in [Mode::Baseline, Mode::NftDnat] {
                ratio(
                    e,
                    other,
                    |r| 1.0 / r.cpu1_ns_per_pkt,
                    &format!("  {} vs {}", e.name(), other.name()),
                    if other == Mode::Baseline {
                        "   goal >= 0.80"
                    } else {
                        "   goal >= 1.00"
                    },
                );
            }
        }
        return;
    }
    for e in [Mode::EngineDr, Mode::EngineNat] {
        ratio(
            Mode::NftDnat,
            e,
            |r| r.fwd_ns_per_pkt,
            &format!("  {} / nft-dnat", e.name()),
            "   (nft's CPU1 time includes the receive, which the AF_PACKET \
             configurations do on CPU0: not like for like)",
        );
    }
}
