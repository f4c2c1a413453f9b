//! The RTP port range: even ports for RTP (the odd one above each for
//! RTCP), handed out least recently used first so a late packet of an
//! ended call does not land in the next one, and returned when the lease
//! is dropped, whatever ended the call.

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

    /// Leases a pair and binds its RTP socket on `ip`. A port another
    /// program holds is skipped (and stays in the pool for later).
    pub async fn bind(&self, ip: IpAddr) -> Result<(PortLease, UdpSocket), PortError> {
        let total = self.state().total;
        for _ in 0..total {
            let Some(port) = self.state().free.pop_front() else {
                break;
            };
            let lease = PortLease {
                rtp_port: port,
                pool: self.state.clone(),
            };
            match UdpSocket::bind(SocketAddr::new(ip, port)).await {
                Ok(socket) => return Ok((lease, socket)),
                // Dropping the lease puts the port at the back of the queue.
                Err(e) => tracing::debug!(port, error = %e, "RTP port busy, trying the next"),
            }
        }
        Err(PortError::Exhausted(total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pairs_are_even_reused_least_recent_first_and_released_on_drop() {
        let pool = PortPool::new(41001, 41008).unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (a, socket_a) = pool.bind(ip).await.unwrap();
        let (b, _sb) = pool.bind(ip).await.unwrap();
        assert_eq!((a.rtp_port, b.rtp_port), (41002, 41004));
        assert_eq!(pool.in_use(), 2);
        drop((a, socket_a));
        let (c, _sc) = pool.bind(ip).await.unwrap();
        assert_eq!(c.rtp_port, 41006, "the freed 41002 waits behind 41006");
        let (d, _sd) = pool.bind(ip).await.unwrap();
        assert_eq!(d.rtp_port, 41002);
        assert!(matches!(pool.bind(ip).await, Err(PortError::Exhausted(3))));
        assert!(PortPool::new(41001, 41001).is_err());
    }

    #[tokio::test]
    async fn a_port_held_elsewhere_is_skipped() {
        let outsider = std::net::UdpSocket::bind("127.0.0.1:41102").unwrap();
        let pool = PortPool::new(41102, 41105).unwrap();
        let (lease, _socket) = pool.bind("127.0.0.1".parse().unwrap()).await.unwrap();
        assert_eq!(lease.rtp_port, 41104);
        drop(outsider);
    }
}
