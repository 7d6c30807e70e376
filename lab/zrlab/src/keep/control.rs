//! The keeper's control protocol: one JSON request per line, one JSON response per line, over
//! the abstract Unix socket [`socket_name`] in the keeper's network namespace (abstract names
//! are per namespace, and vanish with it: nothing on the machine's file system).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::{linux::net::SocketAddrExt as _, unix::net::UnixStream},
};

use serde::{Deserialize, Serialize};

use zrlab_host::{
    error::{LabError, Result},
    netns::{self, Netns},
    run_id::RunId,
};
use zrlab_scenario::{
    lb::LbStatus,
    measures::{LbTotals, TprTotals},
    spec::EventSpec,
};

/// The abstract socket name of run `run`'s keeper.
pub(crate) fn socket_name(run: &str) -> String {
    format!("zrlab-keeper-{run}")
}

/// A request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "request")]
pub(crate) enum Request {
    /// What the run holds.
    Status,
    /// Apply a timeline action.
    Event {
        /// The action.
        event: EventSpec,
    },
}

/// A node of a kept run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct NodeStatus {
    /// Name.
    pub name: String,
    /// Its namespace (`ip netns exec <netns> ...`).
    pub netns: String,
    /// Processes in its cgroup (services, the keeper).
    pub pids: Vec<u32>,
}

/// What a kept run holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Status {
    /// The run's prefix.
    pub run: String,
    /// The scenario it ran.
    pub scenario: String,
    /// The keeper's pid.
    pub keeper: u32,
    /// Its nodes.
    pub nodes: Vec<NodeStatus>,
    /// Every program the keeper holds attached: `node ifname program`, `node cgroup program`.
    pub programs: Vec<String>,
    /// VIPs, reals, live ids and rings (and the LB's own programs), when the scenario runs an LB.
    pub lb: Option<LbStatus>,
    /// The LB and decap programs' counters since the keeper attached them.
    pub lb_counters: Option<LbTotals>,
    /// The sock_ops programs' counters since the keeper attached them.
    pub tpr_counters: Option<TprTotals>,
    /// The events applied: the timeline's, then those sent with `zrlab event`.
    pub events: Vec<String>,
}

/// A response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Response {
    /// The status (after the event, for events), or `None` on an error.
    pub status: Option<Status>,
    /// What went wrong.
    pub error: Option<String>,
}

impl Status {
    /// A terminal rendering.
    pub(crate) fn table(&self) -> String {
        let mut out = format!("run {} (scenario {}), keeper pid {}\n\nnodes:\n", self.run, self.scenario, self.keeper);
        for node in &self.nodes {
            out.push_str(&format!("  {:<8} ip netns exec {}   pids {:?}\n", node.name, node.netns, node.pids));
        }
        out.push_str("\nprograms:\n");
        for program in &self.programs {
            out.push_str(&format!("  {program}\n"));
        }
        if let Some(lb) = &self.lb {
            out.push_str(&format!("\nLB: VIPs {}\n", lb.vips.join(", ")));
            for (node, addr, weight, up) in &lb.reals {
                let state = if *weight == 0 {
                    "removed"
                } else if *up {
                    "in the rings"
                } else {
                    "drained"
                };
                out.push_str(&format!("  {node:<6} {addr:<16} weight {weight}  {state}\n"));
            }
            let ids: Vec<String> = lb.live_ids.iter().map(|(id, node)| format!("{id} {node}")).collect();
            out.push_str(&format!("  live ids: {}\n", ids.join(", ")));
            for (node, backend) in &lb.unhealthy {
                out.push_str(&format!("  {node}'s health checker: {backend} down (out of its rings and live ids)\n"));
            }
            for (vip, shares) in &lb.rings {
                let shares: Vec<String> = shares.iter().map(|(node, slots)| format!("{node} {slots}")).collect();
                out.push_str(&format!("  ring {vip}: {}\n", shares.join(", ")));
            }
        }
        if let Some(c) = &self.lb_counters {
            out.push_str(&format!("\nLB counters: {}\n", serde_json::to_string(c).expect("serialisable")));
        }
        if let Some(c) = &self.tpr_counters {
            out.push_str(&format!(
                "sock_ops counters: server {}, client {}\n",
                serde_json::to_string(&c.server).expect("serialisable"),
                serde_json::to_string(&c.client).expect("serialisable")
            ));
        }
        out.push_str("\nevents:\n");
        for event in &self.events {
            out.push_str(&format!("  {event}\n"));
        }
        out
    }
}

/// The kept runs on this machine (their prefixes), from their namespaces.
pub(crate) fn kept_runs() -> Result<Vec<String>> {
    let mut runs: Vec<String> = netns::list()?
        .into_iter()
        .filter_map(|name| {
            let (run, _) = RunId::parse(&name)?;
            run.kept.then(|| run.to_string())
        })
        .collect();
    runs.sort();
    runs.dedup();
    Ok(runs)
}

/// `run`, or the only kept run when `None`.
pub(crate) fn pick_run(run: Option<&str>) -> Result<String> {
    let runs = kept_runs()?;
    match run {
        Some(run) if runs.iter().any(|r| r == run) => Ok(run.to_owned()),
        Some(run) => Err(LabError::Usage(format!("no kept run {run}; kept runs: {runs:?}"))),
        None if runs.len() == 1 => Ok(runs[0].clone()),
        None if runs.is_empty() => Err(LabError::Usage("no kept run (start one with `run FILE --keep`)".into())),
        None => Err(LabError::Usage(format!("several kept runs, name one: {runs:?}"))),
    }
}

/// Sends `request` to run `run`'s keeper: found in whichever of the run's namespaces holds its
/// socket.
pub(crate) fn request(run: &str, request: &Request) -> Result<Response> {
    let name = socket_name(run);
    let line = serde_json::to_string(request).expect("serialisable") + "\n";
    let namespaces: Vec<String> = netns::list()?.into_iter().filter(|n| n.starts_with(&format!("{run}-"))).collect();
    for ns in &namespaces {
        let netns = Netns::open(ns)?;
        let answer = netns.run(|| -> std::io::Result<Option<String>> {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            let Ok(mut stream) = UnixStream::connect_addr(&addr) else { return Ok(None) };
            stream.write_all(line.as_bytes())?;
            let mut reply = String::new();
            BufReader::new(stream).read_line(&mut reply)?;
            Ok(Some(reply))
        });
        // An opened namespace is not ours to remove.
        netns.keep();
        if let Some(reply) = answer?.map_err(|e| LabError::os("talk to the keeper of", run, e))? {
            return serde_json::from_str(&reply)
                .map_err(|e| LabError::Usage(format!("the keeper of {run} answered {reply:?}: {e}")));
        }
    }
    Err(LabError::Usage(format!("run {run} has no keeper (it was kept before keepers existed, or it was killed)")))
}
