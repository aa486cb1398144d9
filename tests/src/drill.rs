//! Failover-drill harness: an independent observer on the L2 segment, the analysis of who
//! claimed a VIP when, a continuous prober for outage measurement, announcements sent by hand
//! and switch-level partitions.
//!
//! # What the observer records
//!
//! `fulcrum-testsrv observe` runs in the lab's switch namespace and sees every frame that enters
//! the bridge (see [`Observer`] for how). An **event** is a frame that tells the segment "this
//! VIP is at this MAC":
//!
//! | kind | frame | owner MAC ([`Event::owner`]) |
//! |---|---|---|
//! | `garp` | ARP request *or* reply with sender IP = target IP = VIP (RFC 5227 announcement) | ARP sender hardware address |
//! | `arp_reply` | any other ARP reply with sender IP = VIP | ARP sender hardware address |
//! | `arp_request` | ARP request with sender IP = VIP (e.g. the kernel resolving a client from the VIP); peers that have an entry update it | ARP sender hardware address |
//! | `na` | ICMPv6 neighbour advertisement whose target is the VIP (solicited or not) | Target Link-Layer Address option, else the Ethernet source |
//! | `ns` | neighbour solicitation sent *from* the VIP (its SLLA updates the target's cache) | Source Link-Layer Address option, else the Ethernet source |
//! | `from_vip` | any other IPv4/IPv6 frame whose source address is the VIP | Ethernet source |
//!
//! ARP probes (sender 0.0.0.0) and DAD solicitations (source ::) claim nothing and are not
//! recorded. ARP/ND claims are recorded whoever sends them: a real server answering ARP for a VIP
//! is a bug the drill must see. `from_vip` frames are different: in DR mode every real server
//! replies *from the VIP with its own MAC*, which is correct. So the observer takes
//! `--director-mac` (repeatable): when given, `from_vip` frames from any other MAC are not
//! events, only counted per MAC in `from_vip_ignored`. Without it every `from_vip` frame is an
//! event — right for labs without DR real servers, and failing loudly (a spurious second owner)
//! rather than silently when a DR drill forgets the flag. The director list is an allow-list on
//! purpose: a drill knows its directors, and an unexpected host sending from the VIP is still
//! visible in the counts.
//!
//! # Ownership analysis
//!
//! [`owners_sequence`] compresses the time-ordered claims for one VIP into tenures (maximal
//! runs by one MAC). [`overlapping_owners`] takes, per MAC, the interval from its first to its
//! last claim and reports every pair of MACs whose intervals intersect: after a correct
//! takeover the old owner's last claim (including traffic sent from the VIP) precedes the new
//! owner's first claim. That check is exact when each MAC owns the VIP once within the events
//! given; for fail-back drills (A → B → A) slice the observation into windows
//! ([`Observation::window`]) or compare the tenure sequence with [`check_owners`], which also
//! catches flapping (A, B, A, B…).
//!
//! # Capturing on the bridge (measured on the lab's kernel, 6.18)
//!
//! - An AF_PACKET socket bound to `br0` sees only what the bridge delivers to itself:
//!   broadcast and multicast, not unicast frames bridged between two ports (an ARP reply, a
//!   ping). With `br0` promiscuous it sees every bridged frame once, but always with `br0` as
//!   the interface, so the sending port is lost.
//! - An unbound socket in the switch namespace sees each frame on its ingress port (packet type
//!   host/otherhost/broadcast/multicast), again as `PACKET_OUTGOING` on every port it is
//!   forwarded out of, and floods once more on `br0`. The observer uses this: ingress copies
//!   on `br0`'s ports are the frames (each once, with its port), egress copies only fill in
//!   [`Event::delivered_to`], `br0` and non-ports are skipped.
//! - An nft `table bridge` forward-hook drop acts after the ingress tap: a dropped frame is
//!   still observed (it was sent) but has no egress copies.
//! - Times are the kernel's receive timestamps (SO_TIMESTAMPNS, CLOCK_REALTIME) moved onto
//!   CLOCK_MONOTONIC with the offset at start, so the observer's scheduling delay does not shift
//!   or merge events; `kernel_stamped` counts the frames that had one.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::io::BufRead;
use std::io::BufReader;
use std::io::Read;
use std::io::Write;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::process::Child;
use std::process::ChildStdin;
use std::process::ChildStdout;
use std::process::Command;
use std::process::Stdio;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use etherparse::ArpHardwareId;
use etherparse::ArpOperation;
use etherparse::ArpPacket;
use etherparse::EtherType;
use etherparse::Icmpv6Type;
use etherparse::LaxNetSlice;
use etherparse::LaxSlicedPacket;
use etherparse::LinkSlice;
use etherparse::PacketBuilder;
use etherparse::TransportSlice;
use etherparse::icmpv6::NdpOptionSlice;
use etherparse::icmpv6::NeighborAdvertisementHeader;
use etherparse::icmpv6::NeighborAdvertisementPayloadSlice;
use etherparse::icmpv6::NeighborSolicitationPayloadSlice;

use crate::netns::Host;
use crate::netns::Lab;
use crate::netns::run;

pub type Mac = [u8; 6];

pub const BROADCAST: Mac = [0xff; 6];
/// ff02::1 on Ethernet.
pub const ALL_NODES_MAC: Mac = [0x33, 0x33, 0, 0, 0, 1];

