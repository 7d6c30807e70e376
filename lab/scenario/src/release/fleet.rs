//! The service processes of a scenario's backends across releases: starting the first
//! generation, and releasing backends by the scenario's strategy, whose [`Dispatcher`] gives the
//! service flags and the [`Step`]s (the fleet knows no strategy by name).
//!
//! The dispatchers live here, in the lab, not in the services: a service announces its sockets'
//! descriptors (`workload::phase::Sockets`); the fleet takes copies ([`super::fds::take`]), hands
//! them to the dispatcher, and closes the copies at once (a copy held here would keep a listener
//! the old process closed alive, and connections would queue on it with nobody to accept them).
//!
//! Backends of one release event are released one after the other.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    sync::watch,
};

use crate::release::{
    dispatcher::{Dispatcher, Step},
    fds::take,
    probe::{ProbeTally, Prober},
    strategy::ReleaseSpec,
};
use zrlab_control::{reuseport::ReuseportCounters, sklookup::SkLookupCounters};
use zrlab_host::error::{LabError, Result};
use zrlab_topology::Lab;
use zrlab_workload::phase::{Phase, Sockets};

/// What a started service process announced.
#[derive(Clone, Debug)]
pub struct Launched {
    /// Its pid.
    pub pid: u32,
    /// Its sockets' descriptors (in its own table).
    pub sockets: Sockets,
    /// The last phase it announced (the lab reads its announcements until it exits; the
    /// sender is gone once it has).
    pub phase: watch::Receiver<Phase>,
}

/// Starts `exe args` (a `zrlab service`) in `node` and waits until it reports
/// [`Phase::Ready`]; an error says how it ended if it exited first.
pub async fn launch(lab: &mut Lab, node: &str, exe: &Path, args: &[String], timeout: Duration) -> Result<Launched> {
    let spawned = lab.spawn(node, exe, args)?;
    let mut lines = BufReader::new(spawned.stdout).lines();
    let mut sockets = Sockets::default();
    let reached = async {
        while let Some(line) = lines.next_line().await.map_err(|e| LabError::os("read phases of", node, e))? {
            if let Some(announced) = Sockets::parse(&line) {
                sockets = announced;
            } else if Phase::parse(&line).is_some_and(|p| p >= Phase::Ready) {
                return Ok(true);
            }
        }
        Ok::<_, LabError>(false)
    };
    let ready = match tokio::time::timeout(timeout, reached).await {
        Ok(ready) => ready?,
        Err(_) => {
            return Err(LabError::Timeout {
                what: format!("the service on {node} to be {}", Phase::Ready),
                after: timeout,
            });
        }
    };
    if ready {
        // Its later phases (draining, exited) are facts of a release's timeline.
        let (phase, seen) = watch::channel(Phase::Ready);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(p) = Phase::parse(&line) {
                    phase.send_replace(p);
                }
            }
        });
        return Ok(Launched { pid: spawned.pid, sockets, phase: seen });
    }
    let ended = match lab.exit_status(spawned.pid, Duration::from_secs(5)).await {
        Some(status) => {
            use std::os::unix::process::ExitStatusExt as _;
            match (status.code(), status.signal()) {
                (Some(code), _) => format!("exit code {code}; its stderr is in this run's output"),
                (_, Some(signal)) => format!("killed by signal {signal}"),
                _ => status.to_string(),
            }
        }
        None => "closed its stdout but still runs".to_owned(),
    };
    Err(LabError::Service {
        name: node.to_owned(),
        message: format!("exited before it was {} ({ended})", Phase::Ready),
    })
}

/// One process of a backend's service.
#[derive(Clone, Debug)]
struct Instance {
    slot: u32,
    pid: u32,
    phase: watch::Receiver<Phase>,
}

/// How many probes a release's prober makes after the old process said it drains: its
/// listener closes right after, and a gap that opens then must be seen too.
const PROBES_AFTER_DRAINING: u64 = 25;

