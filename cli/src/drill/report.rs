//! What a drill measured, from the flows' send and receive times.
//!
//! - **takeover**: from the event to the first reply, on any flow, to a message *sent after*
//!   the event. After a kill that reply can only have come through the new owner. After a
//!   planned move the old owner keeps forwarding for a moment, so it is near zero there.
//! - **recovered** (per flow): the same, for that flow alone.
//! - **longest stall** (per flow): the longest time between two replies, counted from the
//!   first reply to the end of sending (a flow that went silent stalls until the end).
//! - **broken**: the connection failed (reset, closed, refused), a reply came back wrong or
//!   out of order, no message sent after the event was ever answered, or the flow was silent
//!   at the end (none of the messages sent in the last `tail` of the drill was answered: it
//!   stalled for good).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use super::flow::FlowLog;
use super::flow::FlowSpec;

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[derive(Debug, Clone, Serialize)]
pub struct FlowResult {
    pub flow: usize,
    pub proto: &'static str,
    pub service: String,
    pub target: SocketAddr,
    pub local: Option<SocketAddr>,
    pub server: Option<String>,
    pub server_changes: u32,
    pub sent: usize,
    pub replies: usize,
    pub lost: usize,
    pub recovered_ms: Option<f64>,
    pub longest_stall_ms: f64,
    pub broken: bool,
    pub why: Option<String>,
}

/// One flow's verdict. `event` and `end` (end of sending) are offsets like the log's; `tail`
/// is how long before the end a flow must have been answered to count as alive.
pub fn analyse(
    spec: &FlowSpec,
    log: &FlowLog,
    event: Duration,
    end: Duration,
    tail: Duration,
) -> FlowResult {
    let first_after = log
        .replies
        .iter()
        .filter(|(seq, _)| log.sent.get(*seq as usize).is_some_and(|t| *t >= event))
        .map(|(_, at)| *at)
        .min();
    let recovered = first_after.map(|t| t.saturating_sub(event));
    let mut longest = Duration::ZERO;
    if let Some(&(_, first)) = log.replies.first() {
        let mut last = first;
        for &(_, at) in &log.replies[1..] {
            longest = longest.max(at.saturating_sub(last));
            last = last.max(at);
        }
        longest = longest.max(end.saturating_sub(last));
    }
    let tail_from = end.saturating_sub(tail);
    let alive_at_end = log
        .replies
        .iter()
        .any(|(seq, _)| log.sent.get(*seq as usize).is_some_and(|t| *t >= tail_from));
    let why = match (&log.fault, recovered) {
        (Some(f), _) => Some(format!("{} (at {:.3} s)", f.what, f.at.as_secs_f64())),
        (None, None) => Some("no message sent after the event was answered".to_string()),
        (None, Some(_)) if !alive_at_end => Some(format!(
            "stalled for good: nothing sent in the last {:.1} s was answered",
            tail.as_secs_f64()
        )),
        (None, Some(_)) => None,
    };
    FlowResult {
        flow: spec.id,
        proto: spec.proto.name(),
        service: spec.service.clone(),
        target: spec.target,
        local: log.local,
        server: log.server.clone(),
        server_changes: log.server_changes,
        sent: log.sent.len(),
        replies: log.replies.len(),
        lost: log.sent.len().saturating_sub(log.replies.len()),
        recovered_ms: recovered.map(ms),
        longest_stall_ms: ms(longest),
        broken: why.is_some(),
        why,
    }
}

/// A director's part in the drill, from cluster status and its connection table.
#[derive(Debug, Clone, Serialize)]
pub struct Director {
    pub node: u64,
    pub addr: String,
    /// The drill's flows found in its connection table (`None`: could not ask).
    pub flows_in_table: Option<usize>,
    /// After the event: when cluster status first named this node the owner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_seen_after_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub group: String,
    /// "move" (planned) or "kill" (unplanned loss of the owner).
    pub trigger: &'static str,
    pub passed: bool,
    pub flows: usize,
    pub rate_per_flow: u32,
    pub duration_s: f64,
    /// When the event happened, seconds after the flows started.
    pub event_at_s: f64,
    pub before: Director,
    pub after: Option<Director>,
    pub takeover_ms: Option<f64>,
    pub broken: usize,
    pub max_stall_ms: f64,
    pub per_flow: Vec<FlowResult>,
}

