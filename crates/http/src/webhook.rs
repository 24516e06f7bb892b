//! Delivery of the event outbox: to the platform's webhook and, in attached mode, to
//! the broker (`dynreg-attach`'s `events` module).
//!
//! Device events are kept in the store's outbox by the transaction that makes them
//! ([`dynreg_store::Operator::set_outbox`]); [`run`] reads the oldest, sends each to
//! every destination (a [`SinkFactory`]: [`Webhook`] POSTs it as JSON), and removes
//! what all of them took:
//!
//! - **At least once.** An event leaves the outbox only after every destination took
//!   it (a 2xx, a broker's confirm), and the removal is written after the send: a
//!   crash between the two sends it again. The event's `id` (its audit line's) is the
//!   same every time, for the receiver to drop duplicates. A destination that took an
//!   event is not sent it again while another retries it (unless this process
//!   restarts meanwhile).
//! - **Per-device order.** A device's events are sent one after another in the order
//!   they were made; an event that fails holds back that device's later events (only
//!   that device's) until it is delivered. Devices are spread over
//!   [`PARTITIONS`] connections per destination, each sending in order.
//! - **Retries** with exponential backoff per device, from 100 ms doubling to
//!   [`MAX_BACKOFF`], for as long as it takes. When the destinations
//!   answer again, devices that failed meanwhile are tried within a second.
//! - **One deliverer per store**: instances sharing a database take a lease
//!   ([`dynreg_store::Operator::outbox_lease`]); the others stand by.
//! - **Signed** (the webhook): `X-Dynreg-Signature: sha256=<hex HMAC-SHA256 of the raw
//!   body keyed by the webhook secret>`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dynreg_registrar::events::{Event, SendFuture, Sink, SinkError, SinkFactory};
use dynreg_registrar::metrics::SinkLabel;
use dynreg_store::OutboxEvent;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::api::Ops;
use crate::unix_now;

/// Connections to the webhook, each sending its share of the devices in order.
pub const PARTITIONS: usize = 8;
/// Events read from the outbox at once.
const BATCH: usize = 512;
/// How long a lease lasts; it is renewed when a third of it is left.
const LEASE_SECS: u64 = 15;
/// The pause when the outbox is empty.
const IDLE: Duration = Duration::from_millis(200);
/// The longest pause between two tries of one device's event: a destination that
/// comes back is found within this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where and how events are delivered.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The webhook.
    pub url: WebhookUrl,
    /// The HMAC key of the signature.
    pub secret: Arc<[u8]>,
    /// How long one POST may take.
    pub timeout: Duration,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl WebhookConfig {
    /// A configuration with the default timeout (10 s).
    pub fn new(url: WebhookUrl, secret: &[u8]) -> Self {
        Self {
            url,
            secret: Arc::from(secret),
            timeout: Duration::from_secs(10),
        }
    }
}

/// A webhook address: `http://` or `https://` (the system's roots), host, port, path.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The URL without its query (which may carry a credential).
impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        let path = self.path.split('?').next().unwrap_or("/");
        write!(f, "{scheme}://{}:{}{path}", self.host, self.port)
    }
}

impl std::str::FromStr for WebhookUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("\"{text}\" is not a webhook URL: {why}");
        let (tls, rest) = if let Some(r) = text.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = text.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("use http:// or https://"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(bad(
                "no credentials in the URL: the webhook secret signs each request",
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))?,
            ),
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
            path,
        })
    }
}

/// The JSON body of an event; `secret` is the device's secret, when it is sent
/// ([`Delivery::include_secrets`]).
pub fn body(event: &OutboxEvent, secret: Option<&str>) -> Vec<u8> {
    let detail = serde_json::from_str::<serde_json::Value>(&event.detail).ok();
    if event.kind == "pool.low" {
        // {"pid", "free", "low_water"}
        let mut data = detail.unwrap_or_else(|| serde_json::json!({}));
        data["pid"] = serde_json::Value::String(event.pid.clone());
        return envelope(event, &data);
    }
    let mut data = serde_json::json!({
        "pid": event.pid,
        "unique": event.unique,
        "uuid": event.uuid,
        "mac": event.mac,
        "barcode": event.barcode,
    });
    // A device that moved with replacePid says where it came from.
    if let Some(key_pid) = detail.as_ref().and_then(|d| d.get("key_pid")) {
        data["key_pid"] = key_pid.clone();
    }
    if let Some(secret) = secret {
        data["secret"] = serde_json::Value::String(secret.to_owned());
    }
    envelope(event, &data)
}

