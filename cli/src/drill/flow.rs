//! The drill's flows: long-lived TCP connections and UDP flows (one socket, so one 5-tuple and
//! one connection entry on the director) that exchange numbered messages with
//! `fulcrum drill serve` — or any server that answers a line or datagram `M` with `NAME M`.
//!
//! Each message is `fdrill FLOW SEQ TOKEN`, TOKEN a checksum of (FLOW, SEQ), so an echo that
//! comes back garbled, from another flow or out of order is caught. A flow records when it sent
//! each message and when each verified reply arrived; the analysis ([`super::report`]) works on
//! those times only.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio::time::MissedTickBehavior;

/// Longest line or datagram a reply may be.
const MAX_REPLY: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FlowSpec {
    /// 1-based, as printed.
    pub id: usize,
    pub proto: Proto,
    /// The virtual service key the flow goes to.
    pub service: String,
    pub target: SocketAddr,
}

/// When flows send and stop, shared by all of them.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Time zero of every offset in a [`FlowLog`].
    pub start: Instant,
    /// Gap between two messages of one flow.
    pub interval: Duration,
    /// No message is sent after this.
    pub stop_sending: Instant,
    /// Replies still outstanding are given up at this point.
    pub stop: Instant,
    pub connect_timeout: Duration,
}

/// Something that breaks a flow: the connection failed or the data came back wrong.
#[derive(Debug, Clone)]
pub struct Fault {
    pub at: Duration,
    pub what: String,
}

/// What one flow saw. Times are offsets from [`Schedule::start`].
#[derive(Debug, Clone, Default)]
pub struct FlowLog {
    pub local: Option<SocketAddr>,
    /// The real server that answered last (the first word of its replies).
    pub server: Option<String>,
    /// How often the answering server changed (a UDP flow rescheduled elsewhere).
    pub server_changes: u32,
    /// Send time of message `seq`, at index `seq`.
    pub sent: Vec<Duration>,
    /// Every verified reply once: (seq, time received), in arrival order.
    pub replies: Vec<(u32, Duration)>,
    pub duplicates: u32,
    /// Errors a flow lives through (a UDP send or an ICMP error reported on the socket).
    pub soft_errors: u32,
    pub fault: Option<Fault>,
}

impl FlowLog {
    fn fail(&mut self, start: Instant, what: String) {
        if self.fault.is_none() {
            self.fault = Some(Fault {
                at: start.elapsed(),
                what,
            });
        }
    }

    fn note_server(&mut self, name: &str) {
        match &self.server {
            Some(s) if s == name => {}
            Some(_) => {
                self.server_changes += 1;
                self.server = Some(name.to_string());
            }
            None => self.server = Some(name.to_string()),
        }
    }
}

/// A checksum of (flow, seq) carried in each message (splitmix64).
fn token(flow: usize, seq: u32) -> u64 {
    let mut z = ((flow as u64) << 32 | u64::from(seq)).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn message(flow: usize, seq: u32) -> String {
    format!("fdrill {flow} {seq} {:016x}", token(flow, seq))
}

/// Checks a reply `NAME fdrill FLOW SEQ TOKEN` for this flow; gives (server name, seq).
pub fn parse_reply(flow: usize, reply: &str) -> Result<(&str, u32), String> {
    let bad = || format!("unexpected reply {:?}", truncate(reply, 80));
    let (name, echoed) = reply.split_once(' ').ok_or_else(bad)?;
    let mut words = echoed.split(' ');
    if words.next() != Some("fdrill") || words.next() != Some(flow.to_string().as_str()) {
        return Err(bad());
    }
    let seq: u32 = words.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    if echoed != message(flow, seq) || name.is_empty() {
        return Err(bad());
    }
    Ok((name, seq))
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Runs one flow to the end of the schedule (or until `abort`). Sends its id on `ready` once
/// the first reply is verified.
pub async fn run(
    spec: FlowSpec,
    sched: Schedule,
    phase: Duration,
    ready: mpsc::UnboundedSender<usize>,
    abort: watch::Receiver<bool>,
) -> FlowLog {
    match spec.proto {
        Proto::Tcp => tcp(spec, sched, phase, ready, abort).await,
        Proto::Udp => udp(spec, sched, phase, ready, abort).await,
    }
}

fn ticker(sched: &Schedule, phase: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(Instant::now() + phase, sched.interval);
    // A late tick is skipped, not sent in a burst: the flow keeps its rate.
    t.set_missed_tick_behavior(MissedTickBehavior::Skip);
    t
}

async fn tcp(
    spec: FlowSpec,
    sched: Schedule,
    phase: Duration,
    ready: mpsc::UnboundedSender<usize>,
    mut abort: watch::Receiver<bool>,
) -> FlowLog {
    let mut log = FlowLog::default();
    let start = sched.start;
    let stream =
        match tokio::time::timeout(sched.connect_timeout, TcpStream::connect(spec.target)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                log.fail(start, format!("connect: {e}"));
                return log;
            }
            Err(_) => {
                log.fail(start, "connect: timed out".into());
                return log;
            }
        };
    // Each message is one segment, sent at once (no Nagle wait behind a delayed ACK).
    let _ = stream.set_nodelay(true);
    log.local = stream.local_addr().ok();
    let (mut rd, mut wr) = stream.into_split();
    let mut tick = ticker(&sched, phase);
    let mut sending = true;
    let mut next_reply: u32 = 0;
    let mut pending: Vec<u8> = Vec::with_capacity(4 * MAX_REPLY);
    let mut chunk = [0u8; 4096];
    let stop = tokio::time::sleep_until(sched.stop);
    tokio::pin!(stop);
    loop {
        if !sending && next_reply as usize == log.sent.len() {
            break;
        }
        tokio::select! {
            _ = abort.changed() => break,
            _ = &mut stop => break,
            r = rd.read(&mut chunk) => {
                let n = match r {
                    Ok(0) => {
                        log.fail(start, "connection closed by the far end".into());
                        break;
                    }
                    Ok(n) => n,
                    Err(e) => {
                        log.fail(start, format!("receive: {e}"));
                        break;
                    }
                };
                pending.extend_from_slice(&chunk[..n]);
                while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=pos).collect();
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                    match parse_reply(spec.id, text.trim_end_matches('\r')) {
                        Ok((_, seq)) if seq != next_reply => {
                            log.fail(start, format!("reply {seq} arrived where {next_reply} was due"));
                        }
                        Ok((name, seq)) => {
                            let name = name.to_string();
                            log.note_server(&name);
                            log.replies.push((seq, start.elapsed()));
                            if seq == 0 {
                                let _ = ready.send(spec.id);
                            }
                            next_reply += 1;
                        }
                        Err(e) => log.fail(start, e),
                    }
                    if log.fault.is_some() {
                        break;
                    }
                }
                if log.fault.is_some() {
                    break;
                }
                if pending.len() > MAX_REPLY {
                    log.fail(start, "reply line too long".into());
                    break;
                }
            }
            _ = tick.tick(), if sending => {
                if Instant::now() >= sched.stop_sending {
                    sending = false;
                    continue;
                }
                let seq = log.sent.len() as u32;
                let mut m = message(spec.id, seq);
                m.push('\n');
                log.sent.push(start.elapsed());
                if let Err(e) = wr.write_all(m.as_bytes()).await {
                    log.fail(start, format!("send: {e}"));
                    break;
                }
            }
        }
    }
    log
}

