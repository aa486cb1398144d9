//! Neighbour resolution for real servers: the engine asks (ARP request / neighbour
//! solicitation from the director's own address) and learns from the answers its socket
//! filter lets through. Only addresses the engine wants are learned, so ARP noise on the
//! segment cannot fill the table.
//!
//! Reads happen on the packet path (one read lock, no allocation); writes only when a
//! reply arrives or the wanted set changes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::sync::RwLock;
use std::time::Duration;
use std::time::Instant;

use etherparse::NetSlice;

use super::packet;
use etherparse::SlicedPacket;

pub type Mac = [u8; 6];

#[derive(Debug, Clone, Copy)]
struct Entry {
    mac: Option<Mac>,
    learned: Option<Instant>,
    asked: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Neighbours {
    map: RwLock<HashMap<IpAddr, Entry>>,
}

/// Ask again this often even when resolved, so a replaced real server is noticed.
pub const REFRESH: Duration = Duration::from_secs(30);
/// Retry an unanswered request after this long.
pub const RETRY: Duration = Duration::from_millis(200);

impl Neighbours {
    pub fn get(&self, ip: &IpAddr) -> Option<Mac> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(ip)
            .and_then(|e| e.mac)
    }

    /// Replaces the set of wanted addresses, keeping what is known about those that stay.
    pub fn want(&self, ips: impl IntoIterator<Item = IpAddr>) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let mut next = HashMap::new();
        for ip in ips {
            let e = map.get(&ip).copied().unwrap_or(Entry {
                mac: None,
                learned: None,
                asked: None,
            });
            next.insert(ip, e);
        }
        *map = next;
    }

    /// Records `ip` at `mac` if it is wanted; returns whether it was.
    pub fn learn(&self, ip: IpAddr, mac: Mac, now: Instant) -> bool {
        if mac == [0; 6] || mac[0] & 1 == 1 {
            return false;
        }
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            match map.get(&ip) {
                None => return false,
                Some(e)
                    if e.mac == Some(mac) && e.learned.is_some_and(|l| now - l < REFRESH / 2) =>
                {
                    return true;
                }
                Some(_) => {}
            }
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get_mut(&ip) {
            if e.mac != Some(mac) {
                tracing::info!(%ip, mac = %fmt_mac(&mac), "neighbour learned");
            }
            e.mac = Some(mac);
            e.learned = Some(now);
            return true;
        }
        false
    }

    /// Learns from an ARP reply/request or a neighbour advertisement; ignores anything else.
    pub fn learn_from_frame(&self, frame: &[u8], now: Instant) -> bool {
        let Ok(p) = SlicedPacket::from_ethernet(frame) else {
            return false;
        };
        match &p.net {
            Some(NetSlice::Arp(arp)) => {
                let (Ok(ip), Ok(mac)) = (
                    <[u8; 4]>::try_from(arp.sender_protocol_addr()),
                    <[u8; 6]>::try_from(arp.sender_hw_addr()),
                ) else {
                    return false;
                };
                self.learn(IpAddr::V4(Ipv4Addr::from(ip)), mac, now)
            }
            Some(NetSlice::Ipv6(_)) => match parse_na(frame) {
                Some((ip, mac)) => self.learn(IpAddr::V6(ip), mac, now),
                None => false,
            },
            _ => false,
        }
    }

    /// Addresses to ask for now (never asked, unanswered for [`RETRY`], or due a refresh),
    /// marking them asked.
    pub fn due(&self, now: Instant) -> Vec<IpAddr> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (ip, e) in map.iter_mut() {
            let stale = match (e.mac, e.learned, e.asked) {
                (None, _, None) => true,
                (None, _, Some(a)) => now - a >= RETRY,
                (Some(_), Some(l), a) => now - l >= REFRESH && a.is_none_or(|a| now - a >= RETRY),
                (Some(_), None, _) => true,
            };
            if stale {
                e.asked = Some(now);
                out.push(*ip);
            }
        }
        out
    }
}

pub fn fmt_mac(m: &Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// (target address, target link-layer address) of a neighbour advertisement.
fn parse_na(frame: &[u8]) -> Option<(Ipv6Addr, Mac)> {
    // Ethernet 14 + IPv6 40, then ICMPv6: type 136, code, checksum, flags(4), target(16),
    // then options. Extension headers are not used by NDP.
    let icmp = frame.get(54..)?;
    if frame.get(20) != Some(&58) || icmp.first() != Some(&136) {
        return None;
    }
    let target: [u8; 16] = icmp.get(8..24)?.try_into().ok()?;
    let mut opts = icmp.get(24..)?;
    while opts.len() >= 8 {
        let len = usize::from(opts[1]) * 8;
        if len == 0 || len > opts.len() {
            return None;
        }
        if opts[0] == 2 && len >= 8 {
            let mac: Mac = opts.get(2..8)?.try_into().ok()?;
            return Some((Ipv6Addr::from(target), mac));
        }
        opts = &opts[len..];
    }
    None
}

/// An ARP request for `target` from `src_ip`/`src_mac`, broadcast.
pub fn arp_request(src_mac: Mac, src_ip: Ipv4Addr, target: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&src_mac);
    f[28..32].copy_from_slice(&src_ip.octets());
    f[38..42].copy_from_slice(&target.octets());
    f
}

