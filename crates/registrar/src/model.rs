//! Domain types: products, triplets, registrations, and the values they are made of.

use std::fmt;
use std::str::FromStr;

use subtle::ConstantTimeEq;

/// An operator value that does not parse (a mode, MAC, MAC range, duration or
/// re-registration policy); the message names the value and says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

impl From<String> for InvalidValue {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<InvalidValue> for String {
    fn from(e: InvalidValue) -> Self {
        e.0
    }
}

/// A secret string (product or device secret). Its `Debug` and `Display` never show
/// the value, and it compares in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value. Call only where the value must leave the process (a reply to
    /// the device it belongs to, an operator's explicit reveal, an encrypted column).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with `other` (the lengths are not secret).
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(other).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where a product's triplets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceMode {
    /// Only from the pre-generated or imported pool; an empty pool refuses.
    Pool,
    /// Generated on the spot for every new device.
    Generate,
    /// From the pool while it lasts, then generated on the spot.
    PoolThenGenerate,
}

impl SourceMode {
    /// The name used in the CLI, config and database.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Pool => "pool",
            Self::Generate => "generate",
            Self::PoolThenGenerate => "pool-then-generate",
        }
    }

    /// Whether a free pool triplet is tried first.
    pub const fn uses_pool(self) -> bool {
        matches!(self, Self::Pool | Self::PoolThenGenerate)
    }

    /// Whether a triplet may be generated on the spot.
    pub const fn generates(self) -> bool {
        matches!(self, Self::Generate | Self::PoolThenGenerate)
    }
}

impl FromStr for SourceMode {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pool" => Ok(Self::Pool),
            "generate" => Ok(Self::Generate),
            "pool-then-generate" => Ok(Self::PoolThenGenerate),
            _ => Err(InvalidValue(format!(
                "unknown mode `{s}` (expected pool, generate or pool-then-generate)"
            ))),
        }
    }
}

impl fmt::Display for SourceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An inclusive range of 48-bit MAC addresses that generated triplets draw from, in
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacRange {
    /// The first address, as a 48-bit number.
    pub start: u64,
    /// The last address (inclusive), as a 48-bit number.
    pub end: u64,
}

impl MacRange {
    /// How many addresses the range holds.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Always false: a range holds at least its start.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Formats a 48-bit number as `AA:BB:CC:DD:EE:FF`.
    pub fn format(mac: u64) -> String {
        let b = mac.to_be_bytes();
        format!(
            "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
            b[2], b[3], b[4], b[5], b[6], b[7]
        )
    }

    /// Normalises a MAC address given as six pairs of hex digits separated by `:` or
    /// `-`, or as twelve hex digits, in either case, to the one canonical form
    /// `AA:BB:CC:DD:EE:FF` (upper case, colons).
    pub fn normalise(s: &str) -> Result<String, InvalidValue> {
        let sep = s.chars().find(|c| *c == ':' || *c == '-');
        let well_formed = match sep {
            None => s.len() == 12,
            Some(sep) => {
                s.len() == 17
                    && s.split(sep).all(|p| p.len() == 2)
                    && !s.contains(if sep == ':' { '-' } else { ':' })
            }
        };
        let digits: String = s.chars().filter(|c| *c != ':' && *c != '-').collect();
        if !well_formed || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(InvalidValue(format!(
                "`{s}` is not a MAC address (expected AA:BB:CC:DD:EE:FF, AA-BB-CC-DD-EE-FF or AABBCCDDEEFF)"
            )));
        }
        let value =
            u64::from_str_radix(&digits, 16).map_err(|e| InvalidValue(format!("`{s}`: {e}")))?;
        Ok(Self::format(value))
    }

    /// Whether `mac` (a value of [`MacRange::parse_mac`]) lies in the range.
    pub const fn contains(&self, mac: u64) -> bool {
        self.start <= mac && mac <= self.end
    }

    /// Parses one address: six hex pairs separated by `:` (or written without
    /// separators as 12 hex digits).
    pub fn parse_mac(s: &str) -> Result<u64, InvalidValue> {
        let digits: String = s.chars().filter(|c| *c != ':').collect();
        let well_formed = digits.len() == 12
            && digits.chars().all(|c| c.is_ascii_hexdigit())
            && (s.len() == 12 || (s.len() == 17 && s.split(':').all(|p| p.len() == 2)));
        if !well_formed {
            return Err(InvalidValue(format!(
                "`{s}` is not a MAC address (expected AA:BB:CC:DD:EE:FF)"
            )));
        }
        u64::from_str_radix(&digits, 16).map_err(|e| InvalidValue(format!("`{s}`: {e}")))
    }
}

