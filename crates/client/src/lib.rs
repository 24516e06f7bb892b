//! # dynreg-client: the device side of dynamic registration
//!
//! A device (or a factory line, or a developer) registers with its product id and the
//! product's secret and gets its own triplet back:
//!
//! ```no_run
//! # async fn demo() -> Result<(), dynreg_client::Error> {
//! use dynreg_client::Registration;
//! let triplet = Registration::new("mqtt.example.com", "p7kq2x9d", "product-secret")
//!     .unique("8f14e45fceea167a") // keep it in flash: the same unique gets the same triplet
//!     .register()
//!     .await?;
//! println!("{} {}", triplet.uuid, triplet.mac);
//! # Ok(()) }
//! ```
//!
//! Every byte of credentials, topics and messages comes from `dynreg-proto`; the MQTT
//! client is rumqttc (3.1.1 and 5, TLS through rustls with the system roots or a given
//! CA).
//!
//! ## Retries
//! Like the best device SDKs: exponential backoff with full jitter (`initial`,
//! doubling, capped at `max`), on transport failures, timeouts and retryable statuses,
//! honouring the status table's retry hint as a floor; never on a non-retryable status,
//! nor on a refused CONNECT (bad credentials, an unknown or disabled product, a ban:
//! trying again cannot change them). Each attempt is bounded by the timeout and signs
//! with the current second.
//!
//! ## Sign methods
//! `hmacSha256` by default, or any method of PROTOCOL.md section 2
//! ([`Registration::sign_method`]): the device-bound `hmacSha256u` and `hmacSha1u` sign
//! the unique too, so that a captured CONNECT cannot register another device; a product
//! set to `signatures = bound` takes only those.
//!
//! ## Layout
//! - `lib.rs`: [`Registration`] and its retry policy, [`Triplet`], [`Error`].
//! - `attempt.rs`: one attempt over rumqttc (MQTT 3.1.1 or 5), TLS through
//!   `dynreg_net::tls`.

mod attempt;

use std::path::PathBuf;
use std::time::Duration;

use dynreg_proto::Status;
use dynreg_proto::credentials::SignMethod;

/// The MQTT version to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MqttVersion {
    /// MQTT 3.1.1.
    V311,
    /// MQTT 5.0.
    #[default]
    V5,
}

/// TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Trust the operating system's root certificates.
    SystemRoots,
    /// Trust the CA certificates of this PEM file.
    CaFile(PathBuf),
    /// Trust these PEM CA certificates.
    CaPem(Vec<u8>),
}

/// The names of the protocol's two environments: a test one and the formal
/// (production) one. They run the same service against different hosts and data; a
/// product is defined in each (see `dynreg product export`).
pub const ENVIRONMENTS: [&str; 2] = ["test", "formal"];

/// Where one environment's registration service is: the profile of
/// `[env.NAME]` in `dynreg.toml` (any serde format works).
///
/// ```
/// # use dynreg_client::{Environment, Registration};
/// let test = Environment { host: "reg.test.example.com".into(), port: Some(8883), tls: true, ca: None };
/// let r = Registration::new("unused", "pid", "secret").environment(&test);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// The host name or address.
    pub host: String,
    /// The port [default: 1883, or 8883 with TLS].
    #[serde(default)]
    pub port: Option<u16>,
    /// Connect over TLS.
    #[serde(default)]
    pub tls: bool,
    /// A PEM CA file to trust for TLS [default: the system's roots].
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

impl Environment {
    /// The TLS settings, if TLS is on.
    pub fn tls_settings(&self) -> Option<Tls> {
        self.tls
            .then(|| self.ca.clone().map_or(Tls::SystemRoots, Tls::CaFile))
    }
}

/// How registration retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1: no retry).
    pub max_attempts: u32,
    /// The first backoff.
    pub initial: Duration,
    /// The largest backoff.
    pub max: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 1 s doubling to at most 60 s, full jitter.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// No retry at all.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The wait before attempt `n + 1` after attempt `n` (1-based) failed with a hint of
    /// `floor`: a random point in the upper half of `initial * 2^(n-1)` (capped at
    /// `max`), and never less than `floor`.
    pub fn backoff(&self, n: u32, floor: Duration) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << n.saturating_sub(1).min(20))
            .min(self.max);
        let mut b = [0u8; 4];
        let _ = getrandom::fill(&mut b);
        let frac = f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX);
        let jittered = exp.mul_f64(0.5 + frac / 2.0);
        jittered.max(floor)
    }
}

/// A device triplet, with the unique it was registered with.
#[derive(Clone, PartialEq, Eq)]
pub struct Triplet {
    /// The product the device is registered under (the replacement pid after
    /// `replace_pid`).
    pub pid: String,
    /// The device uuid.
    pub uuid: String,
    /// The device secret.
    pub secret: String,
    /// The MAC address; may be empty.
    pub mac: String,
    /// The unique used (keep it: the same unique gets the same triplet again).
    pub unique: String,
}

impl std::fmt::Debug for Triplet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Triplet")
            .field("pid", &self.pid)
            .field("uuid", &self.uuid)
            .field("secret", &"<redacted>")
            .field("mac", &self.mac)
            .field("unique", &self.unique)
            .finish()
    }
}

