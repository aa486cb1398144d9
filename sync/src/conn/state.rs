//! Protocol states and the IPVS TCP state machine.
//!
//! State numbers are IPVS's (`IP_VS_TCP_S_*`, `IP_VS_SCTP_S_*`, `IP_VS_UDP_S_NORMAL`), so the
//! sync codecs can put them on the wire unchanged. The TCP transition table is the one in the
//! kernel's `ip_vs_proto_tcp.c` (`tcp_states`, the non-`secure_tcp` table), including its
//! INPUT_ONLY third part, used while a connection has seen no reply (DR/TUN).

/// IP protocol numbers the table knows by name.
pub mod proto {
    /// IPPROTO_IP: the "any protocol" value IPVS puts in fwmark persistence templates.
    pub const ANY: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}

/// TCP header flag bits, as in byte 13 of the TCP header (pass that byte straight through).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// IPVS TCP connection states (`IP_VS_TCP_S_*`, same numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TcpState {
    None = 0,
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait = 4,
    TimeWait = 5,
    Close = 6,
    CloseWait = 7,
    LastAck = 8,
    Listen = 9,
    SynAck = 10,
}

impl TcpState {
    pub const COUNT: usize = 11;

    pub const ALL: [TcpState; TcpState::COUNT] = [
        TcpState::None,
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::SynAck,
    ];

    pub const fn from_u8(v: u8) -> Option<TcpState> {
        if (v as usize) < TcpState::COUNT {
            Some(TcpState::ALL[v as usize])
        } else {
            None
        }
    }

    /// The name `ipvsadm -Lnc` prints.
    pub const fn name(self) -> &'static str {
        match self {
            TcpState::None => "NONE",
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::SynAck => "SYNACK",
        }
    }

    /// Whether a connection in this state counts in the real server's active connections.
    ///
    /// This is current mainline's `tcp_state_active_table`: the handshake states count as
    /// active as well as ESTABLISHED (older kernels counted ESTABLISHED only), so lc/wlc see a
    /// burst of new connections before they complete.
    pub const fn is_active(self) -> bool {
        matches!(
            self,
            TcpState::Established | TcpState::SynSent | TcpState::SynRecv | TcpState::SynAck
        )
    }
}

/// IPVS SCTP association states (`IP_VS_SCTP_S_*`, same numbers).
///
/// Carried and timed out per state; the chunk-driven SCTP transition table is not implemented
/// yet (the engine sets SCTP states through `ConnTable::set_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SctpState {
    None = 0,
    Init1 = 1,
    Init = 2,
    CookieSent = 3,
    CookieReplied = 4,
    CookieWait = 5,
    Cookie = 6,
    CookieEchoed = 7,
    Established = 8,
    ShutdownSent = 9,
    ShutdownReceived = 10,
    ShutdownAckSent = 11,
    Rejected = 12,
    Closed = 13,
}

impl SctpState {
    pub const COUNT: usize = 14;

    pub const ALL: [SctpState; SctpState::COUNT] = [
        SctpState::None,
        SctpState::Init1,
        SctpState::Init,
        SctpState::CookieSent,
        SctpState::CookieReplied,
        SctpState::CookieWait,
        SctpState::Cookie,
        SctpState::CookieEchoed,
        SctpState::Established,
        SctpState::ShutdownSent,
        SctpState::ShutdownReceived,
        SctpState::ShutdownAckSent,
        SctpState::Rejected,
        SctpState::Closed,
    ];

    pub const fn from_u8(v: u8) -> Option<SctpState> {
        if (v as usize) < SctpState::COUNT {
            Some(SctpState::ALL[v as usize])
        } else {
            None
        }
    }

    /// The kernel's state names (`sctp_state_name_table`).
    pub const fn name(self) -> &'static str {
        match self {
            SctpState::None => "NONE",
            SctpState::Init1 => "INIT1",
            SctpState::Init => "INIT",
            SctpState::CookieSent => "C-SENT",
            SctpState::CookieReplied => "C-REPLIED",
            SctpState::CookieWait => "C-WAIT",
            SctpState::Cookie => "COOKIE",
            SctpState::CookieEchoed => "C-ECHOED",
            SctpState::Established => "ESTABLISHED",
            SctpState::ShutdownSent => "S-SENT",
            SctpState::ShutdownReceived => "S-RECEIVED",
            SctpState::ShutdownAckSent => "S-ACK-SENT",
            SctpState::Rejected => "REJECTED",
            SctpState::Closed => "CLOSED",
        }
    }

    pub const fn is_active(self) -> bool {
        matches!(self, SctpState::Established)
    }
}

