//! `cargo xtask lab`: set-up, build, then run the lab binary (`zrlab`) with the given arguments.
//!
//! With no arguments it runs the default scenarios; `run FILE [--keep]` runs one scenario and
//! `clean` removes what a killed run left (`cargo xtask lab --help` lists them all).
//! `cargo xtask trace ...` and `cargo xtask replay ...` are the lab binary's `trace` and
//! `replay` subcommands, run the same way.

use std::process::Command;

use anyhow::Result;

use crate::{build, exec, setup};

/// Options of `cargo xtask lab`: everything is passed to `zrlab`.
#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub(crate) struct Options {
    /// Arguments for the lab binary (try `--help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Entry point of `cargo xtask lab`, and (with `subcommand`) of `trace` and `replay`.
pub(crate) fn run(subcommand: Option<&str>, opts: Options) -> Result<()> {
    setup::ensure(true)?;
    let binary = build::lab_binary(build::Profile::Dev)?;
    let status = exec::status(Command::new(binary).args(subcommand).args(&opts.args))?;
    // The lab's exit code is the verdict: pass it through unchanged.
    std::process::exit(status.code().unwrap_or(1));
}
