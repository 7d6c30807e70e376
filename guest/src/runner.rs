//! Runs a [`Plan`]'s steps in order and records how each ended.
//!
//! Each step runs in a process group of its own with `/dev/null` as stdin and its stdout and
//! stderr in `OUT/NAME.log`; when it exits (or its timeout passes) the whole group is killed, so
//! helpers a test left behind die with it. Outcomes go to `OUT/results.txt`, one line per step
//! as soon as it ends (a guest that dies midway still leaves the steps before):
//!
//! ```text
//! features 3.2 exit 0
//! suite-port443 120.0 timeout
//! scenario-ecmp 0.0 skipped resilient-nexthop-groups
//! ```
//!
//! As PID 1 ([`Options::reap_orphans`]) the runner also reaps every orphan the kernel hands it.

use std::{
    collections::BTreeSet,
    fmt,
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::Path,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::plan::{Plan, Step};

/// The results file's name inside the plan's `out` directory.
pub const RESULTS_FILE: &str = "results.txt";
const POLL: Duration = Duration::from_millis(50);

/// How the runner waits for its children.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Wait for any child (`waitpid(-1)`), reaping orphans too: what PID 1 must do.
    pub reap_orphans: bool,
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The command exited with this code.
    Exit(i32),
    /// The command was killed by this signal.
    Signal(i32),
    /// The timeout passed; the command's process group was killed.
    Timeout,
    /// Not run: these needed features are absent.
    Skipped(Vec<String>),
    /// The command could not be started.
    Error(String),
}

/// One finished step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepResult {
    /// The step's name.
    pub name: String,
    /// Wall-clock seconds.
    pub secs: f64,
    /// How it ended.
    pub outcome: Outcome,
}

impl StepResult {
    /// Whether the step counts as having gone well for the init's verdict.
    pub fn ok(&self) -> bool {
        matches!(self.outcome, Outcome::Exit(0) | Outcome::Skipped(_))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exit(code) => write!(f, "exit {code}"),
            Self::Signal(sig) => write!(f, "signal {sig}"),
            Self::Timeout => write!(f, "timeout"),
            Self::Skipped(needs) => write!(f, "skipped {}", needs.join(",")),
            Self::Error(msg) => write!(f, "error {}", msg.replace('\n', " ")),
        }
    }
}

impl fmt::Display for StepResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:.1} {}", self.name, self.secs, self.outcome)
    }
}

impl StepResult {
    /// Parses one line of `results.txt` (the inverse of `Display`).
    pub fn parse(line: &str) -> Option<Self> {
        let mut parts = line.splitn(4, ' ');
        let name = parts.next()?.to_owned();
        let secs = parts.next()?.parse().ok()?;
        let kind = parts.next()?;
        let rest = parts.next().unwrap_or("");
        let outcome = match kind {
            "exit" => Outcome::Exit(rest.parse().ok()?),
            "signal" => Outcome::Signal(rest.parse().ok()?),
            "timeout" => Outcome::Timeout,
            "skipped" => Outcome::Skipped(rest.split(',').map(str::to_owned).collect()),
            "error" => Outcome::Error(rest.to_owned()),
            _ => return None,
        };
        Some(Self { name, secs, outcome })
    }
}

/// Reads a `results.txt` (lines that do not parse are ignored: a guest may die mid-line).
pub fn read_results(out: &Path) -> io::Result<Vec<StepResult>> {
    let text = std::fs::read_to_string(out.join(RESULTS_FILE))?;
    Ok(text.lines().filter_map(StepResult::parse).collect())
}

/// The features a probe step listed as present (`NAME present` lines).
pub fn present_features(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?;
            (words.next() == Some("present")).then(|| name.to_owned())
        })
        .collect()
}

