//! The engine's view of the configuration: an immutable snapshot of the virtual services
//! (with their schedulers and real servers) that packet threads read without locks, rebuilt
//! by the control thread whenever the replicated config changes.
//!
//! What must outlive a rebuild does: a service keeps its numeric id (connection entries
//! refer to it), a real server keeps its `Arc<Dest>` (its connection counters), a scheduler
//! is rebuilt from its predecessor (rr position, lblc tables). Unchanged services are reused
//! as they are, so a change to one service disturbs no other.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use super::filter::FilterSpec;
use super::sched;
use super::sched::Dest;
use super::sched::SchedConfig;
use super::sched::Scheduler;
use crate::model::ClusterConfig;
use crate::model::Forward;
use crate::model::Protocol;
use crate::model::Service;
use crate::model::ServiceKey;

pub fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// Per-service and per-real-server traffic counters (IPVS's stats).
#[derive(Debug, Default)]
pub struct Counters {
    pub conns: AtomicU64,
    pub in_packets: AtomicU64,
    pub out_packets: AtomicU64,
    pub in_bytes: AtomicU64,
    pub out_bytes: AtomicU64,
}

impl Counters {
    pub fn count_in(&self, bytes: usize) {
        self.in_packets.fetch_add(1, Relaxed);
        self.in_bytes.fetch_add(bytes as u64, Relaxed);
    }

    pub fn count_out(&self, bytes: usize) {
        self.out_packets.fetch_add(1, Relaxed);
        self.out_bytes.fetch_add(bytes as u64, Relaxed);
    }
}

/// A real server as the engine forwards to it.
#[derive(Debug)]
pub struct RealRt {
    pub dest: Arc<Dest>,
    pub forward: Forward,
    pub stats: Arc<Counters>,
}

#[derive(Debug)]
pub struct ServiceRt {
    pub id: u32,
    pub svc: Service,
    pub sched: Box<dyn Scheduler>,
    /// In the scheduler's order: `sched.pick()` indexes this.
    pub reals: Vec<RealRt>,
    pub stats: Arc<Counters>,
}

impl ServiceRt {
    pub fn real(&self, addr: &SocketAddr) -> Option<&RealRt> {
        self.reals.iter().find(|r| r.dest.addr() == *addr)
    }
}

/// (first port, last port, service index).
type PortSpan = (u16, u16, usize);

/// Everything the packet path needs, immutable once built.
#[derive(Debug, Default)]
pub struct Snapshot {
    services: Vec<Arc<ServiceRt>>,
    by_id: HashMap<u32, usize>,
    exact: HashMap<(u8, IpAddr, u16), usize>,
    /// Port groups and port-0 services: (first port, last port, index), looked up when no
    /// exact (protocol, VIP, port) service exists.
    ranges: HashMap<(u8, IpAddr), Vec<PortSpan>>,
    /// VIPs forwarded here (held, or being drained after a move).
    owned: HashSet<IpAddr>,
    /// VIPs answered for here (ARP/NDP, packets sent from the VIP): the held ones only.
    answering: HashSet<IpAddr>,
    ids: BTreeMap<ServiceKey, u32>,
    next_id: u32,
    /// Real servers removed from the config while flows may still use them.
    retired: HashMap<(u32, SocketAddr), Arc<Dest>>,
    /// Every real server of the config, owned here or not: a backup keeps their MAC
    /// addresses resolved, so it forwards from its first packet after a takeover.
    hops: HashSet<IpAddr>,
}

impl Snapshot {
    pub fn services(&self) -> &[Arc<ServiceRt>] {
        &self.services
    }

    pub fn by_id(&self, id: u32) -> Option<&Arc<ServiceRt>> {
        self.by_id.get(&id).map(|i| &self.services[*i])
    }

    /// The service for a new flow to (protocol, address, port), if this node owns the VIP.
    pub fn lookup(&self, proto: u8, dst: IpAddr, port: u16) -> Option<&Arc<ServiceRt>> {
        if !self.owned.contains(&dst) {
            return None;
        }
        self.find(proto, dst, port)
    }

