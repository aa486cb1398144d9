//! Checking and applying [`Command`]s to the [`ClusterState`].
//!
//! Every command is checked in full before anything changes, so a refused command leaves the
//! state as it was. Checking is separate from changing so that the node receiving a command
//! can refuse it early (`check`), and `apply` checks again on commit because the state may
//! have moved in between. Only `Apply` copies the whole configuration; the others touch the
//! one object they name.

use std::mem;
use std::net::SocketAddr;

use crate::model::{RealServer, Role, Service, ServiceKey, VipGroup};

use super::change::Change;
use super::command::Command;
use super::diff::{diff, diff_reals, service_added};
use super::error::StateError;
use super::{ClusterState, Members};

impl ClusterState {
    /// Would `cmd` be accepted now? `members` is the current Raft membership.
    pub fn check(&self, cmd: &Command, members: &Members) -> Result<(), StateError> {
        match cmd {
            Command::AddService(s) => {
                if self.config.services.contains_key(&s.key) {
                    return Err(StateError::already_exists(format!(
                        "service {} already exists",
                        s.key
                    )));
                }
                s.validate()?;
                self.config
                    .check_service_fits(s)
                    .map_err(StateError::conflict)
            }
            Command::EditService {
                service,
                keep_reals,
            } => {
                self.service(&service.key)?;
                if *keep_reals {
                    service.validate_settings()?;
                } else {
                    service.validate()?;
                }
                self.config
                    .check_service_fits(service)
                    .map_err(StateError::conflict)
            }
            Command::DeleteService(key) => self.service(key).map(drop),
            Command::AddReal { service, real } => {
                if self.service(service)?.reals.contains_key(&real.addr) {
                    return Err(StateError::already_exists(format!(
                        "service {service}: real {} already exists",
                        real.addr
                    )));
                }
                Ok(real.validate_for(service)?)
            }
            Command::EditReal { service, real } => {
                self.real(service, &real.addr)?;
                Ok(real.validate_for(service)?)
            }
            Command::DeleteReal { service, addr } => self.real(service, addr).map(drop),
            Command::AddVipGroup(group) => {
                if self.config.vip_groups.contains_key(&group.name) {
                    return Err(StateError::already_exists(format!(
                        "vip_group {} already exists",
                        group.name
                    )));
                }
                group.validate()?;
                self.config
                    .check_vip_group_fits(group)
                    .map_err(StateError::conflict)?;
                check_owner(group, members)
            }
            Command::DeleteVipGroup(name) => {
                if !self.config.vip_groups.contains_key(name) {
                    return Err(StateError::not_found(format!("no such vip_group {name}")));
                }
                let users = self.config.services_using_group(name);
                if !users.is_empty() {
                    return Err(StateError::failed_precondition(format!(
                        "vip_group {name} is still used by {} {}; move them to another group or delete them first",
                        if users.len() == 1 {
                            "service"
                        } else {
                            "services"
                        },
                        crate::model::list_for_message(users.into_iter())
                    )));
                }
                Ok(())
            }
            Command::Apply(config) => {
                config.validate()?;
                config
                    .vip_groups
                    .values()
                    .try_for_each(|g| check_owner(g, members))
            }
            Command::AssignVip {
                group,
                owner,
                epoch,
            } => {
                if !self.config.vip_groups.contains_key(group) {
                    return Err(StateError::not_found(format!("no such vip_group {group}")));
                }
                let current = self.owner(group);
                if current.epoch != *epoch {
                    return Err(StateError::failed_precondition(format!(
                        "vip_group {group}: assignment epoch is {}, not {epoch} (decided on a stale view)",
                        current.epoch
                    )));
                }
                match owner.map(|o| (o, members.get(&o))) {
                    None => Ok(()),
                    Some((o, None)) => Err(StateError::failed_precondition(format!(
                        "vip_group {group}: node {o} is not a member"
                    ))),
                    Some((o, Some(n))) if n.role == Role::Witness => {
                        Err(StateError::failed_precondition(format!(
                            "vip_group {group}: node {o} is a witness and can never own a VIP"
                        )))
                    }
                    Some(_) => Ok(()),
                }
            }
        }
    }

