//! The configuration model: validated types for services, real servers and VIP groups, their
//! text forms, and their TOML and protobuf representations. Pure data, no I/O.

mod addr;
mod config;
mod error;
pub mod file;
mod forward;
mod key;
mod keyed;
mod node;
pub mod proto;
mod protocol;
mod real;
mod scheduler;
mod service;
mod vip_group;

pub use addr::{parse_ip, parse_socket_addr};
pub use config::ClusterConfig;
pub(crate) use config::list_for_message;
pub use error::ModelError;
pub use file::{parse_cluster_toml, to_cluster_toml};
pub use forward::Forward;
pub use key::{PortRange, ServiceKey};
pub use node::{NodeInfo, Role};
pub use protocol::{Family, Protocol};
pub use real::{DEFAULT_WEIGHT, MAX_WEIGHT, RealServer};
pub use scheduler::{SchedFlag, SchedFlags, Scheduler};
pub use service::{Persistence, Service};
pub use vip_group::{MAX_GROUP_NAME, MAX_IFNAME, VipGroup, check_group_name, check_interface_name};

#[cfg(test)]
pub(crate) mod testutil;
#[cfg(test)]
mod validation_tests;
