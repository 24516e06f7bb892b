//! Whether a CONNECT is allowed (PROTOCOL.md section 2), decided once for every front
//! door: the embedded endpoint calls [`Registrar::authenticate`], and so does every
//! broker hook.
//!
//! In order: the clientId and username must parse and agree on the pid; the product
//! must exist and be enabled; its signatures setting must allow the sign method; the ts
//! must lie in the product's window and the password must be its signature (constant
//! time); a product that admits listed devices only must list the unique. A seed credential that verifies is recorded with its unique
//! ([`crate::sharing`]): another unique that presented the same credential is counted
//! and, past [`SHARING_LOG_THRESHOLD`], logged, but never refused.
//!
//! A refusal counts towards the address's ban ([`crate::ban`]) unless it is the
//! service's own fault (storage unavailable). A banned address is never refused a
//! CONNECT whose credentials verify: its failing ones are answered "banned" instead of
//! their own cause, and logged once per ban rather than one line each.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use dynreg_proto::Refusal;
use dynreg_proto::credentials::{CredentialError, Credentials, check_ts, verify_password};
use tracing::warn;

use crate::ban::{BanPolicy, Failure};
use crate::model::{Admission, SecretMatch};
use crate::registrar::Registrar;
use crate::sharing::{CredentialUse, SHARING_LOG_THRESHOLD, Sharing};
use crate::store::{Store, StoreError};

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

/// Counters of the CONNECT decision, for logs and metrics.
#[derive(Debug, Default)]
pub struct AuthCounters {
    /// CONNECTs allowed.
    pub allowed: AtomicU64,
    /// CONNECTs refused (any cause).
    pub refused: AtomicU64,
    /// Of the allowed, those whose seed credential another unique presented before.
    pub shared: AtomicU64,
    /// Of the refused, those answered "banned" (failing CONNECTs from a banned address).
    pub refused_banned: AtomicU64,
    /// Bans started.
    pub bans: AtomicU64,
}

/// A snapshot of [`AuthCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthStats {
    /// CONNECTs allowed.
    pub allowed: u64,
    /// CONNECTs refused (any cause).
    pub refused: u64,
    /// Of the allowed, those whose seed credential another unique presented before.
    pub shared: u64,
    /// Of the refused, those answered "banned".
    pub refused_banned: u64,
    /// Bans started.
    pub bans: u64,
}

