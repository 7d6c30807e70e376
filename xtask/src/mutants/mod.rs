//! `cargo xtask mutants`: the harness's mutation score, measured. How many small, realistic
//! faults seeded into the code do the tests catch?
//!
//! Mutants come from two sources: cargo-mutants lists those of user space (`cargo mutants
//! --list --json`: its well-kept operators over Rust functions), and [`operators`] makes those
//! of the eBPF programs (cargo-mutants cannot build `no_std` code for the BPF target through a
//! nested cargo). One runner applies both, one mutant at a time, in a scratch copy of the
//! tracked tree (`target/mutants/tree`, its own target directory `target/mutants/target`): the
//! working tree is never touched, so an interrupted run leaves no mutant behind. For each
//! mutant it builds the component's suites and runs them: a failing suite **killed** it, a
//! build error makes it **unviable**, suites running past the limit (three times the unmutated
//! suites' run time, builds aside, and at least a minute) **timed out**, and a passing run
//! lets it **survive**, unless `ci/mutants/equivalent.toml` lists it as equivalent with the
//! reason.
//!
//! Each component runs the suites that exercise it (see [`COMPONENTS`] for why each): the score
//! is per component, so a fast selection for the data path does not hide a blind spot in the
//! release code. Writes `target/mutants/report.{json,md}`; exits 1 when a mutant survived.
//! Two cores make a whole run take hours: `--shard K/N` splits the mutants (CI runs the shards
//! in parallel, `ci/workflows/mutants.yml`), and `--in-diff BASE` keeps the mutants on lines a
//! change touched since `BASE`, fast enough before a commit.

mod operators;
mod report;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::{exec, setup};

/// Options of `cargo xtask mutants`.
#[derive(clap::Args)]
pub(crate) struct Options {
    /// Only these components (repeatable): ebpf, control, release, judging, workload [default:
    /// all].
    #[arg(long = "component", value_name = "NAME")]
    components: Vec<String>,
    /// Only mutants in files under this workspace-relative path (repeatable), e.g.
    /// `lab/workload/src/timeline/`.
    #[arg(long = "file", value_name = "PATH")]
    files: Vec<String>,
    /// Only mutants on lines changed since this git revision (e.g. `HEAD~3`, `origin/main`).
    #[arg(long, value_name = "BASE")]
    in_diff: Option<String>,
    /// Run the K-th of N equal shards of the mutants (1-based), e.g. `2/4`.
    #[arg(long, value_name = "K/N")]
    shard: Option<String>,
    /// List the mutants and exit, running nothing.
    #[arg(long)]
    list: bool,
    /// Merge these shards' reports (`report.json` each, e.g. CI's artifacts) into one and run
    /// nothing: the whole score when every shard is there, a wider sample otherwise.
    #[arg(long, value_name = "REPORT", num_args = 1.., conflicts_with_all = ["components", "files", "in_diff", "shard", "list"])]
    merge: Vec<PathBuf>,
    /// Also write the results as JUnit XML to this file (one case per mutant) for CI reporters.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
}

/// A part of the code with the suites that exercise it.
struct Component {
    name: &'static str,
    /// Path prefixes of its files (workspace-relative).
    paths: &'static [&'static str],
    /// Paths left out (test-only programs, generated or trivial code).
    except: &'static [&'static str],
    /// Whose operators mutate it.
    source: Source,
    /// The suites, run in order (each must pass unmutated): the fast ones first, so that most
    /// mutants die before the slow ones build.
    suites: &'static [Suite],
}

/// One `cargo test` run.
struct Suite {
    /// Its arguments.
    args: &'static [&'static str],
    /// Whether it runs the `zrlab` binary built from the mutated tree (`ZRLAB_EXE`): built
    /// before the first suite that does, so a mutant a unit test kills never links it.
    binary: bool,
}

/// A suite of unit tests (no lab processes).
const fn unit(args: &'static [&'static str]) -> Suite {
    Suite { args, binary: false }
}

/// A suite that runs the lab's processes.
const fn lab(args: &'static [&'static str]) -> Suite {
    Suite { args, binary: true }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Ebpf,
    CargoMutants,
}

