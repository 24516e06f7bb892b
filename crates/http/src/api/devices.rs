//! Devices: listing with filters and cursor pagination, one device with its history,
//! revocation and reset.

use axum::Json;
use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dynreg_registrar::Registration;
use dynreg_store::admin::{DeviceAction, act_on_device};
use dynreg_store::{AuditFilter, DeviceCursor, DeviceFilter, HistoryEntry, Scope};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::records::AuditView;
use super::{Api, ApiPath, ApiQuery, Caller, Problem, page_size};

pub(super) fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .routes(routes!(list_devices))
        .routes(routes!(show_device))
        .routes(routes!(revoke_device))
        .routes(routes!(reset_device))
        .routes(routes!(export_devices))
}

/// A registered device (without its secret).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeviceView {
    /// The product it is registered under.
    pub(crate) pid: String,
    /// The pid it authenticates with (differs from `pid` when it moved with
    /// `replacePid`).
    pub(crate) key_pid: String,
    /// Its unique.
    pub(crate) unique: String,
    /// Its triplet's uuid.
    pub(crate) uuid: String,
    /// Its triplet's MAC (empty if none).
    pub(crate) mac: String,
    /// Its triplet's barcode (empty if none).
    pub(crate) barcode: String,
    /// `active` or `revoked`.
    pub(crate) state: String,
    /// When it first registered, Unix seconds.
    pub(crate) registered_at: u64,
    /// When it last registered, Unix seconds.
    pub(crate) last_seen_at: u64,
    /// When it was revoked, Unix seconds.
    pub(crate) revoked_at: Option<u64>,
}

impl From<Registration> for DeviceView {
    fn from(r: Registration) -> Self {
        Self {
            state: if r.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            }
            .to_owned(),
            pid: r.pid,
            key_pid: r.key_pid,
            unique: r.unique,
            uuid: r.triplet.uuid,
            mac: r.triplet.mac,
            barcode: r.triplet.barcode,
            registered_at: r.registered_at,
            last_seen_at: r.last_seen_at,
            revoked_at: r.revoked_at,
        }
    }
}

/// A page of devices.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DevicePage {
    /// The devices, newest first.
    pub(crate) items: Vec<DeviceView>,
    /// The `cursor` of the next page, when there may be one.
    pub(crate) next: Option<String>,
}

/// Which devices to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeviceQuery {
    /// Only devices registered under this product.
    pub(crate) pid: Option<String>,
    /// `active` or `revoked`.
    #[param(pattern = "^(active|revoked)$")]
    pub(crate) state: Option<String>,
    /// Only the device(s) with this unique.
    pub(crate) unique: Option<String>,
    /// Only the device holding the triplet with this uuid.
    pub(crate) uuid: Option<String>,
    /// Only the device holding the triplet with this barcode.
    pub(crate) barcode: Option<String>,
    /// Only the device(s) holding a triplet with this MAC (any usual form).
    pub(crate) mac: Option<String>,
    /// Only devices registered at or after this time, Unix seconds.
    pub(crate) since: Option<u64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<usize>,
    /// Where to start: `next` of the previous page.
    pub(crate) cursor: Option<String>,
}

fn encode_cursor(c: &DeviceCursor) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}\n{}\n{}", c.registered_at, c.key_pid, c.unique))
}

fn decode_cursor(text: &str) -> Result<DeviceCursor, Problem> {
    let bad = || Problem::invalid(format!("cursor `{text}` is not one this API gave"));
    let raw = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let mut parts = raw.splitn(3, '\n');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(at), Some(key_pid), Some(unique)) => Ok(DeviceCursor {
            registered_at: at.parse().map_err(|_| bad())?,
            key_pid: key_pid.to_owned(),
            unique: unique.to_owned(),
        }),
        _ => Err(bad()),
    }
}

/// List devices, newest first, by page; or find them by uuid, barcode or MAC.
#[utoipa::path(get, path = "/devices", tag = "devices", params(DeviceQuery),
    responses((status = 200, description = "A page of devices", body = DevicePage)))]
