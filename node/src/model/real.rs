//! Real servers (IPVS destinations).
//!
//! Port rules, following IPVS and ipvsadm:
//! - Port 0 means "the port the client asked for": IPVS uses the packet's destination port when
//!   a destination has port 0.
//! - On a (protocol, VIP, port) service, `dr` and `tun` cannot change the destination port, so
//!   the real server's port must be 0 or the service port (ipvsadm silently forces it to the
//!   service port; we say so instead of changing what the user wrote).
//! - On such a service with a real port, `nat` must be given the port explicitly: port 0 is
//!   accepted by IPVS but is almost always a forgotten port.
//! - On fwmark, port-group and port-0 (all ports) services, `nat` with a port maps every port
//!   to that one, and 0 keeps the client's port; for `dr`/`tun` the port is not used for
//!   forwarding (packets keep their port), only by health checks.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::addr::parse_socket_addr;
use super::error::{ModelError, invalid};
use super::forward::Forward;
use super::key::ServiceKey;
use super::protocol::Family;

/// IPVS's weight range; 0 quiesces a server (no new flows, existing ones continue).
pub const MAX_WEIGHT: u32 = 65535;

/// ipvsadm's default weight.
pub const DEFAULT_WEIGHT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RealServer {
    pub addr: SocketAddr,
    /// 0..=65535.
    pub weight: u32,
    pub forward: Forward,
    /// Connection thresholds as ipvsadm -x / -y; 0 = no limit. Default to 0 when absent, so
    /// that data written before they existed still loads.
    #[serde(default)]
    pub upper_threshold: u32,
    #[serde(default)]
    pub lower_threshold: u32,
}

impl RealServer {
    /// A real server with ipvsadm's defaults: weight 1, direct routing, no thresholds.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            weight: DEFAULT_WEIGHT,
            forward: Forward::Dr,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }

    /// The checks that need no service. Messages start with `real ADDR:`.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.check_alone()
            .map_err(|e| e.at(format_args!("real {}", self.addr)))
    }

    /// All checks, including those against the service's key. Messages start with
    /// `service KEY: real ADDR:`.
    pub fn validate_for(&self, key: &ServiceKey) -> Result<(), ModelError> {
        self.check_alone()
            .and_then(|()| self.check_with(key))
            .map_err(|e| {
                e.at(format_args!("real {}", self.addr))
                    .at(format_args!("service {key}"))
            })
    }

    fn check_alone(&self) -> Result<(), ModelError> {
        if self.addr.ip().is_unspecified() {
            invalid!("address {} is not a usable address", self.addr.ip());
        }
        if self.weight > MAX_WEIGHT {
            invalid!(
                "weight {} is out of range (0..={MAX_WEIGHT}; 0 drains the server)",
                self.weight
            );
        }
        // Without an upper threshold the lower one has no meaning, as in ipvsadm.
        if self.upper_threshold != 0 && self.lower_threshold > self.upper_threshold {
            invalid!(
                "lower_threshold {} is above upper_threshold {}",
                self.lower_threshold,
                self.upper_threshold
            );
        }
        Ok(())
    }

    fn check_with(&self, key: &ServiceKey) -> Result<(), ModelError> {
        let family = Family::of(&self.addr.ip());
        if family != key.family() && self.forward != Forward::Tun {
            invalid!(
                "an {family} real server on an {} service needs forward = tun (only tunnelling can cross address families; forward is {})",
                key.family(),
                self.forward
            );
        }
        let ServiceKey::Addr { port, .. } = key else {
            return Ok(());
        };
        let (port, real_port) = (*port, self.addr.port());
        if port == 0 {
            if self.forward != Forward::Nat && real_port != 0 {
                invalid!(
                    "{} cannot change the destination port and the service takes all ports; use port 0",
                    self.forward
                );
            }
            return Ok(());
        }
        match self.forward {
            Forward::Nat if real_port == 0 => invalid!(
                "nat needs the real server's port (e.g. {}); port 0 would only repeat the service port {port}",
                SocketAddr::new(self.addr.ip(), port)
            ),
            Forward::Dr | Forward::Tun if real_port != 0 && real_port != port => invalid!(
                "{} cannot change the destination port; use port {port} (the service's) or 0",
                self.forward
            ),
            _ => Ok(()),
        }
    }
}

/// The fields of a real server as TOML and protobuf carry them.
pub(crate) struct RealFields<'a> {
    pub address: &'a str,
    pub weight: u32,
    pub forward: &'a str,
    pub upper_threshold: u32,
    pub lower_threshold: u32,
}

impl RealServer {
    /// Builds a real server from the wire formats' fields and checks what it can alone.
    pub(crate) fn from_fields(f: RealFields<'_>) -> Result<RealServer, ModelError> {
        let addr = parse_socket_addr(f.address).map_err(|e| e.at("address"))?;
        let forward: Forward = f.forward.parse().map_err(|e: ModelError| e.at("forward"))?;
        let real = RealServer {
            addr,
            weight: f.weight,
            forward,
            upper_threshold: f.upper_threshold,
            lower_threshold: f.lower_threshold,
        };
        real.validate()?;
        Ok(real)
    }
}
