//! `tc_impair`: seeded loss and duplication on one interface, per direction (the lab's own link
//! impairment: this host kernel has no netem).
//!
//! Two entry points share the maps: `impair_ingress` (frames the interface receives) and
//! `impair_egress` (frames it sends), attached with TCX. XDP cannot do this job: it sees only
//! received frames and cannot copy one, and the lab's interfaces that need impairing already run
//! an XDP program (`xdp_pass` on the router's side of the LB links).
//!
//! Each direction draws one pseudo-random number per frame from its seed, the CPU and the
//! frame's position in that CPU's sequence ([`draw`]), so a run with the same seed and the same
//! traffic makes the same decisions: a frame is dropped with probability `drop_ppm` / 10^6,
//! else duplicated with probability `dup_ppm` / 10^6. A duplicate carries [`DUP_MARK`] while
//! it re-enters the hook it was made in, which passes it untouched.

/// Name of the per-direction configuration (`ImpairConfig`, indexed by [`INGRESS`]/[`EGRESS`]).
pub const CONFIG_MAP: &str = "IMPAIR_CONFIG";
/// Name of the per-CPU, per-direction frame sequence numbers.
pub const SEQUENCE_MAP: &str = "IMPAIR_SEQUENCE";
/// Name of the per-CPU counters.
pub const COUNTERS_MAP: &str = "IMPAIR_COUNTERS";

/// Direction index: frames the interface receives.
pub const INGRESS: u32 = 0;
/// Direction index: frames the interface sends.
pub const EGRESS: u32 = 1;

/// The `skb->mark` bit of a duplicate on its way back into the hook that made it.
pub const DUP_MARK: u32 = 0x4000_0000;

/// Rates are in parts per million.
pub const PPM: u32 = 1_000_000;

/// One direction's configuration.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImpairConfig {
    /// Frames dropped per million.
    pub drop_ppm: u32,
    /// Frames duplicated per million (of those not dropped).
    pub dup_ppm: u32,
    /// The seed of the direction's draws.
    pub seed: u64,
}

/// Counter slots: per direction, from `direction * counter::PER_DIRECTION`.
pub mod counter {
    /// Frames seen (duplicates re-entering not included).
    pub const SEEN: u32 = 0;
    /// Frames dropped.
    pub const DROPPED: u32 = 1;
    /// Frames duplicated (one extra copy each).
    pub const DUPLICATED: u32 = 2;
    /// Of the dropped frames, TCP segments (inside the LB's IP-in-IP tunnel too).
    pub const DROPPED_TCP: u32 = 3;
    /// Of the dropped frames, UDP datagrams (inside the LB's IP-in-IP tunnel too).
    pub const DROPPED_UDP: u32 = 4;
    /// A duplicate could not be made (`bpf_clone_redirect` failed): the original passed alone.
    pub const DUP_FAILED: u32 = 5;
    /// Slots per direction.
    pub const PER_DIRECTION: u32 = 6;
    /// Number of slots.
    pub const SLOTS: u32 = 2 * PER_DIRECTION;
}

/// What happens to a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Passed once.
    Pass,
    /// Dropped.
    Drop,
    /// Passed, and a copy after it.
    Duplicate,
}

/// The draw for the `sequence`-th frame of `direction` on `cpu` under `seed`, and the fate it
/// gives under `config`: a splitmix64 stream per (seed, CPU, direction), keyed by the mixed
/// seed (seeds that differ in a few low bits would otherwise only permute one stream's
/// draws), the `sequence`-th value of it. Its low 32 bits decide the drop, its high 32 bits the
/// duplication, each scaled to parts per million.
#[inline(always)]
pub fn draw(config: &ImpairConfig, direction: u32, cpu: u32, sequence: u64) -> Fate {
    let stream = mix(config.seed ^ mix((u64::from(cpu) << 32) | u64::from(direction)));
    let z = mix(stream.wrapping_add(sequence.wrapping_mul(GOLDEN_GAMMA)));
    let scaled = |bits: u64| ((bits & 0xffff_ffff) * u64::from(PPM)) >> 32;
    if scaled(z) < u64::from(config.drop_ppm) {
        Fate::Drop
    } else if scaled(z >> 32) < u64::from(config.dup_ppm) {
        Fate::Duplicate
    } else {
        Fate::Pass
    }
}

/// splitmix64's increment.
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's output function of `z` plus its increment.
#[inline(always)]
fn mix(z: u64) -> u64 {
    let mut z = z.wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] plain data without padding (u32, u32, u64).
    unsafe impl aya::Pod for super::ImpairConfig {}
}
