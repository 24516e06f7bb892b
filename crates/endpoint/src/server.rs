//! The accept loop and the thin IO task that drives one [`Session`] per connection.
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
//!   not yet authenticated; more are closed at accept. If the process runs out of file
//!   descriptors anyway, a reserve descriptor is freed to accept and close the waiting
//!   connection, rather than leaving the listener spinning on `EMFILE`.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use dynreg_registrar::{AuthError, Connect, Device, Registrar, Store};
use rmqtt_codec::error::DecodeError;
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{MqttCodec, v3, v5};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::codec::{Decoder, Encoder};
use tracing::{debug, info, warn};

use dynreg_proto::RegisterReply;

use crate::limit::{PendingPerIp, PendingSlot};
use crate::session::{Action, CloseReason, RefusalCause, Session, SessionConfig};
use crate::wire::{self, Advertised, Out, Version};
use dynreg_registrar::rate::RateLimiter;

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
    /// Connections per source IP that have not yet authenticated; more are closed at
    /// accept. 0: no limit.
    pub max_pending_per_ip: u32,
    /// New connections per second allowed from one source IP (bursts of as many);
    /// more get their CONNECT refused with "quota exceeded". 0: no limit (the
    /// default: the failed-authentication ban protects instead).
    pub connections_per_ip_per_sec: u32,
    /// MQTT over TLS, when configured.
    pub tls: Option<TlsSettings>,
}

/// The TLS listener: its address and the server certificate.
#[derive(Clone)]
pub struct TlsSettings {
    /// The TCP address for MQTT over TLS.
    pub listen: SocketAddr,
    /// The acceptor holding the certificate chain and key.
    pub acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Loads a PEM certificate chain and private key (TLS 1.2 and 1.3, no client
    /// certificates). The error names the file and what is wrong with it.
    pub fn load(listen: SocketAddr, cert: &Path, key: &Path) -> Result<Self, String> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("TLS certificate {}: {e}", cert.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "TLS certificate {}: no certificate in the file",
                cert.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("TLS key {}: {e}", key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
            .map_err(|e| {
                format!("TLS certificate and key do not make a server configuration: {e}")
            })?;
        Ok(Self {
            listen,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
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
            max_pending_per_ip: 256,
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

/// Logs a warning at most once per `every` ms, counting the events in between.
#[derive(Debug, Default)]
struct Throttle {
    last_ms: AtomicU64,
    since: AtomicU64,
}

impl Throttle {
    /// Counts an event at `now_ms`; `Some(events since the last line)` when it is time
    /// for a line.
    fn hit(&self, now_ms: u64, every: u64) -> Option<u64> {
        let n = self.since.fetch_add(1, Ordering::Relaxed) + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        if (last == 0 || now_ms >= last + every)
            && self
                .last_ms
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.since.store(0, Ordering::Relaxed);
            return Some(n);
        }
        None
    }
}

/// Whether an accept error means the process or the system is out of descriptors.
fn out_of_files(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24)) // ENFILE, EMFILE
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The endpoint's listening sockets, bound before anything else is opened (so that a
/// port in use is reported before a store is created).
#[derive(Debug)]
pub struct Listeners {
    plain: TcpListener,
    tls: Option<TcpListener>,
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
        let max = u32::try_from(self.config.max_connections).unwrap_or(u32::MAX >> 3);
        let permits = Arc::new(Semaphore::new(max as usize));
        let refusals = Arc::new(Semaphore::new(REFUSAL_SLOTS as usize));
        let per_ip = RateLimiter::new(self.config.connections_per_ip_per_sec, 100_000);
        let pending = PendingPerIp::new(self.config.max_pending_per_ip);
        let pending_refused = Throttle::default();
        let fd_exhausted = Throttle::default();
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
                    if let Some(n) = fd_exhausted.hit(elapsed_ms(shared.epoch), 5_000) {
                        warn!(error = %e, times = n, "accept failed: out of file descriptors; shedding waiting connections (lower max_connections or raise the open-file limit)");
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
                if let Some(n) = pending_refused.hit(elapsed_ms(shared.epoch), 5_000) {
                    warn!(%peer, limit = self.config.max_pending_per_ip, closed = n, "connections closed at accept: too many from this address not yet authenticated");
                }
                drop(stream);
                continue;
            };
            // Past the connection limit, a few more connections are taken just to be
            // refused clearly at CONNECT (server unavailable); past those, closed.
            let (permit, over_capacity) = match permits.clone().try_acquire_owned() {
                Ok(p) => (p, false),
                Err(_) => match refusals.clone().try_acquire_owned() {
                    Ok(p) => (p, true),
                    Err(_) => {
                        warn!(%peer, max = self.config.max_connections, "connection dropped: max connections reached");
                        drop(stream);
                        continue;
                    }
                },
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
                        Box::pin(async {
                            // The handshake counts against the connect timeout.
                            let timeout = shared.config.connect_timeout;
                            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                                Ok(Ok(tls_stream)) => conn.serve(tls_stream, limits, slot).await,
                                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                                Err(_) => debug!(%peer, "TLS handshake timed out"),
                            }
                        })
                        .await;
                    }
                }
                drop(permit);
            });
        }
        drop(self.listener);
        drop(self.tls);
        // Connections still open: permits not yet given back.
        let open = || {
            (max as usize - permits.available_permits())
                + (REFUSAL_SLOTS as usize - refusals.available_permits())
        };
        let all_closed = async || {
            let _all = permits.acquire_many(max).await;
            let _all_refusals = refusals.acquire_many(REFUSAL_SLOTS).await;
        };
        info!(
            open = open(),
            "shutting down: no longer accepting; closing connections"
        );
        let _ = stop_tx.send(true);
        if tokio::time::timeout(self.config.shutdown_grace, all_closed())
            .await
            .is_err()
        {
            warn!(
                left = open(),
                "shutdown grace over: abandoning the registrations still in flight"
            );
            let _ = abort_tx.send(true);
            if tokio::time::timeout(Duration::from_secs(1), all_closed())
                .await
                .is_err()
            {
                warn!(
                    "connections still open after the shutdown grace; leaving them to the runtime"
                );
            }
        }
        Ok(())
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

