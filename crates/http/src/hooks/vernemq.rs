//! VerneMQ webhooks (`vmq_webhooks`): `POST /hooks/vernemq/{hook}` for
//! `auth_on_register`, `auth_on_subscribe`, `auth_on_publish` and their `_m5` forms.
//!
//! Requests are VerneMQ's JSON bodies (`client_id`, `username`, `password`, `peer_addr`;
//! `topics: [{topic, qos}]`; `topic`, `qos`, `retain`). Replies: `{"result": "ok"}`,
//! `{"result": {"error": "not_allowed"}}`, or `{"result": "next"}` for clients that are
//! not registration clients, so that VerneMQ asks its next plugin. A subscription with
//! any topic not the device's own is refused whole. Written from VerneMQ's documented
//! contract; VerneMQ itself is not available here to test against.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use dynreg_registrar::{AuthError, Registrar, Store};
use serde_json::{Value, json};
use tracing::info;

use super::{Action, Verdict, authenticate, is_registration_client, topic_access};

pub(super) fn router<S: Store>() -> Router<Arc<Registrar<S>>> {
    Router::new().route("/vernemq/{hook}", post(hook::<S>))
}

fn ok() -> Response {
    Json(json!({"result": "ok"})).into_response()
}

fn not_allowed() -> Response {
    Json(json!({"result": {"error": "not_allowed"}})).into_response()
}

fn next() -> Response {
    Json(json!({"result": "next"})).into_response()
}

fn text<'a>(body: &'a Value, key: &str) -> Option<&'a str> {
    body.get(key).and_then(Value::as_str)
}

fn qos(v: Option<&Value>) -> u8 {
    v.and_then(Value::as_u64)
        .and_then(|q| u8::try_from(q).ok())
        .unwrap_or(2)
}

async fn hook<S: Store>(
    State(registrar): State<Arc<Registrar<S>>>,
    Path(hook): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let client_id = text(&body, "client_id").unwrap_or_default();
    if !is_registration_client(client_id) {
        return next();
    }
    let username = text(&body, "username");
    let verdict = |action: Action, topic: &str, q: u8, retain: bool| {
        topic_access(
            registrar.metrics(),
            "vernemq",
            client_id,
            username,
            action,
            topic,
            q,
            retain,
        )
    };
    match hook.strip_suffix("_m5").unwrap_or(&hook) {
        "auth_on_register" => {
            let peer = text(&body, "peer_addr").and_then(|a| a.parse::<IpAddr>().ok());
            let password = text(&body, "password");
            match authenticate(&registrar, "vernemq", client_id, username, password, peer).await
            {
                Ok(_) => ok(),
                Err(AuthError::Store(_)) => {
                    (StatusCode::SERVICE_UNAVAILABLE, not_allowed()).into_response()
                }
                Err(_) => not_allowed(),
            }
        }
        "auth_on_subscribe" => {
            let topics = body.get("topics").and_then(Value::as_array);
            let all_own = topics.is_some_and(|ts| {
                !ts.is_empty()
                    && ts.iter().all(|t| {
                        let topic = t.get("topic").and_then(Value::as_str).unwrap_or_default();
                        verdict(Action::Subscribe, topic, qos(t.get("qos")).min(1), false)
                            == Verdict::Allow
                    })
            });
            if all_own {
                ok()
            } else {
                info!(hook = "vernemq", client_id, "subscription denied: not the client's own response topic");
                not_allowed()
            }
        }
        "auth_on_publish" => {
            let topic = text(&body, "topic").unwrap_or_default();
            let retain = body.get("retain").and_then(Value::as_bool).unwrap_or(false);
            match verdict(Action::Publish, topic, qos(body.get("qos")), retain) {
                Verdict::Allow => ok(),
                Verdict::Ignore => next(),
                Verdict::Deny(why) => {
                    info!(hook = "vernemq", client_id, topic, "publish denied: {why}");
                    not_allowed()
                }
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            format!("no VerneMQ hook \"{hook}\": auth_on_register, auth_on_subscribe, auth_on_publish (and _m5)\n"),
        )
            .into_response(),
    }
}
