//! The registration decision (PROTOCOL.md sections 4-6): given an authenticated device
//! and its request, produce the reply.
//!
//! Rules, in the order they are applied:
//! 1. The request must validate (`MalformedRequest`, `UnknownEventCode`).
//! 2. The device's product must exist (`ProductUnknown`) and be enabled
//!    (`RegistrationDisabled`).
//! 3. With `replacePid`: `data.secret` must be given (`ReplacePidSecretMissing`), the
//!    product must exist (`ReplacePidUnknown`), the secret must equal its secret,
//!    compared in constant time (`ReplacePidSecretWrong`), and it must be enabled
//!    (`ReplacePidDisabled`).
//! 4. In one transaction: a device already registered gets the same triplet again
//!    (`DeviceRevoked` if the operator revoked it; `ReregistrationRefused` when its
//!    product's re-registration policy no longer allows it), with the request's barcode
//!    applied; a new device gets a free pool triplet or a generated one, per the
//!    product's mode (`QuotaReached` when the product has bound its quota of devices,
//!    `PoolExhausted` when neither source is possible), and the request's barcode.
//! 5. A barcode held by another device's triplet refuses (`BarcodeTaken`); a barcode
//!    held by a free pool triplet moves to the device's triplet.
//!
//! The reply is produced only after the transaction is durably committed. A storage
//! failure is answered with `InternalError` or `TemporarilyUnavailable` and logged with
//! its cause, once per burst ([`LogThrottle`]).

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use dynreg_proto::{RegisterReply, RegisterRequest, ReplyData, Status};
use tracing::{error, info};

use crate::auth::{AuthError, AuthPolicy, Authenticated, Connect, ConnectGate, Directory};
use crate::cache::{ExpectedCache, ProductCache};
use crate::generate;
use crate::metrics::Metrics;
use crate::model::SecretMatch;
use crate::model::{
    Admission, AuditEntry, ExpectedDevice, NewTriplet, Product, ReregPolicy, SourceMode, Triplet,
    TripletId, TripletState,
};
use crate::pace::LogThrottle;
use crate::rate::RateLimiter;
use crate::store::{Intent, Store, StoreError, StoreErrorKind, Tx};

/// An authenticated device identity: the pid and unique of its clientId.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Device<'a> {
    /// The pid the device authenticated with.
    pub pid: &'a str,
    /// The device's unique.
    pub unique: &'a str,
}

/// A successful registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The product the device is registered under.
    pub pid: String,
    /// The triplet it holds.
    pub triplet: Triplet,
    /// True when this call bound the triplet; false for a repeat registration.
    pub fresh: bool,
}

/// How many times a generated uuid is drawn again after a collision.
const UUID_ATTEMPTS: usize = 4;

/// The outcome of one register request, for the caller's log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// The reply to send; `None` when the request asked for none (`ack` = 0).
    pub reply: Option<RegisterReply>,
    /// What happened: `Ok(true)` a new binding, `Ok(false)` a re-registration (the same
    /// triplet again), `Err` the refusal.
    pub outcome: Result<bool, Status>,
}

impl Handled {
    /// Logs the outcome for the device (`via`: where the request came from, a peer
    /// address or a broker worker): the one log line of a registration for every front
    /// door. Every re-registration is logged with where it came from: a run of them
    /// from one source is how a harvested product secret shows.
    pub fn log(&self, via: &dyn fmt::Display, device: Device<'_>) {
        let (pid, unique) = (device.pid, device.unique);
        let uuid = self
            .reply
            .as_ref()
            .and_then(|r| r.data.uuid.as_deref())
            .unwrap_or("");
        match &self.outcome {
            Ok(true) => info!(peer = %via, pid, unique, uuid, "registered"),
            Ok(false) => {
                info!(peer = %via, pid, unique, uuid, "re-registered: the device's triplet sent again");
            }
            Err(status) => {
                info!(peer = %via, pid, unique, res = status.code(), msg = status.message(), "registration refused");
            }
        }
    }
}

/// At most one log line per this of storage failures, saying how many more there
/// were: a disk that fills up under load would otherwise write a line per
/// registration.
const STORE_ERROR_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The most products the per-product rate limiter tracks at once.
const MAX_RATE_KEYS: usize = 100_000;

