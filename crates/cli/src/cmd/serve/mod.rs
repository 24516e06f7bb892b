//! `dynreg serve`: the registration service. This file wires what the others give: its
//! flags ([`ServeArgs`]), their resolution (`resolve.rs`), the log (`crate::logging`),
//! and `--demo` (`demo.rs`).

mod demo;
mod resolve;

use resolve::{Resolved, json_log, resolve};

use std::net::SocketAddr;
use std::sync::Arc;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use dynreg_endpoint::{Endpoint, EndpointConfig, Listeners};
use dynreg_http::HttpServer;
use dynreg_registrar::Registrar;
use tokio_util::sync::CancellationToken;

use tracing::info;

use crate::logging::init_tracing;

use crate::{Global, Open};

/// Options of `dynreg serve`. Each also comes from `dynreg.toml` (see
/// `dynreg.example.toml`); defaults are given there and in docs/configuration.md.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The TCP address for MQTT, a port (on 127.0.0.1), or `off` for no embedded
    /// endpoint (attached mode) [default: 0.0.0.0:1883].
    #[arg(long, env = "DYNREG_LISTEN")]
    listen: Option<String>,
    /// The HTTP server (the web console at `/`, the admin API under `/api/v1`, the
    /// broker hooks, `/metrics`, `/healthz`, `/readyz`): an address, a port (on
    /// 127.0.0.1), or `off` [default: off].
    #[arg(long, env = "DYNREG_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// A token the broker hooks require (`Authorization: Bearer`, or the password of
    /// HTTP basic authentication) [default: none].
    #[arg(long, env = "DYNREG_HOOK_TOKEN", hide_env_values = true)]
    hook_token: Option<String>,
    /// A broker to take register requests from: `amqp://`/`amqps://` (RabbitMQ) or
    /// `mqtt://`/`mqtts://` (MQTT 5 shared subscription). Repeatable; env: comma
    /// separated [default: none].
    #[arg(
        long,
        env = "DYNREG_ATTACH",
        value_delimiter = ',',
        hide_env_values = true
    )]
    attach: Vec<String>,
    /// The AMQP queue the attach workers share [default: dynreg.register].
    #[arg(long, env = "DYNREG_ATTACH_QUEUE")]
    attach_queue: Option<String>,
    /// Register requests in flight per attach worker (AMQP prefetch, MQTT receive
    /// maximum) [default: 64].
    #[arg(long, env = "DYNREG_ATTACH_INFLIGHT")]
    attach_inflight: Option<u16>,
    /// The AMQP queue's type: `quorum` (survives the loss of a minority of its nodes:
    /// use three or more) or `classic` (lives on one node) [default: quorum].
    #[arg(long, env = "DYNREG_ATTACH_QUEUE_TYPE")]
    attach_queue_type: Option<String>,
    /// The largest MQTT packet accepted, in bytes [default: 8192].
    #[arg(long, env = "DYNREG_MAX_PACKET_SIZE")]
    max_packet_size: Option<u32>,
    /// The most connections open at once [default: 100000].
    #[arg(long, env = "DYNREG_MAX_CONNECTIONS")]
    max_connections: Option<u64>,
    /// Seconds a client has to send CONNECT after connecting [default: 10].
    #[arg(long, env = "DYNREG_CONNECT_TIMEOUT")]
    connect_timeout: Option<u64>,
    /// Seconds after which a connection that only pings is closed [default: 120].
    #[arg(long, env = "DYNREG_IDLE_TIMEOUT")]
    idle_timeout: Option<u64>,
    /// Seconds a write to a client that reads nothing may wait before the connection
    /// is closed [default: 10].
    #[arg(long, env = "DYNREG_WRITE_TIMEOUT")]
    write_timeout: Option<u64>,
    /// Connections per source IP that have not sent their CONNECT yet; 0: no limit
    /// [default: 1024].
    #[arg(long, env = "DYNREG_MAX_PENDING_PER_IP")]
    max_pending_per_ip: Option<u32>,
    /// New connections per second per source IP; 0: no limit [default: 0].
    #[arg(long, env = "DYNREG_CONNECTIONS_PER_IP")]
    connections_per_ip: Option<u32>,
    /// Obsolete and ignored (kept so that existing start scripts still start): shared
    /// credentials are never refused (PROTOCOL.md section 2); a warning says so.
    #[arg(long, env = "DYNREG_REPLAY_GUARD", hide = true, value_parser = clap::builder::BoolishValueParser::new())]
    replay_guard: Option<bool>,
    /// Refused CONNECTs from one IP within the ban window that ban it; 0: no ban
    /// [default: 30].
    #[arg(long, env = "DYNREG_BAN_FAILURES")]
    ban_failures: Option<u32>,
    /// The ban window, seconds [default: 60].
    #[arg(long, env = "DYNREG_BAN_WINDOW")]
    ban_window: Option<u64>,
    /// How long a ban lasts, seconds [default: 300].
    #[arg(long, env = "DYNREG_BAN_DURATION")]
    ban_duration: Option<u64>,
    /// Registrations per second per product; 0: no limit [default: 0].
    #[arg(long, env = "DYNREG_REGISTRATIONS_PER_PID")]
    registrations_per_pid: Option<u32>,
    /// The TCP address for MQTT over TLS [default: 0.0.0.0:8883; only with a cert].
    #[arg(long, env = "DYNREG_TLS_LISTEN")]
    tls_listen: Option<SocketAddr>,
    /// PEM certificate chain for TLS (with --tls-key).
    #[arg(long, env = "DYNREG_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (with --tls-cert).
    #[arg(long, env = "DYNREG_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Serve /metrics without a token (for a Prometheus that sends none); by default
    /// it needs an API token of read scope, like the admin API [default: false].
    #[arg(long, env = "DYNREG_METRICS_PUBLIC", value_parser = clap::builder::BoolishValueParser::new())]
    metrics_public: Option<bool>,
    /// Where device events go: a webhook URL (`http://` or `https://`) that gets each
    /// registration, re-registration, revocation and reset as a signed JSON POST, at
    /// least once, in order per device [default: none].
    #[arg(long, env = "DYNREG_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// The key of the webhook's signature (`X-Dynreg-Signature: sha256=<hex HMAC>`);
    /// required with --webhook-url.
    #[arg(long, env = "DYNREG_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// In attached mode, also publish device events to the broker (the first --attach
    /// that answers) under this topic prefix: `PREFIX/{pid}/device/registered` and
    /// the like; on RabbitMQ to `amq.topic` as `PREFIX.{pid}.device.registered`
    /// [default: none].
    #[arg(long, env = "DYNREG_BROKER_EVENTS")]
    broker_events: Option<String>,
    /// Put the device's secret into `device.registered` and `device.reregistered`
    /// events (`data.secret`), for a platform that has no other copy [default: false].
    #[arg(long, env = "DYNREG_EVENTS_INCLUDE_SECRETS", value_parser = clap::builder::BoolishValueParser::new())]
    events_include_secrets: Option<bool>,
    /// The log's format: `text` (a line per event) or `json` (one JSON object per
    /// line, for log pipelines) [default: text].
    #[arg(long, env = "DYNREG_LOG_FORMAT")]
    log_format: Option<String>,
    /// Make sure a product named `demo` exists and print a command that registers a
    /// device against it.
    #[arg(long)]
    demo: bool,
}

