//! Broker hooks: a broker that devices connect to asks dynreg whether a CONNECT is
//! allowed and whether a client may use a topic (docs/integrations/).
//!
//! - [`emqx`]: EMQX 5 HTTP authentication and authorization.
//! - [`rabbitmq`]: RabbitMQ's `rabbitmq_auth_backend_http`.
//! - [`vernemq`]: VerneMQ's webhooks.
//!
//! A CONNECT is decided by [`Registrar::authenticate`], as at the embedded endpoint:
//! parse, product, enabled, signatures setting, ts window, HMAC with the grace secrets,
//! the record of shared credentials, ban.
//! A topic is decided by [`access`] from the identity the broker vouches for (the
//! clientId it authenticated through the CONNECT hook): a registration client may
//! publish to its own request topic and subscribe to its own response topic, at QoS 0
//! or 1, never retained, never through a wildcard. Clients that are not registration
//! clients (no `register_` clientId prefix) are left to the broker's other
//! authenticators: `ignore` for EMQX, `deny` for RabbitMQ (which then asks its next
//! backend).
//!
//! No secret is ever logged: a refused CONNECT is logged with its clientId, username
//! and cause only.

pub mod emqx;
pub mod rabbitmq;
pub mod vernemq;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use dynreg_proto::credentials::{CLIENT_ID_PREFIX, ClientId, Username};
use dynreg_proto::{Topic, TopicKind};
use dynreg_registrar::metrics::Metrics;
use dynreg_registrar::{AuthError, Authenticated, Connect, Registrar, Store};
use subtle::ConstantTimeEq;

/// The largest hook request body read (brokers send a few hundred bytes).
pub const MAX_HOOK_BODY: usize = 16 * 1024;

/// How the hooks are protected.
#[derive(Clone, Default)]
pub struct HookAuth {
    token: Option<Arc<str>>,
}

impl fmt::Debug for HookAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookAuth")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl HookAuth {
    /// No token: any caller that reaches the address may ask (bind loopback, or a
    /// network only the brokers reach).
    pub fn open() -> Self {
        Self { token: None }
    }

    /// Requests must carry `token`, as `Authorization: Bearer <token>` (EMQX: a
    /// header in the authenticator's settings) or as the password of HTTP basic
    /// authentication with any user name (RabbitMQ: `http://dynreg:<token>@host/...`
    /// in the backend's URLs).
    pub fn token(token: &str) -> Self {
        Self {
            token: Some(Arc::from(token)),
        }
    }

    /// Whether a token is required.
    pub fn is_protected(&self) -> bool {
        self.token.is_some()
    }

    /// Whether an `Authorization` header value carries the token (constant time).
    fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(value) = authorization.and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let presented: Vec<u8> = if let Some(bearer) = strip_scheme(value, "bearer") {
            bearer.trim().as_bytes().to_vec()
        } else if let Some(basic) = strip_scheme(value, "basic") {
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim()) else {
                return false;
            };
            match decoded.iter().position(|&b| b == b':') {
                Some(i) => decoded[i + 1..].to_vec(),
                None => return false,
            }
        } else {
            return false;
        };
        presented.ct_eq(token.as_bytes()).into()
    }
}

/// The rest of an `Authorization` value after `scheme` (any case) and a space.
fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = value.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then_some(rest)
}

async fn require_token(State(auth): State<HookAuth>, req: Request, next: Next) -> Response {
    if auth.admits(req.headers().get(header::AUTHORIZATION)) {
        return next.run(req).await;
    }
    tracing::warn!(path = %req.uri().path(), "hook request without the hook token refused (401)");
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Bearer, Basic realm=\"dynreg hooks\"",
        )],
        "the hooks need the token of --hook-token\n",
    )
        .into_response()
}

/// The hook routes (mounted under `/hooks`).
pub fn router<S: Store>(registrar: Arc<Registrar<S>>, auth: HookAuth) -> Router {
    Router::new()
        .merge(emqx::router())
        .merge(rabbitmq::router())
        .merge(vernemq::router())
        .with_state(registrar)
        .layer(DefaultBodyLimit::max(MAX_HOOK_BODY))
        .layer(middleware::from_fn_with_state(auth, require_token))
}

/// Whether `client_id` is a registration client's (PROTOCOL.md section 2): the others
/// belong to the platform's other authenticators.
pub fn is_registration_client(client_id: &str) -> bool {
    client_id.starts_with(CLIENT_ID_PREFIX)
}

/// What a device asks to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish (its request).
    Publish,
    /// Subscribe (to its response).
    Subscribe,
}

impl Action {
    /// The topic of the device's own that the action may use.
    pub fn kind(self) -> TopicKind {
        match self {
            Self::Publish => TopicKind::Request,
            Self::Subscribe => TopicKind::Response,
        }
    }
}

/// A topic decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed.
    Allow,
    /// Refused, with why (for the log).
    Deny(&'static str),
    /// Not a registration client: another authorizer decides.
    Ignore,
}

/// The device a broker vouches for: the pid and unique of the clientId it
/// authenticated, checked against the username's pid when the broker sends it.
pub fn identity<'a>(
    client_id: &'a str,
    username: Option<&str>,
) -> Result<ClientId<'a>, &'static str> {
    let id = ClientId::parse(client_id).map_err(|_| "malformed registration clientId")?;
    if let Some(u) = username {
        let pid = Username::parse(u).map_err(|_| "malformed username")?.pid;
        if pid != id.pid {
            return Err("the username's pid is not the clientId's");
        }
    }
    Ok(id)
}

