//! A product's triplet pool: its counts, generation, import, export and withdrawal.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::Response;
use dynreg_registrar::{NewTriplet, TripletState};
use dynreg_store::{PoolStats, Scope, TripletRef};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::products::parse;
use super::{Api, ApiJson, ApiPath, ApiQuery, Caller, Problem};

/// The largest CSV `pool/import` takes.
const MAX_IMPORT_BYTES: usize = 512 * 1024 * 1024;

pub(super) fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .routes(routes!(pool_stats))
        .routes(routes!(generate_pool))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(import_pool))
                .layer(DefaultBodyLimit::max(MAX_IMPORT_BYTES)),
        )
        .routes(routes!(export_pool))
        .routes(routes!(withdraw))
}

/// Count the product's pool and devices.
#[utoipa::path(get, path = "/products/{pid}/pool", tag = "pools",
    params(("pid" = String, Path, description = "The product id")),
    responses((status = 200, description = "The counts", body = PoolStats)))]
pub(crate) async fn pool_stats(
    State(api): State<Api>,
    caller: Caller,
    ApiPath(pid): ApiPath<String>,
) -> Result<Json<PoolStats>, Problem> {
    caller.need(Scope::Read)?;
    let s = api.run(move |ops| ops.pool_stats(&pid)).await?;
    Ok(Json(s))
}

/// A pool generation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GenerateBody {
    /// How many triplets (1 to 10,000,000).
    #[schema(minimum = 1, maximum = 10_000_000)]
    pub(crate) count: u64,
    /// Text put before every barcode's 12-digit serial (at most 32 printable
    /// characters, no comma).
    #[serde(default)]
    #[schema(max_length = 32, pattern = "^[^,\\x00-\\x1f]*$")]
    pub(crate) barcode_prefix: String,
}

/// Generate free triplets and return their factory CSV, secrets included. The CSV is
/// returned once: keep it (`pool/export` writes it again from the store).
#[utoipa::path(post, path = "/products/{pid}/pool/generate", tag = "pools",
    request_body = GenerateBody,
    params(("pid" = String, Path, description = "The product id")),
    responses((status = 200, description = "The factory CSV", content_type = "text/csv", body = String)))]
pub(crate) async fn generate_pool(
    State(api): State<Api>,
    caller: Caller,
    ApiPath(pid): ApiPath<String>,
    ApiJson(body): ApiJson<GenerateBody>,
) -> Result<Response, Problem> {
    caller.need(Scope::Write)?;
    let now = crate::unix_now();
    let mut entry = caller.entry("pool.generated", &pid, "");
    entry.detail = serde_json::json!({"count": body.count}).to_string();
    let filename = format!("{pid}-pool.csv");
    let triplets = api
        .audited(entry, move |ops, _| {
            ops.generate_pool(
                &pid,
                body.count,
                &body.barcode_prefix,
                now,
                Arc::new(|_| {}),
            )
        })
        .await?;
    Ok(factory_csv(triplets, &filename))
}

/// What an import did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Imported {
    /// Triplets imported.
    pub(crate) imported: u64,
}

/// Import a factory CSV (`uuid,secret[,mac][,barcode]`) as free triplets: all or
/// nothing. A refused line is a 422 problem naming it (`line`).
#[utoipa::path(post, path = "/products/{pid}/pool/import", tag = "pools",
    request_body(content = String, content_type = "text/csv", description = "The factory CSV"),
    params(("pid" = String, Path, description = "The product id")),
    responses((status = 200, description = "Imported", body = Imported)))]
pub(crate) async fn import_pool(
    State(api): State<Api>,
    caller: Caller,
    ApiPath(pid): ApiPath<String>,
    body: Bytes,
) -> Result<Json<Imported>, Problem> {
    caller.need(Scope::Write)?;
    let entry = caller.entry("pool.imported", &pid, "");
    let imported = api
        .run(move |ops| {
            let (triplets, lines) =
                match dynreg_store::factory_csv::read_triplets(&body[..], "the CSV") {
                    Ok(t) => t,
                    Err(e) => return Ok(Err(Problem::csv(e.to_string(), e.line()))),
                };
            match dynreg_store::audited(ops, entry, |ops, entry| {
                entry.detail = serde_json::json!({"count": triplets.len()}).to_string();
                ops.import_pool(&pid, triplets, Arc::new(|_| {}))
            }) {
                Ok(n) => Ok(Ok(n)),
                Err(dynreg_store::Error::Item { index, message }) => {
                    let line = lines.get(index).copied().unwrap_or(0);
                    Ok(Err(Problem::csv(
                        format!("line {line}: {message}"),
                        Some(line),
                    )))
                }
                Err(e) => Err(e),
            }
        })
        .await??;
    Ok(Json(Imported { imported }))
}

