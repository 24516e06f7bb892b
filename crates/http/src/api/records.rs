//! The audit log, recent registrations, and API tokens.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use dynreg_store::{AuditFilter, AuditRecord, Scope, TokenInfo};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Api, ApiJson, ApiPath, ApiQuery, Caller, Problem, page_size};

pub(super) fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .routes(routes!(list_audit))
        .routes(routes!(recent_registrations))
        .routes(routes!(registration_stream))
        .routes(routes!(outbox_status))
        .routes(routes!(outbox_off))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
}

/// A line of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditView {
    /// Its id (lines are numbered in the order they were written).
    pub(crate) id: u64,
    /// When, Unix seconds.
    pub(crate) at: u64,
    /// Who: a token's name, `cli:<user>`, or `device`.
    pub(crate) actor: String,
    /// From where (client address, host), or empty.
    pub(crate) origin: String,
    /// What: `device.registered`, `product.created`...
    pub(crate) action: String,
    /// The product concerned, or empty.
    pub(crate) pid: String,
    /// The device's unique, token's name..., or empty.
    pub(crate) target: String,
    /// The triplet concerned, or empty.
    pub(crate) uuid: String,
    /// More, as a JSON object's text, or empty.
    pub(crate) detail: String,
}

impl From<AuditRecord> for AuditView {
    fn from(r: AuditRecord) -> Self {
        let e = r.entry;
        Self {
            id: r.id,
            at: e.at,
            actor: e.actor,
            origin: e.origin,
            action: e.action,
            pid: e.pid,
            target: e.target,
            uuid: e.uuid,
            detail: e.detail,
        }
    }
}

/// A page of audit lines.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditPage {
    /// The lines, newest first.
    pub(crate) items: Vec<AuditView>,
    /// The `before` of the next page, when there may be one.
    pub(crate) next: Option<u64>,
}

/// Which audit lines to read.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// Only lines about this product.
    pub(crate) pid: Option<String>,
    /// Only lines about this target (a device's unique, a token's name).
    pub(crate) target: Option<String>,
    /// Only lines about this triplet.
    pub(crate) uuid: Option<String>,
    /// Only lines by this actor.
    pub(crate) actor: Option<String>,
    /// Only this action (`device.revoked`), or an object's actions (`device.`).
    #[param(pattern = "^[a-z_.]+$")]
    pub(crate) action: Option<String>,
    /// Only lines at or after this time, Unix seconds.
    pub(crate) since: Option<u64>,
    /// Only lines with an id below this one: `next` of the previous page.
    pub(crate) before: Option<u64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<usize>,
}

/// Reads a page of `filter`'s lines.
pub(crate) async fn page(
    api: &Api,
    mut filter: AuditFilter,
    limit: usize,
) -> Result<AuditPage, Problem> {
    filter.limit = limit + 1;
    let mut lines = api.run(move |ops| ops.audit(&filter)).await?;
    let next = (lines.len() > limit).then(|| {
        lines.truncate(limit);
        lines[limit - 1].id
    });
    Ok(AuditPage {
        items: lines.into_iter().map(Into::into).collect(),
        next,
    })
}

/// Read the audit log, newest first.
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, description = "A page of audit lines", body = AuditPage)))]
pub(crate) async fn list_audit(
    State(api): State<Api>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, Problem> {
    caller.need(Scope::Read)?;
    let limit = page_size(q.limit, 100)?;
    let filter = AuditFilter {
        pid: q.pid,
        target: q.target,
        uuid: q.uuid,
        actor: q.actor,
        action: q.action,
        since: q.since,
        before: q.before,
        ..Default::default()
    };
    Ok(Json(page(&api, filter, limit).await?))
}

/// Which registrations to read.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RegistrationQuery {
    /// Only registrations under this product.
    pub(crate) pid: Option<String>,
    /// Only those at or after this time, Unix seconds.
    pub(crate) since: Option<u64>,
    /// Only lines with an id below this one: `next` of the previous page.
    pub(crate) before: Option<u64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<usize>,
}

/// Recent registrations and re-registrations, newest first (their audit lines).
#[utoipa::path(get, path = "/registrations", tag = "audit", params(RegistrationQuery),
    responses((status = 200, description = "A page of registrations", body = AuditPage)))]
