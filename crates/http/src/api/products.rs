//! Products: create, read, update, delete, enable, rotate and retire secrets, and
//! their definitions' export and import. Their pools are in [`super::pools`].

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use dynreg_registrar::model::parse_duration;
use dynreg_registrar::{Admission, MacRange, ReregPolicy, Signatures, SourceMode};
use dynreg_store::admin::DEFAULT_GRACE;
use dynreg_store::{NewProduct, ProductDefinition, ProductSummary, ProductUpdate, Scope};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Api, ApiJson, ApiPath, ApiQuery, Caller, Problem};

pub(super) fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .routes(routes!(list_products, create_product))
        .routes(routes!(show_product, update_product, delete_product))
        .routes(routes!(enable_product))
        .routes(routes!(disable_product))
        .routes(routes!(rotate_secret))
        .routes(routes!(retire_secret))
        .routes(routes!(export_product))
        .routes(routes!(import_product))
}

/// A new product.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewProductBody {
    /// Its pid (1 to 64 of `A-Z a-z 0-9 . _ -`); generated when absent.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub(crate) pid: Option<String>,
    /// A human name (1 to 128 bytes of printable text).
    #[schema(min_length = 1, max_length = 128)]
    pub(crate) name: String,
    /// `pool` (the default), `generate` or `pool-then-generate`.
    #[schema(pattern = "^(pool|generate|pool-then-generate)$")]
    pub(crate) mode: Option<String>,
    /// MAC addresses for generated triplets, `START-END`
    /// (`02:00:00:00:00:00-02:00:00:00:FF:FF`).
    #[schema(
        pattern = "^[0-9A-Fa-f]{2}([:-]?[0-9A-Fa-f]{2}){5}-[0-9A-Fa-f]{2}([:-]?[0-9A-Fa-f]{2}){5}$"
    )]
    pub(crate) mac_range: Option<String>,
    /// The CONNECT ts window in seconds (default 900).
    #[schema(minimum = 1, maximum = 604_800)]
    pub(crate) ts_window: Option<u64>,
    /// `always`, `never` or `window:DURATION` (default `window:24h`).
    #[schema(pattern = "^(always|never|window:[0-9]{1,9}[smhd]?)$")]
    pub(crate) reregistration: Option<String>,
    /// `any` (the default: the seed's sign methods and the device-bound ones) or
    /// `bound` (only `hmacSha1u` and `hmacSha256u`).
    #[schema(pattern = "^(any|bound)$")]
    pub(crate) signatures: Option<String>,
    /// `open` (the default: any unique whose credentials verify) or `listed` (only the
    /// uniques listed with `POST /products/{pid}/expected`).
    #[schema(pattern = "^(open|listed)$")]
    pub(crate) admission: Option<String>,
    /// The most devices the product may bind (default: no limit).
    pub(crate) quota: Option<u64>,
    /// Free triplets below which `pool.low` fires (default: none).
    pub(crate) low_water: Option<u64>,
}

/// A product just created, with its secret (shown once).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedProduct {
    /// The product.
    pub(crate) product: ProductSummary,
    /// Its registration secret: flash it into the product's devices. It is not shown
    /// again by the API.
    pub(crate) secret: String,
}

/// Changes to a product; absent fields stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProductPatch {
    /// A new name.
    #[schema(min_length = 1, max_length = 128)]
    pub(crate) name: Option<String>,
    /// A new mode.
    #[schema(pattern = "^(pool|generate|pool-then-generate)$")]
    pub(crate) mode: Option<String>,
    /// A new MAC range `START-END`; `null` removes it.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<String>, pattern = "^[0-9A-Fa-f]{2}([:-]?[0-9A-Fa-f]{2}){5}-[0-9A-Fa-f]{2}([:-]?[0-9A-Fa-f]{2}){5}$")]
    pub(crate) mac_range: Option<Option<String>>,
    /// A new ts window, seconds.
    #[schema(minimum = 1, maximum = 604_800)]
    pub(crate) ts_window: Option<u64>,
    /// A new re-registration policy.
    #[schema(pattern = "^(always|never|window:[0-9]{1,9}[smhd]?)$")]
    pub(crate) reregistration: Option<String>,
    /// A new signatures setting: `any` or `bound`.
    #[schema(pattern = "^(any|bound)$")]
    pub(crate) signatures: Option<String>,
    /// A new admission setting: `open` or `listed`.
    #[schema(pattern = "^(open|listed)$")]
    pub(crate) admission: Option<String>,
    /// A new quota; `null` removes it.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<u64>)]
    pub(crate) quota: Option<Option<u64>>,
    /// A new low-water mark of free triplets; `null` removes it.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<u64>)]
    pub(crate) low_water: Option<Option<u64>>,
    /// Enables or disables registration.
    pub(crate) enabled: Option<bool>,
}

