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
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::codec::{Decoder, Encoder};
use tracing::{Instrument, debug, info, warn};

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
const REFUSAL_SLOTS: usize = 256;

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
    /// them up to the shutdown grace.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let permits = Arc::new(Semaphore::new(self.config.max_connections));
        let refusals = Arc::new(Semaphore::new(REFUSAL_SLOTS));
        let per_ip = RateLimiter::new(self.config.connections_per_ip_per_sec, 100_000);
        let limits = Arc::new(Limits {
            per_pid: RateLimiter::new(self.config.registrations_per_pid_per_sec, 100_000),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let epoch = Instant::now();
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        let tls_accept = async |listener: &Option<(TcpListener, TlsAcceptor)>| match listener {
            Some((l, acceptor)) => (l.accept().await, Some(acceptor.clone())),
            None => std::future::pending().await,
        };
        loop {
            let (accepted, tls) = tokio::select! {
                () = &mut shutdown => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
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
            let _ = stream.set_nodelay(true);
            let over_quota = !per_ip.allow(&peer.ip(), elapsed_ms(epoch));
            let limits = limits.clone();
            let registrar = self.registrar.clone();
            let config = self.config.clone();
            let stop = stop_rx.clone();
            let span = tracing::info_span!("conn", %peer, tls = tls.is_some(), pid = tracing::field::Empty, unique = tracing::field::Empty);
            tasks.spawn(
                async move {
                    let ctx = Ctx {
                        registrar: &registrar,
                        limits: &limits,
                        epoch,
                    };
                    match tls {
                        None => {
                            connection(
                                stream,
                                ctx,
                                &config,
                                stop,
                                (over_quota, over_capacity),
                                false,
                            )
                            .await;
                        }
                        Some(acceptor) => {
                            // The handshake counts against the connect timeout.
                            match tokio::time::timeout(
                                config.connect_timeout,
                                acceptor.accept(stream),
                            )
                            .await
                            {
                                Ok(Ok(tls_stream)) => {
                                    connection(
                                        tls_stream,
                                        ctx,
                                        &config,
                                        stop,
                                        (over_quota, over_capacity),
                                        true,
                                    )
                                    .await;
                                }
                                Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                                Err(_) => debug!("TLS handshake timed out"),
                            }
                        }
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
        drop(self.listener);
        drop(self.tls);
        let open = tasks.len();
        info!(
            open,
            "shutting down: no longer accepting; closing connections"
        );
        let _ = stop_tx.send(true);
        let all_closed = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.config.shutdown_grace, all_closed)
            .await
            .is_err()
        {
            warn!(
                left = tasks.len(),
                "shutdown grace over: aborting the remaining connections"
            );
            tasks.shutdown().await;
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
    socket.bind(addr)?;
    socket.listen(backlog)
}

fn elapsed_ms(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Limits shared by all connections.
struct Limits {
    per_pid: RateLimiter<String>,
}

/// What a connection task shares with the others.
struct Ctx<'a, S> {
    registrar: &'a Registrar<S>,
    limits: &'a Limits,
    epoch: Instant,
}

impl<S> Clone for Ctx<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for Ctx<'_, S> {}

/// Serves one connection (plain TCP or TLS) to its end.
async fn connection<S: Store, IO: AsyncRead + AsyncWrite + Unpin>(
    mut stream: IO,
    ctx: Ctx<'_, S>,
    config: &EndpointConfig,
    mut stop: watch::Receiver<bool>,
    (over_quota, over_capacity): (bool, bool),
    close_notify: bool,
) {
    let epoch = ctx.epoch;
    let accepted = elapsed_ms(epoch);
    let connect_deadline = tokio::time::Instant::now() + config.connect_timeout;
    let mut buf = BytesMut::with_capacity(512);

    // The protocol level in CONNECT decides the codec.
    let version = loop {
        match VersionCodec.decode(&mut buf) {
            Ok(Some(ProtocolVersion::MQTT3)) => break Version::V3,
            Ok(Some(ProtocolVersion::MQTT5)) => break Version::V5,
            Ok(None) => {}
            Err(e) => {
                debug!(error = %e, "closed: not an MQTT CONNECT");
                return;
            }
        }
        tokio::select! {
            r = stream.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            () = tokio::time::sleep_until(connect_deadline) => {
                info!("closed: {}", CloseReason::ConnectTimeout);
                return;
            }
            _ = stop.changed() => return,
        }
    };
    let max = config.max_packet_size;
    let mut codec = match version {
        Version::V3 => MqttCodec::V3(v3::Codec::new(max)),
        Version::V5 => MqttCodec::V5(v5::Codec::new(max, 0)),
    };
    let adv = Advertised {
        receive_max: config.receive_max,
        max_packet_size: max,
    };
    let session_config = SessionConfig {
        connect_timeout_ms: u64::try_from(config.connect_timeout.as_millis()).unwrap_or(u64::MAX),
        idle_timeout_ms: u64::try_from(config.idle_timeout.as_millis()).unwrap_or(u64::MAX),
    };
    let mut session = Session::new(accepted, version, session_config);
    if over_capacity {
        session = session.over_capacity();
    } else if over_quota {
        session = session.over_quota();
    }
    let mut out = BytesMut::with_capacity(256);
    let mut queue: VecDeque<Action> = VecDeque::new();
    let mut closed = false;

    loop {
        // Everything complete in the buffer, in order.
        while !closed {
            match codec.decode(&mut buf) {
                Ok(Some((packet, _))) => {
                    queue.extend(session.on_packet(elapsed_ms(epoch), wire::inbound(packet)));
                    closed = drive(&mut queue, &mut session, ctx, &mut codec, &mut out, adv).await;
                }
                Ok(None) => break,
                Err(e) => {
                    let code = match e {
                        DecodeError::MaxSizeExceeded { .. } => wire::DISCONNECT_PACKET_TOO_LARGE,
                        _ => wire::DISCONNECT_MALFORMED,
                    };
                    queue.push_back(Action::Send(Out::Disconnect(code)));
                    drive(&mut queue, &mut session, ctx, &mut codec, &mut out, adv).await;
                    info!(error = %e, "closed: bad packet");
                    closed = true;
                }
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if closed {
            break;
        }
        let deadline = session
            .deadline()
            .map(|ms| tokio::time::Instant::from_std(epoch + Duration::from_millis(ms)));
        tokio::select! {
            r = stream.read_buf(&mut buf) => match r {
                Ok(0) => { debug!("closed by the client"); break; }
                Err(e) => { debug!(error = %e, "read failed"); break; }
                Ok(_) => {}
            },
            () = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                queue.extend(session.on_tick(elapsed_ms(epoch)));
                closed = drive(&mut queue, &mut session, ctx, &mut codec, &mut out, adv).await;
            }
            _ = stop.changed() => {
                // Shutting down between registrations: say so (MQTT 5) and close.
                queue.push_back(Action::Send(Out::Disconnect(wire::DISCONNECT_SHUTTING_DOWN)));
                drive(&mut queue, &mut session, ctx, &mut codec, &mut out, adv).await;
                closed = true;
            }
        }
    }
    if !out.is_empty() {
        let _ = stream.write_all(&out).await;
    }
    // TLS: send close_notify. Plain TCP needs no shutdown call: closing the socket
    // sends the FIN (one system call fewer per registration).
    if close_notify {
        let _ = stream.shutdown().await;
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

/// Carries out the session's actions; returns whether the session closed.
async fn drive<S: Store>(
    queue: &mut VecDeque<Action>,
    session: &mut Session,
    ctx: Ctx<'_, S>,
    codec: &mut MqttCodec,
    out: &mut BytesMut,
    adv: Advertised,
) -> bool {
    let mut closed = false;
    while let Some(action) = queue.pop_front() {
        match action {
            Action::Send(packet) => {
                if let Some(p) = wire::outbound(packet, session.version(), adv) {
                    if let Err(e) = codec.encode(p, out) {
                        warn!(error = %e, "cannot encode a packet");
                    }
                }
            }
            Action::LookupProduct(pid) => {
                let product = ctx.registrar.store().product(&pid);
                if let Err(e) = &product {
                    warn!(%pid, error = %e, "product lookup failed");
                }
                let found = product.as_ref().map(|p| p.as_deref()).map_err(|_| ());
                queue.extend(session.on_product(unix_now(), found));
                if let Some(id) = session.identity() {
                    let span = tracing::Span::current();
                    span.record("pid", id.pid.as_str());
                    span.record("unique", id.unique.as_str());
                    debug!("connected");
                }
            }
            Action::Register { packet_id, payload } => {
                let Some(id) = session.identity().cloned() else {
                    continue;
                };
                let now = unix_now();
                let device = Device {
                    pid: &id.pid,
                    unique: &id.unique,
                };
                let reply = if ctx.limits.per_pid.allow(&id.pid, elapsed_ms(ctx.epoch)) {
                    ctx.registrar.register_payload(now, device, &payload).await
                } else {
                    rate_limited(now, &payload)
                };
                match &reply {
                    Some(r) if r.res == 0 => {
                        info!(uuid = r.data.uuid.as_deref().unwrap_or(""), "registered");
                    }
                    Some(r) => info!(res = r.res, msg = %r.msg, "registration refused"),
                    None => info!("registered (ack=0, no reply)"),
                }
                queue.extend(session.on_registered(packet_id, reply.map(|r| r.to_json())));
            }
            Action::Close(reason) => {
                match &reason {
                    CloseReason::Refused(_)
                    | CloseReason::ForbiddenPublish(_)
                    | CloseReason::QoS2
                    | CloseReason::Protocol(_) => {
                        warn!(server_time = unix_now(), "closed: {reason}");
                    }
                    _ => debug!("closed: {reason}"),
                }
                closed = true;
            }
        }
    }
    closed
}
