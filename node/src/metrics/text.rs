//! The Prometheus text exposition format, version 0.0.4.
//!
//! [`MetricsWriter`] collects samples in any order and renders each metric family once:
//! `# HELP`, `# TYPE`, then all its samples together, families in the order they were first
//! written. A sample that would make the output invalid (a bad metric or label name, a family
//! written once as a counter and once as a gauge, the same series twice, a negative counter)
//! is left out and logged, so one wrong caller cannot break a whole scrape.

use std::collections::HashMap;
use std::collections::HashSet;
use std::fmt::Write as _;

/// The `Content-Type` of a rendered exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metric types this exporter writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only ever goes up (until the process restarts); the name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A sample value: integers are written exactly, floats as Prometheus parses them
/// (`NaN`, `+Inf`, `-Inf`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Unsigned(v)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Unsigned(u64::from(v))
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Unsigned(v as u64)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Signed(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

/// `true` is 1, `false` is 0.
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Unsigned(u64::from(v))
    }
}

impl Value {
    fn is_negative(self) -> bool {
        match self {
            Value::Unsigned(_) => false,
            Value::Signed(v) => v < 0,
            Value::Float(v) => v < 0.0,
        }
    }

    fn write_to(self, out: &mut String) {
        let _ = match self {
            Value::Unsigned(v) => write!(out, "{v}"),
            Value::Signed(v) => write!(out, "{v}"),
            Value::Float(v) if v.is_nan() => write!(out, "NaN"),
            Value::Float(v) if v == f64::INFINITY => write!(out, "+Inf"),
            Value::Float(v) if v == f64::NEG_INFINITY => write!(out, "-Inf"),
            Value::Float(v) => write!(out, "{v}"),
        };
    }
}

struct Family {
    name: String,
    help: String,
    kind: Kind,
    samples: String,
}

/// Collects samples; [`MetricsWriter::finish`] renders them. Adding a family is one call:
/// `w.counter("fulcrum_x_total", "What it counts.", &[("label", "value")], n)`.
#[derive(Default)]
pub struct MetricsWriter {
    families: Vec<Family>,
    by_name: HashMap<String, usize>,
    /// `name{labels}` of every sample written, to refuse the same series twice.
    series: HashSet<String>,
    rejected: u64,
}

impl std::fmt::Debug for MetricsWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsWriter")
            .field("families", &self.families.len())
            .field("samples", &self.series.len())
            .field("rejected", &self.rejected)
            .finish()
    }
}

