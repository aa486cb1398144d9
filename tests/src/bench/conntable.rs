//! `fulcrum-bench conntable`: the connection table's new-connection rate on one core and its
//! memory per entry.
//!
//! (a) One thread (pinned to CPU1) does, per new flow, what the engine does for one: build the
//! `ConnKey`, ask the service's scheduler (wlc, 10 real servers, built with
//! `fulcrum_node::dataplane::sched::build`), `ConnEntry::new`, `ConnTable::insert_on_packet`
//! (a TCP SYN), `Dest::conn_bound` — for 1M distinct flows into a table of the engine's
//! default size. Side by side: the same loop with the insert left out (what the table costs),
//! the same loop preceded by the lookup miss the engine does first, and the same loop into a
//! plain `std::collections::HashMap<ConnKey, ConnEntry>` (preallocated, and growing).
//!
//! (b) Bytes per entry: a table of N entries filled completely with NAT entries (which also
//! use the reverse index), `allocated_bytes() / len()`, and the resident memory it really took.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use anyhow::bail;
use fulcrum_node::dataplane::sched;
use fulcrum_node::dataplane::sched::Dest;
use fulcrum_node::dataplane::sched::SchedConfig;
use fulcrum_node::dataplane::sched::SchedInput;
use fulcrum_node::dataplane::sched::Scheduler;
use fulcrum_node::model;
use fulcrum_sync::conn::CoarseClock;
use fulcrum_sync::conn::ConnEntry;
use fulcrum_sync::conn::ConnKey;
use fulcrum_sync::conn::ConnTable;
use fulcrum_sync::conn::Direction;
use fulcrum_sync::conn::FwdMethod;
use fulcrum_sync::conn::InsertError;
use fulcrum_sync::conn::TableConfig;

use super::Spread;
use super::check_opts;
use super::opt;
use super::pin_to_cpu;
use super::rate;

const VIP: [u8; 4] = [192, 0, 2, 100];
const SYN: u8 = 0x02;
const TCP: u8 = 6;
/// The engine's default `max_connections`.
const ENGINE_DEFAULT_TABLE: usize = 1 << 20;

/// Flow `i`: client 10.0.0.0 + i/64, source port 1024 + i%64 (distinct for i < 2^30).
#[inline]
fn client(i: usize) -> ([u8; 4], u16) {
    let a = 0x0a00_0000u32 + (i / 64) as u32;
    (a.to_be_bytes(), 1024 + (i % 64) as u16)
}

fn dests() -> Vec<Arc<Dest>> {
    (0..10u8)
        .map(|k| {
            Arc::new(Dest::new(
                SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10 + k)), 80),
                1,
                0,
                0,
            ))
        })
        .collect()
}

fn wlc(dests: Vec<Arc<Dest>>) -> Result<Box<dyn Scheduler>> {
    Ok(sched::build(
        model::Scheduler::Wlc,
        model::SchedFlags::empty(),
        dests,
        &SchedConfig::default(),
    )?)
}

/// What happens to each new flow after the scheduler picked its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// ConnKey + pick + ConnEntry::new + conn_bound; no insert.
    PickOnly,
    /// ... + `insert_on_packet` into a fresh table: the loop of the goal. The table is
    /// preallocated, but its pages are touched only as entries arrive (as in a freshly
    /// started engine), so this includes first-touch page faults.
    TableFresh,
    /// The same into a table that held as many flows before and was flushed: its memory is
    /// resident, as in a long-running engine.
    TableWarm,
    /// `update_on_packet` miss first (the engine's packet path looks the flow up before it
    /// schedules it), then as `TableWarm`.
    TableWarmWithMiss,
    /// ... + `HashMap::insert` into a fresh map with room for all flows.
    HashMapFresh,
    /// ... into such a map after it held as many flows and was cleared (capacity kept).
    HashMapWarm,
    /// ... into a map that grows from empty.
    HashMapGrowing,
}

impl Variant {
    const ALL: [Variant; 7] = [
        Variant::PickOnly,
        Variant::TableFresh,
        Variant::TableWarm,
        Variant::TableWarmWithMiss,
        Variant::HashMapFresh,
        Variant::HashMapWarm,
        Variant::HashMapGrowing,
    ];

    fn label(self) -> &'static str {
        match self {
            Variant::PickOnly => "key + wlc pick + ConnEntry::new + conn_bound (no insert)",
            Variant::TableFresh => {
                "... + ConnTable::insert_on_packet, fresh table (engine default size, pages not yet touched)"
            }
            Variant::TableWarm => {
                "... + ConnTable::insert_on_packet, warm table (filled once, flushed)"
            }
            Variant::TableWarmWithMiss => {
                "... as above, after the update_on_packet miss the engine's packet path does first"
            }
            Variant::HashMapFresh => {
                "... + std HashMap<ConnKey, ConnEntry>::insert, fresh, with_capacity(2^20)"
            }
            Variant::HashMapWarm => "... + std HashMap insert, warm (filled once, cleared)",
            Variant::HashMapGrowing => "... + std HashMap insert, growing from empty",
        }
    }

    fn uses_table(self) -> bool {
        matches!(
            self,
            Variant::TableFresh | Variant::TableWarm | Variant::TableWarmWithMiss
        )
    }

    fn warm(self) -> bool {
        matches!(
            self,
            Variant::TableWarm | Variant::TableWarmWithMiss | Variant::HashMapWarm
        )
    }
}

