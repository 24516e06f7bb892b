//! Whether a CONNECT is allowed (PROTOCOL.md section 2), decided once for every front
//! door: the embedded endpoint calls [`crate::Registrar::authenticate`], and so does every
//! broker hook.
//!
//! In order: the clientId and username must parse and agree on the pid; the product
//! must exist and be enabled; its signatures setting must allow the sign method; the ts
//! must lie in the product's window and the password must be its signature (constant
//! time); a product that admits listed devices only must list the unique. A seed credential that verifies is recorded with its unique
//! ([`crate::sharing`]): another unique that presented the same credential is counted
//! and, past [`SHARING_LOG_THRESHOLD`], logged, but never refused.
//!
//! The decision is a `ConnectGate`'s, which the registrar holds and asks through
//! [`crate::Registrar::authenticate`]; the gate reads products and listed devices
//! through a `Directory` (the registrar's caches), and counts what it decides in the
//! registrar's [`Metrics`].
//!
//! A refusal counts towards the address's ban ([`crate::ban`]) unless it is the
//! service's own fault (storage unavailable). A banned address is never refused a
//! CONNECT whose credentials verify: its failing ones are answered "banned" instead of
//! their own cause, and logged once per ban rather than one line each.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use dynreg_proto::Refusal;
use dynreg_proto::credentials::{CredentialError, Credentials, check_ts, verify_password};
use tracing::warn;

use crate::ban::{BanPolicy, Bans, Failure};
use crate::metrics::Metrics;
use crate::model::{Admission, ExpectedDevice, Product, SecretMatch};
use crate::sharing::{CredentialUse, SHARING_LOG_THRESHOLD, SharedCredentials, Sharing};
use crate::store::StoreError;

/// How CONNECTs are decided beyond the credentials themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthPolicy {
    /// The failed-authentication ban.
    pub ban: BanPolicy,
}

/// A device whose CONNECT was allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The pid of its clientId and username.
    pub pid: String,
    /// The unique of its clientId.
    pub unique: String,
    /// What the record of seed credentials said of its credential (always
    /// [`Sharing::Alone`] for a device-bound one).
    pub sharing: Sharing,
}

/// Why a CONNECT was refused. For the log and counters only: the client is told
/// nothing beyond [`AuthError::refusal`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The credentials did not verify and the source address is banned after too many
    /// refused CONNECTs (a banned address's valid CONNECTs are served).
    #[error("the address is banned after too many refused CONNECTs")]
    Banned,
    /// No username or no password.
    #[error("no username or password")]
    MissingCredentials,
    /// The credentials are malformed, stale or badly signed.
    #[error("{0}")]
    Credentials(CredentialError),
    /// The pid is not a known product.
    #[error("unknown product")]
    UnknownProduct,
    /// The product's registration is disabled.
    #[error("registration disabled for the product")]
    DisabledProduct,
    /// The product admits listed devices only (`admission = listed`) and this unique is
    /// not listed.
    #[error(
        "unique {unique} is not among the devices listed for product {pid} (admission = listed)"
    )]
    NotListed {
        /// The product.
        pid: String,
        /// The unique that is not listed.
        unique: String,
    },
    /// The product takes device-bound signatures only (`signatures = bound`) and the
    /// device signed with a seed method.
    #[error(
        "product {pid} takes device-bound signatures only (hmacSha1u, hmacSha256u), and the device signed with {method}"
    )]
    UnboundSignature {
        /// The product.
        pid: String,
        /// The seed method the device used.
        method: &'static str,
    },
    /// The password was signed with the product's previous secret after its grace
    /// period ended (the device was flashed before a rotation). The client is told
    /// "bad credentials" like any other bad signature; the log says which.
    #[error(
        "signed with the previous secret of product {pid}, whose grace period ended at {until} (Unix time): the device was flashed before the secret was rotated"
    )]
    PreviousSecretExpired {
        /// The product.
        pid: String,
        /// The end of the grace period (Unix seconds).
        until: u64,
    },
    /// The product could not be read.
    #[error("storage unavailable: {0}")]
    Store(StoreError),
}

