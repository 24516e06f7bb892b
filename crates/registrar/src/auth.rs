//! Whether a CONNECT is allowed (PROTOCOL.md section 2), decided once for every front
//! door: the embedded endpoint calls [`Registrar::authenticate`], and so will every
//! broker hook.
//!
//! In order: the source address must not be banned; the clientId and username must
//! parse and agree on the pid; the product must exist and be enabled; the ts must lie
//! in the product's window and the password must be its signature (constant time); the
//! credential must not have been accepted before for another unique (the replay
//! guard). A refusal counts towards the address's ban ([`crate::ban`]) unless it is the
//! service's own fault (storage unavailable).

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use dynreg_proto::Refusal;
use dynreg_proto::credentials::{CredentialError, Credentials, check_ts, verify_password};
use tracing::warn;

use crate::ban::{BanPolicy, Failure};
use crate::model::SecretMatch;
use crate::registrar::Registrar;
use crate::replay::{Claim, CredentialUse};
use crate::store::{Store, StoreError};

/// How CONNECTs are decided beyond the credentials themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthPolicy {
    /// The failed-authentication ban.
    pub ban: BanPolicy,
    /// Whether the replay guard is on (PROTOCOL.md section 2).
    ///
    /// Because the password does not cover the unique, two honest devices of one
    /// product that sign with the same ts (the same second) present the same
    /// credential: with the guard on, the second is refused like a replay and must try
    /// again with a fresh ts. A product therefore takes about one new credential per
    /// second per sign method and product secret. Turn it off only where CONNECTs
    /// cannot be sniffed (TLS only) and bursts of one product matter more; see
    /// docs/security.md.
    pub replay_guard: bool,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        Self {
            ban: BanPolicy::default(),
            replay_guard: true,
        }
    }
}

/// A device whose CONNECT was allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The pid of its clientId and username.
    pub pid: String,
    /// The unique of its clientId.
    pub unique: String,
    /// True when the same credential had been accepted before for the same unique (a
    /// reconnect, e.g. after a lost reply).
    pub repeat: bool,
}

/// Why a CONNECT was refused. For the log and counters only: the client is told
/// nothing beyond [`AuthError::refusal`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The source address is banned after too many refused CONNECTs.
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
    /// The credential was accepted before for another unique.
    #[error(
        "credential replayed: accepted before for unique {first_unique}, now presented for {unique}"
    )]
    Replayed {
        /// The unique the credential was first accepted for.
        first_unique: String,
        /// The unique it is presented with now.
        unique: String,
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
    /// The product or the replay guard could not be read.
    #[error("storage unavailable: {0}")]
    Store(StoreError),
}

impl AuthError {
    /// The CONNACK refusal (PROTOCOL.md section 2).
    pub fn refusal(&self) -> Refusal {
        match self {
            Self::Banned => Refusal::Banned,
            Self::MissingCredentials
            | Self::Replayed { .. }
            | Self::PreviousSecretExpired { .. } => Refusal::BadCredentials,
            Self::Credentials(e) => e.refusal(),
            Self::UnknownProduct | Self::DisabledProduct => Refusal::NotAuthorized,
            Self::Store(_) => Refusal::ServerUnavailable,
        }
    }

    /// Whether the refusal counts towards the address's ban: every refusal that is the
    /// client's doing, except a replay (honest devices of one product that sign in the
    /// same second collide, and a factory line behind one address must not be banned
    /// for that; a replayer gains nothing by repeating), a ban already in force, or the
    /// service's own failure.
    pub fn counts_against_address(&self) -> bool {
        !matches!(self, Self::Banned | Self::Store(_) | Self::Replayed { .. })
    }

    /// Every value [`AuthError::cause`] takes.
    pub const CAUSES: [&'static str; 10] = [
        "banned",
        "missing_credentials",
        "stale_ts",
        "bad_signature",
        "malformed",
        "unknown_product",
        "disabled_product",
        "replayed",
        "previous_secret_expired",
        "store_unavailable",
    ];

