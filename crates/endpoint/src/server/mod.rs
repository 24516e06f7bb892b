//! The accept loop and the thin IO task that drives one [`Session`](crate::session::Session) per connection.
//!
//! By job: this module holds the configuration and the accept loop; `listen` binds the
//! sockets, `tls` loads the certificate and runs the handshake, `conn` drives one
//! connection, and `shutdown` counts open connections and drains them.
//!
//! Every accepted socket gets `TCP_NODELAY` (each registration is a few small packets
//! each way; Nagle's algorithm would hold each one ~40 ms) and the listener a large
//! backlog, so that a burst of devices is queued by the kernel rather than refused.
//! A connection task reads into one buffer, decodes with the MQTT codec (which refuses
//! a packet larger than the maximum from its fixed header, before buffering it), feeds
//! the session, and carries out its actions: CONNECT decisions and registrations go to
//! the [`Registrar`]; packets are encoded into one output buffer and written at once.
//!
//! What one client can hold is bounded:
//! - Output: no more is decoded while [`OUT_HIGH_WATER`] bytes wait to be written, and
//!   a write that makes no progress for `write_timeout` closes the connection. While a
//!   write waits, the session's timers (keepalive, idle) and shutdown still apply, so a
//!   client that never reads cannot keep its connection, nor hold up a shutdown.
//! - Descriptors: at most `max_pending_per_ip` connections per source address that have
//!   not sent their CONNECT yet; more are closed at accept. If the process runs out of file
//!   descriptors anyway, a reserve descriptor is freed to accept and close the waiting
//!   connection, rather than leaving the listener spinning on `EMFILE`.

mod conn;
mod listen;
mod shutdown;
mod tls;

pub use listen::Listeners;
pub use tls::TlsSettings;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::{Duration, Instant};

use dynreg_registrar::pace::LogThrottle;
use dynreg_registrar::rate::RateLimiter;
use dynreg_registrar::{Registrar, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::warn;

use crate::limit::PendingPerIp;
use conn::{Conn, Shared};
use shutdown::Connections;

/// How the endpoint listens and what it allows.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The TCP address to listen on.
    pub listen: SocketAddr,
    /// The listen backlog (connections the kernel queues before they are accepted).
    pub backlog: u32,
    /// The most connections open at once; more get CONNACK "server unavailable".
    pub max_connections: usize,
    /// CONNECT must arrive within this time of accept.
    pub connect_timeout: Duration,
    /// A connection that sends nothing but pings for this long is closed.
    pub idle_timeout: Duration,
    /// The largest packet accepted, in bytes (advertised in the MQTT 5 CONNACK).
    pub max_packet_size: u32,
    /// The receive maximum advertised in the MQTT 5 CONNACK.
    pub receive_max: u16,
    /// On shutdown, how long in-flight registrations may take to finish.
    pub shutdown_grace: Duration,
    /// A write to the client that makes no progress for this long closes the
    /// connection.
    pub write_timeout: Duration,
    /// Connections per source IP that have not sent their CONNECT yet; more are closed
    /// at accept. 0: no limit. The default, 1,024, is sized for a carrier NAT: a herd of
    /// 10,000 devices behind one address reconnecting within 10 s, each taking up to
    /// half a second between TCP accept and its CONNECT, keeps about 500 in that state;
    /// a client that opens silent connections holds at most 1,024 descriptors, each for
    /// `connect_timeout`. Enforced as at most a quarter of `max_connections`
    /// ([`EndpointConfig::pending_per_ip_cap`]).
    pub max_pending_per_ip: u32,
    /// New connections per second allowed from one source IP (bursts of as many);
    /// more get their CONNECT refused with "quota exceeded". 0: no limit (the
    /// default: the failed-authentication ban protects instead).
    pub connections_per_ip_per_sec: u32,
    /// MQTT over TLS, when configured.
    pub tls: Option<TlsSettings>,
}

impl EndpointConfig {
    /// The cap on one address's connections that have not sent their CONNECT yet, as
    /// enforced: `max_pending_per_ip`, but no more than a quarter of `max_connections`
    /// (and no less than 16), so that one address that opens silent connections cannot
    /// take the service's connections from the others (0 when `max_pending_per_ip` is
    /// 0: no cap).
    pub fn pending_per_ip_cap(&self) -> u32 {
        if self.max_pending_per_ip == 0 {
            return 0;
        }
        let quarter = u32::try_from(self.max_connections / 4).unwrap_or(u32::MAX);
        self.max_pending_per_ip.min(quarter.max(16))
    }
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            backlog: 4096,
            max_connections: 100_000,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_packet_size: 8 * 1024,
            receive_max: 16,
            shutdown_grace: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_pending_per_ip: 1024,
            connections_per_ip_per_sec: 0,
            tls: None,
        }
    }
}

/// The registration endpoint, bound and ready to run.
pub struct Endpoint<S> {
    listener: TcpListener,
    tls: Option<(TcpListener, TlsAcceptor)>,
    registrar: Arc<Registrar<S>>,
    config: Arc<EndpointConfig>,
}

/// Connections beyond the limit that are still taken in, to be refused at CONNECT.
const REFUSAL_SLOTS: u32 = 256;

/// File descriptors the process needs besides its connections: the refusal slots, the
/// listeners, the store's files, the log, the runtime. `max_connections` should leave
/// this many below the open-file limit.
pub const RESERVED_FILES: u64 = REFUSAL_SLOTS as u64 + 128;

/// No more packets are decoded from a connection while this many bytes wait to be
/// written to it: a client that sends without reading cannot grow its output buffer.
pub const OUT_HIGH_WATER: usize = 64 * 1024;