/// What failed, and at which step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The options are not usable (says which).
    #[error("invalid options: {0}")]
    Invalid(String),
    /// The connection could not be made or broke (network, TLS).
    #[error("network: {0}")]
    Network(String),
    /// The server refused the CONNECT (bad credentials, unknown or disabled product,
    /// rate limit...). Displayed in words, with the server and the MQTT code.
    #[error("{server} refused the CONNECT: {} [{code}]", refusal_words(code))]
    ConnectRefused {
        /// The server's `host:port`.
        server: String,
        /// The CONNACK code's name (`BadUserNamePassword`, `NotAuthorized`, ...).
        code: String,
    },
    /// The server refused the subscription to the response topic.
    #[error("subscription to the response topic refused")]
    SubscribeRefused,
    /// No reply within the timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The server answered with a failure status.
    #[error("registration refused: res {res}: {msg}")]
    Refused {
        /// The `res` code.
        res: u16,
        /// The server's message.
        msg: String,
    },
}

impl Error {
    /// Whether another attempt may succeed, and the least wait before it.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Network(_) | Self::Timeout(_) => Some(Duration::ZERO),
            Self::Refused { res, .. } => Status::from_code(*res)
                .and_then(Status::retry_after)
                .map(|s| Duration::from_secs(u64::from(s))),
            Self::Invalid(_) | Self::ConnectRefused { .. } | Self::SubscribeRefused => None,
        }
    }

    /// Whether this is a CONNECT refused for bad credentials (3.1.1 return code 4,
    /// MQTT 5 0x86): a wrong secret, a clock off by more than the product's ts window,
    /// or a seed sign method where the product takes device-bound ones only.
    pub fn is_bad_credentials(&self) -> bool {
        matches!(self, Self::ConnectRefused { code, .. } if code == "BadUserNamePassword")
    }
}

/// What a CONNACK refusal code means for a dynreg device (PROTOCOL.md section 2).
fn refusal_words(code: &str) -> &'static str {
    match code {
        "BadUserNamePassword" => {
            "the server refused the credentials (a wrong product secret, this machine's clock off by more than the product's ts window, 15 minutes by default, or a product that takes device-bound signatures only: --sign-method hmacSha256u)"
        }
        "NotAuthorized" => {
            "the server refused the product (unknown pid, or its registration disabled; over MQTT 3.1.1 also a rate limit or a ban of this address)"
        }
        "QuotaExceeded" | "ConnectionRateExceeded" => {
            "a rate limit refused the connection: try again later"
        }
        "Banned" => "this address is banned for a while after too many refused CONNECTs",
        "ServiceUnavailable" | "ServerUnavailable" | "ServerBusy" => {
            "the server cannot take the registration now (storage unavailable, or too many connections): try again later"
        }
        "BadClientId" | "ClientIdentifierNotValid" => {
            "the server refused the clientId (a pid or unique it does not accept)"
        }
        _ => "the server refused the CONNECT",
    }
}

/// The result of [`Registration::register_detailed`]: the outcome and how many
/// attempts it took.
#[derive(Debug)]
pub struct Outcome {
    /// The triplet, or the last attempt's error.
    pub result: Result<Triplet, Error>,
    /// Attempts made.
    pub attempts: u32,
}

/// A registration to perform: a builder.
#[derive(Debug, Clone)]
pub struct Registration {
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
    pub(crate) pid: String,
    pub(crate) secret: String,
    pub(crate) unique: Option<String>,
    pub(crate) sign_method: SignMethod,
    pub(crate) barcode: Option<String>,
    pub(crate) replace: Option<(String, String)>,
    pub(crate) tls: Option<Tls>,
    pub(crate) version: MqttVersion,
    pub(crate) timeout: Duration,
    pub(crate) retry: RetryPolicy,
}