async fn udp(
    spec: FlowSpec,
    sched: Schedule,
    phase: Duration,
    ready: mpsc::UnboundedSender<usize>,
    mut abort: watch::Receiver<bool>,
) -> FlowLog {
    let mut log = FlowLog::default();
    let start = sched.start;
    let bind: SocketAddr = if spec.target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => {
            log.fail(start, format!("bind: {e}"));
            return log;
        }
    };
    // Connected: the kernel drops datagrams from any other address (a reply must come from
    // the VIP) and reports ICMP errors on the socket.
    if let Err(e) = sock.connect(spec.target).await {
        log.fail(start, format!("connect: {e}"));
        return log;
    }
    log.local = sock.local_addr().ok();
    let mut got: Vec<bool> = Vec::new();
    let mut tick = ticker(&sched, phase);
    let mut sending = true;
    let mut buf = [0u8; MAX_REPLY];
    let stop = tokio::time::sleep_until(sched.stop);
    tokio::pin!(stop);
    loop {
        if !sending && log.replies.len() == log.sent.len() {
            break;
        }
        tokio::select! {
            _ = abort.changed() => break,
            _ = &mut stop => break,
            r = sock.recv(&mut buf) => match r {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    match parse_reply(spec.id, text.trim_end()) {
                        Ok((_, seq)) if seq as usize >= got.len() => {
                            log.fail(start, format!("reply {seq} to a message never sent"));
                        }
                        Ok((_, seq)) if got[seq as usize] => log.duplicates += 1,
                        Ok((name, seq)) => {
                            let name = name.to_string();
                            log.note_server(&name);
                            got[seq as usize] = true;
                            log.replies.push((seq, start.elapsed()));
                            if log.replies.len() == 1 {
                                let _ = ready.send(spec.id);
                            }
                        }
                        Err(e) => log.fail(start, e),
                    }
                }
                // ICMP errors (port unreachable while no one serves) come back here.
                Err(_) => log.soft_errors += 1,
            },
            _ = tick.tick(), if sending => {
                if Instant::now() >= sched.stop_sending {
                    sending = false;
                    continue;
                }
                let seq = log.sent.len() as u32;
                log.sent.push(start.elapsed());
                got.push(false);
                if sock.send(message(spec.id, seq).as_bytes()).await.is_err() {
                    log.soft_errors += 1;
                }
            }
        }
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_checked_word_for_word() {
        let m = message(3, 17);
        assert_eq!(parse_reply(3, &format!("rs1 {m}")), Ok(("rs1", 17)));
        // Another flow's message, a changed token, a missing name, junk.
        assert!(parse_reply(4, &format!("rs1 {m}")).is_err());
        let bad = m.replace(&m[m.len() - 2..], "zz");
        assert!(parse_reply(3, &format!("rs1 {bad}")).is_err());
        assert!(parse_reply(3, &m).is_err());
        assert!(parse_reply(3, "").is_err());
        assert!(parse_reply(3, &format!("rs1 {m} trailing")).is_err());
        assert_ne!(message(1, 2), message(2, 1));
    }
}
