//! The declarative TOML format of `fulcrum apply -f cluster.toml` and `fulcrum export`.
//!
//! ```toml
//! [[vip_group]]
//! name = "web"
//! vips = ["192.0.2.100", "2001:db8::100"]
//! interface = "eth0"
//! preferred_owner = 1      # optional
//! preempt = false          # optional, default false
//!
//! [[service]]
//! key = "tcp/192.0.2.100:80"
//! scheduler = "wlc"        # optional, default wlc (as ipvsadm)
//! flags = []               # optional
//! persistence_timeout = 0  # optional, 0 = off
//! persistence_prefix = 24  # optional, default host (/32, /128)
//! one_packet = false       # optional
//! vip_group = "web"        # optional
//!
//! [[service.real]]
//! address = "198.51.100.10:80"
//! weight = 1               # optional, default 1
//! forward = "dr"           # optional, default dr
//! upper_threshold = 0      # optional
//! lower_threshold = 0      # optional
//! ```
//!
//! Unknown keys are errors (a misspelt optional key would otherwise be silently ignored).
//! Errors name the line of the offending entry.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use super::addr::parse_ip;
use super::config::{ClusterConfig, ConfigBuilder};
use super::error::ModelError;
use super::real::{DEFAULT_WEIGHT, RealFields, RealServer};
use super::scheduler::Scheduler;
use super::service::{Service, ServiceFields};
use super::vip_group::VipGroup;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    vip_group: Vec<Spanned<GroupEntry>>,
    #[serde(default)]
    service: Vec<Spanned<ServiceEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupEntry {
    name: String,
    vips: Vec<String>,
    interface: String,
    #[serde(default)]
    preferred_owner: Option<u64>,
    #[serde(default)]
    preempt: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceEntry {
    key: String,
    #[serde(default = "default_scheduler")]
    scheduler: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    persistence_timeout: u32,
    #[serde(default)]
    persistence_prefix: Option<u32>,
    #[serde(default)]
    one_packet: bool,
    #[serde(default)]
    vip_group: Option<String>,
    #[serde(default)]
    real: Vec<Spanned<RealEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RealEntry {
    address: String,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default = "default_forward")]
    forward: String,
    #[serde(default)]
    upper_threshold: u32,
    #[serde(default)]
    lower_threshold: u32,
}

