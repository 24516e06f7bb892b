//! The admin API under `/api/v1`: JSON over HTTP for everything an operator does with
//! the store (products, pools, devices, registrations, the audit log, API tokens),
//! through the same backend-neutral operations as the CLI ([`Operator`]), and an
//! OpenAPI 3.1 document generated from the handlers at `/api/v1/openapi.json`.
//!
//! - Every request carries `Authorization: Bearer <token>`; the token's scope
//!   ([`Scope`]) decides what it may do (read < write < admin). A missing or unknown
//!   token gets 401, a token without the scope 403.
//! - Every error is an RFC 9457 problem document ([`Problem`]) with a stable `code`.
//! - Store work runs on tokio's blocking threads, so that a long operation (a pool of a
//!   million triplets) never stalls the server.
//! - Every change is written to the audit log with the token's name and the client's
//!   address ([`dynreg_store::audited`]).

pub(crate) mod devices;
pub(crate) mod expected;
pub(crate) mod products;
pub(crate) mod records;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;

use crate::unix_now;
use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dynreg_registrar::AuditEntry;
use dynreg_store::{Actor, Operator, Scope, TokenInfo};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi, Server};
use utoipa::{Modify, ToSchema};
use utoipa_axum::router::OpenApiRouter;

/// The store the API works on: any backend, as the operator's operations.
pub type Ops = Arc<dyn Operator + Send + Sync>;

/// The API's shared state.
#[derive(Clone)]
pub struct Api {
    pub(crate) ops: Ops,
    pub(crate) public_metrics: bool,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("store", &self.ops.location())
            .finish()
    }
}

impl Api {
    /// The API over `ops`.
    pub fn new(ops: Ops) -> Self {
        Self {
            ops,
            public_metrics: false,
        }
    }

    /// Serves `/metrics` to anyone who reaches the address (a Prometheus without a
    /// token); by default it needs a read token like the API.
    #[must_use]
    pub fn with_public_metrics(mut self, public: bool) -> Self {
        self.public_metrics = public;
        self
    }

    /// Runs blocking store work on a blocking thread.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn Operator) -> Result<T, dynreg_store::Error> + Send + 'static,
    ) -> Result<T, Problem> {
        let ops = self.ops.clone();
        match tokio::task::spawn_blocking(move || work(&*ops)).await {
            Ok(r) => r.map_err(Problem::from),
            Err(e) => Err(Problem::internal(format!("the store task failed: {e}"))),
        }
    }

    /// Runs an operator action and records it in the audit log (see
    /// [`dynreg_store::audited`]).
    async fn audited<T: Send + 'static>(
        &self,
        entry: AuditEntry,
        work: impl FnOnce(&dyn Operator, &mut AuditEntry) -> Result<T, dynreg_store::Error>
        + Send
        + 'static,
    ) -> Result<T, Problem> {
        self.run(move |ops| dynreg_store::audited(ops, entry, |o, e| work(o, e)))
            .await
    }
}

/// The API's routes (relative to `/api/v1`) and their OpenAPI document.
pub fn router(api: Api) -> Router {
    let (routes, mut doc) = OpenApiRouter::<Api>::with_openapi(ApiDoc::openapi_base())
        .merge(products::routes())
        .merge(devices::routes())
        .merge(expected::routes())
        .merge(records::routes())
        .split_for_parts();
    ApiDoc.modify(&mut doc);
    let doc = Bytes::from(doc.to_json().unwrap_or_default());
    routes
        .route(
            "/openapi.json",
            axum::routing::get(move |caller: Caller| async move {
                caller.need(Scope::Read)?;
                Ok::<_, Problem>(([(header::CONTENT_TYPE, "application/json")], doc))
            }),
        )
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the route does not take this method",
            )
        })
        .with_state(api)
}

/// The OpenAPI document: `info`, the server prefix, the bearer scheme, and the
/// problem responses every operation may give.
struct ApiDoc;

