//! Keepalives toward phones registered over UDP, sans-IO.
//!
//! A phone behind a NAT is reached at the address its packets came from;
//! the NAT forgets that mapping after some idle time (often 30 s to a few
//! minutes), and then calls to the phone are lost. A phone on TCP, TLS or
//! WS keeps its own connection alive (and we answer its CRLF pings, RFC
//! 5626 §4.4.1); a phone on UDP is often silent between re-registrations.
//! So the SBC sends every UDP flow with a live registration a double CRLF
//! (RFC 5626 §3.5.1's ping) every `interval`: outbound traffic is what
//! keeps a NAT mapping open, and a SIP stack ignores CRLFs between
//! messages (RFC 3261 §7.5), so the phone needs no support for it.
//!
//! A flow is registered while the last 2xx to a REGISTER over it lists a
//! binding; it is kept until the longest binding of that answer expires (a
//! 2xx lists every binding of the AOR, and the phone's own cannot be told
//! apart behind a NAT, so a phone that unregistered while another device
//! of the same AOR stays registered gets pings until that binding expires).
//! Deadlines are kept in time order, so finding the next one costs
//! O(log n) with any number of phones.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The ping: RFC 5626's double CRLF.
pub const PING: &[u8] = b"\r\n\r\n";

#[derive(Debug, Clone, Copy)]
struct Entry {
    next_ping: Instant,
    registered_until: Instant,
}

#[derive(Debug)]
pub struct Keepalives {
    /// Time between two pings of a flow; `None` = keepalives off.
    interval: Option<Duration>,
    flows: HashMap<SocketAddr, Entry>,
    /// (next ping, flow) for every flow, earliest first.
    schedule: BTreeSet<(Instant, SocketAddr)>,
}

impl Keepalives {
    /// `interval` zero turns keepalives off.
    pub fn new(interval: Duration) -> Keepalives {
        Keepalives {
            interval: (!interval.is_zero()).then_some(interval),
            flows: HashMap::new(),
            schedule: BTreeSet::new(),
        }
    }

    /// A 2xx to a REGISTER from the UDP flow `remote` listed bindings until
    /// `until` (`None`: no binding is left).
    pub fn registered(&mut self, remote: SocketAddr, until: Option<Instant>, now: Instant) {
        let Some(interval) = self.interval else {
            return;
        };
        let Some(until) = until.filter(|&until| until > now) else {
            self.forget(remote);
            return;
        };
        match self.flows.get_mut(&remote) {
            Some(entry) => entry.registered_until = until,
            None => {
                let next_ping = now + interval;
                self.flows.insert(
                    remote,
                    Entry {
                        next_ping,
                        registered_until: until,
                    },
                );
                self.schedule.insert((next_ping, remote));
            }
        }
    }

    fn forget(&mut self, remote: SocketAddr) {
        if let Some(entry) = self.flows.remove(&remote) {
            self.schedule.remove(&(entry.next_ping, remote));
        }
    }

    /// Flows being kept alive.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.schedule.first().map(|&(at, _)| at)
    }

    /// The flows to ping now; flows whose registration expired are dropped.
    pub fn due(&mut self, now: Instant) -> Vec<SocketAddr> {
        let Some(interval) = self.interval else {
            return Vec::new();
        };
        let mut due = Vec::new();
        while let Some(&(at, remote)) = self.schedule.first() {
            if at > now {
                break;
            }
            self.schedule.pop_first();
            let Some(entry) = self.flows.get_mut(&remote) else {
                continue;
            };
            if entry.registered_until <= now {
                self.flows.remove(&remote);
                continue;
            }
            due.push(remote);
            // From `now`, not `at`: a late driver does not send a burst.
            entry.next_ping = now + interval;
            self.schedule.insert((entry.next_ping, remote));
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone(n: u16) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, 7], 40_000 + n))
    }

    #[test]
    fn a_registered_udp_flow_is_pinged_every_interval_until_its_binding_expires() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut k = Keepalives::new(secs(20));
        assert_eq!(k.poll_timeout(), None);
        k.registered(phone(1), Some(t0 + secs(70)), t0);
        k.registered(phone(2), Some(t0 + secs(3600)), t0 + secs(5));
        assert_eq!(k.poll_timeout(), Some(t0 + secs(20)));
        assert!(k.due(t0 + secs(19)).is_empty());
        assert_eq!(k.due(t0 + secs(20)), vec![phone(1)]);
        assert_eq!(k.poll_timeout(), Some(t0 + secs(25)));
        assert_eq!(k.due(t0 + secs(25)), vec![phone(2)]);
        // A re-registration extends the binding without moving the pings.
        k.registered(phone(1), Some(t0 + secs(100)), t0 + secs(30));
        assert_eq!(k.due(t0 + secs(40)), vec![phone(1)]);
        assert_eq!(k.due(t0 + secs(45)), vec![phone(2)]);
        // A late driver gets one ping per flow, not one per missed interval.
        assert_eq!(k.due(t0 + secs(99)), vec![phone(1), phone(2)]);
        assert!(k.due(t0 + secs(100)).is_empty());
        // phone 1's binding ran out at 100 s: dropped at its next ping.
        assert_eq!(k.due(t0 + secs(119)), vec![phone(2)]);
        assert_eq!(k.len(), 1);
    }

    #[test]
    fn unregistering_stops_the_pings_and_zero_turns_them_off() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut k = Keepalives::new(secs(20));
        k.registered(phone(1), Some(t0 + secs(300)), t0);
        k.registered(phone(1), None, t0 + secs(10));
        assert!(k.is_empty());
        assert_eq!(k.poll_timeout(), None);
        assert!(k.due(t0 + secs(60)).is_empty());
        // A binding that already expired registers nothing.
        k.registered(phone(2), Some(t0), t0 + secs(1));
        assert!(k.is_empty());

        let mut off = Keepalives::new(Duration::ZERO);
        off.registered(phone(1), Some(t0 + secs(300)), t0);
        assert!(off.is_empty());
        assert_eq!(off.poll_timeout(), None);
    }
}
