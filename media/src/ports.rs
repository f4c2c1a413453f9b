//! The RTP port range: even ports for RTP (the odd one above each for
//! RTCP), handed out least recently used first so a late packet of an
//! ended call does not land in the next one, and returned when the lease
//! is dropped, whatever ended the call.
//!
//! Binding is synchronous (a bind never waits), so signalling cores that
//! are not async can take ports too; it must run inside a tokio runtime.
//!
//! A relay that ends may give its pair back *with its sockets still
//! bound* ([`PortLease::give_back`]): creating, binding, registering with
//! the reactor and later closing two sockets cost more than everything
//! else a relay does to start (a quarter of the SBC's CPU per call). Such
//! a pair is handed out again, sockets and all, once it has been unused
//! for [`QUARANTINE`], so that the ended call's last packets (from a phone
//! that has not seen the BYE yet) cannot be latched by the next call; what
//! reached the sockets meanwhile is discarded before they are reused.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a pair given back with its sockets waits before another call
/// gets it, unless no other pair is left. A phone stops sending within a
/// round trip of the BYE; a second is many round trips.
pub const QUARANTINE: Duration = Duration::from_secs(1);

/// At most this many pairs stay bound while unused (beyond, the oldest
/// is closed and its port goes back to the range): it bounds the file
/// descriptors idle relay sockets hold to 8,192, so that they cannot
/// take the descriptors phones' connections need.
pub const MAX_IDLE_BOUND: usize = 4096;

/// A pair given back bound and unused for this long is closed, and its
/// port goes back to the range (looked at whenever a pair is leased or
/// given back): once the call rate falls, the relay stops holding the
/// descriptors it needed at its peak.
pub const IDLE_EXPIRY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("RTP port range {min}-{max} must hold at least one even port pair")]
    EmptyRange { min: u16, max: u16 },
    #[error("all {0} RTP port pairs are in use")]
    Exhausted(usize),
    /// Not a port taken by another program, which the next port avoids,
    /// but a failure every port would meet: out of file descriptors, an
    /// address not on this host.
    #[error("RTP ports cannot be bound: {0}")]
    Bind(std::io::Error),
}

/// A pair given back with its sockets, waiting to be reused.
#[derive(Debug)]
struct IdlePair {
    port: u16,
    ip: IpAddr,
    rtp: udp::Socket,
    rtcp: Option<udp::Socket>,
    since: Instant,
}

#[derive(Debug)]
struct PoolState {
    /// Pairs with no socket, least recently used first.
    free: VecDeque<u16>,
    /// Pairs still bound, least recently given back first.
    idle: VecDeque<IdlePair>,
    total: usize,
    /// [`MAX_IDLE_BOUND`], smaller in tests.
    max_idle: usize,
}

impl PoolState {
    /// The oldest idle pair bound on `ip` with the sockets asked for and,
    /// if `quarantined` is false, out of quarantine at `now`.
    fn take_idle(
        &mut self,
        ip: IpAddr,
        with_rtcp: bool,
        now: Instant,
        quarantined: bool,
    ) -> Option<IdlePair> {
        let at = self
            .idle
            .iter()
            .take_while(|p| quarantined || p.since + QUARANTINE <= now)
            .position(|p| p.ip == ip && p.rtcp.is_some() == with_rtcp)?;
        self.idle.remove(at)
    }

    /// The oldest idle pair, its port back in the range; the caller
    /// closes its sockets outside the lock.
    fn retire_oldest(&mut self) -> Option<IdlePair> {
        let oldest = self.idle.pop_front()?;
        self.free.push_back(oldest.port);
        Some(oldest)
    }

    /// The idle pairs unused for [`IDLE_EXPIRY`], retired.
    fn take_expired(&mut self, now: Instant) -> Vec<IdlePair> {
        let mut expired = Vec::new();
        // Given back in time order: the oldest are at the front.
        while self
            .idle
            .front()
            .is_some_and(|p| p.since + IDLE_EXPIRY <= now)
        {
            expired.extend(self.retire_oldest());
        }
        expired
    }
}

