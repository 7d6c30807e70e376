//! The keeper process (`zrlab keeper`); `zrlab_scenario::handoff` starts it from a kept run.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::{linux::net::SocketAddrExt as _, unix::net::UnixListener},
    path::{Path, PathBuf},
};

use crate::keep::control::{NodeStatus, Request, Response, Status, socket_name};
use zrlab_control::server_id::Registry;
use zrlab_host::{
    error::{LabError, Result},
    run_id::RunId,
};
use zrlab_scenario::{
    Scenario,
    impair::Impairments,
    lb::Deployment,
    runner::{apply, describe},
    tpr::TprDeployment,
};
use zrlab_topology::Lab;
use zrlab_workload::phase::Phase;

/// Arguments of `zrlab keeper`.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct KeeperArgs {
    /// The kept run's prefix (`zrlabk-...`).
    #[arg(long)]
    pub run: String,
    /// The scenario it ran (its main variant is what the keeper deploys).
    #[arg(long, conflicts_with = "replay", required_unless_present = "replay")]
    pub scenario: Option<PathBuf>,
    /// The replay scenario it ran (`replay::lab`; its LB configuration and events).
    #[arg(long)]
    pub replay: Option<PathBuf>,
}

/// What the keeper holds.
struct Held {
    run: String,
    scenario: String,
    lab: Lab,
    deployment: Option<Deployment>,
    tpr: Option<TprDeployment>,
    impairments: Impairments,
    events: Vec<String>,
}

impl Held {
    fn status(&self) -> Result<Status> {
        let lb = self.deployment.as_ref().map(Deployment::status).transpose()?;
        let mut programs = lb.as_ref().map(|l| l.programs.clone()).unwrap_or_default();
        if let Some(tpr) = &self.tpr {
            programs.extend(tpr.attachments());
        }
        programs.extend(self.impairments.programs());
        let nodes = self
            .lab
            .nodes()
            .map(|(name, node)| {
                let pids = self.lab.cgroup_of(name).map(|dir| pids_in(&dir)).unwrap_or_default();
                NodeStatus { name: name.to_owned(), netns: node.netns.name().to_owned(), pids }
            })
            .collect();
        Ok(Status {
            run: self.run.clone(),
            scenario: self.scenario.clone(),
            keeper: std::process::id(),
            nodes,
            programs,
            lb,
            lb_counters: self.deployment.as_ref().map(Deployment::totals).transpose()?,
            tpr_counters: self.tpr.as_ref().map(TprDeployment::totals).transpose()?,
            events: self.events.clone(),
        })
    }

    async fn handle(&mut self, request: Request) -> Result<Status> {
        if let Request::Event { event } = &request {
            apply(&mut self.lab, self.deployment.as_mut(), &mut self.impairments, event).await?;
            self.events.push(describe(event));
        }
        self.status()
    }
}

