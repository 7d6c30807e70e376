//! The service processes of a scenario's backends across releases: starting the first
//! generation, and releasing backends by a [`Strategy`].
//!
//! The dispatchers live here, in the lab, not in the services: a service announces its sockets'
//! descriptors (`workload::phase::Sockets`); the fleet takes copies ([`super::fds::take`]), puts
//! them into the dispatcher's socket map, attaches the dispatcher through them, and closes the
//! copies at once (a copy held here would keep a listener the old process closed alive, and
//! connections would queue on it with nobody to accept them).
//!
//! A release of a backend (in a batch, backends one after the other):
//! - `restart`: SIGTERM the old process (started with no drain time: it exits at once), wait
//!   for its exit, start the new one;
//! - `drain`: take the backend out of the LB's rings, wait the drain period, then as `restart`,
//!   then put it back;
//! - `takeover`: start the new process with `--takeover` naming the old one's handover socket
//!   (every process of this strategy listens on one); it receives the old one's sockets, and
//!   the old one drains itself;
//! - `reuseport-bpf` / `sk-lookup`: start the new process in the next slot (binding the same
//!   ports with `SO_REUSEPORT`), wait until it is ready, put its sockets into the dispatcher,
//!   flip the dispatcher to its slot, then SIGTERM the old one, which closes its listener and
//!   serves what it has until the lab ends.

