//! `tpr`: the sock_ops programs that carry a backend's server id in a TCP header option
//! (DESIGN.md section 1, "Stateless routing"; katran's `tpr/`).
//!
//! The wire, decided here and read by the LB's option walk (`lb::TPR_KIND`):
//! - the **server** (`tpr_server`, on the backend service's cgroup) writes
//!   `{SERVER_KIND, OPT_LEN, server id as u32 in network order}` on its SYN-ACK, and nowhere
//!   else. Kind 0xB6, as katran: the server-to-client option has a kind of its own, so a node in
//!   the middle (or the LB's walk, which looks for 0xB7 only) never takes a server's
//!   announcement for a client's echo;
//! - the **client** (`tpr_client`, on the client's cgroup) reads that option from the SYN-ACK
//!   when the connection is established, keeps the id in socket storage and writes
//!   `{ECHO_KIND, OPT_LEN, id}` on every later segment (never on its SYN: the SYN has no id to
//!   echo, and an LB hashes SYNs anyway). A SYN-ACK without the option (a server without the
//!   program), or with id 0, leaves the connection without an echo: the LB then routes it by
//!   its connection table and ring, as any flow without an id.
//!
//! Six bytes are reserved per option; the kernel rounds the reservation up to 8 and pads with
//! NOPs. When the 40-byte option space cannot take it, the segment goes without the option and
//! [`counter::NO_SPACE`] counts it: never an error on the connection.

/// Kind of the option the server writes on its SYN-ACK.
pub const SERVER_KIND: u8 = 0xb6;
/// Kind of the option the client echoes (what the LB reads: `lb::TPR_KIND`).
pub const ECHO_KIND: u8 = crate::lb::TPR_KIND;
/// Length of either option: kind, length, u32 id.
pub const OPT_LEN: u8 = 6;

/// Name of the one-entry array holding the server's id (0: write nothing). The control plane
/// sets it per backend.
pub const SERVER_ID_MAP: &str = "TPR_SERVER_ID";
/// Name of the per-CPU array of `u64` counters ([`counter`]).
pub const COUNTERS_MAP: &str = "TPR_COUNTERS";
/// Name of the socket storage holding the id a client connection echoes.
pub const PEER_ID_MAP: &str = "TPR_PEER_ID";

/// Counter slots: what each program did, so a scenario can prove the option was on the wire.
pub mod counter {
    /// Server: option written on a SYN-ACK.
    pub const WRITTEN: u32 = 0;
    /// Server: of those, SYN-ACKs carrying a SYN cookie.
    pub const WRITTEN_COOKIE: u32 = 1;
    /// Server: a connection's first echo carried this server's id.
    pub const ECHO_OK: u32 = 2;
    /// Server: a connection's first echo carried another id.
    pub const WRONG_ID: u32 = 3;
    /// Client: an id parsed from a SYN-ACK.
    pub const PARSED: u32 = 4;
    /// Client: a segment carried the echo.
    pub const ECHOED: u32 = 5;
    /// Either side: the option space was full; the segment went without the option.
    pub const NO_SPACE: u32 = 6;
    /// Nothing to carry: a server whose id is 0, or a client whose SYN-ACK had no id.
    pub const SKIPPED: u32 = 7;
    /// Writing the option failed for another reason (or a client's id was gone).
    pub const WRITE_ERRORS: u32 = 8;
    /// Number of slots.
    pub const SLOTS: u32 = 9;
    /// Slot names, for reports.
    pub const NAMES: [&str; SLOTS as usize] =
        ["written", "written_cookie", "echo_ok", "wrong_id", "parsed", "echoed", "no_space", "skipped", "write_errors"];
}

/// Name of the read-only global holding the test filler's [`FillConfig`] (`tpr_fill`), set at
/// load.
pub const FILL_CONFIG_GLOBAL: &str = "FILL_CONFIG";

/// What the test filler (`tpr_fill`) writes on every segment after the handshake: one option
/// of `kind`, as long as the space left allows, `max_len` bytes at most (a reservation of the
/// same size first).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FillConfig {
    /// The option kind.
    pub kind: u8,
    /// The most bytes it takes (2 to 40).
    pub max_len: u8,
}

impl FillConfig {
    /// All the space left, in an option of an unassigned kind (0xFD, RFC 4727's experimental
    /// range): a crowded option list.
    pub const FULL: Self = Self { kind: 0xfd, max_len: 40 };

    /// An option of the echo's own kind and size (its id 0), written before ours: another
    /// program that echoes too.
    pub const ECHO_FIRST: Self = Self { kind: ECHO_KIND, max_len: OPT_LEN };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] plain data without padding (two u8).
    unsafe impl aya::Pod for super::FillConfig {}
}
