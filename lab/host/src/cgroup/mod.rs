//! The run's cgroup v2 subtree: `<cgroup2 mount>/<run prefix>/<node>`.
//!
//! Service processes start inside their node's leaf, where scenarios attach their sock_ops
//! programs. Removal kills everything in the subtree (`cgroup.kill`, or SIGKILL per process on kernels
//! before 5.14), waits until the kernel reports it unpopulated, then removes the directories
//! bottom-up. Nothing outside the run's own subtree is touched.
//!
//! [`sockets_in`] makes sockets that belong to one of these cgroups for a process outside them
//! (cgroup-attached programs such as sock_ops act on a socket by its creator's cgroup).

use std::{
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::error::{LabError, Result};

mod sockets;

pub use sockets::sockets_in;

/// How long removal waits for killed processes to leave a cgroup.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often removal re-reads `cgroup.events` while waiting.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// Where cgroup v2 is mounted, read from `/proc/mounts` (it differs between machines:
/// `/sys/fs/cgroup` or `/sys/fs/cgroup/unified`).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(|e| LabError::os("read", "/proc/mounts", e))?;
    mounts
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_dev, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(dir))
        })
        .ok_or_else(|| LabError::Unsupported("no cgroup v2 mount in /proc/mounts (mount -t cgroup2 none <dir>)".into()))
}

/// A cgroup directory the lab created. Dropping it removes it (and its subtree) unless kept.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    kept: bool,
}

impl Cgroup {
    /// Creates `path` (its parent must exist).
    pub fn create(path: PathBuf) -> Result<Self> {
        std::fs::create_dir(&path).map_err(|e| LabError::os("mkdir", path.display().to_string(), e))?;
        Ok(Self { path, kept: false })
    }

    /// The existing cgroup at `path`, never removed by this handle (a kept run's, adopted by
    /// the process that keeps its data path).
    pub fn existing(path: PathBuf) -> Result<Self> {
        if !path.is_dir() {
            return Err(LabError::Path { what: "no such cgroup", path });
        }
        Ok(Self { path, kept: true })
    }

    /// Creates the child cgroup `name` below this one and returns its path. The child is removed
    /// with this cgroup.
    pub fn leaf(&self, name: &str) -> Result<PathBuf> {
        let path = self.path.join(name);
        match std::fs::create_dir(&path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                Err(LabError::os("mkdir", path.display().to_string(), e))
            }
            _ => Ok(path),
        }
    }

    /// Leaves the cgroup in place when dropped (`--keep`).
    pub fn keep(mut self) {
        self.kept = true;
    }

    /// Kills everything inside and removes the subtree now, reporting failure.
    pub fn remove(mut self) -> Result<()> {
        self.kept = true;
        remove_tree(&self.path)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if !self.kept
            && let Err(e) = remove_tree(&self.path)
        {
            tracing::warn!("leaving cgroup {} behind: {e}", self.path.display());
        }
    }
}

/// Kills every process in the subtree at `path` and removes its directories bottom-up.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    kill_processes(path)?;
    rmdir_tree(path)
}

/// SIGKILLs every process in the subtree at `path` and waits until they have left it (a host
/// that dies hard; the first step of removing a subtree).
pub fn kill_processes(path: &Path) -> Result<()> {
    kill_all(path)?;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while populated(path)? {
        if Instant::now() > deadline {
            return Err(LabError::Timeout {
                what: format!("processes to leave cgroup {}", path.display()),
                after: DRAIN_TIMEOUT,
            });
        }
        std::thread::sleep(DRAIN_POLL);
    }
    Ok(())
}

fn kill_all(path: &Path) -> Result<()> {
    let kill_file = path.join("cgroup.kill");
    if kill_file.exists() {
        return std::fs::write(&kill_file, "1").map_err(|e| LabError::os("write", kill_file.display().to_string(), e));
    }
    // Before 5.14 there is no cgroup.kill: signal each process of each cgroup in the subtree.
    for dir in subtree(path)? {
        let procs = dir.join("cgroup.procs");
        let pids = std::fs::read_to_string(&procs).unwrap_or_default();
        for pid in pids.lines().filter_map(|line| line.trim().parse::<i32>().ok()) {
            // SAFETY: kill has no memory-safety preconditions; a vanished pid is harmless.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    Ok(())
}

fn populated(path: &Path) -> Result<bool> {
    let events = path.join("cgroup.events");
    let text = std::fs::read_to_string(&events).map_err(|e| LabError::os("read", events.display().to_string(), e))?;
    Ok(text.lines().any(|line| line.trim() == "populated 1"))
}

/// `path` and every cgroup below it, parents before children.
fn subtree(path: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = vec![path.to_owned()];
    let mut i = 0;
    while i < dirs.len() {
        let entries =
            std::fs::read_dir(&dirs[i]).map_err(|e| LabError::os("read_dir", dirs[i].display().to_string(), e))?;
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            }
        }
        i += 1;
    }
    Ok(dirs)
}

fn rmdir_tree(path: &Path) -> Result<()> {
    for dir in subtree(path)?.iter().rev() {
        if let Err(e) = std::fs::remove_dir(dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            return Err(LabError::os("rmdir", dir.display().to_string(), e));
        }
    }
    Ok(())
}
