//! `cargo xtask matrix [--kernel SERIES]...`: the kernel-version compatibility matrix.
//!
//! For the host kernel (natively) and each Debian kernel of `ci/kernels.toml` (under QEMU), run
//! the same plan: the feature probes (`zrlab features`), then the kernel-sensitive rows of
//! `ci/matrix.toml`; turn what they leave into a kernel x (feature, suite, scenario) table; print
//! it, write `target/matrix/report.json` and `report.md`, and exit non-zero on any unexpected
//! cell. Modelled on aya's `xtask/src/run.rs`: an [`Environment`] per kernel, artifacts found
//! through cargo's JSON messages, one test thread (the rows share kernel state and time
//! things), failures gathered across kernels rather than stopping at the first.
//!
//! Per VM kernel: fetch (private apt, cached under `target/matrix/cache/`), build the initramfs
//! in Rust (static init + modules), boot (TCG unless KVM is shown to work), watch the console,
//! read the results from the run directory `target/matrix/runs/<series>/` (removed after a
//! clean run; kept, and named, when something failed).
//!
//! Modules: [`config`] (the two TOML files), [`apt`] and [`kernel`] (fetching), [`modules`]
//! (index and dependencies), [`cpio`] and [`initramfs`], [`qemu`], [`plan`] (what runs),
//! [`cells`] (what results mean), [`report`], [`artifacts`] (builds).

mod apt;
mod artifacts;
mod cells;
pub(crate) mod config;
mod cpio;
mod initramfs;
mod kernel;
mod modules;
mod plan;
mod qemu;
mod report;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use zrlab_guest::runner::{self, Event};

use self::{
    config::{Kernel, Selection},
    plan::{Artifacts, PlanOptions, Where},
    qemu::Accel,
    report::{Cell, Outcome, Report},
};
use crate::{build, exec, setup};

/// Guest memory and CPUs (the machine has 2 cores; TCG runs one thread per vCPU).
const GUEST_MEMORY: &str = "2G";
const GUEST_CPUS: u32 = 2;

/// Options of `cargo xtask matrix`.
#[derive(clap::Args)]
pub(crate) struct Options {
    /// A kernel series of ci/kernels.toml to boot (repeatable) [default: every default one];
    /// `host` alone runs only the host kernel.
    #[arg(long = "kernel", value_name = "SERIES")]
    kernels: Vec<String>,
    /// Do not run the host kernel natively.
    #[arg(long)]
    no_host: bool,
    /// Accelerator: `auto` uses KVM only when a probe shows it runs a guest here.
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelChoice,
    /// Time limit of one VM kernel's boot and plan, in seconds (a 6.1 guest under TCG ran the
    /// plan in 1,000 s on one host and about 2,000 s on a slower one; the limit catches a hung
    /// guest, not a slow one).
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// Run only this row of ci/matrix.toml (exact name, repeatable) [default: every row]; the
    /// feature probes always run. CI's gate runs a shorter selection than the full matrix.
    #[arg(long = "row", value_name = "NAME")]
    rows: Vec<String>,
    /// Merge report.json files of separate runs (CI shards) into target/matrix/report.*
    /// instead of running anything.
    #[arg(long, value_name = "REPORT", num_args = 1.., conflicts_with_all = ["kernels", "no_host", "rows"])]
    merge: Vec<PathBuf>,
    /// Also write the matrix as JUnit XML to this file (one case per cell) for CI reporters.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
}

/// The `--accel` choices.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AccelChoice {
    Auto,
    Tcg,
    Kvm,
}

/// Where one column of the matrix runs.
enum Environment<'a> {
    /// The running kernel, natively (as root).
    Local,
    /// A Debian kernel under QEMU.
    Vm { kernel: &'a Kernel, cache_dir: PathBuf },
}

