//! The operator's operations, independent of the backend: what an operator gives
//! (new products, updates, device filters, triplet references), what the operations
//! answer (summaries, counts, history), and the validation every backend applies the
//! same way. A backend (`sqlite`) implements the operations on top of these.

use std::sync::Arc;

use dynreg_registrar::model::{InvalidValue, MAX_NAME_LEN, is_valid_pid};
use dynreg_registrar::{
    Admission, AuditEntry, ExpectedDevice, MacRange, NewTriplet, Product, Registration,
    ReregPolicy, Secret, Signatures, SourceMode, Triplet, TripletState, generate,
};

use crate::Error;

/// The most triplets one `generate_pool` or `import_pool` call accepts.
pub const MAX_POOL_BATCH: u64 = 10_000_000;
/// How long a rotated product secret keeps working unless the operator says otherwise:
/// long enough for devices that sit in shops for months.
pub const DEFAULT_GRACE: &str = "90d";
/// The longest uuid, mac, barcode accepted by import, in bytes.
pub const MAX_FIELD_LEN: usize = 64;
/// The longest device secret accepted by import, in bytes.
pub const MAX_DEVICE_SECRET_LEN: usize = 128;

/// What an operator gives to create a product.
#[derive(Debug, Clone)]
pub struct NewProduct {
    /// The pid; generated when `None`.
    pub pid: Option<String>,
    /// A human name.
    pub name: String,
    /// Where triplets come from.
    pub mode: SourceMode,
    /// MAC addresses for generated triplets.
    pub mac_range: Option<MacRange>,
    /// CONNECT ts skew window, seconds.
    pub ts_window: u64,
    /// When a device that registered before gets its triplet again.
    pub rereg: ReregPolicy,
    /// Which sign methods its devices may use.
    pub signatures: Signatures,
    /// Which uniques may CONNECT.
    pub admission: Admission,
    /// The most devices the product may bind (`None`: no limit).
    pub quota: Option<u64>,
    /// The low-water mark of free triplets: below it, `pool.low` fires (`None`:
    /// never).
    pub low_water: Option<u64>,
}

/// Changes to a product; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ProductUpdate {
    /// A new name.
    pub name: Option<String>,
    /// A new source of triplets.
    pub mode: Option<SourceMode>,
    /// A new MAC range for generated triplets: `Some(None)` removes it.
    pub mac_range: Option<Option<MacRange>>,
    /// A new CONNECT ts window, seconds.
    pub ts_window: Option<u64>,
    /// A new re-registration policy.
    pub rereg: Option<ReregPolicy>,
    /// A new signatures setting.
    pub signatures: Option<Signatures>,
    /// A new admission setting.
    pub admission: Option<Admission>,
    /// A new quota: `Some(None)` removes it.
    pub quota: Option<Option<u64>>,
    /// A new low-water mark of free triplets: `Some(None)` removes it.
    pub low_water: Option<Option<u64>>,
}

impl ProductUpdate {
    /// Whether the update changes nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.mode.is_none()
            && self.mac_range.is_none()
            && self.ts_window.is_none()
            && self.rereg.is_none()
            && self.signatures.is_none()
            && self.admission.is_none()
            && self.quota.is_none()
            && self.low_water.is_none()
    }
}

/// What [`Operator::delete_product`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deleted {
    /// Devices (registrations) removed.
    pub devices: u64,
    /// Triplets removed (free, bound, revoked and withdrawn).
    pub triplets: u64,
}

/// A triplet named by what an operator has in hand.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TripletRef {
    /// By uuid.
    Uuid(String),
    /// By barcode (within the product).
    Barcode(String),
}

impl std::fmt::Display for TripletRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Uuid(u) => write!(f, "uuid `{u}`"),
            Self::Barcode(b) => write!(f, "barcode `{b}`"),
        }
    }
}

/// A free triplet chosen for withdrawal (no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withdrawal {
    /// The triplet's uuid.
    pub uuid: String,
    /// Its barcode (empty if none).
    pub barcode: String,
    /// Its MAC (empty if none).
    pub mac: String,
}

/// A device that held a triplet before an operator reset it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The triplet's uuid.
    pub uuid: String,
    /// The product the triplet belongs to.
    pub pid: String,
    /// The pid the device authenticated with.
    pub key_pid: String,
    /// The device's unique.
    pub unique: String,
    /// When the device registered (Unix seconds).
    pub registered_at: u64,
    /// When it was revoked.
    pub revoked_at: Option<u64>,
    /// When the operator reset it (the registration was forgotten).
    pub reset_at: u64,
}