pub(crate) fn run(g: &Global, args: &ServeArgs) -> anyhow::Result<()> {
    // Dropped last, on every way out of this function: writes out the buffered lines.
    let _log = init_tracing(json_log(g, args)?);
    let Resolved {
        store: location,
        endpoint: mut config,
        http,
        hooks,
        attach,
        worker,
        auth,
        per_pid,
        metrics_public,
        events,
        include_secrets,
    } = resolve(g, args)?;
    if let Some(config) = config.as_mut() {
        fit_to_open_files(config)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The ports first: a port in use must not leave a new store behind.
    let listeners = match &config {
        Some(config) => Some(
            runtime
                .block_on(async { Listeners::bind(config) })
                .map_err(|e| {
                    let flag = if config.tls.is_some() {
                        "--listen / --tls-listen (mqtt.listen / tls.listen)"
                    } else {
                        "--listen (mqtt.listen)"
                    };
                    anyhow::anyhow!(
                        "{e}: is another server on it? choose another address with {flag}"
                    )
                })?,
        ),
        None => None,
    };
    let http = match http {
        Some(addr) => Some(runtime.block_on(HttpServer::bind(addr)).map_err(|e| {
            anyhow::anyhow!(
                "cannot listen for HTTP on {addr}: {e}: is another server on it? choose another address with --http-listen (http_listen)"
            )
        })?),
        None => None,
    };
    let store = g.open_location(&location, Open::Create)?;
    let registrar =
        Arc::new(Registrar::with_policy(store.clone(), auth).limit_registrations_per_pid(per_pid));
    runtime.block_on(async {
        let shutdown = shutdown_signal().context("cannot install the signal handlers")?;
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mqtt = match (listeners, config) {
            (Some(listeners), Some(config)) => {
                let endpoint = Endpoint::with_listeners(listeners, config, registrar.clone());
                if args.demo {
                    demo::demo(&store, endpoint.local_addr()?)?;
                }
                let addr = endpoint.local_addr()?.to_string();
                let tls = endpoint.tls_local_addr().transpose()?.map(|a| a.to_string());
                let stopped = stop.clone().cancelled_owned();
                tasks.spawn(async move { endpoint.run(stopped).await.context("MQTT endpoint") });
                format!("{addr}, TLS {}", tls.as_deref().unwrap_or("off"))
            }
            _ => "off".to_owned(),
        };
        let http_addr = match http {
            Some(http) => {
                let addr = http.local_addr()?.to_string();
                let admin = dynreg_http::api::Api::new(store.ops()).with_public_metrics(metrics_public);
                let router = dynreg_http::router(registrar.clone(), hooks.clone(), Some(admin));
                let stop = stop.clone();
                tasks.spawn(async move {
                    http.run(router, stop.cancelled_owned()).await.context("HTTP server")
                });
                addr
            }
            None => "off".to_owned(),
        };
        // The pools' low-water marks are watched whether or not events go anywhere.
        {
            let (ops, stop) = (store.ops(), stop.clone());
            tasks.spawn(async move {
                dynreg_http::pools::watch(ops, dynreg_http::pools::EVERY, stop).await;
                anyhow::Ok(())
            });
        }
        let events_to = if events.is_empty() {
            let ops = store.ops();
            let waiting = ops
                .outbox_on()
                .and_then(|on| on.then(|| ops.outbox_backlog()).transpose())?;
            if let Some(n) = waiting {
                tracing::info!(waiting = n, "the store's outbox is on: this instance does not deliver it (no webhook_url or broker_events); `dynreg outbox off` turns it off");
            }
            "none".to_owned()
        } else {
            let ops = store.ops();
            let to = events.iter().map(|e| e.describe()).collect::<Vec<_>>().join(", ");
            // Blocking calls are fine here: this future runs on the thread that
            // called `block_on`, not on a worker.
            ops.set_outbox(true)?;
            let delivery = dynreg_http::outbox::Delivery {
                destinations: events,
                holder: format!("{}:{}", crate::actor().origin, std::process::id()),
                include_secrets,
                metrics: registrar.metrics().clone(),
            };
            let stop = stop.clone();
            tasks.spawn(async move {
                dynreg_http::outbox::run(ops, delivery, stop).await;
                anyhow::Ok(())
            });
            to
        };
        let brokers = attach.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        for target in attach {
            let (registrar, worker, stop) = (registrar.clone(), worker.clone(), stop.clone());
            tasks.spawn(async move {
                dynreg_attach::run(target, registrar, worker, stop).await;
                anyhow::Ok(())
            });
        }
        info!(mqtt = %mqtt, http = %http_addr, attach = %if brokers.is_empty() { "none" } else { &brokers }, hook_token = hooks.is_protected(), events = %events_to, store = %store.location(), store_from = location.from, "dynreg serving registrations");
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                shutdown.await;
                stop.cancel();
            });
        }
        // Every part runs until the signal; one that fails stops the others.
        let mut first_error = None;
        while let Some(done) = tasks.join_next().await {
            let result = done.context("a serving task panicked").and_then(|r| r);
            if let Err(e) = result {
                stop.cancel();
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    })?;
    store.close()?;
    info!("stopped; store closed");
    Ok(())
}

