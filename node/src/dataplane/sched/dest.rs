//! A real server as the schedulers see it: its configured weight and thresholds, and the live
//! connection counters the engine's packet threads keep.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};

use crate::model::RealServer;

/// One real server (IPVS "destination").
///
/// The engine keeps one `Arc<Dest>` per real server for as long as the real server exists, across
/// scheduler rebuilds, so that connection entries can keep decrementing the counters of the
/// server they were bound to. Every field is atomic: packet threads update the counters, the
/// control path updates weight and thresholds, schedulers read them all without locks.
///
/// Counters follow IPVS: `active` counts established (for TCP) connections, `inactive` the
/// others, `persistent` the persistence templates. Overload (the `-x`/`-y` thresholds) is
/// judged on `active + inactive`, as `ip_vs_dest_totalconns` does.
#[derive(Debug)]
pub struct Dest {
    addr: SocketAddr,
    weight: AtomicU32,
    /// The latest non-zero weight (IPVS `last_weight`): what mh builds its table from, so that
    /// quiescing a server (weight 0) keeps its slots and flows of the others do not move.
    last_weight: AtomicU32,
    upper: AtomicU32,
    lower: AtomicU32,
    active: AtomicU32,
    inactive: AtomicU32,
    persistent: AtomicU32,
    overloaded: AtomicBool,
}

impl Dest {
    /// A server with no connections. `upper` = 0 means no limit; `lower` = 0 means "resume below
    /// ¾ of `upper`".
    pub fn new(addr: SocketAddr, weight: u32, upper: u32, lower: u32) -> Self {
        Self {
            addr,
            weight: AtomicU32::new(weight),
            last_weight: AtomicU32::new(weight),
            upper: AtomicU32::new(upper),
            lower: AtomicU32::new(lower),
            active: AtomicU32::new(0),
            inactive: AtomicU32::new(0),
            persistent: AtomicU32::new(0),
            overloaded: AtomicBool::new(false),
        }
    }