pub(crate) async fn list_devices(
    State(api): State<Api>,
    caller: Caller,
    ApiQuery(q): ApiQuery<DeviceQuery>,
) -> Result<Json<DevicePage>, Problem> {
    caller.need(Scope::Read)?;
    let limit = page_size(q.limit, 100)?;
    let (revoked_only, active_only) = match q.state.as_deref() {
        None => (false, false),
        Some("revoked") => (true, false),
        Some("active") => (false, true),
        Some(s) => {
            return Err(Problem::invalid(format!(
                "state `{s}` is not active or revoked"
            )));
        }
    };
    let keep = move |r: &Registration| {
        (!revoked_only || r.revoked_at.is_some()) && (!active_only || r.revoked_at.is_none())
    };
    if q.uuid.is_some() || q.barcode.is_some() || q.mac.is_some() {
        // Lookups by what is printed on the device: a handful at most, one page.
        let (pid, uuid, barcode, mac) = (q.pid, q.uuid, q.barcode, q.mac);
        let found = api
            .run(move |ops| match (barcode, mac) {
                _ if uuid.is_some() => Ok(ops
                    .device_by_uuid(uuid.as_deref().unwrap_or_default())?
                    .into_iter()
                    .filter(|r| pid.as_ref().is_none_or(|p| r.pid == *p))
                    .collect::<Vec<_>>()),
                (Some(b), mac) => Ok(ops
                    .device_by_barcode(pid.as_deref(), &b)?
                    .into_iter()
                    .filter(|r| {
                        mac.as_ref()
                            .is_none_or(|m| r.triplet.mac.eq_ignore_ascii_case(m))
                    })
                    .collect::<Vec<_>>()),
                (None, Some(m)) => Ok(ops
                    .devices_by_mac(&m)?
                    .into_iter()
                    .filter(|r| pid.as_ref().is_none_or(|p| r.pid == *p))
                    .collect()),
                (None, None) => Ok(Vec::new()),
            })
            .await?;
        return Ok(Json(DevicePage {
            items: found.into_iter().filter(keep).map(Into::into).collect(),
            next: None,
        }));
    }
    let filter = DeviceFilter {
        pid: q.pid,
        revoked_only,
        active_only,
        unique: q.unique,
        since: q.since,
        after: q.cursor.as_deref().map(decode_cursor).transpose()?,
        limit: limit + 1,
    };
    let mut list = api.run(move |ops| ops.list_devices(&filter)).await?;
    let next = (list.len() > limit).then(|| {
        list.truncate(limit);
        encode_cursor(&DeviceCursor::of(&list[limit - 1]))
    });
    Ok(Json(DevicePage {
        items: list.into_iter().map(Into::into).collect(),
        next,
    }))
}

/// A triplet the device held before an operator reset it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HistoryView {
    /// The triplet's uuid.
    pub(crate) uuid: String,
    /// The product it was registered under.
    pub(crate) pid: String,
    /// When the device registered with it.
    pub(crate) registered_at: u64,
    /// When it was revoked.
    pub(crate) revoked_at: Option<u64>,
    /// When the operator reset the device.
    pub(crate) reset_at: u64,
}

impl From<HistoryEntry> for HistoryView {
    fn from(h: HistoryEntry) -> Self {
        Self {
            uuid: h.uuid,
            pid: h.pid,
            registered_at: h.registered_at,
            revoked_at: h.revoked_at,
            reset_at: h.reset_at,
        }
    }
}

/// A device with its history.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeviceDetail {
    /// The device now (absent when it was reset and has not registered again).
    pub(crate) device: Option<DeviceView>,
    /// The triplets it held before resets, oldest first.
    pub(crate) previous_triplets: Vec<HistoryView>,
    /// Its audit lines (registrations, revocations, resets), newest first (at most
    /// 100).
    pub(crate) audit: Vec<AuditView>,
}

/// Show a device (by the pid it authenticates with and its unique) with its history.
#[utoipa::path(get, path = "/devices/{pid}/{unique}", tag = "devices",
    params(("pid" = String, Path, description = "The pid the device authenticates with"),
           ("unique" = String, Path, description = "The device's unique")),
    responses((status = 200, description = "The device", body = DeviceDetail)))]
pub(crate) async fn show_device(
    State(api): State<Api>,
    caller: Caller,
    ApiPath((pid, unique)): ApiPath<(String, String)>,
) -> Result<Json<DeviceDetail>, Problem> {
    caller.need(Scope::Read)?;
    let detail = api
        .run(move |ops| {
            let device = ops.device(&pid, &unique)?;
            let previous = ops.device_history(&pid, &unique)?;
            let registered_under = device.as_ref().map_or(pid.clone(), |d| d.pid.clone());
            let audit = ops.audit(&AuditFilter {
                pid: Some(registered_under),
                target: Some(unique.clone()),
                action: Some("device.".into()),
                limit: 100,
                ..Default::default()
            })?;
            if device.is_none() && previous.is_empty() && audit.is_empty() {
                return Err(dynreg_store::Error::NotFound(format!(
                    "no device `{unique}` of pid `{pid}`"
                )));
            }
            Ok(DeviceDetail {
                device: device.map(Into::into),
                previous_triplets: previous.into_iter().map(Into::into).collect(),
                audit: audit.into_iter().map(Into::into).collect(),
            })
        })
        .await?;
    Ok(Json(detail))
}

