//! Running a scenario: control first, then the main variant, each in a topology of its own.
//!
//! A variant's life, every step a wait on a condition with a timeout (never a sleep):
//! 1. build the topology; draw the backends' server ids; attach the sock_ops programs
//!    (`[tpr]`); start the service on every backend and wait until each says `ready`; deploy
//!    the LB (`[lb]`);
//! 2. start the client flows; wait until every flow has an owner and `warmup_rounds` rounds;
//!    from then on new flows open if the workload asks for them;
//! 3. fire each event after every live flow made `rounds_between_events` more rounds (0: right
//!    after the previous one, so several events act as one change);
//! 4. wait `settle_rounds` more rounds, stop the flows, tally, tear down.
//!
//! The verdict passes only if both variants meet their expectations: the main one shows the
//! fix works, the control shows the failure the fix prevents.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    expect::{Capacity, Check, evaluate},
    impair::Impairments,
    lb::Deployment,
    measures::{DeathMeasures, Measures},
    release::{Fleet, ReleaseRecord, launch},
    spec::{EventSpec, Scenario, Variant, WorkloadSpec},
    tpr::TprDeployment,
};
use zrlab_control::server_id::Registry;
use zrlab_host::error::{LabError, Result};
use zrlab_topology::{Lab, Loss};
use zrlab_workload::{
    accounting::{Dying, FlowRecord, Tally},
    client::{Client, ClientSpec, FlowBook},
    timeline::Timeline,
};

/// How a scenario is run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Leave the main variant's topology (and services) up afterwards.
    pub keep: bool,
    /// The `zrlab` binary, started as `zrlab service ...` on backends.
    pub service_exe: PathBuf,
    /// Multiplies every duration of a scenario: the request period and the reply and phase
    /// timeouts. Rounds stay as written, so a scaled scenario asks the same question at a lower
    /// packet rate with more patience: for emulated machines (the kernel matrix sets 5 in TCG
    /// guests, which run 8-9x slower), where 4,000 requests a second with a 1 s reply budget
    /// would measure the emulator. 1 means as written; 0 counts as 1.
    pub time_scale: u32,
    /// Whether capacity expectations can fail the run (the kernel matrix reports them only).
    pub capacity: Capacity,
}

/// A scenario's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScenarioVerdict {
    /// Both variants met their expectations.
    Pass,
    /// An expectation failed, or the run itself did.
    Fail,
    /// The kernel lacks a feature the scenario needs.
    Skip,
}

/// What one variant measured.
#[derive(Clone, Debug)]
pub struct VariantOutcome {
    /// Everything measured (the tally and the LB programs' counters).
    pub measures: Measures,
    /// Its expectations, evaluated.
    pub checks: Vec<Check>,
    /// Topology set-up time.
    pub setup: Duration,
    /// Topology teardown time (zero when kept).
    pub teardown: Duration,
    /// Every flow's record.
    pub flows: Vec<FlowRecord>,
    /// The kernel's nonzero drop counters in the lab's namespaces when the flows stopped.
    pub losses: Vec<Loss>,
    /// What the client saw per second, and when the events happened.
    pub timeline: Timeline,
    /// The run prefix of a kept topology.
    pub kept: Option<String>,
    /// Routers whose ECMP hash could not be seeded on this kernel (see `Lab::ecmp_unseeded`):
    /// the run is not reproducible flow for flow.
    pub ecmp_unseeded: Vec<String>,
    /// The nodes its events took down: their flows are excused (tallied apart).
    pub down: BTreeSet<String>,
    /// The flows a dying host may have taken (excused when they failed).
    pub dying: Dying,
    /// Wall time of each phase, in order (`building topology`, `deploying the load
    /// balancer`, an event, ...): where a slow machine's time goes.
    pub phases: Vec<(String, Duration)>,
}

/// The phases of a variant: says each one as it starts (through the caller's progress) and
/// keeps how long each took.
struct Phases<'a> {
    say: &'a mut dyn FnMut(&str),
    current: Option<(String, Instant)>,
    done: Vec<(String, Duration)>,
}

