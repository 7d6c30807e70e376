//! The plan every kernel runs: the feature probes, then the rows of `ci/matrix.toml`, as
//! commands on the host's own binaries (the guest sees the host's root read-only, and the
//! workspace read-write, at the same paths).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use zrlab_guest::plan::{Plan, Step};

use super::config::Selection;

/// The probe step's name.
pub(crate) const FEATURES_STEP: &str = "features";
/// What the probes write (read by the host).
pub(crate) const FEATURES_JSON: &str = "features.json";
/// What the probes write (read by the step runner for `needs`).
const FEATURES_LIST: &str = "features.txt";
/// The probes include two 443 timing patterns: generous under TCG.
const FEATURES_TIMEOUT: Duration = Duration::from_secs(600);
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The binaries a plan runs.
pub(crate) struct Artifacts {
    /// The lab binary.
    pub(crate) zrlab: PathBuf,
    /// Test binaries of `suites/tests/*.rs`, by name.
    pub(crate) tests: BTreeMap<String, PathBuf>,
}

/// Where the plan runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Where {
    /// Natively on the host kernel.
    Host,
    /// In a QEMU guest (adds `vm_env`).
    Vm,
}

/// A row's step name (and log file stem): `suite:port443` becomes `suite-port443`.
pub(crate) fn step_name(row: &str) -> String {
    row.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '-' }).collect()
}

/// Where a scenario row's `zrlab run --out` goes.
pub(crate) fn scenario_out(out: &Path, row: &str) -> PathBuf {
    out.join(step_name(row))
}

/// Options of the plan that are not in `ci/matrix.toml`.
pub(crate) struct PlanOptions {
    /// Where the run's files go.
    pub(crate) out: PathBuf,
    /// Host or guest.
    pub(crate) place: Where,
}

/// Builds the plan.
pub(crate) fn build(
    selection: &Selection,
    artifacts: &Artifacts,
    workspace: &Path,
    opts: &PlanOptions,
) -> Result<Plan> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), PATH.into()),
        ("HOME".into(), "/root".into()),
        ("RUST_BACKTRACE".into(), "1".into()),
        ("ZRLAB_EXE".into(), artifacts.zrlab.to_string_lossy().into_owned()),
        // insta finds the workspace with `cargo metadata`; the steps have no cargo on PATH.
        ("INSTA_WORKSPACE_ROOT".into(), workspace.to_string_lossy().into_owned()),
        // Snapshots are compared, never written, from a matrix run: one expected table for every
        // kernel (the 443 suite's deviations are data in the suite).
        ("INSTA_UPDATE".into(), "no".into()),
    ];
    if opts.place == Where::Vm {
        env.extend(selection.vm_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let zrlab = artifacts.zrlab.to_string_lossy().into_owned();
    let out = &opts.out;
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let mut steps = vec![Step {
        name: FEATURES_STEP.into(),
        argv: vec![
            zrlab.clone(),
            "features".into(),
            "--json".into(),
            path(&out.join(FEATURES_JSON)),
            "--list".into(),
            path(&out.join(FEATURES_LIST)),
        ],
        env: env.clone(),
        cwd: workspace.to_path_buf(),
        timeout: FEATURES_TIMEOUT,
        needs: Vec::new(),
    }];
    for row in &selection.row {
        let argv = if let Some(test) = &row.test {
            let exe = artifacts
                .tests
                .get(test)
                .with_context(|| format!("row {:?}: no test binary {test:?} (suites/tests/{test}.rs)", row.name))?;
            let mut argv = vec![path(exe)];
            argv.extend(row.args.iter().cloned());
            // Output not captured: a skip's line is in the output of a test that passed.
            argv.extend([format!("--test-threads={}", row.threads), "--nocapture".into()]);
            argv
        } else {
            let scenario = row.scenario.as_deref().expect("checked: test or scenario");
            vec![
                zrlab.clone(),
                "--out".into(),
                path(&scenario_out(out, &row.name)),
                "run".into(),
                path(&workspace.join(scenario)),
            ]
        };
        steps.push(Step {
            name: step_name(&row.name),
            argv,
            env: env.clone(),
            cwd: workspace.to_path_buf(),
            timeout: Duration::from_secs(row.timeout_s),
            needs: row.needs.clone(),
        });
    }
    Ok(Plan { out: out.clone(), features: Some(out.join(FEATURES_LIST)), steps })
}