/// New flows per second for one run of `variant` over `flows` flows.
fn new_flow_rate(variant: Variant, flows: usize) -> Result<f64> {
    let capacity = ENGINE_DEFAULT_TABLE.max(flows);
    let clock = CoarseClock::new();
    let now = clock.now();
    let rs = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)), 80);
    let table = if variant.uses_table() {
        let t = ConnTable::new(TableConfig::new(capacity))?;
        if variant.warm() {
            // Other flows (indexes past the measured ones) in and out again.
            for i in flows..2 * flows {
                let (caddr, cport) = client(i);
                let key = ConnKey::v4(TCP, caddr, cport, VIP, 80);
                let e = ConnEntry::new(key, rs, FwdMethod::DirectRoute, 1);
                t.insert_on_packet(e, SYN, now)?;
            }
            let mut gone = Vec::with_capacity(flows);
            t.remove_where(|_| true, &mut gone);
        }
        Some(t)
    } else {
        None
    };
    let mut map: Option<HashMap<ConnKey, ConnEntry>> = match variant {
        Variant::HashMapFresh | Variant::HashMapWarm => Some(HashMap::with_capacity(capacity)),
        Variant::HashMapGrowing => Some(HashMap::new()),
        _ => None,
    };
    if let (Some(m), true) = (&mut map, variant.warm()) {
        for i in flows..2 * flows {
            let (caddr, cport) = client(i);
            let key = ConnKey::v4(TCP, caddr, cport, VIP, 80);
            m.insert(key, ConnEntry::new(key, rs, FwdMethod::DirectRoute, 1));
        }
        m.clear();
    }
    let sched = wlc(dests())?;
    let instant = Instant::now();
    let vip = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(VIP)), 80);
    let client_mac = [2, 0, 0, 0, 0, 1];
    let mut failed = 0usize;
    let t = Instant::now();
    for i in 0..flows {
        let (caddr, cport) = client(i);
        let key = ConnKey::v4(TCP, caddr, cport, VIP, 80);
        if variant == Variant::TableWarmWithMiss
            && let Some(tb) = &table
            && tb
                .update_on_packet(&key, Direction::Input, SYN, now)
                .is_some()
        {
            failed += 1;
            continue;
        }
        let input = SchedInput {
            client: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(caddr)), cport),
            vip,
            proto: TCP,
            now: instant,
        };
        let Some(idx) = sched.pick(&input) else {
            bail!("wlc found no server");
        };
        let dest = &sched.dests()[idx];
        let mut entry = ConnEntry::new(key, dest.addr(), FwdMethod::DirectRoute, 1);
        entry.set_client_mac(client_mac);
        let active = match (&table, &mut map) {
            (Some(tb), _) => match tb.insert_on_packet(entry, SYN, now) {
                Ok((e, _)) => e.is_active(),
                Err(_) => {
                    failed += 1;
                    continue;
                }
            },
            (None, Some(m)) => {
                let mut e = entry;
                e.set_expiry(now, 60);
                m.insert(key, e);
                e.is_active()
            }
            (None, None) => black_box(entry).is_active(),
        };
        dest.conn_bound(active);
    }
    let elapsed = t.elapsed().as_secs_f64();
    if failed > 0 {
        bail!("{variant:?}: {failed} of {flows} inserts failed");
    }
    if let Some(tb) = &table
        && tb.len() != flows
    {
        bail!("{variant:?}: table holds {} of {flows}", tb.len());
    }
    if let Some(m) = &map {
        black_box(m.len());
    }
    Ok(flows as f64 / elapsed)
}

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

struct Fill {
    max_entries: usize,
    len: usize,
    refused: usize,
    allocated: usize,
    layout_per_entry: f64,
    layout_per_entry_dr_only: f64,
    rss_delta: usize,
    seconds: f64,
}

