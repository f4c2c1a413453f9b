//! A UDP socket for tokio that the reactor watches for reading only.
//!
//! `tokio::net::UdpSocket` registers its socket with epoll for reading and
//! writing, edge-triggered. Linux then reports a socket writable again
//! after every datagram it sends (the sent buffer is freed at transmit, on
//! loopback at once), and each such report wakes a runtime worker parked in
//! `epoll_wait` that has nothing to do: one needless wake-up per datagram
//! sent. An SBC or a B2BUA sends as many datagrams as it receives, so that
//! is half its wake-ups. A UDP socket is nearly always writable, so
//! [`Socket`] is registered for reading only and sends without waiting;
//! the rare full send buffer is waited out by polling ([`Socket::send_to`])
//! or reported ([`Socket::try_send_to`]).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// How long [`Socket::send_to`] waits for room in a full send buffer, and
/// how often it looks. The buffer empties as fast as the interface sends;
/// still full after this long, the interface is down or saturated and the
/// datagram is as good as lost.
const SEND_PATIENCE: Duration = Duration::from_millis(100);
const SEND_RETRY: Duration = Duration::from_millis(1);

/// A non-blocking UDP socket registered with tokio's reactor for reading
/// only. Must be created inside a tokio runtime.
#[derive(Debug)]
pub struct Socket {
    inner: AsyncFd<std::net::UdpSocket>,
    /// Fixed once bound. Kept because `getsockname` is no cheap call in a
    /// multi-threaded process (the descriptor table is shared), and a media
    /// relay asks for it for every call it sets up.
    local: SocketAddr,
}

impl Socket {
    pub fn bind(addr: SocketAddr) -> io::Result<Socket> {
        let socket = std::net::UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        let local = socket.local_addr()?;
        // SAFETY: the socket is owned by the `AsyncFd` from here on, so its
        // descriptor stays open, and the same, until the `AsyncFd` drops.
        let inner = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Socket { inner, local })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// A datagram, or `Pending` (with `cx` woken when one may be there).
    pub fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        loop {
            let mut ready = match self.inner.poll_read_ready(cx) {
                Poll::Ready(Ok(ready)) => ready,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            // `Err` here: the socket was drained since the reactor said
            // otherwise, its readiness is cleared, ask again.
            if let Ok(received) = ready.try_io(|socket| socket.get_ref().recv_from(buf)) {
                return Poll::Ready(received);
            }
        }
    }

    /// A datagram already queued; `WouldBlock` without a system call when
    /// the reactor has not reported the socket readable since it was last
    /// drained.
    pub fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.inner
            .try_io(Interest::READABLE, |socket| socket.recv_from(buf))
    }

    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        std::future::poll_fn(|cx| self.poll_recv_from(cx, buf)).await
    }

    /// Waits until a datagram may be queued ([`try_recv_from`] then tells).
    ///
    /// [`try_recv_from`]: Socket::try_recv_from
    pub async fn readable(&self) -> io::Result<()> {
        self.inner.readable().await.map(|_| ())
    }

    /// Sends at once; `WouldBlock` when the send buffer is full.
    pub fn try_send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        self.inner.get_ref().send_to(buf, target)
    }

    /// Sends, waiting up to 100 ms for room in a full send buffer; still
    /// full then, the `WouldBlock` error is returned.
    pub async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        let mut waited = Duration::ZERO;
        loop {
            match self.try_send_to(buf, target) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && waited < SEND_PATIENCE => {
                    tokio::time::sleep(SEND_RETRY).await;
                    waited += SEND_RETRY;
                }
                sent => return sent,
            }
        }
    }
}

/// For socket options (`socket2::SockRef::from`).
impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.get_ref().as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::time::timeout;

    /// Two sockets on loopback ports, and the second one's address.
    fn pair() -> (Socket, Socket, SocketAddr) {
        let localhost = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let a = Socket::bind(localhost).unwrap();
        let b = Socket::bind(localhost).unwrap();
        let b_addr = b.local_addr().unwrap();
        (a, b, b_addr)
    }

    #[tokio::test]
    async fn datagrams_go_both_ways() {
        let (a, b, b_addr) = pair();
        let a_addr = a.local_addr().unwrap();
        assert_eq!(a.send_to(b"ping", b_addr).await.unwrap(), 4);
        let mut buf = [0u8; 16];
        let (n, from) = timeout(Duration::from_secs(2), b.recv_from(&mut buf))
            .await
            .expect("datagram within 2 s")
            .unwrap();
        assert_eq!((&buf[..n], from), (&b"ping"[..], a_addr));
        b.try_send_to(b"pong", a_addr).unwrap();
        let (n, from) = timeout(Duration::from_secs(2), a.recv_from(&mut buf))
            .await
            .expect("datagram within 2 s")
            .unwrap();
        assert_eq!((&buf[..n], from), (&b"pong"[..], b_addr));
    }

    #[tokio::test]
    async fn try_recv_from_reads_what_is_queued_and_then_would_block() {
        let (a, b, b_addr) = pair();
        let mut buf = [0u8; 16];
        let empty = b.try_recv_from(&mut buf).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
        for payload in [b"one", b"two"] {
            a.send_to(payload, b_addr).await.unwrap();
        }
        timeout(Duration::from_secs(2), b.readable())
            .await
            .expect("readable within 2 s")
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..2 {
            let (n, _) = b.try_recv_from(&mut buf).unwrap();
            got.push(buf[..n].to_vec());
        }
        assert_eq!(got, [b"one".to_vec(), b"two".to_vec()]);
        let drained = b.try_recv_from(&mut buf).unwrap_err();
        assert_eq!(drained.kind(), io::ErrorKind::WouldBlock);
    }

    #[tokio::test]
    async fn a_receiver_waits_until_a_datagram_comes() {
        let (a, b, b_addr) = pair();
        let receiver = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let (n, _) = b.recv_from(&mut buf).await.unwrap();
            buf[..n].to_vec()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!receiver.is_finished(), "nothing was sent yet");
        a.send_to(b"late", b_addr).await.unwrap();
        let got = timeout(Duration::from_secs(2), receiver)
            .await
            .expect("woken within 2 s")
            .unwrap();
        assert_eq!(got, b"late");
    }
}
