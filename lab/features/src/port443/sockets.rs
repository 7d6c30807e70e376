//! TCP sockets with the flags the 443 suites combine, and readable errno names.

use std::{io, net::SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// Socket options of one bind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Flags {
    /// `SO_REUSEPORT`.
    pub(crate) reuseport: bool,
    /// `SO_REUSEADDR`.
    pub(crate) reuseaddr: bool,
    /// `IPV6_V6ONLY` for IPv6 sockets (`None`: the namespace's default, `bindv6only` = 0).
    pub(crate) v6only: Option<bool>,
    /// `IP_FREEBIND`: bind an address that is not (yet) configured.
    pub(crate) freebind: bool,
}

/// A TCP socket for `addr` with `flags` set, not yet bound.
pub(crate) fn tcp_socket(addr: SocketAddr, flags: Flags) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_port(flags.reuseport)?;
    socket.set_reuse_address(flags.reuseaddr)?;
    if let (SocketAddr::V6(_), Some(only)) = (addr, flags.v6only) {
        socket.set_only_v6(only)?;
    }
    if flags.freebind {
        match addr {
            SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
            SocketAddr::V6(_) => socket.set_freebind_v6(true)?,
        }
    }
    Ok(socket)
}

/// The symbolic name of an errno (`EADDRINUSE`), or the number.
pub(crate) fn errno_name(err: &io::Error) -> String {
    let name = match err.raw_os_error() {
        Some(libc::EADDRINUSE) => "EADDRINUSE",
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EPERM) => "EPERM",
        Some(libc::EMFILE) => "EMFILE",
        Some(libc::ENFILE) => "ENFILE",
        Some(n) => return format!("errno {n}"),
        None => return err.to_string(),
    };
    name.to_owned()
}
