//! # dynreg-bench: the load generator behind `dynreg bench`
//!
//! Simulated devices do the full registration cycle a real device does, waiting at each
//! step: TCP connect, CONNECT with freshly signed credentials, SUBSCRIBE to the response
//! topic, PUBLISH the request, wait for the reply (PUBACK it at QoS 1), DISCONNECT.
//! Every credential, topic and message comes from `dynreg-proto`. Each worker drives
//! its connections directly (no task or client object per device), so that the tool
//! costs little next to the server it measures; it reports its own CPU per cycle.
//!
//! [`responder`] is the other half of measuring a bare broker: it subscribes to every
//! device's request topic on an external broker (Mosquitto) and answers every request
//! with a fixed success reply, with no authentication and no storage.
//!
//! ## Layout
//! - `lib.rs`: the run ([`BenchConfig`], [`run`]), its report, and [`responder`].
//! - `mqtt.rs`: one connection's packets over raw `rmqtt-codec`, TLS through
//!   `dynreg_net::tls`.

mod mqtt;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dynreg_proto::unix_now;

use bytes::Bytes;
use dynreg_proto::credentials::{Credentials, SignMethod, sign};
use dynreg_proto::{RegisterReply, RegisterRequest, ReplyData, Topic, TopicKind};
use hdrhistogram::Histogram;

pub use crate::mqtt::TlsClient;
use crate::mqtt::{Conn, Rx};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// `host:port` of the broker or dynreg endpoint.
    pub addr: String,
    /// The product id.
    pub pid: String,
    /// The product secret.
    pub secret: String,
    /// Registrations in all.
    pub total: u64,
    /// Devices registering at once.
    pub concurrency: usize,
    /// MQTT 5 (else 3.1.1).
    pub v5: bool,
    /// QoS of the subscription and the request (0 or 1).
    pub qos: u8,
    /// The HMAC for the password.
    pub sign_method: SignMethod,
    /// The bound on one cycle.
    pub timeout: Duration,
    /// Uniques are this prefix followed by a serial number.
    pub unique_prefix: String,
    /// The second every device signs (`None`: the current second of each CONNECT, as
    /// firmware does). A fixed second is a factory line's worst case: every device of
    /// the run presents the same seed credential.
    pub sign_ts: Option<u64>,
    /// Start cycles at this many per second (open loop; latency is then measured from
    /// each cycle's scheduled start, so a slow server cannot hide its queueing). `None`:
    /// as fast as the concurrency allows.
    pub rate: Option<f64>,
    /// Stop starting new cycles after this long.
    pub duration: Option<Duration>,
    /// Connect over TLS.
    pub tls: Option<TlsClient>,
    /// When `addr` is an IPv4 loopback address, connect each simulated device from its
    /// own source address in 127.1.0.0/16 (see [`source_address`]).
    pub spread_sources: bool,
}

impl BenchConfig {
    /// The source address for the connection of cycle `serial`, if it gets its own.
    fn source(&self, serial: u64) -> Option<std::net::SocketAddr> {
        if !self.spread_sources {
            return None;
        }
        let target: std::net::SocketAddr = self.addr.parse().ok()?;
        source_address(target, serial)
    }
}

/// For a target on IPv4 loopback, a source address of its own for connection `serial`:
/// one of 65,024 addresses in 127.1.0.0/16 (every 127/8 address is local on Linux),
/// with the port left to the kernel.
///
/// Devices in the field come from many addresses. From one address, every connection
/// the load generator closes sits in TIME_WAIT for a minute and the kernel's search for
/// a free ephemeral port grows with them: a profile of `dynreg bench` put that search at
/// about a sixth of the tool's CPU after a few runs, and rising. `None` for other
/// targets (a remote server would not route replies to 127.1.x.y).
pub fn source_address(target: std::net::SocketAddr, serial: u64) -> Option<std::net::SocketAddr> {
    match target.ip() {
        std::net::IpAddr::V4(ip) if ip.is_loopback() => {
            let n = serial % (256 * 254);
            let (hi, lo) = ((n / 254) as u8, (n % 254) as u8 + 1);
            Some(std::net::SocketAddr::from(([127, 1, hi, lo], 0)))
        }
        _ => None,
    }
}