impl<'a> Phases<'a> {
    fn new(say: &'a mut dyn FnMut(&str)) -> Self {
        Self { say, current: None, done: Vec::new() }
    }

    /// Ends the current phase and starts `what`.
    fn step(&mut self, what: &str) {
        self.end_current();
        (self.say)(what);
        self.current = Some((what.to_owned(), Instant::now()));
    }

    fn end_current(&mut self) {
        if let Some((what, started)) = self.current.take() {
            self.done.push((what, started.elapsed()));
        }
    }

    /// Every phase with its duration, the last one ended now.
    fn finish(mut self) -> Vec<(String, Duration)> {
        self.end_current();
        self.done
    }
}

/// A scenario's result.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Scenario name.
    pub name: String,
    /// The verdict.
    pub verdict: ScenarioVerdict,
    /// Why (failed checks, the error, or the missing feature); empty on a pass.
    pub reason: String,
    /// The main variant, if it ran to the end.
    pub main: Option<VariantOutcome>,
    /// The control variant, if it ran to the end.
    pub control: Option<VariantOutcome>,
}

/// Runs `scenario` (control, then main), reporting each step through `progress`.
pub async fn run_scenario(scenario: &Scenario, opts: &RunOptions, progress: &mut dyn FnMut(String)) -> Result<Outcome> {
    let mut outcome = Outcome {
        name: scenario.name.clone(),
        verdict: ScenarioVerdict::Pass,
        reason: String::new(),
        main: None,
        control: None,
    };
    for feature in &scenario.requires {
        if !feature.probe().await? {
            outcome.verdict = ScenarioVerdict::Skip;
            outcome.reason = format!("kernel lacks {}", feature.describe());
            return Ok(outcome);
        }
    }
    let mut reasons = Vec::new();
    for (label, variant, keep) in [("control", &scenario.control, false), ("main", &scenario.main, opts.keep)] {
        let mut step = |what: &str| progress(format!("{} [{label}]: {what}", scenario.name));
        let keep = keep.then_some(scenario.file.as_path());
        match run_variant(variant, keep, opts, &mut step).await {
            Ok(result) => {
                for check in result.checks.iter().filter(|c| !c.ok) {
                    reasons.push(format!("{label}: expected {} but got {}", check.expect, check.actual));
                }
                if label == "main" { outcome.main = Some(result) } else { outcome.control = Some(result) }
            }
            Err(LabError::Interrupted) => return Err(LabError::Interrupted),
            Err(e) => reasons.push(format!("{label}: {e}")),
        }
    }
    if !reasons.is_empty() {
        outcome.verdict = ScenarioVerdict::Fail;
        outcome.reason = reasons.join("; ");
    }
    Ok(outcome)
}

