//! The devices listed in advance for a product (`admission = listed`, PROTOCOL.md
//! section 2): upload (the factory's CSV), list, remove. The same operations as
//! `dynreg device expect | expected | unexpect`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use dynreg_store::expected_csv::{self, UploadError};
use dynreg_store::{ExpectedFilter, Scope};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Api, ApiPath, ApiQuery, Caller, Problem, page_size};

/// The largest CSV an upload takes (a million devices with barcodes and MACs is about
/// 60 MB).
const MAX_UPLOAD_BYTES: usize = 512 * 1024 * 1024;

pub(super) fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .merge(
            OpenApiRouter::new()
                .routes(routes!(list_expected, upload_expected))
                .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES)),
        )
        .routes(routes!(remove_expected))
}

/// A device listed in advance.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExpectedView {
    /// Its unique.
    pub(crate) unique: String,
    /// The barcode its registration puts on its triplet (empty: none).
    pub(crate) barcode: String,
    /// The MAC its registration puts on its triplet (empty: the triplet's own).
    pub(crate) mac: String,
    /// When it was listed, Unix seconds.
    pub(crate) listed_at: u64,
    /// When it registered, Unix seconds (absent: not yet).
    pub(crate) registered_at: Option<u64>,
}

/// A page of listed devices.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExpectedPage {
    /// The devices, by unique.
    pub(crate) items: Vec<ExpectedView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub(crate) next: Option<String>,
}

/// Which listed devices to show.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ExpectedQuery {
    /// Only the devices not registered yet.
    pub(crate) waiting: Option<bool>,
    /// Only uniques after this one: `next` of the previous page.
    pub(crate) after: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<usize>,
}

/// What an upload did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Uploaded {
    /// Devices in the CSV (each listed, or its barcode and MAC replaced).
    pub(crate) listed_now: u64,
    /// Devices the product lists now.
    pub(crate) listed: u64,
}

/// List the devices expected for a product, by unique.
#[utoipa::path(get, path = "/products/{pid}/expected", tag = "expected devices",
    params(("pid" = String, Path, description = "The product id"), ExpectedQuery),
    responses((status = 200, description = "A page of listed devices", body = ExpectedPage)))]
pub(crate) async fn list_expected(
    State(api): State<Api>,
    caller: Caller,
    ApiPath(pid): ApiPath<String>,
    ApiQuery(q): ApiQuery<ExpectedQuery>,
) -> Result<Json<ExpectedPage>, Problem> {
    caller.need(Scope::Read)?;
    let limit = page_size(q.limit, 100)?;
    let filter = ExpectedFilter {
        waiting_only: q.waiting.unwrap_or(false),
        after: q.after,
        // One more than the page, to know whether another follows.
        limit: limit + 1,
    };
    let mut list = api.run(move |ops| ops.list_expected(&pid, &filter)).await?;
    let next = (list.len() > limit).then(|| {
        list.truncate(limit);
        list.last()
            .map(|e| e.device.unique.clone())
            .unwrap_or_default()
    });
    Ok(Json(ExpectedPage {
        items: list
            .into_iter()
            .map(|e| ExpectedView {
                unique: e.device.unique,
                barcode: e.device.barcode,
                mac: e.device.mac,
                listed_at: e.device.added_at,
                registered_at: e.registered_at,
            })
            .collect(),
        next,
    }))
}

/// List devices in advance for a product: a CSV of `unique[,barcode[,mac]]` (header
/// optional). A unique listed before gets the new barcode and MAC. A refused line is a
/// 422 problem naming it (`line`); nothing is listed then.
#[utoipa::path(post, path = "/products/{pid}/expected", tag = "expected devices",
    request_body(content = String, content_type = "text/csv", description = "unique[,barcode[,mac]] per line"),
    params(("pid" = String, Path, description = "The product id")),
    responses((status = 200, description = "Listed", body = Uploaded)))]
pub(crate) async fn upload_expected(
    State(api): State<Api>,
    caller: Caller,
    ApiPath(pid): ApiPath<String>,
    body: Bytes,
) -> Result<Json<Uploaded>, Problem> {
    caller.need(Scope::Write)?;
    let entry = caller.entry(expected_csv::UPLOADED, &pid, "");
    let now = crate::unix_now();
    let done = api
        .run(move |ops| {
            Ok(expected_csv::upload(
                ops,
                &pid,
                &body[..],
                "the CSV",
                now,
                entry,
                |_, _| {},
            ))
        })
        .await?;
    match done {
        Ok((listed_now, listed)) => Ok(Json(Uploaded { listed_now, listed })),
        Err(UploadError::Store(e)) => Err(e.into()),
        Err(e @ UploadError::Csv(_)) => Err(Problem::csv(e.to_string(), e.line())),
    }
}

/// Remove a device from a product's list (a registered device keeps its registration,
/// but is refused its next CONNECT while the product admits listed devices only).
#[utoipa::path(delete, path = "/products/{pid}/expected/{unique}", tag = "expected devices",
    params(("pid" = String, Path, description = "The product id"),
           ("unique" = String, Path, description = "The device's unique")),
    responses((status = 204, description = "Removed")))]
pub(crate) async fn remove_expected(
    State(api): State<Api>,
    caller: Caller,
    ApiPath((pid, unique)): ApiPath<(String, String)>,
) -> Result<StatusCode, Problem> {
    caller.need(Scope::Write)?;
    let entry = caller.entry(expected_csv::REMOVED, &pid, &unique);
    api.audited(entry, move |ops, e| {
        let n = ops.remove_expected(&pid, std::slice::from_ref(&unique))?;
        if n == 0 {
            return Err(dynreg_store::Error::NotFound(format!(
                "`{unique}` is not listed for product `{pid}`"
            )));
        }
        e.detail = serde_json::json!({"count": n}).to_string();
        Ok(n)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