/// "02:fc:00:00:00:0b" (lower case, as `ip link` prints it).
pub fn fmt_mac(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Result<Mac> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() != 6 {
        bail!("bad MAC {s:?}");
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).with_context(|| format!("bad MAC {s:?}"))?;
    }
    Ok(m)
}

/// CLOCK_MONOTONIC in µs. The observer and the prober report their start on this clock
/// (`t0_mono_us`), so a test can place its own actions (a SIGKILL, a partition) on their time
/// axes; network namespaces share this clock.
pub fn mono_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

// ---------------------------------------------------------------------------------------------
// Frames: classification (the observer) and construction (`announce`).
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClaimKind {
    Garp,
    ArpReply,
    ArpRequest,
    Na,
    Ns,
    FromVip,
}

impl ClaimKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimKind::Garp => "garp",
            ClaimKind::ArpReply => "arp_reply",
            ClaimKind::ArpRequest => "arp_request",
            ClaimKind::Na => "na",
            ClaimKind::Ns => "ns",
            ClaimKind::FromVip => "from_vip",
        }
    }

    pub fn parse(s: &str) -> Result<ClaimKind> {
        Ok(match s {
            "garp" => ClaimKind::Garp,
            "arp_reply" => ClaimKind::ArpReply,
            "arp_request" => ClaimKind::ArpRequest,
            "na" => ClaimKind::Na,
            "ns" => ClaimKind::Ns,
            "from_vip" => ClaimKind::FromVip,
            _ => bail!("unknown event kind {s:?}"),
        })
    }
}

/// What one frame means for the VIPs being watched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The frame claims `vip`. `mac` is the Ethernet source; `lladdr` the link-layer address
    /// inside the ARP/ND message (what neighbour caches learn), when there is one.
    Claim {
        kind: ClaimKind,
        vip: IpAddr,
        mac: Mac,
        lladdr: Option<Mac>,
    },
    /// Sent from `vip` by a MAC that is not a director (a DR real server's reply).
    IgnoredFromVip { vip: IpAddr, mac: Mac },
}

/// Decides which frames claim which VIPs; shared by the observer binary and the unit tests.
#[derive(Clone, Debug)]
pub struct Classifier {
    pub vips: Vec<IpAddr>,
    /// `None`: every frame from a VIP is a claim. `Some`: only from these MACs.
    pub directors: Option<HashSet<Mac>>,
}

impl Classifier {
    pub fn new(vips: Vec<IpAddr>, directors: &[Mac]) -> Classifier {
        Classifier {
            vips,
            directors: if directors.is_empty() {
                None
            } else {
                Some(directors.iter().copied().collect())
            },
        }
    }

    fn is_vip(&self, ip: IpAddr) -> bool {
        self.vips.contains(&ip)
    }

    pub fn classify(&self, frame: &[u8]) -> Option<Seen> {
        let pkt = LaxSlicedPacket::from_ethernet(frame).ok()?;
        let Some(LinkSlice::Ethernet2(eth)) = &pkt.link else {
            return None;
        };
        let mac = eth.source();
        match pkt.net.as_ref()? {
            LaxNetSlice::Arp(arp) => {
                if arp.hw_addr_type() != ArpHardwareId::ETHERNET
                    || arp.proto_addr_type() != EtherType::IPV4
                {
                    return None;
                }
                let sip = <[u8; 4]>::try_from(arp.sender_protocol_addr()).ok()?;
                let tip = <[u8; 4]>::try_from(arp.target_protocol_addr()).ok()?;
                let sha = <Mac>::try_from(arp.sender_hw_addr()).ok()?;
                let vip = IpAddr::V4(Ipv4Addr::from(sip));
                if !self.is_vip(vip) {
                    return None;
                }
                let kind = if sip == tip {
                    ClaimKind::Garp
                } else if arp.operation() == ArpOperation::REPLY {
                    ClaimKind::ArpReply
                } else if arp.operation() == ArpOperation::REQUEST {
                    ClaimKind::ArpRequest
                } else {
                    return None;
                };
                Some(Seen::Claim {
                    kind,
                    vip,
                    mac,
                    lladdr: Some(sha),
                })
            }
            LaxNetSlice::Ipv4(ip) => {
                let src = IpAddr::V4(ip.header().source_addr());
                self.is_vip(src).then(|| self.sent_from_vip(src, mac))
            }
            LaxNetSlice::Ipv6(ip) => {
                let src = IpAddr::V6(ip.header().source_addr());
                if let Some(TransportSlice::Icmpv6(icmp)) = &pkt.transport {
                    match icmp.icmp_type() {
                        Icmpv6Type::NeighborAdvertisement(_) => {
                            let na = NeighborAdvertisementPayloadSlice::from_slice(icmp.payload())
                                .ok()?;
                            let target = IpAddr::V6(na.target_address());
                            if self.is_vip(target) {
                                let lladdr = na.options_iterator().find_map(|o| match o {
                                    Ok(NdpOptionSlice::TargetLinkLayerAddress(t)) => {
                                        <Mac>::try_from(t.link_layer_address()).ok()
                                    }
                                    _ => None,
                                });
                                return Some(Seen::Claim {
                                    kind: ClaimKind::Na,
                                    vip: target,
                                    mac,
                                    lladdr,
                                });
                            }
                        }
                        Icmpv6Type::NeighborSolicitation if self.is_vip(src) => {
                            let ns = NeighborSolicitationPayloadSlice::from_slice(icmp.payload())
                                .ok()?;
                            let lladdr = ns.options_iterator().find_map(|o| match o {
                                Ok(NdpOptionSlice::SourceLinkLayerAddress(s)) => {
                                    <Mac>::try_from(s.link_layer_address()).ok()
                                }
                                _ => None,
                            });
                            return Some(Seen::Claim {
                                kind: ClaimKind::Ns,
                                vip: src,
                                mac,
                                lladdr,
                            });
                        }
                        _ => {}
                    }
                }
                self.is_vip(src).then(|| self.sent_from_vip(src, mac))
            }
        }
    }

