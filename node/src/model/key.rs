//! Virtual service keys and their canonical text.
//!
//! Text forms (they round-trip exactly through `FromStr`/`Display`):
//! `tcp/192.0.2.1:80`, `udp/[2001:db8::1]:53`, `sctp/192.0.2.1:2905`,
//! `tcp/192.0.2.1:8000-8099,8443` (port group), `fwmark/7` (IPv4), `fwmark6/7` (IPv6).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::addr::{parse_port, split_host_port};
use super::error::{ModelError, invalid};
use super::protocol::{Family, Protocol};

/// An inclusive range of ports; `start == end` is a single port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn new(start: u16, end: u16) -> Self {
        Self { start, end }
    }

    pub fn single(port: u16) -> Self {
        Self {
            start: port,
            end: port,
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }

    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// Normalises a port group: sorted, overlapping and adjacent ranges merged. Rejects an
    /// empty list, port 0 (the wildcard has its own key form) and backwards ranges.
    pub fn normalise(
        ranges: impl IntoIterator<Item = PortRange>,
    ) -> Result<Vec<PortRange>, ModelError> {
        let mut ranges: Vec<PortRange> = ranges.into_iter().collect();
        if ranges.is_empty() {
            invalid!("a port group needs at least one port");
        }
        for r in &ranges {
            if r.start > r.end {
                invalid!("port range {}-{} runs backwards", r.start, r.end);
            }
            if r.start == 0 {
                invalid!(
                    "port 0 (all ports) cannot be part of a port group; use the key form tcp/VIP:0"
                );
            }
        }
        ranges.sort();
        let mut merged: Vec<PortRange> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                // u32 so that a range ending at 65535 does not overflow.
                Some(last) if u32::from(r.start) <= u32::from(last.end) + 1 => {
                    last.end = last.end.max(r.end);
                }
                _ => merged.push(r),
            }
        }
        Ok(merged)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// Writes ranges as `8000-8099,8443`.
pub(crate) struct PortList<'a>(pub &'a [PortRange]);

impl fmt::Display for PortList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// What a virtual service is named by. Ordered by kind (address, port group, fwmark), then
/// protocol, VIP and port: a stable order that also lets one VIP's services be found by range.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceKey {
    /// (protocol, VIP, port), as in IPVS. Port 0 is IPVS's "all ports" and needs persistence.
    Addr {
        protocol: Protocol,
        vip: IpAddr,
        port: u16,
    },
    /// Several ports of one VIP balanced as one service (Fulcrum's own; IPVS needs a fwmark
    /// for this). `ports` is normalised (see [`PortRange::normalise`]), never port 0, and
    /// covers more than one port: a single port is an `Addr` key.
    PortGroup {
        protocol: Protocol,
        vip: IpAddr,
        ports: Vec<PortRange>,
    },
    /// Packets carrying this firewall mark (non-zero) in one address family.
    Fwmark { mark: u32, family: Family },
}

impl ServiceKey {
    /// Builds a port-group key, normalising the ranges. A group that covers exactly one port is
    /// returned as an `Addr` key, so each set of ports has exactly one key.
    pub fn port_group(
        protocol: Protocol,
        vip: IpAddr,
        ranges: impl IntoIterator<Item = PortRange>,
    ) -> Result<ServiceKey, ModelError> {
        let ports = PortRange::normalise(ranges)?;
        let key = match ports.as_slice() {
            [only] if only.start == only.end => ServiceKey::Addr {
                protocol,
                vip,
                port: only.start,
            },
            _ => ServiceKey::PortGroup {
                protocol,
                vip,
                ports,
            },
        };
        key.validate()?;
        Ok(key)
    }

    pub fn family(&self) -> Family {
        match self {
            ServiceKey::Addr { vip, .. } | ServiceKey::PortGroup { vip, .. } => Family::of(vip),
            ServiceKey::Fwmark { family, .. } => *family,
        }
    }

    pub fn protocol(&self) -> Option<Protocol> {
        match self {
            ServiceKey::Addr { protocol, .. } | ServiceKey::PortGroup { protocol, .. } => {
                Some(*protocol)
            }
            ServiceKey::Fwmark { .. } => None,
        }
    }

    pub fn vip(&self) -> Option<IpAddr> {
        match self {
            ServiceKey::Addr { vip, .. } | ServiceKey::PortGroup { vip, .. } => Some(*vip),
            ServiceKey::Fwmark { .. } => None,
        }
    }