    /// The id of the service a flow to (protocol, address, port) belongs to, owned here or
    /// not (a replicated flow of a VIP another director holds).
    pub fn resolve(&self, proto: u8, dst: IpAddr, port: u16) -> Option<u32> {
        self.find(proto, dst, port).map(|s| s.id)
    }

    fn find(&self, proto: u8, dst: IpAddr, port: u16) -> Option<&Arc<ServiceRt>> {
        if let Some(i) = self.exact.get(&(proto, dst, port)) {
            return Some(&self.services[*i]);
        }
        let list = self.ranges.get(&(proto, dst))?;
        // Port groups before the all-ports service: the narrower match wins.
        list.iter()
            .filter(|(lo, hi, _)| (*lo..=*hi).contains(&port))
            .min_by_key(|(lo, hi, _)| hi - lo)
            .map(|(_, _, i)| &self.services[*i])
    }

    /// Whether the engine forwards traffic sent to `ip`.
    pub fn owns(&self, ip: &IpAddr) -> bool {
        self.owned.contains(ip)
    }

    /// Whether the engine answers for `ip`: ARP/NDP, and packets sent from it (NAT replies,
    /// ICMP errors). A VIP being drained after a move is forwarded but not answered for.
    pub fn answers(&self, ip: &IpAddr) -> bool {
        self.answering.contains(ip)
    }

    pub fn owned(&self) -> impl Iterator<Item = &IpAddr> {
        self.owned.iter()
    }

    /// A real server that left the config but whose flows may still run (IPVS's trash).
    pub fn retired(&self, service: u32, addr: &SocketAddr) -> Option<&Arc<Dest>> {
        self.retired.get(&(service, *addr))
    }

    /// The socket filter for this configuration.
    pub fn filter_spec(&self) -> FilterSpec {
        let mut spec = FilterSpec::default();
        for ip in &self.owned {
            match ip {
                IpAddr::V4(a) => spec.vips4.push(*a),
                IpAddr::V6(a) => spec.vips6.push(*a),
            }
        }
        let mut nat: HashSet<IpAddr> = HashSet::new();
        for s in &self.services {
            if s.svc.key.vip().is_none_or(|v| !self.owned.contains(&v)) {
                continue;
            }
            for r in &s.reals {
                if r.forward == Forward::Nat {
                    nat.insert(r.dest.addr().ip());
                }
            }
        }
        for ip in nat {
            match ip {
                IpAddr::V4(a) => spec.nat_reals4.push(a),
                IpAddr::V6(a) => spec.nat_reals6.push(a),
            }
        }
        spec.vips4.sort();
        spec.vips6.sort();
        spec.nat_reals4.sort();
        spec.nat_reals6.sort();
        spec
    }

    /// Real-server addresses the engine must resolve to MAC addresses.
    pub fn next_hops(&self) -> HashSet<IpAddr> {
        self.hops
            .iter()
            .copied()
            .chain(self.retired.keys().map(|(_, a)| a.ip()))
            .collect()
    }
}

