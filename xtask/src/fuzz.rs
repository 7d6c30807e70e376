//! `cargo xtask fuzz`: the XDP fuzz suite with a million frames (the default test run uses a
//! few thousand). Seeded and reproducible: a failure names the seed and the frame's index.

use std::process::Command;

use anyhow::Result;

use crate::{build, exec, setup};

/// Options of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub(crate) struct Options {
    /// Frames to generate.
    #[arg(long, default_value_t = 1_000_000)]
    packets: u64,
    /// Seed of the generator.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
}

/// Entry point of `cargo xtask fuzz`.
pub(crate) fn run(opts: &Options) -> Result<()> {
    setup::ensure(true)?;
    let binary = build::lab_binary(build::Profile::Dev)?;
    exec::exec(
        Command::new(env!("CARGO"))
            .current_dir(exec::workspace_root())
            .args(["test", "--package", "zrlab-suites", "--test", "xdp_fuzz", "--", "--nocapture"])
            .env("ZRLAB_EXE", binary)
            .env("ZRLAB_FUZZ_PACKETS", opts.packets.to_string())
            .env("ZRLAB_FUZZ_SEED", opts.seed.to_string()),
    )
}
