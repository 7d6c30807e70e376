//! `zrlab-workload`: the service that runs on backends, the client flows, their accounting and
//! the per-second timeline.
//!
//! The formats they speak are `zrlab-wire`'s (`message`, `quic`); `phase` is the lifecycle
//! services publish, `handover` the sockets a release passes on, `accounting` the pure per-flow
//! bookkeeping, `service` and `client` the two ends that move bytes, `timeline` the per-second
//! view and its SVG. It uses `zrlab-host` and `zrlab-wire`; it must not import the control
//! plane, topologies or scenarios.

pub mod accounting;
pub mod client;
pub(crate) mod handover;
pub mod phase;
pub mod service;
pub mod timeline;
