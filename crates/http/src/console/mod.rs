//! The web console: server-rendered pages for operators at `/` of the HTTP server.
//!
//! - **Pages** are HTML written with maud (escaped by default), compiled into the
//!   binary with their stylesheet and script (`app.css`, `app.js`, hand-written, no
//!   third-party code). Nothing is read from disk at run time.
//! - **Every action is the admin API's**: a page calls the API's handler for it (the
//!   same scope check, validation, store operation and audit line), and renders its
//!   answer; the console decides nothing of its own.
//! - **Signing in** takes an API token. The session cookie (`dynreg_session`) holds
//!   the token itself, `HttpOnly`, `SameSite=Strict`, `Path=/`, for 12 hours, and
//!   `Secure` when the request came over TLS (a proxy's `X-Forwarded-Proto: https`).
//!   The token is checked against the store on every request, so a revoked token ends
//!   its sessions at once.
//! - **CSRF**: every form carries `HMAC-SHA256(token, "dynreg console csrf")`, checked
//!   on every POST (on top of `SameSite=Strict`); a session without the token cannot
//!   compute it.
//! - The API accepts the session cookie for reading requests only (GET, HEAD): the
//!   dashboard's live registrations come from `GET /api/v1/registrations/stream`.
//! - A read token sees no button it cannot use.

mod expected;
mod pages;

use std::fmt::Write as _;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use maud::{DOCTYPE, Markup, html};
use sha2::Sha256;

use crate::api::{Api, Caller, Problem};
use dynreg_store::Scope;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "dynreg_session";
/// How long a session cookie lasts, seconds.
const SESSION_SECS: u64 = 12 * 3600;
/// The largest CSV the console's uploads take (the API's limit: a pool or a list of
/// millions).
const MAX_UPLOAD_BYTES: usize = 512 * 1024 * 1024;

/// The console's routes (at `/`).
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/", get(pages::dashboard))
        .route("/sign-in", get(pages::sign_in_form).post(pages::sign_in))
        .route("/sign-out", post(pages::sign_out))
        .route(
            "/products",
            get(pages::products).post(pages::create_product),
        )
        .route(
            "/products/{pid}",
            get(pages::product).post(pages::update_product),
        )
        .route("/products/{pid}/enable", post(pages::enable_product))
        .route("/products/{pid}/disable", post(pages::disable_product))
        .route("/products/{pid}/rotate", post(pages::rotate_secret))
        .route("/products/{pid}/retire", post(pages::retire_secret))
        .route("/products/{pid}/generate", post(pages::generate_pool))
        .route(
            "/products/{pid}/import",
            post(pages::import_pool).layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES)),
        )
        .route("/products/{pid}/withdraw", post(pages::withdraw))
        .route(
            "/products/{pid}/expected",
            get(expected::page)
                .post(expected::upload)
                .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES)),
        )
        .route(
            "/products/{pid}/expected/{unique}/remove",
            post(expected::remove),
        )
        .route("/products/{pid}/pool.csv", get(pages::export_pool))
        .route("/devices", get(pages::devices))
        .route("/devices/{pid}/{unique}", get(pages::device))
        .route("/devices/{pid}/{unique}/revoke", post(pages::revoke_device))
        .route("/devices/{pid}/{unique}/reset", post(pages::reset_device))
        .route("/audit", get(pages::audit))
        .route("/tokens", get(pages::tokens).post(pages::create_token))
        .route("/tokens/{name}/revoke", post(pages::revoke_token))
        .route("/console/app.css", get(css))
        .route("/console/app.js", get(js))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(api)
}

/// What every console response carries: no script or style but the console's own,
/// no framing, no sniffing, no referrer to other sites.
async fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", include_str!("app.css"))
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("app.js"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
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

/// The CSRF token of a session: HMAC-SHA256 of a fixed text keyed by its API token.
fn csrf_of(token: &str) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    mac.update(b"dynreg console csrf");
    dynreg_store::admin::hex(&mac.finalize().into_bytes())
}

/// A signed-in operator.
pub(crate) struct Session {
    /// The API caller its token makes.
    pub(crate) caller: Caller,
    /// The CSRF token its forms carry.
    pub(crate) csrf: String,
    /// Whether the request came over TLS (the cookie's `Secure`).
    pub(crate) tls: bool,
}

impl Session {
    /// Whether the token's scope allows `scope` (buttons it does not are not shown).
    pub(crate) fn can(&self, scope: Scope) -> bool {
        self.caller.token.scope.allows(scope)
    }