/// The registration decision over a [`Store`], and the CONNECT decision
/// ([`Registrar::authenticate`]).
#[derive(Debug)]
pub struct Registrar<S> {
    store: S,
    /// Registrations per second per product (the pid the device authenticates with).
    per_pid: RateLimiter<String>,
    /// The origin of the per-product limiter's millisecond clock.
    epoch: std::time::Instant,
    /// Product lookups, in front of the store.
    products: Arc<ProductCache>,
    /// Expected-device lookups of products that admit listed devices only.
    expected: Arc<ExpectedCache>,
    /// The CONNECT decision, with its bans and record of seed credentials.
    gate: ConnectGate,
    /// Storage failures, logged once per burst.
    store_errors: LogThrottle,
    /// What this registrar, its store and its servers count.
    metrics: Arc<Metrics>,
}

impl<S: Store> Registrar<S> {
    /// A registrar over `store` with the default CONNECT policy (the default ban).
    pub fn new(store: S) -> Self {
        Self::with_policy(store, AuthPolicy::default())
    }

    /// A registrar over `store` that decides CONNECTs under `policy`.
    pub fn with_policy(store: S, policy: AuthPolicy) -> Self {
        let products = Arc::new(ProductCache::new(
            crate::cache::DEFAULT_CAPACITY,
            crate::cache::DEFAULT_TTL,
        ));
        let expected = Arc::new(ExpectedCache::new(
            crate::cache::DEFAULT_CAPACITY,
            crate::cache::DEFAULT_TTL,
        ));
        let (dropped, dropped_expected) = (Arc::downgrade(&products), Arc::downgrade(&expected));
        store.on_product_change(Arc::new(move |pid| {
            if let Some(cache) = dropped.upgrade() {
                cache.invalidate(pid);
            }
            if let Some(cache) = dropped_expected.upgrade() {
                cache.clear();
            }
        }));
        let metrics = Arc::new(Metrics::new());
        store.record_into(metrics.clone());
        Self {
            products,
            expected,
            store,
            per_pid: RateLimiter::new(0, MAX_RATE_KEYS),
            epoch: std::time::Instant::now(),
            gate: ConnectGate::new(policy, metrics.clone()),
            store_errors: LogThrottle::new(STORE_ERROR_LOG_EVERY),
            metrics,
        }
    }

    /// Limits registrations to `per_second` per product (bursts of as many); more are
    /// answered [`Status::RateLimited`] (`res` 4290: the device retries after 5 s).
    /// 0, the default, is no limit.
    #[must_use]
    pub fn limit_registrations_per_pid(mut self, per_second: u32) -> Self {
        self.per_pid = RateLimiter::new(per_second, MAX_RATE_KEYS);
        self
    }

    /// Storage failures seen by registrations since start.
    pub fn store_errors(&self) -> u64 {
        self.store_errors.total()
    }

    /// Handles a raw request payload: parses it, registers, and gives the reply to send
    /// (`None` when the request asked for no reply, `ack` = 0) with the outcome. A
    /// payload that is not a valid request is answered with `MalformedRequest`, echoing
    /// what could be read.
    pub async fn register_payload(&self, now: u64, device: Device<'_>, payload: &[u8]) -> Handled {
        let started = std::time::Instant::now();
        match RegisterRequest::from_json(payload) {
            Ok(request) => {
                let (reply, outcome) = self.register_outcome(now, device, &request).await;
                Handled {
                    reply: request.wants_reply().then_some(reply),
                    outcome,
                }
            }
            Err(e) => {
                self.metrics
                    .registration(Status::MalformedRequest.code(), started.elapsed());
                Handled {
                    reply: Some(RegisterReply::failure(
                        e.id,
                        e.code,
                        now,
                        Status::MalformedRequest,
                    )),
                    outcome: Err(Status::MalformedRequest),
                }
            }
        }
    }

    /// Registers the device and builds the reply (whatever `ack` says).
    pub async fn register(
        &self,
        now: u64,
        device: Device<'_>,
        request: &RegisterRequest,
    ) -> RegisterReply {
        self.register_outcome(now, device, request).await.0
    }

    async fn register_outcome(
        &self,
        now: u64,
        device: Device<'_>,
        request: &RegisterRequest,
    ) -> (RegisterReply, Result<bool, Status>) {
        let started = std::time::Instant::now();
        let decided = self.commit_registration(now, device, request).await;
        let code = decided.as_ref().map_or_else(|s| s.code(), |_| 0);
        self.metrics.registration(code, started.elapsed());
        match decided {
            Ok(r) => (
                RegisterReply::success(
                    request.id.as_str(),
                    request.code.as_str(),
                    now,
                    ReplyData::triplet(
                        r.pid,
                        r.triplet.uuid,
                        r.triplet.secret.expose(),
                        r.triplet.mac,
                    ),
                ),
                Ok(r.fresh),
            ),
            Err(status) => (
                RegisterReply::failure(request.id.as_str(), request.code.as_str(), now, status),
                Err(status),
            ),
        }
    }

