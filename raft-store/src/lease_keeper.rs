//! The leader's lease clock. Only the leader decides that a lease expired,
//! and it does so by proposing `LeaseExpire` through the log, so followers'
//! clocks never matter. A new leader restarts every lease's full TTL from
//! the moment it takes over: a leader change can delay an expiry by up to
//! one TTL but never bring one forward.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::types::{Lease, LeaseId};

/// A lease's deadline, in milliseconds since the clock's epoch, and its
/// TTL: 16 bytes where an `Instant` and a `Duration` take 32, kept for
/// every lease (hundreds of thousands, one per binding).
#[derive(Debug, Clone, Copy)]
struct Timing {
    deadline_ms: u64,
    ttl_ms: u64,
}

#[derive(Default)]
struct ClockState {
    /// Term in which this node leads, if it does.
    leading_term: Option<u64>,
    /// When this node began leading: deadlines count from it.
    epoch: Option<Instant>,
    deadlines: HashMap<LeaseId, Timing>,
    /// The same deadlines in time order: a tick looks only at the expired
    /// ones, not at every lease.
    by_deadline: BTreeSet<(u64, LeaseId)>,
    /// Expiry proposed, not yet applied: keepalives are refused.
    expiring: HashSet<LeaseId>,
}

impl ClockState {
    fn ms_at(&self, now: Instant) -> u64 {
        self.epoch.map_or(0, |epoch| {
            u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
        })
    }

    /// Restarts lease `id`'s TTL from `now`.
    fn set_deadline(&mut self, id: LeaseId, now: Instant, ttl_ms: u64) {
        let timing = Timing {
            deadline_ms: self.ms_at(now).saturating_add(ttl_ms),
            ttl_ms,
        };
        if let Some(old) = self.deadlines.insert(id, timing) {
            self.by_deadline.remove(&(old.deadline_ms, id));
        }
        self.by_deadline.insert((timing.deadline_ms, id));
    }
}

/// What a keepalive found.
#[derive(Debug, PartialEq, Eq)]
pub enum KeepAlive {
    Renewed(Duration),
    NotFound,
    NotLeader,
}

/// Shared between the keeper task and the API's keepalive path.
#[derive(Clone, Default)]
pub struct LeaseClock {
    state: Arc<Mutex<ClockState>>,
}

