//! The Prometheus metrics of one registrar: one registry that every part of a
//! `dynreg serve` records into (the registrar, the store's writers, the MQTT
//! endpoint, the broker hooks, the outbox), read by `/metrics` ([`Metrics::encode`]).
//! Each [`crate::Registrar`] owns one ([`crate::Registrar::metrics`]) and hands it to
//! its store ([`crate::Store::record_into`]) and to whatever serves it, so a test
//! reads the counts of its own registrar.
//!
//! Recording costs a few atomic operations (a label lookup under a read lock for the
//! families), so it stays on the registration path.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A `status` label: a registration's `res` code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// The code (`0`, `4030`...).
    pub status: u16,
}

/// A `cause` label: why a CONNECT was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    /// See [`crate::AuthError::cause`].
    pub cause: &'static str,
}

/// The labels of a broker hook call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    /// `emqx`, `rabbitmq` or `vernemq`.
    pub broker: &'static str,
    /// `connect` or `topic`.
    pub hook: &'static str,
    /// `allow`, `deny` or `ignore`.
    pub result: &'static str,
}

/// A `pid` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PidLabel {
    /// The product id.
    pub pid: String,
}

/// A `sink` label: where events go.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    /// `webhook`, `amqp` or `mqtt` (see [`crate::events::Sink::kind`]).
    pub sink: &'static str,
}

