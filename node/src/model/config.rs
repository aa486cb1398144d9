//! The whole configuration and the rules that span objects: VIP group references, a VIP in
//! one group only, and no port answered by two services of one protocol and VIP.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::error::{ModelError, invalid};
use super::key::{PortRange, ServiceKey};
use super::keyed::Keyed;
use super::protocol::Protocol;
use super::service::Service;
use super::vip_group::VipGroup;

/// Everything the cluster replicates about traffic: services and VIP groups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    #[serde(default, with = "super::keyed")]
    pub services: BTreeMap<ServiceKey, Service>,
    #[serde(default, with = "super::keyed")]
    pub vip_groups: BTreeMap<String, VipGroup>,
}

impl Keyed for VipGroup {
    type Key = String;
    fn key(&self) -> String {
        self.name.clone()
    }
}

impl ClusterConfig {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.vip_groups.is_empty()
    }

    /// Checks every rule of the model. O(n log n) in the number of services and VIPs.
    pub fn validate(&self) -> Result<(), ModelError> {
        let mut owners: BTreeMap<IpAddr, &str> = BTreeMap::new();
        for (name, group) in &self.vip_groups {
            if *name != group.name {
                invalid!("vip_group {} is stored under the name {name}", group.name);
            }
            group.validate()?;
            for vip in &group.vips {
                if let Some(other) = owners.insert(*vip, name) {
                    invalid!(
                        "VIP {vip} is in vip_group {other} and vip_group {name}; a VIP can be in one group only"
                    );
                }
            }
        }
        for (key, service) in &self.services {
            if *key != service.key {
                invalid!("service {} is stored under the key {key}", service.key);
            }
            service.validate()?;
            self.check_service_group(service)?;
        }
        self.check_all_ports()
    }

    /// The checks against other objects for putting `service` in (replacing the service of the
    /// same key, if any). Cost: O(log n) plus the services on the same protocol and VIP.
    pub fn check_service_fits(&self, service: &Service) -> Result<(), ModelError> {
        self.check_service_group(service)?;
        self.check_service_ports(service)
    }

    /// The checks against other groups for adding `group`: none of its VIPs in another group.
    pub fn check_vip_group_fits(&self, group: &VipGroup) -> Result<(), ModelError> {
        for other in self.vip_groups.values().filter(|g| g.name != group.name) {
            if let Some(vip) = group.vips.intersection(&other.vips).next() {
                invalid!(
                    "vip_group {}: VIP {vip} is already in vip_group {}; a VIP can be in one group only",
                    group.name,
                    other.name
                );
            }
        }
        Ok(())
    }

    /// The services that name `group` as their VIP group, in key order.
    pub fn services_using_group(&self, group: &str) -> Vec<&ServiceKey> {
        self.services
            .values()
            .filter(|s| s.vip_group.as_deref() == Some(group))
            .map(|s| &s.key)
            .collect()
    }

    fn check_service_group(&self, service: &Service) -> Result<(), ModelError> {
        let Some(name) = &service.vip_group else {
            return Ok(());
        };
        let Some(group) = self.vip_groups.get(name) else {
            invalid!("service {}: vip_group {name} does not exist", service.key);
        };
        if let Some(vip) = service.key.vip()
            && !group.vips.contains(&vip)
        {
            invalid!(
                "service {}: VIP {vip} is not in vip_group {name} (its VIPs: {})",
                service.key,
                list_for_message(group.vips.iter())
            );
        }
        Ok(())
    }

    /// Incremental form of the port rule: range scans over the keys of the same protocol/VIP.
    fn check_service_ports(&self, service: &Service) -> Result<(), ModelError> {
        let key = &service.key;
        let (Some(protocol), Some(vip), Some(ranges)) =
            (key.protocol(), key.vip(), key.port_ranges())
        else {
            return Ok(());
        };
        if let ServiceKey::Addr { port: 0, .. } = key {
            // IPVS looks up the exact port first and falls back to port 0, so they coexist.
            return Ok(());
        }
        for r in &ranges {
            if r.start > r.end {
                // Not a valid key (validate() says so); BTreeMap::range would panic on it.
                continue;
            }
            let lo = ServiceKey::Addr {
                protocol,
                vip,
                port: r.start,
            };
            let hi = ServiceKey::Addr {
                protocol,
                vip,
                port: r.end,
            };
            if let Some(other) = self
                .services
                .range(lo..=hi)
                .map(|(k, _)| k)
                .find(|k| *k != key)
            {
                return Err(overlap(key, other, &ranges));
            }
        }
        // An empty list is the smallest port group of this protocol and VIP.
        let first = ServiceKey::PortGroup {
            protocol,
            vip,
            ports: Vec::new(),
        };
        let groups = self
            .services
            .range((Bound::Included(first), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.protocol() == Some(protocol) && k.vip() == Some(vip));
        for other in groups {
            if let ServiceKey::PortGroup { ports, .. } = other
                && other != key
                && ports.iter().any(|p| ranges.iter().any(|r| r.overlaps(p)))
            {
                return Err(overlap(key, other, &ranges));
            }
        }
        Ok(())
    }

    /// Whole-config form of the port rule: one sorted sweep per protocol and VIP.
    fn check_all_ports(&self) -> Result<(), ModelError> {
        let mut by_vip: BTreeMap<(Protocol, IpAddr), Vec<(PortRange, &ServiceKey)>> =
            BTreeMap::new();
        for key in self.services.keys() {
            let (Some(protocol), Some(vip), Some(ranges)) =
                (key.protocol(), key.vip(), key.port_ranges())
            else {
                continue;
            };
            if let ServiceKey::Addr { port: 0, .. } = key {
                continue;
            }
            let list = by_vip.entry((protocol, vip)).or_default();
            list.extend(ranges.into_iter().map(|r| (r, key)));
        }
        for list in by_vip.values_mut() {
            list.sort();
            // The range reaching furthest so far; any later range starting before its end overlaps.
            let mut reach: Option<(PortRange, &ServiceKey)> = None;
            for &(r, key) in list.iter() {
                if let Some((prev, prev_key)) = reach
                    && r.start <= prev.end
                    && key != prev_key
                {
                    return Err(overlap(key, prev_key, &[r]));
                }
                if reach.is_none_or(|(prev, _)| r.end > prev.end) {
                    reach = Some((r, key));
                }
            }
        }
        Ok(())
    }
}

