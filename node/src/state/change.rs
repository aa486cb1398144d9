//! One applied change, for people (`Display`), watchers and the forwarding path.

use std::fmt::{self, Display};
use std::net::SocketAddr;

use fulcrum_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::model::{ModelError, RealServer, Service, ServiceKey, VipGroup};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    Add,
    Remove,
    Modify,
}

impl ChangeOp {
    /// The sign a change line starts with.
    pub fn sign(self) -> char {
        match self {
            ChangeOp::Add => '+',
            ChangeOp::Remove => '-',
            ChangeOp::Modify => '~',
        }
    }
}

/// What a change is about. `Member` is for membership changes reported by the Raft layer;
/// the configuration state machine never produces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    Service,
    Real,
    VipGroup,
    Member,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Service => "service",
            ObjectKind::Real => "real",
            ObjectKind::VipGroup => "vip_group",
            ObjectKind::Member => "member",
        }
    }
}

impl Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change. `key` is the service key, `"SERVICE-KEY REAL-ADDRESS"` for a real server, the
/// VIP group name, or the member id. `detail` is for people: for an add, a summary of the new
/// object; for a modify, every changed field as `field old -> new`.
///
/// A service add is followed by one real add per real server; a service remove stands for its
/// real servers too.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Change {
    pub op: ChangeOp,
    pub object: ObjectKind,
    pub key: String,
    pub detail: String,
}

impl Display for Change {
    /// `+ service tcp/192.0.2.1:80 (wlc)`, `~ real tcp/192.0.2.1:80 198.51.100.10:80: weight 1 -> 3`,
    /// `- vip_group web`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.op.sign(), self.object, self.key)?;
        match (self.op, self.detail.is_empty()) {
            (_, true) => Ok(()),
            (ChangeOp::Modify, false) => write!(f, ": {}", self.detail),
            (_, false) => write!(f, " ({})", self.detail),
        }
    }
}

/// The key of a real server in a change: `tcp/192.0.2.1:80 198.51.100.10:80`. Service keys
/// never contain a space, so the last space splits it.
pub fn real_key(service: &ServiceKey, addr: &SocketAddr) -> String {
    format!("{service} {addr}")
}

/// Splits a real server's change key back into service key and address.
pub fn parse_real_key(key: &str) -> Result<(ServiceKey, SocketAddr), ModelError> {
    let Some((service, addr)) = key.rsplit_once(' ') else {
        return Err(ModelError::new(format!(
            "\"{key}\" is not \"SERVICE-KEY REAL-ADDRESS\""
        )));
    };
    Ok((service.parse()?, crate::model::parse_socket_addr(addr)?))
}

impl Change {
    pub fn new(op: ChangeOp, object: ObjectKind, key: String, detail: String) -> Self {
        Self {
            op,
            object,
            key,
            detail,
        }
    }

    pub fn service_added(s: &Service) -> Self {
        let mut parts = vec![s.scheduler.to_string()];
        if !s.flags.is_empty() {
            parts.push(format!("flags {}", s.flags));
        }
        if let Some(p) = s.persistence {
            parts.push(format!("persistence {} s", p.timeout_s));
            if p.prefix != s.key.family().max_prefix() {
                parts.push(format!("prefix /{}", p.prefix));
            }
        }
        if s.one_packet {
            parts.push("one_packet".to_owned());
        }
        if let Some(g) = &s.vip_group {
            parts.push(format!("vip_group {g}"));
        }
        Self::new(
            ChangeOp::Add,
            ObjectKind::Service,
            s.key.to_string(),
            parts.join(", "),
        )
    }

    pub fn service_removed(s: &Service) -> Self {
        let detail = match s.reals.len() {
            0 => String::new(),
            1 => "1 real".to_owned(),
            n => format!("{n} reals"),
        };
        Self::new(
            ChangeOp::Remove,
            ObjectKind::Service,
            s.key.to_string(),
            detail,
        )
    }