/// A field that is present, possibly `null`: absent stays `None` (serde's default).
fn some<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

pub(super) fn parse<T: std::str::FromStr>(field: &str, value: &str) -> Result<T, Problem>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e| Problem::invalid(format!("{field}: {e}")))
}

fn mode_of(v: Option<&str>) -> Result<Option<SourceMode>, Problem> {
    v.map(|m| parse("mode", m)).transpose()
}

fn range_of(v: Option<&str>) -> Result<Option<MacRange>, Problem> {
    v.map(|m| parse("mac_range", m)).transpose()
}

fn rereg_of(v: Option<&str>) -> Result<Option<ReregPolicy>, Problem> {
    v.map(|m| parse("reregistration", m)).transpose()
}

fn signatures_of(v: Option<&str>) -> Result<Option<Signatures>, Problem> {
    v.map(|m| parse("signatures", m)).transpose()
}

fn admission_of(v: Option<&str>) -> Result<Option<Admission>, Problem> {
    v.map(|m| parse("admission", m)).transpose()
}

/// List products.
#[utoipa::path(get, path = "/products", tag = "products",
    responses((status = 200, description = "Every product, by pid", body = Vec<ProductSummary>)))]
pub(crate) async fn list_products(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<Vec<ProductSummary>>, Problem> {
    caller.need(Scope::Read)?;
    let list = api.run(|ops| ops.list_products()).await?;
    Ok(Json(list.into_iter().collect()))
}

/// Create a product.
#[utoipa::path(post, path = "/products", tag = "products", request_body = NewProductBody,
    responses((status = 201, description = "Created; the secret is shown only here", body = CreatedProduct)))]
pub(crate) async fn create_product(
    State(api): State<Api>,
    caller: Caller,
    ApiJson(body): ApiJson<NewProductBody>,
) -> Result<(StatusCode, Json<CreatedProduct>), Problem> {
    caller.need(Scope::Write)?;
    let new = NewProduct {
        pid: body.pid,
        name: body.name,
        mode: mode_of(body.mode.as_deref())?.unwrap_or(SourceMode::Pool),
        mac_range: range_of(body.mac_range.as_deref())?,
        ts_window: body
            .ts_window
            .unwrap_or(dynreg_proto::credentials::DEFAULT_TS_WINDOW),
        rereg: rereg_of(body.reregistration.as_deref())?.unwrap_or(ReregPolicy::DEFAULT),
        signatures: signatures_of(body.signatures.as_deref())?.unwrap_or_default(),
        admission: admission_of(body.admission.as_deref())?.unwrap_or_default(),
        quota: body.quota,
        low_water: body.low_water,
    };
    let now = crate::unix_now();
    let product = api
        .audited(
            caller.entry("product.created", "", ""),
            move |ops, entry| {
                let product = ops.create_product(new, now)?;
                entry.pid.clone_from(&product.pid);
                Ok(product)
            },
        )
        .await?;
    created(&api, product).await
}

/// The `201` answer of a new product: its summary, and its secret (shown only here).
pub(crate) async fn created(
    api: &Api,
    product: dynreg_registrar::Product,
) -> Result<(StatusCode, Json<CreatedProduct>), Problem> {
    let pid = product.pid.clone();
    let summary = api.run(move |ops| ops.product_summary(&pid)).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedProduct {
            product: summary,
            secret: product.secret.expose().to_owned(),
        }),
    ))
}

/// Show a product.
#[utoipa::path(get, path = "/products/{pid}", tag = "products",
    params(("pid" = String, Path, description = "The product id")),
    responses((status = 200, description = "The product", body = ProductSummary)))]
pub(crate) async fn show_product(
    State(api): State<Api>,
    caller: Caller,
    ApiPath(pid): ApiPath<String>,
) -> Result<Json<ProductSummary>, Problem> {
    caller.need(Scope::Read)?;
    let p = api.run(move |ops| ops.product_summary(&pid)).await?;
    Ok(Json(p))
}

/// Change a product: name, mode, MAC range, ts window, re-registration policy,
/// signatures, admission, quota, enabled.
#[utoipa::path(patch, path = "/products/{pid}", tag = "products", request_body = ProductPatch,
    params(("pid" = String, Path, description = "The product id")),
    responses((status = 200, description = "The product as changed", body = ProductSummary)))]
