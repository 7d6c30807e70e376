//! Feature probes that load tiny hand-assembled programs with the raw `bpf(2)` system call.
//!
//! Each probe tries the feature the way a user of it would: the program type, the attach type,
//! the helper or the context field the feature adds. Numbers are the kernel's UAPI
//! (`include/uapi/linux/bpf.h` at v6.12; cross-checked with aya-obj 0.3's generated bindings).
//! Helper probes follow libbpf's `libbpf_probe_bpf_helper`: a kernel that does not know a helper
//! rejects the program with "invalid func" / "unknown func" in the verifier log, whatever the
//! arguments; any other verdict means the helper exists.
//!
//! A probe tells "absent" (the kernel refused the program, map or attach type) from "cannot
//! probe": `EPERM` from any call means the kernel would not be asked (no privilege, or
//! `RLIMIT_MEMLOCK` too low for the probe), which says nothing about the feature, so it is an
//! error, never "absent". (`EACCES` is not such a refusal: the verifier rejects programs with
//! it, e.g. the helper probes' dummy arguments.)

use std::{
    ffi::CStr,
    io,
    os::fd::{AsFd, AsRawFd as _, OwnedFd},
};

use zrlab_host::bpf_sys::{
    LINK_CREATE, LinkCreateAttr, MAP_CREATE, MAP_TYPE_REUSEPORT_SOCKARRAY, MapCreateAttr, PROG_LOAD, PROG_TEST_RUN,
    fd_from, sys_bpf,
};
use zrlab_host::{LabError, Result};

/// Program types.
const PROG_SCHED_CLS: u32 = 3;
const PROG_XDP: u32 = 6;
const PROG_SOCK_OPS: u32 = 13;
const PROG_SK_REUSEPORT: u32 = 21;
const PROG_SK_LOOKUP: u32 = 30;

/// Attach types.
const ATTACH_SK_LOOKUP: u32 = 36;
const ATTACH_SK_REUSEPORT_SELECT_OR_MIGRATE: u32 = 40;
const ATTACH_TCX_INGRESS: u32 = 46;

/// Helper ids.
const FN_SK_SELECT_REUSEPORT: i32 = 82;
const FN_SK_ASSIGN: i32 = 124;
const FN_RESERVE_HDR_OPT: i32 = 144;

/// `offsetof(struct sk_reuseport_md, migrating_sk)`: data, data_end (8 each), len,
/// eth_protocol, ip_protocol, bind_inany, hash (4 each), padding to 8, sk (8).
const SK_REUSEPORT_MD_MIGRATING_SK: i16 = 48;

const XDP_PASS: i32 = 2;
/// `TCX_NEXT`: a TCX program's "on to the next one".
const TCX_NEXT: i32 = -1;
const SK_PASS: i32 = 1;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

/// `dst = imm` (BPF_ALU64 | BPF_MOV | BPF_K).
const fn mov_imm(dst: u8, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm)
}
/// `dst = src` (BPF_ALU64 | BPF_MOV | BPF_X).
const fn mov_reg(dst: u8, src: u8) -> Insn {
    insn(0xbf, dst, src, 0, 0)
}
/// `dst += imm` (BPF_ALU64 | BPF_ADD | BPF_K).
const fn add_imm(dst: u8, imm: i32) -> Insn {
    insn(0x07, dst, 0, 0, imm)
}
/// `*(u32 *)(dst + off) = imm` (BPF_ST | BPF_MEM | BPF_W).
const fn store_u32(dst: u8, off: i16, imm: i32) -> Insn {
    insn(0x62, dst, 0, off, imm)
}
/// `dst = *(u64 *)(src + off)` (BPF_LDX | BPF_MEM | BPF_DW).
const fn load_u64(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x79, dst, src, off, 0)
}
/// `call helper` (BPF_JMP | BPF_CALL).
const fn call(helper: i32) -> Insn {
    insn(0x85, 0, 0, 0, helper)
}
/// `exit` (BPF_JMP | BPF_EXIT).
const fn exit() -> Insn {
    insn(0x95, 0, 0, 0, 0)
}
/// `dst = map` (BPF_LD | BPF_IMM | BPF_DW with BPF_PSEUDO_MAP_FD): two instruction slots.
fn load_map_fd(dst: u8, fd: &OwnedFd) -> [Insn; 2] {
    [insn(0x18, dst, 1, 0, fd.as_raw_fd()), insn(0, 0, 0, 0, 0)]
}