impl AuthCounters {
    /// The counts now.
    pub fn snapshot(&self) -> AuthStats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AuthStats {
            allowed: r(&self.allowed),
            refused: r(&self.refused),
            shared: r(&self.shared),
            refused_banned: r(&self.refused_banned),
            bans: r(&self.bans),
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

impl<S: Store> Registrar<S> {
    /// Decides whether a CONNECT is allowed at `now` (Unix seconds).
    pub async fn authenticate(&self, now: u64, c: Connect<'_>) -> Result<Authenticated, AuthError> {
        let peer = c.peer;
        let result = self.decide_connect(now, c).await;
        let counters = &self.auth_counters;
        let e = match result {
            Ok(ok) => {
                counters.allowed.fetch_add(1, Ordering::Relaxed);
                if let Sharing::Shared { uniques } = ok.sharing {
                    counters.shared.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::metrics().credential_shared(&ok.pid);
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
        counters.refused.fetch_add(1, Ordering::Relaxed);
        let banned = match peer {
            Some(ip) if e.counts_against_address() => {
                let already = self.bans.is_banned(ip, now);
                if let Failure::BannedUntil(until) = self.bans.record_failure(ip, now) {
                    counters.bans.fetch_add(1, Ordering::Relaxed);
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
        let e = if banned {
            counters.refused_banned.fetch_add(1, Ordering::Relaxed);
            AuthError::Banned
        } else {
            e
        };
        crate::metrics::metrics().connect_refused(e.cause());
        Err(e)
    }

    /// Whether `ip` is banned at `now` (its failing CONNECTs are answered "banned";
    /// its valid ones are served all the same).
    pub fn is_banned(&self, ip: IpAddr, now: u64) -> bool {
        self.bans.is_banned(ip, now)
    }

    /// The CONNECT policy in force.
    pub fn auth_policy(&self) -> AuthPolicy {
        AuthPolicy {
            ban: self.bans.policy(),
        }
    }

    /// The CONNECT decision's counters.
    pub fn auth_stats(&self) -> AuthStats {
        self.auth_counters.snapshot()
    }

    async fn decide_connect(&self, now: u64, c: Connect<'_>) -> Result<Authenticated, AuthError> {
        let (Some(username), Some(password)) = (c.username, c.password) else {
            return Err(AuthError::MissingCredentials);
        };
        let creds = Credentials::parse(c.client_id, username).map_err(AuthError::Credentials)?;
        let product = self
            .lookup(creds.pid)
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
            && self
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
mod tests {
    use super::*;
    use crate::conformance::{Fixture, product};
    use crate::memory::MemoryStore;
    use crate::{ReregPolicy, SourceMode};
    use dynreg_proto::credentials::{SignMethod, sign};

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn every_cause_is_listed() {
        use dynreg_proto::credentials::CredentialError as C;
        let each = [
            AuthError::Banned,
            AuthError::MissingCredentials,
            AuthError::Credentials(C::TsTooOld { ts: 1, now: 1000 }),
            AuthError::Credentials(C::BadSignature),
            AuthError::Credentials(C::ClientIdPrefix),
            AuthError::UnknownProduct,
            AuthError::DisabledProduct,
            AuthError::NotListed {
                pid: "p".into(),
                unique: "u".into(),
            },
            AuthError::UnboundSignature {
                pid: "p".into(),
                method: "hmacSha256",
            },
            AuthError::PreviousSecretExpired {
                pid: "p".into(),
                until: 1,
            },
            AuthError::Store(crate::StoreError::unavailable("down")),
        ];
        let causes: Vec<&str> = each.iter().map(AuthError::cause).collect();
        assert_eq!(
            causes,
            AuthError::CAUSES,
            "CAUSES lists every cause, in order"
        );
    }

    fn registrar(ban: BanPolicy) -> Registrar<MemoryStore> {
        let store = MemoryStore::new();
        let mut p = product("p", SourceMode::Generate);
        p.rereg = ReregPolicy::Always;
        store.put_product(p);
        let mut off = product("off", SourceMode::Generate);
        off.enabled = false;
        store.put_product(off);
        let mut b = product("b", SourceMode::Generate);
        b.signatures = crate::Signatures::Bound;
        store.put_product(b);
        Registrar::with_policy(store, AuthPolicy { ban })
    }

    struct Creds {
        client_id: String,
        username: String,
        password: String,
    }

    fn creds(pid: &str, unique: &str, ts: u64, secret: &str) -> Creds {
        creds_with(SignMethod::HmacSha256, pid, unique, ts, secret)
    }

    fn creds_with(m: SignMethod, pid: &str, unique: &str, ts: u64, secret: &str) -> Creds {
        Creds {
            client_id: format!("register_{pid}_{unique}"),
            username: format!("{pid}|signMethod={m},ts={ts}"),
            password: sign(m, secret.as_bytes(), pid, unique, ts).to_string(),
        }
    }

    fn connect<'a>(c: &'a Creds, peer: &str) -> Connect<'a> {
        Connect {
            client_id: &c.client_id,
            username: Some(&c.username),
            password: Some(c.password.as_bytes()),
            peer: Some(peer.parse().unwrap()),
        }
    }

    #[tokio::test]
    async fn the_previous_secret_verifies_until_its_grace_ends_and_is_then_named() {
        let store = MemoryStore::new();
        let mut p = product("g", SourceMode::Generate);
        p.secret = crate::Secret::new("new-secret");
        p.previous_secret = Some(crate::PreviousSecret {
            secret: crate::Secret::new("old-secret"),
            until: NOW + 100,
        });
        store.put_product(p);
        let r = Registrar::new(store);
        let new = creds("g", "a", NOW, "new-secret");
        let old = creds("g", "b", NOW, "old-secret");
        r.authenticate(NOW, connect(&new, "10.0.0.1"))
            .await
            .unwrap();
        // Same second, other secret: another credential, not a replay.
        r.authenticate(NOW, connect(&old, "10.0.0.1"))
            .await
            .unwrap();
        let late_old = creds("g", "c", NOW + 100, "old-secret");
        assert_eq!(
            r.authenticate(NOW + 100, connect(&late_old, "10.0.0.1"))
                .await,
            Err(AuthError::PreviousSecretExpired {
                pid: "g".into(),
                until: NOW + 100
            })
        );
        assert_eq!(
            AuthError::PreviousSecretExpired {
                pid: "g".into(),
                until: 1
            }
            .refusal(),
            Refusal::BadCredentials
        );
        let wrong = creds("g", "d", NOW, "neither");
        assert_eq!(
            r.authenticate(NOW, connect(&wrong, "10.0.0.1")).await,
            Err(AuthError::Credentials(CredentialError::BadSignature))
        );
        let late_new = creds("g", "e", NOW + 100, "new-secret");
        r.authenticate(NOW + 100, connect(&late_new, "10.0.0.1"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn same_second_devices_share_a_credential_and_are_all_served() {
        let r = registrar(BanPolicy::default());
        let first = creds("p", "dev1", NOW, "secret-of-p");
        let ok = r
            .authenticate(NOW, connect(&first, "10.0.0.1"))
            .await
            .unwrap();
        assert_eq!(
            (ok.pid.as_str(), ok.unique.as_str(), ok.sharing),
            ("p", "dev1", Sharing::Alone)
        );
        // The device reconnects with the same credential (its reply was lost).
        let again = r
            .authenticate(NOW + 5, connect(&first, "10.0.0.1"))
            .await
            .unwrap();
        assert_eq!(again.sharing, Sharing::Repeat);
        // 99 more devices of the product signed in the same second, behind one address,
        // in either case of hex: each is served, and counted as sharing.
        for i in 2..=100u32 {
            let mut same = creds("p", &format!("dev{i}"), NOW, "secret-of-p");
            if i % 2 == 0 {
                same.password = same.password.to_uppercase();
            }
            let ok = r
                .authenticate(NOW + 1, connect(&same, "10.0.0.1"))
                .await
                .unwrap();
            assert_eq!(ok.sharing, Sharing::Shared { uniques: i });
        }
        assert!(!r.is_banned("10.0.0.1".parse().unwrap(), NOW + 1));
        let stats = r.auth_stats();
        assert_eq!((stats.allowed, stats.refused, stats.shared), (101, 0, 99));
    }

    #[tokio::test]
    async fn device_bound_credentials_verify_for_their_own_unique_only() {
        let r = registrar(BanPolicy::default());
        for m in [SignMethod::HmacSha1Bound, SignMethod::HmacSha256Bound] {
            for pid in ["p", "b"] {
                let own = creds_with(m, pid, "dev1", NOW, &format!("secret-of-{pid}"));
                let ok = r
                    .authenticate(NOW, connect(&own, "10.0.0.1"))
                    .await
                    .unwrap();
                assert_eq!(
                    ok.sharing,
                    Sharing::Alone,
                    "bound credentials are not recorded"
                );
                // Replayed for another unique: a bad signature (4 / 0x86).
                let mut replay = creds_with(m, pid, "dev2", NOW, &format!("secret-of-{pid}"));
                replay.password = own.password.clone();
                let e = r
                    .authenticate(NOW, connect(&replay, "10.0.0.9"))
                    .await
                    .unwrap_err();
                assert_eq!(e, AuthError::Credentials(CredentialError::BadSignature));
                assert_eq!(e.refusal().v5_reason_code(), 0x86);
                assert_eq!(e.refusal().v3_return_code(), 4);
            }
        }
    }

    #[tokio::test]
    async fn a_bound_product_refuses_the_seed_methods() {
        let r = registrar(BanPolicy::default());
        for m in [SignMethod::HmacSha1, SignMethod::HmacSha256] {
            let seed = creds_with(m, "b", "dev1", NOW, "secret-of-b");
            let e = r
                .authenticate(NOW, connect(&seed, "10.0.0.1"))
                .await
                .unwrap_err();
            assert_eq!(
                e,
                AuthError::UnboundSignature {
                    pid: "b".into(),
                    method: m.name()
                }
            );
            assert_eq!(e.refusal(), Refusal::BadCredentials);
            assert!(e.to_string().contains("device-bound"), "{e}");
        }
    }

    #[tokio::test]
    async fn refusals_name_their_cause() {
        let r = registrar(BanPolicy::default());
        let cases = [
            (
                creds("p", "d", NOW, "wrong"),
                AuthError::Credentials(CredentialError::BadSignature),
            ),
            (creds("nope", "d", NOW, "x"), AuthError::UnknownProduct),
            (
                creds("off", "d", NOW, "secret-of-off"),
                AuthError::DisabledProduct,
            ),
            (
                creds("p", "d", NOW - 901, "secret-of-p"),
                AuthError::Credentials(CredentialError::TsTooOld {
                    ts: NOW - 901,
                    now: NOW,
                }),
            ),
        ];
        for (c, want) in cases {
            assert_eq!(
                r.authenticate(NOW, connect(&c, "10.0.0.1")).await,
                Err(want)
            );
        }
        let c = creds("p", "d", NOW, "secret-of-p");
        let missing = Connect {
            password: None,
            ..connect(&c, "10.0.0.1")
        };
        assert_eq!(
            r.authenticate(NOW, missing).await,
            Err(AuthError::MissingCredentials)
        );
    }

    #[tokio::test]
    async fn a_ban_answers_failing_connects_and_serves_valid_ones() {
        let r = registrar(BanPolicy {
            failures: 5,
            window_secs: 60,
            duration_secs: 300,
        });
        let bad = creds("p", "d", NOW, "guess");
        for _ in 0..5 {
            assert!(matches!(
                r.authenticate(NOW, connect(&bad, "10.0.0.66")).await,
                Err(AuthError::Credentials(_))
            ));
        }
        assert!(r.is_banned("10.0.0.66".parse().unwrap(), NOW + 299));
        // Failing CONNECTs from the banned address are answered "banned"...
        for _ in 0..3 {
            let e = r
                .authenticate(NOW + 1, connect(&bad, "10.0.0.66"))
                .await
                .unwrap_err();
            assert_eq!(e, AuthError::Banned);
            assert_eq!(e.refusal(), Refusal::Banned);
        }
        // ...and every device whose credentials verify is served, same second or not.
        for i in 0..20 {
            let good = creds("p", &format!("ok{i}"), NOW, "secret-of-p");
            assert!(
                r.authenticate(NOW + 1, connect(&good, "10.0.0.66"))
                    .await
                    .is_ok()
            );
        }
        let good = creds("p", "d", NOW, "secret-of-p");
        assert!(
            r.authenticate(NOW + 1, connect(&good, "10.0.0.7"))
                .await
                .is_ok()
        );
        assert!(!r.is_banned("10.0.0.66".parse().unwrap(), NOW + 301));
        let stats = r.auth_stats();
        assert_eq!((stats.bans, stats.refused_banned), (1, 3));
    }
}