/// Whether the client `client_id` (with `username`, when the broker sends it) may do
/// `action` on `topic` at `qos`, retained or not: PROTOCOL.md section 3.
pub fn access(
    client_id: &str,
    username: Option<&str>,
    action: Action,
    topic: &str,
    qos: u8,
    retain: bool,
) -> Verdict {
    if !is_registration_client(client_id) {
        return Verdict::Ignore;
    }
    let id = match identity(client_id, username) {
        Ok(id) => id,
        Err(why) => return Verdict::Deny(why),
    };
    if qos > 1 {
        return Verdict::Deny("QoS 2 is not supported");
    }
    if retain {
        return Verdict::Deny("retained messages are not allowed");
    }
    if Topic::is_own(topic, id.pid, id.unique, action.kind()) {
        Verdict::Allow
    } else {
        Verdict::Deny("not the client's own topic")
    }
}

/// [`access`] for `broker`'s topic hook, counted in `dynreg_hook_calls_total`.
#[allow(clippy::too_many_arguments)] // the hook's fields, and where to count it
pub(crate) fn topic_access(
    metrics: &Metrics,
    broker: &'static str,
    client_id: &str,
    username: Option<&str>,
    action: Action,
    topic: &str,
    qos: u8,
    retain: bool,
) -> Verdict {
    let verdict = access(client_id, username, action, topic, qos, retain);
    let result = match verdict {
        Verdict::Allow => "allow",
        Verdict::Deny(_) => "deny",
        Verdict::Ignore => "ignore",
    };
    metrics.hook_call(broker, "topic", result);
    verdict
}

/// Decides a CONNECT a broker asks about ([`Registrar::authenticate`]) and logs a
/// refusal or a storage failure with its cause (never the password).
async fn authenticate<S: Store>(
    registrar: &Registrar<S>,
    hook: &'static str,
    client_id: &str,
    username: Option<&str>,
    password: Option<&str>,
    peer: Option<IpAddr>,
) -> Result<Authenticated, AuthError> {
    let decided = registrar
        .authenticate(
            crate::unix_now(),
            Connect {
                client_id,
                username,
                password: password.map(str::as_bytes),
                peer,
            },
        )
        .await;
    let result = match &decided {
        Ok(_) => "allow",
        Err(AuthError::Store(_)) => "error",
        Err(_) => "deny",
    };
    registrar.metrics().hook_call(hook, "connect", result);
    match &decided {
        Ok(_) => tracing::debug!(hook, client_id, "CONNECT allowed"),
        Err(AuthError::Store(e)) => {
            tracing::warn!(hook, client_id, error = %e, "CONNECT could not be checked: storage unavailable");
        }
        Err(e) => tracing::info!(hook, client_id, username, peer = ?peer, "CONNECT refused: {e}"),
    }
    decided
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "register_p1_u1";
    const U: &str = "p1|signMethod=hmacSha256,ts=123";

    #[test]
    fn own_topics_only() {
        let req = "register/v2/p1/u1/register";
        let resp = "register/v2/p1/u1/register_response";
        assert_eq!(
            access(C, Some(U), Action::Publish, req, 1, false),
            Verdict::Allow
        );
        assert_eq!(
            access(C, None, Action::Subscribe, resp, 0, false),
            Verdict::Allow
        );
        for (action, topic, qos, retain) in [
            (Action::Publish, resp, 1, false),
            (Action::Subscribe, req, 1, false),
            (Action::Publish, "register/v2/p1/u2/register", 0, false),
            (
                Action::Subscribe,
                "register/v2/p1/+/register_response",
                0,
                false,
            ),
            (Action::Subscribe, "register/v2/#", 0, false),
            (Action::Publish, req, 2, false),
            (Action::Publish, req, 1, true),
        ] {
            assert!(
                matches!(
                    access(C, Some(U), action, topic, qos, retain),
                    Verdict::Deny(_)
                ),
                "{action:?} {topic} qos {qos} retain {retain}"
            );
        }
        assert_eq!(
            access("sensor-7", Some("x"), Action::Publish, req, 0, false),
            Verdict::Ignore
        );
        assert!(matches!(
            access(
                C,
                Some("p2|signMethod=hmacSha256,ts=1"),
                Action::Publish,
                req,
                0,
                false
            ),
            Verdict::Deny("the username's pid is not the clientId's")
        ));
        assert!(matches!(
            access(
                "register_nounderscore",
                None,
                Action::Publish,
                req,
                0,
                false
            ),
            Verdict::Deny(_)
        ));
    }

    #[test]
    fn the_token_as_bearer_or_basic_password() {
        let auth = HookAuth::token("s3cret");
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(auth.admits(Some(&h("Bearer s3cret"))));
        assert!(auth.admits(Some(&h("bearer  s3cret"))));
        let basic = base64::engine::general_purpose::STANDARD.encode("dynreg:s3cret");
        assert!(auth.admits(Some(&h(&format!("Basic {basic}")))));
        let wrong = base64::engine::general_purpose::STANDARD.encode("s3cret:x");
        assert!(!auth.admits(Some(&h(&format!("Basic {wrong}")))));
        assert!(!auth.admits(Some(&h("Bearer s3cre"))));
        assert!(!auth.admits(Some(&h("s3cret"))));
        assert!(!auth.admits(None));
        assert!(HookAuth::open().admits(None));
        assert!(!format!("{auth:?}").contains("s3cret"));
    }
}