/// Runs one variant; `keep` (the scenario file) keeps its topology and hands its data path to
/// a keeper process (`zrlab::keep`).
async fn run_variant(
    variant: &Variant,
    keep: Option<&std::path::Path>,
    opts: &RunOptions,
    step: &mut dyn FnMut(&str),
) -> Result<VariantOutcome> {
    let mut phases = Phases::new(step);
    let timing = &variant.timing.for_capacity(opts.capacity);
    let workload = &variant.workload;
    let scale = opts.time_scale.max(1);
    let phase_timeout = timing.phase_timeout() * scale;
    phases.step("building topology");
    let mut lab = Lab::build(&variant.topology, keep.is_some()).await?;
    let setup = lab.setup_time();

    // Declared after the lab, so dropped before it.
    let mut impairments = Impairments::new(workload.seed);
    if !variant.impair.is_empty() {
        phases.step("impairing links");
        for spec in &variant.impair {
            impairments.apply(&lab, spec)?;
        }
    }
    let registry = Registry::assign(workload.seed, &workload.backends, workload.cid_version.max_id());
    // Declared after the lab, so dropped before it (as the LB deployment below).
    let tpr = match &variant.tpr {
        Some(spec) => {
            phases.step("attaching the sock_ops programs");
            Some(TprDeployment::start(&lab, spec, workload, &registry)?)
        }
        None => None,
    };
    phases.step("starting services");
    let args = workload
        .backends
        .iter()
        .map(|b| (b.clone(), service_args(workload, b, registry.id(b).expect("every backend has an id"))))
        .collect();
    let mut fleet = Fleet::start(&mut lab, variant.release, &opts.service_exe, args, phase_timeout).await?;

    // Declared after the lab, so dropped before it: the programs detach while their
    // namespaces still exist.
    let mut deployment = match &variant.lb {
        Some(spec) => {
            phases.step("deploying the load balancer");
            let mut deployment = Deployment::start(&lab, spec, workload, registry.clone())?;
            if let Some(health) = spec.health.as_ref().filter(|h| h.enabled) {
                deployment.check_health(&lab, health.policy(scale))?;
            }
            Some(deployment)
        }
        None => None,
    };

    phases.step("warming up");
    let client = Client::start(
        &lab.node(&workload.client)?.netns,
        ClientSpec {
            vip: workload.vip,
            tcp_port: workload.tcp_port,
            udp_port: workload.udp_port,
            tcp_flows: workload.tcp_flows,
            udp_flows: workload.udp_flows,
            period: Duration::from_millis(workload.period_ms) * scale,
            reply_timeout: timing.reply_timeout() * scale,
            tcp_reply_timeout: timing.tcp_reply_timeout() * scale,
            seed: workload.seed,
            cgroup: Some(lab.cgroup_of(&workload.client)?),
            open_tcp_per_period: workload.open_tcp_per_period,
            upload_bytes: workload.upload_bytes,
        },
    )?;
    let book = client.book();
    // A flow may also end before its first reply (a control that breaks flows at once): that
    // is tallied like any other failure, not treated as a broken lab.
    book.wait_until("every flow to get its first reply", phase_timeout, |flows| {
        flows.iter().all(|f| f.owner.is_some() || !f.live())
    })
    .await?;
    wait_rounds(&client, timing.warmup_rounds, phase_timeout, "warm-up rounds").await?;
    client.start_opening();

    let mut down = BTreeSet::new();
    let mut drained = BTreeMap::new();
    let mut dying = Dying::default();
    let mut deaths = Vec::new();
    for event in &variant.events {
        wait_rounds(&client, timing.rounds_between_events, phase_timeout, "rounds before the next event").await?;
        phases.step(&format!("event {}", describe(event)));
        // Marked when it starts (a release's failures begin with it), with the share of
        // instances released once it is done.
        let released = match event {
            EventSpec::Release { backends } => {
                let done = fleet.counters()?.released + backends.len() as u64;
                Some(done as f64 / fleet.len().max(1) as f64)
            }
            _ => None,
        };
        client.book().mark(describe(event), released);
        if let EventSpec::Release { backends } = event {
            let mut health = |backend: &str, up: bool| match deployment.as_mut() {
                Some(d) if up => d.restore(backend),
                Some(d) => d.drain(backend),
                None => Err(LabError::Unsupported("a health change without a load balancer".into())),
            };
            fleet.release(&mut lab, backends, &mut health).await?;
            for record in fleet.new_records() {
                mark_release(client.book(), &record);
            }
        } else if let EventSpec::PauseBackend { backend, ms } = event {
            fleet.pause(backend, Duration::from_millis(*ms) * scale).await?;
        } else if let EventSpec::KillBackend { backend } = event {
            lab.kill_host(backend).await?;
            // Dead from here: its links are down and nothing of it runs.
            let at = Instant::now();
            deaths.push(Death { backend: backend.clone(), at, out_after: None });
        } else {
            apply(&mut lab, deployment.as_mut(), &mut impairments, event).await?;
        }
        // Flows that open from here on were routed by the changed configuration.
        let epoch = client.book().advance_epoch();
        if let Some(node) = event.takes_down() {
            down.insert(node.to_owned());
        }
        // The epochs a backend is out of the rings in: from its drain to its restore.
        match event {
            EventSpec::DrainBackend { backend } => {
                drained.entry(backend.clone()).or_insert_with(Vec::new).push(epoch..u64::MAX);
            }
            EventSpec::RestoreBackend { backend } => {
                if let Some(open) = drained.get_mut(backend).and_then(|spans| spans.last_mut()) {
                    open.end = open.end.min(epoch);
                }
            }
            _ => {}
        }
        // A killed backend stays in the rings until every LB node's health checker took it
        // out: flows opened until then that could not connect went to the dying host (excused,
        // `accounting::Dying`). From then on (the next epoch) new flows must connect. How long
        // that took is judged on its own (`backend_out_of_rings_ms`). Without checkers (a
        // control) the window closes when their detection budget would have run out: the new
        // flows the rings still send to the dead host after that count.
        if let (EventSpec::KillBackend { backend }, Some(death)) = (event, deaths.last_mut()) {
            // Flows opened before the death (an earlier epoch) still without an answer may have
            // their first request lost with the host; later ones are in the dying epochs.
            let book = client.book().snapshot();
            let unanswered = book.iter().filter(|f| f.epoch < epoch && f.owner.is_none() && f.live());
            dying.in_flight.extend(unanswered.map(|f| f.id));
            let budget = variant
                .lb
                .as_ref()
                .and_then(|lb| lb.health.as_ref())
                .map(|h| h.policy(scale).detection_budget())
                .expect("kill-backend needs [lb.health] (checked at load)");
            let checked = deployment.as_ref().filter(|d| d.checks_health());
            let checking = checked.is_some();
            let detected = match checked {
                Some(d) => d.wait_out(backend, death.at, death.at + phase_timeout).await,
                None => {
                    tokio::time::sleep_until((death.at + budget).into()).await;
                    None
                }
            };
            death.out_after = detected;
            let label = match (detected, checking) {
                (Some(after), _) => format!("{backend} out of every LB node's rings after {} ms", after.as_millis()),
                (None, true) => {
                    format!("{backend} still in an LB node's rings after {} ms", phase_timeout.as_millis())
                }
                (None, false) => {
                    format!("no health checks: {backend}'s detection budget ({} ms) over", budget.as_millis())
                }
            };
            client.book().mark(label, None);
            let closed = client.book().advance_epoch();
            dying.epochs.push(epoch..closed);
        }
    }
    phases.step("settling");
    wait_rounds(&client, timing.settle_rounds, phase_timeout, "rounds after the last event").await?;
    let timeline = client.book().timeline();
    let flows = client.stop()?;
    let losses = lab.losses().await?;
    // A flow counts where its owner's host stayed up (as in the tally).
    let counted =
        |id: u32| flows.get(id as usize).and_then(|f| f.owner.as_ref()).is_none_or(|owner| !down.contains(&owner.node));
    let ended = |id: u32| flows.get(id as usize).is_some_and(|f| !f.live());
    // In the scenario's own time, as its expectations are written: a scaled run stretches every
    // duration (the period included) by `scale`.
    let gaps = timeline.reply_gaps_ms(counted, ended);
    let max_reply_gap_ms = gaps.values().max().map(|ms| ms / u64::from(scale));
    let mut longest_gaps: Vec<(u32, u64)> = gaps.into_iter().map(|(flow, ms)| (flow, ms / u64::from(scale))).collect();
    longest_gaps.sort_by_key(|&(flow, ms)| (std::cmp::Reverse(ms), flow));
    longest_gaps.truncate(LONGEST_GAPS);
    let measures = Measures {
        tally: Tally::of(&flows, &down, &drained, &dying),
        lb: deployment.as_ref().map(Deployment::totals).transpose()?,
        tpr: tpr.as_ref().map(TprDeployment::totals).transpose()?,
        weights: variant
            .lb
            .as_ref()
            .map(|lb| workload.backends.iter().map(|b| (b.clone(), lb.weights.get(b).copied().unwrap_or(1))).collect())
            .unwrap_or_default(),
        release: variant.release.map(|_| fleet.counters()).transpose()?,
        capacity_dip_pct: match variant.release {
            Some(_) => timeline.capacity_dip_pct().map_err(|why| why.to_string()),
            None => Err("no release in the scenario".into()),
        },
        latency_p99_ms: timeline.latency_p99_ms().map(|ms| ms.div_ceil(u64::from(scale))),
        max_reply_gap_ms,
        longest_gaps,
        deaths: deaths_measured(&deaths, deployment.as_ref(), scale)?,
        impair: impairments.totals()?,
        learned_mss: flows.iter().filter_map(|f| f.mss).fold(BTreeMap::new(), |mut by, mss| {
            *by.entry(mss).or_insert(0) += 1;
            by
        }),
    };
    let checks = evaluate(&variant.expect, &measures, opts.capacity);
    drop(deployment);
    drop(tpr);
    // A kept run's keeper attaches them again.
    drop(impairments);
    if let Some(file) = keep {
        phases.step("handing the data path to a keeper process");
        crate::handoff::start_keeper(
            &mut lab,
            &workload.client,
            &opts.service_exe,
            crate::handoff::KeptRun::Scenario(file),
            phase_timeout,
        )
        .await?;
    }

    phases.step("tearing down");
    let kept = keep.map(|_| lab.run_id().to_string());
    let ecmp_unseeded = lab.ecmp_unseeded().to_vec();
    let teardown = lab.teardown()?;
    let phases = phases.finish();
    Ok(VariantOutcome {
        measures,
        checks,
        setup,
        teardown,
        flows,
        losses,
        timeline,
        kept,
        ecmp_unseeded,
        down,
        dying,
        phases,
    })
}