    async fn product(&self, now: u64, pid: &str) -> Result<Option<Arc<Product>>, Status> {
        self.lookup(pid)
            .await
            .map_err(|e| self.store_failure(now, &e))
    }

    /// Decides whether a CONNECT is allowed at `now` (Unix seconds): see
    /// [`crate::auth`].
    pub async fn authenticate(&self, now: u64, c: Connect<'_>) -> Result<Authenticated, AuthError> {
        self.gate.authenticate(self, now, c).await
    }

    /// Whether `ip` is banned at `now` (its failing CONNECTs are answered "banned";
    /// its valid ones are served all the same).
    pub fn is_banned(&self, ip: std::net::IpAddr, now: u64) -> bool {
        self.gate.is_banned(ip, now)
    }

    /// The CONNECT policy in force.
    pub fn auth_policy(&self) -> AuthPolicy {
        self.gate.policy()
    }

    /// The metrics this registrar, its store and the servers in front of it record
    /// into (`/metrics`).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The product `pid` through the cache.
    pub(crate) async fn lookup(&self, pid: &str) -> Result<Option<Arc<Product>>, StoreError> {
        self.products.get(pid, || self.store.product(pid)).await
    }

    /// The device `unique` listed for product `pid`, through the cache.
    pub(crate) async fn expected(
        &self,
        pid: &str,
        unique: &str,
    ) -> Result<Option<Arc<ExpectedDevice>>, StoreError> {
        self.expected
            .get(&ExpectedCache::key(pid, unique), || async {
                Ok(self.store.expected_device(pid, unique).await?.map(Arc::new))
            })
            .await
    }

    /// The status a device sees for a storage failure, which is logged with its cause
    /// (once per burst).
    fn store_failure(&self, now: u64, e: &StoreError) -> Status {
        let status = match e {
            e if e.kind() == StoreErrorKind::Unavailable => Status::TemporarilyUnavailable,
            _ => Status::InternalError,
        };
        if let Some(suppressed) = self.store_errors.hit(now.saturating_mul(1000)) {
            error!(
                error = %e,
                res = status.code(),
                more_since_last_line = suppressed,
                "registration failed in the store"
            );
        }
        status
    }

    /// Applies the rules and, on success, returns the committed registration.
    pub async fn commit_registration(
        &self,
        now: u64,
        device: Device<'_>,
        request: &RegisterRequest,
    ) -> Result<Registered, Status> {
        if !self.per_pid.is_unlimited() {
            let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            if !self.per_pid.allow(device.pid, now_ms) {
                return Err(Status::RateLimited);
            }
        }
        request.validate()?;
        let product = self
            .product(now, device.pid)
            .await?
            .ok_or(Status::ProductUnknown)?;
        if !product.enabled {
            return Err(Status::RegistrationDisabled);
        }
        // The policy of the product the device authenticates with: its secret is the
        // one that may have leaked.
        let rereg = product.rereg;
        // A listed device brings the barcode and MAC it was listed with (the CONNECT
        // decision already refused unlisted ones).
        let listed = if product.admission == Admission::Listed {
            match self.expected(device.pid, device.unique).await {
                Ok(e) => e,
                Err(e) => return Err(self.store_failure(now, &e)),
            }
        } else {
            None
        };
        let target = match request.replace_pid() {
            None => product,
            Some(replace_pid) => {
                let secret = request
                    .replace_secret()
                    .ok_or(Status::ReplacePidSecretMissing)?;
                let target = self
                    .product(now, replace_pid)
                    .await?
                    .ok_or(Status::ReplacePidUnknown)?;
                // The replacement product's current secret, or its previous one during
                // a rotation's grace period.
                if !matches!(
                    target.match_secret(now, |s| s.ct_eq(secret.as_bytes())),
                    SecretMatch::Current | SecretMatch::Previous
                ) {
                    return Err(Status::ReplacePidSecretWrong);
                }
                if !target.enabled {
                    return Err(Status::ReplacePidDisabled);
                }
                target
            }
        };
        let plan = RegistrationTx {
            key_pid: device.pid.to_owned(),
            unique: device.unique.to_owned(),
            pid: target.pid.clone(),
            mode: target.mode,
            has_mac_range: target.mac_range.is_some(),
            rereg,
            quota: target.quota,
            barcode: request.barcode().map(str::to_owned),
            listed_barcode: listed
                .as_ref()
                .map(|l| l.barcode.clone())
                .filter(|b| !b.is_empty()),
            listed_mac: listed.map(|l| l.mac.clone()).filter(|m| !m.is_empty()),
            now,
            // Drawn outside the transaction so the store's writer does less; pool mode
            // never needs one, and pool-then-generate draws one only when the pool is dry.
            candidate: (target.mode == SourceMode::Generate)
                .then(|| generate::triplet(now, String::new(), String::new())),
        };
        let intent = Intent {
            key_pid: plan.key_pid.clone(),
            unique: plan.unique.clone(),
            pool: plan.mode.uses_pool().then(|| plan.pid.clone()),
        };
        match self
            .store
            .transact(Some(intent), move |tx| plan.run(tx))
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => Err(self.store_failure(now, &e)),
        }
    }
}