    /// The changes `cmd` would make, without making them.
    pub fn preview(&self, cmd: &Command, members: &Members) -> Result<Vec<Change>, StateError> {
        self.check(cmd, members)?;
        Ok(self.changes(cmd))
    }

    /// Checks and applies `cmd`; on error nothing has changed. Deterministic.
    pub fn apply(&mut self, cmd: &Command, members: &Members) -> Result<Vec<Change>, StateError> {
        let changes = self.preview(cmd, members)?;
        self.commit(cmd);
        Ok(changes)
    }

    fn service(&self, key: &ServiceKey) -> Result<&Service, StateError> {
        self.config
            .services
            .get(key)
            .ok_or_else(|| StateError::not_found(format!("no such service {key}")))
    }

    fn real(&self, key: &ServiceKey, addr: &SocketAddr) -> Result<&RealServer, StateError> {
        self.service(key)?.reals.get(addr).ok_or_else(|| {
            StateError::not_found(format!("service {key} has no real server {addr}"))
        })
    }

    /// The changes of a command that passed `check`.
    fn changes(&self, cmd: &Command) -> Vec<Change> {
        let mut out = Vec::new();
        let services = &self.config.services;
        match cmd {
            Command::AddService(s) => service_added(s, &mut out),
            Command::EditService {
                service,
                keep_reals,
            } => {
                if let Some(old) = services.get(&service.key) {
                    out.extend(Change::service_modified(old, service));
                    if !keep_reals {
                        diff_reals(&service.key, &old.reals, &service.reals, &mut out);
                    }
                }
            }
            Command::DeleteService(key) => {
                out.extend(services.get(key).map(Change::service_removed));
            }
            Command::AddReal { service, real } => out.push(Change::real_added(service, real)),
            Command::EditReal { service, real } => {
                let old = services.get(service).and_then(|s| s.reals.get(&real.addr));
                out.extend(old.and_then(|old| Change::real_modified(service, old, real)));
            }
            Command::DeleteReal { service, addr } => {
                out.push(Change::real_removed(service, addr));
            }
            Command::AddVipGroup(g) => out.push(Change::vip_group_added(g)),
            Command::DeleteVipGroup(name) => out.push(Change::vip_group_removed(name)),
            Command::Apply(config) => out = diff(&self.config, config),
            Command::AssignVip { group, owner, .. } => {
                let name =
                    |o: Option<u64>| o.map_or_else(|| "none".to_string(), |o| format!("node {o}"));
                out.push(Change::new(
                    super::ChangeOp::Modify,
                    super::ObjectKind::VipGroup,
                    group.clone(),
                    format!(
                        "owner {} -> {}",
                        name(self.owner(group).owner),
                        name(*owner)
                    ),
                ));
            }
        }
        out
    }

    /// Makes the change of a command that passed `check`; cannot fail.
    fn commit(&mut self, cmd: &Command) {
        let config = &mut self.config;
        match cmd {
            Command::AddService(s) => {
                config.services.insert(s.key.clone(), s.clone());
            }
            Command::EditService {
                service,
                keep_reals,
            } => {
                if let Some(current) = config.services.get_mut(&service.key) {
                    let reals = if *keep_reals {
                        mem::take(&mut current.reals)
                    } else {
                        service.reals.clone()
                    };
                    *current = Service {
                        reals,
                        ..service.settings()
                    };
                }
            }
            Command::DeleteService(key) => {
                config.services.remove(key);
            }
            Command::AddReal { service, real } | Command::EditReal { service, real } => {
                if let Some(s) = config.services.get_mut(service) {
                    s.reals.insert(real.addr, real.clone());
                }
            }
            Command::DeleteReal { service, addr } => {
                if let Some(s) = config.services.get_mut(service) {
                    s.reals.remove(addr);
                }
            }
            Command::AddVipGroup(g) => {
                config.vip_groups.insert(g.name.clone(), g.clone());
            }
            Command::DeleteVipGroup(name) => {
                config.vip_groups.remove(name);
                self.owners.remove(name);
            }
            Command::Apply(new) => {
                *config = new.clone();
                let groups = &config.vip_groups;
                self.owners.retain(|g, _| groups.contains_key(g));
            }
            Command::AssignVip {
                group,
                owner,
                epoch,
            } => {
                self.owners.insert(
                    group.clone(),
                    super::VipOwner {
                        owner: *owner,
                        epoch: epoch + 1,
                    },
                );
            }
        }
    }
}