/// Whether an accept error means the process or the system is out of descriptors.
fn out_of_files(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24)) // ENFILE, EMFILE
}

impl<S: Store> Endpoint<S> {
    /// Binds the listeners (inside a tokio runtime) and makes the endpoint.
    pub fn bind(config: EndpointConfig, registrar: Arc<Registrar<S>>) -> io::Result<Self> {
        let listeners = Listeners::bind(&config)?;
        Ok(Self::with_listeners(listeners, config, registrar))
    }

    /// Makes the endpoint on listeners bound by [`Listeners::bind`] for `config`.
    pub fn with_listeners(
        listeners: Listeners,
        config: EndpointConfig,
        registrar: Arc<Registrar<S>>,
    ) -> Self {
        let tls = match (listeners.tls, &config.tls) {
            (Some(l), Some(t)) => Some((l, t.acceptor.clone())),
            _ => None,
        };
        Self {
            listener: listeners.plain,
            tls,
            registrar,
            config: Arc::new(config),
        }
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The TLS address actually bound, when TLS is configured.
    pub fn tls_local_addr(&self) -> Option<io::Result<SocketAddr>> {
        self.tls.as_ref().map(|(l, _)| l.local_addr())
    }

    /// Accepts connections until `shutdown` resolves; then stops accepting, asks every
    /// connection to close once its in-flight registration is answered, and waits for
    /// them up to the shutdown grace. Registrations still waiting for the store after
    /// the grace are abandoned (their connections closed without a reply).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        // Every connection task holds a permit until it ends, so the permits double as
        // the count of open connections: shutdown waits until it has them all back
        // (no per-connection bookkeeping, no wakeup of this loop when one ends).
        let connections = Connections::new(self.config.max_connections, REFUSAL_SLOTS);
        let per_ip = RateLimiter::new(self.config.connections_per_ip_per_sec, 100_000);
        let pending = PendingPerIp::new(self.config.pending_per_ip_cap());
        let pending_refused = LogThrottle::new(Duration::from_secs(5));
        let fd_exhausted = LogThrottle::new(Duration::from_secs(5));
        // Freed when accept fails for want of descriptors, to accept and close the
        // connection waiting in the backlog; taken again afterwards.
        let mut reserve = std::fs::File::open("/dev/null").ok();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (abort_tx, abort_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            registrar: self.registrar.clone(),
            config: self.config.clone(),
            epoch: Instant::now(),
            stop: stop_rx,
            abort: abort_rx,
        });
        tokio::pin!(shutdown);
        let tls_accept = async |listener: &Option<(TcpListener, TlsAcceptor)>| match listener {
            Some((l, acceptor)) => (l.accept().await, Some(acceptor.clone())),
            None => std::future::pending().await,
        };
        loop {
            let (accepted, tls) = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => (accepted, None),
                accepted = tls_accept(&self.tls) => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) if out_of_files(&e) => {
                    if let Some(n) = fd_exhausted.hit(elapsed_ms(shared.epoch)) {
                        warn!(error = %e, times = n + 1, "accept failed: out of file descriptors; shedding waiting connections (lower max_connections or raise the open-file limit)");
                    }
                    let listener = match &tls {
                        Some(_) => self.tls.as_ref().map(|(l, _)| l),
                        None => Some(&self.listener),
                    };
                    match (reserve.take(), listener) {
                        (Some(spare), Some(listener)) => {
                            drop(spare);
                            if let Ok(Ok((shed, _))) =
                                tokio::time::timeout(Duration::from_millis(10), listener.accept())
                                    .await
                            {
                                drop(shed);
                            }
                            reserve = std::fs::File::open("/dev/null").ok();
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = pending.enter(peer.ip()) else {
                if let Some(n) = pending_refused.hit(elapsed_ms(shared.epoch)) {
                    warn!(%peer, limit = self.config.pending_per_ip_cap(), closed = n + 1, "connections closed at accept: too many from this address that have not sent their CONNECT yet");
                }
                drop(stream);
                continue;
            };
            // Past the connection limit, a few more connections are taken just to be
            // refused clearly at CONNECT (server unavailable); past those, closed.
            let Some((permit, over_capacity)) = connections.admit() else {
                warn!(%peer, max = self.config.max_connections, "connection dropped: max connections reached");
                drop(stream);
                continue;
            };
            // Linux copies TCP_NODELAY from the listening socket to every accepted one
            // (one system call fewer per connection); elsewhere, set it here.
            if cfg!(target_os = "linux") {
                debug_assert!(
                    stream.nodelay().unwrap_or(true),
                    "TCP_NODELAY not inherited"
                );
            } else {
                let _ = stream.set_nodelay(true);
            }
            let over_quota = !per_ip.allow(&peer.ip(), elapsed_ms(shared.epoch));
            let shared = shared.clone();
            let limits = (over_quota, over_capacity);
            tokio::spawn(async move {
                let conn = Conn {
                    shared: &shared,
                    peer,
                    tls: tls.is_some(),
                };
                match tls {
                    None => conn.serve(stream, limits, slot).await,
                    // Boxed: the TLS state is large, and unboxed it would make every
                    // plain connection's task as large as a TLS one.
                    Some(acceptor) => {
                        Box::pin(tls::serve(conn, &acceptor, stream, limits, slot)).await;
                    }
                }
                drop(permit);
            });
        }
        drop(self.listener);
        drop(self.tls);
        connections
            .drain(&stop_tx, &abort_tx, self.config.shutdown_grace)
            .await;
        Ok(())
    }
}

fn elapsed_ms(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}
