//! New connections aimed at a backend while it is released: the prober makes one TCP
//! connection after another to the service's own address inside the backend's namespace (past
//! the LB, so every one of them meets the backend's listeners, whichever process holds them),
//! asks one request on each and waits for its reply.
//!
//! A release that leaves the port without a listening, ready process for a moment refuses or
//! resets the probes made in that moment; the client's own flows would meet the gap only if a
//! new connection happened to fall into it. A failed probe is one whose connection was refused
//! or reset, or whose reply did not come within [`REPLY_TIMEOUT`] (the scenarios' drop
//! timeout).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use serde::Serialize;

use zrlab_host::{
    error::{LabError, Result},
    netns::Netns,
};
use zrlab_wire::message::{Reply, Request};

/// How long a probe waits for its connection and its reply.
pub(super) const REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// The pause between two probes: a schedule (about 500 probes a second at most), so that the
/// prober does not take a core from the release it watches.
const PACE: Duration = Duration::from_millis(2);

/// The flow number probes carry (no client flow has it).
const PROBE_FLOW: u32 = u32::MAX;

/// What the probes of releases saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProbeTally {
    /// Probes made.
    pub probes: u64,
    /// Probes refused, reset or unanswered.
    pub failed: u64,
    /// What the first failed probe met.
    pub first_failure: Option<String>,
}

/// A running prober.
#[derive(Debug)]
pub(super) struct Prober {
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
    thread: JoinHandle<Result<ProbeTally>>,
}

impl Prober {
    /// Starts probing `addr` from inside `netns`.
    pub(super) fn start(netns: &Netns, addr: SocketAddr) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), made.clone());
        let thread = netns.spawn(format!("probe {addr}"), move || {
            let mut tally = ProbeTally::default();
            let mut seq = 0;
            while !flag.load(Ordering::Relaxed) {
                if let Err(why) = probe(addr, seq) {
                    tally.failed += 1;
                    tally.first_failure.get_or_insert(why);
                }
                tally.probes += 1;
                seq += 1;
                count.store(tally.probes, Ordering::Relaxed);
                std::thread::sleep(PACE);
            }
            tally
        })?;
        Ok(Self { stop, made, thread })
    }

    /// Probes made so far.
    pub(super) fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// Whether its thread has ended (it ends only when told to: earlier, [`Prober::finish`]
    /// gives the reason).
    pub(super) fn ended(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops probing and returns what the probes saw.
    pub(super) fn finish(self) -> Result<ProbeTally> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| LabError::Unsupported("the release prober panicked".into()))?
    }
}

/// One probe: connect, ask request `seq`, read its reply.
fn probe(addr: SocketAddr, seq: u64) -> std::result::Result<(), String> {
    let stream = TcpStream::connect_timeout(&addr, REPLY_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(|e| format!("set a read timeout: {e}"))?;
    let request = Request::new(PROBE_FLOW, seq);
    (&stream).write_all(request.emit().as_bytes()).map_err(|e| format!("send: {e}"))?;
    let mut line = String::new();
    match BufReader::new(&stream).read_line(&mut line) {
        Ok(0) => Err("the connection closed without a reply".into()),
        Ok(_) => match Reply::parse(&line) {
            Ok(reply) if reply.flow == PROBE_FLOW && reply.seq == seq => Ok(()),
            Ok(reply) => Err(format!("a reply to flow {} request {}", reply.flow, reply.seq)),
            Err(e) => Err(format!("an unreadable reply: {e}")),
        },
        Err(e) => Err(format!("reply: {e}")),
    }
}
