//! The 14 IPVS schedulers, with IPVS's semantics, for IPv4 and IPv6.
//!
//! The engine builds one [`Scheduler`] per virtual service from its real servers ([`build`]),
//! rebuilds it when the set of real servers or a weight changes ([`rebuild`], which carries the
//! state IPVS keeps across such changes), and calls [`Scheduler::pick`] once per **new**
//! connection (not per packet).
//!
//! # The packet path
//!
//! `pick` never allocates. How each scheduler keeps its state:
//!
//! | scheduler | state read/written by `pick` |
//! |---|---|
//! | rr | last position, one `AtomicU32` (compare-and-swap) |
//! | wrr | (position, current weight) packed in one `AtomicU64` (compare-and-swap); gcd and max weight fixed at build |
//! | lc, wlc, sed, nq, fo, ovf | none: a scan of the servers' atomic counters |
//! | twos | a splitmix64 counter in one `AtomicU64` (`fetch_add`) |
//! | dh, sh | an immutable table of 2^8 server indexes built at config time |
//! | mh | an immutable Maglev table (prime size, default 4093) built at config time |
//! | lblc, lblcr | a preallocated, bounded table (default 1024 buckets × 16 ways = 16,384 destination addresses, IPVS's `max_size`); one `Mutex` per bucket, held for one bucket's 16 slots plus one scan of the servers |
//!
//! Everything a scheduler reads about a server is in its [`Dest`]: weight, thresholds and the
//! connection counters the engine updates with [`Dest::conn_bound`] and friends, which also run
//! the threshold hysteresis (`-x`/`-y`).
//!
//! # Rules common to every scheduler (as in IPVS)
//!
//! - weight 0 = quiesced: never picked for a new connection;
//! - an overloaded server ([`Dest::is_overloaded`]) is skipped;
//! - `None` = no server available (IPVS's "no destination available").
//!
//! # Consistency between directors
//!
//! The hashing schedulers (sh, dh, mh) use fixed, seedless hashes (see `hash.rs`) and order
//! the servers canonically (by address, then port) before building their tables, whatever order
//! the caller gives. Two directors with the same configuration therefore send a flow the
//! backup has not heard of yet (too young to be synced) to the same real server. The kernel's
//! tables depend on the order servers were added and are not reproducible across machines;
//! ours are.

mod dest;
mod hash;
mod hashing;
mod lblc;
mod least;
mod mh;
mod rr;

use std::any::Any;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::{self, SchedFlag, SchedFlags};

pub use dest::Dest;
pub use mh::{MH_PRIMES, MH_TABLE_SIZE_DEFAULT};

/// What a scheduler knows about a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedInput {
    /// The client's address and port (the packet's source).
    pub client: SocketAddr,
    /// The destination as the client sent it (VIP and port; for fwmark services the real
    /// destination address). lblc, lblcr and dh hash its address.
    pub vip: SocketAddr,
    /// IP protocol number; sh-port and mh-port use the client port only for TCP, UDP and SCTP.
    pub proto: u8,
    /// The engine's clock; only lblc and lblcr use it (entry expiry).
    pub now: Instant,
}

impl SchedInput {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;

    /// An input stamped with the current time.
    pub fn new(client: SocketAddr, vip: SocketAddr, proto: u8) -> Self {
        Self {
            client,
            vip,
            proto,
            now: Instant::now(),
        }
    }

    /// The same input at another time.
    pub fn at(self, now: Instant) -> Self {
        Self { now, ..self }
    }

    /// The client port for the `*-port` flags: the source port of TCP, UDP and SCTP, else 0
    /// (as IPVS's `ip_vs_sh_get_port`).
    pub fn hash_port(&self) -> u16 {
        match self.proto {
            Self::TCP | Self::UDP | Self::SCTP => self.client.port(),
            _ => 0,
        }
    }
}

/// A service's scheduler. `pick` is called by packet threads concurrently.
pub trait Scheduler: Send + Sync + fmt::Debug {
    fn kind(&self) -> model::Scheduler;

    /// The IPVS name ("wlc", "mh", ...).
    fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The servers, in the scheduler's canonical order (by address): `pick` returns an index
    /// into this slice.
    fn dests(&self) -> &[Arc<Dest>];