impl LeaseClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        // A panic while holding this lock cannot leave it inconsistent
        // (every update is a single map operation), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn leading_term(&self) -> Option<u64> {
        self.lock().leading_term
    }

    /// Takes over as leader of `term`: every known lease gets a full TTL from now.
    pub fn start_leading(&self, term: u64, leases: impl IntoIterator<Item = Lease>, now: Instant) {
        let mut s = self.lock();
        s.leading_term = Some(term);
        s.epoch.get_or_insert(now);
        s.expiring.clear();
        for lease in leases {
            if !s.deadlines.contains_key(&lease.id) {
                s.set_deadline(lease.id, now, lease.ttl_ms);
            }
        }
    }

    pub fn stop_leading(&self) {
        let mut s = self.lock();
        *s = ClockState::default();
    }

    pub fn granted(&self, lease: &Lease, now: Instant) {
        let mut s = self.lock();
        if s.leading_term.is_some() {
            s.set_deadline(lease.id, now, lease.ttl_ms);
        }
    }

    pub fn removed(&self, id: LeaseId) {
        let mut s = self.lock();
        if let Some(old) = s.deadlines.remove(&id) {
            s.by_deadline.remove(&(old.deadline_ms, id));
        }
        s.expiring.remove(&id);
    }

    /// Restarts a lease's TTL. Call only after confirming leadership.
    pub fn keep_alive(&self, id: LeaseId, now: Instant) -> KeepAlive {
        let mut s = self.lock();
        if s.leading_term.is_none() {
            return KeepAlive::NotLeader;
        }
        if s.expiring.contains(&id) {
            return KeepAlive::NotFound;
        }
        match s.deadlines.get(&id) {
            Some(&Timing { ttl_ms, .. }) => {
                s.set_deadline(id, now, ttl_ms);
                KeepAlive::Renewed(Duration::from_millis(ttl_ms))
            }
            None => KeepAlive::NotFound,
        }
    }

    /// Leases past their deadline, now marked as expiring.
    pub fn take_expired(&self, now: Instant) -> Vec<LeaseId> {
        let mut s = self.lock();
        let now_ms = s.ms_at(now);
        let expired: Vec<LeaseId> = s
            .by_deadline
            .iter()
            .take_while(|(deadline_ms, _)| *deadline_ms <= now_ms)
            .map(|(_, id)| *id)
            .filter(|id| !s.expiring.contains(id))
            .collect();
        s.expiring.extend(expired.iter().copied());
        expired
    }

    /// The expiry proposal failed: let the next tick try again.
    pub fn expiry_failed(&self, id: LeaseId) {
        self.lock().expiring.remove(&id);
    }

    /// Time left on a lease, as the leader sees it.
    #[cfg(test)]
    pub fn remaining(&self, id: LeaseId, now: Instant) -> Option<Duration> {
        let s = self.lock();
        let now_ms = s.ms_at(now);
        s.deadlines
            .get(&id)
            .map(|t| Duration::from_millis(t.deadline_ms.saturating_sub(now_ms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: LeaseId, ttl_ms: u64) -> Lease {
        Lease { id, ttl_ms }
    }

    #[test]
    fn expires_only_after_ttl_and_keepalive_restarts_it() {
        let clock = LeaseClock::default();
        let t0 = Instant::now();
        clock.start_leading(1, [lease(7, 1000)], t0);
        assert!(clock
            .take_expired(t0 + Duration::from_millis(999))
            .is_empty());
        assert_eq!(
            clock.keep_alive(7, t0 + Duration::from_millis(900)),
            KeepAlive::Renewed(Duration::from_millis(1000))
        );
        assert!(clock
            .take_expired(t0 + Duration::from_millis(1899))
            .is_empty());
        assert_eq!(
            clock.take_expired(t0 + Duration::from_millis(1900)),
            vec![7]
        );
        // Proposed once, and keepalives now fail.
        assert!(clock
            .take_expired(t0 + Duration::from_millis(5000))
            .is_empty());
        assert_eq!(clock.keep_alive(7, t0), KeepAlive::NotFound);
    }

    #[test]
    fn new_leader_restarts_every_ttl_from_takeover() {
        let clock = LeaseClock::default();
        let takeover = Instant::now() + Duration::from_secs(100);
        clock.start_leading(2, [lease(1, 500), lease(2, 3000)], takeover);
        assert!(clock
            .take_expired(takeover + Duration::from_millis(499))
            .is_empty());
        assert_eq!(
            clock.take_expired(takeover + Duration::from_millis(500)),
            vec![1]
        );
        assert_eq!(
            clock.remaining(2, takeover + Duration::from_millis(1000)),
            Some(Duration::from_millis(2000))
        );
    }

    #[test]
    fn follower_neither_expires_nor_renews() {
        let clock = LeaseClock::default();
        let now = Instant::now();
        clock.granted(&lease(1, 10), now);
        assert!(clock.take_expired(now + Duration::from_secs(10)).is_empty());
        assert_eq!(clock.keep_alive(1, now), KeepAlive::NotLeader);
    }

    #[test]
    fn only_leases_past_their_deadline_expire_in_deadline_order() {
        let clock = LeaseClock::default();
        let t0 = Instant::now();
        clock.start_leading(1, (1..=1000).map(|id| lease(id, 1000 + id)), t0);
        // A keepalive moves lease 1 behind the others; 3 is revoked.
        clock.keep_alive(1, t0 + Duration::from_millis(500));
        clock.removed(3);
        assert_eq!(
            clock.take_expired(t0 + Duration::from_millis(1004)),
            vec![2, 4]
        );
        assert_eq!(
            clock.take_expired(t0 + Duration::from_millis(1501)),
            (5..=500).chain([1, 501]).collect::<Vec<_>>()
        );
        clock.removed(2);
        assert_eq!(
            clock.keep_alive(1000, t0),
            KeepAlive::Renewed(Duration::from_millis(2000))
        );
        assert_eq!(
            clock.take_expired(t0 + Duration::from_millis(1999)),
            (502..=999).collect::<Vec<_>>()
        );
    }

    #[test]
    fn failed_expiry_is_retried() {
        let clock = LeaseClock::default();
        let now = Instant::now();
        clock.start_leading(1, [lease(3, 10)], now);
        let later = now + Duration::from_millis(20);
        assert_eq!(clock.take_expired(later), vec![3]);
        clock.expiry_failed(3);
        assert_eq!(clock.take_expired(later), vec![3]);
        clock.removed(3);
        assert!(clock.take_expired(later).is_empty());
    }
}