/// The `BPF_PROG_LOAD` part of `union bpf_attr` (fields up to `expected_attach_type`).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_TEST_RUN` part of `union bpf_attr` (the 4.12 layout).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

/// A rejected load: the error and the first lines of the verifier log.
#[derive(Debug)]
pub(super) struct Rejected {
    pub(super) error: io::Error,
    pub(super) log: String,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The verifier's last complaint, without its statistics lines.
        let complaint = self
            .log
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty() && !l.starts_with("processed ") && !l.starts_with("verification time"));
        write!(f, "{}", self.error)?;
        if let Some(line) = complaint {
            let line: String = line.chars().take(80).collect();
            write!(f, ": {line}")?;
        }
        Ok(())
    }
}

/// Loads a program; on rejection returns the error and the verifier log.
fn load(prog_type: u32, attach: u32, insns: &[Insn]) -> Result<OwnedFd, Rejected> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        expected_attach_type: attach,
        ..Default::default()
    };
    match sys_bpf(PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd_from(fd)),
        Err(error) => Err(Rejected {
            error,
            log: CStr::from_bytes_until_nul(&log).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        }),
    }
}

/// The verdict of one probe: present or not, and what was seen; an error when the kernel
/// would not be asked (see the module docs).
pub(super) type ProbeResult = Result<(bool, String)>;

/// `Ok` when `error` is the kernel's answer about `what`; the "cannot probe" error when it is a
/// refusal to be asked at all (`EPERM`).
fn answered(what: &str, error: &io::Error) -> Result<()> {
    match error.raw_os_error() {
        Some(libc::EPERM) => Err(LabError::NotPrivileged(format!(
            "cannot probe {what}: {error} (no privilege, or RLIMIT_MEMLOCK too low: not an answer about the kernel)"
        ))),
        _ => Ok(()),
    }
}

fn loaded(result: Result<OwnedFd, Rejected>, what: &str) -> ProbeResult {
    match result {
        Ok(_) => Ok((true, format!("{what}: loaded"))),
        Err(rejected) => {
            answered(what, &rejected.error)?;
            Ok((false, format!("{what}: rejected: {rejected}")))
        }
    }
}

/// libbpf's helper heuristic: only an unknown helper is reported as such by the verifier.
fn helper_known(result: Result<OwnedFd, Rejected>, helper: &str) -> ProbeResult {
    match result {
        Ok(_) => Ok((true, format!("a program calling {helper} loaded"))),
        Err(r) => {
            answered(helper, &r.error)?;
            if r.log.contains("invalid func") || r.log.contains("unknown func") {
                Ok((false, format!("the verifier does not know {helper}: {r}")))
            } else {
                Ok((true, format!("the verifier knows {helper} (rejected only its dummy arguments: {r})")))
            }
        }
    }
}

/// `BPF_PROG_TEST_RUN`: an XDP program returning `XDP_PASS`, run on a 64-byte frame.
pub(super) fn test_run() -> ProbeResult {
    let prog = match load(PROG_XDP, 0, &[mov_imm(0, XDP_PASS), exit()]) {
        Ok(fd) => fd,
        Err(r) => {
            answered("an XDP program", &r.error)?;
            return Ok((false, format!("XDP program rejected: {r}")));
        }
    };
    let frame = [0u8; 64];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    match sys_bpf(PROG_TEST_RUN, &mut attr) {
        Ok(_) if attr.retval == XDP_PASS as u32 => Ok((true, "XDP_PASS program ran, returned 2".into())),
        Ok(_) => Ok((false, format!("test run returned {} instead of 2", attr.retval))),
        Err(e) => {
            answered("BPF_PROG_TEST_RUN", &e)?;
            Ok((false, format!("BPF_PROG_TEST_RUN: {e}")))
        }
    }
}