/// Revoke a device: its registrations are refused (4031) and its triplet is never
/// handed out again.
#[utoipa::path(post, path = "/devices/{pid}/{unique}/revoke", tag = "devices",
    params(("pid" = String, Path, description = "The pid the device authenticates with"),
           ("unique" = String, Path, description = "The device's unique")),
    responses((status = 200, description = "The device, revoked", body = DeviceView)))]
pub(crate) async fn revoke_device(
    State(api): State<Api>,
    caller: Caller,
    ApiPath((pid, unique)): ApiPath<(String, String)>,
) -> Result<Json<DeviceView>, Problem> {
    caller.need(Scope::Write)?;
    device_action(api, caller, pid, unique, DeviceAction::Revoke).await
}

/// Forget a revoked device's registration so that it may register again with a fresh
/// triplet (the old one stays revoked, and in the device's history).
#[utoipa::path(post, path = "/devices/{pid}/{unique}/reset", tag = "devices",
    params(("pid" = String, Path, description = "The pid the device authenticates with"),
           ("unique" = String, Path, description = "The device's unique")),
    responses((status = 200, description = "The device as it was before the reset", body = DeviceView)))]
pub(crate) async fn reset_device(
    State(api): State<Api>,
    caller: Caller,
    ApiPath((pid, unique)): ApiPath<(String, String)>,
) -> Result<Json<DeviceView>, Problem> {
    caller.need(Scope::Write)?;
    device_action(api, caller, pid, unique, DeviceAction::Reset).await
}

/// Revokes or resets a device ([`dynreg_store::admin::act_on_device`]).
pub(crate) async fn device_action(
    api: Api,
    caller: Caller,
    pid: String,
    unique: String,
    action: DeviceAction,
) -> Result<Json<DeviceView>, Problem> {
    let now = crate::unix_now();
    let actor = caller.actor();
    let device = api
        .run(move |ops| act_on_device(ops, &actor, action, &pid, &unique, now))
        .await?;
    Ok(Json(device.into()))
}

/// The query of a device export.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct DeviceExportQuery {
    /// The product the devices are registered under.
    pub(crate) pid: String,
    /// Include each device's secret (needs a token of write scope; audited).
    #[serde(default)]
    pub(crate) with_secrets: bool,
}

/// A product's devices as CSV: `pid,unique,uuid,mac,barcode,registered_at,
/// last_seen_at,revoked_at,from_pid` (times RFC 3339 UTC), and `secret` when asked
/// for: what the platform needs to let the devices in, as `dynreg device export`
/// writes it.
#[utoipa::path(get, path = "/devices/export", tag = "devices", params(DeviceExportQuery),
    responses((status = 200, description = "The devices", content_type = "text/csv", body = String)))]
pub(crate) async fn export_devices(
    State(api): State<Api>,
    caller: Caller,
    ApiQuery(q): ApiQuery<DeviceExportQuery>,
) -> Result<axum::response::Response, Problem> {
    let DeviceExportQuery { pid, with_secrets } = q;
    caller.need(if with_secrets {
        Scope::Write
    } else {
        Scope::Read
    })?;
    let filename = format!("{pid}-devices.csv");
    let entry = caller.entry("device.exported", &pid, "");
    let read = move |ops: &dyn dynreg_store::Operator| {
        if ops.load_product(&pid)?.is_none() {
            return Err(dynreg_store::Error::NotFound(format!(
                "unknown pid `{pid}`"
            )));
        }
        let filter = DeviceFilter {
            pid: Some(pid.clone()),
            ..DeviceFilter::default()
        };
        let mut rows = Vec::new();
        ops.for_each_device(&filter, &mut |r| {
            rows.push(dynreg_store::admin::device_export_row(&r, with_secrets));
            Ok(())
        })?;
        Ok(rows)
    };
    let rows = if with_secrets {
        api.audited(entry, move |ops, _| read(ops)).await?
    } else {
        api.run(move |ops| read(ops)).await?
    };
    let mut header = dynreg_store::admin::DEVICE_EXPORT_HEADER.to_vec();
    if with_secrets {
        header.push("secret");
    }
    Ok(super::csv_response(&header, rows, Clone::clone, &filename))
}