/// A backend host a `kill-backend` event killed.
struct Death {
    backend: String,
    at: Instant,
    /// How long until every LB node's health checker had taken it out, if they all did
    /// within the detection budget.
    out_after: Option<Duration>,
}

/// What the run's deaths measured, in the scenario's time (divided by `scale`); `None` when
/// nothing was killed.
fn deaths_measured(deaths: &[Death], deployment: Option<&Deployment>, scale: u32) -> Result<Option<DeathMeasures>> {
    if deaths.is_empty() {
        return Ok(None);
    }
    let mut out = DeathMeasures { out_of_rings_ms: Some(0), ids_still_live: 0 };
    for death in deaths {
        let ms = death.out_after.map(|d| d.as_millis() as u64 / u64::from(scale.max(1)));
        out.out_of_rings_ms = out.out_of_rings_ms.zip(ms).map(|(a, b)| a.max(b));
        if let Some(deployment) = deployment {
            out.ids_still_live += deployment.nodes_with_live_id(&death.backend)?;
        }
    }
    Ok(Some(out))
}

/// How many flows' longest reply gaps a run keeps (the longest first) for its report.
const LONGEST_GAPS: usize = 5;

/// Marks a backend's release on the timeline: when the new process was ready, when the old
/// one was told to stop and said it drains, and what the probes aimed at the backend met.
fn mark_release(book: &FlowBook, record: &ReleaseRecord) {
    let backend = &record.backend;
    let facts = [
        (record.new_ready, "new process ready"),
        (record.old_told_to_stop, "old process told to stop"),
        (record.old_draining, "old process draining"),
    ];
    for (at, what) in facts {
        if let Some(at) = at {
            book.mark_at(at, format!("{backend}: {what}"), None);
        }
    }
    let probes = &record.probes;
    if let Some(first) = &probes.first_failure {
        let failed = format!("{backend}: {} of {} probes failed, the first: {first}", probes.failed, probes.probes);
        book.mark_at(record.began, failed, None);
    }
}