    /// The scheduler's view of a configured real server.
    pub fn from_real(real: &RealServer) -> Self {
        Self::new(
            real.addr,
            real.weight,
            real.upper_threshold,
            real.lower_threshold,
        )
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Current weight; 0 = quiesced (no new connections).
    pub fn weight(&self) -> u32 {
        self.weight.load(Relaxed)
    }

    /// The latest non-zero weight (the initial weight if it was never non-zero).
    pub fn last_weight(&self) -> u32 {
        self.last_weight.load(Relaxed)
    }

    /// Changes the weight in place (counters are kept). The least-connection family reads the
    /// new weight at once; wrr, sh, dh and mh derive tables from weights, so the service's
    /// scheduler must be rebuilt ([`super::rebuild`]) after a weight change, as IPVS does in its
    /// `upd_dest` hook.
    pub fn set_weight(&self, weight: u32) {
        if weight != 0 {
            self.last_weight.store(weight, Relaxed);
        }
        self.weight.store(weight, Relaxed);
    }

    /// (upper, lower) connection thresholds; 0 = unset.
    pub fn thresholds(&self) -> (u32, u32) {
        (self.upper.load(Relaxed), self.lower.load(Relaxed))
    }

    /// Changes the thresholds and re-judges overload against the current counters.
    pub fn set_thresholds(&self, upper: u32, lower: u32) {
        self.upper.store(upper, Relaxed);
        self.lower.store(lower, Relaxed);
        self.update_overload();
    }

    pub fn active(&self) -> u32 {
        self.active.load(Relaxed)
    }

    pub fn inactive(&self) -> u32 {
        self.inactive.load(Relaxed)
    }

    pub fn persistent(&self) -> u32 {
        self.persistent.load(Relaxed)
    }

    /// `active + inactive`, what the thresholds are compared with (`ip_vs_dest_totalconns`).
    pub fn total_conns(&self) -> u64 {
        u64::from(self.active()) + u64::from(self.inactive())
    }

    /// IPVS's connection overhead: `active * 256 + inactive` (`ip_vs_dest_conn_overhead`).
    pub fn overhead(&self) -> u64 {
        (u64::from(self.active()) << 8) + u64::from(self.inactive())
    }

    /// True while the upper threshold has been reached and the count has not yet fallen below
    /// the lower one (IPVS `IP_VS_DEST_F_OVERLOAD`). Every scheduler skips such a server.
    pub fn is_overloaded(&self) -> bool {
        self.overloaded.load(Relaxed)
    }

    /// Can take a new connection: weight > 0 and not overloaded.
    pub fn is_available(&self) -> bool {
        self.weight() > 0 && !self.is_overloaded()
    }

    /// A connection was bound to this server (a new one, or one learnt from sync);
    /// `active` says which counter it starts in. Re-judges overload.
    pub fn conn_bound(&self, active: bool) {
        self.counter(active).fetch_add(1, Relaxed);
        self.update_overload();
    }

    /// A connection bound to this server went away. Re-judges overload.
    pub fn conn_unbound(&self, active: bool) {
        dec(self.counter(active));
        self.update_overload();
    }

    /// A connection moved from inactive to active (e.g. TCP SYN_RECV -> ESTABLISHED). The total
    /// does not change, so neither does overload.
    pub fn conn_activated(&self) {
        dec(&self.inactive);
        self.active.fetch_add(1, Relaxed);
    }

    /// A connection moved from active to inactive (e.g. ESTABLISHED -> FIN_WAIT).
    pub fn conn_deactivated(&self) {
        dec(&self.active);
        self.inactive.fetch_add(1, Relaxed);
    }

    /// A persistence template was bound to / released from this server. Templates are counted
    /// apart and do not count towards the thresholds, as in IPVS.
    pub fn template_bound(&self) {
        self.persistent.fetch_add(1, Relaxed);
    }

    pub fn template_unbound(&self) {
        dec(&self.persistent);
    }

    /// Sets the counters directly (tests, and a resync that recounts the table), then re-judges
    /// overload.
    pub fn set_counters(&self, active: u32, inactive: u32) {
        self.active.store(active, Relaxed);
        self.inactive.store(inactive, Relaxed);
        self.update_overload();
    }

    /// The threshold hysteresis, as IPVS's `ip_vs_bind_dest` / `ip_vs_unbind_dest`:
    /// - no upper threshold: never overloaded;
    /// - `active + inactive >= upper`: overloaded;
    /// - cleared when the total falls *below* `lower`, or, when `lower` is 0, below ¾ of
    ///   `upper` (`total * 4 < upper * 3`, IPVS's exact arithmetic);
    /// - in between, the flag keeps its value.
    ///
    /// The counter helpers above call it; call it after changing counters any other way.
    pub fn update_overload(&self) {
        let (upper, lower) = self.thresholds();
        if upper == 0 {
            self.overloaded.store(false, Relaxed);
            return;
        }
        let total = self.total_conns();
        let upper = u64::from(upper);
        if total >= upper {
            self.overloaded.store(true, Relaxed);
        } else if (lower != 0 && total < u64::from(lower)) || (lower == 0 && total * 4 < upper * 3)
        {
            self.overloaded.store(false, Relaxed);
        }
    }

    fn counter(&self, active: bool) -> &AtomicU32 {
        if active { &self.active } else { &self.inactive }
    }
}

/// Decrements without wrapping below zero (a late unbind after a counter reset must not turn
/// into 4 billion connections).
fn dec(counter: &AtomicU32) {
    let _ = counter.fetch_update(Relaxed, Relaxed, |v| v.checked_sub(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(upper: u32, lower: u32) -> Dest {
        Dest::new("192.0.2.10:80".parse().unwrap(), 1, upper, lower)
    }

    #[test]
    fn overload_sets_at_upper_and_clears_below_lower() {
        let d = dest(10, 5);
        for _ in 0..9 {
            d.conn_bound(true);
        }
        assert!(!d.is_overloaded());
        d.conn_bound(false); // 10 = upper
        assert!(d.is_overloaded() && !d.is_available());
        // Hysteresis: 9..5 still overloaded, < 5 clears.
        for _ in 0..5 {
            d.conn_unbound(true);
        }
        assert_eq!(d.total_conns(), 5);
        assert!(d.is_overloaded());
        d.conn_unbound(true);
        assert_eq!(d.total_conns(), 4);
        assert!(!d.is_overloaded());
        // Climbing back does not re-set it before upper.
        for _ in 0..5 {
            d.conn_bound(true);
        }
        assert_eq!(d.total_conns(), 9);
        assert!(!d.is_overloaded());
    }

    #[test]
    fn overload_without_lower_uses_three_quarters() {
        let d = dest(10, 0);
        d.set_counters(10, 0);
        assert!(d.is_overloaded());
        d.set_counters(8, 0); // 32 < 30? no
        assert!(d.is_overloaded());
        d.set_counters(7, 0); // 28 < 30: cleared (IPVS: total*4 < upper*3)
        assert!(!d.is_overloaded());
    }

    #[test]
    fn state_moves_keep_total_and_counters_never_wrap() {
        let d = dest(2, 1);
        d.conn_bound(false);
        d.conn_activated();
        assert_eq!((d.active(), d.inactive()), (1, 0));
        d.conn_deactivated();
        assert_eq!((d.active(), d.inactive()), (0, 1));
        d.conn_unbound(false);
        d.conn_unbound(false);
        assert_eq!((d.active(), d.inactive()), (0, 0));
        d.template_bound();
        d.template_unbound();
        d.template_unbound();
        assert_eq!(d.persistent(), 0);
    }

    #[test]
    fn thresholds_change_rejudges_and_weight_keeps_last_nonzero() {
        let d = dest(10, 0);
        d.set_counters(10, 0);
        assert!(d.is_overloaded());
        d.set_thresholds(20, 0);
        assert!(!d.is_overloaded());
        d.set_thresholds(0, 0);
        assert!(!d.is_overloaded());
        d.set_weight(5);
        d.set_weight(0);
        assert_eq!((d.weight(), d.last_weight()), (0, 5));
        assert!(!d.is_available());
        assert_eq!(d.overhead(), 10 * 256);
    }
}
