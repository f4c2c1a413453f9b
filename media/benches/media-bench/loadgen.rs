//! Load generator: the "phones" of every call, driven from one thread.
//!
//! All A legs send from one socket and all B legs from another: the relay
//! under test still has its own sockets per call, but the generator needs
//! only two, so it can batch with sendmmsg/recvmmsg and stay cheaper per
//! packet than the relay it measures. Latency is measured from a
//! CLOCK_REALTIME stamp written into the payload just before sending to
//! the kernel's receive timestamp (SO_TIMESTAMPNS), so time the generator
//! spends busy before reading its socket does not count.

use anyhow::{bail, Context, Result};
use media::rtp::RtpPacket;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::ptr;
use std::time::{Duration, Instant};

pub const PACKET_INTERVAL: Duration = Duration::from_millis(20);
const PAYLOAD_LEN: usize = 160;
const PACKET_LEN: usize = 12 + PAYLOAD_LEN;
/// Marks the generator's own packets (the payload is not audio).
const MAGIC: u32 = 0x4d42_454e;
const BATCH: usize = 64;
const RECV_BUF: usize = 2048;
/// Room for one SCM_TIMESTAMPNS control message.
const CONTROL_LEN: usize = 64;
/// Packets later than this after the last send count as lost.
const DRAIN: Duration = Duration::from_millis(300);
/// Granularity of the send schedule and most often the generator wakes.
const SEND_TICK: Duration = Duration::from_micros(100);
const MAX_SLEEP: Duration = Duration::from_millis(2);
/// Latency histogram: 1 µs buckets up to 100 ms, then one overflow bucket.
const HISTOGRAM_US: usize = 100_000;

/// The generator's two sockets: every call's A phone and every call's B
/// phone.
pub struct Phones {
    pub a: UdpSocket,
    pub b: UdpSocket,
}

impl Phones {
    pub fn bind() -> Result<Self> {
        Ok(Phones {
            a: phone_socket()?,
            b: phone_socket()?,
        })
    }

    pub fn addr_a(&self) -> Result<SocketAddrV4> {
        v4(self.a.local_addr()?)
    }

    pub fn addr_b(&self) -> Result<SocketAddrV4> {
        v4(self.b.local_addr()?)
    }

    /// Drops whatever is queued (late packets of an earlier trial).
    pub fn discard_queued(&self) -> Result<()> {
        let mut batch = RecvBatch::new();
        for socket in [&self.a, &self.b] {
            while batch.recv(socket.as_raw_fd())? > 0 {}
        }
        Ok(())
    }
}

pub fn v4(addr: SocketAddr) -> Result<SocketAddrV4> {
    match addr {
        SocketAddr::V4(addr) => Ok(addr),
        SocketAddr::V6(addr) => bail!("expected an IPv4 address, got {addr}"),
    }
}

fn phone_socket() -> Result<UdpSocket> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a phone socket")?;
    let fd = socket.as_raw_fd();
    // A large queue so a scheduling hiccup of the generator is not counted
    // as relay loss; SO_RCVBUFFORCE (root) goes past net.core.rmem_max.
    let size: libc::c_int = 32 << 20;
    if setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size).context("SO_RCVBUF")?;
    }
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1).context("SO_TIMESTAMPNS")?;
    Ok(socket)
}

