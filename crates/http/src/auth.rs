//! Which credentials authenticate a request: the one place for it, used by the admin
//! API ([`crate::api`]) and the web console ([`crate::console`]) alike.
//!
//! - **An API token** in `Authorization: Bearer <token>`, on any request. Its scope
//!   ([`Scope`]) decides what it may do; a missing or unknown token is 401.
//! - **The console's session cookie** (`dynreg_session`), which holds the API token
//!   itself (`HttpOnly`, `SameSite=Strict`, `Path=/`, 12 hours, `Secure` over TLS).
//!   The API takes it for reading requests only (GET, HEAD), so that the console's
//!   pages can read the API and its event stream.
//! - **The CSRF token** of a session: `HMAC-SHA256(token, "dynreg console csrf")`,
//!   which every state-changing console request must carry ([`csrf_matches`]); a page
//!   of another site, which cannot read the token, cannot compute it.
//!
//! The token is looked up in the store on every request, so a revoked token ends its
//! sessions at once.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use dynreg_registrar::AuditEntry;
use dynreg_store::{Actor, Scope, TokenInfo};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::api::{Api, Problem};
use crate::unix_now;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "dynreg_session";
/// How long a session cookie lasts, seconds.
const SESSION_SECS: u64 = 12 * 3600;

/// The caller of a request: the token it presented, and its address.
#[derive(Debug, Clone)]
pub struct Caller {
    pub(crate) token: TokenInfo,
    pub(crate) origin: String,
}

impl Caller {
    /// Refuses (403) unless the token's scope allows `needed`.
    pub(crate) fn need(&self, needed: Scope) -> Result<(), Problem> {
        if self.token.scope.allows(needed) {
            Ok(())
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "token `{}` has scope {}; this needs {needed}",
                    self.token.name, self.token.scope
                ),
            ))
        }
    }

    /// Who the caller is in the audit log.
    pub(crate) fn actor(&self) -> Actor {
        Actor {
            name: self.token.name.clone(),
            origin: self.origin.clone(),
        }
    }

    /// The audit line of this caller doing `action` on `pid`'s `target` now.
    pub(crate) fn entry(&self, action: &str, pid: &str, target: &str) -> AuditEntry {
        self.actor().entry(unix_now(), action, pid, target)
    }

    /// The caller holding `token`, from `origin` (401 when the token is unknown or
    /// revoked).
    pub(crate) async fn of_token(api: &Api, token: &str, origin: String) -> Result<Self, Problem> {
        let hash = dynreg_store::admin::token_hash(token);
        let info = api
            .run(move |ops| ops.token_by_hash(&hash))
            .await?
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "the token is unknown or revoked",
                )
            })?;
        Ok(Self {
            token: info,
            origin,
        })
    }
}

/// The token of `Authorization: Bearer <token>`; for reading requests (GET, HEAD)
/// without that header, the session cookie's.
impl FromRequestParts<Api> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Problem> {
        let unauthorized = |m: &str| Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
        let token = match parts.headers.get(header::AUTHORIZATION) {
            Some(value) => value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or_else(|| unauthorized("the Authorization header is not `Bearer <token>`"))?
                .to_owned(),
            None => parts
                .method
                .is_safe()
                .then(|| session_token(&parts.headers))
                .flatten()
                .ok_or_else(|| {
                    unauthorized(
                        "send an API token as `Authorization: Bearer <token>` (`dynreg token create`)",
                    )
                })?,
        };
        Caller::of_token(api, &token, origin(parts)).await
    }
}

/// The client's address, as the server accepted it.
pub(crate) fn origin(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default()
}

/// The token of the session cookie, if the request has one.
pub(crate) fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (name, value) = c.trim().split_once('=')?;
            (name == COOKIE && !value.is_empty()).then(|| value.to_owned())
        })
}

/// The session cookie's `Set-Cookie`: holding `token` for 12 hours, or, with an empty
/// `token`, clearing it. `Secure` when the request came over TLS.
pub(crate) fn session_cookie(token: &str, tls: bool) -> HeaderValue {
    let secs = if token.is_empty() { 0 } else { SESSION_SECS };
    let secure = if tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={secs}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("dynreg_session=; Path=/; Max-Age=0"))
}

/// The CSRF token of a session: HMAC-SHA256 of a fixed text keyed by its API token.
pub(crate) fn csrf_of(token: &str) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    mac.update(b"dynreg console csrf");
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `presented` is the session's CSRF token `expected` (in constant time).
pub(crate) fn csrf_matches(presented: &str, expected: &str) -> bool {
    subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), expected.as_bytes()).into()
}

/// Whether the request came over TLS: the server itself speaks plain HTTP, so only
/// a TLS proxy's `X-Forwarded-Proto: https` says so.
pub(crate) fn came_over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}