use std::{
    collections::BTreeMap,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::release::{
    fds::take,
    strategy::{ReleaseSpec, Strategy},
};
use zrlab_control::{
    reuseport::{Dispatch, ReuseportCounters, ReuseportDispatch},
    sklookup::{SkLookupCounters, SkLookupDispatch},
};
use zrlab_features::Feature;
use zrlab_host::error::{LabError, Result};
use zrlab_topology::Lab;
use zrlab_workload::phase::{Phase, Sockets};

/// How long a released process serves what it has (its drain timeout): longer than any
/// scenario; the lab's teardown ends it.
const OLD_SERVES: &str = "3600s";

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

/// A backend's dispatcher.
#[derive(Debug)]
enum Dispatcher {
    Reuseport(ReuseportDispatch),
    SkLookup(SkLookupDispatch),
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
    dispatcher: Option<Dispatcher>,
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
            let launched = fleet.launch(lab, &backend, 0).await?;
            let dispatcher = match fleet.strategy() {
                Some(Strategy::ReuseportBpf) => {
                    let dispatch = if Feature::SelectOrMigrate.probe().await? {
                        Dispatch::SelectOrMigrate
                    } else {
                        Dispatch::Select
                    };
                    let mut dispatcher = ReuseportDispatch::load(dispatch)?;
                    let (tcp, udp) = sockets_of(&launched)?;
                    dispatcher.set_slot(0, tcp.as_ref(), udp.as_ref())?;
                    for socket in tcp.iter().chain(&udp) {
                        dispatcher.attach(socket)?;
                    }
                    dispatcher.set_generation(0, 1)?;
                    Some(Dispatcher::Reuseport(dispatcher))
                }
                Some(Strategy::SkLookup) => {
                    let (tcp_port, udp_port) = fleet.ports(&backend);
                    let mut dispatcher = SkLookupDispatch::load(tcp_port, udp_port)?;
                    let (tcp, udp) = sockets_of(&launched)?;
                    dispatcher.set_slot(0, tcp.as_ref(), udp.as_ref())?;
                    let netns = &lab.node(&backend)?.netns;
                    dispatcher.attach(netns)?;
                    dispatcher.set_ready(Some(0))?;
                    // The closing listener's queued requests move to the new one (the group
                    // both processes' listeners share): the kernel's own migration.
                    netns
                        .run(|| std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "1"))?
                        .map_err(|e| LabError::os("write", format!("net.ipv4.tcp_migrate_req in {backend}"), e))?;
                    Some(Dispatcher::SkLookup(dispatcher))
                }
                _ => None,
            };
            fleet.backends.insert(backend, Backend { current: Instance { slot: 0, pid: launched.pid }, dispatcher });
        }
        Ok(fleet)
    }

    fn strategy(&self) -> Option<Strategy> {
        self.release.map(|r| r.strategy)
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

    /// Starts process `slot` of `backend`.
    async fn launch(&self, lab: &mut Lab, backend: &str, slot: u32) -> Result<Launched> {
        let mut args = self.args[backend].clone();
        if let Some(spec) = self.release.filter(|r| r.strategy == Strategy::Takeover) {
            args.push(format!("--handover={}", handover_name(slot)));
            if slot > 0 {
                args.push(format!("--takeover={}", handover_name(slot - 1)));
                if spec.forward {
                    args.push("--forward".into());
                }
            }
            args.push(format!("--drain-timeout={OLD_SERVES}"));
        }
        let instance = char::from(b'a' + (slot % 26) as u8);
        args.push(format!("--instance={instance}{}", if slot >= 26 { (slot / 26).to_string() } else { String::new() }));
        args.push(format!("--slot={slot}"));
        match self.strategy() {
            Some(strategy) if strategy.shares_ports() => {
                args.push("--reuseport".into());
                args.push(format!("--drain-timeout={OLD_SERVES}"));
            }
            Some(Strategy::Takeover) => {}
            // Stopped means stopped: the baselines' old process exits at once.
            Some(_) => args.push("--drain-timeout=0s".into()),
            None => {}
        }
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
        let Some(spec) = self.release else {
            return Err(LabError::Unsupported("a release event needs a [release] section".into()));
        };
        for backend in backends {
            let old = self
                .backends
                .get(backend)
                .ok_or_else(|| LabError::Usage(format!("{backend:?} runs no service")))?
                .current
                .clone();
            let slot = old.slot + 1;
            match spec.strategy {
                Strategy::Restart => {
                    self.stop(lab, backend, &old).await?;
                    let launched = self.launch(lab, backend, slot).await?;
                    self.set_current(backend, slot, launched.pid);
                }
                Strategy::Drain => {
                    health(backend, false)?;
                    // The drain period is the strategy's own: what operators wait.
                    tokio::time::sleep(spec.drain_period()).await;
                    self.stop(lab, backend, &old).await?;
                    let launched = self.launch(lab, backend, slot).await?;
                    self.set_current(backend, slot, launched.pid);
                    health(backend, true)?;
                }
                Strategy::Takeover => {
                    // The old process hands over and drains itself once the new one asked.
                    let launched = self.launch(lab, backend, slot).await?;
                    self.set_current(backend, slot, launched.pid);
                }
                Strategy::ReuseportBpf | Strategy::SkLookup => {
                    let launched = self.launch(lab, backend, slot).await?;
                    let (tcp, udp) = sockets_of(&launched)?;
                    match &mut self.backends.get_mut(backend).expect("checked").dispatcher {
                        Some(Dispatcher::Reuseport(d)) => {
                            d.set_slot(slot, tcp.as_ref(), udp.as_ref())?;
                            d.set_generation(slot, 1)?;
                        }
                        Some(Dispatcher::SkLookup(d)) => {
                            d.set_slot(slot, tcp.as_ref(), udp.as_ref())?;
                            d.set_ready(Some(slot))?;
                        }
                        None => unreachable!("dispatching strategies start a dispatcher"),
                    }
                    // The copies must not keep the old listener alive (module docs).
                    drop((tcp, udp));
                    signal(old.pid, libc::SIGTERM, backend)?;
                    self.set_current(backend, slot, launched.pid);
                }
            }
            self.released += 1;
        }
        Ok(())
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
        for backend in self.backends.values() {
            match &backend.dispatcher {
                Some(Dispatcher::Reuseport(d)) => out.reuseport.absorb(&d.counters()?),
                Some(Dispatcher::SkLookup(d)) => out.sk_lookup.absorb(&d.counters()?),
                None => {}
            }
        }
        Ok(out)
    }

    /// The number of backends.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether the fleet has no backend.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }
}

/// The handover socket name of a backend's process in `slot` (abstract, private to the
/// backend's namespace).
fn handover_name(slot: u32) -> String {
    format!("zrlab-handover-{slot}")
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
