//! `cargo xtask`: every command a user of the lab runs.
//!
//! `main` only dispatches; each subcommand is a module with its own `Options` and one entry
//! function. Every child process goes through [`exec`], which puts the full command line in any
//! error.

mod bench;
mod build;
mod exec;
mod fuzz;
mod lab;
mod matrix;
mod mutants;
mod setup;
mod test;
mod workflows;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Set up, run and test the zero-reset traffic-engineering lab")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build and the lab need (apt packages, bpf-linker, the eBPF toolchain).
    Setup(setup::Options),
    /// Run the lab: the default scenarios, one scenario file, or `clean`.
    Lab(lab::Options),
    /// Packet traces: `trace gen --kind tcp|quic|syn-burst --output FILE.pcap ...`.
    Trace(lab::Options),
    /// Replay a trace: `replay offline FILE.pcap --config LB.toml [--output OUT.pcap]`.
    Replay(lab::Options),
    /// Run the test suites (set-up first).
    Test(test::Options),
    /// Run a benchmark (release build); prints ratios to a baseline measured in the same run.
    Bench(bench::Options),
    /// Fuzz the XDP programs against the reference model (a million frames by default).
    Fuzz(fuzz::Options),
    /// Boot Debian kernels under QEMU (and the host's natively) and run the kernel-sensitive
    /// suites on each; writes target/matrix/report.{json,md}.
    Matrix(matrix::Options),
    /// The harness's mutation score: seed small faults one at a time (eBPF programs, control
    /// plane, release, judging code) and count what the suites catch; writes
    /// target/mutants/report.{json,md}.
    Mutants(mutants::Options),
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Setup(opts) => setup::run(&opts),
        Command::Lab(opts) => lab::run(None, opts),
        Command::Trace(opts) => lab::run(Some("trace"), opts),
        Command::Replay(opts) => lab::run(Some("replay"), opts),
        Command::Test(opts) => test::run(opts),
        Command::Bench(opts) => bench::run(opts),
        Command::Fuzz(opts) => fuzz::run(&opts),
        Command::Matrix(opts) => matrix::run(opts),
        Command::Mutants(opts) => mutants::run(opts),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes, without a backtrace: these are user-facing failures.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