pub(crate) async fn update_product(
    State(api): State<Api>,
    caller: Caller,
    ApiPath(pid): ApiPath<String>,
    ApiJson(patch): ApiJson<ProductPatch>,
) -> Result<Json<ProductSummary>, Problem> {
    caller.need(Scope::Write)?;
    let update = ProductUpdate {
        name: patch.name,
        mode: mode_of(patch.mode.as_deref())?,
        mac_range: match patch.mac_range {
            None => None,
            Some(r) => Some(range_of(r.as_deref())?),
        },
        ts_window: patch.ts_window,
        rereg: rereg_of(patch.reregistration.as_deref())?,
        signatures: signatures_of(patch.signatures.as_deref())?,
        admission: admission_of(patch.admission.as_deref())?,
        quota: patch.quota,
        low_water: patch.low_water,
    };
    let enabled = patch.enabled;
    if update.is_empty() && enabled.is_none() {
        return Err(Problem::invalid("the patch changes nothing"));
    }
    let entry = caller.entry("product.updated", &pid, "");
    let p = api
        .audited(entry, move |ops, _| {
            if !update.is_empty() {
                ops.update_product(&pid, update)?;
            }
            if let Some(on) = enabled {
                ops.set_enabled(&pid, on)?;
            }
            ops.product_summary(&pid)
        })
        .await?;
    Ok(Json(p))
}

/// The query of a product's deletion.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct DeleteQuery {
    /// Also remove the devices registered under it.
    #[serde(default)]
    pub(crate) force: bool,
}

/// What a deletion removed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeletedView {
    /// Devices removed.
    pub(crate) devices: u64,
    /// Triplets removed.
    pub(crate) triplets: u64,
}

/// Delete a product with its pool (refused while devices are registered under it,
/// unless `force`).
#[utoipa::path(delete, path = "/products/{pid}", tag = "products",
    params(("pid" = String, Path, description = "The product id"), DeleteQuery),
    responses((status = 200, description = "What was removed", body = DeletedView)))]
pub(crate) async fn delete_product(
    State(api): State<Api>,
    caller: Caller,
    ApiPath(pid): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> Result<Json<DeletedView>, Problem> {
    caller.need(Scope::Write)?;
    let mut entry = caller.entry("product.deleted", &pid, "");
    if q.force {
        entry.detail = r#"{"force":true}"#.into();
    }
    let d = api
        .audited(entry, move |ops, _| ops.delete_product(&pid, q.force))
        .await?;
    Ok(Json(DeletedView {
        devices: d.devices,
        triplets: d.triplets,
    }))
}

pub(crate) async fn set_enabled(
    api: Api,
    caller: Caller,
    pid: String,
    on: bool,
) -> Result<Json<ProductSummary>, Problem> {
    caller.need(Scope::Write)?;
    let action = dynreg_store::admin::enabled_action(on);
    let p = api
        .audited(caller.entry(action, &pid, ""), move |ops, _| {
            ops.set_enabled(&pid, on)?;
            ops.product_summary(&pid)
        })
        .await?;
    Ok(Json(p))
}

/// Let the product's devices register.
#[utoipa::path(post, path = "/products/{pid}/enable", tag = "products",
    params(("pid" = String, Path, description = "The product id")),
    responses((status = 200, description = "The product", body = ProductSummary)))]
pub(crate) async fn enable_product(
    State(api): State<Api>,
    caller: Caller,
    ApiPath(pid): ApiPath<String>,
) -> Result<Json<ProductSummary>, Problem> {
    set_enabled(api, caller, pid, true).await
}

/// Refuse the product's registrations.
#[utoipa::path(post, path = "/products/{pid}/disable", tag = "products",
    params(("pid" = String, Path, description = "The product id")),
    responses((status = 200, description = "The product", body = ProductSummary)))]
pub(crate) async fn disable_product(
    State(api): State<Api>,
    caller: Caller,
    ApiPath(pid): ApiPath<String>,
) -> Result<Json<ProductSummary>, Problem> {
    set_enabled(api, caller, pid, false).await
}

/// A secret rotation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateBody {
    /// How long the old secret keeps working (`0`, `12h`, `30d`; default 90d).
    #[schema(pattern = "^[0-9]{1,9}[smhd]?$")]
    pub(crate) grace: Option<String>,
}

/// The product's new secret.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Rotated {
    /// The new secret (shown once).
    pub(crate) secret: String,
    /// When the old secret stops working, Unix seconds.
    pub(crate) previous_secret_until: u64,
}