/// What the drill was.
#[derive(Debug, Clone)]
pub struct Header {
    pub group: String,
    pub trigger: &'static str,
    pub rate: u32,
    /// How long the flows sent.
    pub duration: Duration,
    /// When the event happened, after the flows started.
    pub event: Duration,
}

impl Report {
    pub fn new(
        h: Header,
        before: Director,
        after: Option<Director>,
        per_flow: Vec<FlowResult>,
    ) -> Report {
        let takeover = per_flow
            .iter()
            .filter_map(|f| f.recovered_ms)
            .min_by(f64::total_cmp);
        let broken = per_flow.iter().filter(|f| f.broken).count();
        let max_stall = per_flow
            .iter()
            .map(|f| f.longest_stall_ms)
            .fold(0.0, f64::max);
        let moved = after.as_ref().is_some_and(|a| a.node != before.node);
        Report {
            group: h.group,
            trigger: h.trigger,
            passed: broken == 0 && moved,
            flows: per_flow.len(),
            rate_per_flow: h.rate,
            duration_s: h.duration.as_secs_f64(),
            event_at_s: (h.event.as_secs_f64() * 1e3).round() / 1e3,
            before,
            after,
            takeover_ms: takeover,
            broken,
            max_stall_ms: max_stall,
            per_flow,
        }
    }

    pub fn print_human(&self) {
        let what = match self.trigger {
            "kill" => "unplanned loss of the owner (killed through the API)",
            _ => "planned move (vip move)",
        };
        let count = |p: &str| self.per_flow.iter().filter(|f| f.proto == p).count();
        let v4 = self.per_flow.iter().filter(|f| f.target.is_ipv4()).count();
        println!("drill of VIP group {:?}: {what}", self.group);
        println!(
            "  flows     {} ({} tcp, {} udp; {} IPv4, {} IPv6), {} messages/s each, {:.1} s",
            self.flows,
            count("tcp"),
            count("udp"),
            v4,
            self.flows - v4,
            self.rate_per_flow,
            self.duration_s
        );
        println!(
            "  before    node {} ({}) owned the group; {}",
            self.before.node,
            self.before.addr,
            in_table(&self.before, self.flows)
        );
        println!("  event     at {:.3} s", self.event_at_s);
        match &self.after {
            Some(a) => println!(
                "  after     node {} ({}) owns the group{}; {}",
                a.node,
                a.addr,
                a.owner_seen_after_ms
                    .map(|m| format!(", named owner {m:.0} ms after the event"))
                    .unwrap_or_default(),
                in_table(a, self.flows)
            ),
            None => println!("  after     no other director took the group over"),
        }
        match self.takeover_ms {
            Some(t) => {
                println!("  takeover  {t:.1} ms (first reply to a message sent after the event)")
            }
            None => println!("  takeover  none: no message sent after the event was answered"),
        }
        println!("  broken    {} of {}", self.broken, self.flows);
        println!();
        let rows: Vec<Vec<String>> = self
            .per_flow
            .iter()
            .map(|f| {
                vec![
                    f.flow.to_string(),
                    f.proto.to_string(),
                    f.local.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
                    f.target.to_string(),
                    f.server.clone().unwrap_or_else(|| "-".into())
                        + &if f.server_changes > 0 {
                            format!(" (changed {}x)", f.server_changes)
                        } else {
                            String::new()
                        },
                    f.sent.to_string(),
                    f.replies.to_string(),
                    f.recovered_ms
                        .map(|m| format!("{m:.1} ms"))
                        .unwrap_or_else(|| "-".into()),
                    format!("{:.1} ms", f.longest_stall_ms),
                    match &f.why {
                        None => "ok".into(),
                        Some(w) => format!("BROKEN: {w}"),
                    },
                ]
            })
            .collect();
        crate::output::table(
            &[
                "FLOW",
                "PROTO",
                "LOCAL",
                "TARGET",
                "SERVER",
                "SENT",
                "REPLIES",
                "RECOVERED",
                "LONGEST-STALL",
                "RESULT",
            ],
            &rows,
        );
        println!();
        if self.passed {
            println!("PASS: every flow survived the {}", self.trigger);
        } else if self.broken > 0 {
            println!("FAIL: {} of {} flows broke", self.broken, self.flows);
        } else {
            println!("FAIL: the group did not move to another director");
        }
    }
}