    /// The refusal's cause as a metrics label: `banned`, `missing_credentials`,
    /// `malformed` (clientId or username), `stale_ts`, `bad_signature`,
    /// `unknown_product`, `disabled_product`, `replayed`, `previous_secret_expired`,
    /// `store_unavailable`.
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
            Self::Replayed { .. } => "replayed",
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
    /// Of those, replayed credentials.
    pub replayed: AtomicU64,
    /// Of those, refused because the address was banned.
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
    /// Of those, replayed credentials.
    pub replayed: u64,
    /// Of those, refused because the address was banned.
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
            replayed: r(&self.replayed),
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
        match &result {
            Ok(_) => {
                counters.allowed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                crate::metrics::metrics().connect_refused(e.cause());
                match e {
                    AuthError::Replayed { .. } => {
                        counters.replayed.fetch_add(1, Ordering::Relaxed);
                    }
                    AuthError::Banned => {
                        counters.refused_banned.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                if let (Some(ip), true) = (peer, e.counts_against_address()) {
                    if let Failure::BannedUntil(until) = self.bans.record_failure(ip, now) {
                        counters.bans.fetch_add(1, Ordering::Relaxed);
                        let p = self.bans.policy();
                        warn!(
                            peer = %ip,
                            until,
                            failures = p.failures,
                            window_secs = p.window_secs,
                            "address banned for {} s after too many refused CONNECTs",
                            p.duration_secs
                        );
                    }
                }
            }
        }
        result
    }

    /// Whether `ip` is banned at `now`: a front door may refuse its connections before
    /// reading anything from them.
    pub fn is_banned(&self, ip: IpAddr, now: u64) -> bool {
        self.bans.is_banned(ip, now)
    }

    /// The CONNECT policy in force.
    pub fn auth_policy(&self) -> AuthPolicy {
        AuthPolicy {
            ban: self.bans.policy(),
            replay_guard: self.replay_guard,
        }
    }

    /// The CONNECT decision's counters.
    pub fn auth_stats(&self) -> AuthStats {
        self.auth_counters.snapshot()
    }

    async fn decide_connect(&self, now: u64, c: Connect<'_>) -> Result<Authenticated, AuthError> {
        if let Some(ip) = c.peer {
            if self.bans.is_banned(ip, now) {
                return Err(AuthError::Banned);
            }
        }
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
        check_ts(creds.ts, now, product.ts_window).map_err(AuthError::Credentials)?;
        // The current secret, then (during and after a rotation's grace period) the
        // previous one; each comparison is constant-time.
        let matched = product.match_secret(now, |secret| {
            verify_password(
                creds.sign_method,
                secret.expose().as_bytes(),
                creds.pid,
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
        let claim = if self.replay_guard {
            self.store()
                .claim_credential(
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
                .await
                .map_err(AuthError::Store)?
        } else {
            Claim::First
        };
        if let Claim::Replayed { first_unique } = claim {
            return Err(AuthError::Replayed {
                first_unique,
                unique: creds.unique.to_owned(),
            });
        }
        Ok(Authenticated {
            pid: creds.pid.to_owned(),
            unique: creds.unique.to_owned(),
            repeat: claim == Claim::Repeat,
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
            AuthError::Replayed {
                first_unique: "a".into(),
                unique: "b".into(),
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
        registrar_with(AuthPolicy {
            ban,
            replay_guard: true,
        })
    }

    fn registrar_with(policy: AuthPolicy) -> Registrar<MemoryStore> {
        let store = MemoryStore::new();
        let mut p = product("p", SourceMode::Generate);
        p.rereg = ReregPolicy::Always;
        store.put_product(p);
        let mut off = product("off", SourceMode::Generate);
        off.enabled = false;
        store.put_product(off);
        Registrar::with_policy(store, policy)
    }

    struct Creds {
        client_id: String,
        username: String,
        password: String,
    }

    fn creds(pid: &str, unique: &str, ts: u64, secret: &str) -> Creds {
        Creds {
            client_id: format!("register_{pid}_{unique}"),
            username: format!("{pid}|signMethod=hmacSha256,ts={ts}"),
            password: sign(SignMethod::HmacSha256, secret.as_bytes(), pid, ts).to_string(),
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
        let r = Registrar::with_policy(
            store,
            AuthPolicy {
                ban: BanPolicy::default(),
                replay_guard: true,
            },
        );
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
    async fn a_captured_credential_works_for_its_own_unique_only() {
        let r = registrar(BanPolicy::default());
        let good = creds("p", "dev1", NOW, "secret-of-p");
        let ok = r
            .authenticate(NOW, connect(&good, "10.0.0.1"))
            .await
            .unwrap();
        assert_eq!(
            (ok.pid.as_str(), ok.unique.as_str(), ok.repeat),
            ("p", "dev1", false)
        );
        // The device reconnects with the same credential (its reply was lost).
        let again = r
            .authenticate(NOW + 5, connect(&good, "10.0.0.1"))
            .await
            .unwrap();
        assert!(again.repeat);
        // Someone who sniffed it signs up another unique, in either case of hex.
        let mut stolen = creds("p", "attacker", NOW, "secret-of-p");
        stolen.password = good.password.to_uppercase();
        let e = r
            .authenticate(NOW + 6, connect(&stolen, "10.0.0.9"))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            AuthError::Replayed {
                first_unique: "dev1".into(),
                unique: "attacker".into()
            }
        );
        assert_eq!(e.refusal(), Refusal::BadCredentials);
        assert!(e.to_string().contains("dev1") && e.to_string().contains("attacker"));
        // A fresh ts is a fresh credential.
        let next = creds("p", "dev2", NOW + 1, "secret-of-p");
        assert!(
            r.authenticate(NOW + 6, connect(&next, "10.0.0.1"))
                .await
                .is_ok()
        );
        let stats = r.auth_stats();
        assert_eq!((stats.allowed, stats.refused, stats.replayed), (3, 1, 1));
    }

    #[tokio::test]
    async fn replays_do_not_ban_and_the_guard_can_be_off() {
        let r = registrar(BanPolicy {
            failures: 3,
            window_secs: 60,
            duration_secs: 300,
        });
        let first = creds("p", "u0", NOW, "secret-of-p");
        r.authenticate(NOW, connect(&first, "10.0.0.5"))
            .await
            .unwrap();
        // Devices behind one NAT that signed in the same second: refused, never banned.
        for i in 1..10 {
            let same_second = creds("p", &format!("u{i}"), NOW, "secret-of-p");
            assert!(matches!(
                r.authenticate(NOW, connect(&same_second, "10.0.0.5")).await,
                Err(AuthError::Replayed { .. })
            ));
        }
        assert!(!r.is_banned("10.0.0.5".parse().unwrap(), NOW));

        let off = registrar_with(AuthPolicy {
            ban: BanPolicy::default(),
            replay_guard: false,
        });
        for i in 0..10 {
            let same_second = creds("p", &format!("u{i}"), NOW, "secret-of-p");
            assert!(
                off.authenticate(NOW, connect(&same_second, "10.0.0.5"))
                    .await
                    .is_ok()
            );
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
    async fn repeated_failures_ban_the_address_not_others() {
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
        let good = creds("p", "d", NOW, "secret-of-p");
        assert_eq!(
            r.authenticate(NOW + 1, connect(&good, "10.0.0.66")).await,
            Err(AuthError::Banned),
            "even good credentials, while banned"
        );
        assert_eq!(AuthError::Banned.refusal(), Refusal::Banned);
        assert!(r.is_banned("10.0.0.66".parse().unwrap(), NOW + 299));
        assert!(
            r.authenticate(NOW + 1, connect(&good, "10.0.0.7"))
                .await
                .is_ok()
        );
        assert!(
            r.authenticate(NOW + 301, connect(&good, "10.0.0.66"))
                .await
                .is_ok()
        );
        let stats = r.auth_stats();
        assert_eq!((stats.bans, stats.refused_banned), (1, 1));
    }
}