impl MetricsWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// A sample of a counter family. `name` must end in `_total`.
    pub fn counter(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: impl Into<Value>,
    ) {
        self.sample(Kind::Counter, name, help, labels, value.into());
    }

    /// A sample of a gauge family.
    pub fn gauge(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: impl Into<Value>,
    ) {
        self.sample(Kind::Gauge, name, help, labels, value.into());
    }

    /// Samples refused so far (each was logged).
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// A sample of family `name` of type `kind`; the family's HELP is the first one given.
    pub fn sample(
        &mut self,
        kind: Kind,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: Value,
    ) {
        if let Err(why) = self.try_sample(kind, name, help, labels, value) {
            self.rejected += 1;
            tracing::warn!(metric = name, "metric sample left out: {why}");
        }
    }

    fn try_sample(
        &mut self,
        kind: Kind,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: Value,
    ) -> Result<(), String> {
        if !valid_metric_name(name) {
            return Err(format!("invalid metric name {name:?}"));
        }
        if kind == Kind::Counter {
            if !name.ends_with("_total") {
                return Err("a counter's name must end in _total".into());
            }
            if value.is_negative() {
                return Err("a counter cannot be negative".into());
            }
        }
        for (i, (l, _)) in labels.iter().enumerate() {
            if !valid_label_name(l) {
                return Err(format!("invalid label name {l:?}"));
            }
            if labels[..i].iter().any(|(p, _)| p == l) {
                return Err(format!("label {l:?} given twice"));
            }
        }
        let mut line = String::with_capacity(name.len() + 16 * labels.len() + 24);
        line.push_str(name);
        if !labels.is_empty() {
            line.push('{');
            for (i, (l, v)) in labels.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                line.push_str(l);
                line.push_str("=\"");
                escape_label_value(v, &mut line);
                line.push('"');
            }
            line.push('}');
        }
        let idx = match self.by_name.get(name) {
            Some(&i) => {
                let have = self.families[i].kind;
                if have != kind {
                    return Err(format!(
                        "family is a {}, not a {}",
                        have.as_str(),
                        kind.as_str()
                    ));
                }
                i
            }
            None => {
                // The family does not exist yet, so neither does the series.
                self.families.push(Family {
                    name: name.to_string(),
                    help: help.to_string(),
                    kind,
                    samples: String::new(),
                });
                self.by_name
                    .insert(name.to_string(), self.families.len() - 1);
                self.families.len() - 1
            }
        };
        if !self.series.insert(line.clone()) {
            return Err(format!("series {line} written twice"));
        }
        let samples = &mut self.families[idx].samples;
        samples.push_str(&line);
        samples.push(' ');
        value.write_to(samples);
        samples.push('\n');
        Ok(())
    }

    /// The exposition text: every family once, with its HELP and TYPE lines.
    pub fn finish(self) -> String {
        let size: usize = self
            .families
            .iter()
            .map(|f| f.samples.len() + 2 * f.name.len() + f.help.len() + 32)
            .sum();
        let mut out = String::with_capacity(size);
        for f in &self.families {
            if !f.help.is_empty() {
                out.push_str("# HELP ");
                out.push_str(&f.name);
                out.push(' ');
                escape_help(&f.help, &mut out);
                out.push('\n');
            }
            out.push_str("# TYPE ");
            out.push_str(&f.name);
            out.push(' ');
            out.push_str(f.kind.as_str());
            out.push('\n');
            out.push_str(&f.samples);
        }
        out
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, and not `__`-prefixed (reserved for Prometheus itself).
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Label values escape `\`, `"` and line feeds.
fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text escapes `\` and line feeds.
fn escape_help(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_help_and_type_once_with_their_samples_together() {
        let mut w = MetricsWriter::new();
        w.counter("a_total", "Things.", &[("k", "1")], 3u64);
        w.gauge("b", "A level.", &[], 1.5);
        w.counter("a_total", "Ignored second help.", &[("k", "2")], 4u64);
        let text = w.finish();
        assert_eq!(
            text,
            "# HELP a_total Things.\n# TYPE a_total counter\na_total{k=\"1\"} 3\na_total{k=\"2\"} 4\n\
             # HELP b A level.\n# TYPE b gauge\nb 1.5\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut w = MetricsWriter::new();
        w.gauge(
            "x",
            "Back\\slash and\nnewline, \"quotes\" stay.",
            &[("v", "a\"b\\c\nd"), ("u", "ünï ✓")],
            1u64,
        );
        let text = w.finish();
        assert_eq!(
            text,
            "# HELP x Back\\\\slash and\\nnewline, \"quotes\" stay.\n# TYPE x gauge\n\
             x{v=\"a\\\"b\\\\c\\nd\",u=\"ünï ✓\"} 1\n"
        );
    }

    #[test]
    fn special_floats_are_written_as_prometheus_reads_them() {
        let mut w = MetricsWriter::new();
        w.gauge("f", "", &[("v", "nan")], f64::NAN);
        w.gauge("f", "", &[("v", "inf")], f64::INFINITY);
        w.gauge("f", "", &[("v", "-inf")], f64::NEG_INFINITY);
        w.gauge("f", "", &[("v", "neg")], -2i64);
        w.gauge("f", "", &[("v", "big")], u64::MAX);
        w.gauge("f", "", &[("v", "bool")], true);
        let text = w.finish();
        for want in [
            "f{v=\"nan\"} NaN\n",
            "f{v=\"inf\"} +Inf\n",
            "f{v=\"-inf\"} -Inf\n",
            "f{v=\"neg\"} -2\n",
            "f{v=\"big\"} 18446744073709551615\n",
            "f{v=\"bool\"} 1\n",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
    }

    #[test]
    fn invalid_samples_are_left_out_not_rendered() {
        let mut w = MetricsWriter::new();
        w.gauge("ok", "", &[], 1u64);
        w.counter("ok", "", &[], 1u64); // type clash with the gauge
        w.counter("no_suffix", "", &[], 1u64); // counters end in _total
        w.counter("neg_total", "", &[], -1i64);
        w.gauge("1bad", "", &[], 1u64);
        w.gauge("bad-name", "", &[], 1u64);
        w.gauge("", "", &[], 1u64);
        w.gauge("l", "", &[("__reserved", "x")], 1u64);
        w.gauge("l", "", &[("bad-label", "x")], 1u64);
        w.gauge("l", "", &[("a", "x"), ("a", "y")], 1u64);
        w.gauge("ok", "", &[], 2u64); // the same series again
        assert_eq!(w.rejected(), 10);
        assert_eq!(w.finish(), "# TYPE ok gauge\nok 1\n");
    }

    #[test]
    fn names_follow_the_grammar() {
        assert!(valid_metric_name("fulcrum_raft_term"));
        assert!(valid_metric_name("ns:rule_total"));
        assert!(!valid_metric_name("9lives"));
        assert!(!valid_metric_name("a b"));
        assert!(valid_label_name("_x1"));
        assert!(!valid_label_name("a:b"));
        assert!(!valid_label_name("__name__"));
    }

    #[test]
    fn no_family_appears_twice_whatever_the_order() {
        let mut w = MetricsWriter::new();
        for i in 0..50 {
            let v = i.to_string();
            w.counter("c_total", "c", &[("i", &v)], 1u64);
            w.gauge("g", "g", &[("i", &v)], 1u64);
        }
        let text = w.finish();
        assert_eq!(text.matches("# TYPE c_total ").count(), 1);
        assert_eq!(text.matches("# TYPE g ").count(), 1);
        assert_eq!(text.matches("# HELP ").count(), 2);
        // Samples of one family are contiguous.
        let names: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split('{').next().unwrap_or(""))
            .collect();
        let switches = names.windows(2).filter(|p| p[0] != p[1]).count();
        assert_eq!(switches, 1, "{text}");
    }
}