    /// The settings that differ (real servers are not looked at); None when none do.
    pub fn service_modified(old: &Service, new: &Service) -> Option<Self> {
        let mut d = Details::default();
        d.field("scheduler", &old.scheduler, &new.scheduler);
        d.field("flags", &old.flags, &new.flags);
        d.field(
            "persistence_timeout",
            &old.persistence_timeout(),
            &new.persistence_timeout(),
        );
        d.field(
            "persistence_prefix",
            &old.persistence_prefix(),
            &new.persistence_prefix(),
        );
        d.field("one_packet", &old.one_packet, &new.one_packet);
        d.field("vip_group", &Opt(&old.vip_group), &Opt(&new.vip_group));
        d.finish(ObjectKind::Service, new.key.to_string())
    }

    pub fn real_added(service: &ServiceKey, r: &RealServer) -> Self {
        let mut detail = format!("{}, weight {}", r.forward, r.weight);
        if r.upper_threshold != 0 {
            detail.push_str(&format!(", upper_threshold {}", r.upper_threshold));
        }
        if r.lower_threshold != 0 {
            detail.push_str(&format!(", lower_threshold {}", r.lower_threshold));
        }
        Self::new(
            ChangeOp::Add,
            ObjectKind::Real,
            real_key(service, &r.addr),
            detail,
        )
    }

    pub fn real_removed(service: &ServiceKey, addr: &SocketAddr) -> Self {
        Self::new(
            ChangeOp::Remove,
            ObjectKind::Real,
            real_key(service, addr),
            String::new(),
        )
    }

    pub fn real_modified(service: &ServiceKey, old: &RealServer, new: &RealServer) -> Option<Self> {
        let mut d = Details::default();
        d.field("weight", &old.weight, &new.weight);
        d.field("forward", &old.forward, &new.forward);
        d.field(
            "upper_threshold",
            &old.upper_threshold,
            &new.upper_threshold,
        );
        d.field(
            "lower_threshold",
            &old.lower_threshold,
            &new.lower_threshold,
        );
        d.finish(ObjectKind::Real, real_key(service, &new.addr))
    }

    pub fn vip_group_added(g: &VipGroup) -> Self {
        let vips: Vec<String> = g.vips.iter().map(ToString::to_string).collect();
        let mut detail = format!("{} on {}", vips.join(", "), g.interface);
        if let Some(owner) = g.preferred_owner {
            detail.push_str(&format!(", preferred_owner {owner}"));
        }
        if g.preempt {
            detail.push_str(", preempt");
        }
        Self::new(ChangeOp::Add, ObjectKind::VipGroup, g.name.clone(), detail)
    }

    pub fn vip_group_removed(name: &str) -> Self {
        Self::new(
            ChangeOp::Remove,
            ObjectKind::VipGroup,
            name.to_owned(),
            String::new(),
        )
    }

    pub fn vip_group_modified(old: &VipGroup, new: &VipGroup) -> Option<Self> {
        let mut d = Details::default();
        if old.vips != new.vips {
            let added = new.vips.difference(&old.vips).map(|v| format!("+{v}"));
            let removed = old.vips.difference(&new.vips).map(|v| format!("-{v}"));
            let moves: Vec<String> = added.chain(removed).collect();
            d.parts.push(format!("vips {}", moves.join(" ")));
        }
        d.field("interface", &old.interface, &new.interface);
        d.field(
            "preferred_owner",
            &Opt(&old.preferred_owner),
            &Opt(&new.preferred_owner),
        );
        d.field("preempt", &old.preempt, &new.preempt);
        d.finish(ObjectKind::VipGroup, new.name.clone())
    }
}

/// Collects `field old -> new` parts of a modify change.
#[derive(Default)]
struct Details {
    parts: Vec<String>,
}

impl Details {
    fn field<T: PartialEq + Display>(&mut self, name: &str, old: &T, new: &T) {
        if old != new {
            self.parts.push(format!("{name} {old} -> {new}"));
        }
    }