    /// The ports this key answers on, or None for fwmark keys (any port).
    /// Port 0 (all ports) is returned as the single range 0-0.
    pub fn port_ranges(&self) -> Option<Vec<PortRange>> {
        match self {
            ServiceKey::Addr { port, .. } => Some(vec![PortRange::single(*port)]),
            ServiceKey::PortGroup { ports, .. } => Some(ports.clone()),
            ServiceKey::Fwmark { .. } => None,
        }
    }

    /// Checks the invariants that the constructors and the parser establish, for keys built
    /// field by field.
    pub fn validate(&self) -> Result<(), ModelError> {
        match self {
            ServiceKey::Addr { vip, .. } => check_vip(vip),
            ServiceKey::PortGroup { vip, ports, .. } => {
                check_vip(vip)?;
                let normal = PortRange::normalise(ports.iter().copied())?;
                if &normal != ports {
                    invalid!(
                        "port group {} is not normalised; write it as {}",
                        PortList(ports),
                        PortList(&normal)
                    );
                }
                if let [only] = ports.as_slice()
                    && only.start == only.end
                {
                    invalid!(
                        "a port group of the single port {} is the plain key form :{}",
                        only.start,
                        only.start
                    );
                }
                Ok(())
            }
            ServiceKey::Fwmark { mark, .. } => {
                if *mark == 0 {
                    invalid!(
                        "fwmark 0 is not a mark (packets without a mark have 0); use 1 or more"
                    );
                }
                Ok(())
            }
        }
    }
}

fn check_vip(vip: &IpAddr) -> Result<(), ModelError> {
    if vip.is_unspecified() {
        invalid!("VIP {vip} is not a usable address");
    }
    Ok(())
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceKey::Addr {
                protocol,
                vip,
                port,
            } => write!(f, "{protocol}/{}", SocketAddr::new(*vip, *port)),
            ServiceKey::PortGroup {
                protocol,
                vip,
                ports,
            } => match vip {
                IpAddr::V4(ip) => write!(f, "{protocol}/{ip}:{}", PortList(ports)),
                IpAddr::V6(ip) => write!(f, "{protocol}/[{ip}]:{}", PortList(ports)),
            },
            ServiceKey::Fwmark {
                mark,
                family: Family::V4,
            } => write!(f, "fwmark/{mark}"),
            ServiceKey::Fwmark {
                mark,
                family: Family::V6,
            } => write!(f, "fwmark6/{mark}"),
        }
    }
}

impl FromStr for ServiceKey {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_key(s).map_err(|e| e.at(format_args!("service key \"{s}\"")))
    }
}

fn parse_key(s: &str) -> Result<ServiceKey, ModelError> {
    let Some((head, rest)) = s.split_once('/') else {
        invalid!("no protocol; write tcp/VIP:PORT, udp/..., sctp/... or fwmark/MARK");
    };
    let family = match head.to_ascii_lowercase().as_str() {
        "fwmark" => Some(Family::V4),
        "fwmark6" => Some(Family::V6),
        _ => None,
    };
    if let Some(family) = family {
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
            invalid!("mark \"{rest}\" is not a decimal number");
        }
        let Ok(mark) = rest.parse::<u32>() else {
            invalid!("mark {rest} is out of range (1..=4294967295)");
        };
        let key = ServiceKey::Fwmark { mark, family };
        key.validate()?;
        return Ok(key);
    }
    let protocol: Protocol = match head.parse() {
        Ok(p) => p,
        Err(_) => invalid!("unknown protocol \"{head}\" (valid: tcp, udp, sctp, fwmark, fwmark6)"),
    };
    let (vip, ports) = split_host_port(rest)?;
    if !ports.contains([',', '-']) {
        let key = ServiceKey::Addr {
            protocol,
            vip,
            port: parse_port(ports, rest)?,
        };
        key.validate()?;
        return Ok(key);
    }
    let mut ranges = Vec::new();
    for item in ports.split(',') {
        if item.is_empty() {
            invalid!("empty entry in port list \"{ports}\"");
        }
        ranges.push(match item.split_once('-') {
            Some((a, b)) => PortRange::new(parse_port(a, item)?, parse_port(b, item)?),
            None => PortRange::single(parse_port(item, item)?),
        });
    }
    ServiceKey::port_group(protocol, vip, ranges)
}

