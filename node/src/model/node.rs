//! Cluster members as the Raft layer knows them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::{ModelError, invalid};

/// What a member does: directors carry VIP traffic, witnesses only vote.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Director,
    Witness,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Director => "director",
            Role::Witness => "witness",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "director" => Ok(Role::Director),
            "witness" => Ok(Role::Witness),
            _ => invalid!("unknown role \"{s}\" (valid: director, witness)"),
        }
    }
}

/// A member's address and role; this is openraft's `Node` type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// gRPC "host:port" that other nodes and clients reach it on.
    pub addr: String,
    pub role: Role,
}

impl NodeInfo {
    pub fn new(addr: impl Into<String>, role: Role) -> Self {
        Self {
            addr: addr.into(),
            role,
        }
    }
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.addr, self.role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_and_node_info() {
        assert_eq!("witness".parse::<Role>().unwrap(), Role::Witness);
        assert!("Witness".parse::<Role>().is_err());
        assert_eq!(NodeInfo::default().role, Role::Director);
        let n = NodeInfo::new("127.0.0.1:7001", Role::Witness);
        assert_eq!(n.to_string(), "127.0.0.1:7001 (witness)");
        let json = serde_json::to_string(&n).unwrap();
        assert_eq!(json, r#"{"addr":"127.0.0.1:7001","role":"witness"}"#);
        assert_eq!(serde_json::from_str::<NodeInfo>(&json).unwrap(), n);
    }
}