    /// Refuses a form whose CSRF token is not this session's.
    pub(crate) fn check(&self, csrf: &str) -> Result<(), Refused> {
        if subtle::ConstantTimeEq::ct_eq(csrf.as_bytes(), self.csrf.as_bytes()).into() {
            Ok(())
        } else {
            Err(Refused::from(self.page_problem(&Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the form's CSRF token is not this session's: reload the page and try again",
            ))))
        }
    }

    /// An error page for `problem`.
    pub(crate) fn page_problem(&self, problem: &Problem) -> Response {
        let body = html! {
            h1 { "Error " (problem.status.as_u16()) }
            p.flash.error role="alert" { (problem.detail) }
            p { a href="/" { "Dashboard" } }
        };
        (
            problem.status,
            axum::response::Html(self.page("Error", "", &body).into_string()),
        )
            .into_response()
    }

    /// A whole page: the navigation (what the token may see), `title` and `body`.
    pub(crate) fn page(&self, title: &str, section: &str, body: &Markup) -> Markup {
        let admin = self.can(Scope::Admin);
        let nav = [
            ("/", "Dashboard", ""),
            ("/products", "Products", "products"),
            ("/devices", "Devices", "devices"),
            ("/audit", "Audit log", "audit"),
        ];
        layout(
            title,
            &html! {
                header.top {
                    a.brand href="/" { "dynreg" }
                    nav aria-label="Main" {
                        ul {
                            @for (href, label, key) in nav {
                                li { a href=(href) aria-current=[(key == section || (key.is_empty() && section == "dashboard")).then_some("page")] { (label) } }
                            }
                            @if admin {
                                li { a href="/tokens" aria-current=[(section == "tokens").then_some("page")] { "Tokens" } }
                            }
                        }
                    }
                    form.signout method="post" action="/sign-out" {
                        (self.csrf_field())
                        span.who { (self.caller.token.name) " (" (self.caller.token.scope) ")" }
                        button type="submit" { "Sign out" }
                    }
                }
                main id="main" { (body) }
            },
        )
    }

    /// The hidden CSRF field of a form.
    pub(crate) fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }
}

/// The HTML document around `content`.
pub(crate) fn layout(title: &str, content: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · dynreg" }
                link rel="icon" href="data:,";
                link rel="stylesheet" href="/console/app.css";
                script src="/console/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                (content)
            }
        }
    }
}

/// A page that answers instead of the one asked for (an error, a refusal), boxed:
/// a response is large.
pub(crate) struct Refused(Box<Response>);

impl From<Response> for Refused {
    fn from(r: Response) -> Self {
        Self(Box::new(r))
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// Whether the request came over TLS: the server itself speaks plain HTTP, so only
/// a TLS proxy's `X-Forwarded-Proto: https` says so.
pub(crate) fn came_over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

impl FromRequestParts<Api> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Response> {
        let Some(token) = session_token(&parts.headers) else {
            return Err(to_sign_in(&parts.uri, false));
        };
        match Caller::of_token(api, &token, crate::api::origin(parts)).await {
            Ok(caller) => Ok(Self {
                caller,
                csrf: csrf_of(&token),
                tls: came_over_tls(&parts.headers),
            }),
            Err(p) if p.status == StatusCode::UNAUTHORIZED => Err(to_sign_in(&parts.uri, true)),
            Err(p) => Err(p.into_response()),
        }
    }
}

/// A redirect to the sign-in page that comes back to `uri` (and, when the session's
/// token no longer works, clears its cookie).
fn to_sign_in(uri: &Uri, clear: bool) -> Response {
    let back = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut r = see_other(&format!("/sign-in?next={}", enc(back)));
    if clear {
        r.headers_mut()
            .insert(header::SET_COOKIE, cookie("", 0, false));
    }
    r
}

/// The `Set-Cookie` value of a session cookie holding `token` for `secs`.
fn cookie(token: &str, secs: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={secs}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("dynreg_session=; Path=/; Max-Age=0"))
}

/// `303 See Other` to `to`.
pub(crate) fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `to` with a message shown once at its top: `done` (success) or `error`.
pub(crate) fn back_to(to: &str, result: Result<String, Problem>) -> Response {
    let sep = if to.contains('?') { '&' } else { '?' };
    match result {
        Ok(done) => see_other(&format!("{to}{sep}done={}", enc(&done))),
        Err(p) => see_other(&format!("{to}{sep}error={}", enc(&p.detail))),
    }
}

/// Percent-encodes a query value or a path segment.
pub(crate) fn enc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Unix seconds as RFC 3339 UTC.
pub(crate) fn time(secs: u64) -> String {
    dynreg_registrar::model::rfc3339(secs)
}

/// A `<time>` element.
pub(crate) fn time_el(secs: u64) -> Markup {
    let t = time(secs);
    html! { time datetime=(t) { (t.replace('T', " ").trim_end_matches('Z')) " UTC" } }
}

/// Renders a page that must not be cached (a secret shown once).
pub(crate) fn no_store(markup: Markup) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::response::Html(markup.into_string()),
    )
        .into_response()
}

/// The session cookie's `Set-Cookie` after signing in or out.
pub(crate) fn session_cookie(token: &str, tls: bool) -> HeaderValue {
    if token.is_empty() {
        cookie("", 0, tls)
    } else {
        cookie(token, SESSION_SECS, tls)
    }
}
