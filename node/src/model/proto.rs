//! Conversions between the model and the public API's messages (`fulcrum_proto::v1`).
//!
//! Model to protobuf cannot fail. Protobuf to model parses and validates, and errors carry the
//! field path (`services[2].reals[0].address: ...`). Protobuf's defaults stand for "none":
//! `persistence_timeout = 0` is no persistence, `vip_group = ""` no group, `preferred_owner = 0`
//! no preferred owner.

use std::collections::BTreeSet;

use fulcrum_proto::v1 as pb;

use super::addr::parse_ip;
use super::config::{ClusterConfig, ConfigBuilder};
use super::error::ModelError;
use super::node::Role;
use super::real::{RealFields, RealServer};
use super::service::{Service, ServiceFields};
use super::vip_group::VipGroup;

impl From<&RealServer> for pb::RealServer {
    fn from(r: &RealServer) -> Self {
        pb::RealServer {
            address: r.addr.to_string(),
            weight: r.weight,
            forward: r.forward.as_str().to_owned(),
            upper_threshold: r.upper_threshold,
            lower_threshold: r.lower_threshold,
        }
    }
}

impl TryFrom<&pb::RealServer> for RealServer {
    type Error = ModelError;

    /// Checks what a real server can be checked for alone; the checks against its service's
    /// key (address family, port) happen when it is put into a service.
    fn try_from(r: &pb::RealServer) -> Result<Self, Self::Error> {
        RealServer::from_fields(RealFields {
            address: &r.address,
            weight: r.weight,
            forward: &r.forward,
            upper_threshold: r.upper_threshold,
            lower_threshold: r.lower_threshold,
        })
    }
}

impl From<&Service> for pb::Service {
    fn from(s: &Service) -> Self {
        pb::Service {
            key: s.key.to_string(),
            scheduler: s.scheduler.as_str().to_owned(),
            scheduler_flags: s.flags.names(),
            persistence_timeout: s.persistence_timeout(),
            persistence_prefix: s.persistence.map(|p| u32::from(p.prefix)),
            vip_group: s.vip_group.clone().unwrap_or_default(),
            reals: s.reals.values().map(pb::RealServer::from).collect(),
            one_packet: s.one_packet,
        }
    }
}

impl TryFrom<&pb::Service> for Service {
    type Error = ModelError;

    /// A complete, self-consistent service; whether it fits the rest of the configuration
    /// (VIP group, port overlaps) is checked by the state machine.
    fn try_from(s: &pb::Service) -> Result<Self, Self::Error> {
        let mut service = Service::from_fields(ServiceFields {
            key: &s.key,
            scheduler: &s.scheduler,
            flags: &s.scheduler_flags,
            persistence_timeout: s.persistence_timeout,
            persistence_prefix: s.persistence_prefix,
            one_packet: s.one_packet,
            vip_group: &s.vip_group,
        })?;
        for (i, r) in s.reals.iter().enumerate() {
            let real = RealServer::try_from(r)
                .map_err(|e| e.at(format_args!("service {}", service.key)))
                .and_then(|real| real.validate_for(&service.key).map(|()| real))
                .map_err(|e| e.at(format_args!("reals[{i}]")))?;
            if service.reals.contains_key(&real.addr) {
                return Err(ModelError::new(format!(
                    "reals[{i}]: service {}: real {} is listed twice",
                    service.key, real.addr
                )));
            }
            service.reals.insert(real.addr, real);
        }
        Ok(service)
    }
}

impl From<&VipGroup> for pb::VipGroup {
    fn from(g: &VipGroup) -> Self {
        pb::VipGroup {
            name: g.name.clone(),
            vips: g.vips.iter().map(ToString::to_string).collect(),
            interface: g.interface.clone(),
            preferred_owner: g.preferred_owner.unwrap_or(0),
            preempt: g.preempt,
        }
    }
}

impl TryFrom<&pb::VipGroup> for VipGroup {
    type Error = ModelError;