/// The components and their suites. Why each selection:
/// - ebpf: conformance and fuzz run `xdp_lb` and `xdp_decap` against the independent model on
///   one and two CPUs; `tpr` runs the sock_ops programs on real sockets; `reuseport_migrate`
///   runs `reuseport_select` on real listeners, `sk_lookup` runs `sk_lookup_steer` on real UDP
///   sockets (IPv4 and IPv6); `impair` runs `tc_impair` on a real link (first: seconds).
/// - control: its unit tests (Maglev, the model's codecs, the health checker's state machine and
///   probes, the hand-over plan), the health checkers, the link impairment, the in-place
///   upgrades and the sk_lookup dispatcher (whose link the hand-over swaps) on real kernels
///   (seconds: before the minutes of the rest), the
///   XDP suites through the control plane, `tpr` (server ids, sock_ops maps) and offline replay
///   (the LB configuration).
/// - release: its unit tests (order, steering, tally), migration parity (the reuseport
///   dispatcher), the dispatchers' in-place upgrades, and the release and rolling-upgrade
///   scenarios end to end with their controls (the fleet, the strategies, the handover).
/// - judging: the unit tests of expectations, measures, accounting and the timeline's judged
///   figures (capacity dip, latency, reply gaps): they decide pass and fail, so no mutant of
///   theirs may survive; and `malformed`, which loads every shipped and every malformed
///   scenario file (which metrics a scenario may expect, what a control must expect: the
///   judging code's rules for a scenario file, seconds and no kernel). The timeline's plot
///   (`timeline/svg.rs`) decides nothing and is left out.
/// - workload: the lab's instrument, the client that opens flows and records what each reply
///   was and the service that answers as a backend: its unit tests (loopback flows, the accept
///   loop), then the scenarios whose controls must show each failure the client reports: resets
///   (`lb-basic`; `tpr-failover-ring-change`, whose TCP sockets the client makes in the node's
///   cgroup for the sock_ops programs), misroutes of UDP flows
///   (`quic-cid-failover-ring-change`), a release with drops (`release-reuseport-bpf`, the
///   service's drain and hand-over) and a pause seen only as a reply gap.
const COMPONENTS: [Component; 5] = [
    Component {
        name: "ebpf",
        paths: &["ebpf/programs/src/"],
        except: &[
            "ebpf/programs/src/xdp_empty.rs",
            "ebpf/programs/src/xdp_pass.rs",
            "ebpf/programs/src/xdp_drop_ack.rs",
            "ebpf/programs/src/tpr_fill.rs",
        ],
        source: Source::Ebpf,
        suites: &[
            lab(&["-p", "zrlab-suites", "--test", "impair"]),
            lab(&[
                "-p",
                "zrlab-suites",
                "--test",
                "xdp_conformance",
                "--test",
                "pmtu",
                "--test",
                "xdp_fuzz",
                "--test",
                "tpr",
                "--test",
                "reuseport_migrate",
                "--test",
                "sk_lookup",
            ]),
        ],
    },
    Component {
        name: "control",
        paths: &["lab/control/src/"],
        except: &["lab/control/src/reuseport.rs", "lab/control/src/sklookup.rs"],
        source: Source::CargoMutants,
        suites: &[
            unit(&["-p", "zrlab-control"]),
            lab(&[
                "-p",
                "zrlab-suites",
                "--test",
                "health",
                "--test",
                "impair",
                "--test",
                "upgrade",
                "--test",
                "sk_lookup",
            ]),
            lab(&[
                "-p",
                "zrlab-suites",
                "--test",
                "xdp_conformance",
                "--test",
                "xdp_fuzz",
                "--test",
                "tpr",
                "--test",
                "replay",
            ]),
        ],
    },
    Component {
        name: "release",
        paths: &[
            "lab/scenario/src/release/",
            "lab/control/src/reuseport.rs",
            "lab/control/src/sklookup.rs",
            "lab/workload/src/handover.rs",
            "lab/workload/src/phase.rs",
        ],
        except: &[],
        source: Source::CargoMutants,
        suites: &[
            // The release module's own unit tests first (the order check, the steering check,
            // the tally): seconds, where the scenarios take minutes.
            unit(&["-p", "zrlab-scenario", "--lib", "release::"]),
            lab(&["-p", "zrlab-suites", "--test", "reuseport_migrate", "--test", "sk_lookup", "--test", "upgrade"]),
            lab(&["-p", "zrlab-suites", "--test", "scenarios", "--", "shipped_release"]),
        ],
    },
    Component {
        name: "judging",
        paths: &[
            "lab/scenario/src/expect.rs",
            "lab/scenario/src/measures.rs",
            "lab/workload/src/accounting.rs",
            "lab/workload/src/timeline/mod.rs",
        ],
        except: &[],
        source: Source::CargoMutants,
        suites: &[
            // The workload's first: a mutant of its files dies there without a rebuild of the
            // scenario crate, which depends on it.
            unit(&["-p", "zrlab-workload", "--lib"]),
            unit(&["-p", "zrlab-scenario", "--lib"]),
            unit(&["-p", "zrlab-suites", "--test", "malformed"]),
        ],
    },
    Component {
        name: "workload",
        paths: &["lab/workload/src/client.rs", "lab/workload/src/service.rs"],
        except: &[],
        source: Source::CargoMutants,
        suites: &[
            unit(&["-p", "zrlab-workload", "--lib"]),
            lab(&[
                "-p",
                "zrlab-suites",
                "--test",
                "scenarios",
                "--",
                "lb_basic",
                "tpr_failover_ring_change",
                "quic_cid_failover",
                "release_reuseport_bpf_true",
                "a_300_ms_pause",
            ]),
        ],
    },
];

