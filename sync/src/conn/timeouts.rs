//! Per-state timeouts, in seconds, with IPVS's defaults.

use std::sync::atomic::{AtomicU32, Ordering};

use super::state::{SctpState, TcpState, proto};

/// Timeouts in seconds. `Default` gives the IPVS defaults (`tcp_timeouts`, `sctp_timeouts`,
/// `udp_timeouts` in the kernel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Indexed by `TcpState as usize`.
    pub tcp: [u32; TcpState::COUNT],
    /// Indexed by `SctpState as usize`.
    pub sctp: [u32; SctpState::COUNT],
    pub udp: u32,
    /// ESP, AH, ICMP and any other protocol without states. IPVS has no per-state table for
    /// these; Fulcrum uses the UDP default so such flows outlive short gaps.
    pub other: u32,
    /// How long an expired persistence template that still controls connections is kept
    /// before it is checked again (IPVS re-arms it for 60 s in `ip_vs_conn_expire`).
    pub template_recheck: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        let mut tcp = [0u32; TcpState::COUNT];
        tcp[TcpState::None as usize] = 2;
        tcp[TcpState::Established as usize] = 900;
        tcp[TcpState::SynSent as usize] = 120;
        tcp[TcpState::SynRecv as usize] = 60;
        tcp[TcpState::FinWait as usize] = 120;
        tcp[TcpState::TimeWait as usize] = 120;
        tcp[TcpState::Close as usize] = 10;
        tcp[TcpState::CloseWait as usize] = 60;
        tcp[TcpState::LastAck as usize] = 30;
        tcp[TcpState::Listen as usize] = 120;
        tcp[TcpState::SynAck as usize] = 120;

        // IP_VS_SCTP_MAX_RTO is (60 + 1) s; INIT1 and REJECTED are (0 + 3 + 1) s.
        let mut sctp = [61u32; SctpState::COUNT];
        sctp[SctpState::None as usize] = 2;
        sctp[SctpState::Init1 as usize] = 4;
        sctp[SctpState::Established as usize] = 900;
        sctp[SctpState::Rejected as usize] = 4;

        Timeouts {
            tcp,
            sctp,
            udp: 300,
            other: 300,
            template_recheck: 60,
        }
    }
}

impl Timeouts {
    /// `ipvsadm --set tcp tcpfin udp`: ESTABLISHED, FIN_WAIT and UDP; 0 keeps the current value.
    pub fn set_ipvsadm(&mut self, tcp: u32, tcpfin: u32, udp: u32) {
        if tcp != 0 {
            self.tcp[TcpState::Established as usize] = tcp;
        }
        if tcpfin != 0 {
            self.tcp[TcpState::FinWait as usize] = tcpfin;
        }
        if udp != 0 {
            self.udp = udp;
        }
    }

    /// The three values `ipvsadm -L --timeout` prints: (tcp, tcpfin, udp).
    pub fn ipvsadm(&self) -> (u32, u32, u32) {
        (
            self.tcp[TcpState::Established as usize],
            self.tcp[TcpState::FinWait as usize],
            self.udp,
        )
    }

    /// Timeout for a (non-template) connection of `protocol` in `state`.
    pub fn for_state(&self, protocol: u8, state: u8) -> u32 {
        match protocol {
            proto::TCP => self.tcp.get(state as usize).copied().unwrap_or(self.tcp[0]),
            proto::SCTP => self
                .sctp
                .get(state as usize)
                .copied()
                .unwrap_or(self.sctp[0]),
            proto::UDP => self.udp,
            _ => self.other,
        }
    }
}

/// The table's live copy: packet threads read single atomics, control code may change them
/// at run time (`ipvsadm --set`) without stopping traffic.
pub(crate) struct AtomicTimeouts {
    tcp: [AtomicU32; TcpState::COUNT],
    sctp: [AtomicU32; SctpState::COUNT],
    udp: AtomicU32,
    other: AtomicU32,
    template_recheck: AtomicU32,
}

impl AtomicTimeouts {
    pub(crate) fn new(t: &Timeouts) -> Self {
        AtomicTimeouts {
            tcp: t.tcp.map(AtomicU32::new),
            sctp: t.sctp.map(AtomicU32::new),
            udp: AtomicU32::new(t.udp),
            other: AtomicU32::new(t.other),
            template_recheck: AtomicU32::new(t.template_recheck),
        }
    }

    pub(crate) fn store(&self, t: &Timeouts) {
        for (a, v) in self.tcp.iter().zip(t.tcp) {
            a.store(v, Ordering::Relaxed);
        }
        for (a, v) in self.sctp.iter().zip(t.sctp) {
            a.store(v, Ordering::Relaxed);
        }
        self.udp.store(t.udp, Ordering::Relaxed);
        self.other.store(t.other, Ordering::Relaxed);
        self.template_recheck
            .store(t.template_recheck, Ordering::Relaxed);
    }

    pub(crate) fn load(&self) -> Timeouts {
        Timeouts {
            tcp: std::array::from_fn(|i| self.tcp[i].load(Ordering::Relaxed)),
            sctp: std::array::from_fn(|i| self.sctp[i].load(Ordering::Relaxed)),
            udp: self.udp.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
            template_recheck: self.template_recheck.load(Ordering::Relaxed),
        }
    }

    /// Timeout of a connection state; states were validated on insert, out-of-range ones fall
    /// back to state 0 rather than panicking on the packet path.
    #[inline]
    pub(crate) fn for_state(&self, protocol: u8, state: u8) -> u32 {
        let a = match protocol {
            proto::TCP => self.tcp.get(state as usize).unwrap_or(&self.tcp[0]),
            proto::SCTP => self.sctp.get(state as usize).unwrap_or(&self.sctp[0]),
            proto::UDP => &self.udp,
            _ => &self.other,
        };
        a.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn template_recheck(&self) -> u32 {
        self.template_recheck.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipvs_defaults_and_ipvsadm_set() {
        let mut t = Timeouts::default();
        assert_eq!(t.ipvsadm(), (900, 120, 300));
        assert_eq!(t.for_state(proto::TCP, TcpState::SynRecv as u8), 60);
        assert_eq!(t.for_state(proto::TCP, TcpState::Close as u8), 10);
        assert_eq!(t.for_state(proto::TCP, TcpState::LastAck as u8), 30);
        assert_eq!(t.for_state(proto::SCTP, SctpState::Established as u8), 900);
        assert_eq!(t.for_state(proto::ESP, 0), 300);
        t.set_ipvsadm(3600, 0, 60);
        assert_eq!(t.ipvsadm(), (3600, 120, 60));
        let a = AtomicTimeouts::new(&t);
        assert_eq!(a.load(), t);
        assert_eq!(a.for_state(proto::TCP, TcpState::Established as u8), 3600);
    }
}
