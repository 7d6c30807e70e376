//! The zero-reset traffic-engineering lab.
#![doc = "See the repository README for what it proves and how to run it."]

pub mod bpf;