/// One mutant, from either source.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Mutant {
    /// The component's name (one of [`COMPONENTS`]).
    component: String,
    /// Workspace-relative file.
    file: String,
    line: usize,
    what: String,
    /// The mutated line's original text (trimmed): what `equivalent.toml` matches.
    code: String,
    /// Not in the report: a mutant read back from one (`--merge`) is never applied.
    #[serde(skip_serializing, skip_deserializing, default = "Edit::read_back")]
    edit: Edit,
}

/// How a mutant changes its file.
#[derive(Clone, Debug)]
enum Edit {
    /// Replace line `line` (1-based) with this text.
    Line(String),
    /// Replace the byte-exact span (1-based lines and columns, end exclusive) with this text.
    Span { start: (usize, usize), end: (usize, usize), replacement: String },
}

impl Edit {
    /// The edit of a mutant read back from a report, which keeps none.
    fn read_back() -> Self {
        Self::Line(String::new())
    }
}

/// What a mutant came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Outcome {
    Killed,
    Survived,
    Equivalent,
    TimedOut,
    Unviable,
}

/// A mutant and what the suites made of it.
#[derive(Debug, Serialize, Deserialize)]
struct Judged {
    #[serde(flatten)]
    mutant: Mutant,
    outcome: Outcome,
    seconds: f64,
    /// For an equivalent mutant, why.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// An entry of `ci/mutants/equivalent.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Equivalent {
    file: String,
    code: String,
    what: String,
    /// For a line whose text repeats in its file: the text of the nearest non-blank line above
    /// it (trimmed), so the entry names that one.
    #[serde(default)]
    after: Option<String>,
    reason: String,
}

impl Equivalent {
    /// Whether this entry names `mutant`, whose file reads `source` unmutated.
    fn names(&self, mutant: &Mutant, source: &str) -> bool {
        let above = || source.lines().take(mutant.line - 1).map(str::trim).filter(|l| !l.is_empty()).last();
        self.file == mutant.file
            && self.code == mutant.code
            && self.what == mutant.what
            && self.after.as_deref().is_none_or(|after| above() == Some(after))
    }
}

#[derive(Deserialize)]
struct EquivalentFile {
    #[serde(default)]
    equivalent: Vec<Equivalent>,
}

