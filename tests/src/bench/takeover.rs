//! `fulcrum-bench takeover [--drills N]`: SIGKILL the VIP owner of a director pair (+ witness)
//! N times and measure, for an IPv4 and an IPv6 VIP, the time from the kill to the first reply
//! through the VIP (a UDP request every 2 ms from the client), and from the kill to the new
//! owner's first gratuitous ARP / unsolicited NA seen on the switch. After each drill the
//! killed director is restarted and rejoins as backup; the next drill kills whichever director
//! owns the VIPs then.

use std::time::Duration;

use anyhow::Result;

use super::check_opts;
use super::loadavg;
use super::machine;
use super::opt;
use crate::drill::Observer;
use crate::drill::Pinger;
use crate::drill::mono_us;
use crate::pair::Pair;
use crate::pair::VIP4;
use crate::pair::VIP6;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "{name:<44} n={:<3} p50 {:>6.1} ms  p99 {:>6.1} ms  min {:>6.1}  max {:>6.1}",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v.first().copied().unwrap_or(f64::NAN),
        v.last().copied().unwrap_or(f64::NAN)
    );
}

pub fn run(args: &[String]) -> Result<()> {
    check_opts(
        args,
        &["--drills", "--lease-ms", "--renew-ms", "--margin-ms"],
    )?;
    let drills: usize = opt(args, "--drills")?.unwrap_or(20);
    let lease: u64 = opt(args, "--lease-ms")?.unwrap_or(200);
    let renew: u64 = opt(args, "--renew-ms")?.unwrap_or(50);
    let margin: u64 = opt(args, "--margin-ms")?.unwrap_or(30);
    println!("machine: {}; load {}", machine(), loadavg());
    println!(
        "timers: raft heartbeat 100 ms, election 300-600 ms (defaults); vip lease {lease} ms, renew {renew} ms, margin {margin} ms"
    );
    let mut p = Pair::with_vip(
        "tko",
        false,
        &format!("lease_ms = {lease}\nrenew_ms = {renew}\nmargin_ms = {margin}"),
    );
    let (m1, m2) = p.macs();
    let mut reply = [Vec::new(), Vec::new()];
    let mut announce = [Vec::new(), Vec::new()];
    for d in 0..drills {
        let owner = p.owner(3).unwrap_or(1);
        let other = 3 - owner;
        let new_mac = if other == 1 { m1.clone() } else { m2.clone() };
        let obs = Observer::start(&p.lab, &[VIP4, VIP6], &[&m1, &m2], 10_000)?;
        let p4 = Pinger::start(&p.client, "udp", &format!("{VIP4}:53"), 2, 2500)?;
        let p6 = Pinger::start(&p.client, "udp", &format!("[{VIP6}]:53"), 2, 2500)?;
        std::thread::sleep(Duration::from_millis(700));
        let t_kill = mono_us();
        p.kill(owner);
        let r = [p4.wait()?, p6.wait()?];
        let o = obs.finish()?;
        for (i, (rep, vip)) in r.iter().zip([VIP4, VIP6]).enumerate() {
            let kill_ms = t_kill.saturating_sub(rep.t0_mono_us) as f64 / 1000.0;
            match rep.gap_around(t_kill) {
                Some((_, to)) => reply[i].push(to - kill_ms),
                // No listed gap contains the kill (the prober lists gaps over 20 ms): the
                // sample is not counted, and said so.
                None => println!(
                    "drill {}: no outage found around the kill for {vip}: {:?}",
                    d + 1,
                    rep.gaps
                ),
            }
            if let Some(e) = o.first_claim_by(vip.parse()?, &new_mac, o.at(t_kill)) {
                announce[i].push((e.t_us - o.at(t_kill)) as f64 / 1000.0);
            }
        }
        println!(
            "drill {:>2}: killed node {owner}; first reply after {:>6.1} ms (v4) {:>6.1} ms (v6)",
            d + 1,
            reply[0].last().copied().unwrap_or(f64::NAN),
            reply[1].last().copied().unwrap_or(f64::NAN)
        );
        p.start(owner);
        p.wait_for(
            Duration::from_secs(30),
            "the killed director back as backup",
            |p| {
                p.state_here(owner) == "backup"
                    && p.status(3).and_then(|s| s["leader_id"].as_u64()) == Some(3)
            },
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    println!();
    summary(
        "kill -> first reply through the VIP, IPv4",
        reply[0].clone(),
    );
    summary(
        "kill -> first reply through the VIP, IPv6",
        reply[1].clone(),
    );
    summary("kill -> new owner's first GARP, IPv4", announce[0].clone());
    summary(
        "kill -> new owner's first unsolicited NA, IPv6",
        announce[1].clone(),
    );
    println!(
        "for context: keepalived VRRP with its defaults (advert_int 1 s) declares the master dead after 3 x advert_int + skew = 3.6 s"
    );
    Ok(())
}
