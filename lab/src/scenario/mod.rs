//! Scenarios: files ([`spec`]), expectations ([`expect`]) over what a run measured
//! ([`measures`]), the programs a scenario deploys ([`lb`], [`tpr`]) and running them ([`runner`]).

pub mod expect;
pub mod lb;
pub mod measures;
pub mod runner;
pub mod spec;
pub mod tpr;

pub use runner::{Outcome, RunOptions, VariantOutcome, Verdict, run_scenario, service_args, start_service};
pub use spec::Scenario;
