//! The plan: which commands a kernel of the matrix runs, in order.
//!
//! Text, one `key value` per line (the value is the rest of the line, so it may hold spaces but
//! no newline); `#` starts a comment line. A step starts with `step NAME` and ends with `end`:
//!
//! ```text
//! out /work/target/matrix/runs/6.1
//! features /work/target/matrix/runs/6.1/features.txt
//! step suite-port443
//! cwd /work
//! timeout 300
//! needs bpf-prog-test-run
//! env ZRLAB_EXE=/work/target/debug/zrlab
//! arg /work/target/debug/deps/port443-0123abcd
//! arg --exact
//! end
//! ```
//!
//! `out` is where step logs (`NAME.log`) and `results.txt` go; `features` is the file a probe
//! step writes (`NAME present|absent` per line) and `needs` is checked against it: a step whose
//! needed feature is absent is not run. Round trip: `Plan::parse(&plan.render()?) == plan`.

use std::{fmt, path::PathBuf, time::Duration};

/// A whole plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Directory for step logs and `results.txt` (writable by the guest).
    pub out: PathBuf,
    /// The feature list a probe step writes, read before any step that `needs` something.
    pub features: Option<PathBuf>,
    /// The steps, run in order.
    pub steps: Vec<Step>,
}

/// One command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Unique name; also the log file's stem (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Program and arguments (absolute program path: the guest has no login shell's PATH).
    pub argv: Vec<String>,
    /// The whole environment of the command (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Killed (with its whole process group) after this long.
    pub timeout: Duration,
    /// Features (as the probe names them) without which the step is skipped.
    pub needs: Vec<String>,
}

/// Why a plan could not be read or written.
#[derive(Debug, PartialEq, Eq)]
pub struct PlanError {
    /// 1-based line number (0 when rendering).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "plan: {}", self.message)
        } else {
            write!(f, "plan line {}: {}", self.line, self.message)
        }
    }
}

impl std::error::Error for PlanError {}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Plan {
    /// The plan as text; fails on a value with a newline or a bad step name.
    pub fn render(&self) -> Result<String, PlanError> {
        let mut out = String::from("# zrlab matrix plan\n");
        let mut line = |key: &str, value: &str| -> Result<(), PlanError> {
            if value.contains('\n') {
                return Err(PlanError { line: 0, message: format!("{key} value {value:?} holds a newline") });
            }
            out.push_str(key);
            if !value.is_empty() {
                out.push(' ');
                out.push_str(value);
            }
            out.push('\n');
            Ok(())
        };
        line("out", &self.out.to_string_lossy())?;
        if let Some(features) = &self.features {
            line("features", &features.to_string_lossy())?;
        }
        for step in &self.steps {
            if !valid_name(&step.name) {
                return Err(PlanError { line: 0, message: format!("bad step name {:?}", step.name) });
            }
            line("step", &step.name)?;
            line("cwd", &step.cwd.to_string_lossy())?;
            line("timeout", &step.timeout.as_secs().to_string())?;
            for need in &step.needs {
                line("needs", need)?;
            }
            for (key, value) in &step.env {
                if key.contains('=') {
                    return Err(PlanError { line: 0, message: format!("environment name {key:?} holds '='") });
                }
                line("env", &format!("{key}={value}"))?;
            }
            for arg in &step.argv {
                line("arg", arg)?;
            }
            line("end", "")?;
        }
        Ok(out)
    }

    /// Reads a plan.
    pub fn parse(text: &str) -> Result<Self, PlanError> {
        let mut plan = Plan::default();
        let mut step: Option<Step> = None;
        for (i, raw) in text.lines().enumerate() {
            let err = |message: String| PlanError { line: i + 1, message };
            if raw.starts_with('#') || raw.trim().is_empty() {
                continue;
            }
            let (key, value) = raw.split_once(' ').unwrap_or((raw, ""));
            match (key, step.as_mut()) {
                ("out", None) => plan.out = value.into(),
                ("features", None) => plan.features = Some(value.into()),
                ("step", None) => {
                    if !valid_name(value) {
                        return Err(err(format!("bad step name {value:?}")));
                    }
                    if plan.steps.iter().any(|s| s.name == value) {
                        return Err(err(format!("step {value:?} appears twice")));
                    }
                    step = Some(Step {
                        name: value.into(),
                        argv: Vec::new(),
                        env: Vec::new(),
                        cwd: "/".into(),
                        timeout: Duration::from_secs(600),
                        needs: Vec::new(),
                    });
                }
                ("cwd", Some(s)) => s.cwd = value.into(),
                ("timeout", Some(s)) => {
                    let secs = value.parse().map_err(|_| err(format!("timeout {value:?} is not whole seconds")))?;
                    s.timeout = Duration::from_secs(secs);
                }
                ("needs", Some(s)) => s.needs.push(value.into()),
                ("env", Some(s)) => {
                    let (k, v) = value.split_once('=').ok_or_else(|| err(format!("env {value:?} has no '='")))?;
                    s.env.push((k.into(), v.into()));
                }
                ("arg", Some(s)) => s.argv.push(value.into()),
                ("end", Some(_)) => {
                    let done = step.take().expect("matched Some");
                    if done.argv.is_empty() {
                        return Err(err(format!("step {:?} has no command", done.name)));
                    }
                    plan.steps.push(done);
                }
                (key, Some(s)) => {
                    return Err(err(format!("unknown key {key:?} in step {:?}", s.name)));
                }
                (key, None) => return Err(err(format!("unknown key {key:?} outside a step"))),
            }
        }
        if let Some(s) = step {
            return Err(PlanError { line: text.lines().count(), message: format!("step {:?} has no `end`", s.name) });
        }
        if plan.out.as_os_str().is_empty() {
            return Err(PlanError { line: 0, message: "no `out` directory".into() });
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Plan {
        Plan {
            out: "/w/target/matrix/runs/6.1".into(),
            features: Some("/w/target/matrix/runs/6.1/features.txt".into()),
            steps: vec![
                Step {
                    name: "features".into(),
                    argv: vec!["/w/zrlab".into(), "features".into(), "a b".into()],
                    env: vec![("PATH".into(), "/usr/bin:/bin".into())],
                    cwd: "/w".into(),
                    timeout: Duration::from_secs(120),
                    needs: vec![],
                },
                Step {
                    name: "scenario.ecmp-resilient".into(),
                    argv: vec!["/w/zrlab".into(), "run".into(), String::new()],
                    env: vec![("X".into(), "a=b".into())],
                    cwd: "/".into(),
                    timeout: Duration::from_secs(5),
                    needs: vec!["resilient-nexthop-groups".into()],
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let plan = sample();
        let text = plan.render().unwrap();
        assert_eq!(Plan::parse(&text).unwrap(), plan);
    }

    #[test]
    fn rejects_newlines_and_bad_names() {
        let mut plan = sample();
        plan.steps[0].argv.push("two\nlines".into());
        assert!(plan.render().is_err());
        let mut plan = sample();
        plan.steps[0].name = "a/b".into();
        assert!(plan.render().is_err());
    }

    #[test]
    fn parse_errors_name_the_line() {
        let e = Plan::parse("out /x\nstep a\narg /bin/true\n").unwrap_err();
        assert!(e.message.contains("no `end`"), "{e}");
        let e = Plan::parse("out /x\nstep a\ntimeout soon\n").unwrap_err();
        assert_eq!(e.line, 3);
        let e = Plan::parse("out /x\nbogus 1\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = Plan::parse("out /x\nstep a\nend\n").unwrap_err();
        assert!(e.message.contains("no command"), "{e}");
    }
}