fn elapsed_ms(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// What every connection task shares.
struct Shared<S> {
    registrar: Arc<Registrar<S>>,
    config: Arc<EndpointConfig>,
    /// Times are kept in ms since this instant.
    epoch: Instant,
    /// Becomes true on shutdown: close between registrations.
    stop: watch::Receiver<bool>,
    /// Becomes true when the shutdown grace is over: abandon in-flight registrations.
    abort: watch::Receiver<bool>,
}

/// One connection: its peer, for the log lines, and the shared state.
///
/// There is no tracing span per connection: creating one, recording the pid and unique
/// in it, and entering and leaving it on every poll were a visible part of the
/// per-registration CPU, so each log line names the peer (and pid and unique once
/// known) itself.
struct Conn<'a, S> {
    shared: &'a Shared<S>,
    peer: SocketAddr,
    tls: bool,
}

/// How writing out a connection's output ended.
enum Flushed {
    /// Everything was written.
    Done,
    /// The connection must close now (the write failed or stalled, a timer closed the
    /// session, or the server is shutting down).
    Close,
}

/// What one connection task keeps between packets.
struct Io {
    session: Session,
    codec: MqttCodec,
    out: BytesMut,
    queue: VecDeque<Action>,
    adv: Advertised,
}

impl<S: Store> Conn<'_, S> {
    fn now_ms(&self) -> u64 {
        elapsed_ms(self.shared.epoch)
    }

    /// Serves one connection (plain TCP or TLS) to its end. `slot` is its place among
    /// its address's unauthenticated connections, given back once it authenticates.
    async fn serve<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: IO,
        (over_quota, over_capacity): (bool, bool),
        slot: PendingSlot,
    ) {
        let mut slot = Some(slot);
        let config = &*self.shared.config;
        let epoch = self.shared.epoch;
        let peer = self.peer;
        let accepted = self.now_ms();
        let mut buf = BytesMut::with_capacity(512);
        // One timer and one shutdown watch for the connection's whole life, re-armed
        // rather than re-created per packet (each new one is a timer-wheel insertion
        // and a waiter-list registration, each behind a lock).
        let timer = tokio::time::sleep(config.connect_timeout);
        tokio::pin!(timer);
        let mut stop_rx = self.shared.stop.clone();
        let stop = async move {
            let _ = stop_rx.wait_for(|stopping| *stopping).await;
        };
        tokio::pin!(stop);

        // The protocol level in CONNECT decides the codec.
        let version = loop {
            match VersionCodec.decode(&mut buf) {
                Ok(Some(ProtocolVersion::MQTT3)) => break Version::V3,
                Ok(Some(ProtocolVersion::MQTT5)) => break Version::V5,
                Ok(None) => {}
                Err(e) => {
                    debug!(%peer, error = %e, "closed: not an MQTT CONNECT");
                    return;
                }
            }
            tokio::select! {
                r = stream.read_buf(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                () = &mut timer => {
                    info!(%peer, "closed: {}", CloseReason::ConnectTimeout);
                    return;
                }
                () = &mut stop => return,
            }
        };
        let max = config.max_packet_size;
        let session_config = SessionConfig {
            connect_timeout_ms: u64::try_from(config.connect_timeout.as_millis())
                .unwrap_or(u64::MAX),
            idle_timeout_ms: u64::try_from(config.idle_timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let mut session = Session::new(accepted, version, session_config);
        if over_capacity {
            session = session.over_capacity();
        } else if over_quota {
            session = session.over_quota();
        }
        let mut io = Io {
            session,
            codec: match version {
                Version::V3 => MqttCodec::V3(v3::Codec::new(max)),
                Version::V5 => MqttCodec::V5(v5::Codec::new(max, 0)),
            },
            out: BytesMut::with_capacity(256),
            queue: VecDeque::new(),
            adv: Advertised {
                receive_max: config.receive_max,
                max_packet_size: max,
            },
        };
        let mut closed = false;
        let mut armed = None;

        loop {
            // Everything complete in the buffer, in order, while the output is small.
            let mut saturated = false;
            while !closed {
                if io.out.len() >= OUT_HIGH_WATER {
                    saturated = true;
                    break;
                }
                match io.codec.decode(&mut buf) {
                    Ok(Some((packet, _))) => {
                        let actions = io.session.on_packet(self.now_ms(), wire::inbound(packet));
                        io.queue.extend(actions);
                        closed = self.drive(&mut io).await;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let too_large = matches!(e, DecodeError::MaxSizeExceeded { .. });
                        io.queue.extend(io.session.on_decode_error(too_large));
                        self.drive(&mut io).await;
                        info!(%peer, error = %e, "closed: bad packet");
                        closed = true;
                    }
                }
            }
            if slot.is_some() && io.session.identity().is_some() {
                slot = None;
            }
            if !io.out.is_empty() {
                let flushed = self
                    .flush(
                        &mut stream,
                        &mut io,
                        timer.as_mut(),
                        &mut armed,
                        stop.as_mut(),
                    )
                    .await;
                if let Flushed::Close = flushed {
                    return;
                }
            }
            if closed {
                break;
            }
            if saturated {
                // Decode the rest now that the output is written.
                continue;
            }
            let deadline = io.session.deadline();
            if deadline != armed {
                armed = deadline;
                // No deadline: far in the future (a year), rather than a second timer.
                let ms = deadline.unwrap_or(self.now_ms() + 365 * 24 * 3600 * 1000);
                timer.as_mut().reset(tokio::time::Instant::from_std(
                    epoch + Duration::from_millis(ms),
                ));
            }
            tokio::select! {
                r = stream.read_buf(&mut buf) => match r {
                    Ok(0) => { debug!(%peer, "closed by the client"); break; }
                    Err(e) => { debug!(%peer, error = %e, "read failed"); break; }
                    Ok(_) => {}
                },
                () = &mut timer => {
                    armed = None;
                    let actions = io.session.on_tick(self.now_ms());
                    io.queue.extend(actions);
                    closed = self.drive(&mut io).await;
                }
                () = &mut stop => {
                    // Shutting down between registrations: say so (MQTT 5) and close.
                    io.queue.push_back(Action::Send(Out::Disconnect(wire::DISCONNECT_SHUTTING_DOWN)));
                    self.drive(&mut io).await;
                    closed = true;
                }
            }
        }
        // The last packets (a DISCONNECT, a refusing CONNACK), if the client reads them
        // soon; then TLS close_notify. Plain TCP needs no shutdown call: closing the
        // socket sends the FIN (one system call fewer per registration).
        let tls = self.tls;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            if !io.out.is_empty() {
                stream.write_all(&io.out).await?;
            }
            if tls {
                stream.shutdown().await?;
            }
            io::Result::Ok(())
        })
        .await;
    }

    /// Writes out the connection's output. Most writes complete at once; one that has
    /// to wait still lets the session's timers and shutdown close the connection, and
    /// gives up when no byte is written for the write timeout.
    async fn flush<IO: AsyncWrite + Unpin>(
        &self,
        stream: &mut IO,
        io: &mut Io,
        mut timer: Pin<&mut tokio::time::Sleep>,
        armed: &mut Option<u64>,
        mut stop: Pin<&mut impl Future<Output = ()>>,
    ) -> Flushed {
        // Fast path: write while the socket takes it, without arming anything.
        loop {
            let r = if io.out.is_empty() {
                std::future::poll_fn(|cx| {
                    Poll::Ready(Pin::new(&mut *stream).poll_flush(cx).map_ok(|()| 0))
                })
                .await
            } else {
                std::future::poll_fn(|cx| {
                    Poll::Ready(Pin::new(&mut *stream).poll_write(cx, &io.out))
                })
                .await
            };
            match r {
                Poll::Ready(Ok(0)) if io.out.is_empty() => return Flushed::Done,
                Poll::Ready(Ok(0) | Err(_)) => return Flushed::Close,
                Poll::Ready(Ok(n)) => io.out.advance(n),
                Poll::Pending => break,
            }
        }
        // The client is not reading (or the network is slow). The timer is re-armed
        // here; the caller arms it again afterwards.
        *armed = None;
        let peer = self.peer;
        let epoch = self.shared.epoch;
        let write_timeout = self.shared.config.write_timeout;
        let mut stalled_at =
            self.now_ms() + u64::try_from(write_timeout.as_millis()).unwrap_or(u64::MAX);
        loop {
            let due = io
                .session
                .deadline()
                .map_or(stalled_at, |d| d.min(stalled_at));
            timer.as_mut().reset(tokio::time::Instant::from_std(
                epoch + Duration::from_millis(due),
            ));
            let written = tokio::select! {
                r = async {
                    if io.out.is_empty() {
                        stream.flush().await.map(|()| 0)
                    } else {
                        stream.write(&io.out).await
                    }
                } => r,
                () = &mut timer => {
                    let now = self.now_ms();
                    if now >= stalled_at {
                        info!(%peer, pending_bytes = io.out.len(), "closed: no write progress for {write_timeout:?} (the client does not read)");
                        return Flushed::Close;
                    }
                    let actions = io.session.on_tick(now);
                    io.queue.extend(actions);
                    if self.drive(io).await {
                        return Flushed::Close;
                    }
                    continue;
                }
                () = &mut stop => return Flushed::Close,
            };
            match written {
                Ok(0) if io.out.is_empty() => return Flushed::Done,
                Ok(0) | Err(_) => return Flushed::Close,
                Ok(n) => {
                    io.out.advance(n);
                    stalled_at = self.now_ms()
                        + u64::try_from(write_timeout.as_millis()).unwrap_or(u64::MAX);
                }
            }
        }
    }

    /// Carries out the session's queued actions; returns whether the session closed.
    async fn drive(&self, io: &mut Io) -> bool {
        let peer = self.peer;
        let registrar = &*self.shared.registrar;
        let mut closed = false;
        while let Some(action) = io.queue.pop_front() {
            match action {
                Action::Send(packet) => {
                    if let Some(p) = wire::outbound(packet, io.session.version(), io.adv) {
                        let before = io.out.len();
                        if let Err(e) = io.codec.encode(p, &mut io.out) {
                            warn!(%peer, error = %e, "cannot encode a packet");
                        }
                        // MQTT-3.1.2-24: never send a packet larger than the client's
                        // Maximum Packet Size; drop it and say so.
                        let size = io.out.len() - before;
                        if let Some(max) = io.session.client_max_packet_size() {
                            if size > max as usize {
                                io.out.truncate(before);
                                warn!(%peer, size, max, "packet not sent: larger than the client's Maximum Packet Size");
                            }
                        }
                    }
                }
                Action::Authenticate {
                    client_id,
                    username,
                    password,
                } => {
                    let result = registrar.authenticate(
                        unix_now(),
                        Connect {
                            client_id: &client_id,
                            username: username.as_deref(),
                            password: password.as_deref(),
                            peer: Some(peer.ip()),
                        },
                    );
                    if let Err(AuthError::Store(e)) = &result {
                        warn!(%peer, error = %e, "CONNECT could not be checked: storage unavailable");
                    }
                    let actions = io.session.on_authenticated(result);
                    io.queue.extend(actions);
                    if let Some(id) = io.session.identity() {
                        debug!(%peer, pid = %id.pid, unique = %id.unique, tls = self.tls, "connected");
                    }
                }
                Action::Register { packet_id, payload } => {
                    // Boxed: the store's future is needed once per connection, and
                    // inline it would enlarge every connection's task for its whole life.
                    let reply = Box::pin(self.register(&io.session, &payload)).await;
                    let actions = io
                        .session
                        .on_registered(packet_id, reply.map(|r| r.to_json()));
                    io.queue.extend(actions);
                }
                Action::Close(reason) => {
                    let id = io.session.identity();
                    let pid = id.map_or("", |i| i.pid.as_str());
                    let unique = id.map_or("", |i| i.unique.as_str());
                    match &reason {
                        // Logged once when the ban starts, not per connection after.
                        CloseReason::Refused(RefusalCause::Auth(AuthError::Banned)) => {
                            debug!(%peer, "closed: {reason}");
                        }
                        CloseReason::Refused(_)
                        | CloseReason::RepliesNotAcknowledged
                        | CloseReason::ForbiddenPublish(_)
                        | CloseReason::QoS2
                        | CloseReason::Protocol(_) => {
                            warn!(%peer, pid, unique, server_time = unix_now(), "closed: {reason}");
                        }
                        _ => debug!(%peer, pid, unique, "closed: {reason}"),
                    }
                    closed = true;
                }
            }
        }
        closed
    }

    /// Registers the connection's device with `payload` and logs the outcome; `None` when the request asked for no reply, or when
    /// the shutdown grace ran out first.
    async fn register(&self, session: &Session, payload: &[u8]) -> Option<RegisterReply> {
        let id = session.identity()?;
        let peer = self.peer;
        let now = unix_now();
        let device = Device {
            pid: &id.pid,
            unique: &id.unique,
        };
        let mut abort = self.shared.abort.clone();
        let handled = tokio::select! {
            biased;
            handled = self.shared.registrar.register_payload(now, device, payload) => handled,
            _ = abort.wait_for(|aborting| *aborting) => {
                warn!(%peer, pid = %id.pid, unique = %id.unique, "registration abandoned: shutdown grace over");
                return None;
            }
        };
        let (pid, unique) = (id.pid.as_str(), id.unique.as_str());
        let uuid = handled
            .reply
            .as_ref()
            .and_then(|r| r.data.uuid.as_deref())
            .unwrap_or("");
        match &handled.outcome {
            Ok(true) => info!(%peer, pid, unique, uuid, "registered"),
            // Every re-registration is logged with where it came from: a run of them from
            // one address is how a harvested product secret shows.
            Ok(false) => {
                info!(%peer, pid, unique, uuid, "re-registered: the device's triplet sent again");
            }
            Err(status) => {
                info!(%peer, pid, unique, res = status.code(), msg = status.message(), "registration refused");
            }
        }
        handled.reply
    }
}