/// A product without its secret, with its pool and device counts. Its JSON (the
/// admin API's, the CLI's `--json`) is its fields, the settings in their text form
/// and the counts under `pool`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = ProductView))]
pub struct ProductSummary {
    /// The product id.
    pub pid: String,
    /// Its name.
    pub name: String,
    /// Whether its devices may register.
    pub enabled: bool,
    /// Where triplets come from: `pool`, `generate` or `pool-then-generate`.
    #[serde(serialize_with = "as_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub mode: SourceMode,
    /// MAC addresses for generated triplets, `START-END`.
    #[serde(serialize_with = "as_text_opt")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub mac_range: Option<MacRange>,
    /// The CONNECT ts window, seconds.
    pub ts_window: u64,
    /// The re-registration policy: `always`, `never` or `window:DURATION`.
    #[serde(rename = "reregistration", serialize_with = "as_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub rereg: ReregPolicy,
    /// Which sign methods its devices may use: `any`, or `bound` (the device-bound
    /// `hmacSha1u` and `hmacSha256u` only).
    #[serde(serialize_with = "as_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub signatures: Signatures,
    /// Which uniques may CONNECT: `open`, or `listed` (only the expected devices).
    #[serde(serialize_with = "as_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub admission: Admission,
    /// The most devices it may bind.
    pub quota: Option<u64>,
    /// When the previous secret's grace period ends (or ended), Unix seconds.
    pub previous_secret_until: Option<u64>,
    /// When it was created, Unix seconds.
    pub created_at: u64,
    /// Its pool's and devices' counts.
    #[serde(rename = "pool")]
    pub stats: PoolStats,
}

/// A setting in its text form (`Display`), as the config and the API write it.
fn as_text<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// An optional setting in its text form.
fn as_text_opt<T: std::fmt::Display, S: serde::Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

impl ProductSummary {
    /// The summary of `product` (its secret left out) with `stats`.
    pub fn new(product: Product, stats: PoolStats) -> Self {
        Self {
            pid: product.pid,
            name: product.name,
            enabled: product.enabled,
            mode: product.mode,
            mac_range: product.mac_range,
            ts_window: product.ts_window,
            rereg: product.rereg,
            signatures: product.signatures,
            admission: product.admission,
            quota: product.quota,
            previous_secret_until: product.previous_secret.map(|p| p.until),
            created_at: product.created_at,
            stats,
        }
    }
}

/// Counts of a product's triplets and devices. Its JSON (the admin API's, the CLI's
/// `--json`) is its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = PoolView))]
pub struct PoolStats {
    /// Triplets not yet handed out.
    pub free: u64,
    /// Triplets bound to a device.
    pub bound: u64,
    /// Triplets of revoked devices (never handed out again).
    pub revoked: u64,
    /// Free triplets an operator withdrew (never handed out).
    pub withdrawn: u64,
    /// Devices registered under the product.
    pub devices: u64,
    /// MAC addresses left in the product's range, if it has one.
    pub mac_left: Option<u64>,
    /// Re-registrations served (a device that registered before got its triplet again).
    pub reregistrations: u64,
    /// Re-registrations refused by the product's policy.
    pub reregistrations_refused: u64,
    /// The low-water mark of free triplets, if set (`pool.low` fires below it).
    pub low_water: Option<u64>,
    /// Whether the pool is below its low-water mark ([`PoolStats::is_low`], which the
    /// store applies when it counts).
    pub low: bool,
    /// Devices listed in advance for the product ([`Operator::expect_devices`]).
    pub expected: u64,
    /// Of those, the ones not registered yet.
    pub expected_waiting: u64,
}

/// Which expected devices to list ([`Operator::list_expected`]).
#[derive(Debug, Clone, Default)]
pub struct ExpectedFilter {
    /// Only those not registered yet.
    pub waiting_only: bool,
    /// Only uniques after this one (the cursor of the next page).
    pub after: Option<String>,
    /// At most this many (0: no limit).
    pub limit: usize,
}

/// A listed device and whether it registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The device as listed.
    pub device: ExpectedDevice,
    /// When it registered under its product (Unix seconds), if it did.
    pub registered_at: Option<u64>,
}

/// The low-water rule, the one place it is written: a pool with `free` triplets is low
/// when it has a mark and holds fewer than it (`pool.low` fires then).
pub fn below_low_water(free: u64, low_water: Option<u64>) -> bool {
    low_water.is_some_and(|mark| free < mark)
}

impl PoolStats {
    /// Whether the pool is below its low-water mark ([`below_low_water`]).
    pub fn is_low(&self) -> bool {
        below_low_water(self.free, self.low_water)
    }
}

/// Which devices to list.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    /// Only devices registered under this product.
    pub pid: Option<String>,
    /// Only revoked devices.
    pub revoked_only: bool,
    /// Only devices not revoked.
    pub active_only: bool,
    /// Only devices with this unique.
    pub unique: Option<String>,
    /// Only devices registered at or after this time (Unix seconds).
    pub since: Option<u64>,
    /// Only devices after this one in the listing's order (newest first): the cursor
    /// of the next page, [`DeviceCursor::of`] the last device of a page.
    pub after: Option<DeviceCursor>,
    /// At most this many (0: no limit).
    pub limit: usize,
}

/// A position in the device listing (newest first, then by pid and unique): where
/// the next page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCursor {
    /// The registration time of the last device listed.
    pub registered_at: u64,
    /// Its pid (the one it authenticates with).
    pub key_pid: String,
    /// Its unique.
    pub unique: String,
}

impl DeviceCursor {
    /// The cursor just past `device`.
    pub fn of(device: &Registration) -> Self {
        Self {
            registered_at: device.registered_at,
            key_pid: device.key_pid.clone(),
            unique: device.unique.clone(),
        }
    }
}

/// What an API token may do. Each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Read products, pools, devices, registrations and the audit log.
    Read,
    /// Also change them: products, pools, revocations, resets.
    Write,
    /// Also manage API tokens.
    Admin,
}

