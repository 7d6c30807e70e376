//! The benchmarks of `zrlab bench`: each prints ratios against a baseline measured in the same
//! run and writes `target/bench/<name>.json`.

pub(crate) mod release;
pub(crate) mod tpr;
pub(crate) mod xdp;