/// `{"type", "id", "time", "data"}` as bytes.
fn envelope(event: &OutboxEvent, data: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": event.kind,
        "id": event.id.to_string(),
        "time": dynreg_registrar::model::rfc3339(event.at),
        "data": data,
    }))
    .unwrap_or_default()
}

/// `sha256=<hex HMAC-SHA256 of body keyed by secret>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(body);
    format!(
        "sha256={}",
        dynreg_store::admin::hex(&mac.finalize().into_bytes())
    )
}

/// The webhook as a destination of events: [`run`] keeps [`PARTITIONS`] keep-alive
/// connections to it.
pub struct Webhook {
    config: WebhookConfig,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Webhook {
    /// The webhook of `config` (TLS set up here, for `https://`).
    pub fn new(config: WebhookConfig) -> Self {
        let tls = config.url.tls.then(tls_connector);
        Self { config, tls }
    }
}

impl SinkFactory for Webhook {
    fn make(&self) -> Box<dyn Sink> {
        Box::new(Client {
            config: self.config.clone(),
            tls: self.tls.clone(),
            conn: None,
        })
    }

    fn describe(&self) -> String {
        self.config.url.to_string()
    }
}

/// One keep-alive connection to the webhook, made again when it breaks.
struct Client {
    config: WebhookConfig,
    tls: Option<tokio_rustls::TlsConnector>,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, SinkError> {
        let url = &self.config.url;
        let net = |e: std::io::Error| SinkError::unreachable(format!("{url}: {e}"));
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(net)?;
        let _ = tcp.set_nodelay(true);
        let hs = |e: hyper::Error| SinkError::unreachable(format!("{url}: {e}"));
        if let Some(tls) = &self.tls {
            let name = rustls_pki_types::ServerName::try_from(url.host.clone())
                .map_err(|e| SinkError::unreachable(format!("{url}: {e}")))?;
            let stream = tls.connect(name, tcp).await.map_err(net)?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(hs)?;
            tokio::spawn(conn);
            Ok(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(hs)?;
            tokio::spawn(conn);
            Ok(send)
        }
    }

    /// POSTs `event`; Ok on a 2xx. No connection or no answer in time is
    /// [`SinkError::unreachable`]; another status refuses this event.
    async fn post(&mut self, event: &Event) -> Result<(), SinkError> {
        let signature = signature(&self.config.secret, &event.body);
        let timeout = self.config.timeout;
        let url = self.config.url.clone();
        let net = |e: &dyn fmt::Display| SinkError::unreachable(format!("{url}: {e}"));
        let result = tokio::time::timeout(timeout, async {
            let mut send = match self.conn.take() {
                Some(c) if !c.is_closed() => c,
                _ => self.connect().await?,
            };
            send.ready().await.map_err(|e| net(&e))?;
            let request = hyper::Request::post(url.path.as_str())
                .header("host", format!("{}:{}", url.host, url.port))
                .header("content-type", "application/json")
                .header("user-agent", concat!("dynreg/", env!("CARGO_PKG_VERSION")))
                .header("x-dynreg-event-id", event.id.to_string())
                .header("x-dynreg-signature", signature)
                .body(Full::new(Bytes::from(event.body.clone())))
                .map_err(|e| net(&e))?;
            let response = send.send_request(request).await.map_err(|e| net(&e))?;
            let status = response.status();
            // Read the answer to its end, so that the connection can carry the next.
            let _ = response.into_body().collect().await;
            self.conn = Some(send);
            if status.is_success() {
                Ok(())
            } else {
                Err(SinkError::refused(format!(
                    "{url}: answered {}",
                    status.as_u16()
                )))
            }
        })
        .await;
        result.unwrap_or_else(|_| Err(net(&"no answer in time")))
    }
}

impl Sink for Client {
    fn send<'a>(&'a mut self, event: &'a Event) -> SendFuture<'a> {
        Box::pin(self.post(event))
    }