/// What the runner reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// A step is starting.
    Start(&'a Step),
    /// A step ended.
    Done(&'a StepResult),
}

/// Runs every step of `plan`; returns their results (also written to `results.txt`).
pub fn run(plan: &Plan, opts: Options, mut progress: impl FnMut(Event<'_>)) -> io::Result<Vec<StepResult>> {
    std::fs::create_dir_all(&plan.out)?;
    let mut results_file = File::create(plan.out.join(RESULTS_FILE))?;
    let mut results = Vec::new();
    for step in &plan.steps {
        progress(Event::Start(step));
        let started = Instant::now();
        let outcome = match missing_needs(plan, step) {
            missing if !missing.is_empty() => Outcome::Skipped(missing),
            _ => run_step(plan, step, opts),
        };
        let result = StepResult { name: step.name.clone(), secs: started.elapsed().as_secs_f64(), outcome };
        writeln!(results_file, "{result}")?;
        results_file.sync_all()?;
        progress(Event::Done(&result));
        results.push(result);
    }
    Ok(results)
}

fn missing_needs(plan: &Plan, step: &Step) -> Vec<String> {
    if step.needs.is_empty() {
        return Vec::new();
    }
    let present = plan.features.as_deref().map(present_features).unwrap_or_default();
    step.needs.iter().filter(|need| !present.contains(*need)).cloned().collect()
}

fn run_step(plan: &Plan, step: &Step, opts: Options) -> Outcome {
    let log_path = plan.out.join(format!("{}.log", step.name));
    let log = match OpenOptions::new().create(true).write(true).truncate(true).open(&log_path) {
        Ok(log) => log,
        Err(e) => return Outcome::Error(format!("creating {}: {e}", log_path.display())),
    };
    let stderr = match log.try_clone() {
        Ok(f) => f,
        Err(e) => return Outcome::Error(format!("dup of the log: {e}")),
    };
    let mut cmd = Command::new(&step.argv[0]);
    cmd.args(&step.argv[1..])
        .env_clear()
        .envs(step.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&step.cwd)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return Outcome::Error(format!("starting {}: {e}", step.argv[0])),
    };
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + step.timeout;
    let status = loop {
        let finished = if opts.reap_orphans { reap_until(pid) } else { child.try_wait().ok().flatten() };
        if let Some(status) = finished {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(POLL);
    };
    // Whatever the step left in its group dies with it.
    // SAFETY: kill has no memory-safety preconditions; ESRCH (nothing left) is fine.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    match status {
        Some(status) => outcome_of(status),
        None => {
            if !opts.reap_orphans {
                let _ = child.wait();
            } else {
                while reap_until(pid).is_none() {
                    std::thread::sleep(POLL);
                }
            }
            Outcome::Timeout
        }
    }
}

/// Reaps every exited child without blocking; returns `pid`'s status once it is among them.
fn reap_until(pid: libc::pid_t) -> Option<ExitStatus> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        let reaped = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if reaped <= 0 {
            return None;
        }
        if reaped == pid {
            return Some(ExitStatus::from_raw(status));
        }
    }
}

fn outcome_of(status: ExitStatus) -> Outcome {
    match (status.code(), status.signal()) {
        (Some(code), _) => Outcome::Exit(code),
        (None, Some(sig)) => Outcome::Signal(sig),
        (None, None) => Outcome::Error(format!("unknown status {status:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Step;

    fn step(name: &str, argv: &[&str], timeout_s: u64, needs: &[&str]) -> Step {
        Step {
            name: name.into(),
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: "/".into(),
            timeout: Duration::from_secs(timeout_s),
            needs: needs.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn runs_steps_with_timeouts_logs_and_needs() {
        let out = std::env::temp_dir().join(format!("zrlab-guest-runner-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        let features = out.join("features.txt");
        std::fs::write(&features, "have present\nlack absent\n").unwrap();
        let plan = Plan {
            out: out.clone(),
            features: Some(features),
            steps: vec![
                step("ok", &["/bin/sh", "-c", "echo hello; echo err >&2"], 10, &["have"]),
                step("fails", &["/bin/sh", "-c", "exit 3"], 10, &[]),
                step("hangs", &["/bin/sleep", "30"], 1, &[]),
                step("needs", &["/bin/true"], 10, &["have", "lack"]),
                step("missing", &["/nonexistent/program"], 10, &[]),
            ],
        };
        let mut events = 0;
        let results = run(&plan, Options::default(), |_| events += 1).unwrap();
        assert_eq!(events, 10);
        let outcomes: Vec<_> = results.iter().map(|r| r.outcome.clone()).collect();
        assert_eq!(outcomes[0], Outcome::Exit(0));
        assert_eq!(outcomes[1], Outcome::Exit(3));
        assert_eq!(outcomes[2], Outcome::Timeout);
        assert!(results[2].secs < 5.0, "killed at the timeout");
        assert_eq!(outcomes[3], Outcome::Skipped(vec!["lack".into()]));
        assert!(matches!(outcomes[4], Outcome::Error(_)));
        let log = std::fs::read_to_string(out.join("ok.log")).unwrap();
        assert!(log.contains("hello") && log.contains("err"), "{log}");
        let read = read_results(&out).unwrap();
        assert_eq!(read.len(), 5);
        assert_eq!(read[3].outcome, outcomes[3]);
        assert_eq!(read[1].outcome, outcomes[1]);
        std::fs::remove_dir_all(&out).unwrap();
    }
}
