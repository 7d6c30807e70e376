//! `zrlab`: runs the lab (normally through `cargo xtask lab`).
//!
//! With no subcommand it runs the default scenarios of the fixtures directory, prints the
//! report table, writes `report.json` and `report.md`, and exits non-zero if any expectation
//! failed. Every run first removes what crashed runs left behind, and tears its own topology
//! down on success, failure, panic, SIGINT and SIGTERM.

mod bench;
mod junit;
mod keep;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::signal::unix::{SignalKind, signal};
use zrlab_host::clean::{self, Scope};
use zrlab_scenario::{Outcome, RunOptions, Scenario, expect::Capacity, report::Report, run_scenario};
use zrlab_workload::service::{ServiceArgs, serve};

/// `print!` that treats a closed standard output (`zrlab ... | head`) as the end of the
/// reader's interest, not as a reason to panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

/// `println!`, as [`out!`].
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

const DEFAULT_FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
const DEFAULT_TARGET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target");

#[derive(Parser)]
#[command(
    name = "zrlab",
    about = "The zero-reset traffic-engineering lab",
    long_about = "Runs scenarios in network namespaces and reports resets, misroutes and drops.\n\
                  Without a subcommand: runs the default scenarios. Needs root."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Fixtures directory (holds scenarios/ and topologies/).
    #[arg(long, global = true, default_value = DEFAULT_FIXTURES)]
    fixtures: PathBuf,
    /// Where reports are written [default: target/lab, or target/bench for benchmarks].
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Multiply every duration of a scenario (request period, reply and phase timeouts) for a
    /// slow or emulated machine; rounds stay as written. The kernel matrix sets 5 in TCG guests.
    #[arg(long, global = true, env = "ZRLAB_TIME_SCALE", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    time_scale: u32,
    /// Whether a scenario's timing expectations (`capacity_dip_pct`, `latency_p99_ms`,
    /// `max_reply_gap_ms`) can fail it: `report` measures and reports them as "not judged" (the
    /// kernel matrix's TCG guests, whose load swings by a third from second to second, and
    /// whose flows stall for seconds, on their own), and caps the warm-up and settle rounds
    /// at 5 (the rounds beyond exist to give the timing figures judged seconds).
    #[arg(long, global = true, env = "ZRLAB_CAPACITY", value_enum, default_value_t = Capacity::Judge)]
    capacity: Capacity,
    /// Also write the results as JUnit XML to this file (the scenarios, or a replay's flows):
    /// for CI test reporters. With `run`, `replay` and the default scenarios.
    #[arg(long, global = true)]
    junit: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenario files (control and main variant of each).
    Run {
        /// Scenario files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Leave the main variant's topology and services up, and print how to enter it.
        #[arg(long)]
        keep: bool,
    },
    /// Remove what killed or kept runs left (namespaces, cgroups, keepers); live runs stay.
    Clean,
    /// List the lab objects present on this machine (live and dead runs).
    List,
    /// Benchmarks; each prints a table and writes `<out>/<name>.json`.
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
    /// Probe the kernel features the lab uses (each by trying it) and compare with the version
    /// table of DESIGN.md section 4.
    Features {
        /// Also write the probes as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also write one `NAME present|absent` line per feature to this file (what the kernel
        /// matrix's step runner reads to skip steps that need a missing feature).
        #[arg(long)]
        list: Option<PathBuf>,
    },
    /// Packet traces: generate seeded ones.
    Trace {
        #[command(subcommand)]
        trace: Trace,
    },
    /// Replay a packet trace into the lab (`replay TRACE.pcap [--scenario FILE]`: through the
    /// router, LB nodes and backends, with events at packet numbers and captures at every hop;
    /// exits 1 when a flow was split between backends), or through the LB alone (`replay
    /// offline ...`).
    #[command(args_conflicts_with_subcommands = true)]
    Replay {
        #[command(subcommand)]
        replay: Option<Replay>,
        /// The trace (pcap or pcapng, Ethernet; records cut by a snap length are padded).
        trace: Option<PathBuf>,
        /// The replay scenario: topology, LB nodes, LB configuration, events by packet number
        /// (see `zrlab_replay::lab`) [default: <fixtures>/replay/lab.toml].
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Replay at the recorded pacing divided by this factor.
        #[arg(long, default_value_t = 1.0, conflicts_with = "top")]
        speed: f64,
        /// Replay as fast as frames can be sent.
        #[arg(long)]
        top: bool,
        /// Leave the lab up afterwards, its data path held by a keeper process (`status`,
        /// `event`, `clean` as for a kept scenario run).
        #[arg(long)]
        keep: bool,
    },
    /// What a kept run holds: nodes, processes, attached programs, the LB's VIPs, reals and live
    /// ids, and the programs' counters (from its keeper process).
    Status {
        /// The kept run (its prefix); default: the only one.
        run: Option<String>,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Apply a timeline action to a kept run: `event drain-backend backend=be4`,
    /// `event restore-backend backend=be4`, `event set-weight backend=be5 weight=2`,
    /// `event remove-member group=lbs member=lb1`, `event add-member group=lbs member=lb1`,
    /// `event kill-backend backend=be4` (the LB nodes' health checkers, if the scenario runs
    /// them, take it out of their rings; `status` shows which node did),
    /// `event impair-links node=router drop_ppm=10000 dup_ppm=5000` (lossy links from now on).
    Event {
        /// The kept run (its prefix); default: the only one.
        #[arg(long)]
        run: Option<String>,
        /// The action (as a scenario's `action`).
        action: String,
        /// Its fields, `key=value` (as in a scenario's `[[event]]`).
        fields: Vec<String>,
    },
    /// Internal: the service process started on backends.
    #[command(hide = true)]
    Service(ServiceArgs),
    /// Internal: the process that keeps a kept run's data path (see `crate::keep`).
    #[command(hide = true)]
    Keeper(crate::keep::KeeperArgs),
}