fn setsockopt(fd: i32, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its size is passed alongside.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            ptr::from_ref(&value).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_REALTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Packets queued for one sendmmsg.
struct SendBatch {
    packets: Vec<[u8; PACKET_LEN]>,
    destinations: Vec<libc::sockaddr_in>,
    len: usize,
}

impl SendBatch {
    fn new() -> Self {
        SendBatch {
            packets: vec![[0; PACKET_LEN]; BATCH],
            destinations: vec![sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); BATCH],
            len: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.len == BATCH
    }

    fn slot(&mut self, destination: SocketAddrV4) -> &mut [u8; PACKET_LEN] {
        self.destinations[self.len] = sockaddr(destination);
        self.len += 1;
        &mut self.packets[self.len - 1]
    }

    /// Sends everything queued; returns how many packets the kernel refused.
    fn flush(&mut self, fd: i32) -> u64 {
        let mut iovecs: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        for i in 0..self.len {
            iovecs[i] = libc::iovec {
                iov_base: self.packets[i].as_mut_ptr().cast(),
                iov_len: PACKET_LEN,
            };
            let header = &mut headers[i].msg_hdr;
            header.msg_name = ptr::from_mut(&mut self.destinations[i]).cast();
            header.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            header.msg_iov = ptr::from_mut(&mut iovecs[i]);
            header.msg_iovlen = 1;
        }
        let mut done = 0;
        let mut refused = 0;
        while done < self.len {
            // SAFETY: headers[done..len] point into buffers that outlive
            // the call; the count passed matches the initialised headers.
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
                    headers[done..].as_mut_ptr(),
                    (self.len - done) as libc::c_uint,
                    0,
                )
            };
            if rc > 0 {
                done += rc as usize;
            } else {
                // Skip the packet the kernel refused (e.g. ENOBUFS).
                done += 1;
                refused += 1;
            }
        }
        self.len = 0;
        refused
    }
}

/// Buffers for one recvmmsg with kernel receive timestamps.
struct RecvBatch {
    buffers: Vec<[u8; RECV_BUF]>,
    controls: Vec<[u64; CONTROL_LEN / 8]>,
    lengths: [usize; BATCH],
    stamps: [u64; BATCH],
}

impl RecvBatch {
    fn new() -> Self {
        RecvBatch {
            buffers: vec![[0; RECV_BUF]; BATCH],
            controls: vec![[0; CONTROL_LEN / 8]; BATCH],
            lengths: [0; BATCH],
            stamps: [0; BATCH],
        }
    }

    /// Reads what is queued without blocking; returns the datagram count.
    fn recv(&mut self, fd: i32) -> Result<usize> {
        let mut iovecs: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        for i in 0..BATCH {
            iovecs[i] = libc::iovec {
                iov_base: self.buffers[i].as_mut_ptr().cast(),
                iov_len: RECV_BUF,
            };
            let header = &mut headers[i].msg_hdr;
            header.msg_iov = ptr::from_mut(&mut iovecs[i]);
            header.msg_iovlen = 1;
            header.msg_control = self.controls[i].as_mut_ptr().cast();
            header.msg_controllen = CONTROL_LEN;
        }
        // SAFETY: every header points at buffers owned by `self` or this
        // frame, which outlive the call.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        };
        if rc < 0 {
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                // ICMP errors surface here; the socket stays usable.
                io::ErrorKind::ConnectionRefused => Ok(0),
                _ => Err(error).context("recvmmsg"),
            };
        }
        let count = rc as usize;
        for (i, header) in headers.iter().take(count).enumerate() {
            self.lengths[i] = header.msg_len as usize;
            self.stamps[i] = receive_stamp(&header.msg_hdr).unwrap_or_else(realtime_ns);
        }
        Ok(count)
    }

    fn datagram(&self, i: usize) -> &[u8] {
        &self.buffers[i][..self.lengths[i].min(RECV_BUF)]
    }
}

/// The SCM_TIMESTAMPNS stamp of a received message, if the kernel gave one.
fn receive_stamp(header: &libc::msghdr) -> Option<u64> {
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled,
    // bounded by msg_controllen; the timestamp is read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts: libc::timespec =
                    ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    None
}

/// Where each phone sends one call's packets.
#[derive(Debug, Clone, Copy)]
pub struct CallTarget {
    pub a_to: SocketAddrV4,
    pub b_to: SocketAddrV4,
}

/// One-way latency, 1 µs buckets.
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: vec![0; HISTOGRAM_US + 1],
            count: 0,
        }
    }

    fn record(&mut self, nanos: u64) {
        let bucket = usize::try_from(nanos / 1000).map_or(HISTOGRAM_US, |us| us.min(HISTOGRAM_US));
        self.buckets[bucket] += 1;
        self.count += 1;
    }

    /// The `q` quantile in milliseconds (upper edge of its bucket).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.count == 0 {
            return f64::NAN;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (us, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return (us + 1) as f64 / 1000.0;
            }
        }
        (HISTOGRAM_US + 1) as f64 / 1000.0
    }
}