fn in_table(d: &Director, flows: usize) -> String {
    match d.flows_in_table {
        Some(n) => format!("its connection table held {n} of the {flows} flows"),
        None => "its connection table could not be read".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::flow::Fault;
    use super::super::flow::Proto;
    use super::*;

    fn spec() -> FlowSpec {
        FlowSpec {
            id: 1,
            proto: Proto::Udp,
            service: "udp/192.0.2.1:8080".into(),
            target: "192.0.2.1:8080".parse().unwrap(),
        }
    }

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// Messages every 100 ms from 0 to 1900 ms; each answered 1 ms later except those sent in
    /// [outage_from, outage_to), which are lost.
    fn log(outage_from: u64, outage_to: u64) -> FlowLog {
        let mut l = FlowLog::default();
        for i in 0..20u32 {
            let t = u64::from(i) * 100;
            l.sent.push(d(t));
            if !(outage_from..outage_to).contains(&t) {
                l.replies.push((i, d(t + 1)));
            }
        }
        l
    }

    #[test]
    fn recovery_counts_only_messages_sent_after_the_event() {
        // Event at 950 ms; 1000..1300 lost; first message after the event to be answered is
        // the one sent at 1300 (answered at 1301).
        let r = analyse(&spec(), &log(1000, 1300), d(950), d(2000), d(300));
        assert_eq!(r.recovered_ms, Some(351.0));
        assert!(!r.broken);
        assert_eq!(r.lost, 3);
        // Longest stall: 901 -> 1301.
        assert_eq!(r.longest_stall_ms, 400.0);
    }

    #[test]
    fn a_reply_in_flight_at_the_event_is_not_a_takeover() {
        // The message sent at 900 is answered at 901 — after an event at 900.5 — but it was
        // sent before it: it says nothing about the new owner.
        let mut l = log(1000, 1300);
        l.replies.retain(|(s, _)| *s != 9);
        l.replies.push((9, d(1001)));
        let r = analyse(&spec(), &l, Duration::from_micros(900_500), d(2000), d(300));
        assert_eq!(r.recovered_ms, Some(1301.0 - 900.5));
    }

    #[test]
    fn silent_or_faulted_flows_are_broken() {
        let r = analyse(&spec(), &log(1000, 5000), d(950), d(2000), d(300));
        assert!(r.broken);
        assert_eq!(r.recovered_ms, None);
        // Silent from 901 to the end of sending.
        assert_eq!(r.longest_stall_ms, 1099.0);
        // Answered after the event, then silent to the end.
        let r = analyse(&spec(), &log(1200, 5000), d(950), d(2000), d(300));
        assert!(r.broken);
        assert_eq!(r.recovered_ms, Some(51.0));
        assert!(r.why.unwrap().contains("stalled for good"));
        let mut l = log(0, 0);
        l.fault = Some(Fault {
            at: d(1200),
            what: "receive: Connection reset by peer".into(),
        });
        let r = analyse(&spec(), &l, d(950), d(2000), d(300));
        assert!(r.broken);
        assert!(r.why.unwrap().contains("reset"));
    }

    #[test]
    fn the_report_takes_the_fastest_recovery_and_needs_a_new_owner() {
        let before = Director {
            node: 1,
            addr: "a".into(),
            flows_in_table: Some(2),
            owner_seen_after_ms: None,
        };
        let after = Director {
            node: 2,
            ..before.clone()
        };
        let flows = vec![
            analyse(&spec(), &log(1000, 1300), d(950), d(2000), d(300)),
            analyse(&spec(), &log(1000, 1100), d(950), d(2000), d(300)),
        ];
        let h = |trigger| Header {
            group: "web".into(),
            trigger,
            rate: 10,
            duration: d(2000),
            event: d(950),
        };
        let r = Report::new(h("kill"), before.clone(), Some(after), flows.clone());
        assert!(r.passed);
        assert_eq!(r.takeover_ms, Some(151.0));
        assert_eq!(r.broken, 0);
        assert_eq!(r.max_stall_ms, 400.0);
        let r = Report::new(h("move"), before.clone(), Some(before), flows);
        assert!(!r.passed, "the owner never changed");
    }
}