/// `BPF_PROG_TYPE_SOCK_OPS`: a program returning 1 loads.
pub(super) fn sock_ops() -> ProbeResult {
    loaded(load(PROG_SOCK_OPS, 0, &[mov_imm(0, 1), exit()]), "sock_ops program")
}

/// `BPF_PROG_TYPE_SK_REUSEPORT` with a `REUSEPORT_SOCKARRAY`: a program that calls
/// `bpf_sk_select_reuseport(ctx, map, &key, 0)` on the map loads.
pub(super) fn sk_reuseport() -> ProbeResult {
    let mut attr = MapCreateAttr {
        map_type: MAP_TYPE_REUSEPORT_SOCKARRAY,
        key_size: 4,
        value_size: 8,
        max_entries: 1,
        ..Default::default()
    };
    let map = match sys_bpf(MAP_CREATE, &mut attr) {
        Ok(fd) => fd_from(fd),
        Err(e) => {
            answered("a REUSEPORT_SOCKARRAY map", &e)?;
            return Ok((false, format!("REUSEPORT_SOCKARRAY map: {e}")));
        }
    };
    let [ld0, ld1] = load_map_fd(2, &map);
    let prog = [
        ld0,
        ld1,
        store_u32(10, -4, 0),
        mov_reg(3, 10),
        add_imm(3, -4),
        mov_imm(4, 0),
        call(FN_SK_SELECT_REUSEPORT),
        mov_imm(0, SK_PASS),
        exit(),
    ];
    loaded(load(PROG_SK_REUSEPORT, 0, &prog), "sk_reuseport program selecting from a REUSEPORT_SOCKARRAY")
}

/// `bpf_sk_assign` (a tc program calling it).
pub(super) fn sk_assign() -> ProbeResult {
    let prog = [mov_imm(2, 0), mov_imm(3, 0), call(FN_SK_ASSIGN), mov_imm(0, 0), exit()];
    helper_known(load(PROG_SCHED_CLS, 0, &prog), "bpf_sk_assign")
}

/// Loads a program of `prog_type` (expected attach type `load_as`) returning `ret` and attaches
/// it with `BPF_LINK_CREATE` as `attach_type` to `target` (a namespace fd, or an interface
/// index, as the attach type takes); the link is closed at once. `what` names the program in
/// the detail, `attached` says what a success means.
fn load_and_link(
    (prog_type, load_as): (u32, u32),
    (attach_type, target): (u32, u32),
    ret: i32,
    what: &str,
    attached: &str,
) -> ProbeResult {
    let prog = match load(prog_type, load_as, &[mov_imm(0, ret), exit()]) {
        Ok(fd) => fd,
        Err(r) => {
            answered(&format!("a {what} program"), &r.error)?;
            return Ok((false, format!("{what} program rejected: {r}")));
        }
    };
    let mut attr = LinkCreateAttr { prog_fd: prog.as_raw_fd() as u32, target_fd: target, attach_type, flags: 0 };
    match sys_bpf(LINK_CREATE, &mut attr) {
        Ok(link) => {
            drop(fd_from(link));
            Ok((true, attached.to_owned()))
        }
        Err(e) => {
            answered(&format!("a {what} attachment"), &e)?;
            Ok((false, format!("{what} attach: {e}")))
        }
    }
}