fn default_scheduler() -> String {
    Scheduler::default().as_str().to_owned()
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

fn default_forward() -> String {
    "dr".to_owned()
}

/// Parses and validates a cluster configuration file.
pub fn parse_cluster_toml(text: &str) -> Result<ClusterConfig, ModelError> {
    let doc: FileDoc = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    let at = |span: std::ops::Range<usize>| format!("line {}", line_col(text, span.start).0);
    let mut builder = ConfigBuilder::default();
    // Groups first: services refer to them.
    for entry in doc.vip_group {
        let span = entry.span();
        group_from_entry(entry.into_inner())
            .and_then(|g| builder.add_vip_group(g))
            .map_err(|e| e.at(at(span)))?;
    }
    for entry in doc.service {
        let span = entry.span();
        let entry = entry.into_inner();
        let mut service = Service::from_fields(ServiceFields {
            key: &entry.key,
            scheduler: &entry.scheduler,
            flags: &entry.flags,
            persistence_timeout: entry.persistence_timeout,
            persistence_prefix: entry.persistence_prefix,
            one_packet: entry.one_packet,
            vip_group: entry.vip_group.as_deref().unwrap_or(""),
        })
        .map_err(|e| e.at(at(span.clone())))?;
        let mut lines: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for real in entry.real {
            let real_span = real.span();
            let line = line_col(text, real_span.start).0;
            let real = real.into_inner();
            let real = RealServer::from_fields(RealFields {
                address: &real.address,
                weight: real.weight,
                forward: &real.forward,
                upper_threshold: real.upper_threshold,
                lower_threshold: real.lower_threshold,
            })
            .map_err(|e| e.at(format_args!("line {line}: service {}", service.key)))?;
            if let Some(first) = lines.insert(real.addr, line) {
                return Err(ModelError::new(format!(
                    "line {line}: service {}: real {} is listed twice (first at line {first})",
                    service.key, real.addr
                )));
            }
            service.reals.insert(real.addr, real);
        }
        builder.add_service(service).map_err(|e| e.at(at(span)))?;
    }
    Ok(builder.finish())
}

fn group_from_entry(entry: GroupEntry) -> Result<VipGroup, ModelError> {
    let mut vips = BTreeSet::new();
    for text in &entry.vips {
        let vip = parse_ip(text).map_err(|e| e.at(format_args!("vip_group {}", entry.name)))?;
        if !vips.insert(vip) {
            return Err(ModelError::new(format!(
                "vip_group {}: VIP {vip} is listed twice",
                entry.name
            )));
        }
    }
    Ok(VipGroup {
        name: entry.name,
        vips,
        interface: entry.interface,
        preferred_owner: entry.preferred_owner,
        preempt: entry.preempt,
    })
}

/// "line L, column C: message" from the toml crate's error and span.
fn toml_error(text: &str, err: &toml::de::Error) -> ModelError {
    match err.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            ModelError::new(format!(
                "line {line}, column {col}: {}",
                err.message().trim_end()
            ))
        }
        None => ModelError::new(err.to_string().trim_end().to_owned()),
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Writes the configuration in the file format, readable and parsing back to an equal config.
/// Keys at their default value are left out, except the ones a reader looks for (scheduler,
/// weight, forward, preempt).
pub fn to_cluster_toml(config: &ClusterConfig) -> String {
    let mut out =
        String::from("# Fulcrum cluster configuration; apply with `fulcrum apply -f FILE`.\n");
    // Writing to a String cannot fail, so the fmt::Results below are ignored.
    for group in config.vip_groups.values() {
        let vips: Vec<String> = group
            .vips
            .iter()
            .map(|v| toml_str(&v.to_string()))
            .collect();
        let _ = writeln!(out, "\n[[vip_group]]");
        let _ = writeln!(out, "name = {}", toml_str(&group.name));
        let _ = writeln!(out, "vips = [{}]", vips.join(", "));
        let _ = writeln!(out, "interface = {}", toml_str(&group.interface));
        if let Some(owner) = group.preferred_owner {
            let _ = writeln!(out, "preferred_owner = {owner}");
        }
        let _ = writeln!(out, "preempt = {}", group.preempt);
    }
    for service in config.services.values() {
        let _ = writeln!(out, "\n[[service]]");
        let _ = writeln!(out, "key = {}", toml_str(&service.key.to_string()));
        let _ = writeln!(out, "scheduler = {}", toml_str(service.scheduler.as_str()));
        if !service.flags.is_empty() {
            let flags: Vec<String> = service.flags.iter().map(|f| toml_str(f.as_str())).collect();
            let _ = writeln!(out, "flags = [{}]", flags.join(", "));
        }
        if let Some(p) = service.persistence {
            let _ = writeln!(out, "persistence_timeout = {}", p.timeout_s);
            if p.prefix != service.key.family().max_prefix() {
                let _ = writeln!(out, "persistence_prefix = {}", p.prefix);
            }
        }
        if service.one_packet {
            let _ = writeln!(out, "one_packet = true");
        }
        if let Some(group) = &service.vip_group {
            let _ = writeln!(out, "vip_group = {}", toml_str(group));
        }
        for real in service.reals.values() {
            let _ = writeln!(out, "\n[[service.real]]");
            let _ = writeln!(out, "address = {}", toml_str(&real.addr.to_string()));
            let _ = writeln!(out, "weight = {}", real.weight);
            let _ = writeln!(out, "forward = {}", toml_str(real.forward.as_str()));
            if real.upper_threshold != 0 {
                let _ = writeln!(out, "upper_threshold = {}", real.upper_threshold);
            }
            if real.lower_threshold != 0 {
                let _ = writeln!(out, "lower_threshold = {}", real.lower_threshold);
            }
        }
    }
    out
}

/// A TOML basic string: quotes, backslashes and control characters escaped.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::model::{Forward, Persistence, SchedFlags};

    const EXAMPLE: &str = r#"
[[vip_group]]
name = "web"
vips = ["192.0.2.100", "2001:db8::100"]
interface = "eth0"
preferred_owner = 1      # optional
preempt = false          # optional, default false

[[service]]
key = "tcp/192.0.2.100:80"
scheduler = "wlc"
flags = []               # optional
persistence_timeout = 0  # optional
persistence_prefix = 24  # optional
one_packet = false       # optional
vip_group = "web"        # optional

[[service.real]]
address = "198.51.100.10:80"
weight = 1
forward = "dr"
upper_threshold = 0
lower_threshold = 0
"#;

    fn err(text: &str) -> String {
        parse_cluster_toml(text).unwrap_err().to_string()
    }

    #[track_caller]
    fn assert_err(text: &str, facts: &[&str]) {
        let e = err(text);
        for fact in facts {
            assert!(e.contains(fact), "{e:?} lacks {fact:?}");
        }
    }

    #[test]
    fn documented_example_parses() {
        // The documented example sets a prefix without persistence, which is refused.
        assert_err(
            EXAMPLE,
            &[
                "line 9:",
                "persistence_prefix 24 is set but persistence_timeout is 0",
            ],
        );
        let cfg = parse_cluster_toml(
            &EXAMPLE.replace("persistence_timeout = 0", "persistence_timeout = 300"),
        )
        .unwrap();
        let s = &cfg.services[&key("tcp/192.0.2.100:80")];
        assert_eq!(
            s.persistence,
            Some(Persistence {
                timeout_s: 300,
                prefix: 24
            })
        );
        assert_eq!(s.vip_group.as_deref(), Some("web"));
        assert_eq!(s.reals.len(), 1);
        assert_eq!(cfg.vip_groups["web"].preferred_owner, Some(1));
        assert_eq!(cfg.vip_groups["web"].vips.len(), 2);
    }

    #[test]
    fn defaults() {
        let cfg = parse_cluster_toml(
            "[[service]]\nkey = \"udp/[2001:db8::1]:53\"\n[[service.real]]\naddress = \"[2001:db8::10]:53\"\n",
        )
        .unwrap();
        let s = &cfg.services[&key("udp/[2001:db8::1]:53")];
        assert_eq!(s.scheduler, Scheduler::Wlc);
        assert_eq!(s.flags, SchedFlags::empty());
        assert_eq!(s.persistence, None);
        assert!(!s.one_packet);
        assert_eq!(s.vip_group, None);
        let r = s.reals.values().next().unwrap();
        assert_eq!((r.weight, r.forward), (1, Forward::Dr));
        assert_eq!((r.upper_threshold, r.lower_threshold), (0, 0));
        // Persistence without a prefix is per host.
        let cfg = parse_cluster_toml(
            "[[service]]\nkey = \"tcp/[2001:db8::1]:0\"\npersistence_timeout = 60\n",
        )
        .unwrap();
        assert_eq!(
            cfg.services[&key("tcp/[2001:db8::1]:0")].persistence,
            Some(Persistence {
                timeout_s: 60,
                prefix: 128
            })
        );
    }

    #[test]
    fn round_trips() {
        for cfg in [rich_config(), ClusterConfig::default()] {
            let text = to_cluster_toml(&cfg);
            let back = parse_cluster_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(back, cfg, "{text}");
            assert_eq!(to_cluster_toml(&back), text);
        }
        assert_eq!(parse_cluster_toml("").unwrap(), ClusterConfig::default());
        // Odd but legal interface names survive quoting.
        let g = VipGroup {
            interface: "e\"x\\y\u{e9}".to_owned(),
            ..group("web", &["192.0.2.1"])
        };
        let cfg = config(vec![g], vec![]);
        assert_eq!(parse_cluster_toml(&to_cluster_toml(&cfg)).unwrap(), cfg);
        let text = format!("x = {}", toml_str("a\u{1}\u{7f}\n\t\""));
        let value: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(value["x"].as_str(), Some("a\u{1}\u{7f}\n\t\""));
    }

    #[test]
    fn export_is_readable() {
        let text = to_cluster_toml(&rich_config());
        assert!(text.contains(
            "\n[[vip_group]]\nname = \"web\"\nvips = [\"192.0.2.100\", \"2001:db8::100\"]\ninterface = \"eth0\"\npreferred_owner = 1\npreempt = true\n"
        ), "{text}");
        assert!(text.contains(
            "\n[[service]]\nkey = \"tcp/[2001:db8::100]:443\"\nscheduler = \"sh\"\nflags = [\"sh-fallback\", \"sh-port\"]\npersistence_timeout = 600\npersistence_prefix = 64\nvip_group = \"web\"\n\n[[service.real]]\naddress = \"[2001:db8:1::10]:443\"\nweight = 1\nforward = \"dr\"\n"
        ), "{text}");
        assert!(
            text.contains("upper_threshold = 100\nlower_threshold = 75\n"),
            "{text}"
        );
        assert!(!text.contains("one_packet = false"), "{text}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert_err(
            "[[service]]\nkey = \"tcp/192.0.2.1:80\"\npersistance_timeout = 5\n",
            &[
                "line 3, column 1",
                "unknown field `persistance_timeout`",
                "persistence_timeout",
            ],
        );
        assert_err(
            "[[service]]\nkey = \"tcp/192.0.2.1:80\"\n\n[[service.real]]\naddress = \"198.51.100.1:80\"\nwieght = 2\n",
            &["line 6, column 1", "unknown field `wieght`"],
        );
        assert_err(
            "[[services]]\nkey = \"x\"\n",
            &["line 1", "unknown field `services`"],
        );
        assert_err(
            "[[vip_group]]\nname = \"a\"\nvips = []\ninterface = \"eth0\"\nowner = 1\n",
            &["line 5, column 1", "unknown field `owner`"],
        );
    }

    #[test]
    fn syntax_and_type_errors_have_positions() {
        assert_err("[[service]\n", &["line 1, column"]);
        assert_err(
            "[[service]]\nkey = \"tcp/192.0.2.1:80\"\n[[service.real]]\naddress = \"198.51.100.1:80\"\nweight = -1\n",
            &["line 5, column 10", "-1"],
        );
        assert_err(
            "[[service]]\nscheduler = \"rr\"\n",
            &["line 1", "missing field `key`"],
        );
    }

    #[test]
    fn model_errors_name_the_line() {
        let text = "[[service]]\nkey = \"tcp/192.0.2.1:80\"\n\n[[service]]\nkey = \"tcp/192.0.2.1:81\"\nscheduler = \"fifo\"\n";
        assert_err(
            text,
            &["line 4: unknown scheduler \"fifo\"", "rr, wrr, lc, wlc"],
        );
        let text = "[[service]]\nkey = \"tcp/192.0.2.1:80\"\n[[service.real]]\naddress = \"198.51.100.1\"\n";
        assert_err(
            text,
            &["line 3: service tcp/192.0.2.1:80: address: \"198.51.100.1\": missing port"],
        );
        let text = "[[service]]\nkey = \"tcp/192.0.2.1:80\"\n[[service.real]]\naddress = \"198.51.100.1:80\"\nforward = \"nat\"\nweight = 70000\n";
        assert_err(
            text,
            &["line 3: service tcp/192.0.2.1:80: real 198.51.100.1:80: weight 70000"],
        );
        let text = "[[service]]\nkey = \"tcp/192.0.2.1:80\"\nvip_group = \"web\"\n";
        assert_err(
            text,
            &["line 1: service tcp/192.0.2.1:80: vip_group web does not exist"],
        );
    }

    #[test]
    fn duplicates_are_rejected() {
        let text =
            "[[service]]\nkey = \"tcp/192.0.2.1:80\"\n[[service]]\nkey = \"TCP/192.0.2.1:80\"\n";
        assert_err(text, &["line 3: service tcp/192.0.2.1:80 is defined twice"]);
        let text = "[[service]]\nkey = \"tcp/192.0.2.1:80\"\n[[service.real]]\naddress = \"198.51.100.1:80\"\n[[service.real]]\naddress = \"198.51.100.1:80\"\nweight = 2\n";
        assert_err(
            text,
            &[
                "line 5: service tcp/192.0.2.1:80: real 198.51.100.1:80 is listed twice (first at line 3)",
            ],
        );
        let g = "[[vip_group]]\nname = \"web\"\nvips = [\"192.0.2.1\"]\ninterface = \"eth0\"\n";
        assert_err(
            &format!("{g}{g}"),
            &["line 5: vip_group web is defined twice"],
        );
        let text = "[[vip_group]]\nname = \"web\"\nvips = [\"192.0.2.1\", \"192.0.2.1\"]\ninterface = \"eth0\"\n";
        assert_err(
            text,
            &["line 1: vip_group web: VIP 192.0.2.1 is listed twice"],
        );
        let text =
            "[[vip_group]]\nname = \"web\"\nvips = [\"192.0.2.1:80\"]\ninterface = \"eth0\"\n";
        assert_err(
            text,
            &["line 1: vip_group web: \"192.0.2.1:80\" has a port"],
        );
    }
}