/// A neighbour solicitation for `target` to its solicited-node multicast group.
pub fn neighbour_solicitation(src_mac: Mac, src_ip: Ipv6Addr, target: Ipv6Addr) -> [u8; 86] {
    let t = target.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    let mut f = [0u8; 86];
    f[0..6].copy_from_slice(&[0x33, 0x33, 0xff, t[13], t[14], t[15]]);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    // IPv6: payload 32 (NS 24 + source link-layer option 8), next header 58, hop limit 255.
    f[14] = 0x60;
    f[18..20].copy_from_slice(&32u16.to_be_bytes());
    f[20] = 58;
    f[21] = 255;
    f[22..38].copy_from_slice(&src_ip.octets());
    f[38..54].copy_from_slice(&group.octets());
    f[54] = 135;
    f[62..78].copy_from_slice(&t);
    f[78] = 1;
    f[79] = 1;
    f[80..86].copy_from_slice(&src_mac);
    let sum = icmpv6_checksum(&src_ip, &group, &f[54..86]);
    f[56..58].copy_from_slice(&sum.to_be_bytes());
    f
}

fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    let acc = packet::pseudo_header_v6(src.octets(), dst.octets(), 58, msg.len());
    packet::checksum_finish(packet::sum_bytes(acc, msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Mac = [2, 0xfc, 0, 0, 0, 0x0b];
    const RS: Mac = [2, 0xfc, 0, 0, 0, 0x15];

    #[test]
    fn arp_request_parses_and_a_reply_is_learned_only_when_wanted() {
        let req = arp_request(
            ME,
            "192.0.2.11".parse().unwrap(),
            "192.0.2.21".parse().unwrap(),
        );
        let p = SlicedPacket::from_ethernet(&req).unwrap();
        let Some(NetSlice::Arp(a)) = p.net else {
            panic!("not arp")
        };
        assert_eq!(a.target_protocol_addr(), &[192, 0, 2, 21]);

        // The real server's answer: the same layout with op 2, sender = RS.
        let mut reply = arp_request(
            RS,
            "192.0.2.21".parse().unwrap(),
            "192.0.2.11".parse().unwrap(),
        );
        reply[21] = 2;
        let n = Neighbours::default();
        let now = Instant::now();
        assert!(!n.learn_from_frame(&reply, now), "not wanted yet");
        n.want(["192.0.2.21".parse().unwrap()]);
        assert_eq!(n.due(now), vec!["192.0.2.21".parse::<IpAddr>().unwrap()]);
        assert!(n.due(now).is_empty(), "asked just now");
        assert!(n.learn_from_frame(&reply, now));
        assert_eq!(n.get(&"192.0.2.21".parse().unwrap()), Some(RS));
        assert!(n.due(now + Duration::from_secs(1)).is_empty());
        assert_eq!(n.due(now + REFRESH).len(), 1, "refreshed periodically");
        // Dropping it from the wanted set forgets it.
        n.want([]);
        assert_eq!(n.get(&"192.0.2.21".parse().unwrap()), None);
    }

    #[test]
    fn solicitation_is_valid_and_an_advertisement_is_learned() {
        let me: Ipv6Addr = "2001:db8::b".parse().unwrap();
        let rs: Ipv6Addr = "2001:db8::15".parse().unwrap();
        let ns = neighbour_solicitation(ME, me, rs);
        let p = SlicedPacket::from_ethernet(&ns).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not v6")
        };
        assert_eq!(
            ip.header().destination_addr(),
            "ff02::1:ff00:15".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            icmpv6_checksum(&me, &ip.header().destination_addr(), &ns[54..]),
            0
        );

        // An NA from the real server: type 136, flags S|O, target rs, TLLA option.
        let mut na = ns;
        na[0..6].copy_from_slice(&ME);
        na[6..12].copy_from_slice(&RS);
        na[22..38].copy_from_slice(&rs.octets());
        na[38..54].copy_from_slice(&me.octets());
        na[54] = 136;
        na[58] = 0x60;
        na[78] = 2;
        na[80..86].copy_from_slice(&RS);
        let n = Neighbours::default();
        n.want([IpAddr::V6(rs)]);
        assert!(n.learn_from_frame(&na, Instant::now()));
        assert_eq!(n.get(&IpAddr::V6(rs)), Some(RS));
    }

    #[test]
    fn garbage_is_ignored() {
        let n = Neighbours::default();
        n.want(["192.0.2.21".parse().unwrap()]);
        for len in 0..100 {
            let f: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            assert!(!n.learn_from_frame(&f, Instant::now()));
        }
    }
}