/// The configured port range; cheap to clone.
#[derive(Debug, Clone)]
pub struct PortPool {
    state: Arc<Mutex<PoolState>>,
}

/// An RTP port pair in use; the pair goes back to the pool on drop.
#[derive(Debug)]
pub struct PortLease {
    pub rtp_port: u16,
    ip: IpAddr,
    pool: Arc<Mutex<PoolState>>,
    /// Given back with its sockets: the drop has nothing left to do.
    given_back: bool,
}

impl Drop for PortLease {
    fn drop(&mut self) {
        if !self.given_back {
            let mut state = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            state.free.push_back(self.rtp_port);
        }
    }
}

impl PortLease {
    /// Ends the lease keeping the pair's sockets bound, for a later
    /// [`PortPool::bind_pair`] (or [`PortPool::bind`] for a pair given
    /// back without RTCP) on the same address. The sockets must be the
    /// ones the lease came with.
    pub fn give_back(self, rtp: udp::Socket, rtcp: Option<udp::Socket>) {
        self.give_back_at(rtp, rtcp, Instant::now());
    }

    fn give_back_at(mut self, rtp: udp::Socket, rtcp: Option<udp::Socket>, now: Instant) {
        self.given_back = true;
        let closed = {
            let mut state = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            state.idle.push_back(IdlePair {
                port: self.rtp_port,
                ip: self.ip,
                rtp,
                rtcp,
                since: now,
            });
            let mut closed = state.take_expired(now);
            if state.idle.len() > state.max_idle {
                closed.extend(state.retire_oldest());
            }
            closed
        };
        // Closed outside the lock (deregistering and closing are syscalls).
        drop(closed);
    }
}

/// Throws away what reached an idle socket: stray or late datagrams are
/// not the next call's. tokio knows from the reactor whether anything is
/// queued, so an empty socket costs no syscall. Bounded, so a flood
/// cannot keep us here.
fn discard_queued(socket: &udp::Socket) {
    for _ in 0..1024 {
        if socket.try_recv_from(&mut []).is_err() {
            return;
        }
    }
}

impl PortPool {
    /// Pairs `(p, p+1)` with `p` even and both inside `min..=max`.
    pub fn new(min: u16, max: u16) -> Result<PortPool, PortError> {
        let first = min.saturating_add(min % 2);
        let free: VecDeque<u16> = (first..max).step_by(2).collect();
        if free.is_empty() {
            return Err(PortError::EmptyRange { min, max });
        }
        let total = free.len();
        Ok(PortPool {
            state: Arc::new(Mutex::new(PoolState {
                free,
                idle: VecDeque::new(),
                total,
                max_idle: MAX_IDLE_BOUND,
            })),
        })
    }