/// Everything the transaction needs, owned so it can run on the store's writer.
struct RegistrationTx {
    key_pid: String,
    unique: String,
    pid: String,
    mode: SourceMode,
    has_mac_range: bool,
    rereg: ReregPolicy,
    quota: Option<u64>,
    /// The request's barcode.
    barcode: Option<String>,
    /// The barcode and MAC a listed device was listed with, for its first
    /// registration (the request's barcode wins).
    listed_barcode: Option<String>,
    listed_mac: Option<String>,
    now: u64,
    candidate: Option<NewTriplet>,
}

impl RegistrationTx {
    /// The transaction body. Domain refusals come before any write, so that returning
    /// `Ok(Err(status))` commits nothing.
    fn run(&self, tx: &mut dyn Tx) -> Result<Result<Registered, Status>, StoreError> {
        if let Some(reg) = tx.registration(&self.key_pid, &self.unique)? {
            if reg.revoked_at.is_some() {
                return Ok(Err(Status::DeviceRevoked));
            }
            if !self.rereg.allows(reg.registered_at, self.now) {
                tx.count_refused_reregistration(&self.key_pid)?;
                return Ok(Err(Status::ReregistrationRefused));
            }
            let mut triplet = reg.triplet;
            if let Some(barcode) = self.barcode.as_ref().filter(|b| **b != triplet.barcode) {
                if let Err(status) = claim_barcode(tx, &reg.pid, triplet.id, barcode)? {
                    return Ok(Err(status));
                }
                triplet.barcode.clone_from(barcode);
            }
            tx.touch_registration(&self.key_pid, &self.unique, self.now)?;
            tx.record(&self.audit("device.reregistered", &reg.pid, &triplet.uuid))?;
            return Ok(Ok(Registered {
                pid: reg.pid,
                triplet,
                fresh: false,
            }));
        }

        let new_barcode = self.barcode.as_ref().or(self.listed_barcode.as_ref());
        if let Some(barcode) = new_barcode {
            if let Some((_, state)) = tx.barcode_holder(&self.pid, barcode)? {
                if state != TripletState::Free {
                    return Ok(Err(Status::BarcodeTaken));
                }
            }
        }
        if let Some(quota) = self.quota {
            if tx.bound_devices(&self.pid)? >= quota {
                return Ok(Err(Status::QuotaReached));
            }
        }
        let mut triplet = None;
        if self.mode.uses_pool() {
            triplet = tx.free_triplet(&self.pid)?;
        }
        if triplet.is_none() && self.mode.generates() {
            triplet = self.generate(tx)?;
        }
        let Some(mut triplet) = triplet else {
            return Ok(Err(Status::PoolExhausted));
        };
        if let Some(mac) = self.listed_mac.as_ref().filter(|m| **m != triplet.mac) {
            tx.set_mac(triplet.id, mac)?;
            triplet.mac.clone_from(mac);
        }
        if let Some(barcode) = new_barcode {
            if *barcode != triplet.barcode {
                if let Err(status) = claim_barcode(tx, &self.pid, triplet.id, barcode)? {
                    return Ok(Err(status));
                }
                triplet.barcode.clone_from(barcode);
            }
        }
        tx.insert_registration(&self.key_pid, &self.unique, &self.pid, &triplet, self.now)?;
        if self.quota.is_some() {
            tx.count_bound_device(&self.pid)?;
        }
        tx.record(&self.audit("device.registered", &self.pid, &triplet.uuid))?;
        triplet.state = TripletState::Bound;
        Ok(Ok(Registered {
            pid: self.pid.clone(),
            triplet,
            fresh: true,
        }))
    }