/// What happened during one backend's release, as the lab saw it happen: the facts its
/// timeline marks and its order check reads.
#[derive(Clone, Debug)]
pub struct ReleaseRecord {
    /// The backend.
    pub backend: String,
    /// When the release began.
    pub began: Instant,
    /// When the new process announced it was ready (`None`: it never did).
    pub new_ready: Option<Instant>,
    /// When the lab told the old process to stop (`None`: the strategy never does; under
    /// `takeover` the old process drains itself once the new one has its sockets).
    pub old_told_to_stop: Option<Instant>,
    /// When the old process announced that it drains (closes its listener).
    pub old_draining: Option<Instant>,
    /// What the new connections aimed at the backend during the release saw.
    pub probes: ProbeTally,
    /// New connections the backend's dispatcher program steered while the probes after the
    /// old process's drain ran (`None`: no program, or no prober). Zero means the new process
    /// took them by the kernel's own lookup alone: the dispatcher was never told of it (a
    /// missing install step), which the probes' answers cannot show, since the kernel finds
    /// the new SO_REUSEPORT listener once the old one has closed.
    pub steered_after_draining: Option<u64>,
}

impl ReleaseRecord {
    /// Whether the old process was told to stop before the new one was ready: the order that
    /// leaves the port without a ready process, whatever the probes happened to meet.
    pub fn out_of_order(&self) -> bool {
        self.old_told_to_stop.is_some_and(|stop| self.new_ready.is_none_or(|ready| stop < ready))
    }

    /// Whether the backend's dispatcher program steered none of the probes after the drain.
    pub fn unsteered(&self) -> bool {
        self.steered_after_draining == Some(0)
    }
}

#[derive(Debug)]
struct Backend {
    current: Instance,
    /// `None` without a `[release]` section.
    dispatcher: Option<Box<dyn Dispatcher>>,
}

/// What the fleet's dispatchers counted, summed over backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FleetCounters {
    /// Processes started by releases.
    pub released: u64,
    /// Releases in which the old process was told to stop before the new one was ready
    /// ([`ReleaseRecord::out_of_order`]).
    pub out_of_order: u64,
    /// Releases whose dispatcher program steered none of the probes after the old process's
    /// drain ([`ReleaseRecord::unsteered`]).
    pub unsteered: u64,
    /// Releases whose dispatcher program's steering was read at all (a program and a prober):
    /// without one, `unsteered` judges nothing.
    pub steering_read: u64,
    /// New connections aimed at released backends during their releases (`release::probe`).
    pub probes: u64,
    /// Of those, the ones refused, reset or unanswered.
    pub probes_failed: u64,
    /// The `SK_REUSEPORT` dispatchers'.
    pub reuseport: ReuseportCounters,
    /// The `SK_LOOKUP` dispatchers'.
    pub sk_lookup: SkLookupCounters,
}

impl FleetCounters {
    /// Adds what the lab saw of each release in `records`: the order, the steering, the probes.
    fn tally(&mut self, records: &[ReleaseRecord]) {
        for record in records {
            self.out_of_order += u64::from(record.out_of_order());
            self.unsteered += u64::from(record.unsteered());
            self.steering_read += u64::from(record.steered_after_draining.is_some());
            self.probes += record.probes.probes;
            self.probes_failed += record.probes.failed;
        }
    }
}

/// The services of a scenario's backends.
#[derive(Debug)]
pub struct Fleet {
    release: Option<ReleaseSpec>,
    exe: PathBuf,
    /// Each backend's service arguments (without instance, slot and drain options).
    args: BTreeMap<String, Vec<String>>,
    backends: BTreeMap<String, Backend>,
    timeout: Duration,
    released: u64,
    /// The releases done, in order.
    records: Vec<ReleaseRecord>,
    /// How many of them [`Fleet::new_records`] has returned.
    returned: usize,
}

impl Fleet {
    /// Starts the first process of every backend (`args`: backend and its service arguments),
    /// and, for a dispatching strategy, its dispatcher with the process's sockets in slot 0.
    pub async fn start(
        lab: &mut Lab,
        release: Option<ReleaseSpec>,
        exe: &Path,
        args: Vec<(String, Vec<String>)>,
        timeout: Duration,
    ) -> Result<Self> {
        let mut fleet = Self {
            release,
            exe: exe.to_owned(),
            args: args.into_iter().collect(),
            backends: BTreeMap::new(),
            timeout,
            released: 0,
            records: Vec::new(),
            returned: 0,
        };
        let names: Vec<String> = fleet.args.keys().cloned().collect();
        for backend in names {
            let mut dispatcher = match &fleet.release {
                Some(spec) => Some(spec.dispatcher(fleet.ports(&backend)).await?),
                None => None,
            };
            let launched = fleet.launch(lab, &backend, dispatcher.as_deref(), 0).await?;
            if let Some(dispatcher) = dispatcher.as_mut() {
                let (tcp, udp) = sockets_of(&launched)?;
                dispatcher.start(&lab.node(&backend)?.netns, &backend, tcp.as_ref(), udp.as_ref())?;
            }
            let current = Instance { slot: 0, pid: launched.pid, phase: launched.phase };
            fleet.backends.insert(backend, Backend { current, dispatcher });
        }
        Ok(fleet)
    }