/// Template states (`IP_VS_CTPL_S_*`).
pub mod template_state {
    pub const NONE: u8 = 0;
    pub const ASSURED: u8 = 1;
    pub const COUNT: u8 = 2;
}

/// Number of valid states for entries of `protocol` (1 for single-state protocols).
pub const fn state_count(protocol: u8, template: bool) -> u8 {
    if template {
        return template_state::COUNT;
    }
    match protocol {
        proto::TCP => TcpState::COUNT as u8,
        proto::SCTP => SctpState::COUNT as u8,
        _ => 1,
    }
}

/// Whether an entry of `protocol` in `state` counts as an active connection.
pub const fn state_is_active(protocol: u8, state: u8) -> bool {
    match protocol {
        proto::TCP => match TcpState::from_u8(state) {
            Some(s) => s.is_active(),
            None => false,
        },
        proto::SCTP => match SctpState::from_u8(state) {
            Some(s) => s.is_active(),
            None => false,
        },
        // IPVS never moves UDP (or other single-state) connections out of "inactive".
        _ => false,
    }
}

/// What `ipvsadm -Lnc` prints in the state column.
pub const fn state_name(protocol: u8, state: u8, template: bool) -> &'static str {
    if template {
        return match state {
            template_state::NONE => "NONE",
            template_state::ASSURED => "ASSURED",
            _ => "ERR!",
        };
    }
    match protocol {
        proto::TCP => match TcpState::from_u8(state) {
            Some(s) => s.name(),
            None => "ERR!",
        },
        proto::SCTP => match SctpState::from_u8(state) {
            Some(s) => s.name(),
            None => "ERR!",
        },
        proto::UDP => "UDP",
        proto::ANY => "NONE",
        _ => "ERR!",
    }
}

/// Which way a packet travels relative to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client → virtual service (every forwarding method).
    Input,
    /// Real server → client, seen only when replies come back through the director (NAT).
    Output,
}

/// Row offset of the three parts of the table, as `TCP_DIR_*` in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TcpDir {
    Input = 0,
    Output = 1,
    /// Input while no output packet has been seen (`IP_VS_CONN_F_NOOUTPUT`).
    InputOnly = 2,
}

// Short names keep the table readable as the kernel's is. NONE and SYNACK are never the
// target of a transition in the standard (non-`secure_tcp`) table, so they have no constant.
const S_ES: u8 = TcpState::Established as u8;
const S_SS: u8 = TcpState::SynSent as u8;
const S_SR: u8 = TcpState::SynRecv as u8;
const S_FW: u8 = TcpState::FinWait as u8;
const S_TW: u8 = TcpState::TimeWait as u8;
const S_CL: u8 = TcpState::Close as u8;
const S_CW: u8 = TcpState::CloseWait as u8;
const S_LA: u8 = TcpState::LastAck as u8;
const S_LI: u8 = TcpState::Listen as u8;

/// `TCP_STATES[dir][event][current]` with events syn, fin, ack, rst (kernel `tcp_states`).
#[rustfmt::skip]
const TCP_STATES: [[[u8; TcpState::COUNT]; 4]; 3] = [
    // INPUT      sNO   sES   sSS   sSR   sFW   sTW   sCL   sCW   sLA   sLI   sSA
    [
        /*syn*/ [S_SR, S_ES, S_ES, S_SR, S_SR, S_SR, S_SR, S_SR, S_SR, S_SR, S_SR],
        /*fin*/ [S_CL, S_CW, S_SS, S_TW, S_TW, S_TW, S_CL, S_CW, S_LA, S_LI, S_TW],
        /*ack*/ [S_ES, S_ES, S_SS, S_ES, S_FW, S_TW, S_CL, S_CW, S_CL, S_LI, S_ES],
        /*rst*/ [S_CL, S_CL, S_CL, S_SR, S_CL, S_CL, S_CL, S_CL, S_LA, S_LI, S_SR],
    ],
    // OUTPUT
    [
        /*syn*/ [S_SS, S_ES, S_SS, S_SR, S_SS, S_SS, S_SS, S_SS, S_SS, S_LI, S_SR],
        /*fin*/ [S_TW, S_FW, S_SS, S_TW, S_FW, S_TW, S_CL, S_TW, S_LA, S_LI, S_TW],
        /*ack*/ [S_ES, S_ES, S_SS, S_ES, S_FW, S_TW, S_CL, S_CW, S_LA, S_ES, S_ES],
        /*rst*/ [S_CL, S_CL, S_SS, S_CL, S_CL, S_TW, S_CL, S_CL, S_CL, S_CL, S_CL],
    ],
    // INPUT_ONLY
    [
        /*syn*/ [S_SR, S_ES, S_ES, S_SR, S_SR, S_SR, S_SR, S_SR, S_SR, S_SR, S_SR],
        /*fin*/ [S_CL, S_FW, S_SS, S_TW, S_FW, S_TW, S_CL, S_CW, S_LA, S_LI, S_TW],
        /*ack*/ [S_ES, S_ES, S_SS, S_ES, S_FW, S_TW, S_CL, S_CW, S_CL, S_LI, S_ES],
        /*rst*/ [S_CL, S_CL, S_CL, S_SR, S_CL, S_CL, S_CL, S_CL, S_LA, S_LI, S_CL],
    ],
];