    /// The audit line of this device's registration under `pid` with triplet `uuid`.
    /// The target is the device's unique; a device that came in through another pid
    /// (`replacePid`) says which in the detail.
    fn audit(&self, action: &str, pid: &str, uuid: &str) -> AuditEntry {
        AuditEntry {
            at: self.now,
            actor: "device".to_owned(),
            origin: String::new(),
            action: action.to_owned(),
            pid: pid.to_owned(),
            target: self.unique.clone(),
            uuid: uuid.to_owned(),
            detail: if self.key_pid == pid {
                String::new()
            } else {
                serde_json::json!({"key_pid": self.key_pid}).to_string()
            },
        }
    }

    /// Generates and stores a bound triplet, or `None` when the MAC range is used up.
    /// A listed device's MAC is used instead of the range's next address.
    fn generate(&self, tx: &mut dyn Tx) -> Result<Option<Triplet>, StoreError> {
        let mac = if let Some(mac) = &self.listed_mac {
            mac.clone()
        } else if self.has_mac_range {
            match tx.next_mac(&self.pid)? {
                Some(mac) => mac,
                None => return Ok(None),
            }
        } else {
            String::new()
        };
        let mut candidate = self.candidate.clone();
        let mut last = None;
        for _ in 0..UUID_ATTEMPTS {
            let mut t = candidate
                .take()
                .unwrap_or_else(|| generate::triplet(self.now, String::new(), String::new()));
            t.mac.clone_from(&mac);
            match tx.insert_triplet(&self.pid, &t, TripletState::Bound) {
                Ok(stored) => return Ok(Some(stored)),
                Err(e) if e.kind() == StoreErrorKind::Conflict => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| StoreError::backend("uuid generation failed")))
    }
}

/// Puts `barcode` on `triplet` (of product `pid`): refused when another device's triplet
/// holds it; taken from a free pool triplet that holds it.
fn claim_barcode(
    tx: &mut dyn Tx,
    pid: &str,
    triplet: TripletId,
    barcode: &str,
) -> Result<Result<(), Status>, StoreError> {
    match tx.barcode_holder(pid, barcode)? {
        Some((holder, _)) if holder == triplet => return Ok(Ok(())),
        Some((holder, TripletState::Free)) => tx.set_barcode(holder, "")?,
        Some(_) => return Ok(Err(Status::BarcodeTaken)),
        None => {}
    }
    tx.set_barcode(triplet, barcode)?;
    Ok(Ok(()))
}

impl<S: Store> Directory for Registrar<S> {
    fn product(
        &self,
        pid: &str,
    ) -> impl Future<Output = Result<Option<Arc<Product>>, StoreError>> + Send {
        self.lookup(pid)
    }

    fn expected(
        &self,
        pid: &str,
        unique: &str,
    ) -> impl Future<Output = Result<Option<Arc<ExpectedDevice>>, StoreError>> + Send {
        Registrar::expected(self, pid, unique)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{Fixture, product};
    use crate::memory::MemoryStore;
    use std::io::Write;
    use std::sync::Mutex;

    /// A store whose disk is full.
    struct Full(MemoryStore);

    impl Store for Full {
        fn product(
            &self,
            pid: &str,
        ) -> impl Future<Output = Result<Option<Arc<Product>>, StoreError>> + Send {
            self.0.product(pid)
        }
        fn transact<T, F>(
            &self,
            _: Option<Intent>,
            _: F,
        ) -> impl Future<Output = Result<T, StoreError>> + Send
        where
            F: FnMut(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
            T: Send + 'static,
        {
            std::future::ready(Err(StoreError::backend("database or disk is full")))
        }
        fn expected_device(
            &self,
            pid: &str,
            unique: &str,
        ) -> impl Future<Output = Result<Option<crate::ExpectedDevice>, StoreError>> + Send
        {
            self.0.expected_device(pid, unique)
        }
    }
    use std::future::Future;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn storage_failures_are_logged_with_their_cause_once_per_burst() {
        let store = MemoryStore::new();
        store.put_product(product("P", SourceMode::Generate));
        let r = Registrar::new(Full(store));
        let log = Captured::default();
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let dev = Device {
            pid: "P",
            unique: "d",
        };
        let req = RegisterRequest::new("1", 1000);
        for i in 0..50 {
            let reply = r.register(1000 + i / 10, dev, &req).await;
            assert_eq!(reply.res, Status::InternalError.code());
        }
        // t = 1000..1004: one line; at 1010 the next, counting the 49 in between.
        let reply = r.register(1010, dev, &req).await;
        assert_eq!(reply.res, Status::InternalError.code());
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("database or disk is full"), "{text}");
        assert!(lines[0].contains("res=5000"), "{text}");
        assert!(lines[1].contains("more_since_last_line=49"), "{text}");
        assert_eq!(r.store_errors(), 51);
    }
}