impl FromStr for MacRange {
    type Err = InvalidValue;
    /// Parses `START-END`, e.g. `AA:BB:CC:00:00:00-AA:BB:CC:00:FF:FF`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| InvalidValue(format!("MAC range `{s}` is not START-END")))?;
        let (start, end) = (Self::parse_mac(a.trim())?, Self::parse_mac(b.trim())?);
        if start > end {
            return Err(InvalidValue(format!(
                "MAC range `{s}` ends before it starts"
            )));
        }
        Ok(Self { start, end })
    }
}

impl fmt::Display for MacRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", Self::format(self.start), Self::format(self.end))
    }
}

/// When a device that registered before gets its triplet again (PROTOCOL.md section 6),
/// like the reprovisioning policies of Azure DPS.
///
/// The product secret sits in every device's firmware; whoever extracts it can sign
/// credentials for any unique. Under [`ReregPolicy::Always`] they could then fetch the
/// device secret of every device whose unique they can guess, for ever. A window
/// limits that to devices bound within the window; after it the request is answered
/// with status 4032 until an operator resets the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReregPolicy {
    /// Every repeat registration gets the same triplet (no time limit).
    Always,
    /// Repeat registrations get the same triplet within this many seconds of the first
    /// binding; later ones are refused.
    Window(u64),
    /// Only the first registration succeeds; every repeat is refused, even a retry
    /// whose reply was lost (such a device needs an operator's reset).
    Never,
}

impl ReregPolicy {
    /// The policy of a new product when none is given: a 24-hour window. Long enough
    /// for a device whose reply was lost, or that is power-cycled on the factory line,
    /// to get its triplet again; short enough that a leaked product secret cannot
    /// harvest the secrets of devices already in the field.
    pub const DEFAULT: Self = Self::Window(24 * 3600);

    /// Whether a device first bound at `registered_at` may get its triplet again at
    /// `now` (Unix seconds).
    pub const fn allows(self, registered_at: u64, now: u64) -> bool {
        match self {
            Self::Always => true,
            Self::Window(secs) => now <= registered_at.saturating_add(secs),
            Self::Never => false,
        }
    }
}

impl Default for ReregPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl FromStr for ReregPolicy {
    type Err = InvalidValue;
    /// `always`, `never`, or `window:DURATION` (`DURATION` as [`parse_duration`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => match s.strip_prefix("window:") {
                Some(d) => parse_duration(d)
                    .map(Self::Window)
                    .map_err(|e| InvalidValue(format!("re-registration policy `{s}`: {e}"))),
                None => Err(InvalidValue(format!(
                    "unknown re-registration policy `{s}` (expected always, never or window:DURATION such as window:24h)"
                ))),
            },
        }
    }
}

impl fmt::Display for ReregPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Never => f.write_str("never"),
            Self::Window(secs) => write!(f, "window:{}", format_duration(*secs)),
        }
    }
}

/// Which sign methods a product's devices may use at CONNECT (PROTOCOL.md section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Signatures {
    /// The seed's methods (`hmacSha1`, `hmacSha256`) and the device-bound ones: what
    /// every device built against the protocol text needs.
    #[default]
    Any,
    /// Only the device-bound methods (`hmacSha1u`, `hmacSha256u`), whose credential
    /// verifies for its own unique only: a captured CONNECT cannot register another
    /// device. For firmware that signs them.
    Bound,
}

impl Signatures {
    /// The name used in the CLI, the API and the database: `any` or `bound`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::Bound => "bound",
        }
    }

    /// Whether a credential signed with `method` is acceptable.
    pub const fn allows(self, method: dynreg_proto::SignMethod) -> bool {
        match self {
            Self::Any => true,
            Self::Bound => method.is_bound(),
        }
    }
}

impl FromStr for Signatures {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "any" => Ok(Self::Any),
            "bound" => Ok(Self::Bound),
            _ => Err(InvalidValue(format!(
                "unknown signatures setting `{s}` (expected any or bound)"
            ))),
        }
    }
}

