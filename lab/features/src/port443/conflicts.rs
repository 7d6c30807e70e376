//! Which sockets may share TCP port 443: the incident's sequence and its neighbours.
//!
//! The incident report says these three binds all succeeded on the kernel of the time:
//! `[::1]:443` without `SO_REUSEPORT`, `[::2]:443` with it, `[::]:443` with it. On 6.18 the
//! third fails with `EADDRINUSE`. The lab replays that sequence and its neighbours (wildcard
//! first, mixed flags, `SO_REUSEADDR`, dual-stack wildcards) for IPv4 and IPv6, with sockets
//! only bound and with each one listening, and records every outcome. The suites snapshot the
//! outcomes per kernel series; the kernel matrix shows where kernels differ.
//!
//! The rule the kernel applies (`inet_bind_conflict()` and `inet_rcv_saddr_equal()` in
//! `net/ipv4/inet_connection_sock.c`, v6.18): a socket binding port P conflicts with a socket
//! already on P when their addresses *overlap* (equal; either one a wildcard; an IPv6 wildcard
//! without `IPV6_V6ONLY` also overlaps every IPv4 address) unless
//! 1. both set `SO_REUSEADDR` and the existing socket is not listening, or
//! 2. both set `SO_REUSEPORT` and belong to the same user (or the existing one is in
//!    TIME_WAIT).
//!
//! So `[::]` with `SO_REUSEPORT` conflicts with `[::1]` without it, whatever `[::2]` did: the
//! incident's third bind is refused. A kernel that let it through applied a bucket-level fast
//! path (`tb->fastreuseport`) that skipped the per-socket check.
//!
//! The addresses are documentation addresses on the namespace's loopback: `192.0.2.1`,
//! `192.0.2.2`, `0.0.0.0` and `2001:db8::1`, `2001:db8::2`, `::` (the incident's `::1` and `::2`,
//! moved into the documentation range).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use crate::port443::sockets::{Flags, errno_name, tcp_socket};
use zrlab_host::{error::Result, netns::Netns, nl::Nl, run_id::RunId};
use zrlab_wire::Family;

/// The port of the incident.
pub(crate) const PORT: u16 = 443;

/// Whether each bound socket also listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `bind()` only.
    BoundOnly,
    /// `bind()` then `listen()`.
    Listening,
}

/// A symbolic address of a bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addr {
    /// The first specific address of the run's family.
    A1,
    /// The second specific address of the run's family.
    A2,
    /// The run family's wildcard.
    Any,
    /// The first IPv4 address, whatever the run's family (dual-stack cases).
    V4A1,
}

/// One bind of a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bind {
    /// Where.
    pub addr: Addr,
    /// With which options.
    flags: Flags,
}

const fn bind(addr: Addr, reuseport: bool, reuseaddr: bool) -> Bind {
    Bind { addr, flags: Flags { reuseport, reuseaddr, v6only: None, freebind: false } }
}

const fn bind_v6only(addr: Addr, v6only: bool) -> Bind {
    Bind { addr, flags: Flags { reuseport: false, reuseaddr: false, v6only: Some(v6only), freebind: false } }
}

/// A named sequence of binds on port 443.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// Its name (kebab-case, used for snapshots).
    pub name: &'static str,
    /// The binds, in order.
    pub binds: &'static [Bind],
    /// Whether the case only makes sense for IPv6 runs (dual-stack cases).
    pub v6_only_case: bool,
}

const PLAIN: (bool, bool) = (false, false);
const RP: (bool, bool) = (true, false);
const RA: (bool, bool) = (false, true);
const BOTH: (bool, bool) = (true, true);

const fn b(addr: Addr, flags: (bool, bool)) -> Bind {
    bind(addr, flags.0, flags.1)
}