impl Registration {
    /// A registration against `host` for product `pid` with its `secret`; defaults:
    /// port 1883 (8883 with TLS), MQTT 5, HMAC-SHA256, a generated unique, 10 s per
    /// attempt, [`RetryPolicy::default`].
    pub fn new(host: impl Into<String>, pid: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: None,
            pid: pid.into(),
            secret: secret.into(),
            unique: None,
            sign_method: SignMethod::HmacSha256,
            barcode: None,
            replace: None,
            tls: None,
            version: MqttVersion::V5,
            timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
        }
    }

    /// The broker port.
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The broker host.
    #[must_use]
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// The broker host this registration connects to.
    pub fn host_value(&self) -> &str {
        &self.host
    }

    /// Connects to `env`: its host, port and TLS settings replace the ones set so far.
    #[must_use]
    pub fn environment(mut self, env: &Environment) -> Self {
        self.host.clone_from(&env.host);
        self.port = env.port;
        self.tls = env.tls_settings();
        self
    }

    /// The device's own stable id (no `_`); generated when not set.
    #[must_use]
    pub fn unique(mut self, unique: impl Into<String>) -> Self {
        self.unique = Some(unique.into());
        self
    }

    /// The HMAC for the password.
    #[must_use]
    pub fn sign_method(mut self, method: SignMethod) -> Self {
        self.sign_method = method;
        self
    }

    /// A barcode to write onto the triplet.
    #[must_use]
    pub fn barcode(mut self, barcode: impl Into<String>) -> Self {
        self.barcode = Some(barcode.into());
        self
    }

    /// Register under another product, proving its secret.
    #[must_use]
    pub fn replace_pid(mut self, pid: impl Into<String>, secret: impl Into<String>) -> Self {
        self.replace = Some((pid.into(), secret.into()));
        self
    }

    /// Connect over TLS.
    #[must_use]
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The MQTT version.
    #[must_use]
    pub fn mqtt_version(mut self, version: MqttVersion) -> Self {
        self.version = version;
        self
    }

    /// The bound on each attempt (connect, subscribe, publish, reply).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The retry policy.
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The unique this registration uses: the given one, or a generated random UUID
    /// (hyphenated, no underscore). Call once and keep the result if you let it
    /// generate one.
    #[must_use]
    pub fn with_unique_fixed(mut self) -> Self {
        if self.unique.is_none() {
            self.unique = Some(random_uuid());
        }
        self
    }

    /// The unique, if set (or fixed by [`Registration::with_unique_fixed`]).
    pub fn unique_value(&self) -> Option<&str> {
        self.unique.as_deref()
    }

    /// Registers, retrying per the policy; returns the triplet or the last error.
    pub async fn register(&self) -> Result<Triplet, Error> {
        self.register_detailed().await.result
    }

    /// Registers, retrying per the policy, and says how many attempts it took.
    pub async fn register_detailed(&self) -> Outcome {
        let me = self.clone().with_unique_fixed();
        if let Err(e) = me.validate() {
            return Outcome {
                result: Err(e),
                attempts: 0,
            };
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let result = me.attempt(dynreg_proto::unix_now()).await;
            let retry = match &result {
                Ok(_) => None,
                Err(e) => e.retry_after(),
            };
            match retry {
                Some(floor) if attempts < me.retry.max_attempts => {
                    tokio::time::sleep(me.retry.backoff(attempts, floor)).await;
                }
                _ => return Outcome { result, attempts },
            }
        }
    }

    /// [`Registration::register`] for code without an async runtime (starts a small
    /// one for the call).
    pub fn register_blocking(&self) -> Result<Triplet, Error> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Network(format!("cannot start a runtime: {e}")))?
            .block_on(self.register())
    }

    fn validate(&self) -> Result<(), Error> {
        let unique = self.unique.as_deref().unwrap_or_default();
        dynreg_proto::ClientId::new(&self.pid, unique).map_err(|_| {
            Error::Invalid(format!(
                "pid `{}` and unique `{unique}` must be 1 to 64 bytes without / + # or control characters, and unique without `_`",
                self.pid
            ))
        })?;
        if self.host.is_empty() {
            return Err(Error::Invalid("host is empty".into()));
        }
        if self.timeout.is_zero() {
            return Err(Error::Invalid("timeout must be positive".into()));
        }
        Ok(())
    }
}

/// A random (version 4) UUID, hyphenated: the recommended unique.
pub fn random_uuid() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_shape() {
        let u = random_uuid();
        assert_eq!(u.len(), 36);
        assert!(!u.contains('_'));
        assert_eq!(&u[14..15], "4");
        assert_ne!(random_uuid(), u);
    }

    #[test]
    fn backoff_grows_with_jitter_and_honours_floor() {
        let p = RetryPolicy::default();
        for n in 1..8 {
            let exp = Duration::from_secs(1 << (n - 1)).min(p.max);
            let b = p.backoff(n, Duration::ZERO);
            assert!(b >= exp / 2 && b <= exp, "{n}: {b:?}");
        }
        assert!(p.backoff(1, Duration::from_secs(5)) >= Duration::from_secs(5));
        assert!(p.backoff(30, Duration::ZERO) <= p.max);
    }

    #[test]
    fn what_is_retried() {
        assert!(
            Error::Timeout(Duration::from_secs(1))
                .retry_after()
                .is_some()
        );
        assert!(Error::Network("x".into()).retry_after().is_some());
        assert_eq!(
            Error::ConnectRefused {
                server: "h:1".into(),
                code: "BadUserNamePassword".into()
            }
            .retry_after(),
            None,
            "bad credentials are permanent"
        );
        assert!(
            Error::ConnectRefused {
                server: "h:1".into(),
                code: "NotAuthorized".into()
            }
            .retry_after()
            .is_none()
        );
        assert_eq!(
            Error::Refused {
                res: 4290,
                msg: String::new()
            }
            .retry_after(),
            Some(Duration::from_secs(5))
        );
        assert!(
            Error::Refused {
                res: 4011,
                msg: String::new()
            }
            .retry_after()
            .is_none()
        );
        assert!(
            format!(
                "{:?}",
                Triplet {
                    pid: "p".into(),
                    uuid: "u".into(),
                    secret: "s3cr3t".into(),
                    mac: String::new(),
                    unique: "x".into()
                }
            )
            .find("s3cr3t")
            .is_none()
        );
    }
}
