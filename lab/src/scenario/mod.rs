//! Scenarios: files ([`spec`]), expectations ([`expect`]) and running them ([`runner`]).

pub mod expect;
pub mod lb;
pub mod runner;
pub mod spec;

pub use runner::{Outcome, RunOptions, VariantOutcome, Verdict, run_scenario};
pub use spec::Scenario;
