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

mod mmsg;

pub use mmsg::{Outbox, RecvBatch, Refused, MAX_BATCH};

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
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

    /// The datagrams queued, as many as `batch` has room for, in one
    /// system call, or `Pending` (with `cx` woken when some may be there)
    /// and `batch` empty.
    ///
    /// A receive that does not fill the batch has drained the socket, so
    /// its readiness is cleared there and then: the next poll waits for
    /// the reactor instead of making a system call only to hear
    /// `WouldBlock`, which was one receive call in three on the SBC. No
    /// datagram is missed: one that comes after the receive is a new edge
    /// for the reactor, and a readiness it has already set anew is not
    /// cleared.
    pub fn poll_recv_batch(
        &self,
        cx: &mut Context<'_>,
        batch: &mut RecvBatch,
    ) -> Poll<io::Result<usize>> {
        // What it held was read: it holds what this receive brings.
        batch.clear();
        loop {
            let mut ready = match self.inner.poll_read_ready(cx) {
                Poll::Ready(Ok(ready)) => ready,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            match ready.try_io(|socket| mmsg::recv(socket.as_raw_fd(), batch)) {
                Ok(Ok(count)) => {
                    if count < batch.slots() {
                        ready.clear_ready();
                    }
                    return Poll::Ready(Ok(count));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Drained since the reactor said otherwise; readiness is
                // cleared, ask again.
                Err(_would_block) => {}
            }
        }
    }

    pub async fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_recv_batch(cx, batch)).await
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

    /// Sends every datagram in `outbox`, up to [`MAX_BATCH`] per system
    /// call, and empties it. A datagram the kernel refuses comes back
    /// ([`Refused`]: its tag, target and error), and the others still go.
    /// A full send buffer is waited out as by [`send_to`], then what is
    /// left comes back with `WouldBlock`. Dropped while it waits, the
    /// outbox keeps what is not sent yet (what was refused before is
    /// forgotten).
    ///
    /// [`send_to`]: Socket::send_to
    pub async fn send_batch<T>(&self, outbox: &mut Outbox<T>) -> Vec<Refused<T>> {
        let fd = self.inner.get_ref().as_raw_fd();
        let mut refused = Vec::new();
        let mut waited = Duration::ZERO;
        while !outbox.is_empty() {
            match outbox.send_some(fd) {
                Ok(sent) => outbox.sent(sent),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && waited < SEND_PATIENCE => {
                    tokio::time::sleep(SEND_RETRY).await;
                    waited += SEND_RETRY;
                }
                // Still full after the wait: what is left is refused.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    refused.extend(std::iter::from_fn(|| {
                        outbox.refuse_first(io::ErrorKind::WouldBlock.into())
                    }));
                }
                Err(e) => refused.extend(outbox.refuse_first(e)),
            }
        }
        refused
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

    #[tokio::test]
    async fn a_batch_goes_out_in_order_and_comes_in_whole() {
        let (a, b, b_addr) = pair();
        let (c, _, _) = pair();
        let c_addr = c.local_addr().unwrap();
        let mut outbox = Outbox::new();
        for (i, target) in [b_addr, c_addr, b_addr].into_iter().enumerate() {
            outbox.push(format!("datagram {i}").into_bytes(), target, i);
        }
        assert!(a.send_batch(&mut outbox).await.is_empty());
        assert!(outbox.is_empty());
        timeout(Duration::from_secs(2), b.readable())
            .await
            .expect("readable within 2 s")
            .unwrap();
        // Slots of 8 bytes: the datagrams of 10 are cut, their length kept.
        let mut batch = RecvBatch::new(4, 8);
        let mut got = Vec::new();
        while got.len() < 2 {
            timeout(Duration::from_secs(2), b.recv_batch(&mut batch))
                .await
                .expect("datagrams within 2 s")
                .unwrap();
            for i in 0..batch.len() {
                let (bytes, len, source) = batch.get(i).unwrap();
                got.push((bytes.to_vec(), len, source));
            }
        }
        let a_addr = a.local_addr().unwrap();
        assert_eq!(
            got,
            [
                (b"datagram".to_vec(), 10, a_addr),
                (b"datagram".to_vec(), 10, a_addr)
            ]
        );
        let mut buf = [0u8; 16];
        let (n, _) = timeout(Duration::from_secs(2), c.recv_from(&mut buf))
            .await
            .expect("datagram within 2 s")
            .unwrap();
        assert_eq!(&buf[..n], b"datagram 1");
        // The short read left the socket drained: nothing more, and no
        // system call to learn it (the readiness was cleared).
        let waker = std::task::Waker::noop();
        let drained = b.poll_recv_batch(&mut Context::from_waker(waker), &mut batch);
        assert!(drained.is_pending());
        assert!(batch.is_empty(), "what was read is not read again");
        // What comes after is still heard.
        a.try_send_to(b"after", b.local_addr().unwrap()).unwrap();
        let count = timeout(Duration::from_secs(2), b.recv_batch(&mut batch))
            .await
            .expect("a datagram after the drain is heard within 2 s")
            .unwrap();
        assert_eq!(
            (count, batch.get(0).map(|(bytes, _, _)| bytes)),
            (1, Some(&b"after"[..]))
        );
    }

    #[tokio::test]
    async fn a_refused_datagram_comes_back_with_its_tag_and_the_rest_still_go() {
        let (a, b, b_addr) = pair();
        // An IPv4 socket cannot send to an IPv6 address.
        let unreachable: SocketAddr = "[2001:db8::1]:5060".parse().unwrap();
        let mut outbox = Outbox::new();
        outbox.push(b"first".to_vec(), b_addr, "first");
        outbox.push(b"lost".to_vec(), unreachable, "lost");
        outbox.push(b"third".to_vec(), b_addr, "third");
        let refused = a.send_batch(&mut outbox).await;
        assert_eq!(refused.len(), 1);
        assert_eq!((refused[0].tag, refused[0].target), ("lost", unreachable));
        assert!(outbox.is_empty());
        let mut buf = [0u8; 16];
        let mut got = Vec::new();
        for _ in 0..2 {
            let (n, _) = timeout(Duration::from_secs(2), b.recv_from(&mut buf))
                .await
                .expect("datagram within 2 s")
                .unwrap();
            got.push(buf[..n].to_vec());
        }
        assert_eq!(got, [b"first".to_vec(), b"third".to_vec()]);
    }
}
