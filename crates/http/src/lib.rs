//! # dynreg-http: the HTTP server of `dynreg serve --http-listen`
//!
//! One small HTTP/1.1 server (axum over hyper) carries what other systems ask of
//! dynreg over HTTP:
//! - [`hooks`]: the broker callbacks of attached mode. EMQX's HTTP authentication and
//!   authorization and RabbitMQ's HTTP auth backend ask dynreg whether a CONNECT is
//!   allowed and whether a client may use a topic. Every CONNECT is decided by
//!   [`dynreg_registrar::Registrar::authenticate`], the same decision the embedded
//!   endpoint makes, and every topic by [`dynreg_proto::Topic::is_own`].
//! - [`api`]: the admin API under `/api/v1`, for operators and the platform.
//! - [`console`]: the web console's pages at `/`, over the API's handlers.
//! - `auth`: which credentials authenticate a request (API token, session cookie,
//!   CSRF token), for the API and the console alike; they do not import each other's
//!   rules (the console calls the API's handlers, never the other way).
//! - [`outbox`]: the deliverer of the event outbox to every destination, and the
//!   events' format ([`outbox::event`]).
//! - [`webhook`]: the platform's webhook, one destination of the outbox.
//! - [`pools`]: the watch of the pools' low-water marks (`pool.low`).
//! - `/healthz`: the process is up; `/readyz`: the store answers; `/metrics`:
//!   Prometheus metrics ([`dynreg_registrar::metrics`]).
//!
//! The hooks may be protected by a token ([`HookAuth`]); without one they rely on the
//! bind address (`dynreg serve --http-listen`: a bare port binds loopback).
//!
//! ## Layout
//! - `hooks/`: the broker hooks (`emqx.rs`, `rabbitmq.rs`, `vernemq.rs`), and `fields.rs`
//!   the form and JSON fields they read.
//! - `auth.rs`: the credentials of a request (token, session cookie, CSRF token).
//! - `api/`: the admin API, a module per noun (`products`, `pools`, `devices`,
//!   `expected`, `records`), and `problem.rs`: its errors and input extractors.
//! - `console/`: the console's pages, a module per noun mirroring `api/`, `forms.rs`
//!   what they share, and the `SignedIn` and `Posted` extractors in `mod.rs`.
//! - `outbox/`: the deliverer and the events' format (`event.rs`); `webhook.rs`: the
//!   webhook destination; `pools.rs`: the low-water watch.

pub mod api;
mod auth;
pub mod console;
pub mod hooks;
pub mod outbox;
pub mod pools;
pub mod webhook;

mod fields;

pub(crate) use dynreg_proto::unix_now;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use dynreg_registrar::{Registrar, Store};
use tokio::net::TcpListener;

pub use hooks::HookAuth;

/// The whole HTTP service: the hooks under `/hooks` (behind `auth`), the admin API
/// under `/api/v1` when given, `/healthz` (the process is up) and `/readyz` (the store
/// answers).
pub fn router<S: Store>(
    registrar: Arc<Registrar<S>>,
    auth: HookAuth,
    admin: Option<api::Api>,
) -> Router {
    let metrics = registrar.metrics().clone();
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .nest("/hooks", hooks::router(registrar, auth));
    if let Some(admin) = admin {
        let admin = admin.with_metrics(metrics);
        router = router
            .route("/readyz", get(api::ready).with_state(admin.clone()))
            .route("/metrics", get(api::metrics).with_state(admin.clone()))
            .nest("/api/v1", api::router(admin.clone()))
            .merge(console::router(admin));
    }
    router
}

/// A bound HTTP server, not yet serving.
#[derive(Debug)]
pub struct HttpServer {
    listener: TcpListener,
}

impl HttpServer {
    /// Binds `addr` (inside a tokio runtime).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
        })
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `router` until `shutdown` resolves, then finishes the requests in
    /// flight.
    pub async fn run(
        self,
        router: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    }
}
