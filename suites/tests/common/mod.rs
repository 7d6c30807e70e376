//! Helpers shared by the suites (each test binary includes this module).
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The workspace's fixtures directory.
pub(crate) fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").canonicalize().expect("fixtures directory")
}

/// Environment variable naming the file each skip is appended to (`cargo xtask test` sets it
/// and prints the skips as a table at its end).
pub(crate) const SKIPS_ENV: &str = "ZRLAB_SKIPS";

/// Records that the running test skipped for want of `missing`: says so on standard error
/// (`SKIPPED ...`, what the kernel matrix's rows look for) and appends a `test<TAB>missing`
/// line to the file of [`SKIPS_ENV`], so that no skip is silent when libtest captures the
/// output of passing tests. The test is named by its thread, which libtest names after it.
pub(crate) fn record_skip(missing: &str) {
    let test = std::thread::current().name().unwrap_or("(unnamed test)").to_owned();
    eprintln!("SKIPPED {test}: {missing}");
    if let Some(path) = std::env::var_os(SKIPS_ENV) {
        use std::io::Write as _;
        let line = format!("{test}\t{missing}\n");
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
        // One write of one line to an O_APPEND file: lines of parallel tests do not interleave.
        file.and_then(|mut f| f.write_all(line.as_bytes())).unwrap_or_else(|e| panic!("append to {path:?}: {e}"));
    }
}

/// Whether the kernel has `feature` (by its probe); when it has not, records the running test's
/// skip naming the feature and the version that introduced it. The probe decides: a test skips
/// exactly when the probe says the feature is absent, so no test skips where it is present.
pub(crate) fn has_feature(feature: zrlab_features::Feature) -> bool {
    let present = runtime().block_on(feature.probe()).expect("probe");
    if !present {
        let (major, minor) = feature.since();
        record_skip(&format!("the kernel lacks {} ({}, {major}.{minor}+)", feature.describe(), feature.name()));
    }
    present
}

/// A single-threaded runtime for the lab's async operations.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Panics unless the tests run as root: they build namespaces and load BPF programs. A silent
/// skip would let a non-root run pass without testing anything.
pub(crate) fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "these tests need root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF)");
}

/// The `zrlab` binary: `ZRLAB_EXE` (set by `cargo xtask test`), else the one cargo built next
/// to this test binary.
pub(crate) fn zrlab_exe() -> PathBuf {
    if let Some(exe) = std::env::var_os("ZRLAB_EXE") {
        return exe.into();
    }
    let test_exe = std::env::current_exe().expect("test executable");
    let candidate = test_exe.parent().and_then(Path::parent).map(|dir| dir.join("zrlab"));
    match candidate {
        Some(path) if path.exists() => path,
        _ => panic!("zrlab binary not found: run the suites with `cargo xtask test` (or set ZRLAB_EXE)"),
    }
}

/// Held while a test runs `zrlab` processes: every `zrlab` run cleans up dead runs first, which
/// would race with a test that inspects what a killed run left. A file lock serialises those
/// tests across test binaries.
pub(crate) struct Exclusive(File);

/// Takes the suites' cross-process lock.
pub(crate) fn exclusive() -> Exclusive {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("zrlab-suites.lock");
    let file = File::create(&path).expect("lock file");
    // SAFETY: the fd is valid for the duration of the call.
    assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0, "flock {}", path.display());
    Exclusive(file)
}

/// Polls `cond` until it holds or `timeout` passes.
pub(crate) fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every lab object (namespace, cgroup, pin directory) whose name starts with `prefix`.
pub(crate) fn objects_with_prefix(prefix: &str) -> Vec<String> {
    zrlab_host::clean::inventory()
        .expect("inventory")
        .into_iter()
        .filter(|item| item.rsplit(['/', ' ']).next().is_some_and(|name| name.starts_with(prefix)))
        .collect()
}
/// Sets the TCP-level socket option `option` (`libc::TCP_*`) of `socket` to `value`.
pub(crate) fn set_tcp_option(socket: &impl std::os::fd::AsRawFd, option: i32, value: i32) -> std::io::Result<()> {
    // SAFETY: a valid socket and a live int of the length passed.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            option,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if ret == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// `TCP_FASTOPEN_CONNECT` (linux/tcp.h): the first write goes out in the SYN.
pub(crate) const TCP_FASTOPEN_CONNECT: i32 = 30;

pub(crate) mod xdp;

/// The BPF links whose program is `program`, by link id (the kernel's listing): how a test sees
/// which program an attachment runs.
pub(crate) fn links_running(program: u32) -> Vec<u32> {
    aya::programs::loaded_links()
        .map(|link| link.expect("link info"))
        .filter(|link| link.program_id() == program)
        .map(|link| link.id())
        .collect()
}