    #[cfg(test)]
    fn with_max_idle(self, max_idle: usize) -> Self {
        self.state().max_idle = max_idle;
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pairs currently leased.
    pub fn in_use(&self) -> usize {
        let state = self.state();
        state.total - state.free.len() - state.idle.len()
    }

    /// Leases a pair and binds its RTP socket on `ip` (for media played or
    /// mixed locally, where RTCP is not read).
    pub fn bind(&self, ip: IpAddr) -> Result<(PortLease, udp::Socket), PortError> {
        let (lease, rtp, _) = self.lease(ip, false)?;
        Ok((lease, rtp))
    }

    /// Leases a pair and binds both its RTP and RTCP sockets on `ip` (a
    /// relay leg, which passes RTCP through).
    pub fn bind_pair(
        &self,
        ip: IpAddr,
    ) -> Result<(PortLease, udp::Socket, udp::Socket), PortError> {
        let (lease, rtp, rtcp) = self.lease(ip, true)?;
        match rtcp {
            Some(rtcp) => Ok((lease, rtp, rtcp)),
            None => Err(PortError::Exhausted(self.state().total)),
        }
    }

    fn new_lease(&self, port: u16, ip: IpAddr) -> PortLease {
        PortLease {
            rtp_port: port,
            ip,
            pool: self.state.clone(),
            given_back: false,
        }
    }

    /// An idle pair still bound (out of quarantine) first, else a pair of
    /// the range bound now, else an idle pair in quarantine: running out
    /// of ports is worse than the rare late packet, and so is binding
    /// pairs only to close others while the idle pool is nearly full, when
    /// a quarantined pair comes before a new one. A port another program
    /// holds is skipped (and stays in the pool for later).
    fn lease(
        &self,
        ip: IpAddr,
        with_rtcp: bool,
    ) -> Result<(PortLease, udp::Socket, Option<udp::Socket>), PortError> {
        self.lease_at(ip, with_rtcp, Instant::now())
    }

    fn lease_at(
        &self,
        ip: IpAddr,
        with_rtcp: bool,
        now: Instant,
    ) -> Result<(PortLease, udp::Socket, Option<udp::Socket>), PortError> {
        let (reused, expired) = {
            let mut state = self.state();
            let expired = state.take_expired(now);
            let ready = state.take_idle(ip, with_rtcp, now, false);
            // A nearly full idle pool means pairs come back faster than
            // they leave quarantine (above about 900 calls/s through the
            // SBC): a quarantined pair is reused early, after the fraction
            // of a second the pool holds, rather than one more bound while
            // the oldest is closed, which costs four syscalls a socket.
            // "Nearly": relays end in batches (10 ms of them at a time),
            // and a pool merely at its bound would close a batch's worth.
            let nearly_full = state.idle.len() + state.max_idle / 8 >= state.max_idle;
            let early = state.free.is_empty() || nearly_full;
            let reused = match early {
                true => ready.or_else(|| state.take_idle(ip, with_rtcp, now, true)),
                false => ready,
            };
            (reused, expired)
        };
        drop(expired);
        if let Some(pair) = reused {
            return Ok(self.reuse(pair));
        }
        let total = self.state().total;
        for _ in 0..total {
            let next = {
                let mut state = self.state();
                match state.free.pop_front() {
                    Some(port) => Some(port),
                    // Only idle pairs bound on another address (or with
                    // other sockets) are left: the oldest is closed and
                    // bound anew.
                    None => state.idle.pop_front().map(|pair| pair.port),
                }
            };
            let Some(port) = next else {
                break;
            };
            let lease = self.new_lease(port, ip);
            let bound = || {
                let rtp = udp::Socket::bind(SocketAddr::new(ip, port))?;
                let rtcp = match with_rtcp {
                    true => Some(udp::Socket::bind(SocketAddr::new(ip, port + 1))?),
                    false => None,
                };
                std::io::Result::Ok((rtp, rtcp))
            };
            // Dropping the lease puts the port at the back of the queue.
            match bound() {
                Ok((rtp, rtcp)) => return Ok((lease, rtp, rtcp)),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    tracing::debug!(port, "RTP port busy, trying the next");
                }
                // Trying the rest of the range would only fail as often
                // (at thousands of system calls per call); a pair still in
                // quarantine needs no new socket.
                Err(e) => {
                    drop(lease);
                    let quarantined = self.state().take_idle(ip, with_rtcp, now, true);
                    return match quarantined {
                        Some(pair) => Ok(self.reuse(pair)),
                        None => Err(PortError::Bind(e)),
                    };
                }
            }
        }
        Err(PortError::Exhausted(total))
    }