    fn sent_from_vip(&self, vip: IpAddr, mac: Mac) -> Seen {
        match &self.directors {
            Some(d) if !d.contains(&mac) => Seen::IgnoredFromVip { vip, mac },
            _ => Seen::Claim {
                kind: ClaimKind::FromVip,
                vip,
                mac,
                lladdr: None,
            },
        }
    }
}

/// Gratuitous ARP for `vip` at `mac`, broadcast, sender IP = target IP = VIP. `reply` picks
/// the reply form (target MAC = broadcast), otherwise the request form (RFC 5227
/// announcement, target MAC zero). Linux updates an existing neighbour entry from either.
pub fn garp_frame(mac: Mac, vip: Ipv4Addr, reply: bool) -> Vec<u8> {
    let (op, tha) = if reply {
        (ArpOperation::REPLY, BROADCAST)
    } else {
        (ArpOperation::REQUEST, [0; 6])
    };
    let arp = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        op,
        &mac,
        &vip.octets(),
        &tha,
        &vip.octets(),
    )
    .expect("fixed-size ARP fields");
    let mut out = Vec::with_capacity(60);
    PacketBuilder::ethernet2(mac, BROADCAST)
        .arp(arp)
        .write(&mut out)
        .expect("writing to a Vec");
    out
}

/// Unsolicited neighbour advertisement (RFC 4861 §7.2.6): from the VIP to ff02::1, hop limit
/// 255, Override set, Solicited and Router clear, with a Target Link-Layer Address option.
pub fn unsolicited_na_frame(mac: Mac, vip: Ipv6Addr) -> Vec<u8> {
    let all_nodes: Ipv6Addr = "ff02::1".parse().expect("ff02::1");
    let mut payload = Vec::with_capacity(24);
    payload.extend_from_slice(&vip.octets());
    payload.extend_from_slice(&[2, 1]);
    payload.extend_from_slice(&mac);
    let mut out = Vec::with_capacity(90);
    PacketBuilder::ethernet2(mac, ALL_NODES_MAC)
        .ipv6(vip.octets(), all_nodes.octets(), 255)
        .icmpv6(Icmpv6Type::NeighborAdvertisement(
            NeighborAdvertisementHeader {
                router: false,
                solicited: false,
                r#override: true,
            },
        ))
        .write(&mut out, &payload)
        .expect("writing to a Vec");
    out
}

/// A UDP datagram from `src` (e.g. a VIP) to `dst`, for exercising the `from_vip` rules.
pub fn udp_frame(src_mac: Mac, dst_mac: Mac, src: IpAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + payload.len());
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    let r = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth
            .ipv4(s.octets(), d.octets(), 64)
            .udp(40000, 9)
            .write(&mut out, payload),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth
            .ipv6(s.octets(), d.octets(), 64)
            .udp(40000, 9)
            .write(&mut out, payload),
        _ => panic!("udp_frame: mixed families {src} -> {dst}"),
    };
    r.expect("writing to a Vec");
    out
}

// ---------------------------------------------------------------------------------------------
// The observer's output and its analysis.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// µs since the observer started.
    pub t_us: u64,
    pub kind: ClaimKind,
    pub vip: IpAddr,
    /// Ethernet source MAC.
    pub mac: String,
    /// The link-layer address inside an ARP/ND message (ARP sender hardware address, NA
    /// target / NS source link-layer address option).
    pub lladdr: Option<String>,
    /// The bridge port the frame entered through (`p{host}`), when observed on a bridge.
    pub port: Option<String>,
    /// The bridge ports the frame was forwarded out of (the hosts that received it). A frame
    /// dropped by a partition rule is still an event (it was sent) but is delivered to fewer
    /// ports or none.
    pub delivered_to: Vec<String>,
}

