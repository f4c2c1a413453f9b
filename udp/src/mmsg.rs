//! Many datagrams per system call: `recvmmsg` into a [`RecvBatch`] and
//! `sendmmsg` from an [`Outbox`]. A proxy woken once for a dozen messages
//! then makes two system calls for them instead of two dozen, and the
//! processes it sends to are woken once for several datagrams.
//!
//! Written on `libc`: `nix`'s `sendmmsg` results can be counted only by
//! iterating them, which reads source addresses that sending never wrote.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::ptr;

/// The most datagrams one system call moves.
pub const MAX_BATCH: usize = 32;

/// Room for the datagrams of one receive ([`Socket::poll_recv_batch`]).
///
/// [`Socket::poll_recv_batch`]: crate::Socket::poll_recv_batch
#[derive(Debug)]
pub struct RecvBatch {
    slot_len: usize,
    buf: Vec<u8>,
    /// Per datagram of the last receive: its slot, whole length and source.
    received: Vec<(usize, usize, SocketAddr)>,
}

impl RecvBatch {
    /// Room for `slots` datagrams (1 to [`MAX_BATCH`]) of up to `slot_len`
    /// bytes each. A longer datagram is cut to `slot_len`, but its whole
    /// length is reported, so that the reader can refuse it by its size.
    pub fn new(slots: usize, slot_len: usize) -> RecvBatch {
        let slots = slots.clamp(1, MAX_BATCH);
        let slot_len = slot_len.max(1);
        RecvBatch {
            slot_len,
            buf: vec![0; slots * slot_len],
            received: Vec::with_capacity(slots),
        }
    }

    /// Datagrams the last receive brought.
    pub fn len(&self) -> usize {
        self.received.len()
    }

    pub fn is_empty(&self) -> bool {
        self.received.is_empty()
    }

    /// The `i`th datagram of the last receive: its bytes (cut to the slot
    /// length), its whole length, and where it came from.
    pub fn get(&self, i: usize) -> Option<(&[u8], usize, SocketAddr)> {
        let &(slot, len, source) = self.received.get(i)?;
        let start = slot * self.slot_len;
        let bytes = self.buf.get(start..start + len.min(self.slot_len))?;
        Some((bytes, len, source))
    }

    pub(crate) fn clear(&mut self) {
        self.received.clear();
    }

    pub(crate) fn slots(&self) -> usize {
        self.buf.len() / self.slot_len
    }
}

/// One `recvmmsg` on a non-blocking socket: the datagrams already queued,
/// up to the batch's room; `WouldBlock` when there are none.
pub(crate) fn recv(fd: RawFd, batch: &mut RecvBatch) -> io::Result<usize> {
    batch.clear();
    let slots = batch.slots();
    // SAFETY: plain C structs, for which all-zero is valid (null pointers,
    // zero lengths).
    let (mut names, mut iovecs, mut headers): (
        [libc::sockaddr_storage; MAX_BATCH],
        [libc::iovec; MAX_BATCH],
        [libc::mmsghdr; MAX_BATCH],
    ) = unsafe { mem::zeroed() };
    let slot_len = batch.slot_len;
    for (((slot, iovec), header), name) in batch
        .buf
        .chunks_exact_mut(slot_len)
        .zip(&mut iovecs)
        .zip(&mut headers)
        .zip(&mut names)
    {
        *iovec = libc::iovec {
            iov_base: slot.as_mut_ptr().cast(),
            iov_len: slot.len(),
        };
        header.msg_hdr.msg_iov = ptr::from_mut(iovec);
        header.msg_hdr.msg_iovlen = 1;
        header.msg_hdr.msg_name = ptr::from_mut(name).cast();
        header.msg_hdr.msg_namelen = socklen(mem::size_of::<libc::sockaddr_storage>());
    }
    // SAFETY: the first `slots` headers point at buffers of this frame and
    // of `batch`, alive and unaliased for the call, with their true
    // lengths. MSG_TRUNC: each msg_len is the datagram's whole length.
    let rc = unsafe {
        libc::recvmmsg(
            fd,
            headers.as_mut_ptr(),
            slots as libc::c_uint,
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            ptr::null_mut(),
        )
    };
    let count = usize::try_from(rc).map_err(|_| io::Error::last_os_error())?;
    for (slot, (header, name)) in headers.iter().zip(&names).take(count).enumerate() {
        // An IP socket hears only from IP addresses; anything else is
        // skipped rather than trusted.
        if let Some(source) = socket_addr(name) {
            let len = usize::try_from(header.msg_len).unwrap_or(usize::MAX);
            batch.received.push((slot, len, source));
        }
    }
    Ok(batch.received.len())
}

