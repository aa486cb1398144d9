//! The leader's decision for one VIP group, as a pure function of what it knows.

use std::collections::BTreeSet;

use super::registry::Handoff;
use crate::state::VipOwner;

/// Everything the leader knows about one group at one moment.
#[derive(Debug, Clone)]
pub struct GroupView {
    pub name: String,
    pub assigned: VipOwner,
    pub preferred: Option<u64>,
    pub preempt: bool,
    /// Directors that may own it (members, not witnesses).
    pub directors: BTreeSet<u64>,
    /// Directors that renewed their lease within the last lease period.
    pub alive: BTreeSet<u64>,
    /// Directors renewing steadily for the preempt delay.
    pub settled: BTreeSet<u64>,
    /// No director can still be acting on the group (its last holder's lease is over).
    pub lapsed: bool,
    pub handoff: Option<Handoff>,
    /// The directors the assigned owner's connection sync last reported current (None: no
    /// report). A new owner is picked among them while one of them is alive, so the flows
    /// survive the move.
    pub sync_current: Option<BTreeSet<u64>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Keep,
    /// Commit `AssignVip { group, owner, epoch }`.
    Assign {
        owner: Option<u64>,
    },
    /// Stop granting the group to `from`, for a move to `to`.
    BeginHandoff {
        from: u64,
        to: Option<u64>,
    },
}

/// Who should take a group that has no (live) owner: the preferred owner when it is up, else
/// the lowest-numbered live director (deterministic, so every leader agrees).
fn candidate(v: &GroupView, exclude: Option<u64>) -> Option<u64> {
    let ok = |n: &u64| v.directors.contains(n) && v.alive.contains(n) && Some(*n) != exclude;
    let current = |n: &u64| v.sync_current.as_ref().is_none_or(|c| c.contains(n));
    let pick = |pred: &dyn Fn(&u64) -> bool| {
        v.preferred
            .filter(|p| ok(p) && pred(p))
            .or_else(|| v.alive.iter().copied().find(|n| ok(n) && pred(n)))
    };
    // A director whose copy of the flows is current first; any live one if none is.
    pick(&current).or_else(|| pick(&|_| true))
}

/// Whether moving the group to `n` keeps its flows: `n` is current with the owner's sync (or
/// the owner does not report sync at all).
fn keeps_flows(v: &GroupView, n: u64) -> bool {
    v.sync_current.as_ref().is_none_or(|c| c.contains(&n))
}