pub struct LoadReport {
    /// Packets sent in the measured window.
    pub sent: u64,
    /// Of those, how many came back out of the relay on the right phone.
    pub received: u64,
    pub latency: Histogram,
    /// Packets the kernel refused to send (counted as sent, so as lost).
    pub send_errors: u64,
    /// Worst delay between a packet's slot and its send (generator health).
    pub max_send_lag: Duration,
    /// CPU time of `watch_pid` and of this process over the measured window.
    pub watched_cpu: Duration,
    pub own_cpu: Duration,
    pub window: Duration,
}

impl LoadReport {
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 1.0;
        }
        1.0 - self.received as f64 / self.sent as f64
    }
}

/// What to send: `calls` streams each way at 50 packets/s, spread evenly
/// over each 20 ms so the load is smooth, as independent calls would be.
pub struct Load<'a> {
    pub targets: &'a [CallTarget],
    pub warmup: Duration,
    pub measure: Duration,
    /// Process whose CPU time is sampled at the start and end of the
    /// measured window.
    pub watch_pid: u32,
    /// Tells this trial's packets from late ones of an earlier trial.
    pub run_id: u32,
}

/// Payload layout (after the 12-byte RTP header): magic, run id, stream,
/// measured flag, send time (CLOCK_REALTIME ns); the rest is µ-law silence.
fn write_packet(out: &mut [u8; PACKET_LEN], run_id: u32, stream: u32, frame: u64, measured: bool) {
    let mut payload = [0xffu8; PAYLOAD_LEN];
    payload[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    payload[4..8].copy_from_slice(&run_id.to_be_bytes());
    payload[8..12].copy_from_slice(&stream.to_be_bytes());
    payload[12] = u8::from(measured);
    payload[16..24].copy_from_slice(&realtime_ns().to_be_bytes());
    let packet = RtpPacket::new(
        0,
        frame as u16,
        (frame as u32).wrapping_mul(160),
        stream + 1,
        &payload,
    );
    // A 172-byte buffer always holds a 12-byte header and 160 bytes.
    let _ = packet.write_to(out);
}

/// A received packet of this run: (stream, measured, send time).
fn read_packet(datagram: &[u8], run_id: u32) -> Option<(u32, bool, u64)> {
    let packet = RtpPacket::parse(datagram).ok()?;
    let p = packet.payload;
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(p.get(at..at + 4)?.try_into().ok()?))
    };
    if word(0)? != MAGIC || word(4)? != run_id {
        return None;
    }
    let sent = u64::from_be_bytes(p.get(16..24)?.try_into().ok()?);
    Some((word(8)?, *p.get(12)? == 1, sent))
}