#[derive(Subcommand)]
enum Trace {
    /// Write a seeded trace of what an LB node receives from clients (classic pcap).
    Gen {
        /// What the trace holds.
        #[arg(long, value_enum)]
        kind: zrlab_replay::generate::Kind,
        /// The pcap file to write.
        #[arg(long)]
        output: PathBuf,
        /// Seed of every random choice.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Flows.
        #[arg(long, default_value_t = 20)]
        flows: u32,
        /// Packets per flow (SYN bursts send one).
        #[arg(long, default_value_t = 6)]
        packets: u32,
        /// The client's address.
        #[arg(long, default_value = "198.51.100.2")]
        client: std::net::IpAddr,
        /// The VIP.
        #[arg(long, default_value = "203.0.113.10")]
        vip: std::net::IpAddr,
        /// The VIP's port.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Each flow carries the server id of the real an LB with this configuration sends its
        /// first packet to (what a capture of a real fleet shows).
        #[arg(long, conflicts_with = "server_ids")]
        config: Option<PathBuf>,
        /// Or: each flow carries one of these ids, drawn at random (comma-separated).
        #[arg(long, value_delimiter = ',')]
        server_ids: Vec<u32>,
        /// Percent of frames replaced by malformed ones.
        #[arg(long, default_value_t = 0)]
        malformed_pct: u32,
    },
}

