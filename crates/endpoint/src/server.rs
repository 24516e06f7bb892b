//! The accept loop and the thin IO task that drives one [`Session`] per connection.
//!
//! Every accepted socket gets `TCP_NODELAY` (each registration is a few small packets
//! each way; Nagle's algorithm would hold each one ~40 ms) and the listener a large
//! backlog, so that a burst of devices is queued by the kernel rather than refused.
//! A connection task reads into one buffer, decodes with the MQTT codec (which refuses
//! a packet larger than the maximum from its fixed header, before buffering it), feeds
//! the session, and carries out its actions: product lookups and registrations go to
//! the [`Registrar`]; packets are encoded into one output buffer and written at once.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use dynreg_registrar::{Device, Registrar, Store};
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

use dynreg_proto::{RegisterReply, RegisterRequest, Status};

use crate::limit::RateLimiter;
use crate::session::{Action, CloseReason, Session, SessionConfig};
use crate::wire::{self, Advertised, Out, Version};

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
    /// New connections per second allowed from one source IP (bursts of as many);
    /// more get their CONNECT refused with "quota exceeded". 0: no limit.
    pub connections_per_ip_per_sec: u32,
    /// Registrations per second allowed for one pid (bursts of as many); more are
    /// answered with status 4290 (rate limited). 0: no limit.
    pub registrations_per_pid_per_sec: u32,
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
            connections_per_ip_per_sec: 200,
            registrations_per_pid_per_sec: 0,
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<S: Store> Endpoint<S> {
    /// Binds the listener (inside a tokio runtime).
    pub fn bind(config: EndpointConfig, registrar: Arc<Registrar<S>>) -> io::Result<Self> {
        let listener = listen(config.listen, config.backlog)?;
        let tls = match &config.tls {
            Some(t) => Some((listen(t.listen, config.backlog)?, t.acceptor.clone())),
            None => None,
        };
        Ok(Self {
            listener,
            tls,
            registrar,
            config: Arc::new(config),
        })
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
        let (stop_tx, stop_rx) = watch::channel(false);
        let (abort_tx, abort_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            registrar: self.registrar.clone(),
            per_pid: RateLimiter::new(self.config.registrations_per_pid_per_sec, 100_000),
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
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
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
                    None => conn.serve(stream, limits).await,
                    // Boxed: the TLS state is large, and unboxed it would make every
                    // plain connection's task as large as a TLS one.
                    Some(acceptor) => {
                        Box::pin(async {
                            // The handshake counts against the connect timeout.
                            let timeout = shared.config.connect_timeout;
                            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                                Ok(Ok(tls_stream)) => conn.serve(tls_stream, limits).await,
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
    per_pid: RateLimiter<String>,
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

    /// Serves one connection (plain TCP or TLS) to its end.
    async fn serve<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: IO,
        (over_quota, over_capacity): (bool, bool),
    ) {
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
            // Everything complete in the buffer, in order.
            while !closed {
                match io.codec.decode(&mut buf) {
                    Ok(Some((packet, _))) => {
                        let actions = io.session.on_packet(self.now_ms(), wire::inbound(packet));
                        io.queue.extend(actions);
                        closed = self.drive(&mut io).await;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let code = match e {
                            DecodeError::MaxSizeExceeded { .. } => {
                                wire::DISCONNECT_PACKET_TOO_LARGE
                            }
                            _ => wire::DISCONNECT_MALFORMED,
                        };
                        io.queue.push_back(Action::Send(Out::Disconnect(code)));
                        self.drive(&mut io).await;
                        info!(%peer, error = %e, "closed: bad packet");
                        closed = true;
                    }
                }
            }
            if !io.out.is_empty() {
                if stream.write_all(&io.out).await.is_err() {
                    return;
                }
                io.out.clear();
            }
            if closed {
                break;
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
        if !io.out.is_empty() {
            let _ = stream.write_all(&io.out).await;
        }
        // TLS: send close_notify. Plain TCP needs no shutdown call: closing the socket
        // sends the FIN (one system call fewer per registration).
        if self.tls {
            let _ = stream.shutdown().await;
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
                        if let Err(e) = io.codec.encode(p, &mut io.out) {
                            warn!(%peer, error = %e, "cannot encode a packet");
                        }
                    }
                }
                Action::LookupProduct(pid) => {
                    let product = registrar.store().product(&pid);
                    if let Err(e) = &product {
                        warn!(%peer, %pid, error = %e, "product lookup failed");
                    }
                    let found = product.as_ref().map(|p| p.as_deref()).map_err(|_| ());
                    let actions = io.session.on_product(unix_now(), found);
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
                        CloseReason::Refused(_)
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

    /// Registers the connection's device with `payload` (subject to the per-pid rate
    /// limit) and logs the outcome; `None` when the request asked for no reply, or when
    /// the shutdown grace ran out first.
    async fn register(&self, session: &Session, payload: &[u8]) -> Option<RegisterReply> {
        let id = session.identity()?;
        let peer = self.peer;
        let now = unix_now();
        let device = Device {
            pid: &id.pid,
            unique: &id.unique,
        };
        let reply = if self.shared.per_pid.allow(&id.pid, self.now_ms()) {
            let mut abort = self.shared.abort.clone();
            tokio::select! {
                biased;
                reply = self.shared.registrar.register_payload(now, device, payload) => reply,
                _ = abort.wait_for(|aborting| *aborting) => {
                    warn!(%peer, pid = %id.pid, unique = %id.unique, "registration abandoned: shutdown grace over");
                    return None;
                }
            }
        } else {
            rate_limited(now, payload)
        };
        let (pid, unique) = (id.pid.as_str(), id.unique.as_str());
        match &reply {
            Some(r) if r.res == 0 => {
                let uuid = r.data.uuid.as_deref().unwrap_or("");
                info!(%peer, pid, unique, uuid, "registered");
            }
            Some(r) => info!(%peer, pid, unique, res = r.res, msg = %r.msg, "registration refused"),
            None => info!(%peer, pid, unique, "registered (ack=0, no reply)"),
        }
        reply
    }
}

/// The reply to a request refused by the per-pid rate limit (none when it asked for
/// none), echoing its id and code.
fn rate_limited(now: u64, payload: &[u8]) -> Option<RegisterReply> {
    let (id, code, wants) = match RegisterRequest::from_json(payload) {
        Ok(r) => {
            let wants = r.wants_reply();
            (r.id, r.code, wants)
        }
        Err(e) => (e.id, e.code, true),
    };
    wants.then(|| RegisterReply::failure(id, code, now, Status::RateLimited))
}
