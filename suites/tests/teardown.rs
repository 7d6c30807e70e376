//! Nothing leaks: a run stopped by SIGTERM or SIGINT tears its topology down itself; a run
//! killed with SIGKILL leaves state behind (shown, so the test can fail) that `zrlab clean`
//! removes completely; a 443 benchmark killed mid-run leaves no process holding its namespace
//! (checked by namespace inode, not by name: a name can be gone while a process keeps the
//! namespace alive).

mod common;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// How long a `zrlab run` may take to build its first topology.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30);

fn start_run(out: &Path) -> Child {
    Command::new(common::zrlab_exe())
        .arg("run")
        .arg(common::fixtures().join("scenarios/ecmp-hash-threshold.toml"))
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start zrlab run")
}

/// Waits until the run of `pid` has built a topology (its namespaces exist) and started its
/// services (its cgroup subtree is populated); returns the run's name prefix.
fn wait_until_running(pid: u32) -> String {
    let prefix = format!("zrlab-{pid}-");
    common::wait_for("the run's namespaces and services", BUILD_TIMEOUT, || {
        let objects = common::objects_with_prefix(&prefix);
        let namespaces = objects.iter().any(|o| o.starts_with("netns "));
        let services = objects.iter().filter(|o| o.starts_with('/')).any(|dir| {
            std::fs::read_to_string(Path::new(dir).join("cgroup.events")).is_ok_and(|t| t.contains("populated 1"))
        });
        namespaces && services
    });
    prefix
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

#[test]
fn sigterm_and_sigint_tear_the_run_down() {
    common::require_root();
    let _lock = common::exclusive();
    let out = tempdir("signals");
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut child = start_run(&out);
        let prefix = wait_until_running(child.id());
        signal(&child, sig);
        let status = child.wait().expect("wait for zrlab");
        assert_eq!(status.code(), Some(130), "signal {sig}: zrlab reports the interruption");
        assert_eq!(common::objects_with_prefix(&prefix), Vec::<String>::new(), "signal {sig}: nothing left");
    }
}

#[test]
fn sigkill_leftovers_are_removed_by_clean() {
    common::require_root();
    let _lock = common::exclusive();
    let out = tempdir("sigkill");
    let mut child = start_run(&out);
    let prefix = wait_until_running(child.id());
    signal(&child, libc::SIGKILL);
    child.wait().expect("wait for zrlab");
    let left = common::objects_with_prefix(&prefix);
    assert!(left.iter().any(|o| o.starts_with("netns ")), "a killed run leaves namespaces: {left:?}");
    let clean = Command::new(common::zrlab_exe()).arg("clean").output().expect("zrlab clean");
    assert!(clean.status.success(), "zrlab clean: {}", String::from_utf8_lossy(&clean.stderr));
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert!(stdout.contains(&prefix), "clean names what it removed: {stdout}");
    assert_eq!(common::objects_with_prefix(&prefix), Vec::<String>::new(), "clean removed everything");
}

#[test]
fn a_443_benchmark_killed_mid_run_leaves_no_namespace_alive() {
    common::require_root();
    let _lock = common::exclusive();
    let out = tempdir("bench443");
    let mut child = Command::new(common::zrlab_exe())
        .args(["bench", "bind443", "--sizes", "100,8000", "--repeats", "51", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start zrlab bench bind443");
    // Mid-run: one of its namespaces exists and a helper process holds sockets in it.
    let prefix = format!("zrlab-{}-", child.id());
    let mut inodes = Vec::new();
    common::wait_for("a benchmark namespace with its socket helpers", BUILD_TIMEOUT, || {
        inodes = namespace_inodes(&prefix);
        !inodes.is_empty() && !holders_of(&inodes).is_empty()
    });
    signal(&child, libc::SIGKILL);
    child.wait().expect("wait for zrlab");
    let clean = Command::new(common::zrlab_exe()).arg("clean").output().expect("zrlab clean");
    assert!(clean.status.success(), "zrlab clean: {}", String::from_utf8_lossy(&clean.stderr));
    // The helpers die with the benchmark (PDEATHSIG), possibly a moment after it.
    common::wait_for("the helpers to die", BUILD_TIMEOUT, || holders_of(&inodes).is_empty());
    assert_eq!(common::objects_with_prefix(&prefix), Vec::<String>::new(), "clean removed the names");
}

/// The inodes of the namespaces named `prefix...` now.
fn namespace_inodes(prefix: &str) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .filter_map(|e| e.metadata().ok().map(|m| m.ino()))
                .collect()
        })
        .unwrap_or_default()
}

/// The pids of processes (other than threads of ours) whose network namespace is one of
/// `inodes`.
fn holders_of(inodes: &[u64]) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| inodes.contains(&m.ino())))
        .collect()
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("teardown-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