/// Give the product a new secret; the old one keeps working for the grace period.
#[utoipa::path(post, path = "/products/{pid}/rotate-secret", tag = "products",
    request_body = RotateBody,
    params(("pid" = String, Path, description = "The product id")),
    responses((status = 200, description = "The new secret", body = Rotated)))]
pub(crate) async fn rotate_secret(
    State(api): State<Api>,
    caller: Caller,
    ApiPath(pid): ApiPath<String>,
    ApiJson(body): ApiJson<RotateBody>,
) -> Result<Json<Rotated>, Problem> {
    caller.need(Scope::Write)?;
    let grace = body.grace.as_deref().unwrap_or(DEFAULT_GRACE);
    let grace = parse_duration(grace).map_err(|e| Problem::invalid(format!("grace: {e}")))?;
    let now = crate::unix_now();
    let mut entry = caller.entry("product.secret_rotated", &pid, "");
    entry.detail = serde_json::json!({"grace": grace}).to_string();
    let secret = api
        .audited(entry, move |ops, _| ops.rotate_secret(&pid, grace, now))
        .await?;
    Ok(Json(Rotated {
        secret: secret.expose().to_owned(),
        previous_secret_until: now + grace,
    }))
}

/// End the grace period of the product's previous secret now.
#[utoipa::path(post, path = "/products/{pid}/retire-secret", tag = "products",
    params(("pid" = String, Path, description = "The product id")),
    responses((status = 200, description = "The product", body = ProductSummary)))]
pub(crate) async fn retire_secret(
    State(api): State<Api>,
    caller: Caller,
    ApiPath(pid): ApiPath<String>,
) -> Result<Json<ProductSummary>, Problem> {
    caller.need(Scope::Write)?;
    let now = crate::unix_now();
    let p = api
        .audited(
            caller.entry("product.secret_retired", &pid, ""),
            move |ops, _| {
                ops.retire_secret(&pid, now)?;
                ops.product_summary(&pid)
            },
        )
        .await?;
    Ok(Json(p))
}

/// The query of a product export.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct ProductExportQuery {
    /// Include the product secret (needs a token of write scope; audited).
    #[serde(default)]
    pub(crate) with_secret: bool,
}

/// Write a product's definition (name, mode, MAC range, ts window, policy, quota,
/// low-water mark; the secret on request), to create it in another environment with
/// `POST /products/{pid}/import` or `dynreg product import`. Never its triplets or
/// devices.
#[utoipa::path(get, path = "/products/{pid}/export", tag = "products",
    params(("pid" = String, Path, description = "The product id"), ProductExportQuery),
    responses((status = 200, description = "The product's definition", body = ProductDefinition)))]
pub(crate) async fn export_product(
    State(api): State<Api>,
    caller: Caller,
    ApiPath(pid): ApiPath<String>,
    ApiQuery(q): ApiQuery<ProductExportQuery>,
) -> Result<Json<ProductDefinition>, Problem> {
    let with_secret = q.with_secret;
    let definition = if with_secret {
        caller.need(Scope::Write)?;
        let entry = caller.entry("product.exported", &pid, "");
        api.audited(entry, move |ops, _| {
            ProductDefinition::export(ops, &pid, true)
        })
        .await?
    } else {
        caller.need(Scope::Read)?;
        api.run(move |ops| ProductDefinition::export(ops, &pid, false))
            .await?
    };
    Ok(Json(definition))
}

/// Create product `pid` from a definition that `GET /products/{pid}/export` (or
/// `dynreg product export`) wrote: with the definition's secret, or a new one when it
/// has none. The pid of the path wins over the definition's.
#[utoipa::path(post, path = "/products/{pid}/import", tag = "products",
    request_body = ProductDefinition,
    params(("pid" = String, Path, description = "The pid to create")),
    responses((status = 201, description = "Created; its secret (the definition's, or the one generated)", body = CreatedProduct)))]
pub(crate) async fn import_product(
    State(api): State<Api>,
    caller: Caller,
    ApiPath(pid): ApiPath<String>,
    ApiJson(definition): ApiJson<ProductDefinition>,
) -> Result<(StatusCode, Json<CreatedProduct>), Problem> {
    caller.need(Scope::Write)?;
    let now = crate::unix_now();
    let entry = caller.entry("product.imported", &pid, "");
    let target = pid.clone();
    let (product, _) = api
        .audited(entry, move |ops, _| {
            definition.import(ops, Some(target), now)
        })
        .await?;
    created(&api, product).await
}
