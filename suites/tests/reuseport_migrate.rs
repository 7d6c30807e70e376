//! Migration parity with the kernel's `migrate_reuseport` selftest
//! (`tools/testing/selftests/bpf/prog_tests/migrate_reuseport.c`), on the lab's own dispatcher
//! (`reuseport_select`, `zrlab_scenario::release`): five listeners in one `SO_REUSEPORT` group, four old
//! and one target; 25 clients connect to the old ones; the dispatcher's generation flips to the
//! target; the old listeners are `shutdown()`; every request must be accepted by the target and
//! the program's own migration counter must read 25. For IPv4 and IPv6, and requests in every
//! state the selftest covers:
//! - `TCP_ESTABLISHED`: connections in the old listeners' accept queues;
//! - `TCP_SYN_RECV`: Fast Open connections whose final ACK is dropped (an XDP program on `lo`);
//! - `TCP_NEW_SYN_RECV`: requests whose final ACK is dropped, moved by the SYN-ACK
//!   retransmission timer, or by the final ACK arriving after the listener went away.
//!
//! Control: the same with the select-only program (no migration): the target accepts none.
//! The program's own counter is what proves it acted: with the target the only listener left,
//! the kernel's fallback for a program that selects nothing would pick it too (removing the
//! program's selection for migrating requests leaves the accept counts at 25 and fails only
//! the counter checks, as in the selftest).
//! Each case gets its own namespace; waits are conditions under a timeout.
//!
//! UDP, on the same dispatcher: a new flow's datagram goes to the generation's socket, a short
//! header's datagram to the socket of the slot its connection id names, and one naming a slot
//! without a socket to the generation (the release scenarios' UDP flows keep the first
//! process's ids, so only this case gives a later slot's UDP socket work).

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use test_case::test_case;
use zrlab_common::drop::{CONFIG_GLOBAL, DropConfig};
use zrlab_control::{
    bpf::{Loaded, Object},
    reuseport::{Dispatch, ReuseportCounters, ReuseportDispatch},
};
use zrlab_features::Feature;
use zrlab_host::{netns::Netns, nl::Nl, run_id::RunId};

/// Listeners in the group; the last one is the target.
const SERVERS: usize = 5;
/// The target's index.
const TARGET: usize = SERVERS - 1;
/// Clients, as in the selftest.
const CLIENTS: usize = 25;
/// The service port.
const PORT: u16 = 8443;
/// How long a condition may take (the request timer fires after 1 s, then 2 s more).
const TIMEOUT: Duration = Duration::from_secs(15);
/// How long the control waits for accepts that must not come (one SYN-ACK retransmission).
const CONTROL_WAIT: Duration = Duration::from_secs(2);

/// Where the clients' requests are when the old listeners go away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// In the accept queue.
    Established,
    /// Fast Open children waiting for their final ACK.
    FastOpenSynRecv,
    /// Requests, moved by their SYN-ACK timer.
    RequestByTimer,
    /// Requests, moved when their final ACK arrives.
    RequestByAck,
}

#[test_case(false, State::Established ; "v4 established")]
#[test_case(false, State::FastOpenSynRecv ; "v4 fastopen syn_recv")]
#[test_case(false, State::RequestByTimer ; "v4 new_syn_recv by timer")]
#[test_case(false, State::RequestByAck ; "v4 new_syn_recv by ack")]
#[test_case(true, State::Established ; "v6 established")]
#[test_case(true, State::FastOpenSynRecv ; "v6 fastopen syn_recv")]
#[test_case(true, State::RequestByTimer ; "v6 new_syn_recv by timer")]
#[test_case(true, State::RequestByAck ; "v6 new_syn_recv by ack")]
fn every_request_of_the_closed_listeners_is_accepted_by_the_target(v6: bool, state: State) {
    let Some((accepted, counters)) = run(v6, state, Dispatch::SelectOrMigrate) else { return };
    assert_eq!(accepted, CLIENTS, "{state:?}: the target accepted every request ({counters:?})");
    assert_eq!(counters.migrated(), CLIENTS as u64, "{state:?}: the program moved every request: {counters:?}");
    let in_state = match state {
        State::Established => counters.migrated_established,
        State::FastOpenSynRecv => counters.migrated_syn_recv,
        State::RequestByTimer => counters.migrated_request_timer,
        // The ACKs go out at once; only a host slower than the 1 s request timer would let the
        // timer move some first (the state is the same).
        State::RequestByAck => {
            assert!(counters.migrated_request_ack > 0, "moved by the final ACK: {counters:?}");
            counters.migrated_request_ack + counters.migrated_request_timer
        }
    };
    assert_eq!(in_state, CLIENTS as u64, "{state:?}: counted in its state: {counters:?}");
    assert_eq!(counters.selected, CLIENTS as u64, "the dispatcher placed every new connection: {counters:?}");
}

