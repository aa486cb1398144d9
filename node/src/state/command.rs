//! The commands the Raft log carries for the configuration.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::model::{ClusterConfig, RealServer, Service, ServiceKey, VipGroup};

/// One configuration change, as proposed to and applied from the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Adds a service with its real servers.
    AddService(Service),
    /// Replaces a service's settings. With `keep_reals` its current real servers stay and
    /// `service.reals` is ignored; without, they are replaced by `service.reals`.
    EditService {
        service: Service,
        keep_reals: bool,
    },
    DeleteService(ServiceKey),
    AddReal {
        service: ServiceKey,
        real: RealServer,
    },
    /// Replaces the real server with the same address.
    EditReal {
        service: ServiceKey,
        real: RealServer,
    },
    DeleteReal {
        service: ServiceKey,
        addr: SocketAddr,
    },
    AddVipGroup(VipGroup),
    DeleteVipGroup(String),
    /// Replaces the whole configuration at once.
    Apply(ClusterConfig),
    /// The leader's decision on who owns a VIP group. Applies only if the group's epoch is
    /// still `epoch` (compare-and-set), so decisions taken on a stale view are refused.
    AssignVip {
        group: String,
        owner: Option<u64>,
        epoch: u64,
    },
}

impl fmt::Display for Command {
    /// A one-line summary for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::AddService(s) => write!(f, "add service {}", s.key),
            Command::EditService {
                service,
                keep_reals,
            } => write!(
                f,
                "edit service {}{}",
                service.key,
                if *keep_reals { "" } else { " with its reals" }
            ),
            Command::DeleteService(k) => write!(f, "delete service {k}"),
            Command::AddReal { service, real } => {
                write!(f, "add real {} to service {service}", real.addr)
            }
            Command::EditReal { service, real } => {
                write!(f, "edit real {} of service {service}", real.addr)
            }
            Command::DeleteReal { service, addr } => {
                write!(f, "delete real {addr} from service {service}")
            }
            Command::AddVipGroup(g) => write!(f, "add vip_group {}", g.name),
            Command::DeleteVipGroup(name) => write!(f, "delete vip_group {name}"),
            Command::AssignVip {
                group,
                owner,
                epoch,
            } => match owner {
                Some(o) => write!(f, "assign vip_group {group} to node {o} (epoch {epoch})"),
                None => write!(f, "release vip_group {group} (epoch {epoch})"),
            },
            Command::Apply(c) => write!(
                f,
                "apply config ({} services, {} VIP groups)",
                c.services.len(),
                c.vip_groups.len()
            ),
        }
    }
}