/// Datagrams waiting to go out together ([`Socket::send_batch`]). Each
/// carries a `T` that names it should the kernel refuse it.
///
/// [`Socket::send_batch`]: crate::Socket::send_batch
#[derive(Debug)]
pub struct Outbox<T> {
    queued: Vec<Queued<T>>,
}

/// A datagram of an [`Outbox`] that the kernel did not take.
#[derive(Debug)]
pub struct Refused<T> {
    pub tag: T,
    pub target: SocketAddr,
    pub error: io::Error,
}

#[derive(Debug)]
struct Queued<T> {
    bytes: Vec<u8>,
    target: SocketAddr,
    tag: T,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Outbox { queued: Vec::new() }
    }
}

impl<T> Outbox<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: Vec<u8>, target: SocketAddr, tag: T) {
        self.queued.push(Queued { bytes, target, tag });
    }

    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Forgets the first `count` datagrams: they are sent.
    pub(crate) fn sent(&mut self, count: usize) {
        self.queued.drain(..count.min(self.queued.len()));
    }

    /// Takes the first datagram out as refused, with `error`.
    pub(crate) fn refuse_first(&mut self, error: io::Error) -> Option<Refused<T>> {
        (!self.queued.is_empty()).then(|| {
            let datagram = self.queued.remove(0);
            Refused {
                tag: datagram.tag,
                target: datagram.target,
                error,
            }
        })
    }

    /// One `sendmmsg` of the queued datagrams from the first: how many the
    /// kernel took (at least one), or why it took none.
    pub(crate) fn send_some(&self, fd: RawFd) -> io::Result<usize> {
        let queued = &self.queued;
        // SAFETY: plain C structs, for which all-zero is valid.
        let (mut names, mut iovecs, mut headers): (
            [libc::sockaddr_storage; MAX_BATCH],
            [libc::iovec; MAX_BATCH],
            [libc::mmsghdr; MAX_BATCH],
        ) = unsafe { mem::zeroed() };
        let count = queued.len().min(MAX_BATCH);
        for (((datagram, name), iovec), header) in queued
            .iter()
            .zip(&mut names)
            .zip(&mut iovecs)
            .zip(&mut headers)
        {
            let len;
            (*name, len) = sockaddr(datagram.target);
            *iovec = libc::iovec {
                // The kernel only reads through it when sending.
                iov_base: datagram.bytes.as_ptr().cast_mut().cast(),
                iov_len: datagram.bytes.len(),
            };
            header.msg_hdr.msg_name = ptr::from_mut(name).cast();
            header.msg_hdr.msg_namelen = len;
            header.msg_hdr.msg_iov = ptr::from_mut(iovec);
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first `count` headers point at addresses of this
        // frame and at datagrams `self` holds, alive for the call.
        let rc = unsafe {
            libc::sendmmsg(
                fd,
                headers.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        match usize::try_from(rc) {
            Ok(0) => Err(io::ErrorKind::WouldBlock.into()),
            Ok(sent) => Ok(sent),
            Err(_) => Err(io::Error::last_os_error()),
        }
    }
}

fn socklen(size: usize) -> libc::socklen_t {
    libc::socklen_t::try_from(size).unwrap_or(libc::socklen_t::MAX)
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(addr) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: addr.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*addr.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and
            // aligned for it.
            unsafe {
                ptr::from_mut(&mut storage)
                    .cast::<libc::sockaddr_in>()
                    .write(sin)
            };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(addr) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: addr.port().to_be(),
                sin6_flowinfo: addr.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: addr.ip().octets(),
                },
                sin6_scope_id: addr.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe {
                ptr::from_mut(&mut storage)
                    .cast::<libc::sockaddr_in6>()
                    .write(sin6)
            };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, socklen(len))
}

fn socket_addr(name: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(name.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for AF_INET, and the
            // storage is larger than it and aligned for it.
            let sin = unsafe { &*ptr::from_ref(name).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*ptr::from_ref(name).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_survive_the_round_trip_through_c() {
        for addr in [
            "127.0.0.1:5060",
            "203.0.113.9:65535",
            "[::1]:5061",
            "[fe80::1%3]:8443",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let (storage, _) = sockaddr(addr);
            assert_eq!(socket_addr(&storage), Some(addr));
        }
    }
}