    fn finish(self, object: ObjectKind, key: String) -> Option<Change> {
        (!self.parts.is_empty())
            .then(|| Change::new(ChangeOp::Modify, object, key, self.parts.join(", ")))
    }
}

/// Displays an optional value as the value or "none".
struct Opt<'a, T>(&'a Option<T>);

impl<T: PartialEq> PartialEq for Opt<'_, T> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<T: Display> Display for Opt<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("none"),
        }
    }
}

impl From<ChangeOp> for pb::ChangeOp {
    fn from(op: ChangeOp) -> Self {
        match op {
            ChangeOp::Add => pb::ChangeOp::Add,
            ChangeOp::Remove => pb::ChangeOp::Remove,
            ChangeOp::Modify => pb::ChangeOp::Modify,
        }
    }
}

impl From<&Change> for pb::Change {
    fn from(c: &Change) -> Self {
        pb::Change {
            op: pb::ChangeOp::from(c.op) as i32,
            object: c.object.as_str().to_owned(),
            key: c.key.clone(),
            detail: c.detail.clone(),
        }
    }
}

impl TryFrom<&pb::Change> for Change {
    type Error = ModelError;

    /// For clients that print the changes a server sent.
    fn try_from(c: &pb::Change) -> Result<Self, Self::Error> {
        let op = match pb::ChangeOp::try_from(c.op) {
            Ok(pb::ChangeOp::Add) => ChangeOp::Add,
            Ok(pb::ChangeOp::Remove) => ChangeOp::Remove,
            Ok(pb::ChangeOp::Modify) => ChangeOp::Modify,
            _ => return Err(ModelError::new(format!("op: unknown change op {}", c.op))),
        };
        let object = match c.object.as_str() {
            "service" => ObjectKind::Service,
            "real" => ObjectKind::Real,
            "vip_group" => ObjectKind::VipGroup,
            "member" => ObjectKind::Member,
            other => {
                return Err(ModelError::new(format!(
                    "object: unknown object kind \"{other}\" (valid: service, real, vip_group, member)"
                )));
            }
        };
        Ok(Change::new(op, object, c.key.clone(), c.detail.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::*;

    #[test]
    fn display_and_proto() {
        let s = service("tcp/192.0.2.1:80", &[]);
        let add = Change::service_added(&s);
        assert_eq!(add.to_string(), "+ service tcp/192.0.2.1:80 (wlc)");
        assert_eq!(
            Change::vip_group_removed("web").to_string(),
            "- vip_group web"
        );
        let old = real("198.51.100.10:80");
        let new = RealServer {
            weight: 3,
            ..old.clone()
        };
        let m = Change::real_modified(&s.key, &old, &new).unwrap();
        assert_eq!(
            m.to_string(),
            "~ real tcp/192.0.2.1:80 198.51.100.10:80: weight 1 -> 3"
        );
        assert!(Change::real_modified(&s.key, &old, &old).is_none());

        let msg = pb::Change::from(&m);
        assert_eq!(msg.op, pb::ChangeOp::Modify as i32);
        assert_eq!(msg.object, "real");
        assert_eq!(msg.key, "tcp/192.0.2.1:80 198.51.100.10:80");
        assert_eq!(msg.detail, "weight 1 -> 3");
        assert_eq!(Change::try_from(&msg).unwrap(), m);
        let member = Change::new(ChangeOp::Add, ObjectKind::Member, "4".into(), String::new());
        assert_eq!(pb::Change::from(&member).object, "member");
        assert!(Change::try_from(&pb::Change::default()).is_err());

        assert_eq!(
            parse_real_key("udp/[2001:db8::1]:53 [2001:db8::10]:53").unwrap(),
            (
                key("udp/[2001:db8::1]:53"),
                "[2001:db8::10]:53".parse().unwrap()
            )
        );
        assert!(parse_real_key("udp/[2001:db8::1]:53").is_err());
    }
}