impl Scope {
    /// Every scope, weakest first.
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Admin];

    /// The scope's name: `read`, `write` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }

    /// Whether a token of this scope may do what `needed` allows.
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| Error::Invalid(format!("scope `{s}` is not read, write or admin")))
    }
}

/// An API token as stored: everything but the token itself, of which only a hash is
/// kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The token's id.
    pub id: u64,
    /// Its name, unique among the tokens not revoked (who it was given to); the audit
    /// log names the token's holder by it.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// When it was created (Unix seconds).
    pub created_at: u64,
    /// Who created it (an audit actor).
    pub created_by: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<u64>,
}

/// The prefix of every API token (so that a leaked one is recognisable, e.g. by secret
/// scanners).
pub const TOKEN_PREFIX: &str = "dynreg_";

/// The SHA-256 hash under which a token is stored and looked up. Tokens are 256 random
/// bits, so a fast hash is enough: nothing can be guessed from it.
pub fn token_hash(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Checks a token name: 1 to 64 printable characters.
pub fn validate_token_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 64 || !printable(name) || name.trim() != name {
        return Err(Error::Invalid(format!(
            "token name `{name}` must be 1 to 64 printable characters, without leading or trailing spaces"
        )));
    }
    Ok(())
}

/// Which audit lines to read (all conditions must hold).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only lines about this product.
    pub pid: Option<String>,
    /// Only lines about this target (a device's unique, a token's name...).
    pub target: Option<String>,
    /// Only lines about this triplet.
    pub uuid: Option<String>,
    /// Only lines by this actor.
    pub actor: Option<String>,
    /// Only this action (`device.registered`), or this object's actions when it ends
    /// with `.` (`device.`).
    pub action: Option<String>,
    /// Only registrations and re-registrations (`device.registered`,
    /// `device.reregistered`).
    pub registrations_only: bool,
    /// Only lines at or after this time (Unix seconds).
    pub since: Option<u64>,
    /// Only lines with an id below this one (the cursor of the next page, newest
    /// first).
    pub before: Option<u64>,
    /// Only lines with an id above this one (what came since a line was read).
    pub after: Option<u64>,
    /// Oldest first instead of newest first (reading forward from `after`).
    pub oldest_first: bool,
    /// At most this many (0: no limit).
    pub limit: usize,
}

/// A device event waiting in the outbox (see [`Operator::set_outbox`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// The id of its audit line: the event's id, the same at every delivery.
    pub id: u64,
    /// When it happened (Unix seconds).
    pub at: u64,
    /// `device.registered`, `device.reregistered`, `device.revoked`, `device.reset`
    /// or `pool.low`.
    pub kind: String,
    /// The product.
    pub pid: String,
    /// The device's unique (empty for `pool.low`).
    pub unique: String,
    /// The device's triplet (empty for `pool.low`).
    pub uuid: String,
    /// The triplet's MAC (empty if none).
    pub mac: String,
    /// The triplet's barcode (empty if none).
    pub barcode: String,
    /// The audit line's detail (a JSON object's text, or empty).
    pub detail: String,
}

/// A line of the audit log as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Its id: lines are numbered in the order they were written.
    pub id: u64,
    /// The line.
    pub entry: AuditEntry,
}

/// Progress of a long operation: called with the number of items done so far.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// The operator's operations on a store, for the CLI (and the admin API): one
/// implementation per backend. The operations composed of others (creating a product,
/// listing products, a product's summary, listing devices) are written here once; a
/// backend implements the rest. Blocking: call them from a thread that may block (in
/// an async context, through `spawn_blocking` or `block_in_place`).
pub trait Operator {
    /// Where the store is, for messages (a file path, a database URL without its
    /// password).
    fn location(&self) -> String;

    /// Finishes pending work and closes the store; later writes fail.
    fn close(&self) -> Result<(), Error>;

    /// A product with its secret, read from the store (not cached).
    fn load_product(&self, pid: &str) -> Result<Option<Product>, Error>;

    /// Every product's pid, in order.
    fn product_pids(&self) -> Result<Vec<String>, Error>;

    /// Creates a product with a fresh secret. The pid is generated when not given.
    fn create_product(&self, new: NewProduct, now: u64) -> Result<Product, Error> {
        let low_water = new.low_water;
        let product = new_product(new, now)?;
        self.insert_product(&product)?;
        if low_water.is_some() {
            self.update_product(
                &product.pid,
                ProductUpdate {
                    low_water: Some(low_water),
                    ..ProductUpdate::default()
                },
            )?;
        }
        Ok(product)
    }

    /// Inserts a product exactly as given, secret included (moving products between
    /// stores, restoring from an export, tests). Refuses an existing pid.
    fn insert_product(&self, product: &Product) -> Result<(), Error>;

    /// Every product, without secrets, with counts, ordered by pid.
    fn list_products(&self) -> Result<Vec<ProductSummary>, Error> {
        self.product_pids()?
            .iter()
            .map(|p| self.product_summary(p))
            .collect()
    }

    /// One product, without its secret, with counts.
    fn product_summary(&self, pid: &str) -> Result<ProductSummary, Error> {
        let product = self
            .load_product(pid)?
            .ok_or_else(|| Error::NotFound(format!("unknown pid `{pid}`")))?;
        let stats = self.pool_stats(pid)?;
        Ok(ProductSummary::new(product, stats))
    }