impl AuthError {
    /// The CONNACK refusal (PROTOCOL.md section 2).
    pub fn refusal(&self) -> Refusal {
        match self {
            Self::Banned => Refusal::Banned,
            Self::MissingCredentials
            | Self::UnboundSignature { .. }
            | Self::PreviousSecretExpired { .. } => Refusal::BadCredentials,
            Self::Credentials(e) => e.refusal(),
            Self::UnknownProduct | Self::DisabledProduct | Self::NotListed { .. } => {
                Refusal::NotAuthorized
            }
            Self::Store(_) => Refusal::ServerUnavailable,
        }
    }

    /// Whether the refusal counts towards the address's ban: every refusal that is the
    /// client's doing, except a ban already in force or the service's own failure.
    pub fn counts_against_address(&self) -> bool {
        !matches!(self, Self::Banned | Self::Store(_))
    }

    /// Every value [`AuthError::cause`] takes.
    pub const CAUSES: [&'static str; 11] = [
        "banned",
        "missing_credentials",
        "stale_ts",
        "bad_signature",
        "malformed",
        "unknown_product",
        "disabled_product",
        "not_listed",
        "unbound_signature",
        "previous_secret_expired",
        "store_unavailable",
    ];

    /// The refusal's cause as a metrics label: `banned`, `missing_credentials`,
    /// `malformed` (clientId or username), `stale_ts`, `bad_signature`,
    /// `unknown_product`, `disabled_product`, `not_listed`, `unbound_signature`,
    /// `previous_secret_expired`, `store_unavailable`.
    pub fn cause(&self) -> &'static str {
        use dynreg_proto::credentials::CredentialError as C;
        match self {
            Self::Banned => "banned",
            Self::MissingCredentials => "missing_credentials",
            Self::Credentials(C::TsTooOld { .. } | C::TsInFuture { .. }) => "stale_ts",
            Self::Credentials(C::BadSignature) => "bad_signature",
            Self::Credentials(_) => "malformed",
            Self::UnknownProduct => "unknown_product",
            Self::DisabledProduct => "disabled_product",
            Self::NotListed { .. } => "not_listed",
            Self::UnboundSignature { .. } => "unbound_signature",
            Self::PreviousSecretExpired { .. } => "previous_secret_expired",
            Self::Store(_) => "store_unavailable",
        }
    }
}

/// The CONNECT fields a front door hands over.
#[derive(Clone, Copy)]
pub struct Connect<'a> {
    /// The clientId.
    pub client_id: &'a str,
    /// The username, if any.
    pub username: Option<&'a str>,
    /// The password, if any.
    pub password: Option<&'a [u8]>,
    /// The source address, when known (bans are kept per address).
    pub peer: Option<IpAddr>,
}

impl fmt::Debug for Connect<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// Where the CONNECT decision reads products and listed devices (the registrar's
/// caches in front of its store).
pub(crate) trait Directory: Sync {
    /// The product `pid`.
    fn product(
        &self,
        pid: &str,
    ) -> impl Future<Output = Result<Option<Arc<Product>>, StoreError>> + Send;
    /// The device `unique` listed for product `pid`.
    fn expected(
        &self,
        pid: &str,
        unique: &str,
    ) -> impl Future<Output = Result<Option<Arc<ExpectedDevice>>, StoreError>> + Send;
}

/// The CONNECT decision and what it keeps between CONNECTs: the bans, and the record
/// of seed credentials.
#[derive(Debug)]
pub(crate) struct ConnectGate {
    bans: Bans,
    shared: SharedCredentials,
    metrics: Arc<Metrics>,
}

impl ConnectGate {
    /// A gate deciding under `policy`, counting into `metrics`.
    pub(crate) fn new(policy: AuthPolicy, metrics: Arc<Metrics>) -> Self {
        Self {
            bans: Bans::new(policy.ban),
            shared: SharedCredentials::default(),
            metrics,
        }
    }