impl Event {
    /// The MAC this event says the VIP is at: the ARP/ND link-layer address if present, else
    /// the Ethernet source.
    pub fn owner(&self) -> &str {
        self.lladdr.as_deref().unwrap_or(&self.mac)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "t_us": self.t_us,
            "kind": self.kind.as_str(),
            "vip": self.vip.to_string(),
            "mac": self.mac,
        });
        if let Some(l) = &self.lladdr {
            v["lladdr"] = l.clone().into();
        }
        if let Some(p) = &self.port {
            v["port"] = p.clone().into();
            v["delivered_to"] = self.delivered_to.clone().into();
        }
        v
    }

    pub fn from_json(v: &serde_json::Value) -> Result<Event> {
        let s = |k: &str| -> Result<&str> {
            v[k].as_str()
                .with_context(|| format!("event without {k}: {v}"))
        };
        Ok(Event {
            t_us: v["t_us"].as_u64().context("event without t_us")?,
            kind: ClaimKind::parse(s("kind")?)?,
            vip: s("vip")?.parse().context("event vip")?,
            mac: s("mac")?.to_string(),
            lladdr: v["lladdr"].as_str().map(str::to_string),
            port: v["port"].as_str().map(str::to_string),
            delivered_to: v["delivered_to"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// The observer's JSON document.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    /// The observer's start on [`mono_us`]'s clock.
    pub t0_mono_us: u64,
    /// How long it ran, µs.
    pub duration_us: u64,
    pub events: Vec<Event>,
    /// `from_vip` frames from MACs that are not directors, per MAC.
    pub from_vip_ignored: BTreeMap<String, u64>,
    /// Frames received (ingress copies only on a bridge).
    pub frames: u64,
    /// How many of them carried a kernel receive timestamp (the rest are stamped when read).
    pub kernel_stamped: u64,
    /// Frames the kernel dropped before the observer read them (PACKET_STATISTICS). Non-zero
    /// means the observation is incomplete and a "no overlap" verdict is not proof.
    pub kernel_drops: u64,
    /// The event cap was reached; later events are missing.
    pub truncated: bool,
}

impl Observation {
    pub fn parse(text: &str) -> Result<Observation> {
        let v: serde_json::Value = serde_json::from_str(text.trim())
            .with_context(|| format!("observer output {text:?}"))?;
        let events = v["events"]
            .as_array()
            .context("no events")?
            .iter()
            .map(Event::from_json)
            .collect::<Result<Vec<_>>>()?;
        let from_vip_ignored = v["from_vip_ignored"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Observation {
            t0_mono_us: v["t0_mono_us"].as_u64().unwrap_or(0),
            duration_us: v["duration_us"].as_u64().unwrap_or(0),
            events,
            from_vip_ignored,
            frames: v["frames"].as_u64().unwrap_or(0),
            kernel_stamped: v["kernel_stamped"].as_u64().unwrap_or(0),
            kernel_drops: v["kernel_drops"].as_u64().unwrap_or(0),
            truncated: v["truncated"].as_bool().unwrap_or(false),
        })
    }

    /// A [`mono_us`] reading on this observation's time axis (µs since the observer started;
    /// 0 if before).
    pub fn at(&self, mono_us: u64) -> u64 {
        mono_us.saturating_sub(self.t0_mono_us)
    }

    /// The events with `from_us <= t_us < to_us`.
    pub fn window(&self, from_us: u64, to_us: u64) -> Vec<Event> {
        self.events
            .iter()
            .filter(|e| e.t_us >= from_us && e.t_us < to_us)
            .cloned()
            .collect()
    }

    /// The first claim of `vip` by `mac` (as [`Event::owner`]) at or after `after_us`: e.g. the
    /// new owner's first announcement after a kill at `obs.at(t_kill)`.
    pub fn first_claim_by(&self, vip: IpAddr, mac: &str, after_us: u64) -> Option<&Event> {
        self.events
            .iter()
            .filter(|e| e.vip == vip && e.owner() == mac && e.t_us >= after_us)
            .min_by_key(|e| e.t_us)
    }

    /// The events that reached the host behind bridge port `port` (`p{host}`).
    pub fn delivered_to(&self, port: &str) -> Vec<Event> {
        self.events
            .iter()
            .filter(|e| e.delivered_to.iter().any(|p| p == port))
            .cloned()
            .collect()
    }
}

/// One claim of one VIP by one MAC at one time: an [`Event`] reduced to what ownership needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub t_us: u64,
    pub vip: IpAddr,
    /// [`Event::owner`].
    pub mac: String,
    pub kind: ClaimKind,
}

/// Every event as a claim, in time order. (The observer records only claims: `from_vip`
/// frames from non-directors are already left out when it was given `--director-mac`.)
pub fn claims(events: &[Event]) -> Vec<Claim> {
    let mut c: Vec<Claim> = events
        .iter()
        .map(|e| Claim {
            t_us: e.t_us,
            vip: e.vip,
            mac: e.owner().to_string(),
            kind: e.kind,
        })
        .collect();
    c.sort_by_key(|c| c.t_us);
    c
}

fn claims_for(events: &[Event], vip: IpAddr) -> Vec<Claim> {
    claims(events)
        .into_iter()
        .filter(|c| c.vip == vip)
        .collect()
}

/// A maximal run of consecutive claims of one VIP by one MAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenure {
    pub mac: String,
    pub first_us: u64,
    pub last_us: u64,
    pub claims: usize,
}

/// Who claimed `vip`, in order: consecutive claims by the same MAC form one tenure. A clean
/// history has one tenure per intended owner (kill drill: `[A, B]`; fail-back: `[A, B, A]`);
/// two owners at once show up as extra, interleaved tenures.
pub fn owners_sequence(events: &[Event], vip: IpAddr) -> Vec<Tenure> {
    let mut out: Vec<Tenure> = Vec::new();
    for c in claims_for(events, vip) {
        match out.last_mut() {
            Some(t) if t.mac == c.mac => {
                t.last_us = c.t_us;
                t.claims += 1;
            }
            _ => out.push(Tenure {
                mac: c.mac,
                first_us: c.t_us,
                last_us: c.t_us,
                claims: 1,
            }),
        }
    }
    out
}

/// Per MAC: its first and last claim of `vip` within `events`.
pub fn owner_intervals(events: &[Event], vip: IpAddr) -> BTreeMap<String, (u64, u64)> {
    let mut m: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for c in claims_for(events, vip) {
        let e = m.entry(c.mac).or_insert((c.t_us, c.t_us));
        e.0 = e.0.min(c.t_us);
        e.1 = e.1.max(c.t_us);
    }
    m
}

/// Two MACs whose [first, last] claim intervals for one VIP intersect, and the intersection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    pub mac_a: String,
    pub mac_b: String,
    pub start_us: u64,
    pub end_us: u64,
}