    /// Chooses the real server for a new connection; `None` when none is available.
    fn pick(&self, input: &SchedInput) -> Option<usize>;

    /// [`Scheduler::pick`], returning the server itself.
    fn pick_dest(&self, input: &SchedInput) -> Option<&Arc<Dest>> {
        self.pick(input).map(|i| &self.dests()[i])
    }

    /// Periodic housekeeping (the engine calls it from a timer, e.g. every few seconds): lblc
    /// and lblcr forget destination addresses unused for their expiration time, as IPVS's
    /// periodic timer does. Takes one bucket lock at a time. A no-op for the others.
    fn maintain(&self, _now: Instant) {}

    /// For [`rebuild`]: lets the new scheduler take over the old one's state.
    fn as_any(&self) -> &dyn Any;
}

/// Tunables. The defaults are IPVS's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedConfig {
    /// mh lookup table size: one of [`MH_PRIMES`] (IPVS's list, 251..131071). Default 4093,
    /// IPVS's default (`CONFIG_IP_VS_MH_TAB_INDEX` 12). It must be at least the number of
    /// servers, and should be well above 100 × that for Maglev's even spread.
    pub mh_table_size: u32,
    /// sh table size as a power of two (IPVS `CONFIG_IP_VS_SH_TAB_BITS`, default 8 = 256).
    pub sh_table_bits: u8,
    /// dh table size as a power of two (IPVS `CONFIG_IP_VS_DH_TAB_BITS`, default 8 = 256).
    pub dh_table_bits: u8,
    /// lblc/lblcr table: number of buckets, a power of two (IPVS `CONFIG_IP_VS_LBLC_TAB_BITS`
    /// 10 = 1024). Each bucket holds [`LOCALITY_WAYS`] entries, so the table remembers at most
    /// `buckets × 16` destination addresses (16,384 by default, IPVS's `max_size`).
    pub lblc_buckets: u32,
    /// lblc: an entry unused for this long is forgotten (IPVS sysctl `lblc_expiration`, 24 h).
    pub lblc_expiration: Duration,
    /// lblcr: same for its entries; also, a server set unchanged for this long loses its most
    /// loaded member (IPVS sysctl `lblcr_expiration`, 24 h).
    pub lblcr_expiration: Duration,
    /// Initial state of twos' random source.
    pub twos_seed: u64,
}

/// Entries per lblc/lblcr bucket.
pub const LOCALITY_WAYS: usize = lblc::WAYS;

