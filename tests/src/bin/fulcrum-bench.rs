//! Benchmarks recorded in BENCHMARKS.md. Not a test: it prints numbers.
//!
//! `cargo run --release -p fulcrum-tests --bin fulcrum-bench -- <config|engine|conntable|takeover|sync> [options]`
//!
//! - `engine`: forwarded packets/s of the userspace engine (DR, NAT) next to a bare AF_PACKET
//!   loop and kernel nftables DNAT, on one veth link (root; see `fulcrum_tests::bench::engine`).
//! - `conntable`: new connections/s per core through the table and scheduler, bytes per entry
//!   (see `fulcrum_tests::bench::conntable`).
//! - `sync`: the connection-table sync stream between two processes over gRPC on loopback:
//!   entries/s, lag at 100,000 changes/s, bytes per entry next to IPVS sync v1, full-resync
//!   time (see `fulcrum_tests::bench::sync`).
//! - `config`, below:
//!
//! `config` starts a real 3-node cluster of release `fulcrumd` processes on loopback and measures,
//! through the gRPC API the CLI uses:
//! - single-change commit latency, sent to the leader and to a follower (forwarded);
//! - one `apply` of 10,000 services x 10 real servers, from empty and as a full re-weight;
//! - the same 10,000 services as a stream of single `AddService` changes, one at a time and
//!   with many in flight;
//! - for context, the latency of a whole `fulcrum` CLI invocation (process start included).

use std::time::Duration;
use std::time::Instant;

use anyhow::Result;
use anyhow::bail;
use fulcrum_proto::v1 as pb;
use fulcrum_proto::v1::config_client::ConfigClient;
use fulcrum_tests::NodeOpts;
use fulcrum_tests::TestCluster;
use tonic::transport::Channel;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    percentile(&v, 0.5)
}

/// 10,000 services x 10 real servers, all distinct, in the IPv6 documentation range
/// (configuration only: nothing is ever sent to them).
fn big_config(weight: u32) -> pb::ClusterConfig {
    let mut services = Vec::with_capacity(10_000);
    for i in 0..10_000u32 {
        let vip = format!("[2001:db8:1::{i:x}]");
        let reals = (0..10u32)
            .map(|j| pb::RealServer {
                address: format!("[2001:db8:2::{i:x}:{j:x}]:80"),
                weight,
                forward: "dr".into(),
                upper_threshold: 0,
                lower_threshold: 0,
            })
            .collect();
        services.push(pb::Service {
            key: format!("tcp/{vip}:80"),
            scheduler: "wlc".into(),
            scheduler_flags: vec![],
            persistence_timeout: 0,
            persistence_prefix: None,
            vip_group: String::new(),
            reals,
            one_packet: false,
        });
    }
    pb::ClusterConfig {
        services,
        vip_groups: vec![],
    }
}

async fn client(addr: &str) -> Result<ConfigClient<Channel>> {
    Ok(ConfigClient::new(fulcrum_tests::channel(addr).await?)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20))
}

async fn apply(
    c: &mut ConfigClient<Channel>,
    config: pb::ClusterConfig,
) -> Result<(Duration, usize)> {
    let t = Instant::now();
    let r = c
        .apply(pb::ApplyRequest {
            config: Some(config),
            dry_run: false,
        })
        .await?
        .into_inner();
    Ok((t.elapsed(), r.changes.len()))
}

fn service(i: u32) -> pb::Service {
    pb::Service {
        key: format!("tcp/[2001:db8:3::{i:x}]:80"),
        scheduler: "rr".into(),
        ..Default::default()
    }
}

async fn latency(c: &mut ConfigClient<Channel>, base: u32, n: u32) -> Result<Vec<Duration>> {
    let mut v = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = Instant::now();
        c.add_service(service(base + i)).await?;
        v.push(t.elapsed());
    }
    v.sort();
    Ok(v)
}

