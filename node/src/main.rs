//! `fulcrumd`: the Fulcrum director (or witness) daemon.

mod daemon;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use fulcrum_node::config::BootstrapFile;
use fulcrum_node::config::FileConfig;
use fulcrum_node::model::Role;
use tracing_subscriber::EnvFilter;

/// Flags override the config file; each flag also reads an environment variable.
#[derive(Parser, Debug)]
#[command(name = "fulcrumd", version, about = "Fulcrum director daemon")]
struct Args {
    /// Config file (TOML). Every key has a default; unknown keys are an error.
    #[arg(long, short = 'c', env = "FULCRUMD_CONFIG")]
    config: Option<PathBuf>,
    /// One-node cluster for trying things out: id 1, data in ./fulcrum-dev-data, bootstraps itself.
    #[arg(long)]
    dev: bool,
    /// Node id (unique, non-zero).
    #[arg(long, env = "FULCRUMD_ID")]
    id: Option<u64>,
    /// gRPC listen address.
    #[arg(long, env = "FULCRUMD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address other nodes and clients reach this node on (default: --listen).
    #[arg(long, env = "FULCRUMD_ADVERTISE")]
    advertise: Option<String>,
    /// Data directory (Raft log, vote, snapshots).
    #[arg(long, env = "FULCRUMD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Run as a witness: votes in Raft, never carries traffic or owns a VIP.
    #[arg(long, env = "FULCRUMD_WITNESS")]
    witness: bool,
    /// Start a new cluster with this node alone (or with [bootstrap] members from the file).
    #[arg(long, env = "FULCRUMD_BOOTSTRAP")]
    bootstrap: bool,
    /// Join a running cluster through this member's address.
    #[arg(long, env = "FULCRUMD_JOIN")]
    join: Option<String>,
    /// Serve Prometheus metrics on this IP:PORT ([metrics] listen).
    #[arg(long, env = "FULCRUMD_METRICS_LISTEN", value_name = "IP:PORT")]
    metrics_listen: Option<String>,
    /// Log filter, e.g. "info" or "fulcrum_node=debug".
    #[arg(long, env = "FULCRUMD_LOG")]
    log: Option<String>,
    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

fn file_config(args: &Args) -> anyhow::Result<FileConfig> {
    let mut f = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    if args.dev {
        f.id.get_or_insert(1);
        f.data_dir
            .get_or_insert_with(|| PathBuf::from("fulcrum-dev-data"));
        if f.join.is_none() {
            f.bootstrap.get_or_insert_with(BootstrapFile::default);
        }
    }
    if let Some(v) = args.id {
        f.id = Some(v);
    }
    if let Some(v) = args.listen {
        f.listen = Some(v);
    }
    if let Some(v) = &args.advertise {
        f.advertise = Some(v.clone());
    }
    if let Some(v) = &args.data_dir {
        f.data_dir = Some(v.clone());
    }
    if args.witness {
        f.role = Some(Role::Witness);
    }
    if args.bootstrap {
        f.bootstrap.get_or_insert_with(BootstrapFile::default);
    }
    if let Some(v) = &args.join {
        f.join = Some(v.clone());
    }
    if let Some(v) = &args.metrics_listen {
        f.metrics.listen = Some(v.clone());
    }
    if let Some(v) = &args.log {
        f.log = Some(v.clone());
    }
    Ok(f)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = file_config(&args)?.validate()?;
    if args.check_config {
        println!("configuration ok: {cfg:#?}");
        return Ok(());
    }
    let filter =
        EnvFilter::try_new(&cfg.log).with_context(|| format!("bad log filter {:?}", cfg.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let node = daemon::Node::start(cfg).await?;
        wait_for_signal().await?;
        tracing::info!("shutting down");
        node.shutdown().await
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::SignalKind;
    use tokio::signal::unix::signal;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