pub(crate) async fn recent_registrations(
    State(api): State<Api>,
    caller: Caller,
    ApiQuery(q): ApiQuery<RegistrationQuery>,
) -> Result<Json<AuditPage>, Problem> {
    caller.need(Scope::Read)?;
    let limit = page_size(q.limit, 100)?;
    let filter = AuditFilter {
        pid: q.pid,
        since: q.since,
        before: q.before,
        registrations_only: true,
        ..Default::default()
    };
    Ok(Json(page(&api, filter, limit).await?))
}

/// Which registrations to stream.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamQuery {
    /// Only registrations under this product.
    pub(crate) pid: Option<String>,
}

/// How often the stream looks for new lines.
const STREAM_POLL: Duration = Duration::from_millis(500);
/// The most lines read at once.
const STREAM_BATCH: usize = 1000;

/// Where a registration stream is, and what it has still to send.
struct StreamState {
    api: Api,
    pid: Option<String>,
    /// The newest line id read.
    last: u64,
    pending: VecDeque<AuditView>,
}

impl StreamState {
    /// The next event: a line waiting, else the lines after the last one read, oldest
    /// first (at once when the last read was a full batch, else after a pause).
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        let mut behind = false;
        loop {
            if let Some(line) = self.pending.pop_front() {
                let event = Event::default()
                    .event("registration")
                    .id(line.id.to_string())
                    .json_data(&line)
                    .unwrap_or_else(|_| Event::default().comment("unencodable line"));
                return Some((Ok(event), self));
            }
            if !behind {
                tokio::time::sleep(STREAM_POLL).await;
            }
            let filter = AuditFilter {
                pid: self.pid.clone(),
                registrations_only: true,
                after: Some(self.last),
                oldest_first: true,
                limit: STREAM_BATCH,
                ..Default::default()
            };
            // A store that does not answer now is asked again at the next poll.
            let Ok(lines) = self.api.run(move |ops| ops.audit(&filter)).await else {
                behind = false;
                continue;
            };
            behind = lines.len() == STREAM_BATCH;
            if let Some(newest) = lines.last() {
                self.last = newest.id;
            }
            self.pending.extend(lines.into_iter().map(AuditView::from));
        }
    }
}

/// Registrations and re-registrations as they happen, as Server-Sent Events (`event:
/// registration`, `id:` the audit line's id, `data:` the line as JSON), across every
/// instance on the store. Starts with what comes after the request, or after
/// `Last-Event-ID` when the client reconnects. New lines are looked for every 0.5 s;
/// a comment is sent every 15 s to keep the connection open. For watching: on
/// PostgreSQL a line committed a moment after a later-numbered one was sent is not
/// sent (the audit log has it).
#[utoipa::path(get, path = "/registrations/stream", tag = "audit", params(StreamQuery),
    responses((status = 200, description = "A stream of registration events", content_type = "text/event-stream", body = String)))]
pub(crate) async fn registration_stream(
    State(api): State<Api>,
    caller: Caller,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    caller.need(Scope::Read)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let last = match resume {
        Some(id) => id,
        None => api
            .run(|ops| {
                ops.audit(&AuditFilter {
                    limit: 1,
                    ..Default::default()
                })
            })
            .await?
            .first()
            .map_or(0, |r| r.id),
    };
    let state = StreamState {
        api,
        pid: q.pid,
        last,
        pending: VecDeque::new(),
    };
    let events = futures_util::stream::unfold(state, StreamState::next);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The event outbox.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OutboxView {
    /// Whether device events are kept for the webhook.
    pub(crate) on: bool,
    /// Events waiting to be delivered.
    pub(crate) backlog: u64,
}

/// The event outbox: on or off, and its backlog.
#[utoipa::path(get, path = "/outbox", tag = "audit",
    responses((status = 200, description = "The outbox", body = OutboxView)))]