    fn try_from(g: &pb::VipGroup) -> Result<Self, Self::Error> {
        let mut vips = BTreeSet::new();
        for (i, text) in g.vips.iter().enumerate() {
            let vip = parse_ip(text).map_err(|e| e.at(format_args!("vips[{i}]")))?;
            if !vips.insert(vip) {
                return Err(ModelError::new(format!(
                    "vips[{i}]: vip_group {}: VIP {vip} is listed twice",
                    g.name
                )));
            }
        }
        let group = VipGroup {
            name: g.name.clone(),
            vips,
            interface: g.interface.clone(),
            preferred_owner: (g.preferred_owner != 0).then_some(g.preferred_owner),
            preempt: g.preempt,
        };
        group.validate()?;
        Ok(group)
    }
}

impl From<&ClusterConfig> for pb::ClusterConfig {
    fn from(c: &ClusterConfig) -> Self {
        pb::ClusterConfig {
            services: c.services.values().map(pb::Service::from).collect(),
            vip_groups: c.vip_groups.values().map(pb::VipGroup::from).collect(),
        }
    }
}

impl TryFrom<&pb::ClusterConfig> for ClusterConfig {
    type Error = ModelError;

    /// A fully validated configuration (every rule of [`ClusterConfig::validate`]).
    fn try_from(c: &pb::ClusterConfig) -> Result<Self, Self::Error> {
        let mut builder = ConfigBuilder::default();
        for (i, g) in c.vip_groups.iter().enumerate() {
            VipGroup::try_from(g)
                .and_then(|g| builder.add_vip_group(g))
                .map_err(|e| e.at(format_args!("vip_groups[{i}]")))?;
        }
        for (i, s) in c.services.iter().enumerate() {
            Service::try_from(s)
                .and_then(|s| builder.add_service(s))
                .map_err(|e| e.at(format_args!("services[{i}]")))?;
        }
        Ok(builder.finish())
    }
}

/// The API's role string: "director" or "witness"; empty (protobuf's default) is a director.
pub fn role_from_proto(role: &str) -> Result<Role, ModelError> {
    if role.is_empty() {
        return Ok(Role::Director);
    }
    role.parse()
}