/// Runs one trial: warm-up, then the measured window, then a short drain.
pub fn run(phones: &Phones, load: &Load) -> Result<LoadReport> {
    let streams = 2 * load.targets.len() as u64;
    if streams == 0 {
        bail!("no calls to drive");
    }
    phones.discard_queued()?;
    let frames = |d: Duration| (d.as_nanos() / PACKET_INTERVAL.as_nanos()) as u64;
    let first_measured = frames(load.warmup) * streams;
    let total = first_measured + frames(load.measure) * streams;
    let start = Instant::now() + Duration::from_millis(20);
    let slot = |k: u64| {
        start
            + Duration::from_nanos(
                (u128::from(k) * PACKET_INTERVAL.as_nanos() / u128::from(streams)) as u64,
            )
    };
    let send_end = slot(total);
    let fds = [phones.a.as_raw_fd(), phones.b.as_raw_fd()];
    let mut batches = [SendBatch::new(), SendBatch::new()];
    let mut recv = RecvBatch::new();
    let mut report = LoadReport {
        sent: 0,
        received: 0,
        latency: Histogram::new(),
        send_errors: 0,
        max_send_lag: Duration::ZERO,
        watched_cpu: Duration::ZERO,
        own_cpu: Duration::ZERO,
        window: Duration::ZERO,
    };
    let mut cpu_at_start = None;
    let mut next = 0u64;
    loop {
        let now = Instant::now();
        if next < total && slot(next) <= now {
            report.max_send_lag = report.max_send_lag.max(now - slot(next));
        }
        while next < total && slot(next) <= now {
            if next == first_measured {
                cpu_at_start = Some((
                    Instant::now(),
                    crate::process_cpu(load.watch_pid)?,
                    crate::process_cpu(std::process::id())?,
                ));
            }
            let stream = next % streams;
            let call = &load.targets[(stream / 2) as usize];
            let (leg, destination) = if stream.is_multiple_of(2) {
                (0, call.a_to)
            } else {
                (1, call.b_to)
            };
            let measured = next >= first_measured;
            write_packet(
                batches[leg].slot(destination),
                load.run_id,
                stream as u32,
                next / streams,
                measured,
            );
            if batches[leg].is_full() {
                report.send_errors += batches[leg].flush(fds[leg]);
            }
            report.sent += u64::from(measured);
            next += 1;
        }
        for (leg, fd) in fds.iter().enumerate() {
            report.send_errors += batches[leg].flush(*fd);
        }
        if next == total && report.window.is_zero() {
            if let Some((at, watched, own)) = cpu_at_start {
                report.window = at.elapsed();
                report.watched_cpu = crate::process_cpu(load.watch_pid)?.saturating_sub(watched);
                report.own_cpu = crate::process_cpu(std::process::id())?.saturating_sub(own);
            }
        }
        for (leg, fd) in fds.iter().enumerate() {
            loop {
                let count = recv.recv(*fd)?;
                for i in 0..count {
                    let Some((stream, measured, sent_at)) =
                        read_packet(recv.datagram(i), load.run_id)
                    else {
                        continue;
                    };
                    // A→B streams (even) must come out at phone B, B→A at A.
                    if measured && stream.is_multiple_of(2) == (leg == 1) {
                        report.received += 1;
                        report
                            .latency
                            .record(recv.stamps[i].saturating_sub(sent_at));
                    }
                }
                if count < BATCH {
                    break;
                }
            }
        }
        let now = Instant::now();
        if next == total && now >= send_end + DRAIN {
            break;
        }
        let wake = if next < total {
            slot(next)
        } else {
            send_end + DRAIN
        };
        pause(wake.saturating_duration_since(now));
    }
    Ok(report)
}

/// Counts datagrams arriving at phone A for `duration` (the player's sink).
pub fn sink(phones: &Phones, duration: Duration) -> Result<u64> {
    let fd = phones.a.as_raw_fd();
    let mut recv = RecvBatch::new();
    let end = Instant::now() + duration;
    let mut count = 0;
    loop {
        loop {
            let received = recv.recv(fd)?;
            count += received as u64;
            if received < BATCH {
                break;
            }
        }
        let now = Instant::now();
        if now >= end {
            return Ok(count);
        }
        pause(end - now);
    }
}

/// Sleeps rather than polling the sockets: a phone blocked in poll would
/// make every packet the relay sends a cross-CPU wake-up, a cost a relay
/// sending to real phones over a NIC does not pay. Packets wait in the
/// (large) socket queue and carry kernel arrival stamps, so reading them
/// late does not change the measured latency. The sleep lies between
/// `SEND_TICK` (bounding timer wake-ups; the send schedule is smooth to
/// this granularity) and `MAX_SLEEP` (keeping the queues short).
fn pause(until_next_slot: Duration) {
    std::thread::sleep(until_next_slot.clamp(SEND_TICK, MAX_SLEEP));
}

/// Asks for precise timer wake-ups (default slack is 50 µs) so the send
/// schedule stays smooth.
pub fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer argument.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
}