/// Every metric of the process.
pub struct Metrics {
    /// `dynreg_registrations_total{status}`.
    pub registrations: Family<StatusLabel, Counter>,
    /// `dynreg_registration_duration_seconds`: from a request's arrival to its reply
    /// (the store's durable commit included).
    pub registration_seconds: Histogram,
    /// `dynreg_connect_refusals_total{cause}`.
    pub connect_refusals: Family<CauseLabel, Counter>,
    /// `dynreg_bans_total`: addresses banned after too many refused CONNECTs.
    pub bans: Counter,
    /// `dynreg_shared_credentials_total{pid}`: CONNECTs served whose seed credential
    /// another unique of the product presented before (PROTOCOL.md section 2).
    pub shared_credentials: Family<PidLabel, Counter>,
    /// `dynreg_hook_calls_total{broker,hook,result}`.
    pub hook_calls: Family<HookLabels, Counter>,
    /// `dynreg_store_batch_size`: registrations per store transaction (group commit).
    pub batch_size: Histogram,
    /// `dynreg_store_batch_duration_seconds`: a batch's transaction, begin to durable
    /// commit.
    pub batch_seconds: Histogram,
    /// `dynreg_open_connections`: MQTT connections of the embedded endpoint.
    pub open_connections: Gauge,
    /// `dynreg_pool_free_triplets{pid}`: set when `/metrics` is read.
    pub pool_free: Family<PidLabel, Gauge>,
    /// `dynreg_event_deliveries_total{sink}`: events a destination took (the
    /// webhook's 2xx, the broker's confirm or PUBACK).
    pub event_deliveries: Family<SinkLabel, Counter>,
    /// `dynreg_event_failures_total{sink}`: sends to a destination that failed (each
    /// is tried again).
    pub event_failures: Family<SinkLabel, Counter>,
    /// `dynreg_outbox_backlog`: events waiting in the outbox, as the deliverer last
    /// read it.
    pub outbox_backlog: Gauge,
    registry: Mutex<Registry>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered.
    pub fn new() -> Self {
        let m = Self {
            registrations: Family::default(),
            registration_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 14)),
            connect_refusals: Family::default(),
            bans: Counter::default(),
            shared_credentials: Family::default(),
            hook_calls: Family::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            batch_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 14)),
            open_connections: Gauge::default(),
            pool_free: Family::default(),
            event_deliveries: Family::default(),
            event_failures: Family::default(),
            outbox_backlog: Gauge::default(),
            registry: Mutex::new(Registry::with_prefix("dynreg")),
        };
        {
            let mut r = m.lock();
            r.register(
                "registrations",
                "Register requests answered, by res code (0: registered)",
                m.registrations.clone(),
            );
            r.register(
                "registration_duration_seconds",
                "Time from a register request to its reply, durable commit included",
                m.registration_seconds.clone(),
            );
            r.register(
                "connect_refusals",
                "CONNECTs refused, by cause",
                m.connect_refusals.clone(),
            );
            r.register(
                "bans",
                "Addresses banned after too many refused CONNECTs (their failing CONNECTs are answered banned)",
                m.bans.clone(),
            );
            r.register(
                "shared_credentials",
                "CONNECTs served whose seed credential another unique of the product presented before (same-second devices, or a replay)",
                m.shared_credentials.clone(),
            );
            r.register(
                "hook_calls",
                "Broker hook calls, by broker, hook and result",
                m.hook_calls.clone(),
            );
            r.register(
                "store_batch_size",
                "Registrations per store transaction (group commit)",
                m.batch_size.clone(),
            );
            r.register(
                "store_batch_duration_seconds",
                "Store transactions of registrations, begin to durable commit",
                m.batch_seconds.clone(),
            );
            r.register(
                "open_connections",
                "Open MQTT connections of the embedded endpoint",
                m.open_connections.clone(),
            );
            r.register(
                "pool_free_triplets",
                "Free triplets in each product's pool",
                m.pool_free.clone(),
            );
            r.register(
                "event_deliveries",
                "Device events a destination took (webhook 2xx, broker confirm), by sink",
                m.event_deliveries.clone(),
            );
            r.register(
                "event_failures",
                "Sends of device events that failed (each is tried again), by sink",
                m.event_failures.clone(),
            );
            r.register(
                "outbox_backlog",
                "Events waiting in the outbox for their destinations",
                m.outbox_backlog.clone(),
            );
        }
        m
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a register request answered with `status` after `took`.
    pub fn registration(&self, status: u16, took: Duration) {
        self.registrations
            .get_or_create(&StatusLabel { status })
            .inc();
        self.registration_seconds.observe(took.as_secs_f64());
    }

    /// CONNECTs this process refused, by cause (causes never seen left out).
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        crate::AuthError::CAUSES
            .iter()
            .filter_map(|&cause| {
                let n = self.connect_refusals.get(&CauseLabel { cause })?.get();
                (n > 0).then_some((cause, n))
            })
            .collect()
    }

    /// Counts a CONNECT of product `pid` served with a seed credential that another
    /// unique presented before.
    pub fn credential_shared(&self, pid: &str) {
        self.shared_credentials
            .get_or_create(&PidLabel {
                pid: pid.to_owned(),
            })
            .inc();
    }

    /// Counts a refused CONNECT by its cause.
    pub fn connect_refused(&self, cause: &'static str) {
        self.connect_refusals
            .get_or_create(&CauseLabel { cause })
            .inc();
    }

    /// Counts a broker hook call.
    pub fn hook_call(&self, broker: &'static str, hook: &'static str, result: &'static str) {
        self.hook_calls
            .get_or_create(&HookLabels {
                broker,
                hook,
                result,
            })
            .inc();
    }

    /// Records a store transaction of `jobs` registrations that took `took`.
    pub fn batch(&self, jobs: usize, took: Duration) {
        self.batch_size.observe(jobs as f64);
        self.batch_seconds.observe(took.as_secs_f64());
    }

    /// Sets the free triplets of every product (products not listed are dropped).
    pub fn set_pools(&self, free: impl IntoIterator<Item = (String, u64)>) {
        self.pool_free.clear();
        for (pid, n) in free {
            self.pool_free
                .get_or_create(&PidLabel { pid })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Every metric in Prometheus's text format (OpenMetrics 1.0, `# EOF` last).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.lock());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_are_encoded() {
        let m = Metrics::new();
        m.registration(0, Duration::from_millis(3));
        m.registration(0, Duration::from_millis(3));
        m.registration(4030, Duration::from_millis(1));
        m.connect_refused("bad_signature");
        m.hook_call("emqx", "connect", "allow");
        m.batch(12, Duration::from_millis(2));
        m.open_connections.inc();
        m.set_pools([("p1".to_owned(), 7)]);
        m.set_pools([("p2".to_owned(), 9)]);
        let text = m.encode();
        for line in [
            "dynreg_registrations_total{status=\"0\"} 2",
            "dynreg_registrations_total{status=\"4030\"} 1",
            "dynreg_registration_duration_seconds_count 3",
            "dynreg_connect_refusals_total{cause=\"bad_signature\"} 1",
            "dynreg_hook_calls_total{broker=\"emqx\",hook=\"connect\",result=\"allow\"} 1",
            "dynreg_store_batch_size_sum 12.0",
            "dynreg_open_connections 1",
            "dynreg_pool_free_triplets{pid=\"p2\"} 9",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("pid=\"p1\""), "dropped products go");
        assert!(text.ends_with("# EOF\n"));
    }
}
