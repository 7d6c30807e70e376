//! Packet captures inside the lab: an `AF_PACKET` socket on one interface of one node; the
//! frames it saw are written with [`zrlab_wire::pcap::write`] as a classic pcap file (Ethernet link
//! type) that tcpdump and Wireshark read.
//!
//! What a capture sees is what the kernel's packet taps see on that interface: frames the
//! interface receives (after its XDP program passed them) and frames the stack sends through it.
//! Frames an XDP program transmits with `XDP_TX` bypass the taps of the interface that sends
//! them, so the LB's encapsulated output is captured on the receiving side (the router's
//! interface towards the LB node).
//!
//! [`Capture::start`] returns once the socket is bound: nothing sent after it is missed.
//! [`Capture::stop`] also returns how many frames the kernel dropped because the socket's
//! queue was full (`PACKET_STATISTICS`): a capture that lost frames must say so, or a judgement
//! made from it could pass on what it never saw.
//! [`Injector`] sends frames out of an interface through the same kind of socket (replays).

mod inject;

pub use inject::Injector;

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{
    error::{LabError, Result},
    netns::Netns,
};
pub use zrlab_wire::pcap::Frame;

/// How long one `recv` waits before the capture thread checks whether it should stop.
const POLL: Duration = Duration::from_millis(20);
/// Largest frame kept whole (the lab's MTUs are at most 1600).
const SNAPLEN: usize = 4096;
/// The capture socket's receive queue, in bytes.
const RECEIVE_QUEUE: libc::c_int = 64 << 20;

/// What a capture saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Captured {
    /// The frames, in order.
    pub frames: Vec<Frame>,
    /// Frames the kernel dropped before the capture could read them (its socket's queue was
    /// full).
    pub dropped: u64,
}

/// A running capture; [`Capture::stop`] returns what it saw.
#[derive(Debug)]
pub struct Capture {
    stop: Arc<AtomicBool>,
    seen: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<JoinHandle<Result<io::Result<Captured>>>>,
    what: String,
}

impl Capture {
    /// Starts capturing on `ifname` inside `netns`.
    pub fn start(netns: &Netns, ifname: &str) -> Result<Self> {
        let what = format!("{ifname} in {}", netns.name());
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ifname_owned = ifname.to_owned();
        let thread_stop = stop.clone();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let thread_seen = seen.clone();
        let thread = netns.spawn(format!("capture-{ifname}"), move || {
            let socket = match open(&ifname_owned) {
                Ok(socket) => {
                    let _ = ready_tx.send(Ok(()));
                    socket
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(Captured::default());
                }
            };
            read_until(&socket, &thread_stop, &thread_seen)
        })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { stop, seen, thread: Some(thread), what }),
            Ok(Err(e)) => Err(LabError::os("open a packet socket on", what, e)),
            Err(_) => Err(LabError::os("start a capture on", what, io::Error::other("the capture thread died"))),
        }
    }

    /// How many frames it has seen so far.
    pub fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }

    /// Stops the capture and returns every frame it saw, in order, and how many it lost.
    pub fn stop(mut self) -> Result<Captured> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("a running capture has its thread");
        let frames = thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        frames.map_err(|e| LabError::os("capture on", self.what.clone(), e))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A packet socket for every protocol, bound to `ifname`, with a receive timeout of [`POLL`].
pub fn open(ifname: &str) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    let name = std::ffi::CString::new(ifname).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `name` is a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain system calls; the descriptor is owned right away.
    let socket = unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(all));
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        std::os::fd::OwnedFd::from_raw_fd(fd)
    };
    // SAFETY: a zeroed sockaddr_ll is valid; the fields set are the ones bind reads.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = all;
    addr.sll_ifindex = index as i32;
    let timeout = libc::timeval { tv_sec: 0, tv_usec: POLL.as_micros() as libc::suseconds_t };
    // A replay sends its trace at the recorded pacing, often a burst of hundreds of frames in
    // microseconds: the default queue (about 200 KiB of buffers, some 300 small frames) lost a
    // third of a failover's frames at one tap. Root may go past `rmem_max` (per socket only).
    let queue: libc::c_int = RECEIVE_QUEUE;
    use std::os::fd::AsRawFd as _;
    // SAFETY: the pointers and lengths describe live locals.
    unsafe {
        if libc::bind(socket.as_raw_fd(), (&raw const addr).cast(), size_of::<libc::sockaddr_ll>() as libc::socklen_t)
            != 0
            || libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const queue).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            ) != 0
            || libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(socket)
}

/// Reads frames until `stop` is set, counting them in `seen`; then reads the socket's drop count.
fn read_until(
    socket: &std::os::fd::OwnedFd,
    stop: &AtomicBool,
    seen: &std::sync::atomic::AtomicUsize,
) -> io::Result<Captured> {
    use std::os::fd::AsRawFd as _;
    let mut frames = Vec::new();
    let mut buf = vec![0u8; SNAPLEN];
    // Set after `stop` is seen: one more read drains what was queued before it.
    let mut last = false;
    loop {
        // SAFETY: `buf` is live and as long as passed.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {
                    if last {
                        return Ok(Captured { frames, dropped: dropped(socket)? });
                    }
                    last = stop.load(Ordering::SeqCst);
                    continue;
                }
                _ => return Err(err),
            }
        }
        let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        frames.push(Frame { at, data: buf[..n as usize].to_vec() });
        seen.fetch_add(1, Ordering::SeqCst);
    }
}

/// The frames the kernel dropped on `socket` since it was opened (`PACKET_STATISTICS`, read
/// once: reading resets the counters).
fn dropped(socket: &std::os::fd::OwnedFd) -> io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    let mut stats = libc::tpacket_stats { tp_packets: 0, tp_drops: 0 };
    let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: the pointers and length describe a live local.
    if unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&raw mut stats).cast(),
            &raw mut len,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(stats.tp_drops))
}