/// Builds the next snapshot from `config`, reusing what `prev` has for unchanged parts.
/// `owned` decides which services are live here: only services on VIPs this node owns take
/// new flows; of those, `answering` are answered for. Services the engine cannot run (fwmark:
/// marks are set by netfilter, which a userspace engine on AF_PACKET never sees) are skipped
/// with a warning.
pub fn build(
    config: &ClusterConfig,
    prev: &Snapshot,
    owned: &HashSet<IpAddr>,
    answering: &HashSet<IpAddr>,
    cfg: &SchedConfig,
) -> Snapshot {
    let mut next = Snapshot {
        ids: prev.ids.clone(),
        next_id: prev.next_id.max(1),
        owned: owned.clone(),
        answering: answering.intersection(owned).copied().collect(),
        ..Snapshot::default()
    };
    let prev_by_key: HashMap<&ServiceKey, &Arc<ServiceRt>> =
        prev.services.iter().map(|s| (&s.svc.key, s)).collect();
    for svc in config.services.values() {
        next.hops.extend(svc.reals.keys().map(|a| a.ip()));
        let (proto, vip) = match (&svc.key.protocol(), svc.key.vip()) {
            (Some(p), Some(v)) => (proto_number(*p), v),
            _ => {
                tracing::warn!(service = %svc.key, "fwmark services need kernel IPVS; the userspace engine skips them");
                continue;
            }
        };
        // Every service is built, owned or not: a backup binds replicated flows to their
        // real servers and has the schedulers (a Maglev table, say) ready for a takeover.
        let id = *next.ids.entry(svc.key.clone()).or_insert_with(|| {
            let id = next.next_id;
            next.next_id += 1;
            id
        });
        let old = prev_by_key.get(&svc.key).copied();
        let rt = match old {
            Some(o) if o.svc == *svc => o.clone(),
            _ => Arc::new(build_service(id, svc, old.map(|o| o.as_ref()), cfg)),
        };
        let idx = next.services.len();
        next.by_id.insert(id, idx);
        for r in svc.key.port_ranges().unwrap_or_default() {
            if r.start == r.end && r.start != 0 {
                next.exact.insert((proto, vip, r.start), idx);
            } else {
                let (lo, hi) = if r.start == 0 {
                    (0, u16::MAX)
                } else {
                    (r.start, r.end)
                };
                next.ranges
                    .entry((proto, vip))
                    .or_default()
                    .push((lo, hi, idx));
            }
        }
        next.services.push(rt);
    }
    // Real servers that disappeared keep their Dest (and counters) while flows may use them.
    let mut retired = prev.retired.clone();
    for old in &prev.services {
        let now = next.by_id(old.id);
        for r in &old.reals {
            if now.is_none_or(|s| s.real(&r.dest.addr()).is_none()) {
                retired.insert((old.id, r.dest.addr()), r.dest.clone());
            }
        }
    }
    // Back in the config: no longer retired.
    retired.retain(|(id, addr), _| next.by_id(*id).is_none_or(|s| s.real(addr).is_none()));
    next.retired = retired;
    next
}