/// Raises the open-file limit for `max_connections`, and lowers `max_connections` to
/// what the limit allows (saying so), so that the process never runs out of
/// descriptors at accept: past `max_connections` devices get a clear CONNACK "server
/// unavailable" instead.
fn fit_to_open_files(config: &mut EndpointConfig) -> anyhow::Result<()> {
    use dynreg_endpoint::server::RESERVED_FILES;
    let wanted = u64::try_from(config.max_connections).unwrap_or(u64::MAX);
    let want = wanted.saturating_add(RESERVED_FILES);
    let limit = match crate::fdlimit::raise_open_file_limit(want) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit; max_connections left as configured");
            return Ok(());
        }
    };
    if limit >= want {
        info!(open_files = limit, "open-file limit");
        return Ok(());
    }
    let fitted = limit.saturating_sub(RESERVED_FILES);
    if fitted < 16 {
        bail!(
            "the open-file limit is {limit}: too low to serve (dynreg keeps {RESERVED_FILES} descriptors for itself); raise it (ulimit -n, LimitNOFILE= in systemd)"
        );
    }
    tracing::warn!(
        open_files = limit,
        configured = wanted,
        max_connections = fitted,
        "max_connections lowered to fit the open-file limit (raise the hard limit to serve more: ulimit -Hn, LimitNOFILE= in systemd)"
    );
    config.max_connections = usize::try_from(fitted).unwrap_or(usize::MAX);
    Ok(())
}

/// A future that resolves on SIGINT or SIGTERM. The handlers are installed now, not
/// when the future is first polled, so a signal that arrives while the server is
/// starting is not lost (nor does it kill the process with the default action).
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