/// Fills a table of `n` entries with NAT entries (forward and reverse index in use).
fn fill(n: usize) -> Result<Fill> {
    let rss0 = rss_bytes();
    let table = ConnTable::new(TableConfig::new(n))?;
    let layout = *table.layout();
    let now = CoarseClock::new().now();
    let t = Instant::now();
    let mut refused = 0usize;
    let mut i = 0usize;
    // Distinct keys until the table is full; a shard that fills before the whole table (its
    // slack is four standard deviations) shows up as refusals.
    while table.len() < n && i < n + n / 10 {
        let (caddr, cport) = client(i);
        let key = ConnKey::v4(TCP, caddr, cport, VIP, 80);
        let rs = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10 + (i % 10) as u8)),
            8080,
        );
        let entry = ConnEntry::new(key, rs, FwdMethod::Masq, 1);
        match table.insert_on_packet(entry, SYN, now) {
            Ok(_) => {}
            Err(InsertError::Full) => refused += 1,
            Err(e) => bail!("insert: {e}"),
        }
        i += 1;
    }
    let seconds = t.elapsed().as_secs_f64();
    let f = Fill {
        max_entries: n,
        len: table.len(),
        refused,
        allocated: table.allocated_bytes(),
        layout_per_entry: layout.bytes_per_entry(),
        layout_per_entry_dr_only: layout.bytes_per_entry_without_nat(),
        rss_delta: rss_bytes().saturating_sub(rss0),
        seconds,
    };
    drop(table);
    Ok(f)
}

pub fn run(args: &[String]) -> Result<()> {
    check_opts(args, &["--flows", "--runs", "--sizes"])?;
    let flows: usize = opt(args, "--flows")?.unwrap_or(1_000_000);
    let runs: usize = opt(args, "--runs")?.unwrap_or(3);
    let sizes: Vec<usize> = match opt::<String>(args, "--sizes")? {
        Some(s) => s
            .split(',')
            .map(|x| x.trim().replace('_', "").parse::<usize>())
            .collect::<Result<_, _>>()?,
        None => vec![1_000_000, 10_000_000],
    };
    if flows == 0 || flows > (1 << 26) || runs == 0 || runs > 20 {
        bail!("--flows must be 1..=2^26 and --runs 1..=20");
    }
    println!("machine: {}", super::machine());
    println!("load average before: {}", super::loadavg());
    pin_to_cpu(1)?;
    println!(
        "(a) new connections per second, one thread on CPU1, {flows} distinct TCP flows (SYN), \
         wlc over 10 real servers, table of {} entries, median of {runs} [min–max]:",
        ENGINE_DEFAULT_TABLE.max(flows)
    );
    let variants = Variant::ALL;
    let mut medians = Vec::new();
    // Rounds interleave the variants, so drift on the machine hits them alike.
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for _ in 0..runs {
        for (k, v) in variants.iter().enumerate() {
            samples[k].push(new_flow_rate(*v, flows)?);
        }
    }
    println!("| loop per new flow | new flows/s per core | ns per flow |");
    println!("|---|---|---|");
    for (k, v) in variants.iter().enumerate() {
        let s = Spread::of(&samples[k]);
        medians.push(s.median);
        println!(
            "| {} | **{}** [{}–{}] | {:.0} |",
            v.label(),
            rate(s.median),
            rate(s.min),
            rate(s.max),
            1e9 / s.median
        );
    }
    let at = |v: Variant| medians[variants.iter().position(|x| *x == v).unwrap_or(0)];
    let ns = |v: Variant| 1e9 / at(v) - 1e9 / at(Variant::PickOnly);
    println!(
        "insert alone (minus the pick-only loop): table {:.0} ns fresh / {:.0} ns warm, \
         HashMap {:.0} ns fresh / {:.0} ns warm / {:.0} ns growing",
        ns(Variant::TableFresh),
        ns(Variant::TableWarm),
        ns(Variant::HashMapFresh),
        ns(Variant::HashMapWarm),
        ns(Variant::HashMapGrowing)
    );
    println!(
        "table / HashMap new-flow rate: fresh {:.2}, warm {:.2}; goal >= 200 k new flows/s per core: {}",
        at(Variant::TableFresh) / at(Variant::HashMapFresh),
        at(Variant::TableWarm) / at(Variant::HashMapWarm),
        if at(Variant::TableFresh).min(at(Variant::TableWarmWithMiss)) >= 200_000.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!();
    println!(
        "(b) memory per entry, table filled completely with NAT entries (reverse index in use):"
    );
    println!(
        "| max entries | entries held | refused (shard full) | allocated bytes | **bytes per entry** | layout: per entry / DR-only | resident memory per entry | fill rate |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in sizes {
        let f = fill(n)?;
        println!(
            "| {} | {} | {} | {} | **{:.1}** | {:.1} / {:.1} | {:.1} | {}/s |",
            f.max_entries,
            f.len,
            f.refused,
            f.allocated,
            f.allocated as f64 / f.len.max(1) as f64,
            f.layout_per_entry,
            f.layout_per_entry_dr_only,
            f.rss_delta as f64 / f.len.max(1) as f64,
            rate(f.len as f64 / f.seconds)
        );
    }
    println!("goal: <= 128 bytes per entry; 10 M entries fit");
    println!("load average after: {}", super::loadavg());
    Ok(())
}
