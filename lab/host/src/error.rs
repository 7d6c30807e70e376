//! The lab's error type.
//!
//! Every variant names what failed: the operation, and the object it acted on (a namespace, an
//! interface, a file), so that a failed step can be found and rerun by hand.

use std::{io, path::PathBuf, time::Duration};

/// Errors of the lab library.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A system call or file operation failed.
    #[error("{op} {target}: {source}")]
    Os {
        /// The operation, e.g. `mount --bind` or `write`.
        op: &'static str,
        /// What it acted on (a path, a namespace, a pid).
        target: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A netlink request was refused or failed.
    #[error("netlink: {op} (in namespace {netns}): {source}")]
    Netlink {
        /// The step, phrased as the `ip` command it replaces.
        op: String,
        /// The namespace the request was sent in.
        netns: String,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// A topology or scenario file is invalid.
    #[error(transparent)]
    Spec(#[from] crate::toml_file::SpecError),
    /// Loading, verifying, attaching a BPF program, or using its maps failed.
    #[error("bpf: {what}: {message}")]
    Bpf {
        /// The step.
        what: String,
        /// The error (with the verifier's log for a refused program).
        message: String,
    },
    /// The process lacks the privileges the lab needs.
    #[error("the lab needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create namespaces and cgroups: {0}")]
    NotPrivileged(String),
    /// The kernel or machine lacks something the lab needs (not a feature a scenario may skip).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A command-line argument the command cannot use (an unknown name, an empty count).
    #[error("{0}")]
    Usage(String),
    /// A condition was not met in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// The condition.
        what: String,
        /// How long the lab waited.
        after: Duration,
    },
    /// A child process (a service) misbehaved.
    #[error("service {name}: {message}")]
    Service {
        /// The service (`node/instance`).
        name: String,
        /// What went wrong.
        message: String,
    },
    /// A run was interrupted by SIGINT or SIGTERM.
    #[error("interrupted")]
    Interrupted,
    /// Teardown left something behind; each failed step is kept.
    #[error("teardown failed: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Teardown(Vec<LabError>),
    /// A path could not be used.
    #[error("{what}: {path}")]
    Path {
        /// Why the path is unusable.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
}

impl LabError {
    /// An [`LabError::Os`] from the last OS error.
    pub fn last_os(op: &'static str, target: impl Into<String>) -> Self {
        Self::Os { op, target: target.into(), source: io::Error::last_os_error() }
    }

    /// An [`LabError::Os`] from an `io::Error`.
    pub fn os(op: &'static str, target: impl Into<String>, source: io::Error) -> Self {
        Self::Os { op, target: target.into(), source }
    }
}

/// Result with [`LabError`].
pub type Result<T, E = LabError> = std::result::Result<T, E>;
