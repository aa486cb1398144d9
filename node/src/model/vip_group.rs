//! VIP groups: addresses that always move together between directors.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::error::{ModelError, invalid};

/// Longest VIP group name; long enough for descriptive names, short enough for tables.
pub const MAX_GROUP_NAME: usize = 64;

/// Linux IFNAMSIZ is 16 bytes including the terminating NUL.
pub const MAX_IFNAME: usize = 15;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VipGroup {
    /// 1..=64 characters from `A-Z a-z 0-9 _ . -`.
    pub name: String,
    /// At least one; IPv4 and IPv6 may be mixed.
    pub vips: BTreeSet<IpAddr>,
    /// The interface the VIPs are added to, on every director.
    pub interface: String,
    /// Node id (>= 1) that should own the group when it is up.
    #[serde(default)]
    pub preferred_owner: Option<u64>,
    /// Move back to the preferred owner when it returns (keepalived "preempt").
    #[serde(default)]
    pub preempt: bool,
}

impl VipGroup {
    /// Checks everything that does not involve other objects. Messages start with
    /// `vip_group NAME:`.
    pub fn validate(&self) -> Result<(), ModelError> {
        check_group_name(&self.name)?;
        self.check()
            .map_err(|e| e.at(format_args!("vip_group {}", self.name)))
    }

    fn check(&self) -> Result<(), ModelError> {
        if self.vips.is_empty() {
            invalid!("no VIPs; a group needs at least one address");
        }
        if let Some(vip) = self.vips.iter().find(|v| v.is_unspecified()) {
            invalid!("VIP {vip} is not a usable address");
        }
        check_interface_name(&self.interface)?;
        if self.preferred_owner == Some(0) {
            invalid!(
                "preferred_owner 0 is not a node id (ids start at 1; leave it unset for none)"
            );
        }
        Ok(())
    }
}

/// VIP group names end up in messages, metrics labels and file names, so keep them plain.
pub fn check_group_name(name: &str) -> Result<(), ModelError> {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if name.is_empty() || name.len() > MAX_GROUP_NAME || !plain {
        invalid!(
            "VIP group name \"{}\" is invalid: use 1 to {MAX_GROUP_NAME} characters from A-Z a-z 0-9 _ . -",
            name.escape_debug()
        );
    }
    Ok(())
}

/// The kernel's `dev_valid_name` rules: 1..=15 bytes, not "." or "..", no '/', ':' or
/// whitespace. Control characters are refused too: no sane interface has them.
pub fn check_interface_name(name: &str) -> Result<(), ModelError> {
    let bad_char = name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if name.is_empty() || name.len() > MAX_IFNAME || name == "." || name == ".." || bad_char {
        invalid!(
            "interface \"{}\" is not a valid Linux interface name (1 to {MAX_IFNAME} bytes, no '/', ':' or whitespace, not \".\" or \"..\")",
            name.escape_debug()
        );
    }
    Ok(())
}