    /// Changes a product. Each field is validated as at creation.
    ///
    /// - A quota applies to new bindings only: devices already registered keep their
    ///   triplets even when there are more of them than the new quota. Setting a quota
    ///   recounts the product's devices; a server that still serves the product from
    ///   its cache (up to the cache TTL, 2 s) does not count the devices it registers
    ///   meanwhile.
    /// - A new MAC range starts handing out addresses at its start, or just past the
    ///   addresses already handed out from the old range when the new one contains
    ///   them, so that a widened range never repeats an address.
    /// - A new ts window or re-registration policy applies to the next CONNECT or
    ///   request.
    fn update_product(&self, pid: &str, update: ProductUpdate) -> Result<(), Error>;

    /// Deletes a product with its triplets. Refused while devices are registered under
    /// it, unless `force`, which removes those devices too (they keep working triplets
    /// that this store then no longer knows). Devices that moved from it to another
    /// product (replacePid) belong to that product and stay. Returns what was removed.
    fn delete_product(&self, pid: &str, force: bool) -> Result<Deleted, Error>;

    /// Enables or disables registration for a product.
    fn set_enabled(&self, pid: &str, enabled: bool) -> Result<(), Error>;

    /// Gives a product a new secret and returns it. The old secret keeps verifying for
    /// `grace_secs` from `now` (0: it stops at once, the case of a leaked secret), so
    /// that devices flashed with it that have not registered yet still can. It is kept
    /// after its grace, until the next rotation, only to say in the log that a refused
    /// device holds it. A rotation during another's grace replaces the older secret.
    fn rotate_secret(&self, pid: &str, grace_secs: u64, now: u64) -> Result<Secret, Error>;

    /// Ends the grace period of a product's previous secret now: devices that still
    /// hold it are refused from now on (and the log says so). Refused when the product
    /// has no previous secret in its grace period.
    fn retire_secret(&self, pid: &str, now: u64) -> Result<(), Error>;

    /// Counts of a product's pool and devices.
    fn pool_stats(&self, pid: &str) -> Result<PoolStats, Error>;

    /// Every product's free triplets, by pid: one cheap count per product (the
    /// partial index of free triplets), for metrics.
    fn free_triplets(&self) -> Result<Vec<(String, u64)>, Error>;

    /// Checks every product that has a low-water mark at `now`: one whose free
    /// triplets fell below it gets a `pool.low` audit line (detail `{"free": N,
    /// "low_water": M}`; an event when the outbox is on), once until its pool is
    /// refilled to the mark. Returns the pids that fired.
    fn check_pools(&self, now: u64) -> Result<Vec<String>, Error>;

    /// Generates `count` free triplets for `pid` (MACs from its range when it has one;
    /// barcodes `prefix` + a 12-digit serial unique in the store) and returns them,
    /// secrets included, for the factory CSV. They are written in transactions of
    /// 50,000, so that registrations are not held up behind a large pool; a failure
    /// after the first says how many were committed (free triplets: `pool export
    /// --state free` writes their CSV). A MAC range too small is refused before
    /// anything is written. `now` (Unix seconds)
    /// goes into the generated uuids.
    fn generate_pool(
        &self,
        pid: &str,
        count: u64,
        barcode_prefix: &str,
        now: u64,
        progress: Progress,
    ) -> Result<Vec<NewTriplet>, Error>;

    /// Imports triplets into `pid`'s pool as free, in one transaction: all or nothing.
    /// Triplets without a MAC get one from the product's range when it has one. A
    /// failure names the item (0-based) that caused it, as [`Error::Invalid`] or
    /// [`Error::Conflict`] starting with `item N:`.
    fn import_pool(
        &self,
        pid: &str,
        triplets: Vec<NewTriplet>,
        progress: Progress,
    ) -> Result<u64, Error>;

    /// Lists devices in advance for `pid` (uploaded from the factory; see
    /// [`crate::expected_csv`]): a listed unique replaces its earlier entry (barcode and
    /// MAC). Checked as a whole first (each device's fields, uniques and barcodes
    /// repeated within the batch: [`Error::Item`] names the 0-based item), then written
    /// in transactions of 50,000 so that registrations are not held up behind a large
    /// list; a failure after the first says how many were written (uploading the same
    /// file again is harmless). Returns how many devices the product lists now.
    fn expect_devices(
        &self,
        pid: &str,
        devices: Vec<ExpectedDevice>,
        progress: Progress,
    ) -> Result<u64, Error>;

    /// The devices listed for `pid`, by unique, after `filter.after`, with when each
    /// registered (if it did).
    fn list_expected(&self, pid: &str, filter: &ExpectedFilter) -> Result<Vec<Expected>, Error>;

    /// Removes listed devices of `pid` (a device already registered keeps its
    /// registration; it is refused its next CONNECT if the product admits listed
    /// devices only). Returns how many were listed.
    fn remove_expected(&self, pid: &str, uniques: &[String]) -> Result<u64, Error>;

    /// Calls `f` for each triplet of `pid`'s pool (optionally only those in `state`), in
    /// creation order, secrets opened: re-exporting a factory CSV.
    fn for_each_triplet(
        &self,
        pid: &str,
        state: Option<TripletState>,
        f: &mut dyn FnMut(Triplet) -> Result<(), Error>,
    ) -> Result<(), Error>;

