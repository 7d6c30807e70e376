//! `xdp_drop_ack`: a test fixture that drops handshake segments of one port: TCP segments
//! without payload whose flags are exactly the configured ones, to (or from) the port, the
//! first `limit` of them (every one with 0). A handshake's final ACK, to keep a connection a
//! request (the reuseport migration suite); its SYN-ACK, to make the server retransmit it (the
//! sock_ops suite's lost SYN-ACK).

/// Name of the read-only global holding the [`DropConfig`], set at load.
pub const CONFIG_GLOBAL: &str = "DROP_CONFIG";
/// Name of the one-slot array counting the segments dropped so far.
pub const DROPPED_MAP: &str = "DROP_DROPPED";

/// TCP flags: ACK.
pub const ACK: u8 = 0x10;
/// TCP flags: SYN.
pub const SYN: u8 = 0x02;

/// What to drop.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropConfig {
    /// The port (host order).
    pub port: u16,
    /// The exact TCP flags byte of the segments to drop.
    pub flags: u8,
    /// 1: match the source port (segments from the port); 0: the destination port.
    pub by_source: u8,
    /// How many to drop at most; 0: every one.
    pub limit: u32,
}

impl DropConfig {
    /// Every handshake's final ACK (a pure ACK without payload) to `port`.
    pub const fn final_acks(port: u16) -> Self {
        Self { port, flags: ACK, by_source: 0, limit: 0 }
    }

    /// The first `limit` SYN-ACKs from `port`.
    pub const fn syn_acks_from(port: u16, limit: u32) -> Self {
        Self { port, flags: SYN | ACK, by_source: 1, limit }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] plain data without padding (u16, u8, u8, u32).
    unsafe impl aya::Pod for super::DropConfig {}
}