/// Entry point of `cargo xtask mutants`.
pub(crate) fn run(opts: Options) -> Result<()> {
    let root = exec::workspace_root();
    if !opts.merge.is_empty() {
        return finish(&root, &report::merge(&opts.merge)?, opts.junit.as_deref());
    }
    let components: Vec<&Component> = if opts.components.is_empty() {
        COMPONENTS.iter().collect()
    } else {
        opts.components
            .iter()
            .map(|name| {
                COMPONENTS
                    .iter()
                    .find(|c| c.name == name)
                    .with_context(|| format!("--component {name:?}: not one of {:?}", COMPONENTS.map(|c| c.name)))
            })
            .collect::<Result<_>>()?
    };
    let shard = opts.shard.as_deref().map(parse_shard).transpose()?;
    let changed = opts.in_diff.as_deref().map(|base| changed_lines(&root, base)).transpose()?;
    let mut mutants = Vec::new();
    for component in &components {
        mutants.extend(list(&root, component)?);
    }
    let files: Vec<&str> = opts.files.iter().map(|f| f.trim_start_matches("./")).collect();
    for file in &files {
        if !mutants.iter().any(|m| m.file.starts_with(file)) {
            bail!("--file {file:?}: no mutants of the selected components in it");
        }
    }
    if let Some(changed) = &changed {
        mutants.retain(|m| changed.get(&m.file).is_some_and(|lines| lines.contains(&m.line)));
    }
    if !files.is_empty() {
        mutants.retain(|m| files.iter().any(|f| m.file.starts_with(f)));
    }
    let mut listed = BTreeMap::new();
    for m in &mutants {
        *listed.entry(m.component.clone()).or_insert(0) += 1;
    }
    if let Some((k, n)) = shard {
        mutants = mutants.into_iter().enumerate().filter(|(i, _)| i % n == k - 1).map(|(_, m)| m).collect();
    }
    eprintln!(
        "[mutants] {} mutant(s){}",
        mutants.len(),
        shard.map(|(k, n)| format!(" in shard {k}/{n}")).unwrap_or_default()
    );
    if opts.list {
        for m in &mutants {
            println!("{:8} {}:{}: {}", m.component, m.file, m.line, m.what);
        }
        return Ok(());
    }
    if !exec::is_root() {
        bail!("the suites load BPF programs and build namespaces: run cargo xtask mutants as root");
    }
    setup::ensure(true)?;
    let equivalent = equivalents(&root)?;
    let out = root.join("target/mutants");
    let tree = out.join("tree");
    copy_tree(&root, &tree)?;
    let started = Instant::now();
    let mut results = Vec::new();
    for component in &components {
        let ours: Vec<&Mutant> = mutants.iter().filter(|m| m.component == component.name).collect();
        if ours.is_empty() {
            continue;
        }
        eprintln!("[mutants] {}: the unmutated suites, for the baseline and the time limit", component.name);
        let (passed, tested) = run_suites(&tree, &out, component, None)?;
        if passed != Some(true) {
            bail!(
                "{}: the suites fail without any mutant: fix them first (output under {})",
                component.name,
                out.display()
            );
        }
        // On the suites' run time alone: the baseline's includes a cold build, which made the
        // limit minutes long for a mutant that loops in a unit test.
        let limit = (tested * 3).max(Duration::from_secs(60));
        for (i, mutant) in ours.iter().enumerate() {
            let t = Instant::now();
            let original = apply(&tree, mutant)?;
            let verdict = run_suites(&tree, &out, component, Some(limit));
            std::fs::write(tree.join(&mutant.file), &original).with_context(|| format!("restoring {}", mutant.file))?;
            let mut outcome = match verdict?.0 {
                None => Outcome::TimedOut,
                Some(true) => Outcome::Survived,
                Some(false) if last_build_failed(&out) => Outcome::Unviable,
                Some(false) => Outcome::Killed,
            };
            let reason = equivalent.iter().find(|e| e.names(mutant, &original)).map(|e| e.reason.clone());
            if outcome == Outcome::Survived && reason.is_some() {
                outcome = Outcome::Equivalent;
            }
            let seconds = t.elapsed().as_secs_f64();
            eprintln!(
                "[mutants] {} {}/{} {}:{} {}: {:?} ({seconds:.0} s)",
                component.name,
                i + 1,
                ours.len(),
                mutant.file,
                mutant.line,
                mutant.what,
                outcome
            );
            results.push(Judged { mutant: (*mutant).clone(), outcome, seconds, reason });
        }
    }
    let shards =
        shard.map_or_else(report::Shards::whole, |(k, n)| report::Shards { judged: BTreeSet::from([k]), of: n });
    let run = report::Run { wall_seconds: started.elapsed().as_secs_f64(), shards, listed, mutants: results };
    finish(&root, &run, opts.junit.as_deref())
}

