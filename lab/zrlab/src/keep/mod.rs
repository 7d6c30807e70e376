//! A kept lab is a live lab: `--keep` hands the run's data path to a **keeper** process that
//! lives in the run's cgroup until `zrlab clean`, and that `zrlab status` and `zrlab event`
//! talk to.
//!
//! How: when the main variant of a kept run (or a kept replay) ends, the runner drops its own
//! programs and starts `zrlab keeper --run <prefix> --scenario <file>` (or `--replay <file>`;
//! `zrlab_scenario::handoff`) inside the client node (its namespace and
//! cgroup, without a parent-death signal). The keeper adopts the kept topology
//! (`Lab::adopt`: opens the namespaces, reconstructs the nexthop groups), deploys the
//! scenario's XDP LB, decap and sock_ops programs again, replays the timeline's LB events (so
//! the rings and live ids are as the run left them), says `ready`, and serves requests on an
//! abstract Unix socket in its namespace ([`control`]): `status` and `event` (any timeline
//! action). It dies with the run's cgroup (`zrlab clean` kills it there), never earlier: it has
//! no parent-death signal, so it outlives the `zrlab` process that kept the run, SIGKILL
//! included.
//!
//! Limits: the connection tables start empty in the keeper (flows of the run are re-placed by
//! the same rings and ids); the services' listeners were opened before the keeper's `tpr_server`
//! attached, so their SYN-ACKs carry no id in the kept lab (a listener takes its option flags
//! when it starts listening).

pub(crate) mod control;
mod keeper;

pub(crate) use keeper::{KeeperArgs, keep};