    fn describe(&self) -> String {
        self.config.url.to_string()
    }

    fn kind(&self) -> &'static str {
        "webhook"
    }
}

/// The event of `e` as sent: its id, kind, pid and [`body`].
pub fn event(e: &OutboxEvent, secret: Option<&str>) -> Event {
    Event {
        id: e.id,
        kind: e.kind.clone(),
        pid: e.pid.clone(),
        body: body(e, secret),
    }
}

/// What [`run`] delivers where.
pub struct Delivery {
    /// The destinations: the webhook, the broker.
    pub destinations: Vec<Arc<dyn SinkFactory>>,
    /// This instance's name in the outbox's lease.
    pub holder: String,
    /// Whether `device.registered` and `device.reregistered` events carry the device's
    /// secret (`data.secret`), for a platform that authenticates devices itself and
    /// has no other copy. Off by default: the events then carry no secret.
    pub include_secrets: bool,
}

/// A device's place in the delivery: its key, and when its next try may be.
#[derive(Default)]
struct Backoff {
    attempts: u32,
    not_before: Option<Instant>,
}

fn device_key(e: &OutboxEvent) -> String {
    format!("{}\n{}", e.pid, e.unique)
}

fn partition(key: &str) -> usize {
    // FNV-1a: stable, and enough to spread devices.
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    usize::try_from(h % PARTITIONS as u64).unwrap_or(0)
}

/// A partition's connections: one per destination.
type Sinks = Vec<Box<dyn Sink>>;

/// Delivers the outbox to the destinations until `stop` is cancelled.
pub async fn run(ops: Ops, delivery: Delivery, stop: CancellationToken) {
    let Delivery {
        destinations,
        holder,
        include_secrets,
    } = delivery;
    assert!(
        destinations.len() <= 64,
        "at most 64 destinations (a bit each)"
    );
    let connect = || -> Sinks { destinations.iter().map(|d| d.make()).collect() };
    let mut partitions: Vec<Option<Sinks>> = (0..PARTITIONS).map(|_| Some(connect())).collect();
    let mut backoff: HashMap<String, Backoff> = HashMap::new();
    // Events some destinations took and others not yet: a bit per destination taken.
    let mut taken: HashMap<u64, u64> = HashMap::new();
    let metrics = dynreg_registrar::metrics::metrics();
    let mut failures_logged = Instant::now() - Duration::from_secs(60);
    let to = destinations
        .iter()
        .map(|d| d.describe())
        .collect::<Vec<_>>()
        .join(", ");
    tracing::info!(to = %to, "delivering device events");
    // Until when this instance holds the lease (renewed when a third of it is left:
    // each renewal is a write).
    let mut lease_until = 0;
    while !stop.is_cancelled() {
        let now = unix_now();
        if now + LEASE_SECS / 3 >= lease_until {
            let (ops2, holder2) = (ops.clone(), holder.clone());
            let leased =
                tokio::task::spawn_blocking(move || ops2.outbox_lease(&holder2, now, LEASE_SECS))
                    .await;
            if !matches!(leased, Ok(Ok(true))) {
                lease_until = 0;
                pause(&stop, Duration::from_secs(LEASE_SECS / 3)).await;
                continue;
            }
            lease_until = now + LEASE_SECS;
        }
        let ops2 = ops.clone();
        let read = tokio::task::spawn_blocking(move || {
            let events = ops2.outbox_events(BATCH)?;
            let secrets = if include_secrets {
                secrets(&ops2, &events)?
            } else {
                HashMap::new()
            };
            Ok::<_, dynreg_store::Error>((events, secrets, ops2.outbox_backlog()?))
        })
        .await;
        let Ok(Ok((events, mut secrets, backlog))) = read else {
            pause(&stop, Duration::from_secs(1)).await;
            continue;
        };
        metrics
            .outbox_backlog
            .set(i64::try_from(backlog).unwrap_or(i64::MAX));
        if events.is_empty() {
            pause(&stop, IDLE).await;
            continue;
        }
        // Each partition's events, in order, leaving out devices that wait for a retry.
        let now = Instant::now();
        let mut shares: Vec<Vec<(Event, String, u64)>> = vec![Vec::new(); PARTITIONS];
        for e in events {
            let key = device_key(&e);
            if backoff
                .get(&key)
                .and_then(|b| b.not_before)
                .is_some_and(|t| t > now)
            {
                continue;
            }
            let bits = taken.get(&e.id).copied().unwrap_or(0);
            let secret = secrets.remove(&e.id);
            shares[partition(&key)].push((event(&e, secret.as_deref()), key, bits));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (i, share) in shares.into_iter().enumerate() {
            let Some(sinks) = partitions[i].take() else {
                continue;
            };
            tasks.spawn(async move {
                let (sinks, outcome) = deliver(sinks, share).await;
                (i, sinks, outcome)
            });
        }
        let mut done = Vec::new();
        let mut ok_devices = HashSet::new();
        let mut failed_now = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let Ok((i, sinks, outcome)) = joined else {
                continue;
            };
            partitions[i] = Some(sinks);
            for (id, key) in outcome.delivered {
                taken.remove(&id);
                done.push(id);
                ok_devices.insert(key);
            }
            taken.extend(outcome.partial);
            failed_now.extend(outcome.failed);
        }
        // A task that panicked loses its connections: make new ones.
        for p in &mut partitions {
            if p.is_none() {
                *p = Some(connect());
            }
        }
        for key in &ok_devices {
            backoff.remove(key);
        }
        // The destinations answer again: devices that failed while they did not need
        // not wait out backoffs grown meanwhile (at most a second more, from scratch).
        if !ok_devices.is_empty() {
            let soon = Instant::now() + Duration::from_secs(1);
            for b in backoff.values_mut() {
                b.attempts = 0;
                b.not_before = b.not_before.map(|t| t.min(soon));
            }
        }
        let earliest = failed_now
            .iter()
            .map(|(key, _)| {
                let b = backoff.entry(key.clone()).or_default();
                b.attempts = b.attempts.saturating_add(1);
                let wait = Duration::from_millis(100)
                    .saturating_mul(1 << b.attempts.min(20).saturating_sub(1))
                    .min(MAX_BACKOFF);
                let at = Instant::now() + wait;
                b.not_before = Some(at);
                at
            })
            .min();
        if let Some((_, first)) = failed_now.first() {
            if failures_logged.elapsed() >= Duration::from_secs(10) {
                failures_logged = Instant::now();
                tracing::warn!(
                    failed = failed_now.len(),
                    delivered = done.len(),
                    "event deliveries failed: {first}; retrying with backoff"
                );
            }
        }
        if !done.is_empty() {
            let ops2 = ops.clone();
            let removed = tokio::task::spawn_blocking(move || ops2.outbox_delivered(&done)).await;
            if !matches!(removed, Ok(Ok(()))) {
                // They stay in the outbox and are sent again: at least once.
                pause(&stop, Duration::from_secs(1)).await;
            }
        } else if let Some(at) = earliest {
            pause(
                &stop,
                at.saturating_duration_since(Instant::now()).max(IDLE),
            )
            .await;
        }
    }
}

/// What a partition's round did.
#[derive(Default)]
struct Outcome {
    /// Events every destination took, with their device.
    delivered: Vec<(u64, String)>,
    /// Events some destinations took: the bits of those that did.
    partial: Vec<(u64, u64)>,
    /// Devices whose event failed, and why.
    failed: Vec<(String, SinkError)>,
}

/// Sends a partition's events in order, each to every destination that has not taken
/// it yet (`bits`). A device whose event fails is skipped for the rest of the round;
/// a destination that cannot be reached ends the round.
async fn deliver(mut sinks: Sinks, share: Vec<(Event, String, u64)>) -> (Sinks, Outcome) {
    let metrics = dynreg_registrar::metrics::metrics();
    let mut out = Outcome::default();
    let mut failed: HashSet<String> = HashSet::new();
    'events: for (event, key, mut bits) in share {
        if failed.contains(&key) {
            continue;
        }
        for (j, sink) in sinks.iter_mut().enumerate() {
            if bits & (1 << j) != 0 {
                continue;
            }
            let label = SinkLabel { sink: sink.kind() };
            match sink.send(&event).await {
                Ok(()) => {
                    bits |= 1 << j;
                    metrics.event_deliveries.get_or_create(&label).inc();
                }
                Err(f) => {
                    metrics.event_failures.get_or_create(&label).inc();
                    let unreachable = f.unreachable;
                    if bits != 0 {
                        out.partial.push((event.id, bits));
                    }
                    failed.insert(key.clone());
                    out.failed.push((key, f));
                    if unreachable {
                        break 'events;
                    }
                    continue 'events;
                }
            }
        }
        out.delivered.push((event.id, key));
    }
    (sinks, out)
}