impl Default for SchedConfig {
    fn default() -> Self {
        Self {
            mh_table_size: MH_TABLE_SIZE_DEFAULT,
            sh_table_bits: 8,
            dh_table_bits: 8,
            lblc_buckets: 1024,
            lblc_expiration: Duration::from_secs(24 * 3600),
            lblcr_expiration: Duration::from_secs(24 * 3600),
            twos_seed: 0x7477_6f73_2d66_756c,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    #[error("mh table size {0} is not one of IPVS's primes ({list})", list = mh::primes_list())]
    MhTableSize(u32),
    #[error("{servers} real servers do not fit an mh table of {table} entries")]
    MhTooManyDests { servers: usize, table: u32 },
    #[error("{what} table bits {bits} out of range (1..=20)")]
    TableBits { what: &'static str, bits: u8 },
    #[error("lblc_buckets {0} must be a power of two between 1 and 2^20")]
    LblcBuckets(u32),
    #[error("real server {0} is listed twice")]
    DuplicateDest(SocketAddr),
}

/// Builds a service's scheduler over `dests` (any order; see [`Scheduler::dests`]).
pub fn build(
    kind: model::Scheduler,
    flags: SchedFlags,
    dests: Vec<Arc<Dest>>,
    cfg: &SchedConfig,
) -> Result<Box<dyn Scheduler>, SchedError> {
    build_inner(kind, flags, dests, cfg, None)
}

/// As [`build`], after a change to the service's servers, weights or scheduler. When `prev`
/// is of the same kind, the new scheduler keeps what IPVS keeps across such a change: rr's
/// position, wrr's current weight, lblc's and lblcr's destination-address entries (for the
/// servers that remain) and twos' random stream. The engine swaps the new scheduler in; packet
/// threads still inside `prev.pick` finish there.
pub fn rebuild(
    prev: &dyn Scheduler,
    kind: model::Scheduler,
    flags: SchedFlags,
    dests: Vec<Arc<Dest>>,
    cfg: &SchedConfig,
) -> Result<Box<dyn Scheduler>, SchedError> {
    let prev = (prev.kind() == kind).then_some(prev);
    build_inner(kind, flags, dests, cfg, prev)
}

fn build_inner(
    kind: model::Scheduler,
    flags: SchedFlags,
    mut dests: Vec<Arc<Dest>>,
    cfg: &SchedConfig,
    prev: Option<&dyn Scheduler>,
) -> Result<Box<dyn Scheduler>, SchedError> {
    dests.sort_by_key(|d| d.addr());
    if let Some(w) = dests.windows(2).find(|w| w[0].addr() == w[1].addr()) {
        return Err(SchedError::DuplicateDest(w[0].addr()));
    }
    let dests: Box<[Arc<Dest>]> = dests.into();
    let prev_any = prev.map(|p| p.as_any());
    use model::Scheduler as K;
    Ok(match kind {
        K::Rr => Box::new(rr::Rr::new(dests, prev_any)),
        K::Wrr => Box::new(rr::Wrr::new(dests, prev_any)),
        K::Lc | K::Wlc | K::Sed | K::Nq | K::Fo | K::Ovf => {
            Box::new(least::Least::new(kind, dests))
        }
        K::Twos => Box::new(least::Twos::new(dests, cfg.twos_seed, prev_any)),
        K::Dh => Box::new(hashing::Dh::new(dests, cfg.dh_table_bits)?),
        K::Sh => Box::new(hashing::Sh::new(
            dests,
            cfg.sh_table_bits,
            flags.contains(SchedFlag::ShFallback),
            flags.contains(SchedFlag::ShPort),
        )?),
        K::Mh => Box::new(mh::Mh::new(
            dests,
            cfg.mh_table_size,
            flags.contains(SchedFlag::MhFallback),
            flags.contains(SchedFlag::MhPort),
        )?),
        K::Lblc => Box::new(lblc::Lblc::new(dests, cfg, prev_any)?),
        K::Lblcr => Box::new(lblc::Lblcr::new(dests, cfg, prev_any)?),
    })
}

/// The weighted-least-connection choice shared by wlc, lblc and lblcr, among the servers
/// `members` (indexes, in order): the available one with the smallest `overhead / weight`,
/// compared by cross-multiplication as IPVS does (`loh * w_d > doh * w_least`); on a tie the
/// first wins.
pub(crate) fn wlc_pick(dests: &[Arc<Dest>], members: impl Iterator<Item = usize>) -> Option<usize> {
    let mut least: Option<(usize, u64, u64)> = None; // (index, overhead, weight)
    for i in members {
        let d = &dests[i];
        if !d.is_available() {
            continue;
        }
        let (oh, w) = (d.overhead(), u64::from(d.weight()));
        match least {
            Some((_, loh, lw)) if loh * w <= oh * lw => {}
            _ => least = Some((i, oh, w)),
        }
    }
    least.map(|(i, _, _)| i)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// Servers 198.51.100.{1..} (or 2001:db8:1::{1..} when `v6`) on port 80 with `weights`.
    pub fn dests(weights: &[u32], v6: bool) -> Vec<Arc<Dest>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Arc::new(Dest::new(server(i, v6), w, 0, 0)))
            .collect()
    }

    pub fn server(i: usize, v6: bool) -> SocketAddr {
        if v6 {
            format!("[2001:db8:1::{:x}]:80", i + 1).parse().unwrap()
        } else {
            format!("198.51.100.{}:80", i + 1).parse().unwrap()
        }
    }

    /// The n-th test client: 192.0.2.0/24 and 203.0.113.0/24 hosts, or 2001:db8:c::/64.
    pub fn client(n: u32, port: u16, v6: bool) -> SocketAddr {
        if v6 {
            let ip = std::net::Ipv6Addr::from(
                0x2001_0db8_000c_0000_0000_0000_0000_0000u128 | u128::from(n),
            );
            SocketAddr::new(ip.into(), port)
        } else {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000u32 | n);
            SocketAddr::new(ip.into(), port)
        }
    }

    pub fn vip(v6: bool) -> SocketAddr {
        if v6 {
            "[2001:db8::100]:80".parse().unwrap()
        } else {
            "192.0.2.100:80".parse().unwrap()
        }
    }

