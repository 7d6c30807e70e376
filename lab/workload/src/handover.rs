//! Socket takeover between an old and a new service process, as production did it before BPF
//! dispatch: the new process asks the old one for its listening TCP socket and its UDP sockets
//! over a Unix socket and receives them with `SCM_RIGHTS`; the old one stops accepting and
//! stops reading UDP, keeps serving the connections it has, and serves the UDP datagrams of its
//! flows that the new process forwards to it in user space (their connection ids are not the
//! new process's).
//!
//! Names are abstract Unix socket names, private to the backend's network namespace:
//! `<name>` takes the handover request, `<name>-fwd` the forwarded datagrams (each message: the
//! client's address as text, a newline, the datagram).

use std::{
    io::{IoSlice, IoSliceMut, Read as _, Write as _},
    net::SocketAddr,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr as UnixAddr, UnixDatagram, UnixListener, UnixStream},
    },
};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Most sockets one handover carries.
const MAX_FDS: usize = 16;

fn abstract_addr(name: &str) -> std::io::Result<UnixAddr> {
    UnixAddr::from_abstract_name(name.as_bytes())
}

/// The socket a process listens on for its successor's handover request.
pub(crate) fn listen(name: &str) -> std::io::Result<UnixListener> {
    UnixListener::bind_addr(&abstract_addr(name)?)
}

/// The socket forwarded datagrams arrive on (bound before the handover, so that the successor
/// can forward at once).
pub(crate) fn forward_socket(name: &str) -> std::io::Result<UnixDatagram> {
    UnixDatagram::bind_addr(&abstract_addr(&format!("{name}-fwd"))?)
}

/// Sends `tcp` and `udp` (the old process's sockets) to the successor on `stream`: a line
/// `tcp=<n> udp=<m>` and the descriptors, TCP first.
pub(crate) fn send(stream: &mut UnixStream, tcp: &[RawFd], udp: &[RawFd]) -> std::io::Result<()> {
    let header = format!("tcp={} udp={}\n", tcp.len(), udp.len());
    let fds: Vec<RawFd> = tcp.iter().chain(udp).copied().collect();
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(stream.as_raw_fd(), &[IoSlice::new(header.as_bytes())], &cmsg, MsgFlags::empty(), None)?;
    // The successor confirms, so the old process stops serving only once the sockets arrived.
    let mut ack = [0u8; 1];
    stream.read_exact(&mut ack)
}

/// Asks the process listening on `name` for its sockets: (TCP listeners, UDP sockets).
pub(crate) fn receive(name: &str) -> std::io::Result<(Vec<OwnedFd>, Vec<OwnedFd>)> {
    let mut stream = UnixStream::connect_addr(&abstract_addr(name)?)?;
    let mut buf = [0u8; 64];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = c {
                // SAFETY: the kernel installed these descriptors for this process just now.
                fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        (msg.bytes, fds)
    };
    let bad =
        |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("handover from {name}: {what}"));
    let header = std::str::from_utf8(&buf[..len]).map_err(|_| bad("header is not text".into()))?.trim_end();
    let count = |key: &str| -> Option<usize> {
        header.split(' ').find_map(|f| f.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    };
    let (Some(tcp), Some(udp)) = (count("tcp"), count("udp")) else {
        return Err(bad(format!("header {header:?}")));
    };
    if fds.len() != tcp + udp {
        return Err(bad(format!("{} descriptors for tcp={tcp} udp={udp}", fds.len())));
    }
    stream.write_all(b"k")?;
    let mut fds = fds;
    let udp_fds = fds.split_off(tcp);
    Ok((fds, udp_fds))
}

/// A forwarded datagram, as sent to `<name>-fwd`.
pub(crate) fn encode_forward(peer: SocketAddr, datagram: &[u8]) -> Vec<u8> {
    let mut out = format!("{peer}\n").into_bytes();
    out.extend_from_slice(datagram);
    out
}

/// The client's address and the datagram of a forwarded message.
pub(crate) fn decode_forward(message: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let newline = message.iter().position(|b| *b == b'\n')?;
    let peer = std::str::from_utf8(&message[..newline]).ok()?.parse().ok()?;
    Some((peer, &message[newline + 1..]))
}

/// The address forwarded datagrams go to for a predecessor listening on `name`.
pub(crate) fn forward_addr(name: &str) -> std::io::Result<UnixAddr> {
    abstract_addr(&format!("{name}-fwd"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_messages_round_trip() {
        let peer: SocketAddr = "[2001:db8::1]:40000".parse().unwrap();
        let message = encode_forward(peer, b"\x40abc\ndef");
        assert_eq!(decode_forward(&message), Some((peer, &b"\x40abc\ndef"[..])));
        assert_eq!(decode_forward(b"no newline"), None);
        assert_eq!(decode_forward(b"not an address\nx"), None);
    }

    #[test]
    fn sockets_cross_to_the_successor() {
        let name = format!("zrlab-handover-test-{}", std::process::id());
        let listener = listen(&name).unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addrs = (tcp.local_addr().unwrap(), udp.local_addr().unwrap());
        let sender = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            send(&mut stream, &[tcp.as_raw_fd()], &[udp.as_raw_fd()]).unwrap();
        });
        let (tcp, udp) = receive(&name).unwrap();
        sender.join().unwrap();
        let tcp = std::net::TcpListener::from(tcp.into_iter().next().unwrap());
        let udp = std::net::UdpSocket::from(udp.into_iter().next().unwrap());
        assert_eq!((tcp.local_addr().unwrap(), udp.local_addr().unwrap()), addrs, "the same sockets");
    }
}
