//! The web console: server-rendered pages for operators at `/` of the HTTP server.
//!
//! - **Pages** are HTML written with maud (escaped by default), compiled into the
//!   binary with their stylesheet and script (`app.css`, `app.js`, hand-written, no
//!   third-party code). Nothing is read from disk at run time.
//! - **Every action is the admin API's**: a page calls the API's handler for it (the
//!   same scope check, validation, store operation and audit line), and renders its
//!   answer; the console decides nothing of its own.
//! - **Signing in** takes an API token, which the session cookie then holds; which
//!   credentials authenticate a request (token, cookie, CSRF token) is
//!   `crate::auth`'s, shared with the API.
//! - **CSRF**: every request that changes something is taken as `Posted`, which
//!   refuses it (403) unless it carries the session's CSRF token, before its form is
//!   read; a handler that takes only `SignedIn` refuses anything but GET and HEAD.
//!   So a new form cannot forget the check.
//! - **Pages** mirror the API's modules: `products`, `pools`, `devices`, `expected`,
//!   `audit`, `tokens`, plus `sign_in`, `dashboard`, and `forms` (what they share).
//! - A read token sees no button it cannot use.

mod audit;
mod dashboard;
mod devices;
mod expected;
mod forms;
mod pools;
mod products;
mod sign_in;
mod tokens;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};

use crate::api::{Api, Caller, Problem};
use crate::auth;
use dynreg_store::Scope;
/// The largest CSV the console's uploads take (the API's limit: a pool or a list of
/// millions).
const MAX_UPLOAD_BYTES: usize = 512 * 1024 * 1024;

/// The console's routes (at `/`).
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/", get(dashboard::dashboard))
        .route(
            "/sign-in",
            get(sign_in::sign_in_form).post(sign_in::sign_in),
        )
        .route("/sign-out", post(sign_in::sign_out))
        .route(
            "/products",
            get(products::products).post(products::create_product),
        )
        .route(
            "/products/{pid}",
            get(products::product).post(products::update_product),
        )
        .route("/products/{pid}/enable", post(products::enable_product))
        .route("/products/{pid}/disable", post(products::disable_product))
        .route("/products/{pid}/rotate", post(products::rotate_secret))
        .route("/products/{pid}/retire", post(products::retire_secret))
        .route("/products/{pid}/generate", post(pools::generate_pool))
        .route(
            "/products/{pid}/import",
            post(pools::import_pool).layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES)),
        )
        .route("/products/{pid}/withdraw", post(pools::withdraw))
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
        .route("/products/{pid}/pool.csv", get(pools::export_pool))
        .route("/devices", get(devices::devices))
        .route("/devices/{pid}/{unique}", get(devices::device))
        .route(
            "/devices/{pid}/{unique}/revoke",
            post(devices::revoke_device),
        )
        .route("/devices/{pid}/{unique}/reset", post(devices::reset_device))
        .route("/audit", get(audit::audit))
        .route("/tokens", get(tokens::tokens).post(tokens::create_token))
        .route("/tokens/{name}/revoke", post(tokens::revoke_token))
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

/// A signed-in operator: the session cookie's token, valid now. Taken by the pages
/// that only read (GET, HEAD); a request that changes something is taken as
/// [`Posted`], which checks its CSRF token first, and a handler that takes
/// `SignedIn` for any other method refuses every request.
pub(crate) struct SignedIn {
    /// The API caller its token makes.
    pub(crate) caller: Caller,
    /// The CSRF token its forms carry.
    pub(crate) csrf: String,
    /// Whether the request came over TLS (the cookie's `Secure`).
    pub(crate) tls: bool,
}

impl SignedIn {
    /// Whether the token's scope allows `scope` (buttons it does not are not shown).
    pub(crate) fn can(&self, scope: Scope) -> bool {
        self.caller.token.scope.allows(scope)
    }

    /// The page refusing a request without this session's CSRF token.
    fn csrf_refused(&self) -> Response {
        self.page_problem(&Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the form's CSRF token is not this session's: reload the page and try again",
        ))
    }

    /// The signed-in operator of `parts`, or the sign-in page.
    async fn authenticate(parts: &Parts, api: &Api) -> Result<Self, Response> {
        let Some(token) = auth::session_token(&parts.headers) else {
            return Err(to_sign_in(&parts.uri, false));
        };
        match Caller::of_token(api, &token, auth::origin(parts)).await {
            Ok(caller) => Ok(Self {
                caller,
                csrf: auth::csrf_of(&token),
                tls: auth::came_over_tls(&parts.headers),
            }),
            Err(p) if p.status == StatusCode::UNAUTHORIZED => Err(to_sign_in(&parts.uri, true)),
            Err(p) => Err(p.into_response()),
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

impl FromRequestParts<Api> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Response> {
        let s = Self::authenticate(parts, api).await?;
        if parts.method.is_safe() {
            Ok(s)
        } else {
            Err(s.csrf_refused())
        }
    }
}

/// The header in which a page's script sends the CSRF token with an upload.
const CSRF_HEADER: &str = "x-csrf-token";

/// A request that changes something, from a signed-in operator's own page: taken only
/// when it carries the session's CSRF token, in the form's `csrf` field or, for an
/// upload by a page's script (`data-upload` in app.js), in the `x-csrf-token` header.
/// `B` is the rest of the request: a `Form<F>` or the uploaded `Bytes`. A console
/// handler that changes something takes this, so it cannot forget the check.
pub(crate) struct Posted<B>(pub(crate) SignedIn, pub(crate) B);

impl<B> FromRequest<Api> for Posted<B>
where
    B: FromRequest<Api, Rejection: IntoResponse>,
{
    type Rejection = Response;

    async fn from_request(req: Request, api: &Api) -> Result<Self, Response> {
        let (parts, body) = req.into_parts();
        let s = SignedIn::authenticate(&parts, api).await?;
        let header = parts
            .headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (req, presented) = match header {
            Some(h) => (Request::from_parts(parts, body), h),
            None => {
                let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), api)
                    .await
                    .map_err(IntoResponse::into_response)?;
                let field = form_urlencoded::parse(&bytes)
                    .find(|(k, _)| k == "csrf")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                (Request::from_parts(parts, bytes.into()), field)
            }
        };
        if !auth::csrf_matches(&presented, &s.csrf) {
            return Err(s.csrf_refused());
        }
        let b = B::from_request(req, api)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self(s, b))
    }
}

/// A redirect to the sign-in page that comes back to `uri` (and, when the session's
/// token no longer works, clears its cookie).
fn to_sign_in(uri: &Uri, clear: bool) -> Response {
    let back = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut r = see_other(&format!("/sign-in?next={}", enc(back)));
    if clear {
        r.headers_mut()
            .insert(header::SET_COOKIE, auth::session_cookie("", false));
    }
    r
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

/// The bytes [`enc`] leaves as they are: RFC 3986's unreserved characters.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a query value or a path segment.
pub(crate) fn enc(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, UNRESERVED).to_string()
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