/// Every pair of MACs whose claim intervals for `vip` intersect (touching counts: two claims
/// in the same µs are two owners at once). Empty = the VIP moved cleanly: each owner stopped
/// before the next began. See the module docs for fail-back histories.
pub fn overlapping_owners(events: &[Event], vip: IpAddr) -> Vec<Overlap> {
    let iv: Vec<(String, (u64, u64))> = owner_intervals(events, vip).into_iter().collect();
    let mut out = Vec::new();
    for (i, (a, (a0, a1))) in iv.iter().enumerate() {
        for (b, (b0, b1)) in &iv[i + 1..] {
            let start = (*a0).max(*b0);
            let end = (*a1).min(*b1);
            if start <= end {
                out.push(Overlap {
                    mac_a: a.clone(),
                    mac_b: b.clone(),
                    start_us: start,
                    end_us: end,
                });
            }
        }
    }
    out
}

/// Checks that `vip` was claimed by exactly the owners `expected`, in that order, one tenure
/// each (so never two at once, no flapping). Returns the tenures, or an error listing them.
pub fn check_owners(events: &[Event], vip: IpAddr, expected: &[&str]) -> Result<Vec<Tenure>> {
    let seq = owners_sequence(events, vip);
    let got: Vec<&str> = seq.iter().map(|t| t.mac.as_str()).collect();
    let want: Vec<String> = expected.iter().map(|m| m.to_lowercase()).collect();
    if got != want {
        let lines: Vec<String> = seq
            .iter()
            .map(|t| {
                format!(
                    "  {} {}..{} µs ({} claims)",
                    t.mac, t.first_us, t.last_us, t.claims
                )
            })
            .collect();
        bail!(
            "{vip}: expected owners {want:?}, saw tenures:\n{}",
            lines.join("\n")
        );
    }
    Ok(seq)
}

// ---------------------------------------------------------------------------------------------
// Processes: observer, prober, announcements, partitions.
// ---------------------------------------------------------------------------------------------

/// `fulcrum-testsrv`, next to the running test binary (cargo builds a package's binaries
/// before its integration tests). Unlike [`crate::testsrv_bin`] this does not build the daemon.
pub fn testsrv() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("target dir").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir.join("fulcrum-testsrv")
}

/// The switch-side port of a lab host.
pub fn port_of(host: &Host) -> String {
    format!("p{}", host.name)
}

/// A `fulcrum-testsrv` subcommand running in a namespace, stopped by closing its stdin; its
/// last stdout line is its JSON report. Killed on drop.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    what: String,
}