/// Writes the run's report (and JUnit when asked), prints it; an error when a mutant survived.
fn finish(root: &Path, run: &report::Run, junit: Option<&Path>) -> Result<()> {
    let out = root.join("target/mutants");
    let report = report::report(run);
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("report.md"), &report.markdown)?;
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&report.json)?)?;
    print!("{}", report.markdown);
    eprintln!("[mutants] report: {}/report.{{json,md}}", out.display());
    if let Some(path) = junit {
        let xml = report::junit(&run.mutants).to_string().context("serialising the JUnit report")?;
        std::fs::write(path, xml).with_context(|| format!("writing {}", path.display()))?;
    }
    if run.mutants.iter().any(|r| r.outcome == Outcome::Survived) {
        bail!("mutants survived: kill each with a test, or list it in ci/mutants/equivalent.toml with the reason");
    }
    Ok(())
}

fn parse_shard(text: &str) -> Result<(usize, usize)> {
    let (k, n) = text.split_once('/').with_context(|| format!("--shard {text:?}: expected K/N"))?;
    let (k, n): (usize, usize) = (k.parse()?, n.parse()?);
    if n == 0 || k == 0 || k > n {
        bail!("--shard {text:?}: K must be 1..=N");
    }
    Ok((k, n))
}

/// The lines (new side) each file changed since `base`, from `git diff -U0`.
fn changed_lines(root: &Path, base: &str) -> Result<BTreeMap<String, BTreeSet<usize>>> {
    let out = exec::output(Command::new("git").current_dir(root).args(["diff", "-M", "-U0", base, "--"]))?;
    if !out.status.success() {
        bail!("git diff {base}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let mut changed: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let mut file = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(path) = line.strip_prefix("+++ ") {
            file = path.strip_prefix("b/").map(str::to_owned);
        } else if let (Some(hunk), Some(file)) = (line.strip_prefix("@@ "), &file) {
            // @@ -a,b +c,d @@
            let new = hunk.split(' ').nth(1).and_then(|s| s.strip_prefix('+')).context("a hunk header")?;
            let (start, count) = match new.split_once(',') {
                Some((s, c)) => (s.parse::<usize>()?, c.parse::<usize>()?),
                None => (new.parse::<usize>()?, 1),
            };
            changed.entry(file.clone()).or_default().extend(start..start + count);
        }
    }
    Ok(changed)
}