fn build_service(id: u32, svc: &Service, prev: Option<&ServiceRt>, cfg: &SchedConfig) -> ServiceRt {
    let mut dests = Vec::with_capacity(svc.reals.len());
    let mut info: HashMap<SocketAddr, (Forward, Arc<Counters>)> = HashMap::new();
    for real in svc.reals.values() {
        let kept = prev.and_then(|p| p.real(&real.addr));
        let dest = match kept {
            Some(k) => {
                k.dest.set_weight(real.weight);
                k.dest
                    .set_thresholds(real.upper_threshold, real.lower_threshold);
                k.dest.clone()
            }
            None => Arc::new(Dest::from_real(real)),
        };
        let stats = kept.map(|k| k.stats.clone()).unwrap_or_default();
        info.insert(real.addr, (real.forward, stats));
        dests.push(dest);
    }
    let made = match prev {
        Some(p) => sched::rebuild(
            p.sched.as_ref(),
            svc.scheduler,
            svc.flags,
            dests.clone(),
            cfg,
        ),
        None => sched::build(svc.scheduler, svc.flags, dests.clone(), cfg),
    };
    let sched = match made {
        Ok(s) => s,
        Err(e) => {
            // Validation makes this unreachable for stored configs; fall back rather than stop
            // forwarding everything.
            tracing::error!(service = %svc.key, "scheduler: {e}; using rr");
            sched::build(crate::model::Scheduler::Rr, Default::default(), dests, cfg)
                .unwrap_or_else(|_| unreachable!("rr accepts any set of real servers"))
        }
    };
    let reals = sched
        .dests()
        .iter()
        .map(|d| {
            let (forward, stats) = info
                .get(&d.addr())
                .cloned()
                .unwrap_or((Forward::Dr, Arc::default()));
            RealRt {
                dest: d.clone(),
                forward,
                stats,
            }
        })
        .collect();
    ServiceRt {
        id,
        svc: svc.clone(),
        sched,
        reals,
        stats: prev.map(|p| p.stats.clone()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_cluster_toml;

    fn cfg(text: &str) -> ClusterConfig {
        parse_cluster_toml(text).unwrap()
    }

    const BASE: &str = r#"
[[service]]
key = "tcp/192.0.2.100:80"
scheduler = "rr"
[[service.real]]
address = "198.51.100.10:80"
[[service.real]]
address = "198.51.100.11:80"
forward = "nat"

[[service]]
key = "udp/192.0.2.100:5000-5010"
scheduler = "sh"
[[service.real]]
address = "198.51.100.12:0"

[[service]]
key = "tcp/192.0.2.100:0"
persistence_timeout = 60
[[service.real]]
address = "198.51.100.13:0"

[[service]]
key = "tcp/[2001:db8::100]:443"
[[service.real]]
address = "[2001:db8:1::10]:443"

[[service]]
key = "tcp/192.0.2.200:80"
[[service.real]]
address = "198.51.100.14:80"
"#;

    fn owned() -> HashSet<IpAddr> {
        ["192.0.2.100", "2001:db8::100"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    }

    #[test]
    fn lookup_prefers_exact_then_narrowest_range_and_only_owned_vips() {
        let s = build(
            &cfg(BASE),
            &Snapshot::default(),
            &owned(),
            &owned(),
            &SchedConfig::default(),
        );
        let vip: IpAddr = "192.0.2.100".parse().unwrap();
        let key = |p, port| s.lookup(p, vip, port).map(|s| s.svc.key.to_string());
        assert_eq!(key(6, 80).as_deref(), Some("tcp/192.0.2.100:80"));
        assert_eq!(key(6, 81).as_deref(), Some("tcp/192.0.2.100:0"));
        assert_eq!(key(17, 5005).as_deref(), Some("udp/192.0.2.100:5000-5010"));
        assert_eq!(key(17, 5011), None);
        let v6: IpAddr = "2001:db8::100".parse().unwrap();
        assert!(s.lookup(6, v6, 443).is_some());
        // Not owned here: not forwarded.
        assert!(s.lookup(6, "192.0.2.200".parse().unwrap(), 80).is_none());
        let spec = s.filter_spec();
        assert_eq!(
            spec.vips4,
            vec!["192.0.2.100".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        assert_eq!(
            spec.nat_reals4,
            vec!["198.51.100.11".parse::<std::net::Ipv4Addr>().unwrap()]
        );
    }

    #[test]
    fn rebuild_keeps_ids_counters_and_unchanged_services() {
        let a = build(
            &cfg(BASE),
            &Snapshot::default(),
            &owned(),
            &owned(),
            &SchedConfig::default(),
        );
        let web = a
            .lookup(6, "192.0.2.100".parse().unwrap(), 80)
            .unwrap()
            .clone();
        let v6 = a
            .lookup(6, "2001:db8::100".parse().unwrap(), 443)
            .unwrap()
            .clone();
        web.reals[0].dest.conn_bound(true);
        // Change one weight of the web service and remove its NAT real server.
        let text = BASE.replacen(
            "address = \"198.51.100.10:80\"",
            "address = \"198.51.100.10:80\"\nweight = 5",
            1,
        );
        let text = text.replacen(
            "[[service.real]]\naddress = \"198.51.100.11:80\"\nforward = \"nat\"\n",
            "",
            1,
        );
        let b = build(&cfg(&text), &a, &owned(), &owned(), &SchedConfig::default());
        let web2 = b.by_id(web.id).unwrap();
        assert_eq!(web2.svc.key, web.svc.key);
        assert_eq!(web2.reals.len(), 1);
        assert!(
            Arc::ptr_eq(&web2.reals[0].dest, &web.reals[0].dest),
            "Dest reused"
        );
        assert_eq!(web2.reals[0].dest.weight(), 5);
        assert_eq!(web2.reals[0].dest.active(), 1, "counters survive");
        // The untouched service is the very same object.
        assert!(Arc::ptr_eq(b.by_id(v6.id).unwrap(), &v6));
        // The removed real server is retired, not forgotten.
        assert!(
            b.retired(web.id, &"198.51.100.11:80".parse().unwrap())
                .is_some()
        );
        assert!(b.filter_spec().nat_reals4.is_empty());
    }
}
