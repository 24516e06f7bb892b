//! The event outbox's deliverer: device events and `pool.low` go from the store's
//! outbox to every destination, the platform's webhook ([`crate::webhook`]) and, in
//! attached mode, the broker (`dynreg-attach`'s `events` module). The events' format
//! is [`event`]'s.
//!
//! Device events are kept in the store's outbox by the transaction that makes them
//! ([`dynreg_store::Operator::set_outbox`]); [`run`] reads the oldest, sends each to
//! every destination (a [`SinkFactory`]: [`crate::webhook::Webhook`] POSTs it as JSON), and removes
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

pub mod event;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use dynreg_registrar::events::{Event, Sink, SinkError, SinkFactory};
use dynreg_registrar::metrics::{Metrics, SinkLabel};
use dynreg_registrar::pace::{Backoff, LogThrottle};
use dynreg_store::OutboxEvent;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::Ops;
use crate::unix_now;

/// Connections to each destination, each sending its share of the devices in order.
pub const PARTITIONS: usize = 8;
/// Events read from the outbox at once.
const BATCH: usize = 512;
/// How long a lease lasts; it is renewed when a third of it is left.
const LEASE_SECS: u64 = 15;
/// The pause when the outbox is empty.
const IDLE: Duration = Duration::from_millis(200);
/// The longest pause between two tries of one device's event: a destination that
/// comes back is found within this ([`Backoff::CAP`]).
pub const MAX_BACKOFF: Duration = Backoff::CAP;

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
    /// Where deliveries, failures and the backlog are counted (the registrar's).
    pub metrics: Arc<Metrics>,
}

/// A device's place in the delivery: its failures in a row, and when its next try
/// may be.
#[derive(Default)]
struct Retry {
    backoff: Backoff,
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
        metrics,
    } = delivery;
    assert!(
        destinations.len() <= 64,
        "at most 64 destinations (a bit each)"
    );
    let connect = || -> Sinks { destinations.iter().map(|d| d.make()).collect() };
    let mut partitions: Vec<Option<Sinks>> = (0..PARTITIONS).map(|_| Some(connect())).collect();
    let mut backoff: HashMap<String, Retry> = HashMap::new();
    // Events some destinations took and others not yet: a bit per destination taken.
    let mut taken: HashMap<u64, u64> = HashMap::new();
    let started = Instant::now();
    let failures_logged = LogThrottle::new(Duration::from_secs(10));
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
            shares[partition(&key)].push((event::event(&e, secret.as_deref()), key, bits));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (i, share) in shares.into_iter().enumerate() {
            let Some(sinks) = partitions[i].take() else {
                continue;
            };
            let metrics = metrics.clone();
            tasks.spawn(async move {
                let (sinks, outcome) = deliver(metrics, sinks, share).await;
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
                b.backoff.reset();
                b.not_before = b.not_before.map(|t| t.min(soon));
            }
        }
        let earliest = failed_now
            .iter()
            .map(|(key, _)| {
                let b = backoff.entry(key.clone()).or_default();
                let at = Instant::now() + b.backoff.step();
                b.not_before = Some(at);
                at
            })
            .min();
        if let Some((_, first)) = failed_now.first() {
            let since = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            if let Some(unlogged) = failures_logged.hit(since) {
                tracing::warn!(
                    failed = failed_now.len(),
                    delivered = done.len(),
                    rounds_failed_since_last_line = unlogged,
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
async fn deliver(
    metrics: Arc<Metrics>,
    mut sinks: Sinks,
    share: Vec<(Event, String, u64)>,
) -> (Sinks, Outcome) {
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