impl ApiDoc {
    fn openapi_base() -> OpenApi {
        let mut doc = OpenApi::new(
            utoipa::openapi::Info::builder()
                .title("dynreg admin API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Products, triplet pools, devices, registrations, the audit log and API tokens of a dynreg store. Every request needs `Authorization: Bearer <token>` (`dynreg token create`); errors are RFC 9457 problem documents.",
                ))
                .build(),
            utoipa::openapi::Paths::new(),
        );
        doc.servers = Some(vec![Server::new("/api/v1")]);
        doc
    }
}

impl Modify for ApiDoc {
    fn modify(&self, doc: &mut OpenApi) {
        use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder, schema};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let (name, problem) = (
            <ProblemDoc as utoipa::ToSchema>::name(),
            <ProblemDoc as utoipa::PartialSchema>::schema(),
        );
        components.schemas.insert(name.to_string(), problem);
        doc.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "token",
            Vec::<String>::new(),
        )]);
        let problem = || -> RefOr<utoipa::openapi::Response> {
            RefOr::T(
                ResponseBuilder::new()
                    .description("A problem document (RFC 9457): 400 bad input, 401 no valid token, 403 scope too narrow, 404 not found, 409 conflict, 422 refused item, 503 store unavailable")
                    .content(
                        "application/problem+json",
                        ContentBuilder::new()
                            .schema(Some(schema::Ref::from_schema_name("Problem")))
                            .build(),
                    )
                    .build(),
            )
        };
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
                &mut item.put,
            ]
            .into_iter()
            .flatten()
            {
                op.responses
                    .responses
                    .entry("default".into())
                    .or_insert_with(problem);
            }
        }
    }
}

/// An error answered as an RFC 9457 problem document
/// (`application/problem+json`): `type`, `title`, `status`, `detail`, and a stable
/// `code`; for a refused item of an import, its `line`.
#[derive(Debug)]
pub struct Problem {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) detail: String,
    pub(crate) line: Option<u64>,
}

/// The problem document's schema.
#[derive(Serialize, ToSchema)]
#[schema(as = Problem)]
struct ProblemDoc {
    /// `urn:dynreg:problem:<code>`.
    r#type: String,
    /// The HTTP status's reason phrase.
    title: String,
    /// The HTTP status.
    status: u16,
    /// What went wrong, for a person.
    detail: String,
    /// A stable code for programs: `unauthorized`, `forbidden`, `not_found`,
    /// `bad_request`, `invalid`, `conflict`, `invalid_item`, `unavailable`,
    /// `method_not_allowed`, `internal`.
    code: String,
    /// For `invalid_item` from an import: the CSV line refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u64>,
}

impl Problem {
    /// A problem with `status`, stable `code` and `detail`.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            line: None,
        }
    }

    fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }

    pub(crate) fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", detail)
    }

    fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    pub(crate) fn at_line(mut self, line: u64) -> Self {
        self.line = Some(line);
        self
    }

    /// A refused uploaded CSV: `422 invalid_item` naming its `line` when the problem is
    /// on one, else `400 invalid`.
    pub(crate) fn csv(detail: String, line: Option<u64>) -> Self {
        match line {
            Some(line) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_item", detail).at_line(line)
            }
            None => Self::invalid(detail),
        }
    }
}

impl From<dynreg_store::Error> for Problem {
    fn from(e: dynreg_store::Error) -> Self {
        use dynreg_store::Error as E;
        match &e {
            E::NotFound(m) => Self::new(StatusCode::NOT_FOUND, "not_found", m.clone()),
            E::Invalid(m) => Self::invalid(m.clone()),
            E::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m.clone()),
            E::Item { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_item",
                e.to_string(),
            ),
            // Also a database that cannot answer now (locked, unreachable, restarting).
            _ if e.kind() == dynreg_registrar::StoreErrorKind::Unavailable => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
            _ => {
                tracing::error!("admin API: {e}");
                Self::internal(e.to_string())
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let doc = ProblemDoc {
            r#type: format!("urn:dynreg:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code.to_owned(),
            line: self.line,
        };
        let mut r = (self.status, axum::Json(doc)).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"dynreg\""),
            );
        }
        r
    }
}

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
    fn actor(&self) -> Actor {
        Actor {
            name: self.token.name.clone(),
            origin: self.origin.clone(),
        }
    }

    /// The audit line of this caller doing `action` on `pid`'s `target` now.
    pub(crate) fn entry(&self, action: &str, pid: &str, target: &str) -> AuditEntry {
        self.actor().entry(unix_now(), action, pid, target)
    }
}