/// The component's mutants.
fn list(root: &Path, component: &Component) -> Result<Vec<Mutant>> {
    let mine = |file: &str| component.paths.iter().any(|p| file.starts_with(p)) && !component.except.contains(&file);
    match component.source {
        Source::Ebpf => {
            let out = exec::output(Command::new("git").current_dir(root).args([
                "ls-files",
                "-co",
                "--exclude-standard",
                "ebpf/programs/src",
            ]))?;
            let mut mutants = Vec::new();
            for file in String::from_utf8_lossy(&out.stdout).lines().filter(|f| f.ends_with(".rs") && mine(f)) {
                let text = std::fs::read_to_string(root.join(file)).with_context(|| format!("reading {file}"))?;
                let lines: Vec<&str> = text.lines().collect();
                for m in operators::mutants(&text) {
                    mutants.push(Mutant {
                        component: component.name.to_owned(),
                        file: file.to_owned(),
                        line: m.line,
                        what: m.what,
                        code: lines[m.line - 1].trim().to_owned(),
                        edit: Edit::Line(m.replacement),
                    });
                }
            }
            Ok(mutants)
        }
        Source::CargoMutants => {
            setup::ensure_cargo_mutants()?;
            let mut cmd = Command::new(env!("CARGO"));
            cmd.current_dir(root).args(["mutants", "--list", "--json"]);
            for path in component.paths {
                cmd.args(["--file", &format!("{path}{}", if path.ends_with('/') { "**/*.rs" } else { "" })]);
            }
            let out = exec::output(&mut cmd)?;
            if !out.status.success() {
                bail!("{} failed: {}", exec::describe(&cmd), String::from_utf8_lossy(&out.stderr).trim());
            }
            let listed: Vec<serde_json::Value> =
                serde_json::from_slice(&out.stdout).context("cargo mutants --list --json")?;
            let mut mutants = Vec::new();
            for m in listed {
                let file = m["file"].as_str().context("a mutant's file")?.to_owned();
                if !mine(&file) {
                    continue;
                }
                let pos = |p: &serde_json::Value| -> Option<(usize, usize)> {
                    Some((p["line"].as_u64()? as usize, p["column"].as_u64()? as usize))
                };
                let (Some(start), Some(end)) = (pos(&m["span"]["start"]), pos(&m["span"]["end"])) else {
                    bail!("cargo mutants: a mutant of {file} without a span: {m}");
                };
                let replacement = m["replacement"].as_str().unwrap_or_default().to_owned();
                let text = std::fs::read_to_string(root.join(&file)).with_context(|| format!("reading {file}"))?;
                let code = text.lines().nth(start.0 - 1).unwrap_or_default().trim().to_owned();
                // Its name without the location it starts with (the report gives file and line
                // apart), so that `equivalent.toml` matches it by text, as the eBPF mutants.
                let location = format!("{file}:{}:{}: ", start.0, start.1);
                let what = m["name"]
                    .as_str()
                    .map(|name| name.strip_prefix(&location).unwrap_or(name).to_owned())
                    .unwrap_or_else(|| format!("replace with {replacement}"));
                mutants.push(Mutant {
                    component: component.name.to_owned(),
                    file,
                    line: start.0,
                    what,
                    code,
                    edit: Edit::Span { start, end, replacement },
                });
            }
            Ok(mutants)
        }
    }
}

/// Writes `mutant` into the scratch tree; returns the file's original text.
fn apply(tree: &Path, mutant: &Mutant) -> Result<String> {
    let path = tree.join(&mutant.file);
    let original = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mutated = match &mutant.edit {
        Edit::Line(text) => {
            let mut lines: Vec<&str> = original.split('\n').collect();
            lines[mutant.line - 1] = text;
            lines.join("\n")
        }
        Edit::Span { start, end, replacement } => {
            let offset = |(line, column): (usize, usize)| -> usize {
                original.split('\n').take(line - 1).map(|l| l.len() + 1).sum::<usize>() + column - 1
            };
            format!("{}{}{}", &original[..offset(*start)], replacement, &original[offset(*end)..])
        }
    };
    std::fs::write(&path, mutated).with_context(|| format!("writing {}", path.display()))?;
    Ok(original)
}

/// Copies the tracked (and new, unignored) files of `root` into `tree`, rewriting only those
/// that differ, so a second run rebuilds only what changed.
fn copy_tree(root: &Path, tree: &Path) -> Result<()> {
    let out = exec::output(Command::new("git").current_dir(root).args(["ls-files", "-co", "--exclude-standard"]))?;
    let mut kept = BTreeSet::new();
    for file in String::from_utf8_lossy(&out.stdout).lines() {
        let (from, to) = (root.join(file), tree.join(file));
        let Ok(bytes) = std::fs::read(&from) else { continue };
        kept.insert(to.clone());
        if std::fs::read(&to).ok().as_deref() != Some(&bytes[..]) {
            std::fs::create_dir_all(to.parent().expect("a file has a parent"))?;
            std::fs::write(&to, bytes).with_context(|| format!("copying {file}"))?;
        }
    }
    // A file the working tree no longer has must leave the copy too: a fixture deleted since
    // the last run (a bad trace that became valid) failed the unmutated suites there.
    remove_others(tree, &kept)
}