    pub fn input(n: u32, v6: bool) -> SchedInput {
        SchedInput::new(client(n, 40000, v6), vip(v6), SchedInput::TCP)
    }

    pub fn sched(kind: model::Scheduler, d: &[Arc<Dest>]) -> Box<dyn Scheduler> {
        build(
            kind,
            SchedFlags::empty(),
            d.to_vec(),
            &SchedConfig::default(),
        )
        .unwrap()
    }

    /// Picks `n` times with the same input; counts per server index.
    pub fn counts(s: &dyn Scheduler, n: usize, v6: bool) -> Vec<usize> {
        let mut c = vec![0; s.dests().len()];
        for _ in 0..n {
            c[s.pick(&input(0, v6)).unwrap()] += 1;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn every_scheduler_builds_skips_quiesced_and_overloaded_and_handles_empty() {
        for kind in model::Scheduler::ALL {
            for v6 in [false, true] {
                let empty = sched(kind, &[]);
                assert_eq!(empty.pick(&input(1, v6)), None, "{kind}");
                assert_eq!(empty.name(), kind.as_str());

                let d = dests(&[0, 1, 1], v6);
                d[1].set_thresholds(10, 0);
                d[1].set_counters(10, 0);
                let s = sched(kind, &d);
                // Clients and destination addresses both vary, for the hashing schedulers.
                let spread = |n: u32| {
                    let vip = SocketAddr::new(client(n + 5000, 0, v6).ip(), 80);
                    SchedInput::new(client(n, 1234, v6), vip, SchedInput::UDP)
                };
                let mut hits = [0usize; 3];
                for n in 0..300 {
                    if let Some(i) = s.pick(&spread(n)) {
                        hits[i] += 1;
                    }
                }
                assert_eq!(hits[0], 0, "{kind}: quiesced server picked");
                assert_eq!(hits[1], 0, "{kind}: overloaded server picked");
                assert!(hits[2] > 0, "{kind}: nothing picked");
                // Below lower (¾ of 10): eligible again. Load the other one so that the
                // least-connection family has a reason to choose it.
                d[1].set_counters(0, 7);
                d[2].set_counters(0, 100);
                assert!(!d[1].is_overloaded());
                let again = (300..600).any(|n| s.pick(&spread(n)) == Some(1));
                assert!(again, "{kind}: server not eligible again below lower");
            }
        }
    }

    #[test]
    fn dests_are_sorted_and_duplicates_refused() {
        let mut d = dests(&[1, 2, 3], true);
        d.reverse();
        let s = build(
            model::Scheduler::Rr,
            SchedFlags::empty(),
            d.clone(),
            &SchedConfig::default(),
        )
        .unwrap();
        let addrs: Vec<_> = s.dests().iter().map(|d| d.addr()).collect();
        assert!(addrs.windows(2).all(|w| w[0] < w[1]));
        d.push(Arc::new(Dest::new(d[0].addr(), 1, 0, 0)));
        let err = build(
            model::Scheduler::Rr,
            SchedFlags::empty(),
            d,
            &SchedConfig::default(),
        )
        .unwrap_err();
        assert!(matches!(err, SchedError::DuplicateDest(_)), "{err}");
    }

    #[test]
    fn bad_config_is_refused() {
        let d = dests(&[1], false);
        let cfg = SchedConfig {
            mh_table_size: 65537,
            ..Default::default()
        };
        let err = build(model::Scheduler::Mh, SchedFlags::empty(), d.clone(), &cfg).unwrap_err();
        assert!(err.to_string().contains("251, 509"), "{err}");
        let cfg = SchedConfig {
            lblc_buckets: 1000,
            ..Default::default()
        };
        assert!(build(model::Scheduler::Lblc, SchedFlags::empty(), d.clone(), &cfg).is_err());
        let cfg = SchedConfig {
            sh_table_bits: 0,
            ..Default::default()
        };
        assert!(build(model::Scheduler::Sh, SchedFlags::empty(), d, &cfg).is_err());
    }

    #[test]
    fn hash_port_only_for_port_protocols() {
        let mut i = input(1, false);
        assert_eq!(i.hash_port(), 40000);
        i.proto = 50; // ESP
        assert_eq!(i.hash_port(), 0);
    }
}
