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
pub(crate) mod pools;
mod problem;
pub(crate) mod products;
pub(crate) mod records;

pub use crate::auth::Caller;
pub use problem::Problem;
pub(crate) use problem::{ApiJson, ApiPath, ApiQuery};

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use dynreg_registrar::AuditEntry;
use dynreg_registrar::metrics::Metrics;
use dynreg_store::{Operator, Scope};
use utoipa::Modify;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi, Server};

use problem::ProblemDoc;
use utoipa_axum::router::OpenApiRouter;

/// The store the API works on: any backend, as the operator's operations.
pub type Ops = Arc<dyn Operator + Send + Sync>;

/// The API's shared state.
#[derive(Clone)]
pub struct Api {
    pub(crate) ops: Ops,
    pub(crate) public_metrics: bool,
    /// What `/metrics` and the dashboard read: the registrar's.
    pub(crate) metrics: Arc<Metrics>,
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
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// Reads `metrics` (the registrar's, [`dynreg_registrar::Registrar::metrics`]) at
    /// `/metrics` and on the dashboard; [`crate::router`] gives the registrar's.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Serves `/metrics` to anyone who reaches the address (a Prometheus without a
    /// token); by default it needs a read token like the API.
    #[must_use]
    pub fn with_public_metrics(mut self, public: bool) -> Self {
        self.public_metrics = public;
        self
    }

    /// Runs blocking store work on a blocking thread.
    pub(crate) async fn run<T: Send + 'static>(
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
        .merge(pools::routes())
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
    let m = &api.metrics;
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