pub fn plan(v: &GroupView) -> Decision {
    if let Some(h) = &v.handoff {
        // A move is under way: finish it once the old holder has stopped.
        if h.released || v.lapsed {
            let to =
                h.to.filter(|t| v.directors.contains(t) && v.alive.contains(t));
            let owner = to.or_else(|| candidate(v, Some(h.from)));
            return if owner == v.assigned.owner {
                Decision::Keep
            } else {
                Decision::Assign { owner }
            };
        }
        return Decision::Keep;
    }
    match v.assigned.owner {
        Some(o) if v.directors.contains(&o) && v.alive.contains(&o) => {
            // Fail back to a returned preferred owner only with preempt, once it has settled.
            match v.preferred {
                Some(p)
                    if v.preempt
                        && p != o
                        && v.directors.contains(&p)
                        && v.settled.contains(&p)
                        && keeps_flows(v, p) =>
                {
                    Decision::BeginHandoff {
                        from: o,
                        to: Some(p),
                    }
                }
                _ => Decision::Keep,
            }
        }
        // Owner dead, cut off, or no longer a director: reassign once its lease is surely over.
        Some(o) => {
            if !v.lapsed {
                return Decision::Keep;
            }
            let next = candidate(v, Some(o));
            if next.is_some() || v.directors.contains(&o) {
                // Keep the dead owner recorded only while nobody else can take over.
                match next {
                    Some(n) => Decision::Assign { owner: Some(n) },
                    None => Decision::Keep,
                }
            } else {
                Decision::Assign { owner: None }
            }
        }
        None => match candidate(v, None) {
            Some(n) if v.lapsed => Decision::Assign { owner: Some(n) },
            _ => Decision::Keep,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(owner: Option<u64>, alive: &[u64]) -> GroupView {
        GroupView {
            name: "g".into(),
            assigned: VipOwner { owner, epoch: 3 },
            preferred: None,
            preempt: false,
            directors: BTreeSet::from([1, 2]),
            alive: alive.iter().copied().collect(),
            settled: alive.iter().copied().collect(),
            lapsed: true,
            handoff: None,
            sync_current: None,
        }
    }

    #[test]
    fn a_dead_owner_goes_to_a_director_its_sync_kept_current() {
        let mut v = view(Some(1), &[2, 3]);
        v.directors = BTreeSet::from([1, 2, 3]);
        // Node 2 fell behind; node 3 is current: 3 takes over although 2 is lower.
        v.sync_current = Some(BTreeSet::from([3]));
        assert_eq!(plan(&v), Decision::Assign { owner: Some(3) });
        // Even when 2 is preferred.
        v.preferred = Some(2);
        assert_eq!(plan(&v), Decision::Assign { owner: Some(3) });
        // No current director alive: availability first, the behind one takes over.
        v.alive = BTreeSet::from([2]);
        assert_eq!(plan(&v), Decision::Assign { owner: Some(2) });
    }

    #[test]
    fn fail_back_waits_until_the_returning_owner_is_current() {
        let mut v = view(Some(2), &[1, 2]);
        v.preferred = Some(1);
        v.preempt = true;
        v.sync_current = Some(BTreeSet::new());
        assert_eq!(plan(&v), Decision::Keep, "node 1 is still resyncing");
        v.sync_current = Some(BTreeSet::from([1]));
        assert_eq!(
            plan(&v),
            Decision::BeginHandoff {
                from: 2,
                to: Some(1)
            }
        );
    }

    #[test]
    fn unowned_group_goes_to_the_preferred_or_lowest_live_director() {
        assert_eq!(
            plan(&view(None, &[2, 1])),
            Decision::Assign { owner: Some(1) }
        );
        let mut v = view(None, &[1, 2]);
        v.preferred = Some(2);
        assert_eq!(plan(&v), Decision::Assign { owner: Some(2) });
        v.lapsed = false;
        assert_eq!(
            plan(&v),
            Decision::Keep,
            "a new leader waits for old leases to lapse"
        );
        assert_eq!(plan(&view(None, &[])), Decision::Keep, "nobody to take it");
    }

    #[test]
    fn a_dead_owner_is_replaced_only_after_its_lease_lapsed() {
        let mut v = view(Some(1), &[2]);
        v.lapsed = false;
        assert_eq!(plan(&v), Decision::Keep);
        v.lapsed = true;
        assert_eq!(plan(&v), Decision::Assign { owner: Some(2) });
        // A live owner stays.
        assert_eq!(plan(&view(Some(1), &[1, 2])), Decision::Keep);
        // Nobody alive: keep the record rather than churn.
        assert_eq!(plan(&view(Some(1), &[])), Decision::Keep);
    }

    #[test]
    fn preempt_moves_back_gracefully_only_when_enabled_and_settled() {
        let mut v = view(Some(2), &[1, 2]);
        v.preferred = Some(1);
        assert_eq!(plan(&v), Decision::Keep, "preempt off: no fail-back");
        v.preempt = true;
        assert_eq!(
            plan(&v),
            Decision::BeginHandoff {
                from: 2,
                to: Some(1)
            }
        );
        v.settled = BTreeSet::from([2]);
        assert_eq!(plan(&v), Decision::Keep, "preferred owner not settled yet");
    }

    #[test]
    fn a_handoff_completes_when_released_or_lapsed() {
        let mut v = view(Some(1), &[1, 2]);
        v.lapsed = false;
        v.handoff = Some(Handoff {
            from: 1,
            to: Some(2),
            revoked_seq: None,
            released: false,
        });
        assert_eq!(plan(&v), Decision::Keep);
        v.handoff = v.handoff.map(|h| Handoff {
            released: true,
            ..h
        });
        assert_eq!(plan(&v), Decision::Assign { owner: Some(2) });
        // Target gone meanwhile: someone else than the releasing owner.
        v.alive = BTreeSet::from([1]);
        assert_eq!(plan(&v), Decision::Assign { owner: None });
    }
}