/// The arguments of `zrlab service` for `backend` serving `workload` with server id `id`.
pub fn service_args(workload: &WorkloadSpec, backend: &str, id: u32) -> Vec<String> {
    vec![
        "service".to_owned(),
        format!("--node={backend}"),
        format!("--tcp={}", SocketAddr::new(workload.vip, workload.tcp_port)),
        format!("--udp={}", SocketAddr::new(workload.vip, workload.udp_port)),
        format!("--server-id={id}"),
        format!(
            "--cid-version={}",
            serde_json::to_value(workload.cid_version).expect("serialisable").as_str().expect("string")
        ),
    ]
}

/// Starts `exe args` (a `zrlab service`) in `node` and waits until it reports
/// `phase ready` (`release::launch`); an error says how it ended if it exited first.
pub async fn start_service(
    lab: &mut Lab,
    node: &str,
    exe: &std::path::Path,
    args: &[String],
    timeout: Duration,
) -> Result<()> {
    launch(lab, node, exe, args, timeout).await.map(drop)
}

/// Waits until every live flow has completed `rounds` more rounds than it had on entry.
async fn wait_rounds(client: &Client, rounds: u64, timeout: Duration, what: &str) -> Result<()> {
    let marks: Vec<u64> = client.book().snapshot().iter().map(|f| f.rounds).collect();
    client
        .book()
        .wait_until(what, timeout, |flows| {
            flows.iter().zip(&marks).all(|(flow, mark)| !flow.live() || flow.rounds >= mark + rounds)
        })
        .await
}