    /// The TCP and UDP ports `backend` serves (from its `--tcp=`/`--udp=` arguments).
    fn ports(&self, backend: &str) -> (u16, u16) {
        let port = |prefix| self.address(backend, prefix).map_or(0, |a| a.port());
        (port("--tcp="), port("--udp="))
    }

    /// The address of `backend`'s argument `prefix` (`--tcp=`, `--udp=`).
    fn address(&self, backend: &str, prefix: &str) -> Option<SocketAddr> {
        self.args[backend].iter().find_map(|a| a.strip_prefix(prefix)?.parse().ok())
    }

    /// Starts process `slot` of `backend`, with the flags of its strategy's `dispatcher`.
    async fn launch(
        &self,
        lab: &mut Lab,
        backend: &str,
        dispatcher: Option<&dyn Dispatcher>,
        slot: u32,
    ) -> Result<Launched> {
        let mut args = self.args[backend].clone();
        args.extend(dispatcher.map(|d| d.service_flags(slot)).unwrap_or_default());
        let instance = char::from(b'a' + (slot % 26) as u8);
        args.push(format!("--instance={instance}{}", if slot >= 26 { (slot / 26).to_string() } else { String::new() }));
        args.push(format!("--slot={slot}"));
        launch(lab, backend, &self.exe, &args, self.timeout).await
    }

    /// Releases `backends` (one after the other) by the scenario's strategy; `health` takes a
    /// backend out of the LB's rings (`false`) or puts it back (`true`).
    pub async fn release(
        &mut self,
        lab: &mut Lab,
        backends: &[String],
        health: &mut dyn FnMut(&str, bool) -> Result<()>,
    ) -> Result<()> {
        if self.release.is_none() {
            return Err(LabError::Unsupported("a release event needs a [release] section".into()));
        }
        for backend in backends {
            let known = self
                .backends
                .get_mut(backend)
                .ok_or_else(|| LabError::Usage(format!("{backend:?} runs no service")))?;
            let old = known.current.clone();
            // Out of the map while the steps run: `launch` borrows the fleet.
            let mut dispatcher = known.dispatcher.take().expect("a [release] section gives every backend a dispatcher");
            let prober = match self.address(backend, "--tcp=") {
                Some(addr) => Some(Prober::start(&lab.node(backend)?.netns, addr)?),
                None => None,
            };
            let mut record = ReleaseRecord {
                backend: backend.clone(),
                began: Instant::now(),
                new_ready: None,
                old_told_to_stop: None,
                old_draining: None,
                probes: ProbeTally::default(),
                steered_after_draining: None,
            };
            let released = self.release_one(lab, backend, &old, dispatcher.as_mut(), health, &mut record).await;
            self.backends.get_mut(backend).expect("checked").dispatcher = Some(dispatcher);
            let new = released?;
            record.old_draining = self.draining(backend, old).await?;
            if let Some(prober) = prober {
                let steered = |fleet: &Self| fleet.backends[backend].dispatcher.as_deref().map(|d| d.steered_new());
                let before = steered(self).transpose()?.flatten();
                let made = prober.made();
                record.probes = self.probes_after(prober, made + PROBES_AFTER_DRAINING).await?;
                let after = steered(self).transpose()?.flatten();
                record.steered_after_draining = before.zip(after).map(|(before, after)| after.saturating_sub(before));
            }
            self.backends.get_mut(backend).expect("checked").current = new;
            self.released += 1;
            self.records.push(record);
        }
        Ok(())
    }