#[test_case(State::Established ; "established")]
#[test_case(State::FastOpenSynRecv ; "fastopen syn_recv")]
#[test_case(State::RequestByAck ; "new_syn_recv by ack")]
fn control_without_migration_the_target_accepts_none(state: State) {
    let Some((accepted, counters)) = run(false, state, Dispatch::Select) else { return };
    assert_eq!(counters.migrated(), 0, "{counters:?}");
    assert_eq!(accepted, 0, "{state:?}: without migration the closed listeners' requests are lost");
}

/// Runs one case in a fresh namespace: (requests the target accepted, the program's counters).
/// `None` (after saying so) on a kernel without request migration.
fn run(v6: bool, state: State, dispatch: Dispatch) -> Option<(usize, ReuseportCounters)> {
    common::require_root();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    if !common::has_feature(Feature::SelectOrMigrate) {
        return None;
    }
    let netns = Netns::create(&RunId::new(false).name("migrate")).expect("namespace");
    runtime.block_on(async { Nl::connect(&netns).expect("netlink").link_up("lo").await }).expect("lo up");
    if state == State::FastOpenSynRecv {
        // Client and server Fast Open, no cookie needed on either side.
        netns.run(|| std::fs::write("/proc/sys/net/ipv4/tcp_fastopen", "519")).expect("enter").expect("tcp_fastopen");
    }
    let addr =
        if v6 { SocketAddr::from((Ipv6Addr::LOCALHOST, PORT)) } else { SocketAddr::from((Ipv4Addr::LOCALHOST, PORT)) };

    let listeners: Vec<TcpListener> = netns
        .run(|| (0..SERVERS).map(|_| listen(addr, state)).collect::<std::io::Result<_>>())
        .expect("enter")
        .expect("listeners");
    let mut dispatcher = ReuseportDispatch::load(dispatch).expect("load the dispatcher");
    for (i, listener) in listeners.iter().enumerate() {
        dispatcher.set_socket(i as u32, listener).expect("socket array");
    }
    // The old generation takes the new connections.
    dispatcher.set_generation(0, TARGET as u32).expect("generation");
    dispatcher.attach(&listeners[0]).expect("attach to the group");

    let drop_acks = (state != State::Established).then(|| {
        let config = DropConfig::final_acks(PORT);
        let mut loaded = Loaded::load_with(Object::XdpDropAck, (CONFIG_GLOBAL, &config), &["xdp_drop_ack"])
            .expect("load xdp_drop_ack");
        loaded.attach_xdp_in("xdp_drop_ack", &netns, "lo", XdpMode::Skb).expect("attach to lo");
        loaded
    });
    let mut clients: Vec<TcpStream> = netns
        .run(|| (0..CLIENTS).map(|_| connect(addr, state)).collect::<std::io::Result<_>>())
        .expect("enter")
        .expect("clients");

    // The new generation is ready; the old listeners go away.
    dispatcher.set_generation(TARGET as u32, 1).expect("flip the generation");
    for listener in &listeners[..TARGET] {
        // SAFETY: a valid socket.
        assert_eq!(unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) }, 0, "shutdown an old listener");
    }
    match state {
        State::Established | State::FastOpenSynRecv => drop(drop_acks),
        State::RequestByTimer | State::RequestByAck => {
            if state == State::RequestByTimer && dispatch == Dispatch::SelectOrMigrate {
                wait_for(&dispatcher, |c| c.migrated_request_timer >= CLIENTS as u64);
            }
            drop(drop_acks);
            // Data carries the final ACK the server never saw.
            for client in &mut clients {
                client.write_all(b"x").expect("write");
            }
        }
    }
    let deadline = if dispatch == Dispatch::Select { CONTROL_WAIT } else { TIMEOUT };
    let accepted = accept_all(&listeners[TARGET], deadline);
    let counters = dispatcher.counters().expect("counters");
    drop(clients);
    drop(listeners);
    netns.remove().expect("remove the namespace");
    Some((accepted, counters))
}

/// A listener of the group (Fast Open on for that case).
fn listen(addr: SocketAddr, state: State) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    if state == State::FastOpenSynRecv {
        common::set_tcp_option(&socket, libc::TCP_FASTOPEN, CLIENTS as i32 * 2)?;
    }
    socket.listen(CLIENTS as i32 * 2)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// One client: connected (the handshake done as far as the client sees it).
