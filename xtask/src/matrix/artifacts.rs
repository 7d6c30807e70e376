//! Builds what the matrix runs and finds it through cargo's JSON messages: the lab binary, the
//! suites' test binaries (`cargo test --no-run`), and the static init of the initramfs.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::exec::{describe, workspace_root};

/// The target the static init is built for (crt-static glibc: no loader, no libraries).
const INIT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Runs a cargo command with `--message-format=json-render-diagnostics`; returns the
/// `compiler-artifact` messages.
fn artifacts(cmd: &mut Command) -> Result<Vec<serde_json::Value>> {
    cmd.current_dir(workspace_root()).arg("--message-format=json-render-diagnostics").stdout(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("failed to run {}", describe(cmd)))?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut found = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo output")?;
        if let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line)
            && msg["reason"] == "compiler-artifact"
        {
            found.push(msg);
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("{} failed: {status}", describe(cmd));
    }
    Ok(found)
}

/// Builds the suites' test binaries; returns them by test name (`port443`, ...).
pub(crate) fn test_binaries() -> Result<BTreeMap<String, PathBuf>> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["test", "--no-run", "--package", "zrlab-suites"]);
    let mut tests = BTreeMap::new();
    for msg in artifacts(&mut cmd)? {
        let is_test = msg["target"]["kind"].as_array().is_some_and(|kinds| kinds.iter().any(|k| k == "test"));
        if is_test && let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str()) {
            tests.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    if tests.is_empty() {
        bail!("cargo built no test binaries for zrlab-suites");
    }
    Ok(tests)
}

/// Builds `zrlab-init` statically linked (release, crt-static) and returns its path.
pub(crate) fn static_init() -> Result<PathBuf> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--release", "--package", "zrlab-guest", "--bin", "zrlab-init", "--target", INIT_TARGET])
        // With an explicit --target, RUSTFLAGS reach only the target's artifacts (not build
        // scripts), and they live in target/<triple>/: the host builds' cache is untouched.
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    let exe = artifacts(&mut cmd)?
        .into_iter()
        .filter(|m| m["target"]["name"] == "zrlab-init")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo built no zrlab-init executable")?;
    let bytes = std::fs::read(&exe).with_context(|| format!("reading {}", exe.display()))?;
    if has_interpreter(&bytes) {
        bail!(
            "{} is dynamically linked; the initramfs needs a static binary (is libc6-dev's libc.a installed?)",
            exe.display()
        );
    }
    Ok(exe)
}

/// Whether an ELF64 file has a `PT_INTERP` program header (a dynamic loader).
fn has_interpreter(elf: &[u8]) -> bool {
    let read = |o: usize, n: usize| -> Option<u64> {
        let b = elf.get(o..o + n)?;
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(b);
        Some(u64::from_le_bytes(v))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (read(0x20, 8), read(0x36, 2), read(0x38, 2)) else {
        return true;
    };
    (0..phnum).any(|i| read((phoff + i * phentsize) as usize, 4) == Some(3))
}