/// The pids in cgroup `dir`.
fn pids_in(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The keeper: adopts the run, deploys its data path, serves requests until killed.
pub(crate) async fn keep(args: KeeperArgs) -> Result<()> {
    let (run, _) =
        RunId::parse(&args.run).ok_or_else(|| LabError::Usage(format!("{} is not a run prefix", args.run)))?;
    let held = match (&args.scenario, &args.replay) {
        (Some(file), _) => adopt_scenario(&args.run, run, file).await?,
        (None, Some(file)) => adopt_replay(&args.run, run, file).await?,
        (None, None) => return Err(LabError::Usage("the keeper needs --scenario or --replay".into())),
    };
    serve(&args.run, held).await
}

/// A kept scenario run: its main variant's LB and sock_ops programs, its LB events again.
async fn adopt_scenario(prefix: &str, run: RunId, file: &Path) -> Result<Held> {
    let scenario = Scenario::load(file)?;
    let variant = &scenario.main;
    let changes: Vec<_> = variant.events.iter().filter_map(|e| e.group_change()).collect();
    let lab = Lab::adopt(run, &variant.topology, &changes).await?;
    let workload = &variant.workload;
    let registry = Registry::assign(workload.seed, &workload.backends, workload.cid_version.max_id());
    let tpr = variant.tpr.as_ref().map(|spec| TprDeployment::start(&lab, spec, workload, &registry)).transpose()?;
    let mut held = Held {
        run: prefix.to_owned(),
        scenario: scenario.name.clone(),
        deployment: variant
            .lb
            .as_ref()
            .map(|spec| {
                let mut deployment = Deployment::start(&lab, spec, workload, registry.clone())?;
                // A kept lab's checkers keep checking: `lab event kill-backend` is judged by them.
                if let Some(health) = spec.health.as_ref().filter(|h| h.enabled) {
                    deployment.check_health(&lab, health.policy(1))?;
                }
                Ok::<_, LabError>(deployment)
            })
            .transpose()?,
        tpr,
        impairments: Impairments::new(workload.seed),
        lab,
        events: Vec::new(),
    };
    // The lossy links, rings and live ids as the run left them: its impairments and LB events
    // again (ECMP ones are in the kernel already, and in the adopted groups' state).
    for spec in &variant.impair {
        held.impairments.apply(&held.lab, spec)?;
    }
    for event in &variant.events {
        if let Some(deployment) = held.deployment.as_mut() {
            apply_lb(deployment, event)?;
        }
        if let Some(spec) = event.impairment() {
            held.impairments.apply(&held.lab, spec)?;
        }
        held.events.push(describe(event));
    }
    Ok(held)
}

/// A kept replay: the replay's LB configuration, its LB events again.
async fn adopt_replay(prefix: &str, run: RunId, file: &Path) -> Result<Held> {
    let spec = zrlab_replay::lab::ReplaySpec::load(file)?;
    let changes: Vec<_> = spec.events.iter().filter_map(|e| e.event.group_change()).collect();
    let lab = Lab::adopt(run, &spec.topology, &changes).await?;
    let mut deployment = zrlab_replay::lab::deploy(&lab, &spec)?;
    let mut events = Vec::new();
    for timed in &spec.events {
        apply_lb(&mut deployment, &timed.event)?;
        events.push(format!("after packet {}: {}", timed.at_packet, describe(&timed.event)));
    }
    let name = file.file_stem().and_then(|s| s.to_str()).unwrap_or("replay");
    Ok(Held {
        run: prefix.to_owned(),
        scenario: format!("replay {name}"),
        deployment: Some(deployment),
        tpr: None,
        impairments: Impairments::new(1),
        lab,
        events,
    })
}

/// Answers requests on the run's socket until killed.
async fn serve(prefix: &str, mut held: Held) -> Result<()> {
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(socket_name(prefix).as_bytes())
        .map_err(|e| LabError::os("name", "the keeper's socket", e))?;
    let listener = UnixListener::bind_addr(&addr).map_err(|e| LabError::os("bind", "the keeper's socket", e))?;
    let mut out = std::io::stdout();
    // Whoever started us may be gone already: a closed stdout is no reason to stop.
    let _ = out.write_all(Phase::Ready.emit().as_bytes()).and_then(|()| out.flush());
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let mut reader = BufReader::new(&stream);
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => match held.handle(request).await {
                Ok(status) => Response { status: Some(status), error: None },
                Err(e) => Response { status: None, error: Some(e.to_string()) },
            },
            Err(e) => Response { status: None, error: Some(format!("bad request {line:?}: {e}")) },
        };
        let mut writer = &stream;
        let _ = writer.write_all((serde_json::to_string(&response).expect("serialisable") + "\n").as_bytes());
    }
    Ok(())
}

/// Applies one of the timeline's LB events to `deployment` (ECMP events are the kernel's).
fn apply_lb(deployment: &mut Deployment, event: &zrlab_scenario::spec::EventSpec) -> Result<()> {
    use zrlab_scenario::spec::EventSpec;
    match event {
        EventSpec::DrainBackend { backend } => deployment.drain(backend),
        EventSpec::RestoreBackend { backend } => deployment.restore(backend),
        EventSpec::SetWeight { backend, weight } => deployment.set_weight(backend, *weight),
        // The kept lab runs the version the run ended with.
        EventSpec::UpgradeLb { node, to, handover } => deployment.upgrade(node, *to, *handover).map(drop),
        // A release leaves the rings as they were (a drain release puts the backend back); a
        // killed host is still dead, and the checkers find it so again.
        EventSpec::RemoveMember { .. }
        | EventSpec::ReplaceMember { .. }
        | EventSpec::AddMember { .. }
        | EventSpec::Release { .. }
        | EventSpec::KillBackend { .. }
        | EventSpec::ImpairLinks(_)
        | EventSpec::PauseBackend { .. } => Ok(()),
    }
}
