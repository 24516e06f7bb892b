//! Binding the listening sockets.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

use super::EndpointConfig;

/// The endpoint's listening sockets, bound before anything else is opened (so that a
/// port in use is reported before a store is created).
#[derive(Debug)]
pub struct Listeners {
    pub(super) plain: TcpListener,
    pub(super) tls: Option<TcpListener>,
}

impl Listeners {
    /// Binds `config.listen` and, with TLS, `config.tls.listen` (inside a tokio
    /// runtime). An error names the address that could not be bound.
    pub fn bind(config: &EndpointConfig) -> io::Result<Self> {
        Ok(Self {
            plain: listen(config.listen, config.backlog)?,
            tls: match &config.tls {
                Some(t) => Some(listen(t.listen, config.backlog)?),
                None => None,
            },
        })
    }
}

/// Binds a listener with the given backlog.
fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    bind_socket(addr, backlog)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

fn bind_socket(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    // Each registration is a few small packets each way; Nagle's algorithm would hold
    // each one for the peer's delayed ACK. Accepted sockets inherit this on Linux.
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