/// `n` AddService calls with `inflight` outstanding at a time; returns the wall time.
async fn stream(
    addr: &str,
    base: u32,
    n: u32,
    inflight: u32,
    with_reals: bool,
) -> Result<Duration> {
    let cfg = if with_reals {
        Some(big_config(1))
    } else {
        None
    };
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..inflight {
        let mut c = client(addr).await?;
        let services: Vec<pb::Service> = (0..n)
            .filter(|i| i % inflight == w)
            .map(|i| match &cfg {
                Some(cfg) => cfg.services[i as usize].clone(),
                None => service(base + i),
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            for s in services {
                c.add_service(s).await?;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(t.elapsed())
}

async fn config_bench() -> Result<()> {
    println!("machine: {}", fulcrum_tests::bench::machine());
    let mut c = TestCluster::start(3, NodeOpts::default()).await?;
    let leader = c.wait_leader(Duration::from_secs(20)).await?;
    let follower = (1..=3).find(|id| *id != leader).unwrap_or(1);
    let leader_addr = c.node(leader).addr.clone();
    let follower_addr = c.node(follower).addr.clone();
    let mut lc = client(&leader_addr).await?;
    let mut fc = client(&follower_addr).await?;

    // Warm up channels and the log.
    latency(&mut lc, 0, 50).await?;
    let l = latency(&mut lc, 100, 1000).await?;
    println!(
        "single change via leader   (n=1000): p50 {}  p99 {}",
        ms(percentile(&l, 0.5)),
        ms(percentile(&l, 0.99))
    );
    let f = latency(&mut fc, 2000, 1000).await?;
    println!(
        "single change via follower (n=1000): p50 {}  p99 {}",
        ms(percentile(&f, 0.5)),
        ms(percentile(&f, 0.99))
    );
    let mut cli = Vec::new();
    for i in 0..50u32 {
        let key = service(5000 + i).key;
        let t = Instant::now();
        let o = c.node(leader).cli(&["service", "add", &key]);
        cli.push(t.elapsed());
        if !o.status.success() {
            bail!("cli: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
    cli.sort();
    println!(
        "single change via `fulcrum` CLI process (n=50): p50 {}  p99 {}",
        ms(percentile(&cli, 0.5)),
        ms(percentile(&cli, 0.99))
    );

    // Whole-config apply, 10,000 x 10. Alternate: empty -> A, A -> B (every weight changes).
    let a = big_config(1);
    let b = big_config(2);
    let empty = pb::ClusterConfig::default();
    let mut from_empty = Vec::new();
    let mut reweight = Vec::new();
    for _ in 0..3 {
        apply(&mut lc, empty.clone()).await?;
        let (d, n) = apply(&mut lc, a.clone()).await?;
        assert_eq!(n, 110_000, "apply from empty should add 110,000 objects");
        from_empty.push(d);
        let (d, n) = apply(&mut lc, b.clone()).await?;
        assert_eq!(n, 100_000, "re-weight should modify 100,000 real servers");
        reweight.push(d);
    }
    let from_empty = median(from_empty);
    println!(
        "apply 10,000 services x 10 reals, from empty (median of 3): {}",
        ms(from_empty)
    );
    println!(
        "apply 10,000 x 10, every weight changed (median of 3): {}",
        ms(median(reweight))
    );
    // Every node has it.
    let index = c.status(leader).await?.applied_index;
    for id in 1..=3 {
        c.wait_applied(id, index, Duration::from_secs(30)).await?;
    }

    // The same config as a stream of single changes (each service with its 10 reals).
    apply(&mut lc, empty.clone()).await?;
    let seq = stream(&leader_addr, 0, 1000, 1, true).await?;
    println!(
        "stream of single AddService (10 reals each), 1 in flight: 1,000 in {} -> {:.0}/s",
        ms(seq),
        1000.0 / seq.as_secs_f64()
    );
    apply(&mut lc, empty.clone()).await?;
    let par = stream(&leader_addr, 0, 10_000, 64, true).await?;
    println!(
        "stream of single AddService (10 reals each), 64 in flight: 10,000 in {} -> {:.0}/s",
        ms(par),
        10_000.0 / par.as_secs_f64()
    );
    println!(
        "ratio: one apply of 10,000 services is {:.1}x faster than 10,000 single changes with 64 in flight",
        par.as_secs_f64() / from_empty.as_secs_f64()
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().cloned().unwrap_or_else(|| "config".into());
    let rest = args.get(1..).unwrap_or_default();
    match which.as_str() {
        "config" => tokio::runtime::Runtime::new()?.block_on(config_bench()),
        "engine" => fulcrum_tests::bench::engine::run(rest),
        "conntable" => fulcrum_tests::bench::conntable::run(rest),
        "takeover" => fulcrum_tests::bench::takeover::run(rest),
        "sync" => fulcrum_tests::bench::sync::run(rest),
        // The receiving end of `sync`, started by it as a child process.
        "sync-receiver" => fulcrum_tests::bench::sync::receiver(rest),
        other => {
            bail!(
                "unknown benchmark {other:?}; available: config, engine, conntable, takeover, sync"
            )
        }
    }
}