/// Entry point of `cargo xtask matrix`.
pub(crate) fn run(opts: Options) -> Result<()> {
    let workspace = exec::workspace_root();
    let target = workspace.join("target/matrix");
    if !opts.merge.is_empty() {
        return merge(&opts.merge, &target, opts.junit.as_deref());
    }
    let all = config::kernels(&workspace.join("ci/kernels.toml"))?;
    let series: Vec<String> = opts.kernels.iter().filter(|k| *k != "host").cloned().collect();
    let kernels = if series.is_empty() && !opts.kernels.is_empty() { Vec::new() } else { config::pick(&all, &series)? };
    let mut selection = config::selection(&workspace.join("ci/matrix.toml"))?;
    if !opts.rows.is_empty() {
        if let Some(unknown) = opts.rows.iter().find(|name| !selection.row.iter().any(|row| &row.name == *name)) {
            bail!("--row {unknown:?}: ci/matrix.toml has no such row");
        }
        selection.row.retain(|row| opts.rows.contains(&row.name));
    }
    if !exec::is_root() {
        bail!("the matrix needs root (namespaces, BPF, the lab's cgroups): run it as root");
    }
    setup::ensure(true)?;
    if !kernels.is_empty() {
        setup::ensure_matrix(true)?;
    }
    let runs = target.join("runs");
    let cache = target.join("cache");

    eprintln!("[matrix] building the lab, the suites' test binaries and the static init");
    let artifacts = Artifacts { zrlab: build::lab_binary(build::Profile::Dev)?, tests: artifacts::test_binaries()? };
    let vm = if kernels.is_empty() {
        None
    } else {
        let qemu = qemu::qemu()?;
        let init = artifacts::static_init()?;
        std::fs::create_dir_all(&runs).with_context(|| format!("creating {}", runs.display()))?;
        let accel = match opts.accel {
            AccelChoice::Tcg => Accel::Tcg,
            AccelChoice::Kvm => Accel::Kvm,
            AccelChoice::Auto => {
                if qemu::kvm_works(&qemu, &runs) {
                    Accel::Kvm
                } else {
                    eprintln!("[matrix] KVM does not run a guest here: using TCG");
                    Accel::Tcg
                }
            }
        };
        Some(Vm { qemu, init, accel: std::cell::Cell::new(accel) })
    };

    let started = Instant::now();
    let mut report = Report::default();
    let mut environments = Vec::new();
    if !opts.no_host {
        environments.push(Environment::Local);
    }
    environments.extend(kernels.iter().map(|kernel| Environment::Vm { kernel, cache_dir: cache.clone() }));
    let mut apt = kernel::AptState::new(cache.join("apt"), all.iter().flat_map(|k| k.suites.clone()).collect());
    for environment in &environments {
        let column = match environment {
            Environment::Local => run_local(&selection, &artifacts, &workspace, &runs)?,
            Environment::Vm { kernel, cache_dir } => run_vm(
                kernel,
                cache_dir,
                &mut apt,
                vm.as_ref().expect("VM tools exist when there are VM kernels"),
                &selection,
                &artifacts,
                &workspace,
                &runs,
                &opts,
            ),
        };
        report.kernels.push(column);
    }
    finish(&report, &target, started, opts.junit.as_deref())
}

/// Prints the table, writes the report files, and fails on any unexpected cell.
fn finish(report: &Report, target: &Path, started: Instant, junit: Option<&Path>) -> Result<()> {
    println!("\n{}", report.table());
    report.write(target)?;
    println!("report: {}/report.json, report.md ({:.0} s)", target.display(), started.elapsed().as_secs_f64());
    if let Some(path) = junit {
        let xml = report.junit().to_string().context("serialising the JUnit report")?;
        std::fs::write(path, xml).with_context(|| format!("writing {}", path.display()))?;
        println!("JUnit: {}", path.display());
    }
    if !report.ok() {
        bail!("{} unexpected result(s) in the kernel matrix (the FAIL cells above)", report.unexpected());
    }
    Ok(())
}