/// `BPF_PROG_TYPE_SK_LOOKUP`: a program returning `SK_PASS` loads and attaches (`BPF_LINK_CREATE`)
/// to `netns` (a scratch namespace; the link is closed at once).
pub(super) fn sk_lookup(netns: impl AsFd) -> ProbeResult {
    let target = netns.as_fd().as_raw_fd() as u32;
    let attached = "sk_lookup program loaded and attached to a namespace";
    load_and_link((PROG_SK_LOOKUP, ATTACH_SK_LOOKUP), (ATTACH_SK_LOOKUP, target), SK_PASS, "sk_lookup", attached)
}

/// TCX: a tc program returning `TCX_NEXT` loads and attaches with `BPF_LINK_CREATE` at TCX
/// ingress of `lo` (index 1) of the calling thread's namespace, which must be a scratch one
/// (the link is closed at once).
pub(super) fn tcx() -> ProbeResult {
    let attached = "tc program loaded and attached with TCX to lo of a scratch netns";
    load_and_link((PROG_SCHED_CLS, 0), (ATTACH_TCX_INGRESS, 1), TCX_NEXT, "tc", attached)
}

/// TCP header option helpers: a sock_ops program calling `bpf_reserve_hdr_opt(ctx, 0, 0)` loads.
pub(super) fn tcp_header_options() -> ProbeResult {
    let prog = [mov_imm(2, 0), mov_imm(3, 0), call(FN_RESERVE_HDR_OPT), mov_imm(0, 1), exit()];
    match load(PROG_SOCK_OPS, 0, &prog) {
        Ok(_) => Ok((true, "sock_ops program calling bpf_reserve_hdr_opt loaded".into())),
        Err(r) => {
            answered("bpf_reserve_hdr_opt", &r.error)?;
            Ok((false, format!("bpf_reserve_hdr_opt: {r}")))
        }
    }
}

/// `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`: an sk_reuseport program of that attach type reading
/// `ctx->migrating_sk` loads (kernels before 5.14 accept any attach type here but have no
/// such field, so the context read is what proves it).
pub(super) fn select_or_migrate() -> ProbeResult {
    let prog = [load_u64(2, 1, SK_REUSEPORT_MD_MIGRATING_SK), mov_imm(0, SK_PASS), exit()];
    loaded(
        load(PROG_SK_REUSEPORT, ATTACH_SK_REUSEPORT_SELECT_OR_MIGRATE, &prog),
        "SELECT_OR_MIGRATE program reading migrating_sk",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drops every capability of the calling thread. Capabilities belong to a thread, so the
    /// other tests' threads keep theirs.
    fn drop_capabilities() {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        /// `_LINUX_CAPABILITY_VERSION_3`: two `Data` words.
        const VERSION_3: u32 = 0x2008_0522;
        let mut header = Header { version: VERSION_3, pid: 0 };
        let data = [Data::default(); 2];
        // SAFETY: capset reads the header and two data structs, all valid for the call.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
        assert_eq!(rc, 0, "capset: {}", io::Error::last_os_error());
    }

    /// Without the privilege to use `bpf(2)` every BPF probe is an error that says it cannot
    /// probe, never "absent": a kernel that has the feature must not be reported without it
    /// because the prober lacked a capability (or, alike, its memlock limit).
    #[test]
    fn a_probe_the_kernel_refuses_to_answer_is_an_error_never_absent() {
        std::thread::spawn(|| {
            drop_capabilities();
            type Probe = fn() -> ProbeResult;
            let probes: [(&str, Probe); 7] = [
                ("test_run", test_run),
                ("sock_ops", sock_ops),
                ("sk_reuseport", sk_reuseport),
                ("sk_assign", sk_assign),
                ("tcp_header_options", tcp_header_options),
                ("select_or_migrate", select_or_migrate),
                ("tcx", tcx),
            ];
            for (name, probe) in probes {
                match probe() {
                    Err(LabError::NotPrivileged(why)) => assert!(why.starts_with("cannot probe"), "{name}: {why}"),
                    other => panic!("{name}: {other:?} without the privilege to ask"),
                }
            }
        })
        .join()
        .expect("the probe thread");
    }
}