pub fn role_to_proto(role: Role) -> String {
    role.as_str().to_owned()
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn round_trips() {
        let cfg = rich_config();
        let msg = pb::ClusterConfig::from(&cfg);
        assert_eq!(ClusterConfig::try_from(&msg).unwrap(), cfg);
        let empty = pb::ClusterConfig::from(&ClusterConfig::default());
        assert_eq!(
            ClusterConfig::try_from(&empty).unwrap(),
            ClusterConfig::default()
        );

        let s = &cfg.services[&key("tcp/[2001:db8::100]:443")];
        let m = pb::Service::from(s);
        assert_eq!(m.key, "tcp/[2001:db8::100]:443");
        assert_eq!(m.scheduler_flags, ["sh-fallback", "sh-port"]);
        assert_eq!(
            (m.persistence_timeout, m.persistence_prefix),
            (600, Some(64))
        );
        assert_eq!(m.vip_group, "web");
        let g = pb::VipGroup::from(&cfg.vip_groups["web"]);
        assert_eq!(g.vips, ["192.0.2.100", "2001:db8::100"]);
        assert_eq!(g.preferred_owner, 1);
        let plain = pb::Service::from(&service("tcp/192.0.2.1:80", &[]));
        assert_eq!(
            (plain.persistence_timeout, plain.persistence_prefix),
            (0, None)
        );
        assert_eq!(plain.vip_group, "");
    }

    #[test]
    fn protobuf_defaults_mean_none() {
        let g = VipGroup::try_from(&pb::VipGroup {
            name: "web".into(),
            vips: vec!["192.0.2.1".into()],
            interface: "eth0".into(),
            preferred_owner: 0,
            preempt: false,
        })
        .unwrap();
        assert_eq!(g.preferred_owner, None);
        let s = Service::try_from(&pb::Service {
            key: "tcp/192.0.2.1:80".into(),
            scheduler: "rr".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((s.persistence, s.vip_group), (None, None));
        assert_eq!(role_from_proto("").unwrap(), Role::Director);
        assert_eq!(role_from_proto("witness").unwrap(), Role::Witness);
        assert_eq!(role_to_proto(Role::Witness), "witness");
        assert!(
            role_from_proto("observer")
                .unwrap_err()
                .to_string()
                .contains("director, witness")
        );
    }

    #[test]
    fn errors_carry_field_paths() {
        let mut msg = pb::ClusterConfig::from(&rich_config());
        msg.services[2].reals[0].address = "198.51.100.1".into();
        let err = ClusterConfig::try_from(&msg).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "services[2]: reals[0]: service tcp/[2001:db8::100]:443: address: \"198.51.100.1\": missing port"
            ),
            "{err}"
        );

        let mut msg = pb::ClusterConfig::from(&rich_config());
        msg.services[1].reals[0].weight = 100_000;
        let err = ClusterConfig::try_from(&msg).unwrap_err().to_string();
        assert!(
            err.starts_with("services[1]: reals[0]: service tcp/192.0.2.100:80: real"),
            "{err}"
        );
        assert!(err.contains("weight 100000"), "{err}");

        let mut msg = pb::ClusterConfig::from(&rich_config());
        msg.services[0].scheduler = "bogus".into();
        let err = ClusterConfig::try_from(&msg).unwrap_err().to_string();
        assert!(
            err.starts_with("services[0]: unknown scheduler \"bogus\""),
            "{err}"
        );

        let mut msg = pb::ClusterConfig::from(&rich_config());
        msg.vip_groups[1].vips.push("192.0.2.53".into());
        let err = ClusterConfig::try_from(&msg).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "vip_groups[1]: vip_group web: VIP 192.0.2.53 is already in vip_group dns"
            ),
            "{err}"
        );

        let mut msg = pb::ClusterConfig::from(&rich_config());
        msg.vip_groups[0].vips.push("nonsense".into());
        let err = ClusterConfig::try_from(&msg).unwrap_err().to_string();
        assert!(
            err.starts_with("vip_groups[0]: vips[1]: \"nonsense\" is not an IP address"),
            "{err}"
        );

        let mut msg = pb::ClusterConfig::from(&rich_config());
        msg.services[0].persistence_prefix = Some(300);
        let err = ClusterConfig::try_from(&msg).unwrap_err().to_string();
        assert!(
            err.contains("persistence_prefix 300 is too long for IPv4 (0..=32)"),
            "{err}"
        );
    }

    #[test]
    fn duplicates_are_rejected() {
        let mut msg = pb::ClusterConfig::from(&rich_config());
        let again = msg.services[3].clone();
        msg.services.push(again);
        let err = ClusterConfig::try_from(&msg).unwrap_err().to_string();
        assert!(
            err.starts_with("services[8]: service udp/192.0.2.53:53 is defined twice"),
            "{err}"
        );

        let mut msg = pb::ClusterConfig::from(&rich_config());
        let again = msg.services[1].reals[2].clone();
        msg.services[1].reals.push(again);
        let err = ClusterConfig::try_from(&msg).unwrap_err().to_string();
        assert!(
            err.contains(
                "reals[4]: service tcp/192.0.2.100:80: real 198.51.100.12:8080 is listed twice"
            ),
            "{err}"
        );

        let mut msg = pb::ClusterConfig::from(&rich_config());
        let again = msg.vip_groups[0].clone();
        msg.vip_groups.push(again);
        let err = ClusterConfig::try_from(&msg).unwrap_err().to_string();
        assert!(
            err.starts_with("vip_groups[2]: vip_group dns is defined twice"),
            "{err}"
        );

        let mut msg = pb::ClusterConfig::from(&rich_config());
        msg.vip_groups[0].vips.push("192.0.2.53".into());
        let err = ClusterConfig::try_from(&msg).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "vip_groups[0]: vips[1]: vip_group dns: VIP 192.0.2.53 is listed twice"
            ),
            "{err}"
        );
    }
}