impl Serialize for ServiceKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ServiceKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ServiceKey {
        s.parse().unwrap()
    }

    #[test]
    fn canonical_text_round_trips() {
        for s in [
            "tcp/192.0.2.1:80",
            "udp/[2001:db8::1]:53",
            "sctp/192.0.2.1:2905",
            "tcp/192.0.2.1:0",
            "tcp/192.0.2.1:8000-8099,8443",
            "udp/[2001:db8::1]:53,5353",
            "tcp/[::ffff:192.0.2.1]:1-65535",
            "fwmark/7",
            "fwmark6/4294967295",
        ] {
            let k = key(s);
            assert_eq!(k.to_string(), s);
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<ServiceKey>(&json).unwrap(), k);
        }
    }

    #[test]
    fn parses_structure() {
        assert_eq!(
            key("udp/[2001:db8::1]:53"),
            ServiceKey::Addr {
                protocol: Protocol::Udp,
                vip: "2001:db8::1".parse().unwrap(),
                port: 53
            }
        );
        assert_eq!(
            key("fwmark6/7"),
            ServiceKey::Fwmark {
                mark: 7,
                family: Family::V6
            }
        );
        assert_eq!(key("fwmark6/7").family(), Family::V6);
        // Lenient input forms normalise to the canonical text.
        assert_eq!(
            key("TCP/192.0.2.1:8443,8000-8050,8040-8099,8100").to_string(),
            "tcp/192.0.2.1:8000-8100,8443"
        );
        assert_eq!(
            key("tcp/[2001:DB8:0::1]:80").to_string(),
            "tcp/[2001:db8::1]:80"
        );
        // A group of one port is the plain key.
        assert_eq!(key("tcp/192.0.2.1:80-80"), key("tcp/192.0.2.1:80"));
        assert_eq!(key("tcp/192.0.2.1:80,80"), key("tcp/192.0.2.1:80"));
        assert_eq!(
            key("tcp/192.0.2.1:65535,65534").to_string(),
            "tcp/192.0.2.1:65534-65535"
        );
    }

    #[test]
    fn rejects_bad_keys() {
        let cases = [
            ("192.0.2.1:80", "no protocol"),
            ("icmp/192.0.2.1:80", "unknown protocol \"icmp\""),
            ("tcp/2001:db8::1:80", "brackets"),
            ("tcp/192.0.2.1", "missing port"),
            ("tcp/0.0.0.0:80", "VIP 0.0.0.0 is not a usable address"),
            ("tcp/192.0.2.1:8000-7000", "8000-7000 runs backwards"),
            (
                "tcp/192.0.2.1:0,80",
                "port 0 (all ports) cannot be part of a port group",
            ),
            ("tcp/192.0.2.1:80,,81", "empty entry"),
            ("tcp/192.0.2.1:80-", "missing port"),
            ("tcp/192.0.2.1:70000", "out of range"),
            ("fwmark/0", "fwmark 0 is not a mark"),
            ("fwmark/x", "not a decimal number"),
            ("fwmark/", "not a decimal number"),
            ("fwmark/4294967296", "out of range"),
        ];
        for (input, want) in cases {
            let err = input.parse::<ServiceKey>().unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: {err:?} lacks {want:?}");
            assert!(
                err.starts_with(&format!("service key \"{input}\"")),
                "{err}"
            );
        }
    }

    #[test]
    fn validate_catches_hand_built_keys() {
        let vip: IpAddr = "192.0.2.1".parse().unwrap();
        let bad = ServiceKey::PortGroup {
            protocol: Protocol::Tcp,
            vip,
            ports: vec![PortRange::new(90, 99), PortRange::new(80, 89)],
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("write it as 80-99"), "{err}");
        let single = ServiceKey::PortGroup {
            protocol: Protocol::Tcp,
            vip,
            ports: vec![PortRange::single(80)],
        };
        assert!(single.validate().is_err());
        let ok = ServiceKey::port_group(
            Protocol::Tcp,
            vip,
            [PortRange::single(81), PortRange::single(80)],
        )
        .unwrap();
        assert_eq!(ok.to_string(), "tcp/192.0.2.1:80-81");
    }

    #[test]
    fn order_groups_a_vip_together() {
        let mut keys = [
            key("fwmark/1"),
            key("tcp/192.0.2.2:80"),
            key("tcp/192.0.2.1:8000-8099"),
            key("tcp/192.0.2.1:443"),
            key("tcp/192.0.2.1:80"),
        ];
        keys.sort();
        let text: Vec<String> = keys.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "tcp/192.0.2.1:80",
                "tcp/192.0.2.1:443",
                "tcp/192.0.2.2:80",
                "tcp/192.0.2.1:8000-8099",
                "fwmark/1"
            ]
        );
    }
}
