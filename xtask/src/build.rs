//! Builds the lab binary and finds it through cargo's JSON messages (never by guessing paths).

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::exec::{describe, workspace_root};

/// Which cargo profile to build with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profile {
    /// `dev` (with optimised dependencies): what `lab` and `test` share.
    Dev,
    /// `release`: what benchmarks measure.
    Release,
}

/// Builds `zrlab` and returns its path.
pub(crate) fn lab_binary(profile: Profile) -> Result<PathBuf> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace_root())
        .args(["build", "--package", "zrlab", "--bin", "zrlab", "--message-format=json-render-diagnostics"])
        .stdout(Stdio::piped());
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    let mut child = cmd.spawn().with_context(|| format!("failed to run {}", describe(&cmd)))?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut binary = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo output")?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == "zrlab"
            && let Some(exe) = msg["executable"].as_str()
        {
            binary = Some(PathBuf::from(exe));
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("{} failed: {status}", describe(&cmd));
    }
    binary.context("cargo built no zrlab executable")
}