    /// A lease on an idle pair, its sockets emptied of what reached them.
    fn reuse(&self, pair: IdlePair) -> (PortLease, udp::Socket, Option<udp::Socket>) {
        discard_queued(&pair.rtp);
        if let Some(rtcp) = &pair.rtcp {
            discard_queued(rtcp);
        }
        (self.new_lease(pair.port, pair.ip), pair.rtp, pair.rtcp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn pairs_are_even_reused_least_recent_first_and_released_on_drop() {
        let pool = PortPool::new(41001, 41008).unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (a, socket_a) = pool.bind(ip).unwrap();
        let (b, _sb) = pool.bind(ip).unwrap();
        assert_eq!((a.rtp_port, b.rtp_port), (41002, 41004));
        assert_eq!(pool.in_use(), 2);
        drop((a, socket_a));
        let (c, _sc) = pool.bind(ip).unwrap();
        assert_eq!(c.rtp_port, 41006, "the freed 41002 waits behind 41006");
        let (d, _sd) = pool.bind(ip).unwrap();
        assert_eq!(d.rtp_port, 41002);
        assert!(matches!(pool.bind(ip), Err(PortError::Exhausted(3))));
        assert!(PortPool::new(41001, 41001).is_err());
    }

    #[tokio::test]
    async fn a_failure_every_port_would_meet_ends_the_search_at_once() {
        let pool = PortPool::new(41301, 41308).unwrap();
        // TEST-NET-1: no interface of this host has it.
        let elsewhere: IpAddr = "192.0.2.1".parse().unwrap();
        let error = pool.bind_pair(elsewhere).unwrap_err();
        assert!(matches!(error, PortError::Bind(_)), "{error}");
        assert_eq!(pool.in_use(), 0, "the pair tried went back");
        // One pair was tried, not the whole range: it went to the back.
        let (lease, _rtp, _rtcp) = pool.bind_pair("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(lease.rtp_port, 41304);
    }

    #[tokio::test]
    async fn a_relay_leg_gets_both_ports_of_its_pair() {
        let pool = PortPool::new(41202, 41205).unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        // 41203 (RTCP of the first pair) is taken: that pair is skipped.
        let outsider = std::net::UdpSocket::bind("127.0.0.1:41203").unwrap();
        let (lease, rtp, rtcp) = pool.bind_pair(ip).unwrap();
        assert_eq!(lease.rtp_port, 41204);
        assert_eq!(rtp.local_addr().unwrap().port(), 41204);
        assert_eq!(rtcp.local_addr().unwrap().port(), 41205);
        drop(outsider);
    }

    #[tokio::test]
    async fn a_pair_given_back_bound_is_reused_after_its_quarantine_with_nothing_queued() {
        let pool = PortPool::new(41302, 41309).unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let (lease, rtp, rtcp) = pool.lease_at(ip, true, t0).unwrap();
        assert_eq!(lease.rtp_port, 41302);
        let (rtp_addr, rtcp_addr) = (
            rtp.local_addr().unwrap(),
            rtcp.as_ref().unwrap().local_addr().unwrap(),
        );
        lease.give_back_at(rtp, rtcp, t0);
        assert_eq!(pool.in_use(), 0, "an idle bound pair is not in use");
        // A datagram of the ended call arrives while the pair is idle.
        let late = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        late.send_to(b"late", rtp_addr).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;

        // In quarantine: the next call gets a fresh pair.
        let (fresh, _f1, _f2) = pool.lease_at(ip, true, t0 + QUARANTINE / 2).unwrap();
        assert_eq!(fresh.rtp_port, 41304);
        // Another address or shape is not served by it either.
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let (no_rtcp, _n1, _) = pool.lease_at(ip, false, t0 + QUARANTINE).unwrap();
        assert_eq!(no_rtcp.rtp_port, 41306);
        // Out of quarantine: the same sockets, the late datagram gone.
        let (again, rtp, rtcp) = pool.lease_at(ip, true, t0 + QUARANTINE).unwrap();
        assert_eq!(again.rtp_port, 41302);
        assert_eq!(rtp.local_addr().unwrap(), rtp_addr);
        assert_eq!(rtcp.as_ref().unwrap().local_addr().unwrap(), rtcp_addr);
        let mut buf = [0u8; 16];
        assert!(rtp.try_recv_from(&mut buf).is_err(), "nothing queued");
        assert_eq!(pool.in_use(), 3);

        // Given back again and the range exhausted: the quarantined pair
        // is reused rather than refusing the call; on another address it
        // is closed and bound there.
        let t1 = t0 + QUARANTINE * 2;
        again.give_back_at(rtp, rtcp, t1);
        let (last, _l1, _l2) = pool.lease_at(other, true, t1).unwrap();
        assert_eq!(last.rtp_port, 41308);
        let (reused, _r1, _r2) = pool.lease_at(ip, true, t1).unwrap();
        assert_eq!(reused.rtp_port, 41302);
        drop(reused);
        assert!(matches!(pool.lease_at(other, true, t1), Ok((l, _, _)) if l.rtp_port == 41302));
        assert!(matches!(
            pool.lease_at(ip, true, t1),
            Err(PortError::Exhausted(4))
        ));
    }

    #[tokio::test]
    async fn a_full_idle_pool_lends_a_quarantined_pair_rather_than_bind_one() {
        // Nearly full is within an eighth of the bound: here, full.
        let pool = PortPool::new(41502, 41519).unwrap().with_max_idle(2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let leases: Vec<_> = (0..3)
            .map(|_| pool.lease_at(ip, true, t0).unwrap())
            .collect();
        let ports: Vec<u16> = leases.iter().map(|(lease, _, _)| lease.rtp_port).collect();
        assert_eq!(ports, [41502, 41504, 41506]);
        for (lease, rtp, rtcp) in leases {
            lease.give_back_at(rtp, rtcp, t0);
        }
        // Beyond the bound the oldest was closed: its port is free again.
        std::net::UdpSocket::bind("127.0.0.1:41502").expect("41502 closed");
        // Full and all in quarantine: the oldest idle pair is lent early,
        // sockets and all, though the range has free ports.
        let (early, rtp, _) = pool
            .lease_at(ip, true, t0 + Duration::from_millis(10))
            .unwrap();
        assert_eq!(early.rtp_port, 41504);
        assert_eq!(rtp.local_addr().unwrap().port(), 41504);
        // No longer full: a fresh pair of the range.
        let (fresh, _, _) = pool
            .lease_at(ip, true, t0 + Duration::from_millis(20))
            .unwrap();
        assert_eq!(fresh.rtp_port, 41508);
    }

    #[tokio::test]
    async fn a_pair_idle_past_its_expiry_is_closed_and_its_port_freed() {
        let pool = PortPool::new(41402, 41405).unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let (lease, rtp, rtcp) = pool.lease_at(ip, true, t0).unwrap();
        assert_eq!(lease.rtp_port, 41402);
        lease.give_back_at(rtp, rtcp, t0);
        // Still idle and bound just before the expiry: reused as it is.
        let (early, rtp, rtcp) = pool.lease_at(ip, true, t0 + IDLE_EXPIRY / 2).unwrap();
        assert_eq!(early.rtp_port, 41402);
        let t1 = t0 + IDLE_EXPIRY / 2;
        early.give_back_at(rtp, rtcp, t1);
        // Unused for IDLE_EXPIRY: the next lease closes it first, so a
        // fresh pair is bound and the old port is free for anyone.
        let (fresh, _f1, _f2) = pool.lease_at(ip, true, t1 + IDLE_EXPIRY).unwrap();
        assert_eq!(fresh.rtp_port, 41404);
        std::net::UdpSocket::bind("127.0.0.1:41402").expect("the expired pair was closed");
        std::net::UdpSocket::bind("127.0.0.1:41403").expect("with its RTCP socket");
        assert_eq!(pool.in_use(), 1);
    }

    #[tokio::test]
    async fn a_port_held_elsewhere_is_skipped() {
        let outsider = std::net::UdpSocket::bind("127.0.0.1:41102").unwrap();
        let pool = PortPool::new(41102, 41105).unwrap();
        let (lease, _socket) = pool.bind("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(lease.rtp_port, 41104);
        drop(outsider);
    }
}