/// The query of an export.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct ExportQuery {
    /// Only triplets in this state: `free`, `bound` or `revoked`.
    #[param(pattern = "^(free|bound|revoked)$")]
    pub(crate) state: Option<String>,
}

/// Write the pool's triplets (secrets included) as a factory CSV again.
#[utoipa::path(get, path = "/products/{pid}/pool/export", tag = "pools",
    params(("pid" = String, Path, description = "The product id"), ExportQuery),
    responses((status = 200, description = "The factory CSV", content_type = "text/csv", body = String)))]
pub(crate) async fn export_pool(
    State(api): State<Api>,
    caller: Caller,
    ApiPath(pid): ApiPath<String>,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<Response, Problem> {
    caller.need(Scope::Write)?;
    let state: Option<TripletState> = q.state.as_deref().map(|s| parse("state", s)).transpose()?;
    let filename = format!("{pid}-export.csv");
    let entry = caller.entry("pool.exported", &pid, "");
    let triplets = api
        .audited(entry, move |ops, _| {
            let mut out = Vec::new();
            ops.for_each_triplet(&pid, state, &mut |t| {
                out.push(NewTriplet {
                    uuid: t.uuid,
                    secret: t.secret,
                    mac: t.mac,
                    barcode: t.barcode,
                });
                Ok(())
            })?;
            Ok(out)
        })
        .await?;
    Ok(factory_csv(triplets, &filename))
}

/// Free triplets to withdraw, by uuid or barcode.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WithdrawBody {
    /// Triplets by uuid.
    #[serde(default)]
    pub(crate) uuids: Vec<String>,
    /// Triplets by barcode.
    #[serde(default)]
    pub(crate) barcodes: Vec<String>,
}

/// A withdrawn triplet.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WithdrawnView {
    /// Its uuid.
    pub(crate) uuid: String,
    /// Its barcode.
    pub(crate) barcode: String,
    /// Its MAC.
    pub(crate) mac: String,
}

/// Withdraw leaked or damaged free triplets: they are never handed out. All or
/// nothing; a triplet that is not a free one of the product is refused (422).
#[utoipa::path(post, path = "/products/{pid}/pool/withdraw", tag = "pools",
    request_body = WithdrawBody,
    params(("pid" = String, Path, description = "The product id")),
    responses((status = 200, description = "The withdrawn triplets", body = Vec<WithdrawnView>)))]
pub(crate) async fn withdraw(
    State(api): State<Api>,
    caller: Caller,
    ApiPath(pid): ApiPath<String>,
    ApiJson(body): ApiJson<WithdrawBody>,
) -> Result<Json<Vec<WithdrawnView>>, Problem> {
    caller.need(Scope::Write)?;
    let refs: Vec<TripletRef> = body
        .uuids
        .into_iter()
        .map(TripletRef::Uuid)
        .chain(body.barcodes.into_iter().map(TripletRef::Barcode))
        .collect();
    if refs.is_empty() {
        return Err(Problem::invalid(
            "name triplets to withdraw in uuids or barcodes",
        ));
    }
    let now = crate::unix_now();
    let list = api
        .audited(
            caller.entry("pool.withdrawn", &pid, ""),
            move |ops, entry| {
                let found = ops.withdrawal_candidates(&pid, &refs)?;
                entry.detail = serde_json::json!({"count": found.len()}).to_string();
                ops.withdraw(&pid, found.iter().map(|w| w.uuid.clone()).collect(), now)?;
                Ok(found)
            },
        )
        .await?;
    Ok(Json(
        list.into_iter()
            .map(|w| WithdrawnView {
                uuid: w.uuid,
                barcode: w.barcode,
                mac: w.mac,
            })
            .collect(),
    ))
}

/// Triplets as the factory CSV download (the format `pool import` takes).
fn factory_csv(triplets: Vec<NewTriplet>, filename: &str) -> Response {
    super::csv_response(
        &dynreg_store::factory_csv::HEADER,
        triplets,
        |t| {
            dynreg_store::factory_csv::record(t)
                .map(str::to_owned)
                .to_vec()
        },
        filename,
    )
}