impl Caller {
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

/// The client's address, as the server accepted it.
pub(crate) fn origin(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default()
}

/// The token of `Authorization: Bearer <token>`; for reading requests (GET, HEAD)
/// without that header, the web console's session cookie (so that the console's
/// pages can read the API and its event stream; changes go through the console's
/// forms, which check a CSRF token).
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
                .then(|| crate::console::session_token(&parts.headers))
                .flatten()
                .ok_or_else(|| {
                    unauthorized(
                        "send an API token as `Authorization: Bearer <token>` (`dynreg token create`)",
                    )
                })?,
        };
        Self::of_token(api, &token, origin(parts)).await
    }
}

/// A JSON body; a body that does not parse is a 400 problem.
pub(crate) struct Body<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|j| Self(j.0))
            .map_err(|e: JsonRejection| Problem::bad_request(e.body_text()))
    }
}

/// Query parameters; ones that do not parse are a 400 problem.
pub(crate) struct Query<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e: QueryRejection| Problem::bad_request(e.body_text()))
    }
}

/// Path parameters; ones that do not parse are a 400 problem.
pub(crate) struct Path<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|e: PathRejection| Problem::bad_request(e.body_text()))
    }
}

/// `/readyz`: 200 when the store answers (the listeners are bound before the server
/// starts), else 503.
pub async fn ready(axum::extract::State(api): axum::extract::State<Api>) -> Response {
    match api.run(|ops| ops.schema_version()).await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(p) => {
            let mut r = p.into_response();
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
    }
}

/// `/metrics`: every metric in Prometheus's text format, the free triplets of each
/// product read from the store first. Needs a read token unless
/// [`Api::with_public_metrics`].
pub async fn metrics(
    axum::extract::State(api): axum::extract::State<Api>,
    request: Request,
) -> Response {
    if !api.public_metrics {
        let (mut parts, _) = request.into_parts();
        match Caller::from_request_parts(&mut parts, &api).await {
            Ok(caller) => {
                if let Err(p) = caller.need(Scope::Read) {
                    return p.into_response();
                }
            }
            Err(p) => return p.into_response(),
        }
    }
    let pools = api.run(|ops| ops.free_triplets()).await;
    let m = dynreg_registrar::metrics::metrics();
    match pools {
        Ok(pools) => m.set_pools(pools),
        Err(p) => return p.into_response(),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

/// A page size from a query: `default` when absent, at most `MAX_PAGE`.
fn page_size(limit: Option<usize>, default: usize) -> Result<usize, Problem> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(Problem::invalid(format!(
            "limit {n} is out of range: 1 to {MAX_PAGE}"
        ))),
    }
}

/// The largest page of a listing.
const MAX_PAGE: usize = 1000;

/// A CSV download of `items` (`header`, then a row each from `record`), streamed in
/// chunks of rows as the client reads it; `filename` names the attachment. Not cached
/// (exports may carry secrets).
pub(crate) fn csv_response<T: Send + Sync + 'static>(
    header: &[&str],
    items: Vec<T>,
    record: fn(&T) -> Vec<String>,
    filename: &str,
) -> Response {
    const ROWS: usize = 4096;
    let items = Arc::new(items);
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let chunks = items.len().div_ceil(ROWS) + 1;
    let stream = futures_util::stream::iter((0..chunks).map(move |i| {
        let mut w = csv::Writer::from_writer(Vec::new());
        let rows = if i == 0 {
            w.write_record(&header)
        } else {
            items[(i - 1) * ROWS..(i * ROWS).min(items.len())]
                .iter()
                .try_for_each(|t| w.write_record(record(t)))
        };
        rows.map_err(std::io::Error::other)?;
        w.into_inner()
            .map(Bytes::from)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }));
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}
