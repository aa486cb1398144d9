//! Test harness: runs real `fulcrumd` processes on loopback and drives them through the
//! real gRPC API and the real `fulcrum` CLI binary.
//!
//! Every node gets its own data dir under one temp dir; processes are killed when the
//! harness value is dropped, so a failing test leaves nothing running.

pub mod bench;
pub mod drill;
pub mod metrics;
pub mod netns;
pub mod pair;

use std::net::TcpListener;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Output;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use fulcrum_proto::v1 as pb;
use fulcrum_proto::v1::cluster_client::ClusterClient;
use fulcrum_proto::v1::config_client::ConfigClient;
use tonic::transport::Channel;

/// Directory holding the workspace's binaries, built once per test process.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // A test binary lives in target/<profile>/deps, a bench binary in target/<profile>;
        // the daemon and the CLI are in target/<profile>.
        let exe = std::env::current_exe().expect("current_exe");
        let mut dir = exe.parent().expect("target dir").to_path_buf();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        // Build (or confirm up to date) the two binaries with the same profile as this test.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "fulcrum-node",
            "-p",
            "fulcrum-cli",
            "--bins",
        ]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build for the binaries");
        assert!(status.success(), "building fulcrumd and fulcrum failed");
        dir
    })
}

pub fn fulcrumd_bin() -> PathBuf {
    bin_dir().join("fulcrumd")
}

pub fn fulcrum_bin() -> PathBuf {
    bin_dir().join("fulcrum")
}

/// A free TCP port on 127.0.0.1 (bound then released; good enough on a test machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Raft timers for tests: the shipped defaults, except where a test asks for more.
#[derive(Clone, Debug, Default)]
pub struct NodeOpts {
    pub snapshot_every: Option<u64>,
    pub keep_after_snapshot: Option<u64>,
    pub witness: bool,
}

pub struct TestNode {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl TestNode {
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts the process with its config file and any extra flags.
    pub fn start(&mut self, extra: &[&str]) -> Result<()> {
        if self.is_running() {
            bail!("node {} already running", self.id);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = Command::new(fulcrumd_bin())
            .arg("--config")
            .arg(&self.config_path)
            .args(extra)
            .env("FULCRUMD_LOG", "info")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("spawning fulcrumd")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: the crash case.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        // SAFETY: plain kill(2) on a pid we spawned and have not reaped yet.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub async fn config(&self) -> Result<ConfigClient<Channel>> {
        Ok(ConfigClient::new(channel(&self.addr).await?).max_decoding_message_size(256 << 20))
    }

    pub async fn cluster(&self) -> Result<ClusterClient<Channel>> {
        Ok(ClusterClient::new(channel(&self.addr).await?))
    }

    /// Runs the `fulcrum` CLI against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.addr, args)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn channel(addr: &str) -> Result<Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect()
            .await?,
    )
}

/// Runs `fulcrum --server addr args...`.
pub fn cli(addr: &str, args: &[&str]) -> Output {
    Command::new(fulcrum_bin())
        .arg("--server")
        .arg(addr)
        .args(args)
        .output()
        .expect("running fulcrum")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A set of nodes sharing one temp dir. Node ids are 1..=n.
pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    pub dir: tempfile::TempDir,
}

impl TestCluster {
    /// Writes configs for `n` nodes (node 1 bootstraps the whole membership) and starts them.
    pub async fn start(n: usize, opts: NodeOpts) -> Result<TestCluster> {
        let mut c = Self::prepare(n, opts)?;
        for node in &mut c.nodes {
            node.start(&[])?;
        }
        c.wait_leader(Duration::from_secs(20)).await?;
        Ok(c)
    }

    /// Writes the config files without starting anything.
    pub fn prepare(n: usize, opts: NodeOpts) -> Result<TestCluster> {
        let dir = tempfile::tempdir()?;
        let addrs: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let members: Vec<String> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{{ id = {}, addr = \"{a}\" }}", i + 1))
            .collect();
        let mut nodes = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
            let data_dir = dir.path().join(format!("node{id}"));
            let mut text = format!(
                "id = {id}\nlisten = \"{addr}\"\ndata_dir = \"{}\"\n",
                data_dir.display()
            );
            if opts.witness && id == n as u64 {
                text.push_str("role = \"witness\"\n");
            }
            if id == 1 {
                text.push_str(&format!(
                    "[bootstrap]\nmembers = [{}]\n",
                    members.join(", ")
                ));
            }
            text.push_str("[raft]\n");
            if let Some(s) = opts.snapshot_every {
                text.push_str(&format!("snapshot_every = {s}\n"));
            }
            if let Some(k) = opts.keep_after_snapshot {
                text.push_str(&format!("keep_after_snapshot = {k}\n"));
            }
            let config_path = dir.path().join(format!("node{id}.toml"));
            std::fs::write(&config_path, text)?;
            nodes.push(TestNode {
                id,
                addr: addr.clone(),
                data_dir,
                config_path,
                log_path: dir.path().join(format!("node{id}.log")),
                child: None,
            });
        }
        // The bootstrap list names witness roles too.
        if opts.witness {
            let text = std::fs::read_to_string(&nodes[0].config_path)?;
            let last = format!("{{ id = {n}, addr = \"{}\" }}", addrs[n - 1]);
            let with_role = format!(
                "{{ id = {n}, addr = \"{}\", role = \"witness\" }}",
                addrs[n - 1]
            );
            std::fs::write(&nodes[0].config_path, text.replace(&last, &with_role))?;
        }
        Ok(TestCluster { nodes, dir })
    }

    pub fn node(&mut self, id: u64) -> &mut TestNode {
        &mut self.nodes[id as usize - 1]
    }

    /// Status as seen by `id`.
    pub async fn status(&self, id: u64) -> Result<pb::ClusterStatus> {
        let node = &self.nodes[id as usize - 1];
        Ok(node
            .cluster()
            .await?
            .status(pb::StatusRequest { read: None })
            .await?
            .into_inner())
    }

    /// Waits until the running nodes agree on one leader; returns its id.
    pub async fn wait_leader(&mut self, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut seen = Vec::new();
            let ids: Vec<u64> = self
                .nodes
                .iter_mut()
                .filter_map(|n| if n.is_running() { Some(n.id) } else { None })
                .collect();
            for id in &ids {
                if let Ok(s) = self.status(*id).await {
                    seen.push(s.leader_id);
                }
            }
            if seen.len() == ids.len()
                && let Some(Some(l)) = seen.first()
                && seen.iter().all(|x| *x == Some(*l))
                && ids.contains(l)
            {
                return Ok(*l);
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("--- node {}\n{}", n.id, n.log()))
                    .collect();
                bail!(
                    "no agreed leader within {timeout:?}: saw {seen:?}\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = self.status(id).await
                && s.applied_index >= index
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {id} did not apply index {index} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The exported config of node `id`, read locally (`--stale`).
    pub async fn export_local(&self, id: u64) -> Result<pb::ClusterConfig> {
        let node = &self.nodes[id as usize - 1];
        Ok(node
            .config()
            .await?
            .export(pb::ExportRequest {
                read: Some(pb::ReadOptions { stale: true }),
            })
            .await?
            .into_inner()
            .config
            .unwrap_or_default())
    }
}

pub fn testsrv_bin() -> PathBuf {
    bin_dir().join("fulcrum-testsrv")
}