/// A witness never carries traffic, so it cannot be a group's preferred owner. A node that is
/// not a member (yet) is accepted: a config may be applied before the node joins.
fn check_owner(group: &VipGroup, members: &Members) -> Result<(), StateError> {
    if let Some(id) = group.preferred_owner
        && members.get(&id).is_some_and(|n| n.role == Role::Witness)
    {
        return Err(StateError::failed_precondition(format!(
            "vip_group {}: preferred_owner: node {id} is a witness and can never own a VIP",
            group.name
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::*;
    use crate::model::{ClusterConfig, Forward, NodeInfo, SchedFlags, Scheduler};
    use crate::state::error::ErrorKind;
    use crate::state::{ChangeOp, ObjectKind};

    fn members() -> Members {
        [
            (1, NodeInfo::new("127.0.0.1:7001", Role::Director)),
            (2, NodeInfo::new("127.0.0.1:7002", Role::Director)),
            (3, NodeInfo::new("127.0.0.1:7003", Role::Witness)),
        ]
        .into_iter()
        .collect()
    }

    fn state() -> ClusterState {
        ClusterState::new(rich_config())
    }

    #[track_caller]
    fn applied(st: &mut ClusterState, cmd: Command) -> Vec<String> {
        st.check(&cmd, &members()).unwrap();
        let changes = st.apply(&cmd, &members()).unwrap();
        st.config.validate().unwrap();
        changes.iter().map(ToString::to_string).collect()
    }

    /// The command is refused by both `check` and `apply`, with `kind` and a message holding
    /// `facts`, and the state is unchanged.
    #[track_caller]
    fn refused(st: &mut ClusterState, cmd: Command, kind: ErrorKind, facts: &[&str]) {
        let before = st.clone();
        let checked = st.check(&cmd, &members()).unwrap_err();
        let err = st.apply(&cmd, &members()).unwrap_err();
        assert_eq!(checked, err);
        assert_eq!(err.kind(), kind, "{err}");
        for fact in facts {
            assert!(err.message().contains(fact), "{err:?} lacks {fact:?}");
        }
        assert_eq!(*st, before, "a refused command changed the state");
    }

    #[test]
    fn add_and_delete_service() {
        let mut st = state();
        let mut s = service("tcp/192.0.2.100:443", &["198.51.100.10:443"]);
        s.vip_group = Some("web".to_owned());
        assert_eq!(
            applied(&mut st, Command::AddService(s.clone())),
            [
                "+ service tcp/192.0.2.100:443 (wlc, vip_group web)",
                "+ real tcp/192.0.2.100:443 198.51.100.10:443 (dr, weight 1)"
            ]
        );
        assert_eq!(st.config.services[&s.key], s);
        assert_eq!(
            applied(&mut st, Command::DeleteService(s.key.clone())),
            ["- service tcp/192.0.2.100:443 (1 real)"]
        );
        assert_eq!(st, state());
    }

    #[test]
    fn edit_service_keeps_or_replaces_reals() {
        let mut st = state();
        let k = key("tcp/192.0.2.100:80");
        let before = st.config.services[&k].clone();
        let mut edit = service("tcp/192.0.2.100:80", &[]);
        edit.scheduler = Scheduler::Sh;
        edit.flags = SchedFlags::parse_list(&["sh-port"]).unwrap();
        edit.vip_group = Some("web".to_owned());
        let changes = applied(
            &mut st,
            Command::EditService {
                service: edit.clone(),
                keep_reals: true,
            },
        );
        assert_eq!(
            changes,
            ["~ service tcp/192.0.2.100:80: scheduler wlc -> sh, flags none -> sh-port"]
        );
        let now = &st.config.services[&k];
        assert_eq!(now.reals, before.reals);
        assert!(now.settings_eq(&edit));

        // Without keep_reals the given reals replace the current ones.
        edit.reals = [real("198.51.100.10:80"), real("198.51.100.99:80")]
            .into_iter()
            .map(|r| (r.addr, r))
            .collect();
        let changes = applied(
            &mut st,
            Command::EditService {
                service: edit.clone(),
                keep_reals: false,
            },
        );
        assert_eq!(
            changes,
            [
                "- real tcp/192.0.2.100:80 198.51.100.11:0",
                "- real tcp/192.0.2.100:80 198.51.100.12:8080",
                "+ real tcp/192.0.2.100:80 198.51.100.99:80 (dr, weight 1)",
                "- real tcp/192.0.2.100:80 [2001:db8:1::10]:80",
            ]
        );
        assert_eq!(st.config.services[&k], edit);
        // Editing to the same settings changes nothing.
        let same = Command::EditService {
            service: edit,
            keep_reals: true,
        };
        assert!(applied(&mut st, same).is_empty());
    }

    #[test]
    fn real_server_commands() {
        let mut st = state();
        let k = key("udp/192.0.2.53:53");
        let mut r = real("198.51.100.21:53");
        r.weight = 5;
        let add = Command::AddReal {
            service: k.clone(),
            real: r.clone(),
        };
        assert_eq!(
            applied(&mut st, add),
            ["+ real udp/192.0.2.53:53 198.51.100.21:53 (dr, weight 5)"]
        );
        r.weight = 0;
        r.forward = Forward::Nat;
        let edit = Command::EditReal {
            service: k.clone(),
            real: r.clone(),
        };
        assert_eq!(
            applied(&mut st, edit),
            ["~ real udp/192.0.2.53:53 198.51.100.21:53: weight 5 -> 0, forward dr -> nat"]
        );
        assert_eq!(st.config.services[&k].reals[&r.addr], r);
        let del = Command::DeleteReal {
            service: k.clone(),
            addr: r.addr,
        };
        assert_eq!(
            applied(&mut st, del),
            ["- real udp/192.0.2.53:53 198.51.100.21:53"]
        );
        assert_eq!(st, state());
    }

    #[test]
    fn vip_group_commands() {
        let mut st = state();
        let g = VipGroup {
            preferred_owner: Some(2),
            ..group("api", &["192.0.2.200", "2001:db8::200"])
        };
        assert_eq!(
            applied(&mut st, Command::AddVipGroup(g.clone())),
            ["+ vip_group api (192.0.2.200, 2001:db8::200 on eth0, preferred_owner 2)"]
        );
        assert_eq!(st.config.vip_groups["api"], g);
        assert_eq!(
            applied(&mut st, Command::DeleteVipGroup("api".to_owned())),
            ["- vip_group api"]
        );
        assert_eq!(st, state());
    }

    #[test]
    fn apply_replaces_everything() {
        let mut st = state();
        let mut new = ClusterConfig::default();
        new.vip_groups
            .insert("x".to_owned(), group("x", &["192.0.2.1"]));
        let changes = applied(&mut st, Command::Apply(new.clone()));
        assert_eq!(st.config, new);
        assert_eq!(changes.len(), 2 + rich_config().services.len() + 1);
        assert!(applied(&mut st, Command::Apply(new)).is_empty());
        let preview = st
            .preview(&Command::Apply(rich_config()), &members())
            .unwrap();
        assert_eq!(preview, diff(&st.config, &rich_config()));
        assert_eq!(st.config.services.len(), 0, "preview changed the state");
    }

    #[test]
    fn refusals_leave_state_unchanged() {
        use ErrorKind::*;
        let mut st = state();
        let existing = service("tcp/192.0.2.100:80", &[]);
        refused(
            &mut st,
            Command::AddService(existing.clone()),
            AlreadyExists,
            &["service tcp/192.0.2.100:80 already exists"],
        );
        let mut bad = service("tcp/192.0.2.1:0", &[]);
        bad.persistence = None;
        refused(
            &mut st,
            Command::AddService(bad),
            Invalid,
            &[
                "service tcp/192.0.2.1:0: port 0 (all ports) needs persistence (persistence_timeout > 0)",
            ],
        );
        let mut orphan = service("tcp/192.0.2.1:80", &[]);
        orphan.vip_group = Some("nope".to_owned());
        refused(
            &mut st,
            Command::AddService(orphan),
            FailedPrecondition,
            &["vip_group nope does not exist"],
        );
        let mut wrong_vip = service("tcp/192.0.2.1:80", &[]);
        wrong_vip.vip_group = Some("web".to_owned());
        refused(
            &mut st,
            Command::AddService(wrong_vip),
            FailedPrecondition,
            &["VIP 192.0.2.1 is not in vip_group web"],
        );
        refused(
            &mut st,
            Command::AddService(service("tcp/192.0.2.100:8050-8060", &[])),
            FailedPrecondition,
            &["ports 8050-8060 are also served by service tcp/192.0.2.100:8000-8099,8443"],
        );
        refused(
            &mut st,
            Command::AddService(service("tcp/192.0.2.100:79-80", &[])),
            FailedPrecondition,
            &["port 80 is also served by service tcp/192.0.2.100:80"],
        );

        refused(
            &mut st,
            Command::EditService {
                service: service("tcp/192.0.2.1:80", &[]),
                keep_reals: true,
            },
            NotFound,
            &["no such service tcp/192.0.2.1:80"],
        );
        let mut flags = existing.clone();
        flags.flags = SchedFlags::parse_list(&["mh-port"]).unwrap();
        refused(
            &mut st,
            Command::EditService {
                service: flags,
                keep_reals: true,
            },
            Invalid,
            &["mh-port needs scheduler mh (scheduler is wlc)"],
        );
        let bad_reals = service("tcp/192.0.2.100:80", &["[2001:db8::5]:80"]);
        refused(
            &mut st,
            Command::EditService {
                service: bad_reals,
                keep_reals: false,
            },
            Invalid,
            &["IPv6 real server on an IPv4 service"],
        );
        refused(
            &mut st,
            Command::DeleteService(key("fwmark/99")),
            NotFound,
            &["no such service fwmark/99"],
        );

        let k = key("tcp/192.0.2.100:80");
        refused(
            &mut st,
            Command::AddReal {
                service: key("tcp/192.0.2.1:80"),
                real: real("198.51.100.1:80"),
            },
            NotFound,
            &["no such service tcp/192.0.2.1:80"],
        );
        refused(
            &mut st,
            Command::AddReal {
                service: k.clone(),
                real: real("198.51.100.10:80"),
            },
            AlreadyExists,
            &["service tcp/192.0.2.100:80: real 198.51.100.10:80 already exists"],
        );
        let mut heavy = real("198.51.100.50:80");
        heavy.weight = 65536;
        refused(
            &mut st,
            Command::AddReal {
                service: k.clone(),
                real: heavy,
            },
            Invalid,
            &["service tcp/192.0.2.100:80: real 198.51.100.50:80: weight 65536"],
        );
        refused(
            &mut st,
            Command::EditReal {
                service: k.clone(),
                real: real("198.51.100.50:80"),
            },
            NotFound,
            &["service tcp/192.0.2.100:80 has no real server 198.51.100.50:80"],
        );
        refused(
            &mut st,
            Command::DeleteReal {
                service: k.clone(),
                addr: real("198.51.100.50:80").addr,
            },
            NotFound,
            &["has no real server 198.51.100.50:80"],
        );

        refused(
            &mut st,
            Command::AddVipGroup(group("web", &["192.0.2.7"])),
            AlreadyExists,
            &["vip_group web already exists"],
        );
        refused(
            &mut st,
            Command::AddVipGroup(group("api", &["192.0.2.7", "192.0.2.53"])),
            FailedPrecondition,
            &["vip_group api: VIP 192.0.2.53 is already in vip_group dns"],
        );
        refused(
            &mut st,
            Command::AddVipGroup(group("bad name", &["192.0.2.7"])),
            Invalid,
            &["VIP group name \"bad name\""],
        );
        let witness_owned = VipGroup {
            preferred_owner: Some(3),
            ..group("api", &["192.0.2.7"])
        };
        refused(
            &mut st,
            Command::AddVipGroup(witness_owned.clone()),
            FailedPrecondition,
            &["node 3 is a witness and can never own a VIP"],
        );
        refused(
            &mut st,
            Command::DeleteVipGroup("web".to_owned()),
            FailedPrecondition,
            &[
                "vip_group web is still used by services tcp/192.0.2.100:80, tcp/[2001:db8::100]:443",
                "delete them first",
            ],
        );
        refused(
            &mut st,
            Command::DeleteVipGroup("nope".to_owned()),
            NotFound,
            &["no such vip_group nope"],
        );

        let mut invalid = rich_config();
        invalid
            .vip_groups
            .insert("x".to_owned(), group("x", &["192.0.2.100"]));
        refused(
            &mut st,
            Command::Apply(invalid),
            Invalid,
            &["VIP 192.0.2.100 is in vip_group web and vip_group x"],
        );
        let mut witness = rich_config();
        witness.vip_groups.insert("api".to_owned(), witness_owned);
        refused(
            &mut st,
            Command::Apply(witness),
            FailedPrecondition,
            &["vip_group api: preferred_owner: node 3 is a witness"],
        );
    }

    #[test]
    fn unknown_preferred_owner_is_accepted() {
        // A config may name a director that has not joined yet.
        let mut st = state();
        let g = VipGroup {
            preferred_owner: Some(9),
            ..group("api", &["192.0.2.7"])
        };
        applied(&mut st, Command::AddVipGroup(g));
    }

    #[test]
    fn deterministic_and_serializable() {
        let commands = vec![
            Command::AddVipGroup(group("api", &["192.0.2.7"])),
            Command::AddService(service("tcp/192.0.2.7:80", &["198.51.100.1:80"])),
            Command::AddReal {
                service: key("tcp/192.0.2.7:80"),
                real: real("198.51.100.2:80"),
            },
            Command::EditReal {
                service: key("tcp/192.0.2.7:80"),
                real: RealServer {
                    weight: 7,
                    ..real("198.51.100.2:80")
                },
            },
            Command::EditService {
                service: service("tcp/192.0.2.7:80", &[]),
                keep_reals: true,
            },
            Command::DeleteReal {
                service: key("tcp/192.0.2.7:80"),
                addr: real("198.51.100.1:80").addr,
            },
            Command::AddService(service("tcp/192.0.2.7:81", &[])),
            Command::DeleteService(key("tcp/192.0.2.7:81")),
            // Refused (already exists): must be refused the same way everywhere.
            Command::AddVipGroup(group("api", &["192.0.2.8"])),
            Command::DeleteVipGroup("dns".to_owned()),
            Command::DeleteService(key("udp/192.0.2.53:53")),
            Command::DeleteVipGroup("dns".to_owned()),
            Command::Apply(rich_config()),
        ];
        let run = |commands: &[Command]| {
            let mut st = state();
            let results: Vec<_> = commands.iter().map(|c| st.apply(c, &members())).collect();
            (st, results)
        };
        // Commands travel through the log serialized.
        let json = serde_json::to_string(&commands).unwrap();
        let decoded: Vec<Command> = serde_json::from_str(&json).unwrap();
        assert_eq!(decoded, commands);
        let (a, ra) = run(&commands);
        let (b, rb) = run(&decoded);
        assert_eq!(ra, rb);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        assert_eq!(ra.iter().filter(|r| r.is_err()).count(), 2);
        let snapshot: ClusterState =
            serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(snapshot, a);
        for c in &commands {
            assert!(!c.to_string().is_empty());
        }
    }

    /// At the design's scale (10,000 services x 10 real servers) a whole-config apply yields a
    /// change per object, and a re-apply only what moved. Timing lives in the benchmark.
    #[test]
    fn scale() {
        let mut cfg = ClusterConfig::default();
        for i in 0..10_000u32 {
            let vip = format!("10.{}.{}.1", i / 250, i % 250);
            let mut s = service(&format!("tcp/{vip}:80"), &[]);
            for j in 0..10u32 {
                let r = real(&format!("172.16.{}.{}:80", i % 250, j + 1));
                s.reals.insert(r.addr, r);
            }
            cfg.services.insert(s.key.clone(), s);
        }
        let mut st = ClusterState::default();
        let changes = st.apply(&Command::Apply(cfg.clone()), &members()).unwrap();
        assert_eq!(changes.len(), 110_000);
        let mut next = cfg.clone();
        for s in next.services.values_mut().step_by(10) {
            for r in s.reals.values_mut() {
                r.weight = 2;
            }
        }
        let changes = st.apply(&Command::Apply(next.clone()), &members()).unwrap();
        assert_eq!(changes.len(), 10_000);
        assert!(
            changes
                .iter()
                .all(|c| c.op == ChangeOp::Modify && c.object == ObjectKind::Real)
        );
        assert_eq!(st.config, next);
    }
}