    /// Waits until the released process `old` of `backend` has said it drains, or has exited,
    /// and returns when it said so.
    async fn draining(&self, backend: &str, mut old: Instance) -> Result<Option<Instant>> {
        match tokio::time::timeout(self.timeout, old.phase.wait_for(|p| *p >= Phase::Draining)).await {
            Ok(Ok(_)) => Ok(Some(Instant::now())),
            // It exited (its announcements ended) before this wait began.
            Ok(Err(_)) => Ok(None),
            Err(_) => {
                Err(LabError::Timeout { what: format!("the old service on {backend} to drain"), after: self.timeout })
            }
        }
    }

    /// Waits until `prober` has made `count` probes, then stops it and returns what its probes
    /// saw; its error at once if it ended first (it ends only when told to). Stopped on a
    /// timeout too: no probing thread outlives the release.
    async fn probes_after(&self, prober: Prober, count: u64) -> Result<ProbeTally> {
        let deadline = Instant::now() + self.timeout;
        while prober.made() < count && !prober.ended() {
            if Instant::now() > deadline {
                let _ = prober.finish();
                return Err(LabError::Timeout { what: "the release prober's last probes".into(), after: self.timeout });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Ended before `count`, its thread panicked or could not enter the namespace: `finish`
        // returns that error (it returns a tally only when told to stop).
        prober.finish()
    }

    /// The releases done since the last call, in order (the runner marks them on the timeline).
    pub fn new_records(&mut self) -> Vec<ReleaseRecord> {
        let new = self.records[self.returned..].to_vec();
        self.returned = self.records.len();
        new
    }

    /// Runs the steps of one release of `backend` (process `old` running), noting in `record`
    /// when the new process was ready and the old one told to stop; returns the new process.
    async fn release_one(
        &self,
        lab: &mut Lab,
        backend: &str,
        old: &Instance,
        dispatcher: &mut dyn Dispatcher,
        health: &mut dyn FnMut(&str, bool) -> Result<()>,
        record: &mut ReleaseRecord,
    ) -> Result<Instance> {
        let slot = old.slot + 1;
        let mut new = None;
        for step in dispatcher.steps() {
            match step {
                Step::Health(up) => health(backend, up)?,
                Step::Wait(period) => tokio::time::sleep(period).await,
                Step::StopOld => {
                    record.old_told_to_stop = Some(Instant::now());
                    self.stop(lab, backend, old).await?;
                }
                Step::StartNew => {
                    new = Some(self.launch(lab, backend, Some(&*dispatcher), slot).await?);
                    record.new_ready = Some(Instant::now());
                }
                Step::Install => {
                    let launched = new.as_ref().ok_or_else(|| missing(Step::StartNew, step))?;
                    let (tcp, udp) = sockets_of(launched)?;
                    dispatcher.install(slot, tcp.as_ref(), udp.as_ref())?;
                    // The copies must not keep the old listener alive (module docs).
                    drop((tcp, udp));
                }
                Step::SignalOld => {
                    record.old_told_to_stop = Some(Instant::now());
                    signal(old.pid, libc::SIGTERM, backend)?;
                }
            }
        }
        let launched = new.ok_or_else(|| missing(Step::StartNew, "the end"))?;
        Ok(Instance { slot, pid: launched.pid, phase: launched.phase })
    }

    /// Stops `instance` and waits until it has exited.
    async fn stop(&self, lab: &mut Lab, backend: &str, instance: &Instance) -> Result<()> {
        signal(instance.pid, libc::SIGTERM, backend)?;
        match lab.exit_status(instance.pid, self.timeout).await {
            Some(_) => Ok(()),
            None => Err(LabError::Timeout { what: format!("the service on {backend} to exit"), after: self.timeout }),
        }
    }

    /// Stops `backend`'s current process (SIGSTOP) for `pause`, then lets it go on (SIGCONT).
    /// The pause is the event itself, a schedule, not a wait for a condition.
    pub async fn pause(&self, backend: &str, pause: Duration) -> Result<()> {
        let pid = self
            .backends
            .get(backend)
            .ok_or_else(|| LabError::Usage(format!("{backend:?} runs no service")))?
            .current
            .pid;
        signal(pid, libc::SIGSTOP, backend)?;
        tokio::time::sleep(pause).await;
        signal(pid, libc::SIGCONT, backend)
    }

    /// What the dispatchers counted, and how many processes releases started.
    pub fn counters(&self) -> Result<FleetCounters> {
        let mut out = FleetCounters { released: self.released, ..Default::default() };
        out.tally(&self.records);
        for dispatcher in self.backends.values().filter_map(|b| b.dispatcher.as_deref()) {
            dispatcher.count(&mut out)?;
        }
        Ok(out)
    }

    /// The number of backends.
    pub(crate) fn len(&self) -> usize {
        self.backends.len()
    }
}

/// A strategy whose steps are out of order (a programming error, reported rather than a panic).
fn missing(step: Step, before: impl std::fmt::Debug) -> LabError {
    LabError::Unsupported(format!("the release strategy's steps lack a {step:?} before {before:?}"))
}

/// Copies of a launched process's first TCP listener and first UDP socket.
fn sockets_of(launched: &Launched) -> Result<(Option<OwnedFd>, Option<OwnedFd>)> {
    let tcp = launched.sockets.tcp.first().map(|fd| take(launched.pid, *fd)).transpose()?;
    let udp = launched.sockets.udp.first().map(|fd| take(launched.pid, *fd)).transpose()?;
    Ok((tcp, udp))
}

fn signal(pid: u32, signal: libc::c_int, backend: &str) -> Result<()> {
    // SAFETY: kill has no memory preconditions; the pid is a child of this lab.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
        return Err(LabError::os("signal", format!("the service on {backend}"), std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ready: Option<u64>, stop: Option<u64>) -> ReleaseRecord {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        ReleaseRecord {
            backend: "be1".into(),
            began: t0,
            new_ready: ready.map(at),
            old_told_to_stop: stop.map(at),
            old_draining: None,
            probes: ProbeTally::default(),
            steered_after_draining: None,
        }
    }

    #[test]
    fn the_old_process_told_to_stop_before_the_new_one_was_ready_is_out_of_order() {
        assert!(record(Some(20), Some(10)).out_of_order(), "stopped, then ready");
        assert!(record(None, Some(10)).out_of_order(), "stopped, never ready");
        assert!(!record(Some(10), Some(20)).out_of_order(), "ready, then stopped");
        // Takeover: the lab never tells the old process to stop; it drains itself.
        assert!(!record(Some(10), None).out_of_order());
    }

    #[test]
    fn a_dispatcher_that_steered_none_of_the_last_probes_is_unsteered() {
        let steered = |n: Option<u64>| ReleaseRecord { steered_after_draining: n, ..record(Some(10), Some(20)) };
        assert!(steered(Some(0)).unsteered());
        assert!(!steered(Some(25)).unsteered());
        // No program (takeover, restart, drain): nothing to steer, nothing to judge.
        assert!(!steered(None).unsteered());
    }

    #[test]
    fn the_tally_counts_each_release_once_by_what_the_lab_saw() {
        let mut stopped_early = record(Some(20), Some(10));
        stopped_early.probes = ProbeTally { probes: 30, failed: 2, first_failure: Some("refused".into()) };
        stopped_early.steered_after_draining = Some(0);
        let mut clean = record(Some(10), Some(20));
        clean.probes = ProbeTally { probes: 27, failed: 0, first_failure: None };
        clean.steered_after_draining = Some(25);
        let no_program = record(Some(10), Some(20));
        let mut out = FleetCounters::default();
        out.tally(&[stopped_early, clean, no_program]);
        assert_eq!(
            (out.out_of_order, out.unsteered, out.steering_read, out.probes, out.probes_failed),
            (1, 1, 2, 57, 2)
        );
    }

    /// The strategies without a program say so: their releases are not judged on steering
    /// (a number there would count every takeover, restart and drain as unsteered), none lists
    /// an install step, and an install asked of one fails the release rather than passing as
    /// done.
    #[test]
    fn strategies_without_a_program_read_no_steering_and_install_nothing() {
        use crate::release::{drain::Drain, restart::Restart, takeover::Takeover};
        let none: [Box<dyn Dispatcher>; 3] = [
            Box::new(Restart),
            Box::new(Drain { period: Duration::from_secs(1) }),
            Box::new(Takeover { forward: true }),
        ];
        for mut dispatcher in none {
            assert_eq!(dispatcher.steered_new().expect("no program to read"), None, "{dispatcher:?}");
            assert!(!dispatcher.steps().contains(&Step::Install), "{dispatcher:?}");
            assert!(dispatcher.install(1, None, None).is_err(), "{dispatcher:?} installed nothing");
        }
    }
}
