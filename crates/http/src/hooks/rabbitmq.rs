//! RabbitMQ's HTTP auth backend (`rabbitmq_auth_backend_http`), for devices that
//! connect through the `rabbitmq_mqtt` plugin: `/hooks/rabbitmq/user`, `/vhost`,
//! `/resource` and `/topic`, answered in plain text `allow` or `deny`.
//!
//! What RabbitMQ 3.10 sends (recorded in `../shared/facts/`):
//! - `user`: `username`, `password`, `vhost`, `client_id`: the CONNECT, decided by
//!   [`Registrar::authenticate`]. Users without a registration `client_id` (the
//!   worker's own AMQP user, the platform's devices) get `deny`, so that the next
//!   backend (`internal`) decides.
//! - `vhost`: `username`, `vhost`, `ip`, `client_id`: allowed for a registration
//!   client (asked only after `user` allowed it: its credentials verified, so a ban of
//!   its address does not apply, PROTOCOL.md section 2). `user` carries no address,
//!   so failing CONNECTs through RabbitMQ are not counted towards a ban.
//! - `resource`: the MQTT plugin's subscription queue
//!   `mqtt-subscription-<clientId>qos<0|1>` (configure, read, write) and its exchange
//!   `amq.topic` (read, write).
//! - `topic`: `name` = `amq.topic`, `permission` `write` (publish) or `read`
//!   (subscribe), `routing_key` (the MQTT topic with `/` sent as `.` and `+` as `*`),
//!   and the clientId only as `variable_map.client_id`.
//!
//! Because RabbitMQ turns `/` into `.`, a pid or unique containing `.` (or `*`, an AMQP
//! wildcard) could not be told apart from another device's topic: such clients are
//! refused at the `user` hook.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dynreg_registrar::{AuthError, Registrar, Store};
use tracing::info;

use super::{Action, Verdict, authenticate, identity, is_registration_client, topic_access};
use crate::fields::Fields;

/// The exchange the MQTT plugin publishes to and binds its queues on (its default).
pub const EXCHANGE: &str = "amq.topic";

/// The subscription queue name prefix of the MQTT plugin (3.x).
const QUEUE_PREFIX: &str = "mqtt-subscription-";

pub(super) fn router<S: Store>() -> Router<Arc<Registrar<S>>> {
    Router::new()
        .route("/rabbitmq/user", get(user::<S>).post(user::<S>))
        .route("/rabbitmq/vhost", get(vhost).post(vhost))
        .route("/rabbitmq/resource", get(resource).post(resource))
        .route("/rabbitmq/topic", get(topic::<S>).post(topic::<S>))
}

fn allow() -> Response {
    "allow".into_response()
}

fn deny() -> Response {
    "deny".into_response()
}

/// Whether a pid or unique survives RabbitMQ's topic translation unambiguously.
fn amqp_safe(id: &str) -> bool {
    !id.contains(['.', '*'])
}

async fn user<S: Store>(State(registrar): State<Arc<Registrar<S>>>, f: Fields) -> Response {
    let client_id = f.get("client_id").unwrap_or_default();
    if !is_registration_client(client_id) {
        return deny();
    }
    let decided = authenticate(
        &registrar,
        "rabbitmq",
        client_id,
        f.get("username"),
        f.get("password"),
        None,
    )
    .await;
    match decided {
        Ok(d) if amqp_safe(&d.pid) && amqp_safe(&d.unique) => allow(),
        Ok(_) => {
            info!(
                hook = "rabbitmq",
                client_id,
                "CONNECT refused: a pid or unique with `.` or `*` is ambiguous in RabbitMQ's routing keys"
            );
            deny()
        }
        Err(AuthError::Store(_)) => (StatusCode::SERVICE_UNAVAILABLE, "deny").into_response(),
        Err(_) => deny(),
    }
}

/// The registration clientId of a `vhost` or `resource` request, or `None` (logged
/// when it is a registration client whose identity does not hold).
fn registration_client<'a>(f: &'a Fields, hook: &'static str) -> Option<&'a str> {
    let client_id = f.get("client_id").unwrap_or_default();
    if !is_registration_client(client_id) {
        return None;
    }
    match identity(client_id, f.get("username")) {
        Ok(_) => Some(client_id),
        Err(why) => {
            info!(hook = "rabbitmq", client_id, "{hook} access denied: {why}");
            None
        }
    }
}

async fn vhost(f: Fields) -> Response {
    match registration_client(&f, "vhost") {
        Some(_) => allow(),
        None => deny(),
    }
}

async fn resource(f: Fields) -> Response {
    let Some(client_id) = registration_client(&f, "resource") else {
        return deny();
    };
    let name = f.get("name").unwrap_or_default();
    let permission = f.get("permission").unwrap_or_default();
    let allowed = match f.get("resource") {
        Some("queue") => {
            matches!(permission, "configure" | "read" | "write")
                && name
                    .strip_prefix(QUEUE_PREFIX)
                    .and_then(|rest| rest.strip_prefix(client_id))
                    .is_some_and(|qos| matches!(qos, "qos0" | "qos1"))
        }
        Some("exchange") => name == EXCHANGE && matches!(permission, "read" | "write"),
        _ => false,
    };
    if allowed {
        allow()
    } else {
        info!(
            hook = "rabbitmq",
            client_id, name, permission, "resource denied"
        );
        deny()
    }
}

async fn topic<S: Store>(State(registrar): State<Arc<Registrar<S>>>, f: Fields) -> Response {
    let client_id = f
        .get("variable_map.client_id")
        .or_else(|| f.get("client_id"))
        .unwrap_or_default();
    if !is_registration_client(client_id) {
        return deny();
    }
    let action = match f.get("permission") {
        Some("write") => Action::Publish,
        Some("read") => Action::Subscribe,
        _ => return deny(),
    };
    if f.get("name") != Some(EXCHANGE) {
        return deny();
    }
    let key = f.get("routing_key").unwrap_or_default();
    // Back to the MQTT topic; a routing key with `*` (a `+` wildcard) or `#` is never
    // a topic of the device's own, and `Topic::is_own` refuses both.
    let mqtt_topic = key.replace('.', "/").replace('*', "+");
    match topic_access(
        registrar.metrics(),
        "rabbitmq",
        client_id,
        f.get("username"),
        action,
        &mqtt_topic,
        0,
        false,
    ) {
        Verdict::Allow => allow(),
        Verdict::Ignore => deny(),
        Verdict::Deny(why) => {
            info!(
                hook = "rabbitmq",
                client_id,
                routing_key = key,
                ?action,
                "topic denied: {why}"
            );
            deny()
        }
    }
}