    /// Decides whether a CONNECT is allowed at `now` (Unix seconds).
    pub(crate) async fn authenticate(
        &self,
        dir: &impl Directory,
        now: u64,
        c: Connect<'_>,
    ) -> Result<Authenticated, AuthError> {
        let peer = c.peer;
        let e = match self.decide(dir, now, c).await {
            Ok(ok) => {
                if let Sharing::Shared { uniques } = ok.sharing {
                    self.metrics.credential_shared(&ok.pid);
                    // At the threshold, then at each doubling: a handful of lines per
                    // credential at most.
                    if uniques >= SHARING_LOG_THRESHOLD && uniques.is_power_of_two() {
                        warn!(
                            pid = ok.pid,
                            unique = ok.unique,
                            uniques,
                            "one CONNECT credential (one second of one product) has been presented by {uniques} devices: more than honest same-second collisions explain, unless a rack of devices or a herd of re-registering ones started together. A captured credential or an extracted product secret looks like this; consider signatures = bound or a re-registration window for the product (docs/security.md)"
                        );
                    }
                }
                return Ok(ok);
            }
            Err(e) => e,
        };
        let banned = match peer {
            Some(ip) if e.counts_against_address() => {
                let already = self.bans.is_banned(ip, now);
                if let Failure::BannedUntil(until) = self.bans.record_failure(ip, now) {
                    self.metrics.bans.inc();
                    let p = self.bans.policy();
                    warn!(
                        peer = %ip,
                        until,
                        failures = p.failures,
                        window_secs = p.window_secs,
                        "address banned for {} s after too many refused CONNECTs: its failing CONNECTs are answered \"banned\" and not logged one by one; its valid ones are served (last refusal: {e})",
                        p.duration_secs
                    );
                }
                already
            }
            _ => false,
        };
        let e = if banned { AuthError::Banned } else { e };
        self.metrics.connect_refused(e.cause());
        Err(e)
    }

    /// Whether `ip` is banned at `now`.
    pub(crate) fn is_banned(&self, ip: IpAddr, now: u64) -> bool {
        self.bans.is_banned(ip, now)
    }

    /// The policy in force.
    pub(crate) fn policy(&self) -> AuthPolicy {
        AuthPolicy {
            ban: self.bans.policy(),
        }
    }

    async fn decide(
        &self,
        dir: &impl Directory,
        now: u64,
        c: Connect<'_>,
    ) -> Result<Authenticated, AuthError> {
        let (Some(username), Some(password)) = (c.username, c.password) else {
            return Err(AuthError::MissingCredentials);
        };
        let creds = Credentials::parse(c.client_id, username).map_err(AuthError::Credentials)?;
        let product = dir
            .product(creds.pid)
            .await
            .map_err(AuthError::Store)?
            .ok_or(AuthError::UnknownProduct)?;
        if !product.enabled {
            return Err(AuthError::DisabledProduct);
        }
        if !product.signatures.allows(creds.sign_method) {
            return Err(AuthError::UnboundSignature {
                pid: product.pid.clone(),
                method: creds.sign_method.name(),
            });
        }
        check_ts(creds.ts, now, product.ts_window).map_err(AuthError::Credentials)?;
        // The current secret, then (during and after a rotation's grace period) the
        // previous one; each comparison is constant-time.
        let matched = product.match_secret(now, |secret| {
            verify_password(
                creds.sign_method,
                secret.expose().as_bytes(),
                creds.pid,
                creds.unique,
                creds.ts,
                password,
            )
            .is_ok()
        });
        match matched {
            SecretMatch::Current | SecretMatch::Previous => {}
            SecretMatch::PreviousExpired => {
                return Err(AuthError::PreviousSecretExpired {
                    pid: product.pid.clone(),
                    until: product.previous_secret.as_ref().map_or(0, |p| p.until),
                });
            }
            SecretMatch::None => {
                return Err(AuthError::Credentials(CredentialError::BadSignature));
            }
        }
        // Only once the credentials verify, so that the list cannot be probed without
        // the product secret.
        if product.admission == Admission::Listed
            && dir
                .expected(creds.pid, creds.unique)
                .await
                .map_err(AuthError::Store)?
                .is_none()
        {
            return Err(AuthError::NotListed {
                pid: product.pid.clone(),
                unique: creds.unique.to_owned(),
            });
        }
        let sharing = if creds.sign_method.is_bound() {
            Sharing::Alone
        } else {
            self.shared.record(
                &CredentialUse {
                    pid: creds.pid,
                    sign_method: creds.sign_method,
                    ts: creds.ts,
                    password,
                    unique: creds.unique,
                    // Valid while ts >= now - window, i.e. until ts + window inclusive.
                    expires_at: creds.ts.saturating_add(product.ts_window).saturating_add(1),
                },
                now,
            )
        };
        Ok(Authenticated {
            pid: creds.pid.to_owned(),
            unique: creds.unique.to_owned(),
            sharing,
        })
    }
}

#[cfg(test)]
mod tests;
