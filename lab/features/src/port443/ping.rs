//! A steady ping across a veth pair, to see whether binds stall packet processing.
//!
//! The incident's symptom was not only slow `bind()`: the bind walked its hash chain with bottom
//! halves disabled, so softirq work on that CPU (packet receive) waited. A ping between two
//! namespaces, one echo request per interval from an ICMP datagram ("ping") socket, measures the
//! round-trip time while the binds run; its maximum and 99th percentile at the largest N are
//! compared with those at the smallest N, in the same run.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};

use zrlab_host::{
    error::{LabError, Result},
    netns::Netns,
    nl::Nl,
    run_id::RunId,
};

const PINGER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const TARGET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// Longest a single echo may take before it counts as lost.
const ECHO_TIMEOUT: Duration = Duration::from_millis(200);

/// Two namespaces joined by a veth: the pinger and its target.
pub(crate) struct PingPair {
    pinger: Netns,
    _target: Netns,
}

impl PingPair {
    /// Builds the pair.
    pub(super) async fn new() -> Result<Self> {
        let run = RunId::new(false);
        let pinger = Netns::create(&run.name("pinger"))?;
        let target = Netns::create(&run.name("target"))?;
        let nl_pinger = Nl::connect(&pinger)?;
        let nl_target = Nl::connect(&target)?;
        nl_pinger.veth_add("p0", "t0", &target).await?;
        nl_pinger.addr_add("p0", ipnet::IpNet::new(PINGER.into(), 30).expect("valid")).await?;
        nl_target.addr_add("t0", ipnet::IpNet::new(TARGET.into(), 30).expect("valid")).await?;
        for (nl, ifname) in [(&nl_pinger, "p0"), (&nl_target, "t0"), (&nl_pinger, "lo"), (&nl_target, "lo")] {
            nl.link_up(ifname).await?;
        }
        // Ping sockets are open to the groups in this range (the namespace's own sysctl).
        pinger
            .run(|| std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647"))?
            .map_err(|e| LabError::os("write", "net/ipv4/ping_group_range in the pinger namespace", e))?;
        Ok(Self { pinger, _target: target })
    }

    /// Starts pinging every `interval` until [`Pinger::stop`].
    pub(super) fn start(&self, interval: Duration) -> Result<Pinger> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = self.pinger.spawn("ping".into(), move || ping_until(&thread_stop, interval))?;
        Ok(Pinger { stop, thread })
    }
}

/// A running ping.
pub(crate) struct Pinger {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<std::io::Result<Vec<Duration>>>>,
}

impl Pinger {
    /// Stops and returns the round-trip statistics.
    pub(super) fn stop(self) -> Result<PingStats> {
        self.stop.store(true, Ordering::Relaxed);
        let rtts = self
            .thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?
            .map_err(|e| LabError::os("ping", TARGET.to_string(), e))?;
        Ok(PingStats::of(rtts))
    }
}

/// Round-trip times of a ping run, in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct PingStats {
    /// Echo requests sent.
    pub sent: usize,
    /// Echo replies lost (no reply within 200 ms).
    pub lost: usize,
    /// Median round trip.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Maximum.
    pub max_us: f64,
}

impl PingStats {
    fn of(rtts: Vec<Duration>) -> Self {
        let sent = rtts.len();
        let mut answered: Vec<f64> =
            rtts.iter().filter(|d| **d < ECHO_TIMEOUT).map(|d| d.as_secs_f64() * 1e6).collect();
        answered.sort_by(f64::total_cmp);
        let at = |q: f64| answered.get(((answered.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
        Self { sent, lost: sent - answered.len(), p50_us: at(0.5), p99_us: at(0.99), max_us: at(1.0) }
    }
}

/// Pings until `stop`; a lost echo is recorded as [`ECHO_TIMEOUT`].
fn ping_until(stop: &AtomicBool, interval: Duration) -> std::io::Result<Vec<Duration>> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4))?;
    socket.connect(&SocketAddr::from((TARGET, 0)).into())?;
    socket.set_read_timeout(Some(ECHO_TIMEOUT))?;
    let mut rtts = Vec::new();
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64];
    let mut seq: u16 = 0;
    while !stop.load(Ordering::Relaxed) {
        seq = seq.wrapping_add(1);
        // Echo request: type 8, code 0; the kernel fills in the checksum and identifier.
        let mut request = [8u8, 0, 0, 0, 0, 0, 0, 0, b'z', b'r'];
        request[6..8].copy_from_slice(&seq.to_be_bytes());
        let sent = Instant::now();
        socket.send(&request)?;
        let rtt = loop {
            match socket.recv(&mut buf) {
                // SAFETY: recv initialised the first `len` bytes.
                Ok(len)
                    if len >= 8
                        && unsafe { buf[6].assume_init() == request[6] && buf[7].assume_init() == request[7] } =>
                {
                    break sent.elapsed();
                }
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    break ECHO_TIMEOUT;
                }
                Err(e) => return Err(e),
            }
        };
        rtts.push(rtt);
        // Pacing of the probe itself, not a wait for a condition.
        if let Some(rest) = interval.checked_sub(sent.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    Ok(rtts)
}
