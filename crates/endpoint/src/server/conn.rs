//! The task that drives one connection: reads and decodes packets, feeds the
//! [`Session`], carries out its actions, writes its output.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use dynreg_proto::RegisterReply;
use dynreg_proto::unix_now;
use dynreg_registrar::metrics::Metrics;
use dynreg_registrar::{AuthError, Connect, Device, Registrar, Store};
use rmqtt_codec::error::DecodeError;
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{MqttCodec, v3, v5};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::codec::{Decoder, Encoder};
use tracing::{debug, info, warn};

use super::{EndpointConfig, OUT_HIGH_WATER, elapsed_ms};
use crate::limit::PendingSlot;
use crate::session::{Action, CloseReason, RefusalCause, Session, SessionConfig};
use crate::wire::{self, Advertised, Out, Version};

/// What every connection task shares.
pub(super) struct Shared<S> {
    pub(super) registrar: Arc<Registrar<S>>,
    pub(super) config: Arc<EndpointConfig>,
    /// Times are kept in ms since this instant.
    pub(super) epoch: Instant,
    /// Becomes true on shutdown: close between registrations.
    pub(super) stop: watch::Receiver<bool>,
    /// Becomes true when the shutdown grace is over: abandon in-flight registrations.
    pub(super) abort: watch::Receiver<bool>,
}

/// One connection: its peer, for the log lines, and the shared state.
///
/// There is no tracing span per connection: creating one, recording the pid and unique
/// in it, and entering and leaving it on every poll were a visible part of the
/// per-registration CPU, so each log line names the peer (and pid and unique once
/// known) itself.
pub(super) struct Conn<'a, S> {
    pub(super) shared: &'a Shared<S>,
    pub(super) peer: SocketAddr,
    pub(super) tls: bool,
}

/// How writing out a connection's output ended.
enum Flushed {
    /// Everything was written.
    Done,
    /// The connection must close now (the write failed or stalled, a timer closed the
    /// session, or the server is shutting down).
    Close,
}

/// Counts an open connection in `dynreg_open_connections` while it lives.
struct OpenConnection<'a>(&'a Metrics);

impl<'a> OpenConnection<'a> {
    fn count(metrics: &'a Metrics) -> Self {
        metrics.open_connections.inc();
        Self(metrics)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.open_connections.dec();
    }
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
    pub(super) async fn serve<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: IO,
        (over_quota, over_capacity): (bool, bool),
        slot: PendingSlot,
    ) {
        let mut slot = Some(slot);
        let _open = OpenConnection::count(self.shared.registrar.metrics());
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
            // The cap is on connections that have not sent a CONNECT yet (PROTOCOL.md
            // section 2): the slot is freed as soon as one arrives.
            if slot.is_some() && !io.session.awaits_connect() {
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
                    // Boxed like the registration below: inline, the decision's future
                    // would enlarge every connection's task for its whole life.
                    let result = Box::pin(registrar.authenticate(
                        unix_now(),
                        Connect {
                            client_id: &client_id,
                            username: username.as_deref(),
                            password: password.as_deref(),
                            peer: Some(peer.ip()),
                        },
                    ))
                    .await;
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
        handled.log(&peer, device);
        handled.reply
    }
}