/// The secrets of the devices that `events` registered, by event id.
fn secrets(ops: &Ops, events: &[OutboxEvent]) -> Result<HashMap<u64, String>, dynreg_store::Error> {
    let mut out = HashMap::new();
    for e in events {
        if matches!(e.kind.as_str(), "device.registered" | "device.reregistered") {
            if let Some(t) = ops.triplet(&e.uuid)? {
                out.insert(e.id, t.secret.expose().to_owned());
            }
        }
    }
    Ok(out)
}

/// Sleeps `d`, or less when `stop` is cancelled.
async fn pause(stop: &CancellationToken, d: Duration) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = stop.cancelled() => {}
    }
}

/// TLS to the webhook, checked against the system's roots.
fn tls_connector() -> tokio_rustls::TlsConnector {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    match config {
        Ok(c) => tokio_rustls::TlsConnector::from(Arc::new(c)),
        Err(e) => panic!("the ring provider supports the default TLS versions: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u: WebhookUrl = "http://127.0.0.1:9000/hooks/dynreg?x=1".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 9000));
        assert_eq!(u.path, "/hooks/dynreg?x=1");
        assert_eq!(u.to_string(), "http://127.0.0.1:9000/hooks/dynreg");
        let u: WebhookUrl = "https://platform.example.com".parse().unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (true, 443, "/"));
        let u: WebhookUrl = "http://[::1]:8080/x".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8080));
        for bad in ["ftp://x", "http://", "http://u:p@host/", "http://h:port/"] {
            assert!(bad.parse::<WebhookUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_signature_is_the_hmac_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn bodies_carry_the_event() {
        let e = OutboxEvent {
            id: 42,
            at: 1_764_633_600,
            kind: "device.registered".into(),
            pid: "Q".into(),
            unique: "d1".into(),
            uuid: "u1".into(),
            mac: "02:00:00:00:00:01".into(),
            barcode: "B1".into(),
            detail: r#"{"key_pid":"P"}"#.into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&body(&e, None)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "device.registered", "id": "42", "time": "2025-12-02T00:00:00Z",
                "data": {"pid": "Q", "unique": "d1", "uuid": "u1", "mac": "02:00:00:00:00:01",
                         "barcode": "B1", "key_pid": "P"},
            })
        );
        assert!(partition("Q\nd1") < PARTITIONS);
        let low = OutboxEvent {
            kind: "pool.low".into(),
            unique: String::new(),
            uuid: String::new(),
            mac: String::new(),
            barcode: String::new(),
            detail: r#"{"free":9,"low_water":10}"#.into(),
            ..e
        };
        let v: serde_json::Value = serde_json::from_slice(&body(&low, None)).unwrap();
        assert_eq!(
            v["data"],
            serde_json::json!({"pid": "Q", "free": 9, "low_water": 10})
        );
        assert_eq!(v["type"], "pool.low");
    }
}