/// "service A: port(s) X also served by service B", naming the ports they share.
fn overlap(key: &ServiceKey, other: &ServiceKey, ranges: &[PortRange]) -> ModelError {
    let theirs = other.port_ranges().unwrap_or_default();
    let shared: Vec<String> = ranges
        .iter()
        .flat_map(|r| {
            theirs
                .iter()
                .filter(|t| t.overlaps(r))
                .map(|t| PortRange::new(r.start.max(t.start), r.end.min(t.end)).to_string())
        })
        .collect();
    let one_port = matches!(shared.as_slice(), [p] if !p.contains('-'));
    let (ports, verb) = if one_port {
        ("port", "is")
    } else {
        ("ports", "are")
    };
    ModelError::new(format!(
        "service {key}: {ports} {} {verb} also served by service {other}; a port of one protocol and VIP can belong to one service only",
        shared.join(",")
    ))
}

/// "a, b, c", or the first few and a count, for messages.
pub(crate) fn list_for_message<T: std::fmt::Display>(
    items: impl ExactSizeIterator<Item = T>,
) -> String {
    const SHOWN: usize = 8;
    let total = items.len();
    let mut text: Vec<String> = items.take(SHOWN).map(|i| i.to_string()).collect();
    if total > SHOWN {
        text.push(format!("and {} more", total - SHOWN));
    }
    text.join(", ")
}

/// Builds a config from a list-shaped source (TOML file, protobuf message), so that duplicates
/// and conflicts are reported against the entry that brings them. Groups must all be added
/// before services, which makes the result exactly as strict as [`ClusterConfig::validate`].
#[derive(Debug, Default)]
pub(crate) struct ConfigBuilder {
    config: ClusterConfig,
}

impl ConfigBuilder {
    pub fn add_vip_group(&mut self, group: VipGroup) -> Result<(), ModelError> {
        if self.config.vip_groups.contains_key(&group.name) {
            invalid!("vip_group {} is defined twice", group.name);
        }
        group.validate()?;
        self.config.check_vip_group_fits(&group)?;
        self.config.vip_groups.insert(group.name.clone(), group);
        Ok(())
    }

    pub fn add_service(&mut self, service: Service) -> Result<(), ModelError> {
        if self.config.services.contains_key(&service.key) {
            invalid!("service {} is defined twice", service.key);
        }
        service.validate()?;
        self.config.check_service_fits(&service)?;
        self.config.services.insert(service.key.clone(), service);
        Ok(())
    }

    pub fn finish(self) -> ClusterConfig {
        self.config
    }
}