/// Removes every file under `dir` that is not in `kept`.
fn remove_others(dir: &Path, kept: &BTreeSet<PathBuf>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            remove_others(&path, kept)?;
        } else if !kept.contains(&path) {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Builds and runs `component`'s suites in `tree`: `Some(true)` when all pass, `Some(false)`
/// when one fails (or does not build), `None` when the suites ran longer than `limit` (builds
/// aside); with the time the suites ran. Output goes to `out/last.log`.
fn run_suites(
    tree: &Path,
    out: &Path,
    component: &Component,
    limit: Option<Duration>,
) -> Result<(Option<bool>, Duration)> {
    std::fs::create_dir_all(out)?;
    let log_path = out.join("last.log");
    let log = std::fs::File::create(&log_path)?;
    let target = out.join("target");
    let mut tested = Duration::ZERO;
    let mut env = vec![("CARGO_TARGET_DIR", target.clone().into_os_string())];
    let _ = std::fs::remove_file(out.join("last.build-failed"));
    let mut built = false;
    for suite in component.suites {
        if suite.binary && !built {
            let mut cmd = Command::new(env!("CARGO"));
            cmd.current_dir(tree).args(["build", "-p", "zrlab", "--bin", "zrlab"]).env("CARGO_TARGET_DIR", &target);
            if !cmd.stdout(log.try_clone()?).stderr(log.try_clone()?).status()?.success() {
                std::fs::write(out.join("last.build-failed"), "")?;
                return Ok((Some(false), tested));
            }
            env.push(("ZRLAB_EXE", target.join("debug/zrlab").into_os_string()));
            built = true;
        }
        // Compile first, so a build error tells "unviable" from "killed".
        let (cargo_args, _) = split_test_args(suite.args);
        let mut build = Command::new(env!("CARGO"));
        build.current_dir(tree).args(["test", "--no-run"]).args(cargo_args).envs(env.iter().map(|(k, v)| (k, v)));
        if !build.stdout(log.try_clone()?).stderr(log.try_clone()?).status()?.success() {
            std::fs::write(out.join("last.build-failed"), "")?;
            return Ok((Some(false), tested));
        }
        let mut test = Command::new(env!("CARGO"));
        test.current_dir(tree).arg("test").args(suite.args).envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = test.stdout(log.try_clone()?).stderr(log.try_clone()?).spawn()?;
        let running = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                tested += running.elapsed();
                if !status.success() {
                    return Ok((Some(false), tested));
                }
                break;
            }
            if limit.is_some_and(|limit| tested + running.elapsed() > limit) {
                kill_tree(child.id());
                let _ = child.wait();
                if suite.binary {
                    // The killed suite's labs had no chance to take their namespaces and
                    // cgroups down: `zrlab clean` removes what runs of dead processes left.
                    let mut clean = Command::new(target.join("debug/zrlab"));
                    clean.current_dir(tree).arg("clean").stdout(log.try_clone()?).stderr(log.try_clone()?);
                    if !clean.status().is_ok_and(|s| s.success()) {
                        eprintln!("[mutants] zrlab clean failed after a timed-out suite: see {}", log_path.display());
                    }
                }
                return Ok((None, tested + running.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok((Some(true), tested))
}

/// Kills `root` and every process descended from it: a timed-out mutant's test binary is
/// cargo's child, often spinning in the loop the mutant made endless, and killing cargo alone
/// left it keeping a core busy through every later mutant. (Not a process group of its own:
/// the run's Ctrl-C must still reach the suites.)
fn kill_tree(root: u32) {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // The command name in parentheses may hold spaces: the fields after its `)`.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parents.iter().filter(|&&(_, ppid)| ppid == parent).map(|&(pid, _)| pid));
        i += 1;
    }
    for pid in tree {
        // SAFETY: kill(2) takes no memory of ours; a pid gone meanwhile gives ESRCH.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// A suite's arguments before `--` (for cargo) and after it (for the test binaries).
fn split_test_args<'a>(suite: &'a [&'a str]) -> (&'a [&'a str], &'a [&'a str]) {
    match suite.iter().position(|a| *a == "--") {
        Some(at) => (&suite[..at], &suite[at + 1..]),
        None => (suite, &[]),
    }
}

fn last_build_failed(out: &Path) -> bool {
    out.join("last.build-failed").exists()
}

fn equivalents(root: &Path) -> Result<Vec<Equivalent>> {
    let path = root.join("ci/mutants/equivalent.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let file: EquivalentFile = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(file.equivalent)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry names its file's lines of that text and mutation; with `after`, only the one
    /// below that text (a line that repeats). The shipped file parses (no unknown field).
    #[test]
    fn an_equivalent_entry_names_its_line_and_with_after_only_the_one_below_that() {
        let source = "if a {\n    count();\n}\n\nif b {\n\n    count();\n}\n";
        let mutant = |line, what: &str| Mutant {
            component: "ebpf".into(),
            file: "f.rs".into(),
            line,
            what: what.into(),
            code: "count();".into(),
            edit: Edit::Line(String::new()),
        };
        let entry = |after: Option<&str>| Equivalent {
            file: "f.rs".into(),
            code: "count();".into(),
            what: "drop".into(),
            after: after.map(Into::into),
            reason: String::new(),
        };
        assert!(entry(None).names(&mutant(2, "drop"), source) && entry(None).names(&mutant(7, "drop"), source));
        assert!(!entry(Some("if b {")).names(&mutant(2, "drop"), source));
        assert!(entry(Some("if b {")).names(&mutant(7, "drop"), source), "blank lines are skipped");
        assert!(!entry(Some("if b {")).names(&mutant(7, "flip"), source));
        assert!(!equivalents(&exec::workspace_root()).unwrap().is_empty());
    }

    #[test]
    fn the_copy_loses_what_the_tree_no_longer_has() {
        let base = std::env::temp_dir().join(format!("xtask-copy-{}", std::process::id()));
        let (root, tree) = (base.join("root"), base.join("tree"));
        std::fs::create_dir_all(root.join("fixtures")).unwrap();
        std::fs::create_dir_all(tree.join("fixtures")).unwrap();
        std::fs::write(root.join("fixtures/kept.txt"), "kept").unwrap();
        std::fs::write(tree.join("fixtures/deleted.txt"), "stale").unwrap();
        Command::new("git").current_dir(&root).args(["init", "-q"]).status().unwrap();
        copy_tree(&root, &tree).unwrap();
        assert_eq!(std::fs::read_to_string(tree.join("fixtures/kept.txt")).unwrap(), "kept");
        assert!(!tree.join("fixtures/deleted.txt").exists(), "a file deleted from the tree left the copy");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_timed_out_suite_goes_with_every_process_it_started() {
        // A shell (cargo's stand-in) whose child spins: both must go.
        let mut child = Command::new("sh")
            .args(["-c", "sh -c 'echo $$; while :; do :; done' & wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("piped")), &mut line)
            .expect("the grandchild's pid");
        let grandchild: u32 = line.trim().parse().expect("a pid");
        kill_tree(child.id());
        child.wait().expect("reaped");
        // The grandchild, re-parented and killed, is gone once its new parent reaps it.
        let gone = || {
            std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .map_or(true, |stat| stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !gone() {
            if Instant::now() > deadline {
                // SAFETY: kill(2) takes no memory of ours. A failed test leaves no spinner.
                unsafe { libc::kill(grandchild as libc::pid_t, libc::SIGKILL) };
                panic!("the spinning grandchild {grandchild} survived");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn shards_and_spans() {
        assert_eq!(parse_shard("2/4").unwrap(), (2, 4));
        assert!(parse_shard("0/4").is_err() && parse_shard("5/4").is_err() && parse_shard("x").is_err());
        let tree = std::env::temp_dir().join(format!("xtask-mutants-{}", std::process::id()));
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("f.rs"), "fn a() -> u32 {\n    1 + 2\n}\n").unwrap();
        let m = Mutant {
            component: "judging".into(),
            file: "f.rs".into(),
            line: 2,
            what: "x".into(),
            code: "1 + 2".into(),
            edit: Edit::Span { start: (2, 7), end: (2, 8), replacement: "-".into() },
        };
        let original = apply(&tree, &m).unwrap();
        assert_eq!(std::fs::read_to_string(tree.join("f.rs")).unwrap(), "fn a() -> u32 {\n    1 - 2\n}\n");
        assert_eq!(original, "fn a() -> u32 {\n    1 + 2\n}\n");
        std::fs::remove_dir_all(&tree).unwrap();
    }
}