impl fmt::Display for Signatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which uniques of a product may CONNECT (PROTOCOL.md section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Admission {
    /// Any unique whose credentials verify: what every device built against the
    /// protocol text expects.
    #[default]
    Open,
    /// Only the uniques an operator listed in advance ([`ExpectedDevice`]); any other
    /// is refused at CONNECT (3.1.1: 5; MQTT 5: 0x87). Alibaba's pre-registration: a
    /// product secret extracted from one device cannot mint new devices.
    Listed,
}

impl Admission {
    /// The name used in the CLI, the API and the database: `open` or `listed`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Listed => "listed",
        }
    }
}

impl FromStr for Admission {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(Self::Open),
            "listed" => Ok(Self::Listed),
            _ => Err(InvalidValue(format!(
                "unknown admission setting `{s}` (expected open or listed)"
            ))),
        }
    }
}

impl fmt::Display for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A device an operator listed in advance for a product (uploaded from the factory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedDevice {
    /// Its unique.
    pub unique: String,
    /// The barcode its registration puts on its triplet (empty: none); a barcode in the
    /// register request still wins.
    pub barcode: String,
    /// The MAC its registration puts on its triplet (empty: the triplet's own, or one
    /// from the product's range).
    pub mac: String,
    /// When it was listed (Unix seconds).
    pub added_at: u64,
}

/// Parses a duration in seconds written as a number with a unit: `90s`, `15m`, `24h`,
/// `7d` (a bare number is seconds). At most ten years.
pub fn parse_duration(s: &str) -> Result<u64, InvalidValue> {
    let t = s.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits.parse().map_err(|_| {
        InvalidValue(format!(
            "`{s}` is not a duration (expected e.g. 90s, 15m, 24h, 7d)"
        ))
    })?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(InvalidValue(format!(
                "`{s}`: unknown unit `{unit}` (expected s, m, h or d)"
            )));
        }
    };
    n.checked_mul(scale)
        .filter(|v| *v <= 10 * 365 * 86_400)
        .ok_or_else(|| InvalidValue(format!("`{s}` is longer than ten years")))
}

/// Unix seconds as RFC 3339 UTC (`2026-11-28T14:28:35Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Formats seconds in the largest unit that divides them (`86400` as `1d`).
pub fn format_duration(secs: u64) -> String {
    match secs {
        0 => "0s".to_owned(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The longest product name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Whether `pid` is acceptable for a new product: 1 to 64 of `A-Z a-z 0-9 . _ -`.
///
/// This is stricter than the wire contract (which allows any topic-level-safe text) so
/// that pids are easy to type, print on labels and put in URLs, and never contain the
/// `|` that ends the pid in a username.
pub fn is_valid_pid(pid: &str) -> bool {
    !pid.is_empty()
        && pid.len() <= dynreg_proto::MAX_ID_LEN
        && pid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub use dynreg_proto::is_valid_unique;

/// A product: what a family of devices shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// The product id.
    pub pid: String,
    /// A human name.
    pub name: String,
    /// The dynamic-registration secret shared by the product's devices.
    pub secret: Secret,
    /// Whether devices may register.
    pub enabled: bool,
    /// Where triplets come from.
    pub mode: SourceMode,
    /// The MAC addresses generated triplets draw from; `None`: generated MACs are empty.
    pub mac_range: Option<MacRange>,
    /// The CONNECT ts skew window, in seconds.
    pub ts_window: u64,
    /// When a device that registered before gets its triplet again.
    pub rereg: ReregPolicy,
    /// Which sign methods its devices may use.
    pub signatures: Signatures,
    /// Which uniques may CONNECT.
    pub admission: Admission,
    /// The most devices the product may bind (`None`: no limit).
    pub quota: Option<u64>,
    /// The secret replaced by the last rotation, kept until it is retired: it verifies
    /// until its grace ends, and afterwards lets a refusal say that the device still
    /// holds the old secret.
    pub previous_secret: Option<PreviousSecret>,
    /// When the product was created (Unix seconds).
    pub created_at: u64,
}

/// A product's secret from before its last rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    /// The old secret.
    pub secret: Secret,
    /// The end of the grace period (Unix seconds): the old secret verifies while
    /// `now < until`.
    pub until: u64,
}

/// Which of a product's secrets a presented secret (or signature) matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretMatch {
    /// The current secret.
    Current,
    /// The previous secret, within its grace period.
    Previous,
    /// The previous secret after its grace ended: refused.
    PreviousExpired,
    /// Neither.
    None,
}

impl Product {
    /// Checks `matches` (a constant-time comparison or signature check) against the
    /// current secret, then against the previous one. Each check is constant-time in
    /// the secret; the previous secret is tried only when the current one fails.
    pub fn match_secret(&self, now: u64, mut matches: impl FnMut(&Secret) -> bool) -> SecretMatch {
        if matches(&self.secret) {
            return SecretMatch::Current;
        }
        match &self.previous_secret {
            Some(p) if matches(&p.secret) => {
                if now < p.until {
                    SecretMatch::Previous
                } else {
                    SecretMatch::PreviousExpired
                }
            }
            _ => SecretMatch::None,
        }
    }
}

/// A triplet's row id in the store.
pub type TripletId = i64;

/// The life of a triplet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TripletState {
    /// In the pool, not yet handed out.
    Free,
    /// Handed to exactly one device.
    Bound,
    /// Its device was revoked; it is never handed out again.
    Revoked,
}

