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
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::release::{
    dispatcher::{Dispatcher, Step},
    fds::take,
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
        return Ok(Launched { pid: spawned.pid, sockets });
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
    /// The `SK_REUSEPORT` dispatchers'.
    pub reuseport: ReuseportCounters,
    /// The `SK_LOOKUP` dispatchers'.
    pub sk_lookup: SkLookupCounters,
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
            fleet.backends.insert(backend, Backend { current: Instance { slot: 0, pid: launched.pid }, dispatcher });
        }
        Ok(fleet)
    }

    /// The TCP and UDP ports `backend` serves (from its `--tcp=`/`--udp=` arguments).
    fn ports(&self, backend: &str) -> (u16, u16) {
        let port = |prefix: &str| {
            self.args[backend]
                .iter()
                .find_map(|a| a.strip_prefix(prefix)?.parse::<std::net::SocketAddr>().ok())
                .map_or(0, |a| a.port())
        };
        (port("--tcp="), port("--udp="))
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
            let released = self.release_one(lab, backend, &old, dispatcher.as_mut(), health).await;
            self.backends.get_mut(backend).expect("checked").dispatcher = Some(dispatcher);
            let pid = released?;
            self.set_current(backend, old.slot + 1, pid);
            self.released += 1;
        }
        Ok(())
    }

    /// Runs the steps of one release of `backend` (process `old` running); returns the new
    /// process's pid.
    async fn release_one(
        &self,
        lab: &mut Lab,
        backend: &str,
        old: &Instance,
        dispatcher: &mut dyn Dispatcher,
        health: &mut dyn FnMut(&str, bool) -> Result<()>,
    ) -> Result<u32> {
        let slot = old.slot + 1;
        let mut new = None;
        for step in dispatcher.steps() {
            match step {
                Step::Health(up) => health(backend, up)?,
                Step::Wait(period) => tokio::time::sleep(period).await,
                Step::StopOld => self.stop(lab, backend, old).await?,
                Step::StartNew => new = Some(self.launch(lab, backend, Some(&*dispatcher), slot).await?),
                Step::Install => {
                    let launched = new.as_ref().ok_or_else(|| missing(Step::StartNew, step))?;
                    let (tcp, udp) = sockets_of(launched)?;
                    dispatcher.install(slot, tcp.as_ref(), udp.as_ref())?;
                    // The copies must not keep the old listener alive (module docs).
                    drop((tcp, udp));
                }
                Step::SignalOld => signal(old.pid, libc::SIGTERM, backend)?,
            }
        }
        new.map(|launched| launched.pid).ok_or_else(|| missing(Step::StartNew, "the end"))
    }

    fn set_current(&mut self, backend: &str, slot: u32, pid: u32) {
        if let Some(b) = self.backends.get_mut(backend) {
            b.current = Instance { slot, pid };
        }
    }

    /// Stops `instance` and waits until it has exited.
    async fn stop(&self, lab: &mut Lab, backend: &str, instance: &Instance) -> Result<()> {
        signal(instance.pid, libc::SIGTERM, backend)?;
        match lab.exit_status(instance.pid, self.timeout).await {
            Some(_) => Ok(()),
            None => Err(LabError::Timeout { what: format!("the service on {backend} to exit"), after: self.timeout }),
        }
    }

    /// What the dispatchers counted, and how many processes releases started.
    pub fn counters(&self) -> Result<FleetCounters> {
        let mut out = FleetCounters { released: self.released, ..Default::default() };
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