pub(crate) async fn outbox_status(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<OutboxView>, Problem> {
    caller.need(Scope::Read)?;
    let (on, backlog) = api
        .run(|ops| Ok((ops.outbox_on()?, ops.outbox_backlog()?)))
        .await?;
    Ok(Json(OutboxView { on, backlog }))
}

/// An API token (without the token itself).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenView {
    /// Its id.
    pub(crate) id: u64,
    /// Its name.
    pub(crate) name: String,
    /// `read`, `write` or `admin`.
    pub(crate) scope: String,
    /// When it was created, Unix seconds.
    pub(crate) created_at: u64,
    /// Who created it.
    pub(crate) created_by: String,
    /// When it was revoked.
    pub(crate) revoked_at: Option<u64>,
}

impl From<TokenInfo> for TokenView {
    fn from(t: TokenInfo) -> Self {
        Self {
            id: t.id,
            name: t.name,
            scope: t.scope.to_string(),
            created_at: t.created_at,
            created_by: t.created_by,
            revoked_at: t.revoked_at,
        }
    }
}

/// A new token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewTokenBody {
    /// Its name (whom it is for), unique among tokens not revoked: 1 to 64
    /// printable characters without leading or trailing spaces.
    #[schema(min_length = 1, max_length = 64)]
    pub(crate) name: String,
    /// `read`, `write` or `admin`.
    #[schema(pattern = "^(read|write|admin)$")]
    pub(crate) scope: String,
}

/// A token just created.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedToken {
    /// The token: send it as `Authorization: Bearer <token>`. Shown once; only its
    /// hash is stored.
    pub(crate) token: String,
    /// What was stored.
    pub(crate) info: TokenView,
}

/// List API tokens, revoked ones included.
#[utoipa::path(get, path = "/tokens", tag = "tokens",
    responses((status = 200, description = "Every token", body = Vec<TokenView>)))]
pub(crate) async fn list_tokens(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<Vec<TokenView>>, Problem> {
    caller.need(Scope::Admin)?;
    let list = api.run(|ops| ops.tokens()).await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

/// Create an API token.
#[utoipa::path(post, path = "/tokens", tag = "tokens", request_body = NewTokenBody,
    responses((status = 201, description = "Created; the token is shown only here", body = CreatedToken)))]
pub(crate) async fn create_token(
    State(api): State<Api>,
    caller: Caller,
    ApiJson(body): ApiJson<NewTokenBody>,
) -> Result<(StatusCode, Json<CreatedToken>), Problem> {
    caller.need(Scope::Admin)?;
    let scope: Scope = body.scope.parse().map_err(Problem::from)?;
    let now = crate::unix_now();
    let by = caller.actor().name;
    let mut entry = caller.entry("token.created", "", &body.name);
    entry.detail = serde_json::json!({"scope": scope.to_string()}).to_string();
    let (info, token) = api
        .audited(entry, move |ops, _| {
            ops.create_token(&body.name, scope, &by, now)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token,
            info: info.into(),
        }),
    ))
}

/// Revoke an API token by name; it stops working at once.
#[utoipa::path(delete, path = "/tokens/{name}", tag = "tokens",
    params(("name" = String, Path, description = "The token's name")),
    responses((status = 200, description = "The revoked token", body = TokenView)))]
pub(crate) async fn revoke_token(
    State(api): State<Api>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<TokenView>, Problem> {
    caller.need(Scope::Admin)?;
    let now = crate::unix_now();
    let entry = caller.entry("token.revoked", "", &name);
    let info = api
        .audited(entry, move |ops, _| ops.revoke_token(&name, now))
        .await?;
    Ok(Json(info.into()))
}

/// The outbox as turned off.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OutboxOff {
    /// Always false.
    pub(crate) on: bool,
    /// The events that were waiting, dropped.
    pub(crate) dropped: u64,
}

/// Turn the event outbox off and drop the events waiting in it, for a platform that
/// no longer takes events (as `dynreg outbox off`). Audited; a `serve` with a
/// webhook or broker events turns it on again when it starts.
#[utoipa::path(post, path = "/outbox/off", tag = "audit",
    responses((status = 200, description = "The outbox is off", body = OutboxOff)))]
pub(crate) async fn outbox_off(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<OutboxOff>, Problem> {
    caller.need(Scope::Admin)?;
    let dropped = api
        .audited(caller.entry("outbox.off", "", ""), |ops, entry| {
            dynreg_store::admin::outbox_off(ops, entry)
        })
        .await?;
    Ok(Json(OutboxOff { on: false, dropped }))
}