/// Applies `event` to `lab`, its LB `deployment` and its link `impairments`.
pub async fn apply(
    lab: &mut Lab,
    deployment: Option<&mut Deployment>,
    impairments: &mut Impairments,
    event: &EventSpec,
) -> Result<()> {
    match event {
        EventSpec::RemoveMember { group, member } => lab.remove_member(group, member).await,
        EventSpec::ReplaceMember { group, member, with } => lab.replace_member(group, member, with).await,
        EventSpec::AddMember { group, member } => lab.add_member(group, member).await,
        EventSpec::DrainBackend { backend } => match deployment {
            Some(deployment) => deployment.drain(backend),
            None => Err(LabError::Unsupported("drain-backend without a load balancer".into())),
        },
        EventSpec::SetWeight { backend, weight } => match deployment {
            Some(deployment) => deployment.set_weight(backend, *weight),
            None => Err(LabError::Unsupported("set-weight without a load balancer".into())),
        },
        EventSpec::RestoreBackend { backend } => match deployment {
            Some(deployment) => deployment.restore(backend),
            None => Err(LabError::Unsupported("restore-backend without a load balancer".into())),
        },
        // Releases and pauses need the scenario's service processes (`release::Fleet`): the
        // runner fires them itself.
        EventSpec::KillBackend { backend } => lab.kill_host(backend).await,
        EventSpec::ImpairLinks(spec) => impairments.apply(lab, spec),
        EventSpec::UpgradeLb { node, to, handover } => match deployment {
            Some(deployment) => deployment.upgrade(node, *to, *handover).map(drop),
            None => Err(LabError::Unsupported("upgrade-lb without a load balancer".into())),
        },
        EventSpec::Release { .. } | EventSpec::PauseBackend { .. } => {
            Err(LabError::Unsupported(format!("{} outside a scenario run", describe(event))))
        }
    }
}

/// A line describing `event`.
pub fn describe(event: &EventSpec) -> String {
    match event {
        EventSpec::RemoveMember { group, member } => format!("remove {member} from {group}"),
        EventSpec::ReplaceMember { group, member, with } => format!("replace {member} by {with} in {group}"),
        EventSpec::AddMember { group, member } => format!("add {member} to {group}"),
        EventSpec::DrainBackend { backend } => format!("drain {backend} from the LB rings"),
        EventSpec::SetWeight { backend, weight } => format!("set {backend}'s weight to {weight}"),
        EventSpec::RestoreBackend { backend } => format!("restore {backend} to the LB rings"),
        EventSpec::Release { backends } => format!("release {}", backends.join(", ")),
        EventSpec::PauseBackend { backend, ms } => format!("pause {backend}'s service for {ms} ms"),
        EventSpec::KillBackend { backend } => format!("kill {backend}'s host"),
        EventSpec::UpgradeLb { node, to, handover: true } => format!("upgrade {node}'s LB to {to} in place"),
        EventSpec::UpgradeLb { node, to, handover: false } => {
            format!("replace {node}'s LB with {to} on fresh maps (naive)")
        }
        EventSpec::ImpairLinks(spec) => format!(
            "impair {}'s {}: drop {} ppm, duplicate {} ppm, {:?}",
            spec.node,
            spec.ifname.as_deref().unwrap_or("interfaces"),
            spec.drop_ppm,
            spec.dup_ppm,
            spec.direction
        ),
    }
}
