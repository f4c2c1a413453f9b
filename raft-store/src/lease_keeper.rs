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

#[derive(Default)]
struct ClockState {
    /// Term in which this node leads, if it does.
    leading_term: Option<u64>,
    /// Each lease's deadline and TTL.
    deadlines: HashMap<LeaseId, (Instant, Duration)>,
    /// The same deadlines in time order: a tick looks only at the expired
    /// ones, not at every lease (hundreds of thousands, one per binding).
    by_deadline: BTreeSet<(Instant, LeaseId)>,
    /// Expiry proposed, not yet applied: keepalives are refused.
    expiring: HashSet<LeaseId>,
}

impl ClockState {
    fn set_deadline(&mut self, id: LeaseId, deadline: Instant, ttl: Duration) {
        if let Some((old, _)) = self.deadlines.insert(id, (deadline, ttl)) {
            self.by_deadline.remove(&(old, id));
        }
        self.by_deadline.insert((deadline, id));
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
        s.expiring.clear();
        for lease in leases {
            if !s.deadlines.contains_key(&lease.id) {
                let ttl = Duration::from_millis(lease.ttl_ms);
                s.set_deadline(lease.id, now + ttl, ttl);
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
            let ttl = Duration::from_millis(lease.ttl_ms);
            s.set_deadline(lease.id, now + ttl, ttl);
        }
    }

    pub fn removed(&self, id: LeaseId) {
        let mut s = self.lock();
        if let Some((deadline, _)) = s.deadlines.remove(&id) {
            s.by_deadline.remove(&(deadline, id));
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
            Some(&(_, ttl)) => {
                s.set_deadline(id, now + ttl, ttl);
                KeepAlive::Renewed(ttl)
            }
            None => KeepAlive::NotFound,
        }
    }

    /// Leases past their deadline, now marked as expiring.
    pub fn take_expired(&self, now: Instant) -> Vec<LeaseId> {
        let mut s = self.lock();
        let expired: Vec<LeaseId> = s
            .by_deadline
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
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
        self.lock()
            .deadlines
            .get(&id)
            .map(|(deadline, _)| deadline.saturating_duration_since(now))
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
