//! The one way xtask runs a child process: the full command line ends up in every error.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
};

use anyhow::{Context as _, Result, bail};

/// Runs `cmd` with inherited stdio; fails unless it exits 0.
pub(crate) fn exec(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("{} failed: {status}", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` with inherited stdio and returns how it ended (for exit-code pass-through).
pub(crate) fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status().with_context(|| format!("failed to run {}", describe(cmd)))
}

/// Runs `cmd` capturing its output; a non-zero exit is returned, not an error.
pub(crate) fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output().with_context(|| format!("failed to run {}", describe(cmd)))
}

/// `cmd` as a shell-like line, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits inside the workspace").to_path_buf()
}

/// Whether this process runs as root (the lab needs CAP_SYS_ADMIN and CAP_NET_ADMIN).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