/// Every case, the incident first.
pub const CASES: &[Case] = &[
    Case { name: "incident", binds: &[b(Addr::A1, PLAIN), b(Addr::A2, RP), b(Addr::Any, RP)], v6_only_case: false },
    Case {
        name: "incident-wildcard-first",
        binds: &[b(Addr::Any, RP), b(Addr::A2, RP), b(Addr::A1, PLAIN)],
        v6_only_case: false,
    },
    Case { name: "specific-then-wildcard", binds: &[b(Addr::A1, PLAIN), b(Addr::Any, PLAIN)], v6_only_case: false },
    Case { name: "wildcard-then-specific", binds: &[b(Addr::Any, PLAIN), b(Addr::A1, PLAIN)], v6_only_case: false },
    Case { name: "wildcard-then-specific-reuseport", binds: &[b(Addr::Any, RP), b(Addr::A1, RP)], v6_only_case: false },
    Case { name: "same-address-reuseport", binds: &[b(Addr::A1, RP), b(Addr::A1, RP)], v6_only_case: false },
    Case {
        name: "same-address-reuseport-then-plain",
        binds: &[b(Addr::A1, RP), b(Addr::A1, PLAIN)],
        v6_only_case: false,
    },
    Case {
        name: "same-address-plain-then-reuseport",
        binds: &[b(Addr::A1, PLAIN), b(Addr::A1, RP)],
        v6_only_case: false,
    },
    Case { name: "distinct-addresses-plain", binds: &[b(Addr::A1, PLAIN), b(Addr::A2, PLAIN)], v6_only_case: false },
    Case { name: "reuseaddr-specific-then-wildcard", binds: &[b(Addr::A1, RA), b(Addr::Any, RA)], v6_only_case: false },
    Case { name: "reuseaddr-same-address", binds: &[b(Addr::A1, RA), b(Addr::A1, RA)], v6_only_case: false },
    Case { name: "reuseaddr-and-reuseport", binds: &[b(Addr::A1, BOTH), b(Addr::Any, BOTH)], v6_only_case: false },
    Case {
        name: "ipv4-then-dual-stack-wildcard",
        binds: &[b(Addr::V4A1, PLAIN), bind_v6only(Addr::Any, false)],
        v6_only_case: true,
    },
    Case {
        name: "ipv4-then-v6only-wildcard",
        binds: &[b(Addr::V4A1, PLAIN), bind_v6only(Addr::Any, true)],
        v6_only_case: true,
    },
];

const V4_A1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const V4_A2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const V6_A1: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const V6_A2: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

impl Addr {
    fn resolve(self, family: Family) -> IpAddr {
        match (self, family) {
            (Self::A1, Family::Ipv4) | (Self::V4A1, _) => V4_A1.into(),
            (Self::A2, Family::Ipv4) => V4_A2.into(),
            (Self::Any, Family::Ipv4) => Ipv4Addr::UNSPECIFIED.into(),
            (Self::A1, Family::Ipv6) => V6_A1.into(),
            (Self::A2, Family::Ipv6) => V6_A2.into(),
            (Self::Any, Family::Ipv6) => Ipv6Addr::UNSPECIFIED.into(),
        }
    }
}

/// What one bind (and listen) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It succeeded.
    Ok,
    /// `bind()` failed with this errno.
    BindFailed(String),
    /// `bind()` succeeded, `listen()` failed with this errno.
    ListenFailed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => f.write_str("ok"),
            Self::BindFailed(errno) => write!(f, "bind {errno}"),
            Self::ListenFailed(errno) => write!(f, "listen {errno}"),
        }
    }
}

/// One line of a case's record: the binds as written, then what each did.
pub fn describe(case: &Case, family: Family, mode: Mode, outcomes: &[Outcome]) -> String {
    let binds: Vec<String> = case
        .binds
        .iter()
        .map(|b| {
            let mut flags = Vec::new();
            if b.flags.reuseport {
                flags.push("reuseport");
            }
            if b.flags.reuseaddr {
                flags.push("reuseaddr");
            }
            match b.flags.v6only {
                Some(true) => flags.push("v6only"),
                Some(false) => flags.push("dual-stack"),
                None => {}
            }
            let flags = if flags.is_empty() { "plain".to_owned() } else { flags.join("+") };
            format!("{} {flags}", SocketAddr::new(b.addr.resolve(family), PORT))
        })
        .collect();
    let outcomes: Vec<String> = outcomes.iter().map(Outcome::to_string).collect();
    format!("{family} {mode:?}: {} => {}", binds.join(", "), outcomes.join(", "))
}

/// Runs `case` in a fresh namespace for `family` and `mode`; sockets are closed afterwards.
pub async fn run(case: &Case, family: Family, mode: Mode) -> Result<Vec<Outcome>> {
    let netns = Netns::create(&RunId::new(false).name("port443"))?;
    let nl = Nl::connect(&netns)?;
    nl.link_up("lo").await?;
    for addr in [V4_A1, V4_A2].map(IpAddr::from).into_iter().chain([V6_A1, V6_A2].map(IpAddr::from)) {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        nl.addr_add("lo", ipnet::IpNet::new(addr, prefix).expect("valid prefix")).await?;
    }
    let binds = case.binds;
    netns.run(move || {
        let mut open = Vec::new();
        binds
            .iter()
            .map(|b| {
                let addr = SocketAddr::new(b.addr.resolve(family), PORT);
                let socket = match tcp_socket(addr, b.flags) {
                    Ok(socket) => socket,
                    Err(e) => return Outcome::BindFailed(format!("socket: {}", errno_name(&e))),
                };
                if let Err(e) = socket.bind(&addr.into()) {
                    return Outcome::BindFailed(errno_name(&e));
                }
                let outcome = match mode {
                    Mode::Listening => match socket.listen(16) {
                        Ok(()) => Outcome::Ok,
                        Err(e) => Outcome::ListenFailed(errno_name(&e)),
                    },
                    Mode::BoundOnly => Outcome::Ok,
                };
                open.push(socket);
                outcome
            })
            .collect()
    })
}
