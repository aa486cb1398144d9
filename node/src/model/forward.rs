//! How a director hands a packet to a real server (IPVS's forwarding methods).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::{ModelError, invalid};

/// IPVS's forwarding methods as ipvsadm sets them (-g, -m, -i). "Local" is not here: the
/// kernel picks it by itself when a real server's address is local.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Forward {
    /// Direct routing (gatewaying): MAC rewrite, the packet is otherwise untouched.
    /// ipvsadm's default.
    #[default]
    Dr,
    /// NAT (masquerading): destination address and port rewritten, replies must come back.
    Nat,
    /// IP-in-IP tunnelling; the only method that may cross address families.
    Tun,
}

impl Forward {
    pub fn as_str(self) -> &'static str {
        match self {
            Forward::Dr => "dr",
            Forward::Nat => "nat",
            Forward::Tun => "tun",
        }
    }
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Forward {
    type Err = ModelError;

    /// Accepts the names used by ipvsadm's man page, its -L output and keepalived.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "dr" | "route" | "gatewaying" => Ok(Forward::Dr),
            "nat" | "masq" | "masquerading" => Ok(Forward::Nat),
            "tun" | "tunnel" | "ipip" => Ok(Forward::Tun),
            _ => invalid!(
                "unknown forwarding method \"{s}\" (valid: dr, nat, tun; also route, gatewaying, masq, masquerading, tunnel, ipip)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_aliases_and_prints_canonical() {
        for (s, f) in [
            ("dr", Forward::Dr),
            ("route", Forward::Dr),
            ("gatewaying", Forward::Dr),
            ("nat", Forward::Nat),
            ("Masq", Forward::Nat),
            ("masquerading", Forward::Nat),
            ("tun", Forward::Tun),
            ("tunnel", Forward::Tun),
            ("ipip", Forward::Tun),
        ] {
            assert_eq!(s.parse::<Forward>().unwrap(), f);
        }
        assert_eq!(Forward::Nat.to_string(), "nat");
        let err = "gre".parse::<Forward>().unwrap_err().to_string();
        assert!(
            err.contains("\"gre\"") && err.contains("dr, nat, tun"),
            "{err}"
        );
    }
}