impl Running {
    fn spawn(ns: &str, args: &[String], what: &str) -> Result<Running> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(testsrv())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {what} in {ns}"))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut r = Running {
            child,
            stdin,
            stdout,
            what: what.to_string(),
        };
        let mut line = String::new();
        r.stdout.read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("{what} did not start: {line:?}");
        }
        Ok(r)
    }

    /// Returns its report: at once (`stop`: stdin is closed, the process ends within ~100 ms)
    /// or when its own deadline passes.
    fn finish(mut self, stop: bool) -> Result<String> {
        if stop {
            drop(self.stdin.take());
        }
        let mut out = String::new();
        self.stdout.read_to_string(&mut out)?;
        let st = self.child.wait()?;
        if !st.success() {
            bail!("{} failed ({st}); output {out:?}", self.what);
        }
        Ok(out)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The independent observer on the lab's segment: `fulcrum-testsrv observe` on `br0` in the
/// switch namespace. It reads every frame that *enters* the bridge through a port (one
/// unbound AF_PACKET socket, ingress copies only), so it sees exactly what each host sends —
/// also frames a partition rule then drops — once, with the port it came from, plus the ports
/// each claim was forwarded out of. Ports are learned as frames arrive, so hosts attached
/// later are covered too.
pub struct Observer {
    run: Running,
}

impl Observer {
    /// `vips`: addresses to watch. `directors`: the directors' MACs; `from_vip` frames from
    /// other MACs (DR real servers) are only counted. Empty = every frame from a VIP counts.
    /// Runs at most `max_ms`.
    pub fn start(lab: &Lab, vips: &[&str], directors: &[&str], max_ms: u64) -> Result<Observer> {
        let mut args: Vec<String> = vec![
            "observe".into(),
            "--iface".into(),
            "br0".into(),
            "--ms".into(),
            max_ms.to_string(),
        ];
        for v in vips {
            args.extend(["--vip".into(), v.to_string()]);
        }
        for d in directors {
            args.extend(["--director-mac".into(), d.to_string()]);
        }
        Ok(Observer {
            run: Running::spawn(&lab.switch_ns, &args, "observer")?,
        })
    }

    /// Stops the observer now and returns what it saw.
    pub fn finish(self) -> Result<Observation> {
        Observation::parse(&self.run.finish(true)?)
    }
}

/// The prober's report.
#[derive(Clone, Debug)]
pub struct PingReport {
    pub raw: serde_json::Value,
    pub t0_mono_us: u64,
    pub sent: u64,
    pub received: u64,
    /// Longest time between two consecutive replies: the outage a user saw.
    pub max_gap_ms: f64,
    /// Gaps longer than the prober's `--gap-ms`, in ms since its start.
    pub gaps: Vec<(f64, f64)>,
    pub first_reply_after_ms: Option<f64>,
    /// From the last reply to the end of the run (an outage that never ended).
    pub tail_gap_ms: f64,
    pub servers: BTreeMap<String, u64>,
    pub server_changes: u64,
    pub reconnects: u64,
}

impl PingReport {
    pub fn parse(text: &str) -> Result<PingReport> {
        let v: serde_json::Value =
            serde_json::from_str(text.trim()).with_context(|| format!("ping output {text:?}"))?;
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        let u = |k: &str| v[k].as_u64().unwrap_or(0);
        Ok(PingReport {
            t0_mono_us: u("t0_mono_us"),
            sent: u("sent"),
            received: u("received"),
            max_gap_ms: f("max_gap_ms"),
            gaps: v["gaps"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|g| {
                            (
                                g["from_ms"].as_f64().unwrap_or(0.0),
                                g["to_ms"].as_f64().unwrap_or(0.0),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            first_reply_after_ms: v["first_reply_after_ms"].as_f64(),
            tail_gap_ms: f("tail_gap_ms"),
            servers: v["servers"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default(),
            server_changes: u("server_changes"),
            reconnects: u("reconnects"),
            raw: v,
        })
    }

    /// The worst outage seen: the longest gap between replies, or the unfinished one at the end.
    pub fn worst_gap_ms(&self) -> f64 {
        self.max_gap_ms.max(self.tail_gap_ms)
    }

    /// The listed gap (ms since the prober's start, from the last reply before to the first
    /// after) that contains the instant `mono_us` — e.g. the outage caused by a kill at that
    /// time. `None`: no gap over the prober's `--gap-ms` around it.
    pub fn gap_around(&self, mono_us: u64) -> Option<(f64, f64)> {
        let t = mono_us.saturating_sub(self.t0_mono_us) as f64 / 1000.0;
        self.gaps
            .iter()
            .copied()
            .find(|(f, to)| *f <= t && t <= *to)
    }
}

/// A continuous request/response prober (`fulcrum-testsrv ping`) running on a host.
pub struct Pinger {
    run: Running,
}

impl Pinger {
    /// `proto`: "udp" or "tcp"; `target`: `192.0.2.100:53` or `[2001:db8::100]:80`, an echo
    /// server (`fulcrum-testsrv serve`) behind it. One request every `interval_ms`, for at most
    /// `max_ms`.
    pub fn start(
        host: &Host,
        proto: &str,
        target: &str,
        interval_ms: u64,
        max_ms: u64,
    ) -> Result<Pinger> {
        Self::start_with(host, proto, target, interval_ms, max_ms, &[])
    }

    /// With more `ping` flags, e.g. `["--timeout-ms", "5000"]`: a TCP prober that should ride
    /// out a takeover on its connection (TCP retransmits back off 200, 400, 800 ms…) needs a
    /// reply timeout longer than the outage, or it reconnects (default 1000 ms).
    pub fn start_with(
        host: &Host,
        proto: &str,
        target: &str,
        interval_ms: u64,
        max_ms: u64,
        extra: &[&str],
    ) -> Result<Pinger> {
        let mut args: Vec<String> = vec![
            "ping".into(),
            format!("--{proto}"),
            target.into(),
            "--interval-ms".into(),
            interval_ms.to_string(),
            "--ms".into(),
            max_ms.to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        Ok(Pinger {
            run: Running::spawn(&host.ns, &args, "ping")?,
        })
    }

    /// Stops the prober now and returns its report.
    pub fn stop(self) -> Result<PingReport> {
        PingReport::parse(&self.run.finish(true)?)
    }

    /// Waits until the prober's `max_ms` has passed and returns its report.
    pub fn wait(self) -> Result<PingReport> {
        PingReport::parse(&self.run.finish(false)?)
    }
}

/// Sends gratuitous ARP (v4 VIPs) and unsolicited NA (v6 VIPs) from `host`'s `eth0` with its
/// MAC, `count` rounds `interval_ms` apart — a stand-in for a director taking over.
pub fn announce(host: &Host, vips: &[&str], count: u32, interval_ms: u64) -> Result<()> {
    let mut c = host.command(testsrv().to_str().context("path")?);
    c.args(["announce", "--iface", &host.dev])
        .args(["--count", &count.to_string()])
        .args(["--interval-ms", &interval_ms.to_string()]);
    for v in vips {
        c.args(["--vip", v]);
    }
    run(&mut c)?;
    Ok(())
}

/// Whether `nft` is installed (the partition helpers need it).
pub fn nft_available() -> bool {
    Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

static BLOCK_SEQ: AtomicU32 = AtomicU32::new(0);

/// Drops frames between bridge ports in the switch namespace: a `table bridge` with a
/// forward-hook chain (ARP and ND included; the links stay up). Removed on drop.
pub struct BridgeBlock {
    switch_ns: String,
    table: String,
    /// When the rules were in force ([`mono_us`]).
    pub installed_mono_us: u64,
}

impl BridgeBlock {
    /// Drops everything between `a` and `b`, both directions (hosts still reach everyone else).
    pub fn between(lab: &Lab, a: &Host, b: &Host) -> Result<BridgeBlock> {
        let (pa, pb) = (port_of(a), port_of(b));
        Self::install(
            lab,
            &[
                format!("iifname \"{pa}\" oifname \"{pb}\" counter drop"),
                format!("iifname \"{pb}\" oifname \"{pa}\" counter drop"),
            ],
        )
    }

    /// Cuts `host` off from every other host, both directions (its link stays up). The
    /// observer still sees what it sends (with no `delivered_to`).
    pub fn isolate(lab: &Lab, host: &Host) -> Result<BridgeBlock> {
        let p = port_of(host);
        Self::install(
            lab,
            &[
                format!("iifname \"{p}\" counter drop"),
                format!("oifname \"{p}\" counter drop"),
            ],
        )
    }

    /// Installs arbitrary rules (nft syntax, one per line) in the forward chain.
    pub fn install(lab: &Lab, rules: &[String]) -> Result<BridgeBlock> {
        let table = format!(
            "fxdrill{}x{}",
            std::process::id() % 100_000,
            BLOCK_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        // nft 1.0.6: multi-line rulesets only ("... drop; } }" on one line fails), and no
        // chain named "fwd" (a keyword).
        let mut text = format!(
            "table bridge {table} {{\n  chain drill {{\n    type filter hook forward priority 0; policy accept;\n"
        );
        for r in rules {
            text.push_str(&format!("    {r}\n"));
        }
        text.push_str("  }\n}\n");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.switch_ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning nft (is nftables installed?)")?;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(text.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft -f failed: {}\n{text}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(BridgeBlock {
            switch_ns: lab.switch_ns.clone(),
            table,
            installed_mono_us: mono_us(),
        })
    }

    /// `nft list table` output (counters show what was dropped).
    pub fn list(&self) -> Result<String> {
        let out = run(Command::new("ip").args([
            "netns",
            "exec",
            &self.switch_ns,
            "nft",
            "list",
            "table",
            "bridge",
            &self.table,
        ]))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Removes the rules; returns when they stopped applying ([`mono_us`]).
    pub fn remove(mut self) -> Result<u64> {
        let r = self.delete();
        self.table.clear();
        r?;
        Ok(mono_us())
    }

    fn delete(&self) -> Result<()> {
        run(Command::new("ip").args([
            "netns",
            "exec",
            &self.switch_ns,
            "nft",
            "delete",
            "table",
            "bridge",
            &self.table,
        ]))?;
        Ok(())
    }
}

impl Drop for BridgeBlock {
    fn drop(&mut self) {
        if !self.table.is_empty() {
            let _ = self.delete();
        }
    }
}

/// Polls `f` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [2, 0xfc, 0, 0, 0, 0x11];
    const B: Mac = [2, 0xfc, 0, 0, 0, 0x12];
    const RS: Mac = [2, 0xfc, 0, 0, 0, 0x21];

    fn v4() -> Ipv4Addr {
        "192.0.2.100".parse().unwrap()
    }
    fn v6() -> Ipv6Addr {
        "2001:db8::100".parse().unwrap()
    }
    fn classifier(directors: &[Mac]) -> Classifier {
        Classifier::new(vec![IpAddr::V4(v4()), IpAddr::V6(v6())], directors)
    }

    #[test]
    fn garp_both_forms_and_na_are_claims_with_their_lladdr() {
        let c = classifier(&[]);
        for reply in [false, true] {
            assert_eq!(
                c.classify(&garp_frame(A, v4(), reply)),
                Some(Seen::Claim {
                    kind: ClaimKind::Garp,
                    vip: IpAddr::V4(v4()),
                    mac: A,
                    lladdr: Some(A)
                })
            );
        }
        let na = unsolicited_na_frame(B, v6());
        assert_eq!(
            c.classify(&na),
            Some(Seen::Claim {
                kind: ClaimKind::Na,
                vip: IpAddr::V6(v6()),
                mac: B,
                lladdr: Some(B)
            })
        );
        // The NA is well formed: hop limit 255, O flag, valid checksum.
        let p = etherparse::SlicedPacket::from_ethernet(&na).unwrap();
        let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
            panic!()
        };
        assert_eq!(ip.header().hop_limit(), 255);
        let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!()
        };
        assert!(icmp.is_checksum_valid(
            ip.header().source_addr().octets(),
            ip.header().destination_addr().octets()
        ));
        assert!(matches!(
            icmp.icmp_type(),
            Icmpv6Type::NeighborAdvertisement(h) if h.r#override && !h.solicited
        ));
    }

    #[test]
    fn arp_reply_and_request_from_the_vip_claim_probes_do_not() {
        let c = classifier(&[]);
        let frame = |op, sip: [u8; 4], tip: [u8; 4]| {
            let arp = ArpPacket::new(
                ArpHardwareId::ETHERNET,
                EtherType::IPV4,
                op,
                &A,
                &sip,
                &[0; 6],
                &tip,
            )
            .unwrap();
            let mut out = Vec::new();
            PacketBuilder::ethernet2(A, BROADCAST)
                .arp(arp)
                .write(&mut out)
                .unwrap();
            // Padded to the Ethernet minimum, as NICs and the engine do.
            out.resize(60, 0);
            out
        };
        let kind = |f: Vec<u8>| match c.classify(&f) {
            Some(Seen::Claim { kind, .. }) => Some(kind),
            _ => None,
        };
        let client = [192, 0, 2, 10];
        assert_eq!(
            kind(frame(ArpOperation::REPLY, v4().octets(), client)),
            Some(ClaimKind::ArpReply)
        );
        assert_eq!(
            kind(frame(ArpOperation::REQUEST, v4().octets(), client)),
            Some(ClaimKind::ArpRequest)
        );
        // A client asking for the VIP, and an ARP probe for it: no claim.
        assert_eq!(
            kind(frame(ArpOperation::REQUEST, client, v4().octets())),
            None
        );
        assert_eq!(
            kind(frame(ArpOperation::REQUEST, [0; 4], v4().octets())),
            None
        );
    }

    #[test]
    fn from_vip_counts_only_for_directors_when_they_are_named() {
        let client: IpAddr = "192.0.2.10".parse().unwrap();
        let dr_reply = udp_frame(RS, A, IpAddr::V4(v4()), client, b"x");
        let from_dir = udp_frame(A, BROADCAST, IpAddr::V4(v4()), client, b"x");
        let open = classifier(&[]);
        assert!(matches!(
            open.classify(&dr_reply),
            Some(Seen::Claim {
                kind: ClaimKind::FromVip,
                ..
            })
        ));
        let strict = classifier(&[A, B]);
        assert_eq!(
            strict.classify(&dr_reply),
            Some(Seen::IgnoredFromVip {
                vip: IpAddr::V4(v4()),
                mac: RS
            })
        );
        assert!(matches!(
            strict.classify(&from_dir),
            Some(Seen::Claim {
                kind: ClaimKind::FromVip,
                ..
            })
        ));
        // ARP claims count whoever sends them.
        assert!(matches!(
            strict.classify(&garp_frame(RS, v4(), false)),
            Some(Seen::Claim { .. })
        ));
        // Traffic to the VIP is not a claim.
        let to_vip = udp_frame(RS, A, client, IpAddr::V4(v4()), b"x");
        assert_eq!(open.classify(&to_vip), None);
        let v6_from = udp_frame(
            A,
            ALL_NODES_MAC,
            IpAddr::V6(v6()),
            "2001:db8::10".parse().unwrap(),
            b"x",
        );
        assert!(matches!(
            strict.classify(&v6_from),
            Some(Seen::Claim {
                kind: ClaimKind::FromVip,
                ..
            })
        ));
    }

    fn ev(t_us: u64, mac: &str) -> Event {
        Event {
            t_us,
            kind: ClaimKind::Garp,
            vip: "192.0.2.100".parse().unwrap(),
            mac: mac.into(),
            lladdr: None,
            port: None,
            delivered_to: vec![],
        }
    }

    #[test]
    fn sequential_claims_do_not_overlap_interleaved_ones_do() {
        let vip: IpAddr = "192.0.2.100".parse().unwrap();
        let clean = vec![ev(10, "a"), ev(20, "a"), ev(30, "b"), ev(40, "b")];
        assert!(overlapping_owners(&clean, vip).is_empty());
        assert_eq!(
            owners_sequence(&clean, vip),
            vec![
                Tenure {
                    mac: "a".into(),
                    first_us: 10,
                    last_us: 20,
                    claims: 2
                },
                Tenure {
                    mac: "b".into(),
                    first_us: 30,
                    last_us: 40,
                    claims: 2
                }
            ]
        );
        check_owners(&clean, vip, &["a", "b"]).unwrap();
        let mut late = clean.clone();
        late.push(ev(35, "a"));
        assert_eq!(
            overlapping_owners(&late, vip),
            vec![Overlap {
                mac_a: "a".into(),
                mac_b: "b".into(),
                start_us: 30,
                end_us: 35
            }]
        );
        assert!(check_owners(&late, vip, &["a", "b"]).is_err());
        // Same instant, two MACs: overlap.
        assert_eq!(overlapping_owners(&[ev(5, "a"), ev(5, "b")], vip).len(), 1);
        // Another VIP's claims don't matter.
        assert!(overlapping_owners(&late, "192.0.2.101".parse().unwrap()).is_empty());
    }

    #[test]
    fn observation_round_trips_through_json() {
        let mut e = ev(7, "02:fc:00:00:00:11");
        e.lladdr = Some("02:fc:00:00:00:11".into());
        e.port = Some("pdirA".into());
        e.delivered_to = vec!["pclient".into()];
        let doc = serde_json::json!({
            "t0_mono_us": 5, "duration_us": 100, "frames": 3, "kernel_drops": 0,
            "truncated": false, "from_vip_ignored": {"02:fc:00:00:00:21": 4},
            "events": [e.to_json()],
        });
        let o = Observation::parse(&doc.to_string()).unwrap();
        assert_eq!(o.events, vec![e]);
        assert_eq!(o.from_vip_ignored["02:fc:00:00:00:21"], 4);
        assert_eq!(o.delivered_to("pclient").len(), 1);
        assert_eq!(o.at(12), 7);
    }
}
