//! `zrlab-scenario`: scenario files ([`spec`]), expectations ([`expect`]) over what a run
//! measured ([`measures`]), the programs a scenario deploys ([`lb`], [`tpr`]), releases and their
//! fleets of service processes ([`release`]), running them ([`runner`]), reports ([`report`])
//! and handing a kept run to its keeper ([`handoff`]). It may use every crate below it; it must
//! not import `zrlab-replay` or the binary.

pub mod expect;
pub mod handoff;
pub mod impair;
pub mod lb;
pub mod measures;
pub mod release;
pub mod report;
pub mod runner;
pub mod spec;
pub mod tpr;

pub use runner::{Outcome, RunOptions, ScenarioVerdict, VariantOutcome, run_scenario, service_args, start_service};
pub use spec::Scenario;