fn connect(addr: SocketAddr, state: State) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    if state == State::FastOpenSynRecv {
        common::set_tcp_option(&socket, common::TCP_FASTOPEN_CONNECT, 1)?;
    }
    socket.connect_timeout(&addr.into(), TIMEOUT)?;
    let mut stream: TcpStream = socket.into();
    if state == State::FastOpenSynRecv {
        // With TCP_FASTOPEN_CONNECT the first write goes out in the SYN, with its data.
        stream.write_all(b"x")?;
    }
    Ok(stream)
}

/// Accepts on `listener` until `CLIENTS` arrived or `limit` passed; how many.
fn accept_all(listener: &TcpListener, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let mut accepted = Vec::new();
    while accepted.len() < CLIENTS && Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => accepted.push(stream),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut fd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut fd, 1, 50) };
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    // Drain what the accepted connections carried, so nothing stays unread on close.
    for mut stream in accepted.iter() {
        let _ = stream.set_nonblocking(true);
        let _ = stream.read(&mut [0u8; 8]);
    }
    accepted.len()
}

/// Waits until the dispatcher's counters satisfy `cond`.
fn wait_for(dispatcher: &ReuseportDispatch, cond: impl Fn(&ReuseportCounters) -> bool) {
    common::wait_for("the request timer to migrate every request", TIMEOUT, || {
        cond(&dispatcher.counters().expect("counters"))
    });
}

/// The service's UDP port in the UDP case.
const UDP_PORT: u16 = 4433;

/// A UDP socket of the group, bound to `addr` with `SO_REUSEPORT`.
fn udp_member(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(TIMEOUT))?;
    Ok(socket)
}

#[test_case(false ; "v4")]
#[test_case(true ; "v6")]
fn udp_datagrams_go_to_the_generation_or_to_the_slot_their_id_names(v6: bool) {
    common::require_root();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let netns = Netns::create(&RunId::new(false).name("rsudp")).expect("namespace");
    runtime.block_on(async { Nl::connect(&netns).expect("netlink").link_up("lo").await }).expect("lo up");
    let addr = if v6 {
        SocketAddr::from((Ipv6Addr::LOCALHOST, UDP_PORT))
    } else {
        SocketAddr::from((Ipv4Addr::LOCALHOST, UDP_PORT))
    };
    let (old, new, client) = netns
        .run(|| {
            let any = SocketAddr::new(addr.ip(), 0);
            Ok::<_, std::io::Error>((udp_member(addr)?, udp_member(addr)?, UdpSocket::bind(any)?))
        })
        .expect("enter")
        .expect("sockets");
    // The old process at slot 0, the new one at slot 1, which takes new flows.
    let mut dispatcher = ReuseportDispatch::load(Dispatch::Select).expect("load the dispatcher");
    dispatcher.set_slot(0, None::<&UdpSocket>, Some(&old)).expect("slot 0");
    dispatcher.set_slot(1, None::<&UdpSocket>, Some(&new)).expect("slot 1");
    dispatcher.set_generation(1, 1).expect("generation");
    dispatcher.attach(&old).expect("attach to the group");

    // A QUIC long header (a new flow), then short headers whose connection id's first byte
    // (layout v2: top bits `10`) names slot 0, slot 1 and slot 5 (no socket there).
    let cases: [(&str, [u8; 2], &UdpSocket); 4] = [
        ("a new flow: the generation", [0xc0, 0x00], &new),
        ("an id of slot 0: the old process", [0x40, 0x80], &old),
        ("an id of slot 1: the new process", [0x40, 0x81], &new),
        ("an id of slot 5, empty: the generation", [0x40, 0x85], &new),
    ];
    for (what, head, socket) in cases {
        client.send_to(&[head.as_slice(), b"payload"].concat(), addr).expect("send");
        let mut buf = [0u8; 64];
        let (len, _) = socket.recv_from(&mut buf).unwrap_or_else(|e| panic!("{what}: nothing received ({e})"));
        assert_eq!(&buf[..2], head.as_slice(), "{what}: another datagram ({len} bytes)");
    }
    let counters = dispatcher.counters().expect("counters");
    assert_eq!(
        (counters.selected, counters.by_cid, counters.cid_orphaned, counters.select_failed),
        (2, 2, 1, 0),
        "the program chose every datagram: {counters:?}"
    );
    drop((old, new, client, dispatcher));
    netns.remove().expect("remove the namespace");
}
