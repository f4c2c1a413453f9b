//! The RTP port range: even ports for RTP (the odd one above each for
//! RTCP), handed out least recently used first so a late packet of an
//! ended call does not land in the next one, and returned when the lease
//! is dropped, whatever ended the call.
//!
//! Binding is synchronous (a bind never waits), so signalling cores that
//! are not async can take ports too; it must run inside a tokio runtime.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("RTP port range {min}-{max} must hold at least one even port pair")]
    EmptyRange { min: u16, max: u16 },
    #[error("all {0} RTP port pairs are in use")]
    Exhausted(usize),
}

#[derive(Debug)]
struct PoolState {
    free: VecDeque<u16>,
    total: usize,
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
    pool: Arc<Mutex<PoolState>>,
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let mut state = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        state.free.push_back(self.rtp_port);
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
            state: Arc::new(Mutex::new(PoolState { free, total })),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pairs currently leased.
    pub fn in_use(&self) -> usize {
        let state = self.state();
        state.total - state.free.len()
    }

    /// Leases a pair and binds its RTP socket on `ip` (for media played or
    /// mixed locally, where RTCP is not read).
    pub fn bind(&self, ip: IpAddr) -> Result<(PortLease, UdpSocket), PortError> {
        let (lease, rtp, _) = self.lease(ip, false)?;
        Ok((lease, rtp))
    }

    /// Leases a pair and binds both its RTP and RTCP sockets on `ip` (a
    /// relay leg, which passes RTCP through).
    pub fn bind_pair(&self, ip: IpAddr) -> Result<(PortLease, UdpSocket, UdpSocket), PortError> {
        let (lease, rtp, rtcp) = self.lease(ip, true)?;
        match rtcp {
            Some(rtcp) => Ok((lease, rtp, rtcp)),
            None => Err(PortError::Exhausted(self.state().total)),
        }
    }

    /// A port another program holds is skipped (and stays in the pool for
    /// later).
    fn lease(
        &self,
        ip: IpAddr,
        with_rtcp: bool,
    ) -> Result<(PortLease, UdpSocket, Option<UdpSocket>), PortError> {
        let total = self.state().total;
        for _ in 0..total {
            let Some(port) = self.state().free.pop_front() else {
                break;
            };
            let lease = PortLease {
                rtp_port: port,
                pool: self.state.clone(),
            };
            let bound = || {
                let rtp = bind_socket(SocketAddr::new(ip, port))?;
                let rtcp = match with_rtcp {
                    true => Some(bind_socket(SocketAddr::new(ip, port + 1))?),
                    false => None,
                };
                std::io::Result::Ok((rtp, rtcp))
            };
            match bound() {
                Ok((rtp, rtcp)) => return Ok((lease, rtp, rtcp)),
                // Dropping the lease puts the port at the back of the queue.
                Err(e) => tracing::debug!(port, error = %e, "RTP port busy, trying the next"),
            }
        }
        Err(PortError::Exhausted(total))
    }
}

fn bind_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    async fn a_port_held_elsewhere_is_skipped() {
        let outsider = std::net::UdpSocket::bind("127.0.0.1:41102").unwrap();
        let pool = PortPool::new(41102, 41105).unwrap();
        let (lease, _socket) = pool.bind("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(lease.rtp_port, 41104);
        drop(outsider);
    }
}