impl TripletState {
    /// The name used in output and the database.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Bound => "bound",
            Self::Revoked => "revoked",
        }
    }
}

impl fmt::Display for TripletState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TripletState {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        [Self::Free, Self::Bound, Self::Revoked]
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| InvalidValue(format!("`{s}` is not a state (free, bound, revoked)")))
    }
}

/// A device triplet, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Triplet {
    /// Row id.
    pub id: TripletId,
    /// The product it belongs to.
    pub pid: String,
    /// The device uuid, unique over the whole store.
    pub uuid: String,
    /// The device secret.
    pub secret: Secret,
    /// The MAC address; may be empty.
    pub mac: String,
    /// The barcode; may be empty.
    pub barcode: String,
    /// Free, bound or revoked.
    pub state: TripletState,
}

/// A triplet about to be stored (generated or imported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTriplet {
    /// The device uuid.
    pub uuid: String,
    /// The device secret.
    pub secret: Secret,
    /// The MAC address; may be empty.
    pub mac: String,
    /// The barcode; may be empty.
    pub barcode: String,
}

impl NewTriplet {
    /// The triplet as stored under `id` in product `pid`'s pool, in `state`.
    pub fn stored(&self, id: TripletId, pid: &str, state: TripletState) -> Triplet {
        Triplet {
            id,
            pid: pid.to_owned(),
            uuid: self.uuid.clone(),
            secret: self.secret.clone(),
            mac: self.mac.clone(),
            barcode: self.barcode.clone(),
            state,
        }
    }
}

/// A device's registration: its identity bound to a triplet.
///
/// A registration is keyed by the identity the device authenticates with,
/// (`key_pid`, `unique`), so that a retry finds it whatever `replacePid` said. `pid` is
/// the product it is registered under: `key_pid` itself, or the replacement product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The pid the device authenticates with (its clientId's pid).
    pub key_pid: String,
    /// The device's unique.
    pub unique: String,
    /// The product the device is registered under.
    pub pid: String,
    /// The triplet it was given.
    pub triplet: Triplet,
    /// When it first registered (Unix seconds).
    pub registered_at: u64,
    /// When it last registered or retried (Unix seconds).
    pub last_seen_at: u64,
    /// When the operator revoked it, if they did.
    pub revoked_at: Option<u64>,
}

/// One line of the audit log: who did what, to what, when and from where. Written by
/// the registrar for every registration and re-registration (in the registration's
/// transaction, [`crate::Tx::record`]) and by the operator's front doors (CLI, admin
/// API) for every action they take.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditEntry {
    /// When (Unix seconds).
    pub at: u64,
    /// Who: an API token's name, `cli:<OS user>`, or `device` for what a device did.
    pub actor: String,
    /// From where: the client's address for the API, the host for the CLI, the peer of
    /// a device; empty when unknown.
    pub origin: String,
    /// What, as `<object>.<verb>`: `device.registered`, `device.reregistered`,
    /// `device.revoked`, `device.reset`, `product.created`, `pool.generated`...
    pub action: String,
    /// The product concerned, or empty.
    pub pid: String,
    /// What was acted on within the product: a device's unique, a token's name...; or
    /// empty.
    pub target: String,
    /// The triplet concerned (a device's uuid), or empty.
    pub uuid: String,
    /// More about the action, as a JSON object, or empty.
    pub detail: String,
}

