//! EMQX 5: HTTP authentication (`POST /hooks/emqx/authn`) and HTTP authorization
//! (`POST /hooks/emqx/authz`).
//!
//! Requests are JSON (EMQX's default) or forms, with EMQX's placeholders as fields:
//! authn `clientid`, `username`, `password`, `peerhost`; authz `clientid`, `username`,
//! `topic`, `action`, `qos`, `retain`. Replies are JSON: `{"result": "allow" | "deny" |
//! "ignore"}`, and on an allowed CONNECT `"is_superuser": false` with the device's two
//! topics as `acl` (read by EMQX 5.8 and later, ignored before), so that EMQX need not
//! ask the authz hook for them.
//!
//! No `expire_at`: a registration connection lives for seconds, and a device whose
//! clock is late would be cut off while its credential is still valid.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use dynreg_proto::Topic;
use dynreg_registrar::{AuthError, Registrar, Store};
use serde_json::json;
use tracing::info;

use super::{Action, Verdict, authenticate, is_registration_client, topic_access};
use crate::fields::Fields;

pub(super) fn router<S: Store>() -> Router<Arc<Registrar<S>>> {
    Router::new()
        .route("/emqx/authn", post(authn::<S>))
        .route("/emqx/authz", post(authz::<S>))
}

fn result(r: &str) -> Response {
    Json(json!({ "result": r, "is_superuser": false })).into_response()
}

async fn authn<S: Store>(State(registrar): State<Arc<Registrar<S>>>, f: Fields) -> Response {
    let client_id = f.get("clientid").unwrap_or_default();
    if !is_registration_client(client_id) {
        return result("ignore");
    }
    let peer = f.get("peerhost").and_then(|h| h.parse::<IpAddr>().ok());
    let decided = authenticate(
        &registrar,
        "emqx",
        client_id,
        f.get("username"),
        f.get("password"),
        peer,
    )
    .await;
    match decided {
        Ok(device) => {
            let publish = Topic::request(&device.pid, &device.unique).to_string();
            let subscribe = Topic::response(&device.pid, &device.unique).to_string();
            Json(json!({
                "result": "allow",
                "is_superuser": false,
                "acl": [
                    {"permission": "allow", "action": "publish", "topic": format!("eq {publish}"), "qos": [0, 1], "retain": false},
                    {"permission": "allow", "action": "subscribe", "topic": format!("eq {subscribe}"), "qos": [0, 1]},
                    {"permission": "deny", "action": "all", "topic": "#"},
                ],
            }))
            .into_response()
        }
        // A 5xx makes EMQX treat the hook as `ignore` and log the failure; with no
        // other authenticator for these clients, the device is refused and retries.
        Err(AuthError::Store(_)) => {
            (StatusCode::SERVICE_UNAVAILABLE, result("ignore")).into_response()
        }
        Err(_) => result("deny"),
    }
}

async fn authz<S: Store>(State(registrar): State<Arc<Registrar<S>>>, f: Fields) -> Response {
    let client_id = f.get("clientid").unwrap_or_default();
    let topic = f.get("topic").unwrap_or_default();
    let action = match f.get("action") {
        Some(a) if a.eq_ignore_ascii_case("publish") => Action::Publish,
        Some(a) if a.eq_ignore_ascii_case("subscribe") => Action::Subscribe,
        other => {
            if !is_registration_client(client_id) {
                return result("ignore");
            }
            info!(hook = "emqx", client_id, action = ?other, "authorization denied: unknown action");
            return result("deny");
        }
    };
    // An unreadable qos counts as 2 (denied); a missing one (a body template without
    // `${qos}`) as 0, a missing retain as false.
    let qos = f
        .get("qos")
        .map_or(Some(0), |q| q.trim().parse::<u8>().ok())
        .unwrap_or(2);
    let retain = f
        .get("retain")
        .is_some_and(|r| matches!(r.trim(), "true" | "1"));
    match topic_access(
        registrar.metrics(),
        "emqx",
        client_id,
        f.get("username"),
        action,
        topic,
        qos,
        retain,
    ) {
        Verdict::Allow => result("allow"),
        Verdict::Ignore => result("ignore"),
        Verdict::Deny(why) => {
            info!(
                hook = "emqx",
                client_id,
                topic,
                ?action,
                qos,
                retain,
                "authorization denied: {why}"
            );
            result("deny")
        }
    }
}
