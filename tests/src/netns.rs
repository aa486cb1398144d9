//! Network-namespace test beds: one L2 segment (a bridge in its own namespace) with hosts
//! attached by veth pairs, dual-stack documentation addresses, processes run inside hosts.
//!
//! Everything a lab creates carries its unique prefix, and everything is deleted when the
//! lab is dropped — also when a test panics. Needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN).

use std::process::Child;
use std::process::Command;
use std::process::Output;
use std::process::Stdio;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;

static LAB_SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs a command and fails with its stderr if it fails.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// A host on the lab's segment.
#[derive(Debug, Clone)]
pub struct Host {
    /// Namespace name.
    pub ns: String,
    /// Short name given by the test ("client", "dir1", "rs1").
    pub name: String,
    pub mac: String,
    pub ip4: String,
    pub ip6: String,
    /// The interface inside the host's namespace.
    pub dev: String,
}

impl Host {
    /// `ip netns exec NS program args...`
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }

    /// Runs a shell command line inside the host; fails on non-zero exit.
    pub fn sh(&self, line: &str) -> Result<String> {
        let out = run(self.command("sh").args(["-c", line]))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

pub struct Lab {
    pub prefix: String,
    pub switch_ns: String,
    pub hosts: Vec<Host>,
    children: Vec<Child>,
}

impl Lab {
    /// A new, empty segment. `tag` (a few letters) makes names recognisable per test.
    pub fn new(tag: &str) -> Result<Lab> {
        if unsafe_geteuid() != 0 {
            bail!("network-namespace tests need root; run as root (CI does)");
        }
        let seq = LAB_SEQ.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("fx{tag}{}x{seq}", std::process::id() % 100_000);
        let switch_ns = format!("{prefix}sw");
        let lab = Lab {
            prefix,
            switch_ns: switch_ns.clone(),
            hosts: Vec::new(),
            children: Vec::new(),
        };
        lab.cleanup_namespaces();
        run(Command::new("ip").args(["netns", "add", &switch_ns]))?;
        let sw = |args: &[&str]| {
            run(Command::new("ip")
                .args(["netns", "exec", &switch_ns])
                .args(args))
        };
        sw(&[
            "ip",
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        sw(&["ip", "link", "set", "br0", "up"])?;
        sw(&["ip", "link", "set", "lo", "up"])?;
        Ok(lab)
    }

    /// Adds a host with the given last address byte `n`: MAC 02:fc:00:00:00:n,
    /// 192.0.2.n/24 and 2001:db8::n/64 on interface `eth0`.
    pub fn host(&mut self, name: &str, n: u8) -> Result<Host> {
        let host = self.new_host(name, n)?;
        let port = format!("p{name}");
        run(Command::new("ip").args([
            "link",
            "add",
            &port,
            "netns",
            &self.switch_ns,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &host.ns,
        ]))?;
        run(Command::new("ip").args([
            "netns",
            "exec",
            &self.switch_ns,
            "ip",
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ]))?;
        configure(&host)?;
        self.hosts.push(host.clone());
        Ok(host)
    }

    /// Adds two hosts joined by one veth pair of their own, without the bridge (for packet-rate
    /// benchmarks, where a bridge hop would add work to both ends). Addresses and MACs as
    /// [`Lab::host`] gives them.
    pub fn pair(&mut self, a: (&str, u8), b: (&str, u8)) -> Result<(Host, Host)> {
        let ha = self.new_host(a.0, a.1)?;
        let hb = self.new_host(b.0, b.1)?;
        run(Command::new("ip").args([
            "link", "add", "eth0", "netns", &ha.ns, "type", "veth", "peer", "name", "eth0",
            "netns", &hb.ns,
        ]))?;
        configure(&ha)?;
        configure(&hb)?;
        self.hosts.push(ha.clone());
        self.hosts.push(hb.clone());
        Ok((ha, hb))
    }

    /// Creates the namespace of a new host (no interface yet).
    fn new_host(&self, name: &str, n: u8) -> Result<Host> {
        let ns = format!("{}{name}", self.prefix);
        let host = Host {
            ns: ns.clone(),
            name: name.to_string(),
            mac: format!("02:fc:00:00:00:{n:02x}"),
            ip4: format!("192.0.2.{n}"),
            ip6: format!("2001:db8::{n:x}"),
            dev: "eth0".into(),
        };
        run(Command::new("ip").args(["netns", "add", &ns]))?;
        Ok(host)
    }

    /// Starts a long-running process inside `host`; it is killed when the lab is dropped.
    pub fn spawn(&mut self, host: &Host, program: &str, args: &[&str]) -> Result<usize> {
        let child = host
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {program} in {}", host.ns))?;
        self.children.push(child);
        Ok(self.children.len() - 1)
    }

    /// Starts a long-running process inside `host` with its output appended to `log`.
    pub fn spawn_logged(
        &mut self,
        host: &Host,
        program: &str,
        args: &[&str],
        log: &std::path::Path,
    ) -> Result<usize> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = host
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| format!("spawning {program} in {}", host.ns))?;
        self.children.push(child);
        Ok(self.children.len() - 1)
    }

    /// Reads one line from a spawned process's stdout (e.g. its "ready").
    pub fn read_line(&mut self, idx: usize) -> Result<String> {
        use std::io::BufRead;
        let child = self.children.get_mut(idx).context("no such child")?;
        let out = child.stdout.as_mut().context("no stdout")?;
        let mut line = String::new();
        // One byte at a time so nothing beyond the line is consumed from the pipe.
        let mut r = std::io::BufReader::with_capacity(1, out);
        r.read_line(&mut line)?;
        Ok(line)
    }

    /// The process id of a spawned process (`ip netns exec` and `taskset` exec the program,
    /// so it is the program's own).
    pub fn pid(&self, idx: usize) -> Option<u32> {
        self.children.get(idx).map(|c| c.id())
    }

    pub fn kill(&mut self, idx: usize) {
        if let Some(c) = self.children.get_mut(idx) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn cleanup_namespaces(&self) {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(&self.prefix) {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting the namespaces deletes their veths and the bridge with them.
        self.cleanup_namespaces();
    }
}

/// Addresses, MAC and the sysctls every host gets, on its `eth0`.
fn configure(host: &Host) -> Result<()> {
    let script = format!(
        "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
           net.ipv6.conf.all.keep_addr_on_down=1 net.ipv6.conf.default.keep_addr_on_down=1 && \
         ip link set lo up && \
         ip link set eth0 address {mac} && ip link set eth0 up && \
         ip addr add {ip4}/24 dev eth0 && ip -6 addr add {ip6}/64 dev eth0 nodad",
        mac = host.mac,
        ip4 = host.ip4,
        ip6 = host.ip6
    );
    host.sh(&script)?;
    Ok(())
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