/// Next TCP state after a packet with `flags` (kernel `set_tcp_state`).
///
/// The event is chosen by precedence RST > SYN > FIN > ACK; a segment with none of them
/// moves the connection to CLOSE, as the kernel does.
pub(crate) const fn tcp_next_state(current: TcpState, dir: TcpDir, flags: u8) -> TcpState {
    let event = if flags & tcp_flags::RST != 0 {
        3
    } else if flags & tcp_flags::SYN != 0 {
        0
    } else if flags & tcp_flags::FIN != 0 {
        1
    } else if flags & tcp_flags::ACK != 0 {
        2
    } else {
        return TcpState::Close;
    };
    TcpState::ALL[TCP_STATES[dir as usize][event][current as usize] as usize]
}

/// How a state change moves the entry between the real server's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    Unchanged,
    /// inactive → active: `active += 1; inactive -= 1`.
    BecameActive,
    /// active → inactive: `active -= 1; inactive += 1`.
    BecameInactive,
}

/// A state transition caused by a packet (or by `set_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateChange {
    /// Protocol state before the packet (IPVS number).
    pub old: u8,
    /// Protocol state after it.
    pub new: u8,
    /// What the engine must do to the real server's active/inactive counters.
    pub activity: Activity,
    /// The entry must go to the backups now (new state, refresh due, or adopted after a
    /// takeover); set by the table, which stamps the entry when it says so.
    pub sync: bool,
}

impl StateChange {
    pub const fn changed(&self) -> bool {
        self.old != self.new
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcp_flags::*;

    fn run(start: TcpState, steps: &[(TcpDir, u8)]) -> Vec<TcpState> {
        let mut s = start;
        steps
            .iter()
            .map(|&(d, f)| {
                s = tcp_next_state(s, d, f);
                s
            })
            .collect()
    }

    #[test]
    fn nat_open_close() {
        use TcpDir::*;
        use TcpState::*;
        let got = run(
            None,
            &[
                (Input, SYN),
                (Output, SYN | ACK),
                (Input, ACK),
                (Input, ACK | PSH),
                (Input, FIN | ACK),
                (Output, ACK),
                (Output, FIN | ACK),
                (Input, ACK),
            ],
        );
        assert_eq!(
            got,
            vec![
                SynRecv,
                SynRecv,
                Established,
                Established,
                CloseWait,
                CloseWait,
                TimeWait,
                TimeWait
            ]
        );
    }

    #[test]
    fn flag_precedence_and_no_flags() {
        use TcpState::*;
        // RST wins over everything else in the segment.
        assert_eq!(
            tcp_next_state(Established, TcpDir::Input, RST | ACK | SYN),
            Close
        );
        // SYN wins over FIN.
        assert_eq!(tcp_next_state(None, TcpDir::Input, SYN | FIN), SynRecv);
        // A segment with no known flag closes, as in the kernel.
        assert_eq!(tcp_next_state(Established, TcpDir::Input, PSH), Close);
    }

    #[test]
    fn active_table() {
        let active: Vec<_> = TcpState::ALL.iter().filter(|s| s.is_active()).collect();
        assert_eq!(
            active,
            vec![
                &TcpState::Established,
                &TcpState::SynSent,
                &TcpState::SynRecv,
                &TcpState::SynAck
            ]
        );
        assert!(!state_is_active(proto::UDP, 0));
        assert_eq!(state_name(proto::UDP, 0, false), "UDP");
        assert_eq!(state_name(proto::TCP, 3, false), "SYN_RECV");
        assert_eq!(state_name(proto::TCP, 0, true), "NONE");
    }
}
