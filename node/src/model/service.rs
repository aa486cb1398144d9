//! Virtual services: key, scheduling settings and real servers.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::error::{ModelError, invalid};
use super::key::ServiceKey;
use super::keyed::Keyed;
use super::protocol::Protocol;
use super::real::RealServer;
use super::scheduler::{SchedFlags, Scheduler};
use super::vip_group::check_group_name;

/// Client affinity: connections from one client (or one client prefix) go to the same real
/// server for `timeout_s` after the last one ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Persistence {
    /// Seconds, > 0 (no persistence is `None`, so that there is one way to say it).
    pub timeout_s: u32,
    /// Client prefix length: 0..=32 for IPv4, 0..=128 for IPv6; the maximum means per host.
    pub prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub key: ServiceKey,
    pub scheduler: Scheduler,
    // Optional fields default when absent, so that log entries and snapshots written before a
    // field existed still load.
    #[serde(default)]
    pub flags: SchedFlags,
    #[serde(default)]
    pub persistence: Option<Persistence>,
    /// IPVS one-packet scheduling: every UDP datagram is scheduled on its own.
    #[serde(default)]
    pub one_packet: bool,
    /// The VIP group that carries this service's VIP.
    #[serde(default)]
    pub vip_group: Option<String>,
    /// Keyed by `RealServer::addr`; serialized as a list so the key cannot disagree.
    #[serde(default, with = "super::keyed")]
    pub reals: BTreeMap<SocketAddr, RealServer>,
}

impl Service {
    /// A service with ipvsadm's defaults (wlc, no persistence) and no real servers.
    pub fn new(key: ServiceKey) -> Self {
        Self {
            key,
            scheduler: Scheduler::default(),
            flags: SchedFlags::empty(),
            persistence: None,
            one_packet: false,
            vip_group: None,
            reals: BTreeMap::new(),
        }
    }

    /// Persistence timeout as ipvsadm and the API show it: 0 = off.
    pub fn persistence_timeout(&self) -> u32 {
        self.persistence.map_or(0, |p| p.timeout_s)
    }

    /// Persistence prefix; the family's host prefix when persistence is off.
    pub fn persistence_prefix(&self) -> u8 {
        self.persistence
            .map_or(self.key.family().max_prefix(), |p| p.prefix)
    }

    /// True when everything but the real servers is equal.
    pub fn settings_eq(&self, other: &Service) -> bool {
        self.key == other.key
            && self.scheduler == other.scheduler
            && self.flags == other.flags
            && self.persistence == other.persistence
            && self.one_packet == other.one_packet
            && self.vip_group == other.vip_group
    }

    /// A copy of the settings without the real servers.
    pub fn settings(&self) -> Service {
        Service {
            key: self.key.clone(),
            scheduler: self.scheduler,
            flags: self.flags,
            persistence: self.persistence,
            one_packet: self.one_packet,
            vip_group: self.vip_group.clone(),
            reals: BTreeMap::new(),
        }
    }

    /// Checks everything that does not involve other objects (VIP groups, other services).
    pub fn validate(&self) -> Result<(), ModelError> {
        self.validate_settings()?;
        for (addr, real) in &self.reals {
            if *addr != real.addr {
                invalid!(
                    "service {}: real server listed under {addr} has address {}",
                    self.key,
                    real.addr
                );
            }
            real.validate_for(&self.key)?;
        }
        Ok(())
    }

    /// Checks the settings alone; kept real servers stay valid under new settings because
    /// their checks depend only on the (unchanged) key.
    pub fn validate_settings(&self) -> Result<(), ModelError> {
        self.check_settings()
            .map_err(|e| e.at(format_args!("service {}", self.key)))
    }

    fn check_settings(&self) -> Result<(), ModelError> {
        self.key.validate()?;
        if let ServiceKey::Addr { port: 0, .. } = self.key
            && self.persistence.is_none()
        {
            invalid!("port 0 (all ports) needs persistence (persistence_timeout > 0)");
        }
        if let Some(p) = self.persistence {
            if p.timeout_s == 0 {
                invalid!("persistence timeout 0 means no persistence; leave persistence unset");
            }
            check_prefix(u32::from(p.prefix), &self.key)?;
        }
        self.flags.check_for(self.scheduler)?;
        if self.one_packet
            && let Some(proto) = self.key.protocol()
            && proto != Protocol::Udp
        {
            invalid!("one_packet applies to UDP only (this is a {proto} service)");
        }
        if let Some(group) = &self.vip_group {
            check_group_name(group).map_err(|e| e.at("vip_group"))?;
        }
        Ok(())
    }

    /// Builds a service's settings (no real servers) from the wire formats' fields: TOML and
    /// protobuf carry the same strings and numbers. Validates the settings.
    pub(crate) fn from_fields(f: ServiceFields<'_>) -> Result<Service, ModelError> {
        let key: ServiceKey = f.key.parse()?;
        let scheduler: Scheduler = f.scheduler.parse()?;
        let flags = SchedFlags::parse_list(f.flags)?;
        let persistence = match (f.persistence_timeout, f.persistence_prefix) {
            (0, None) => None,
            (0, Some(prefix)) => invalid!(
                "persistence_prefix {prefix} is set but persistence_timeout is 0 (persistence is off)"
            ),
            (timeout_s, prefix) => {
                let prefix = prefix.unwrap_or(u32::from(key.family().max_prefix()));
                check_prefix(prefix, &key).map_err(|e| e.at(format_args!("service {key}")))?;
                // check_prefix bounded it by 128.
                let prefix = u8::try_from(prefix).unwrap_or(u8::MAX);
                Some(Persistence { timeout_s, prefix })
            }
        };
        // Empty means "none" on the wire: protobuf cannot tell an unset string from "".
        let vip_group = (!f.vip_group.is_empty()).then(|| f.vip_group.to_owned());
        let service = Service {
            key,
            scheduler,
            flags,
            persistence,
            one_packet: f.one_packet,
            vip_group,
            reals: BTreeMap::new(),
        };
        service.validate_settings()?;
        Ok(service)
    }
}

/// The fields of a service as TOML and protobuf carry them.
pub(crate) struct ServiceFields<'a> {
    pub key: &'a str,
    pub scheduler: &'a str,
    pub flags: &'a [String],
    pub persistence_timeout: u32,
    pub persistence_prefix: Option<u32>,
    pub one_packet: bool,
    pub vip_group: &'a str,
}

fn check_prefix(prefix: u32, key: &ServiceKey) -> Result<(), ModelError> {
    let family = key.family();
    if prefix > u32::from(family.max_prefix()) {
        invalid!(
            "persistence_prefix {prefix} is too long for {family} (0..={})",
            family.max_prefix()
        );
    }
    Ok(())
}

impl Keyed for RealServer {
    type Key = SocketAddr;
    fn key(&self) -> SocketAddr {
        self.addr
    }
}

impl Keyed for Service {
    type Key = ServiceKey;
    fn key(&self) -> ServiceKey {
        self.key.clone()
    }
}