/// `--merge`: one report from the shards' reports.
fn merge(files: &[PathBuf], target: &Path, junit: Option<&Path>) -> Result<()> {
    let mut report = Report::default();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let shard: Report = serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        report.kernels.extend(shard.kernels);
    }
    finish(&report, target, Instant::now(), junit)
}

/// The tools of VM runs.
struct Vm {
    qemu: PathBuf,
    init: PathBuf,
    /// KVM until a KVM boot shows no sign of life; TCG from then on.
    accel: std::cell::Cell<Accel>,
}

/// How long a KVM boot may keep the console silent before it counts as hung (a KVM boot reaches
/// the init in seconds; TCG ones take up to about 10 s, and are not held to this).
const KVM_SIGN_OF_LIFE: Duration = Duration::from_secs(60);

fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Removes a run directory when every cell was as expected; otherwise keeps it and says so.
fn finish_run_dir(dir: &Path, cells: &mut [Cell]) {
    if cells.iter().all(|c| c.result != Outcome::Fail) {
        let _ = std::fs::remove_dir_all(dir);
    } else {
        for cell in cells.iter_mut().filter(|c| c.result == Outcome::Fail) {
            cell.detail.push_str(&format!(" (logs: {})", dir.display()));
        }
    }
}

fn run_local(selection: &Selection, artifacts: &Artifacts, workspace: &Path, runs: &Path) -> Result<report::Kernel> {
    let started = Instant::now();
    let release = uname_release();
    let label = "host";
    eprintln!("[matrix {label}] running natively on {release}");
    let out = runs.join(label);
    fresh_dir(&out)?;
    let plan = plan::build(selection, artifacts, workspace, &PlanOptions { out: out.clone(), place: Where::Host })?;
    let results = runner::run(&plan, runner::Options::default(), |event| {
        if let Event::Done(result) = event {
            eprintln!("[matrix {label}] {} {} ({:.1} s)", result.name, result.outcome, result.secs);
        }
    })
    .context("running the plan on the host")?;
    let mut cells = cells::cells(selection, &out, &results, config::parse_series(&release));
    finish_run_dir(&out, &mut cells);
    Ok(report::Kernel {
        series: label.into(),
        release,
        accel: "native".into(),
        cells,
        boot_s: None,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

#[expect(clippy::too_many_arguments, reason = "one call site; the pieces of a VM run")]
fn run_vm(
    kernel: &Kernel,
    cache: &Path,
    apt: &mut kernel::AptState,
    vm: &Vm,
    selection: &Selection,
    artifacts: &Artifacts,
    workspace: &Path,
    runs: &Path,
    opts: &Options,
) -> report::Kernel {
    let series = &kernel.series;
    let mut say = |what: &str| eprintln!("[matrix {series}] {what}");
    let out = runs.join(series);
    let mut column = report::Kernel {
        series: series.clone(),
        release: String::new(),
        accel: vm.accel.get().name().into(),
        cells: Vec::new(),
        boot_s: None,
        wall_s: 0.0,
    };
    say(&format!("expect: {}", kernel.note));
    let tree = match kernel::ensure(cache, apt, kernel, &mut say) {
        Ok(tree) => tree,
        Err(e) => {
            column.cells.push(Cell::new("boot", Outcome::Fail, format!("fetching the kernel failed: {e:#}")));
            return column;
        }
    };
    column.release = tree.release.clone();
    let started = Instant::now();
    // A panic before the init's first step is early boot, not the tests: under TCG, kernels
    // occasionally trip over their own text patching there (an int3 oops in the idle loop was
    // seen with 7.3). Boot once more, keep the first console log, and say so in the boot cell.
    let mut first_panic: Option<(String, String)> = None;
    let booted = loop {
        let result = boot_and_run(&tree, vm, selection, artifacts, workspace, &out, opts, &mut say);
        let console = std::fs::read_to_string(out.join("console.log")).unwrap_or_default();
        match result {
            // The probe's firmware ran under this KVM, a kernel does not: TCG from now on.
            Err(e) if vm.accel.get() == Accel::Kvm && format!("{e:#}").contains(qemu::NO_SIGN_OF_LIFE) => {
                say("KVM runs the probe but this kernel stays silent under it: TCG from now on");
                vm.accel.set(Accel::Tcg);
                column.accel = Accel::Tcg.name().into();
            }
            Err(e)
                if first_panic.is_none()
                    && format!("{e:#}").contains("the guest kernel reported")
                    && !console.contains(zrlab_guest::STEP_MARKER) =>
            {
                say("the kernel panicked before the init started; booting once more");
                first_panic = Some((format!("{e:#}"), console));
            }
            other => break other,
        }
    };
    if let Some((_, console)) = &first_panic {
        let _ = std::fs::write(out.join("console-first-boot.log"), console);
    }
    column.wall_s = started.elapsed().as_secs_f64();
    let mut cells = match booted {
        Ok(booted) => {
            column.boot_s = booted.boot_s;
            let results = runner::read_results(&out).unwrap_or_default();
            let retried = first_panic
                .as_ref()
                .map(|(e, _)| format!("; the first boot panicked before init and was retried ({e})"))
                .unwrap_or_default();
            let mut cells = vec![Cell::new(
                "boot",
                Outcome::Pass,
                format!(
                    "init reached in {:.1} s; init: {}{retried}",
                    booted.boot_s.unwrap_or_default(),
                    if booted.verdict == Some(true) { "success" } else { "failure" }
                ),
            )];
            cells.extend(cells::cells(selection, &out, &results, config::parse_series(&tree.release)));
            cells
        }
        Err(e) => {
            let mut cells = vec![Cell::new("boot", Outcome::Fail, format!("{e:#}"))];
            // Whatever ran before the failure still counts; the rest is "not run".
            let results = runner::read_results(&out).unwrap_or_default();
            cells.extend(cells::cells(selection, &out, &results, config::parse_series(&tree.release)));
            cells
        }
    };
    say(&format!("done in {:.0} s", column.wall_s));
    finish_run_dir(&out, &mut cells);
    column.cells = cells;
    column
}

#[expect(clippy::too_many_arguments, reason = "one call site; the pieces of a VM run")]
fn boot_and_run(
    tree: &kernel::Tree,
    vm: &Vm,
    selection: &Selection,
    artifacts: &Artifacts,
    workspace: &Path,
    out: &Path,
    opts: &Options,
    say: &mut dyn FnMut(&str),
) -> Result<qemu::Booted> {
    fresh_dir(out)?;
    let plan = plan::build(selection, artifacts, workspace, &PlanOptions { out: out.to_path_buf(), place: Where::Vm })?;
    let plan_path = out.join("plan.txt");
    std::fs::write(&plan_path, plan.render()?).with_context(|| format!("writing {}", plan_path.display()))?;
    let index = modules::Index::load(&tree.modules_dir)?;
    let initrd = out.join("initramfs.cpio");
    let archive = initramfs::build(&vm.init, &index, workspace, &plan_path)?;
    std::fs::write(&initrd, archive).with_context(|| format!("writing {}", initrd.display()))?;
    let accel = vm.accel.get();
    say(&format!("booting {} ({})", tree.release, accel.name()));
    qemu::run(
        &qemu::Boot {
            qemu: &vm.qemu,
            accel,
            vmlinuz: &tree.vmlinuz,
            initrd: &initrd,
            workspace,
            memory: GUEST_MEMORY,
            cpus: GUEST_CPUS,
            timeout: Duration::from_secs(opts.timeout),
            console_log: &out.join("console.log"),
            sign_of_life: (accel == Accel::Kvm).then_some(KVM_SIGN_OF_LIFE),
        },
        say,
    )
}

fn uname_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