/// Why a cycle failed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// CONNECT refused with this code.
    ConnectRefused(u8),
    /// SUBSCRIBE refused.
    SubscribeRefused,
    /// The reply's `res` was not 0.
    Res(u16),
    /// No reply within the timeout.
    Timeout,
    /// Connection failed or broke.
    Transport,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct Report {
    /// Cycles that got a success reply.
    pub completed: u64,
    /// Failed cycles by cause.
    pub failed: BTreeMap<Failure, u64>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Latency of successful cycles (connect to reply), microseconds.
    pub latency_us: Histogram<u64>,
    /// This process's CPU time (user + system) per cycle, microseconds.
    pub own_cpu_us_per_cycle: f64,
    /// The first error text seen for each failure kind that has one (transport errors).
    pub first_errors: BTreeMap<Failure, String>,
}

impl Report {
    /// Completed cycles per second.
    pub fn throughput(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// This process's CPU time (user + system), from /proc (Linux); `None` elsewhere.
pub fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // Linux reports clock ticks of 1/100 s (USER_HZ is 100 on every mainstream arch).
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Device `serial` connected and subscribed to its response topic: TCP connect,
/// CONNECT with credentials signed at `ts` (keepalive `keep_alive` s), SUBSCRIBE. On
/// failure, `why` gets the text of a transport error. Returns the connection, the
/// device's unique and its response topic.
async fn connect_device(
    cfg: &BenchConfig,
    serial: u64,
    ts: u64,
    keep_alive: u16,
    why: &mut Option<String>,
) -> Result<(Conn, String, String), Failure> {
    let unique = format!("{}{serial}", cfg.unique_prefix);
    let creds = Credentials {
        pid: &cfg.pid,
        unique: &unique,
        sign_method: cfg.sign_method,
        ts,
    };
    let password = sign(
        cfg.sign_method,
        cfg.secret.as_bytes(),
        &cfg.pid,
        &unique,
        ts,
    );
    let mut t = |e: std::io::Error| {
        *why = Some(e.to_string());
        Failure::Transport
    };
    let mut c = Conn::open(&cfg.addr, cfg.source(serial), cfg.v5, cfg.tls.as_ref())
        .await
        .map_err(&mut t)?;
    c.connect_with_keepalive(
        &creds.client_id().to_string(),
        Some(&creds.username().to_string()),
        Some(password.as_bytes()),
        keep_alive,
    )
    .map_err(&mut t)?;
    c.flush().await.map_err(&mut t)?;
    match c.recv().await.map_err(&mut t)? {
        Rx::ConnAck(Ok(())) => {}
        Rx::ConnAck(Err(code)) => return Err(Failure::ConnectRefused(code)),
        _ => return Err(Failure::Transport),
    }
    let response_topic = Topic::response(&cfg.pid, &unique).to_string();
    c.subscribe(1, &response_topic, cfg.qos).map_err(&mut t)?;
    c.flush().await.map_err(&mut t)?;
    match c.recv().await.map_err(&mut t)? {
        Rx::SubAck(true) => Ok((c, unique, response_topic)),
        Rx::SubAck(false) => Err(Failure::SubscribeRefused),
        _ => Err(Failure::Transport),
    }
}

/// One device's full registration cycle.
async fn cycle(cfg: &BenchConfig, serial: u64, why: &mut Option<String>) -> Result<(), Failure> {
    let ts = cfg.sign_ts.unwrap_or_else(unix_now);
    let (mut c, unique, response_topic) = connect_device(cfg, serial, ts, 30, why).await?;
    let request_topic = Topic::request(&cfg.pid, &unique).to_string();
    let mut t = |e: std::io::Error| {
        *why = Some(e.to_string());
        Failure::Transport
    };
    let request = RegisterRequest::new(serial.to_string(), ts).to_json();
    c.publish(
        &request_topic,
        cfg.qos,
        (cfg.qos > 0).then_some(2),
        Bytes::from(request),
    )
    .map_err(&mut t)?;
    c.flush().await.map_err(&mut t)?;
    let reply = loop {
        match c.recv().await.map_err(&mut t)? {
            Rx::Publish {
                topic,
                qos,
                packet_id,
                payload,
            } if topic == response_topic => {
                if let (1, Some(id)) = (qos, packet_id) {
                    c.puback(id).map_err(&mut t)?;
                }
                break RegisterReply::from_json(&payload).map_err(|_| Failure::Transport)?;
            }
            Rx::Disconnect => return Err(Failure::Transport),
            _ => {}
        }
    };
    c.disconnect().map_err(&mut t)?;
    c.flush().await.map_err(&mut t)?;
    if reply.res == 0 {
        Ok(())
    } else {
        Err(Failure::Res(reply.res))
    }
}

/// Runs the load; `progress` is called with the number of cycles finished so far.
pub async fn run(cfg: BenchConfig, progress: Arc<dyn Fn(u64) + Send + Sync>) -> Report {
    let cfg = Arc::new(cfg);
    let next = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let cpu_before = process_cpu_time();
    let started = Instant::now();
    // One histogram for all workers (a few hundred KiB): one per worker cost the tool
    // more in page faults and the final merge than the locking (one short lock per
    // cycle) costs.
    let latency = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
    ));
    let mut workers = Vec::new();
    for _ in 0..cfg.concurrency.max(1) {
        let (cfg, next, finished, progress, hist) = (
            cfg.clone(),
            next.clone(),
            finished.clone(),
            progress.clone(),
            latency.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut failed: BTreeMap<Failure, u64> = BTreeMap::new();
            let mut first: BTreeMap<Failure, String> = BTreeMap::new();
            loop {
                let serial = next.fetch_add(1, Ordering::Relaxed);
                if serial >= cfg.total || cfg.duration.is_some_and(|d| started.elapsed() >= d) {
                    break;
                }
                let t0 = match cfg.rate {
                    Some(rate) => {
                        let at = started + Duration::from_secs_f64(serial as f64 / rate);
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None => Instant::now(),
                };
                let mut why = None;
                let result = tokio::time::timeout(cfg.timeout, cycle(&cfg, serial, &mut why))
                    .await
                    .unwrap_or(Err(Failure::Timeout));
                match result {
                    Ok(()) => {
                        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                        let _ = hist
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .record(us.clamp(1, 60_000_000));
                    }
                    Err(f) => {
                        if let Some(w) = why {
                            first.entry(f.clone()).or_insert(w);
                        }
                        *failed.entry(f).or_default() += 1;
                    }
                }
                progress(finished.fetch_add(1, Ordering::Relaxed) + 1);
            }
            (failed, first)
        }));
    }
    let mut failed: BTreeMap<Failure, u64> = BTreeMap::new();
    let mut first_errors: BTreeMap<Failure, String> = BTreeMap::new();
    for w in workers {
        if let Ok((f, e)) = w.await {
            for (k, v) in f {
                *failed.entry(k).or_default() += v;
            }
            for (k, v) in e {
                first_errors.entry(k).or_insert(v);
            }
        }
    }
    let elapsed = started.elapsed();
    let cycles = finished.load(Ordering::Relaxed).max(1);
    let own = match (cpu_before, process_cpu_time()) {
        (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64() * 1e6 / cycles as f64,
        _ => f64::NAN,
    };
    let latency = std::mem::replace(
        &mut *latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        Histogram::new(1).expect("histogram"),
    );
    Report {
        completed: latency.len(),
        failed,
        elapsed,
        latency_us: latency,
        own_cpu_us_per_cycle: own,
        first_errors,
    }
}