    /// Devices, newest first.
    fn list_devices(&self, filter: &DeviceFilter) -> Result<Vec<Registration>, Error> {
        let mut out = Vec::new();
        self.for_each_device(filter, &mut |r| {
            out.push(r);
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` for each device matching `filter`, newest first, without holding them
    /// all in memory (for exports).
    fn for_each_device(
        &self,
        filter: &DeviceFilter,
        f: &mut dyn FnMut(Registration) -> Result<(), Error>,
    ) -> Result<(), Error>;

    /// The device (`key_pid`, `unique`): `key_pid` is the pid it authenticates with.
    fn device(&self, key_pid: &str, unique: &str) -> Result<Option<Registration>, Error>;

    /// The device holding the triplet `uuid`.
    fn device_by_uuid(&self, uuid: &str) -> Result<Option<Registration>, Error>;

    /// The device holding the triplet with `barcode`: in product `pid` when given,
    /// else in any product (barcodes are unique within a product; the first match by
    /// pid is returned when two products share one).
    fn device_by_barcode(
        &self,
        pid: Option<&str>,
        barcode: &str,
    ) -> Result<Option<Registration>, Error>;

    /// The devices holding a triplet with `mac` (given in any form
    /// [`MacRange::normalise`] accepts). A MAC is normally held by one device; pools
    /// imported before MACs were checked may hold a MAC twice.
    fn devices_by_mac(&self, mac: &str) -> Result<Vec<Registration>, Error>;

    /// The triplet `uuid`, whatever its state (with its secret).
    fn triplet(&self, uuid: &str) -> Result<Option<Triplet>, Error>;

    /// Who held the triplet `uuid` before an operator reset them, oldest first.
    fn triplet_history(&self, uuid: &str) -> Result<Vec<HistoryEntry>, Error>;

    /// The triplets the device (`key_pid`, `unique`) held before an operator reset
    /// it, oldest first.
    fn device_history(&self, key_pid: &str, unique: &str) -> Result<Vec<HistoryEntry>, Error>;

    /// Finds free triplets of `pid` to withdraw. Every reference must name a triplet
    /// of the product that is still free (a bound one belongs to a device: revoke the
    /// device instead); the first that does not is refused as [`Error::Item`] with
    /// its position. A triplet named twice is listed once.
    fn withdrawal_candidates(
        &self,
        pid: &str,
        refs: &[TripletRef],
    ) -> Result<Vec<Withdrawal>, Error>;

    /// Withdraws free triplets of `pid` (from [`Operator::withdrawal_candidates`]) in
    /// one transaction: they are never handed out, and count as withdrawn. Refused, with
    /// nothing changed, if any of them stopped being free meanwhile. Returns how many.
    fn withdraw(&self, pid: &str, uuids: Vec<String>, now: u64) -> Result<u64, Error>;

    /// Revokes a device: its registrations are refused with `DeviceRevoked` and its
    /// triplet is never handed out again. The audit line (`device.revoked` by `by`) is
    /// written in the same transaction.
    fn revoke(&self, key_pid: &str, unique: &str, now: u64, by: &Actor) -> Result<(), Error>;

    /// Forgets a revoked device's registration so that it may register again (it gets
    /// a fresh triplet; the old one stays revoked). Who held the old triplet, and when
    /// it was registered, revoked and reset, stays in the device history
    /// ([`Operator::triplet_history`], [`Operator::device_history`]), and in the audit
    /// line (`device.reset` by `by`, with the old triplet's uuid) written in the same
    /// transaction.
    fn reset(&self, key_pid: &str, unique: &str, now: u64, by: &Actor) -> Result<(), Error>;

    /// The schema version of the database (the number of migrations it has had).
    fn schema_version(&self) -> Result<u64, Error>;

    /// Turns the event outbox on or off. On: from the next transaction on, every
    /// device event (registration, re-registration, revocation, reset) and every
    /// `pool.low` is kept in the outbox by the transaction that makes it, until it is
    /// delivered ([`Operator::outbox_delivered`]). Off: nothing more is kept, and what
    /// waits is dropped; returns how many events were dropped.
    fn set_outbox(&self, on: bool) -> Result<u64, Error>;

    /// Whether the outbox is on.
    fn outbox_on(&self) -> Result<bool, Error>;

    /// The oldest events waiting in the outbox, at most `limit`, oldest first.
    fn outbox_events(&self, limit: usize) -> Result<Vec<OutboxEvent>, Error>;

    /// Removes delivered events from the outbox.
    fn outbox_delivered(&self, ids: &[u64]) -> Result<(), Error>;

    /// How many events wait in the outbox.
    fn outbox_backlog(&self) -> Result<u64, Error>;

    /// Takes or renews the right to deliver the outbox for `ttl` seconds from `now`,
    /// for `holder` (one instance at a time delivers); false while another holder's
    /// lease runs.
    fn outbox_lease(&self, holder: &str, now: u64, ttl: u64) -> Result<bool, Error>;

    /// Appends a line to the audit log; returns its id.
    fn append_audit(&self, entry: &AuditEntry) -> Result<u64, Error>;

    /// Lines of the audit log matching `filter`, newest first.
    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, Error>;

    /// Creates an API token named `name` with `scope`; returns it with the token
    /// itself, which is shown once and never stored (only its hash,
    /// [`token_hash`]). A name in use by a token not revoked is a conflict.
    fn create_token(
        &self,
        name: &str,
        scope: Scope,
        created_by: &str,
        now: u64,
    ) -> Result<(TokenInfo, String), Error> {
        validate_token_name(name)?;
        let token = format!("{TOKEN_PREFIX}{}", hex::encode(generate::bytes::<32>()));
        let info = self.insert_token(name, scope, &token_hash(&token), created_by, now)?;
        Ok((info, token))
    }

    /// Stores a token by its hash (see [`Operator::create_token`]).
    fn insert_token(
        &self,
        name: &str,
        scope: Scope,
        hash: &[u8; 32],
        created_by: &str,
        now: u64,
    ) -> Result<TokenInfo, Error>;

    /// Every token, revoked ones included, oldest first.
    fn tokens(&self) -> Result<Vec<TokenInfo>, Error>;

    /// Revokes the token named `name` (not revoked yet); it stops working at once.
    fn revoke_token(&self, name: &str, now: u64) -> Result<TokenInfo, Error>;

    /// The token not revoked whose hash is `hash`.
    fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenInfo>, Error>;

    /// Registers `count` generated devices (uniques `bulk-<start>`...) under `pid` in
    /// transactions of 50,000, without going through the registrar: for loading a store
    /// before a benchmark. Returns how many were added.
    fn bulk_load(
        &self,
        pid: &str,
        start: u64,
        count: u64,
        now: u64,
        progress: &dyn Fn(u64),
    ) -> Result<u64, Error>;
}

/// Who acts on the store, for the audit log: an API token's holder, or an operator at
/// the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The audit log's `actor`: the token's name, or `cli:<OS user>`.
    pub name: String,
    /// The audit log's `origin`: the API client's address, or the CLI's host.
    pub origin: String,
}

impl Actor {
    /// The audit line of this actor doing `action` on `pid`'s `target` at `now`.
    pub fn entry(&self, now: u64, action: &str, pid: &str, target: &str) -> AuditEntry {
        AuditEntry {
            at: now,
            actor: self.name.clone(),
            origin: self.origin.clone(),
            action: action.to_owned(),
            pid: pid.to_owned(),
            target: target.to_owned(),
            uuid: String::new(),
            detail: String::new(),
        }
    }
}

/// Runs an operator action and, when it succeeds, appends its audit line `entry`: the
/// one way every front door (CLI, admin API) records what an operator did. The action
/// may complete the line with what only it learns (a generated pid, a count). A
/// failed action leaves no line. The line is written right after the action, in a
/// transaction of its own: if the process dies between the two, the action stands
/// without its line (registrations, written by the registrar, are audited in their
/// own transaction instead).
pub fn audited<T, O: Operator + ?Sized>(
    ops: &O,
    mut entry: AuditEntry,
    action: impl FnOnce(&O, &mut AuditEntry) -> Result<T, Error>,
) -> Result<T, Error> {
    let out = action(ops, &mut entry)?;
    ops.append_audit(&entry).map_err(|e| {
        Error::Unavailable(format!(
            "`{}` was done, but its audit line could not be written: {e}",
            entry.action
        ))
    })?;
    Ok(out)
}

/// What an operator does to a registered device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAction {
    /// [`Operator::revoke`].
    Revoke,
    /// [`Operator::reset`].
    Reset,
}

impl DeviceAction {
    /// The audit action: `device.revoked` or `device.reset`.
    pub fn audit_action(self) -> &'static str {
        match self {
            Self::Revoke => "device.revoked",
            Self::Reset => "device.reset",
        }
    }
}

/// Revokes or resets the device (`key_pid`, `unique`) for `actor` (audited in the
/// same transaction). Returns the device as it is after a revocation, or as it was
/// before a reset.
pub fn act_on_device<O: Operator + ?Sized>(
    ops: &O,
    actor: &Actor,
    action: DeviceAction,
    key_pid: &str,
    unique: &str,
    now: u64,
) -> Result<Registration, Error> {
    let before = ops.device(key_pid, unique)?;
    match action {
        DeviceAction::Revoke => ops.revoke(key_pid, unique, now, actor)?,
        DeviceAction::Reset => ops.reset(key_pid, unique, now, actor)?,
    }
    ops.device(key_pid, unique)?.or(before).ok_or_else(|| {
        Error::NotFound(format!(
            "no device `{unique}` registered with pid `{key_pid}`"
        ))
    })
}

/// Checks a product name; returns it trimmed.
pub fn validate_name(name: &str) -> Result<String, Error> {
    let name = name.trim().to_owned();
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "product name must be 1 to {MAX_NAME_LEN} bytes of printable text"
        )));
    }
    Ok(name)
}

/// Checks a CONNECT ts window (1 second to 7 days).
pub fn validate_ts_window(ts_window: u64) -> Result<(), Error> {
    if ts_window == 0 || ts_window > 7 * 24 * 3600 {
        return Err(Error::Invalid(format!(
            "ts window {ts_window} is out of range: use 1 second to 7 days (604800)"
        )));
    }
    Ok(())
}

/// Checks what an operator gave for a new product and makes the product (with a fresh
/// secret, enabled), without storing it.
pub fn new_product(new: NewProduct, now: u64) -> Result<Product, Error> {
    if let Some(pid) = &new.pid {
        if !is_valid_pid(pid) {
            return Err(Error::Invalid(format!(
                "pid `{pid}` is not valid: use 1 to 64 of A-Z a-z 0-9 . _ -"
            )));
        }
    }
    let name = validate_name(&new.name)?;
    validate_ts_window(new.ts_window)?;
    Ok(Product {
        pid: new.pid.unwrap_or_else(generate::pid),
        name,
        secret: generate::secret(),
        enabled: true,
        mode: new.mode,
        mac_range: new.mac_range,
        ts_window: new.ts_window,
        rereg: new.rereg,
        signatures: new.signatures,
        admission: new.admission,
        quota: new.quota,
        previous_secret: None,
        created_at: now,
    })
}

/// Checks a batch of triplets to import: its size, each triplet's fields (MACs
/// normalised, see [`MacRange::normalise`]), and MACs repeated within the batch. A
/// failure is [`Error::Item`] naming the 0-based item.
pub fn validate_import_batch(triplets: &mut [NewTriplet]) -> Result<(), Error> {
    let count = triplets.len() as u64;
    if count == 0 || count > MAX_POOL_BATCH {
        return Err(Error::Invalid(format!(
            "the file holds {count} triplets: import 1 to {MAX_POOL_BATCH}"
        )));
    }
    let mut macs = std::collections::HashMap::new();
    for (i, t) in triplets.iter_mut().enumerate() {
        validate_import(t).map_err(|e| Error::Item {
            index: i,
            message: e.0,
        })?;
        if !t.mac.is_empty() {
            if let Some(first) = macs.insert(t.mac.clone(), i) {
                return Err(Error::Item {
                    index: i,
                    message: format!("MAC {} appears twice (first at item {first})", t.mac),
                });
            }
        }
    }
    Ok(())
}

fn printable(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// Checks one expected device's fields (what a CONNECT would accept as its unique, a
/// barcode like an imported triplet's) and normalises its MAC (see
/// [`MacRange::normalise`]). The one check of an expected device, for the CSV reader
/// and the store alike.
pub fn validate_expected(d: &mut ExpectedDevice) -> Result<(), InvalidValue> {
    if !dynreg_registrar::model::is_valid_unique(&d.unique) {
        return Err(InvalidValue(format!(
            "unique `{}` must be 1 to 64 bytes without _ / + # or control characters",
            d.unique
        )));
    }
    if d.barcode.len() > MAX_FIELD_LEN || !printable(&d.barcode) {
        return Err(InvalidValue(format!(
            "barcode of `{}` must be at most {MAX_FIELD_LEN} printable characters",
            d.unique
        )));
    }
    if !d.mac.is_empty() {
        d.mac = MacRange::normalise(&d.mac)
            .map_err(|e| InvalidValue(format!("mac of `{}`: {e}", d.unique)))?;
    }
    Ok(())
}

/// Checks one imported triplet's fields and normalises its MAC (see
/// [`MacRange::normalise`]).
fn validate_import(t: &mut NewTriplet) -> Result<(), InvalidValue> {
    if t.uuid.is_empty()
        || t.uuid.len() > MAX_FIELD_LEN
        || !printable(&t.uuid)
        || t.uuid.contains(['/', '+', '#'])
    {
        return Err(InvalidValue(format!(
            "uuid `{}` must be 1 to {MAX_FIELD_LEN} printable characters without / + #",
            t.uuid
        )));
    }
    let secret = t.secret.expose();
    if secret.is_empty() || secret.len() > MAX_DEVICE_SECRET_LEN || !printable(secret) {
        return Err(InvalidValue(format!(
            "secret of `{}` must be 1 to {MAX_DEVICE_SECRET_LEN} printable characters",
            t.uuid
        )));
    }
    if !t.mac.is_empty() {
        t.mac = MacRange::normalise(&t.mac)
            .map_err(|e| InvalidValue(format!("mac of `{}`: {e}", t.uuid)))?;
    }
    if t.barcode.len() > MAX_FIELD_LEN || !printable(&t.barcode) {
        return Err(InvalidValue(format!(
            "barcode of `{}` must be at most {MAX_FIELD_LEN} printable characters",
            t.uuid
        )));
    }
    Ok(())
}

/// A product's definition as `product export` and `GET /products/{pid}/export` write
/// it, to move a product between environments (`product import`,
/// `POST /products/import`). Never its triplets or devices.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProductDefinition {
    /// The format's version: 1.
    pub dynreg_product: u32,
    /// The product id.
    pub pid: String,
    /// Its name.
    pub name: String,
    /// `pool`, `generate` or `pool-then-generate`.
    pub mode: String,
    /// The MAC range of generated triplets, `START-END`.
    pub mac_range: Option<String>,
    /// The CONNECT ts window, seconds.
    pub ts_window: u64,
    /// The re-registration policy: `always`, `never` or `window:DURATION`.
    pub reregistration: String,
    /// Which sign methods its devices may use: `any` or `bound` (`any` when absent, as
    /// in definitions written before the setting existed).
    #[serde(default = "any_signatures")]
    pub signatures: String,
    /// Which uniques may CONNECT: `open` or `listed` (`open` when absent). The list
    /// itself is not part of the definition.
    #[serde(default = "open_admission")]
    pub admission: String,
    /// The most devices it may bind.
    pub quota: Option<u64>,
    /// Whether it takes registrations.
    pub enabled: bool,
    /// Free triplets below which `pool.low` fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_water: Option<u64>,
    /// The product secret, when exported with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl ProductDefinition {
    /// The format version this build reads and writes.
    pub const VERSION: u32 = 1;

    /// The definition of product `pid`, with its secret when `with_secret`.
    pub fn export<O: Operator + ?Sized>(
        ops: &O,
        pid: &str,
        with_secret: bool,
    ) -> Result<Self, Error> {
        let p = ops
            .load_product(pid)?
            .ok_or_else(|| Error::NotFound(format!("unknown pid `{pid}`")))?;
        let low_water = ops.pool_stats(pid)?.low_water;
        Ok(Self {
            dynreg_product: Self::VERSION,
            pid: p.pid.clone(),
            name: p.name.clone(),
            mode: p.mode.name().into(),
            mac_range: p.mac_range.map(|r| r.to_string()),
            ts_window: p.ts_window,
            reregistration: p.rereg.to_string(),
            signatures: p.signatures.to_string(),
            admission: p.admission.to_string(),
            quota: p.quota,
            enabled: p.enabled,
            low_water,
            secret: with_secret.then(|| p.secret.expose().to_owned()),
        })
    }

    /// Checks the definition and creates the product (under `pid` when given, else
    /// the definition's): with the definition's secret, or a new one. Returns the
    /// product and whether its secret was generated. Errors name the field.
    pub fn import<O: Operator + ?Sized>(
        self,
        ops: &O,
        pid: Option<String>,
        now: u64,
    ) -> Result<(Product, bool), Error> {
        if self.dynreg_product != Self::VERSION {
            return Err(Error::Invalid(format!(
                "dynreg_product: format version {} is not {}",
                self.dynreg_product,
                Self::VERSION
            )));
        }
        let field = |key: &str, e: InvalidValue| Error::Invalid(format!("{key}: {e}"));
        let pid = pid.unwrap_or(self.pid);
        let new = NewProduct {
            pid: Some(pid.clone()),
            name: self.name,
            mode: self.mode.parse().map_err(|e| field("mode", e))?,
            mac_range: self
                .mac_range
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| field("mac_range", e))?,
            ts_window: self.ts_window,
            rereg: self
                .reregistration
                .parse()
                .map_err(|e| field("reregistration", e))?,
            signatures: self
                .signatures
                .parse()
                .map_err(|e| field("signatures", e))?,
            admission: self.admission.parse().map_err(|e| field("admission", e))?,
            quota: self.quota,
            low_water: self.low_water,
        };
        match self.secret {
            // The same validation as a new product, then the given secret.
            Some(secret) => {
                if secret.is_empty() {
                    return Err(Error::Invalid("secret: empty".into()));
                }
                let low_water = new.low_water;
                let mut p = new_product(new, now)?;
                p.secret = Secret::new(secret);
                p.enabled = self.enabled;
                ops.insert_product(&p)?;
                if low_water.is_some() {
                    ops.update_product(
                        &pid,
                        ProductUpdate {
                            low_water: Some(low_water),
                            ..ProductUpdate::default()
                        },
                    )?;
                }
                Ok((p, false))
            }
            None => {
                let mut p = ops.create_product(new, now)?;
                if !self.enabled {
                    ops.set_enabled(&pid, false)?;
                    p.enabled = false;
                }
                Ok((p, true))
            }
        }
    }
}

fn any_signatures() -> String {
    Signatures::Any.to_string()
}

fn open_admission() -> String {
    Admission::Open.to_string()
}

/// The columns of a device export (`device export`, `GET /devices/export`), before
/// the optional `secret`.
pub const DEVICE_EXPORT_HEADER: [&str; 9] = [
    "pid",
    "unique",
    "uuid",
    "mac",
    "barcode",
    "registered_at",
    "last_seen_at",
    "revoked_at",
    "from_pid",
];

/// A device's row of a device export (times in RFC 3339 UTC), with its secret last
/// when `with_secret`.
pub fn device_export_row(r: &Registration, with_secret: bool) -> Vec<String> {
    let time = dynreg_registrar::model::rfc3339;
    let mut row = vec![
        r.pid.clone(),
        r.unique.clone(),
        r.triplet.uuid.clone(),
        r.triplet.mac.clone(),
        r.triplet.barcode.clone(),
        time(r.registered_at),
        time(r.last_seen_at),
        r.revoked_at.map(time).unwrap_or_default(),
        r.from_pid().unwrap_or_default().to_owned(),
    ];
    if with_secret {
        row.push(r.triplet.secret.expose().to_owned());
    }
    row
}

/// The audit action of enabling (`product.enabled`) or disabling
/// (`product.disabled`) a product.
pub fn enabled_action(enabled: bool) -> &'static str {
    if enabled {
        "product.enabled"
    } else {
        "product.disabled"
    }
}

/// Turns the event outbox off and drops what waits in it (audit action `outbox.off`):
/// `entry`'s detail records how many were dropped, which this returns.
pub fn outbox_off<O: Operator + ?Sized>(ops: &O, entry: &mut AuditEntry) -> Result<u64, Error> {
    let n = ops.set_outbox(false)?;
    entry.detail = serde_json::json!({"dropped": n}).to_string();
    Ok(n)
}