impl Registration {
    /// The pid the device came from when `replacePid` moved it, else `None`.
    pub fn from_pid(&self) -> Option<&str> {
        (self.key_pid != self.pid).then_some(self.key_pid.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_normalise_to_one_form() {
        for ok in ["aa-bb-cc-dd-ee-0f", "AA:BB:CC:DD:EE:0F", "aabbccddee0F"] {
            assert_eq!(
                MacRange::normalise(ok).as_deref(),
                Ok("AA:BB:CC:DD:EE:0F"),
                "{ok}"
            );
        }
        for bad in [
            "zz:zz",
            "aa:bb:cc:dd:ee",
            "aa-bb:cc-dd:ee-ff",
            "aa:bb:cc:dd:ee:fg",
            "aabbccddeeff0",
            "+a:bb:cc:dd:ee:ff",
            "",
        ] {
            assert!(MacRange::normalise(bad).is_err(), "{bad}");
        }
        let r: MacRange = "02:00:00:00:00:00-02:00:00:00:00:0F".parse().unwrap();
        assert!(r.contains(0x0200_0000_000F) && !r.contains(0x0200_0000_0010));
    }

    #[test]
    fn mac_range_parse_and_format() {
        let r: MacRange = "AA:BB:CC:00:00:00-aa:bb:cc:00:00:ff".parse().unwrap();
        assert_eq!(r.len(), 256);
        assert_eq!(MacRange::format(r.end), "AA:BB:CC:00:00:FF");
        assert_eq!(r.to_string(), "AA:BB:CC:00:00:00-AA:BB:CC:00:00:FF");
        assert!(
            "AA:BB:CC:00:00:01-AA:BB:CC:00:00:00"
                .parse::<MacRange>()
                .is_err()
        );
        assert!(
            "AA:BB:CC:00:00-AA:BB:CC:00:00:00"
                .parse::<MacRange>()
                .is_err()
        );
        assert!("AABBCC000000-AABBCC0000FF".parse::<MacRange>().is_ok());
        assert!(
            "A:ABB:CC:00:00:00-AA:BB:CC:00:00:00"
                .parse::<MacRange>()
                .is_err()
        );
        assert!("nonsense".parse::<MacRange>().is_err());
    }

    #[test]
    fn pids_and_secrets() {
        assert!(is_valid_pid("p7kq2x9d"));
        assert!(is_valid_pid("my_pid-1.2"));
        assert!(!is_valid_pid(""));
        assert!(!is_valid_pid("a|b"));
        assert!(!is_valid_pid("a/b"));
        assert!(!is_valid_pid(&"x".repeat(65)));
        let s = Secret::new("abc");
        assert!(s.ct_eq(b"abc"));
        assert!(!s.ct_eq(b"abd"));
        assert!(!s.ct_eq(b"ab"));
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(
            "pool-then-generate".parse::<SourceMode>(),
            Ok(SourceMode::PoolThenGenerate)
        );
        assert!("pools".parse::<SourceMode>().is_err());
    }

    #[test]
    fn rereg_policies_and_durations() {
        for (text, policy) in [
            ("always", ReregPolicy::Always),
            ("never", ReregPolicy::Never),
            ("window:24h", ReregPolicy::Window(86_400)),
            ("window:90s", ReregPolicy::Window(90)),
            ("window:7d", ReregPolicy::Window(7 * 86_400)),
        ] {
            assert_eq!(text.parse::<ReregPolicy>(), Ok(policy));
        }
        assert_eq!(ReregPolicy::Window(86_400).to_string(), "window:1d");
        assert_eq!(ReregPolicy::Window(5400).to_string(), "window:90m");
        assert_eq!(ReregPolicy::DEFAULT, ReregPolicy::Window(86_400));
        for bad in [
            "",
            "sometimes",
            "window:",
            "window:1y",
            "window:h",
            "window:99999d",
        ] {
            assert!(bad.parse::<ReregPolicy>().is_err(), "{bad}");
        }
        let w = ReregPolicy::Window(100);
        assert!(w.allows(1000, 1100));
        assert!(!w.allows(1000, 1101));
        assert!(ReregPolicy::Always.allows(0, u64::MAX));
        assert!(!ReregPolicy::Never.allows(1000, 1000));
        assert_eq!(parse_duration("15"), Ok(15));
        assert_eq!(parse_duration("15m"), Ok(900));
    }
}
