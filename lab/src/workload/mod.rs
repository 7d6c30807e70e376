//! Workloads: the service that runs on backends, the client flows, and their accounting.
//!
//! `wire` and `quic` are the formats, `phase` the lifecycle services publish, `accounting` the
//! pure per-flow bookkeeping, `service` and `client` the two ends that move bytes.

pub mod accounting;
pub mod client;
pub mod handover;
pub mod phase;
pub mod quic;
pub mod service;
pub mod wire;
