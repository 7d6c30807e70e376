//! `cargo xtask bench <name>`: set-up, release build, then `zrlab bench <name>`, which prints
//! its table and writes `target/bench/<name>.json`.
//!
//! Every benchmark reports ratios to a baseline measured in the same run: these machines are
//! noisy, so absolute numbers from different runs are not comparable.

use std::process::Command;

use anyhow::Result;

use crate::{build, exec, setup};

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub(crate) struct Options {
    /// Which benchmark.
    #[arg(value_enum)]
    name: Name,
    /// Extra arguments for `zrlab bench <name>` (see `--help` there).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// The benchmarks.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Name {
    /// Bind and listener-lookup scaling with many sockets on port 443.
    Bind443,
    /// The XDP load balancer per packet (ratio to an empty program) and Maglev.
    Xdp,
    /// Routing by the TCP option: the LB with id routing on vs off, hosts with sock_ops
    /// attached vs detached.
    Tpr,
    /// Dispatch capacity under load while a release happens (takeover, reuseport-bpf,
    /// sk-lookup) against the load generator's own ceiling.
    Release,
}

/// Entry point of `cargo xtask bench`.
pub(crate) fn run(opts: Options) -> Result<()> {
    setup::ensure(true)?;
    let binary = build::lab_binary(build::Profile::Release)?;
    let name = match opts.name {
        Name::Bind443 => "bind443",
        Name::Xdp => "xdp",
        Name::Tpr => "tpr",
        Name::Release => "release",
    };
    let out = exec::workspace_root().join("target/bench");
    exec::exec(Command::new(binary).arg("bench").arg(name).arg("--out").arg(out).args(&opts.args))
}