#[derive(Subcommand)]
enum Replay {
    /// Every frame through the XDP LB with BPF_PROG_TEST_RUN (no lab): verdicts, the frames it
    /// sent, and which real each flow went to. Exits 1 when a flow was split between reals.
    Offline {
        /// The trace (pcap or pcapng, Ethernet; records cut by a snap length are padded).
        trace: PathBuf,
        /// The LB configuration (VIPs, reals, states, server ids; see `zrlab_replay::config`).
        #[arg(long)]
        config: PathBuf,
        /// Write what the LB sent (the encapsulated frames) to this pcap.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// XDP load balancer cost per packet by category (ratio to an empty program), Maglev build
    /// time and disruption.
    Xdp {
        /// Iterations per BPF_PROG_TEST_RUN call (a tenth of it, at least 1000, is the number
        /// of calls per sample of katran's method).
        #[arg(long, default_value_t = crate::bench::xdp::Options::default().repeat)]
        repeat: u32,
        /// Paired rounds (floor, then the program) per case; medians are reported.
        #[arg(long, default_value_t = crate::bench::xdp::Options::default().rounds)]
        rounds: usize,
        /// Only the cases whose name contains this text (e.g. "table hit").
        #[arg(long)]
        only: Option<String>,
        /// Runs of the connection set-up line, each on fresh tables (medians are reported).
        #[arg(long, default_value_t = crate::bench::xdp::Options::default().setup_runs)]
        setup_runs: usize,
    },
    /// What routing by the TCP option costs: the LB per packet (id routing on vs off) and the
    /// hosts' connection set-up and request latency (sock_ops attached vs detached).
    Tpr {
        /// Iterations per BPF_PROG_TEST_RUN call (the LB part).
        #[arg(long, default_value_t = crate::bench::tpr::Options::default().repeat)]
        repeat: u32,
        /// Paired rounds (baseline, then the measured configuration); medians are reported.
        #[arg(long, default_value_t = crate::bench::tpr::Options::default().rounds)]
        rounds: usize,
        /// Connections per set-up sample.
        #[arg(long, default_value_t = crate::bench::tpr::Options::default().connections)]
        connections: usize,
        /// Request round trips per latency sample.
        #[arg(long, default_value_t = crate::bench::tpr::Options::default().requests)]
        requests: usize,
    },
    /// Dispatch capacity under load while a release happens: takeover (user-space forwarding),
    /// reuseport-bpf and sk-lookup, against the generator's own ceiling (an echo socket).
    Release {
        /// Requests per second of the 1x step.
        #[arg(long, default_value_t = crate::bench::release::Options::default().base_rate)]
        base_rate: u64,
        /// Multiples of the base rate, one step each.
        #[arg(long, value_delimiter = ',', default_values_t = crate::bench::release::Options::default().steps)]
        steps: Vec<u64>,
        /// Seconds per step.
        #[arg(long, default_value_t = crate::bench::release::Options::default().step_s)]
        step_s: f64,
        /// Concurrent UDP flows.
        #[arg(long, default_value_t = crate::bench::release::Options::default().flows)]
        flows: u32,
    },
    /// Bind and listener-lookup scaling on port 443 (ratios to the smallest N).
    Bind443 {
        /// Socket counts (the first is the baseline).
        #[arg(long, value_delimiter = ',', default_values_t = zrlab_features::port443::scaling::SIZES)]
        sizes: Vec<usize>,
        /// Repetitions of each timed operation (the median is reported).
        #[arg(long, default_value_t = 51)]
        repeats: usize,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zrlab: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let default_out = match cli.command {
        Some(Command::Bench { .. }) => "bench",
        _ => "lab",
    };
    // The workspace's target/ as a plain path (reports print it; `lab/../target` reads badly).
    let target = Path::new(DEFAULT_TARGET);
    let target = target.canonicalize().unwrap_or_else(|_| target.to_path_buf());
    let out = cli.out.clone().unwrap_or_else(|| target.join(default_out));
    let out = &out;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if let Some(Command::Service(args)) = cli.command {
        runtime.block_on(serve(args)).context("service")?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(Command::Keeper(args)) = cli.command {
        runtime.block_on(crate::keep::keep(args)).context("keeper")?;
        return Ok(ExitCode::SUCCESS);
    }
    let junit = cli.junit.as_deref();
    if junit.is_some() && !matches!(cli.command, None | Some(Command::Run { .. } | Command::Replay { .. })) {
        bail!("--junit applies to `run`, `replay` and the default scenarios");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(zrlab_host::LabError::NotPrivileged("run it as root (or through sudo)".into()));
    }
    match cli.command {
        Some(Command::Clean) => {
            let cleaned = clean::clean(Scope::AllDead)?;
            print_cleaned(&cleaned, "removed");
            if cleaned.is_empty() {
                outln!("nothing to clean");
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::List) => {
            for item in clean::inventory()? {
                outln!("{item}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Run { files, keep }) => {
            runtime.block_on(run_files(&files, keep, cli.time_scale, cli.capacity, out, junit))
        }
        None => {
            let files = default_scenarios(&cli.fixtures.join("scenarios"))?;
            runtime.block_on(run_files(&files, false, cli.time_scale, cli.capacity, out, junit))
        }
        Some(Command::Bench { bench }) => runtime.block_on(run_bench(bench, &cli.fixtures, out)),
        Some(Command::Features { json, list }) => runtime.block_on(run_features(json.as_deref(), list.as_deref())),
        Some(Command::Trace { trace }) => run_trace(trace),
        Some(Command::Replay { replay: Some(replay), .. }) => run_replay(replay, out, junit),
        Some(Command::Replay { replay: None, trace, scenario, speed, top, keep }) => {
            let trace = trace.ok_or_else(|| anyhow::anyhow!("replay needs a trace file (or `offline ...`)"))?;
            let scenario = scenario.unwrap_or_else(|| cli.fixtures.join("replay/lab.toml"));
            let pacing = if top {
                zrlab_replay::lab::Pacing::Top
            } else if speed > 0.0 && speed.is_finite() {
                zrlab_replay::lab::Pacing::Speed(speed)
            } else {
                anyhow::bail!("--speed must be a positive number, not {speed}");
            };
            runtime.block_on(run_lab_replay(&trace, &scenario, pacing, keep, out, junit))
        }
        Some(Command::Status { run, json }) => run_status(run.as_deref(), json),
        Some(Command::Event { run, action, fields }) => run_event(run.as_deref(), &action, &fields),
        Some(Command::Service(_) | Command::Keeper(_)) => unreachable!("handled above"),
    }
}

async fn run_bench(bench: Bench, fixtures: &Path, out: &Path) -> Result<ExitCode> {
    match bench {
        Bench::Tpr { repeat, rounds, connections, requests } => {
            let opts =
                crate::bench::tpr::Options { repeat, rounds, connections, requests, fixtures: fixtures.to_owned() };
            eprintln!(
                "measuring the TCP option's cost: the LB (repeat {repeat}), then {connections} connections and \
                 {requests} round trips per sample, {rounds} paired rounds per configuration..."
            );
            let report = crate::bench::tpr::run(&opts).await?;
            out!("{}", report.table());
            write_json(out, "tpr.json", &report)?;
        }
        Bench::Xdp { repeat, rounds, only, setup_runs } => {
            eprintln!("measuring xdp_lb by category (repeat {repeat}, {rounds} rounds each)...");
            let report = crate::bench::xdp::run(&crate::bench::xdp::Options { repeat, rounds, only, setup_runs })?;
            out!("{}", report.table());
            write_json(out, "xdp.json", &report)?;
        }
        Bench::Release { base_rate, steps, step_s, flows } => {
            let opts =
                crate::bench::release::Options { base_rate, steps, step_s, flows, fixtures: fixtures.to_owned() };
            let exe = std::env::current_exe().context("the zrlab binary's path")?;
            let report = crate::bench::release::run(&opts, &exe).await?;
            out!("{}", report.table());
            write_json(out, "release.json", &report)?;
        }
        Bench::Bind443 { sizes, repeats } => {
            let opts = zrlab_features::port443::scaling::Options { sizes, repeats, ..Default::default() };
            eprintln!("measuring bind and lookup scaling on port 443 (N = {:?})...", opts.sizes);
            let report = zrlab_features::port443::scaling::run(&opts).await?;
            out!("{}", report.table());
            write_json(out, "bind443.json", &report)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_features(json: Option<&Path>, list: Option<&Path>) -> Result<ExitCode> {
    let probes = zrlab_features::probe_all().await?;
    out!("{}", zrlab_features::table(&probes));
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&probes)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = list {
        let lines: String = probes
            .iter()
            .map(|p| {
                let state = if p.present { "present" } else { "absent" };
                format!("{} {state}\n", p.feature.name())
            })
            .collect();
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn run_status(run: Option<&str>, json: bool) -> Result<ExitCode> {
    use crate::keep::control::{Request, pick_run, request};
    let run = pick_run(run)?;
    let response = request(&run, &Request::Status)?;
    show(response, json)
}

fn run_event(run: Option<&str>, action: &str, fields: &[String]) -> Result<ExitCode> {
    use crate::keep::control::{Request, pick_run, request};
    let mut table = toml::Table::new();
    table.insert("action".into(), action.into());
    for field in fields {
        let (key, value) = field.split_once('=').with_context(|| format!("event field {field:?} is not key=value"))?;
        let value = match (value.parse::<i64>(), value.parse::<bool>()) {
            (Ok(n), _) => toml::Value::from(n),
            (_, Ok(b)) => toml::Value::from(b),
            _ => value.into(),
        };
        table.insert(key.to_owned(), value);
    }
    let event: zrlab_scenario::spec::EventSpec =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let field = e.path().to_string();
            anyhow::anyhow!("event field {field}: {}", e.into_inner().message().trim())
        })?;
    let run = pick_run(run)?;
    let response = request(&run, &Request::Event { event })?;
    show(response, false)
}

fn show(response: crate::keep::control::Response, json: bool) -> Result<ExitCode> {
    match (response.status, response.error) {
        (Some(status), _) if json => outln!("{}", serde_json::to_string_pretty(&status)?),
        (Some(status), _) => out!("{}", status.table()),
        (None, error) => bail!("the keeper refused: {}", error.unwrap_or_default()),
    }
    Ok(ExitCode::SUCCESS)
}

fn run_trace(trace: Trace) -> Result<ExitCode> {
    match trace {
        Trace::Gen { kind, output, seed, flows, packets, client, vip, port, config, server_ids, malformed_pct } => {
            use zrlab_replay::generate::Ids;
            let ids = match config {
                Some(path) => Ids::AsRouted(Box::new(zrlab_replay::config::LbConfig::load(&path)?)),
                None if server_ids.is_empty() => Ids::None,
                None => Ids::Random(server_ids),
            };
            let opts = zrlab_replay::generate::GenOptions {
                kind,
                seed,
                flows,
                packets,
                client,
                vip,
                port,
                ids,
                malformed_pct,
            };
            let frames = zrlab_replay::generate::generate(&opts)?;
            zrlab_wire::pcap::write(&output, &frames).with_context(|| format!("writing {}", output.display()))?;
            outln!("wrote {} ({} frames)", output.display(), frames.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_lab_replay(
    trace: &Path,
    scenario: &Path,
    pacing: zrlab_replay::lab::Pacing,
    keep: bool,
    out: &Path,
    junit: Option<&Path>,
) -> Result<ExitCode> {
    let frames = read_trace(trace)?;
    let spec = zrlab_replay::lab::ReplaySpec::load(scenario)?;
    let dir = out.join("replay");
    let mut progress = |step: String| eprintln!("replay: {step}");
    let opts = zrlab_replay::lab::RunOptions {
        pacing,
        out: dir.clone(),
        service_exe: std::env::current_exe().context("the zrlab binary's path")?,
        keep,
    };
    let replay = zrlab_replay::lab::run(trace, &frames, &spec, &opts, &mut progress).await?;
    let markdown = replay.markdown();
    out!("{markdown}");
    std::fs::write(dir.join("report.md"), &markdown).with_context(|| format!("writing {}", dir.display()))?;
    write_json(&dir, "report.json", &replay)?;
    if let Some(path) = junit {
        junit::write(path, &junit::replay_lab(&replay))?;
    }
    if let Some(why) = replay.not_judged() {
        eprintln!("zrlab: replay of {}: {why}", trace.display());
        return Ok(ExitCode::FAILURE);
    }
    Ok(if replay.split_flows() == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn run_replay(replay: Replay, out: &Path, junit: Option<&Path>) -> Result<ExitCode> {
    match replay {
        Replay::Offline { trace, config, output } => {
            let frames = read_trace(&trace)?;
            let config = zrlab_replay::config::LbConfig::load(&config)?;
            config.require_vip_frames(&trace, &frames)?;
            eprintln!("replaying {} frames of {} through xdp_lb...", frames.len(), trace.display());
            let replay = zrlab_replay::offline::run(&frames, &config)?;
            out!("{}", replay.summary());
            if let Some(path) = junit {
                junit::write(path, &junit::replay_offline(&trace, &replay))?;
            }
            if let Some(why) = replay.not_judged() {
                eprintln!("zrlab: replay of {}: {why}", trace.display());
                return Ok(ExitCode::FAILURE);
            }
            if let Some(path) = output {
                zrlab_wire::pcap::write(&path, &replay.outputs)
                    .with_context(|| format!("writing {}", path.display()))?;
                outln!("wrote {} ({} frames the LB sent)", path.display(), replay.outputs.len());
            }
            write_json(&out.join("replay"), "offline.json", &replay)?;
            Ok(if replay.split_flows() == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

/// Reads a trace and says what reading it took (its format, frames padded after a snap length).
fn read_trace(path: &Path) -> Result<Vec<zrlab_wire::pcap::Frame>> {
    let trace = zrlab_wire::pcap::read(path)?;
    let padded = match trace.padded {
        0 => String::new(),
        n => format!("; {n} frames cut by the capture's snap length, padded with zeros to their original length"),
    };
    eprintln!("{}: {:?}, {} frames{padded}", path.display(), trace.format, trace.frames.len());
    Ok(trace.frames)
}

fn write_json(dir: &Path, name: &str, value: &impl serde::Serialize) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))?;
    outln!("wrote {}", path.display());
    Ok(())
}

fn print_cleaned(cleaned: &clean::Cleaned, verb: &str) {
    for ns in &cleaned.namespaces {
        outln!("{verb} namespace {ns}");
    }
    for dir in &cleaned.cgroups {
        outln!("{verb} {}", dir.display());
    }
}

/// Every scenario file in `dir` that is not marked `default = false`, by name.
fn default_scenarios(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading scenario directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut defaults = Vec::new();
    for file in files {
        if Scenario::load(&file)?.default {
            defaults.push(file);
        }
    }
    if defaults.is_empty() {
        bail!("no default scenarios in {}", dir.display());
    }
    Ok(defaults)
}

async fn run_files(
    files: &[PathBuf],
    keep: bool,
    time_scale: u32,
    capacity: Capacity,
    out: &Path,
    junit: Option<&Path>,
) -> Result<ExitCode> {
    // Parse everything first: a bad file fails before any topology is built.
    let scenarios = files.iter().map(|f| Scenario::load(f)).collect::<Result<Vec<_>, _>>()?;
    let cleaned = clean::clean(Scope::Crashed)?;
    print_cleaned(&cleaned, "cleaned up after a killed run:");
    let opts =
        RunOptions { keep, service_exe: std::env::current_exe().context("locating zrlab")?, time_scale, capacity };

    let bar = ProgressBar::new(scenarios.len() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:20} {pos}/{len} {elapsed} {msg}").expect("valid template"));
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut outcomes: Vec<Outcome> = Vec::new();
    for scenario in &scenarios {
        let mut progress = |msg: String| bar.set_message(msg);
        // Dropping the run future on a signal drops its lab, whose Drop tears it down.
        let outcome = tokio::select! {
            outcome = run_scenario(scenario, &opts, &mut progress) => outcome?,
            _ = interrupt.recv() => return interrupted(&bar),
            _ = terminate.recv() => return interrupted(&bar),
        };
        say(
            &bar,
            format!(
                "{}: {}{}",
                outcome.name,
                serde_json::to_value(outcome.verdict)?.as_str().unwrap_or("?"),
                if outcome.reason.is_empty() { String::new() } else { format!(" ({})", outcome.reason) }
            ),
        );
        if let Some(prefix) = outcome.main.as_ref().and_then(|m| m.kept.clone()) {
            print_kept(scenario, &prefix, &bar);
        }
        outcomes.push(outcome);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let report = Report::new(&outcomes, opts.time_scale);
    out!("{}", report.table());
    report.write(out)?;
    outln!("report: {}/report.json, report.md", out.display());
    if let Some(path) = junit {
        junit::write(path, &junit::lab(&report))?;
        outln!("JUnit: {}", path.display());
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_kept(scenario: &Scenario, prefix: &str, bar: &ProgressBar) {
    say(bar, format!("kept the topology of {} up; enter a node with:", scenario.name));
    for node in &scenario.main.topology.spec.nodes {
        say(bar, format!("  ip netns exec {prefix}-{} bash    # {:?}", node.name, node.role));
    }
    say(bar, "its data path is held by a keeper process: `cargo xtask lab status` shows it,");
    say(bar, "`cargo xtask lab event drain-backend backend=be4` (any timeline action) changes it;");
    say(bar, "remove it with: cargo xtask lab clean");
}

/// Prints a line to stdout around the progress bar (`ProgressBar::println` prints nothing when
/// the bar is hidden, as it is when stderr is not a terminal: in CI).
fn say(bar: &ProgressBar, line: impl AsRef<str>) {
    bar.suspend(|| outln!("{}", line.as_ref()));
}

fn interrupted(bar: &ProgressBar) -> Result<ExitCode> {
    bar.finish_and_clear();
    eprintln!("zrlab: interrupted; the running topology was torn down");
    Ok(ExitCode::from(130))
}
