//! `cargo xtask test`: set-up, then every suite.
//!
//! Tests that touch the kernel run as root and give every namespace, cgroup and pin a name unique
//! to the test, so cargo's parallel test threads cannot collide; the few that measure or load the
//! machine serialise themselves. The lab binary is built first: scenario tests start its
//! `service` subcommand as child processes inside the lab's namespaces (`ZRLAB_EXE`).

use std::process::Command;

use anyhow::Result;

use crate::{build, exec, setup};

/// Options of `cargo xtask test`.
#[derive(clap::Args)]
pub(crate) struct Options {
    /// Extra arguments for `cargo test` (a filter, `-- --nocapture`, ...).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Entry point of `cargo xtask test`.
pub(crate) fn run(opts: Options) -> Result<()> {
    setup::ensure(true)?;
    if !exec::is_root() {
        eprintln!("[test] warning: not root; tests that build namespaces will fail with EPERM");
    }
    let binary = build::lab_binary(build::Profile::Dev)?;
    exec::exec(
        Command::new(env!("CARGO"))
            .current_dir(exec::workspace_root())
            // Every failing suite, not just the first one.
            .args(["test", "--no-fail-fast"])
            .args(&opts.args)
            .env("ZRLAB_EXE", binary),
    )
}