/// Opens `count` registration connections (CONNECT without keepalive + SUBSCRIBE) and
/// keeps them; returns them once all are established (drop them to close). Each is a
/// file descriptor: the caller raises the open-file limit first (`dynreg bench --hold`
/// does).
pub async fn hold(
    cfg: &BenchConfig,
    count: u64,
    progress: &(dyn Fn(u64) + Sync),
) -> std::io::Result<Held> {
    let mut held = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let ts = cfg.sign_ts.unwrap_or_else(unix_now);
    for serial in 0..count {
        let mut why = None;
        let (c, _, _) = connect_device(cfg, serial, ts, 0, &mut why)
            .await
            .map_err(|f| {
                std::io::Error::other(match why {
                    Some(text) => format!("connection {serial}: {text}"),
                    None => format!("connection {serial} refused: {f:?}"),
                })
            })?;
        held.push(c);
        progress(serial + 1);
    }
    Ok(Held { conns: held })
}

/// Connections opened by [`hold`]; dropping it closes them.
pub struct Held {
    conns: Vec<Conn>,
}

impl Held {
    /// How many connections are held.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

/// The fixed success reply of the responders: the request's id and code echoed, a
/// made-up triplet (no authentication, no storage).
pub fn canned_reply(pid: &str, unique: &str, payload: &[u8]) -> Vec<u8> {
    let (id, code) = match RegisterRequest::from_json(payload) {
        Ok(r) => (r.id, r.code),
        Err(e) => (e.id, e.code),
    };
    RegisterReply::success(
        id,
        code,
        unix_now(),
        ReplyData::triplet(
            pid,
            format!("bench-{unique}"),
            "0123456789abcdef0123456789abcdef",
            "",
        ),
    )
    .to_json()
}

/// Answers every register request on an external broker at `addr` with a fixed
/// success reply (no authentication, no storage) until the connection ends or `stop`
/// resolves; returns how many it answered. `ready` is called once subscribed.
pub async fn responder(
    addr: &str,
    v5: bool,
    qos: u8,
    ready: impl FnOnce(),
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<u64> {
    let mut c = Conn::open(addr, None, v5, None).await?;
    c.connect(
        &format!("dynreg-bench-responder-{}", std::process::id()),
        None,
        None,
    )?;
    c.flush().await?;
    match c.recv().await? {
        Rx::ConnAck(Ok(())) => {}
        other => {
            return Err(std::io::Error::other(format!(
                "broker refused the responder: {other:?}"
            )));
        }
    }
    c.subscribe(1, "register/v2/+/+/register", qos)?;
    c.flush().await?;
    loop {
        if let Rx::SubAck(ok) = c.recv().await? {
            if !ok {
                return Err(std::io::Error::other(
                    "broker refused the responder's subscription",
                ));
            }
            break;
        }
    }
    ready();
    let mut answered = 0;
    let mut next_id: u16 = 1;
    tokio::pin!(stop);
    loop {
        let rx = tokio::select! {
            () = &mut stop => return Ok(answered),
            rx = c.recv() => rx,
        };
        let (topic, pq, packet_id, payload) = match rx {
            Ok(Rx::Publish {
                topic,
                qos,
                packet_id,
                payload,
            }) => (topic, qos, packet_id, payload),
            Ok(Rx::Disconnect) | Err(_) => return Ok(answered),
            Ok(_) => continue,
        };
        if let (1, Some(id)) = (pq, packet_id) {
            c.puback(id)?;
        }
        let Ok(t) = Topic::parse(&topic) else {
            continue;
        };
        if t.kind != TopicKind::Request {
            continue;
        }
        let reply = canned_reply(t.pid, t.unique, &payload);
        let reply_id = (qos == 1).then(|| {
            let id = next_id;
            next_id = next_id.checked_add(1).unwrap_or(1);
            id
        });
        c.publish(
            &Topic::response(t.pid, t.unique).to_string(),
            qos,
            reply_id,
            Bytes::from(reply),
        )?;
        c.flush().await?;
        answered += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_targets_get_distinct_sources_and_others_none() {
        let target: std::net::SocketAddr = "127.0.0.1:1883".parse().unwrap();
        let sources: std::collections::HashSet<_> = (0..65_024)
            .map(|n| source_address(target, n).unwrap())
            .collect();
        assert_eq!(sources.len(), 65_024);
        assert!(sources.iter().all(|s| {
            let std::net::IpAddr::V4(ip) = s.ip() else {
                return false;
            };
            let o = ip.octets();
            o[0] == 127 && o[1] == 1 && o[3] != 0 && o[3] != 255 && s.port() == 0
        }));
        // After all of them, the first again.
        assert_eq!(source_address(target, 65_024), source_address(target, 0));
        assert_eq!(source_address("10.0.0.1:1883".parse().unwrap(), 7), None);
        assert_eq!(source_address("[::1]:1883".parse().unwrap(), 7), None);
    }
}
