//! Building blocks of `fulcrum-bench`: the benchmarks themselves (`engine`, `conntable`,
//! `sync`, ...) and what they share (CPU pinning, network-namespace threads, CPU accounting,
//! statistics).

pub mod conntable;
pub mod engine;
pub mod sync;
pub mod takeover;
pub mod traffic;

use std::os::fd::AsRawFd;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;

/// "N cores, CPU model" of this machine.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| format!(", {} GiB", kb / (1 << 20)))
        .unwrap_or_default();
    format!("{cores} cores, {cpu}{mem}, Linux {kernel}")
}

/// The load average line, to show how quiet the machine was.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` < CPU_SETSIZE is checked by the caller's choice of 0/1; CPU_SET indexes
    // inside the fixed-size set.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 = the calling thread; `set` is a valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        bail!(
            "sched_setaffinity(CPU{cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Moves the calling thread into network namespace `ns` (as created by `ip netns add`).
/// Only this thread moves; sockets it opens afterwards belong to that namespace.
pub fn enter_netns(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a namespace file descriptor we hold open.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a thread inside network namespace `ns` and returns its result.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a thread inside a network namespace panicked"))?
}

/// One CPU's time counters from /proc/stat, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    pub user: u64,
    pub system: u64,
    pub softirq: u64,
    pub irq: u64,
    pub idle: u64,
    pub other: u64,
}

/// Per-CPU counters for `cpu0`, `cpu1`, ... in order.
pub fn cpu_times() -> Vec<CpuTimes> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some(name) = it.next() else { continue };
        if !name.starts_with("cpu") || name == "cpu" {
            continue;
        }
        let v: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
        if v.len() < 8 {
            continue;
        }
        // user nice system idle iowait irq softirq steal [guest guest_nice]
        out.push(CpuTimes {
            user: v[0] + v[1],
            system: v[2],
            idle: v[3] + v[4],
            irq: v[5],
            softirq: v[6],
            other: v[7],
        });
    }
    out
}

/// Shares of one CPU's time between two samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// Busy fraction, 0..=1: one minus idle (and iowait) time over wall time. With
    /// NO_HZ_IDLE the kernel measures idle time exactly; the split below is sampled by the
    /// scheduler tick.
    pub busy: f64,
    pub user: f64,
    pub system: f64,
    pub softirq: f64,
}

impl CpuUse {
    pub fn between(a: &CpuTimes, b: &CpuTimes, wall_secs: f64) -> CpuUse {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let wall = (wall_secs * hz).max(1.0);
        let share = |x: u64, y: u64| (y.saturating_sub(x) as f64 / wall).clamp(0.0, 1.0);
        CpuUse {
            busy: 1.0 - share(a.idle, b.idle),
            user: share(a.user, b.user),
            system: share(a.system, b.system),
            softirq: share(a.softirq + a.irq, b.softirq + b.irq),
        }
    }
}

/// A thread's scheduler times: (nanoseconds on a CPU, nanoseconds waiting on a run queue
/// while ready), from `/proc/PID/task/TID/schedstat`. Without IRQ time accounting (this
/// kernel) the time on CPU includes the softirqs that ran in the thread's context.
pub fn task_times(pid: u32, tid: i32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
    let mut it = s.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The process named `comm` (the first found).
pub fn find_process(comm: &str) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let c = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if c.trim() == comm {
            return Some(pid);
        }
    }
    None
}

/// The thread of process `pid` named `comm`.
pub fn find_task(pid: u32, comm: &str) -> Option<i32> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for e in dir.flatten() {
        let tid: i32 = e.file_name().to_str()?.parse().ok()?;
        let c = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if c.trim() == comm {
            return Some(tid);
        }
    }
    None
}

/// Median, minimum and maximum of some samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        if values.is_empty() {
            return Spread::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

/// "585 k" / "1.07 M" for a packet or operation rate.
pub fn rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.0} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// Sleeps until `deadline` (no-op if it passed).
pub fn sleep_until(deadline: std::time::Instant) {
    let now = std::time::Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

/// Parses `--name value` options after the subcommand: returns the value of `name`, if given.
pub fn opt<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    let Some(i) = args.iter().position(|a| a == name) else {
        return Ok(None);
    };
    let Some(v) = args.get(i + 1) else {
        bail!("{name} needs a value");
    };
    v.parse::<T>()
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{name} {v}: {e}"))
}

/// Fails on options a benchmark does not know (catches typos that would silently change
/// what is measured).
pub fn check_opts(args: &[String], known: &[&str]) -> Result<()> {
    let mut i = 0;
    while i < args.len() {
        if !known.contains(&args[i].as_str()) {
            bail!("unknown option {:?}; known: {}", args[i], known.join(" "));
        }
        i += 2;
    }
    Ok(())
}
