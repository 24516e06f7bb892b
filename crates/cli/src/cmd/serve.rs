//! `dynreg serve`: the registration service on the embedded store.

use std::net::SocketAddr;
use std::sync::Arc;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use dynreg_attach::{QueueType, Target, WorkerConfig};
use dynreg_endpoint::{Endpoint, EndpointConfig, Listeners, TlsSettings};
use dynreg_http::{HookAuth, HttpServer};
use dynreg_proto::credentials::{Credentials, SignMethod, sign};
use dynreg_proto::{RegisterRequest, Topic};
use dynreg_registrar::events::SinkFactory;
use dynreg_registrar::{AuthPolicy, BanPolicy, Registrar, SourceMode};
use dynreg_store::NewProduct;
use tokio_util::sync::CancellationToken;

use crate::store::Backend;
use tracing::info;

use crate::logging::LogGuard;

use crate::config::{self, Setting};
use crate::{Global, Open, unix_now};

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

/// Everything `serve` needs, validated.
struct Resolved {
    store: crate::StoreLocation,
    /// The embedded endpoint, unless `--listen off`.
    endpoint: Option<EndpointConfig>,
    /// The HTTP server's address, if on.
    http: Option<SocketAddr>,
    hooks: HookAuth,
    /// The brokers the workers attach to.
    attach: Vec<Target>,
    worker: WorkerConfig,
    auth: AuthPolicy,
    /// Registrations per second per product (0: no limit).
    per_pid: u32,
    /// /metrics without a token.
    metrics_public: bool,
    /// Where device events are delivered (the webhook, the broker), if anywhere.
    events: Vec<Arc<dyn SinkFactory>>,
    /// Whether registration events carry the device's secret.
    include_secrets: bool,
}

/// Merges flags/env, the file and the defaults, and validates every value (naming the
/// key) before anything is opened or bound.
fn resolve(g: &Global, args: &ServeArgs) -> anyhow::Result<Resolved> {
    let (file, path) = g.file()?;
    if let Some(p) = path {
        info!(config = %p.display(), "configuration file read");
    }
    let store = g.location()?;
    // The defaults are the endpoint's own, so that they are written down once.
    let d = EndpointConfig::default();
    let listen = config::address_or_off(
        "mqtt.listen",
        args.listen.as_deref(),
        file.mqtt.listen.as_deref(),
        Some(d.listen),
    )?;
    let http = config::address_or_off(
        "http_listen",
        args.http_listen.as_deref(),
        file.http_listen.as_deref(),
        None,
    )
    .map_err(|e| anyhow::anyhow!("{e} (flag --http-listen, env DYNREG_HTTP_LISTEN)"))?;
    let hooks = match args.hook_token.as_deref().or(file.hook_token.as_deref()) {
        Some("") => bail!("hook_token is empty (flag --hook-token, env DYNREG_HOOK_TOKEN)"),
        Some(t) => HookAuth::token(t),
        None => HookAuth::open(),
    };
    if let (Some(addr), false) = (http, hooks.is_protected()) {
        if !addr.ip().is_loopback() {
            tracing::warn!(http_listen = %addr, "the broker hooks listen beyond loopback without a token: set --hook-token (docs/integrations/)");
        }
    }
    let max_packet_size = Setting {
        key: "mqtt.max_packet_size",
        flag: "--max-packet-size",
        env: "DYNREG_MAX_PACKET_SIZE",
        cli: args.max_packet_size,
        file: file.mqtt.max_packet_size,
        default: d.max_packet_size,
    }
    .in_range(128, 268_435_455)?;
    let connect_timeout = Setting {
        key: "mqtt.connect_timeout_secs",
        flag: "--connect-timeout",
        env: "DYNREG_CONNECT_TIMEOUT",
        cli: args.connect_timeout,
        file: file.mqtt.connect_timeout_secs,
        default: d.connect_timeout.as_secs(),
    }
    .in_range(1, 3600)?;
    let idle_timeout = Setting {
        key: "mqtt.idle_timeout_secs",
        flag: "--idle-timeout",
        env: "DYNREG_IDLE_TIMEOUT",
        cli: args.idle_timeout,
        file: file.mqtt.idle_timeout_secs,
        default: d.idle_timeout.as_secs(),
    }
    .in_range(1, 86_400)?;
    let max_connections = Setting {
        key: "limits.max_connections",
        flag: "--max-connections",
        env: "DYNREG_MAX_CONNECTIONS",
        cli: args.max_connections,
        file: file.limits.max_connections,
        default: u64::try_from(d.max_connections).unwrap_or(u64::MAX),
    }
    .in_range(1, 10_000_000)?;
    let write_timeout = Setting {
        key: "mqtt.write_timeout_secs",
        flag: "--write-timeout",
        env: "DYNREG_WRITE_TIMEOUT",
        cli: args.write_timeout,
        file: file.mqtt.write_timeout_secs,
        default: d.write_timeout.as_secs(),
    }
    .in_range(1, 3600)?;
    let max_pending_per_ip = Setting {
        key: "limits.max_pending_per_ip",
        flag: "--max-pending-per-ip",
        env: "DYNREG_MAX_PENDING_PER_IP",
        cli: args.max_pending_per_ip,
        file: file.limits.max_pending_per_ip,
        default: d.max_pending_per_ip,
    }
    .in_range(0, 10_000_000)?;
    let a = AuthPolicy::default();
    if args.replay_guard.is_some() || file.limits.replay_guard.is_some() {
        tracing::warn!(
            "limits.replay_guard (--replay-guard, DYNREG_REPLAY_GUARD) is obsolete and ignored: a CONNECT is never refused because another device presented the same credential (PROTOCOL.md section 2); sharing is counted in dynreg_shared_credentials_total. Remove the setting; see docs/security.md for what protects a product instead"
        );
    }
    let ban = BanPolicy {
        failures: Setting {
            key: "limits.ban_failures",
            flag: "--ban-failures",
            env: "DYNREG_BAN_FAILURES",
            cli: args.ban_failures,
            file: file.limits.ban_failures,
            default: a.ban.failures,
        }
        .in_range(0, 1_000_000)?,
        window_secs: Setting {
            key: "limits.ban_window_secs",
            flag: "--ban-window",
            env: "DYNREG_BAN_WINDOW",
            cli: args.ban_window,
            file: file.limits.ban_window_secs,
            default: a.ban.window_secs,
        }
        .in_range(1, 86_400)?,
        duration_secs: Setting {
            key: "limits.ban_secs",
            flag: "--ban-duration",
            env: "DYNREG_BAN_DURATION",
            cli: args.ban_duration,
            file: file.limits.ban_secs,
            default: a.ban.duration_secs,
        }
        .in_range(1, 30 * 86_400)?,
    };
    let per_ip = Setting {
        key: "limits.connections_per_ip_per_sec",
        flag: "--connections-per-ip",
        env: "DYNREG_CONNECTIONS_PER_IP",
        cli: args.connections_per_ip,
        file: file.limits.connections_per_ip_per_sec,
        default: d.connections_per_ip_per_sec,
    }
    .in_range(0, 1_000_000)?;
    let per_pid = Setting {
        key: "limits.registrations_per_pid_per_sec",
        flag: "--registrations-per-pid",
        env: "DYNREG_REGISTRATIONS_PER_PID",
        cli: args.registrations_per_pid,
        file: file.limits.registrations_per_pid_per_sec,
        default: 0,
    }
    .in_range(0, 10_000_000)?;
    let cert = args.tls_cert.clone().or(file.tls.cert.clone());
    let key = args.tls_key.clone().or(file.tls.key.clone());
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => {
            let tls_listen = config::address(
                "tls.listen",
                args.tls_listen,
                file.tls.listen.as_deref(),
                config::DEFAULT_TLS_LISTEN,
            )?;
            if Some(tls_listen) == listen {
                bail!("tls.listen and mqtt.listen are both {tls_listen}: give TLS its own port");
            }
            Some(TlsSettings::load(tls_listen, &cert, &key)?)
        }
        (Some(_), None) => {
            bail!("tls.cert is set but tls.key is not (flag --tls-key, env DYNREG_TLS_KEY)")
        }
        (None, Some(_)) => {
            bail!("tls.key is set but tls.cert is not (flag --tls-cert, env DYNREG_TLS_CERT)")
        }
        (None, None) => {
            if args.tls_listen.is_some() {
                bail!("--tls-listen needs --tls-cert and --tls-key");
            }
            None
        }
    };
    if listen.is_none() && tls.is_some() {
        bail!(
            "mqtt.listen is off but tls.cert and tls.key are set: MQTT over TLS is the embedded endpoint's; give --listen an address, or drop the TLS settings"
        );
    }
    let urls = if args.attach.is_empty() {
        file.attach.clone().unwrap_or_default()
    } else {
        args.attach.clone()
    };
    let attach = urls
        .iter()
        .map(|u| Target::parse(u).map_err(|e| anyhow::anyhow!("attach: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let dw = WorkerConfig::default();
    let worker = WorkerConfig {
        inflight: Setting {
            key: "attach_inflight",
            flag: "--attach-inflight",
            env: "DYNREG_ATTACH_INFLIGHT",
            cli: args.attach_inflight,
            file: file.attach_inflight,
            default: dw.inflight,
        }
        .in_range(1, 65_535)?,
        queue: match args.attach_queue.clone().or(file.attach_queue.clone()) {
            Some(q) if q.is_empty() || q.len() > 255 => bail!(
                "attach_queue = \"{q}\" must be 1 to 255 bytes (flag --attach-queue, env DYNREG_ATTACH_QUEUE)"
            ),
            Some(q) => q,
            None => dw.queue,
        },
        queue_type: match args.attach_queue_type.as_deref().or(file.attach_queue_type.as_deref()) {
            Some(t) => QueueType::parse(t).map_err(|e| {
                anyhow::anyhow!("attach_queue_type: {e} (flag --attach-queue-type, env DYNREG_ATTACH_QUEUE_TYPE)")
            })?,
            None => dw.queue_type,
        },
    };
    if listen.is_none() && attach.is_empty() {
        if http.is_none() {
            bail!(
                "mqtt.listen is off, no broker is attached and http_listen is off: nothing to serve (give --attach URL, --http-listen, or a --listen address)"
            );
        }
        tracing::warn!(
            "mqtt.listen is off and no broker is attached: this instance answers the broker hooks only, and other instances must take the register requests (--attach)"
        );
    }
    let mut events: Vec<Arc<dyn SinkFactory>> = Vec::new();
    if let Some(config) = webhook(args, file)? {
        events.push(Arc::new(dynreg_http::webhook::Webhook::new(config)));
    }
    if let Some(prefix) = args
        .broker_events
        .as_deref()
        .or(file.broker_events.as_deref())
    {
        let broker =
            dynreg_attach::events::BrokerEvents::new(attach.clone(), prefix).map_err(|e| {
                anyhow::anyhow!(
                    "broker_events: {e} (flag --broker-events, env DYNREG_BROKER_EVENTS)"
                )
            })?;
        events.push(Arc::new(broker));
    }
    let include_secrets = args
        .events_include_secrets
        .or(file.events_include_secrets)
        .unwrap_or(false);
    if include_secrets && events.is_empty() {
        bail!(
            "events_include_secrets is set, but events go nowhere (set webhook_url or broker_events; flag --events-include-secrets, env DYNREG_EVENTS_INCLUDE_SECRETS)"
        );
    }
    Ok(Resolved {
        store,
        http,
        hooks,
        attach,
        worker,
        endpoint: listen.map(|listen| EndpointConfig {
            listen,
            max_packet_size,
            max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
            connect_timeout: config::secs(connect_timeout),
            idle_timeout: config::secs(idle_timeout),
            write_timeout: config::secs(write_timeout),
            max_pending_per_ip,
            connections_per_ip_per_sec: per_ip,
            tls,
            ..d
        }),
        auth: AuthPolicy { ban },
        per_pid,
        metrics_public: args.metrics_public.or(file.metrics_public).unwrap_or(false),
        events,
        include_secrets,
    })
}

/// The webhook: `--webhook-url` with `--webhook-secret` (or their variables, or
/// `webhook_url` / `webhook_secret`).
fn webhook(
    args: &ServeArgs,
    file: &crate::config::FileConfig,
) -> anyhow::Result<Option<dynreg_http::webhook::WebhookConfig>> {
    let url = args.webhook_url.as_deref().or(file.webhook_url.as_deref());
    let secret = args
        .webhook_secret
        .as_deref()
        .or(file.webhook_secret.as_deref());
    match (url, secret) {
        (None | Some(""), None) => Ok(None),
        (None | Some(""), Some(_)) => bail!(
            "webhook_secret is set without webhook_url (flag --webhook-url, env DYNREG_WEBHOOK_URL)"
        ),
        (Some(_), None | Some("")) => bail!(
            "webhook_url needs webhook_secret, the key of the events' signature (flag --webhook-secret, env DYNREG_WEBHOOK_SECRET)"
        ),
        (Some(url), Some(secret)) => {
            let url = url.parse().map_err(|e| {
                anyhow::anyhow!("webhook_url: {e} (flag --webhook-url, env DYNREG_WEBHOOK_URL)")
            })?;
            Ok(Some(dynreg_http::webhook::WebhookConfig::new(
                url,
                secret.as_bytes(),
            )))
        }
    }
}

/// Whether the log is JSON: `--log-format` / `DYNREG_LOG_FORMAT` / `log_format`.
fn json_log(g: &Global, args: &ServeArgs) -> anyhow::Result<bool> {
    let (file, _) = g.file()?;
    match args.log_format.as_deref().or(file.log_format.as_deref()) {
        None | Some("text") => Ok(false),
        Some("json") => Ok(true),
        Some(other) => bail!(
            "log_format `{other}` is not text or json (flag --log-format, env DYNREG_LOG_FORMAT)"
        ),
    }
}

/// Logs to stderr through the buffered log thread (see [`crate::logging`]): lines of
/// text, in colour only on a terminal, or one JSON object per line. The guard writes
/// out what is buffered when dropped.
fn init_tracing(json: bool) -> Option<LogGuard> {
    match crate::logging::buffered(std::io::stderr()) {
        Ok((writer, guard)) => {
            crate::logging::flush_on_panic(&writer);
            install_log(writer, json);
            Some(guard)
        }
        Err(e) => {
            eprintln!("dynreg: cannot start the log thread ({e}); logging unbuffered");
            install_log(std::io::stderr, json);
            None
        }
    }
}

fn install_log<W>(writer: W, json: bool)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = if json {
        fmt.json().flatten_event(true).try_init()
    } else {
        fmt.with_ansi(std::io::stderr().is_terminal()).try_init()
    };
}

/// Finds or creates the `demo` product and prints a ready-to-paste registration.
fn demo(store: &Backend, listen: SocketAddr) -> anyhow::Result<()> {
    let existing = store
        .list_products()?
        .into_iter()
        .find(|p| p.name == "demo");
    let pid = match existing {
        Some(p) => p.pid,
        None => {
            let p = store.create_product(
                NewProduct {
                    pid: None,
                    name: "demo".into(),
                    mode: SourceMode::Generate,
                    mac_range: None,
                    ts_window: dynreg_proto::credentials::DEFAULT_TS_WINDOW,
                    rereg: dynreg_registrar::ReregPolicy::DEFAULT,
                    signatures: dynreg_registrar::Signatures::Any,
                    admission: dynreg_registrar::Admission::Open,
                    quota: None,
                    low_water: None,
                },
                unix_now(),
            )?;
            p.pid
        }
    };
    let product = store.load_product(&pid)?.context("demo product vanished")?;
    if !product.enabled {
        println!(
            "demo product {pid} is disabled: the command below is refused (CONNECT not authorized) until `dynreg product enable {pid}`\n"
        );
    }
    let ts = unix_now();
    let unique = format!("demo{}", ts % 100_000);
    let creds = Credentials {
        pid: &pid,
        unique: &unique,
        sign_method: SignMethod::HmacSha256,
        ts,
    };
    let password = sign(
        SignMethod::HmacSha256,
        product.secret.expose().as_bytes(),
        &pid,
        &unique,
        ts,
    );
    let host = if listen.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        listen.ip().to_string()
    };
    let request = String::from_utf8(RegisterRequest::new("1", ts).to_json())?;
    println!(
        "demo product: pid {pid}, secret {}",
        product.secret.expose()
    );
    println!("register a device (credentials valid for 15 minutes; needs mosquitto-clients):\n");
    println!(
        "  mosquitto_rr -h {host} -p {port} -V 5 -i '{cid}' -u '{user}' -P '{password}' -t '{req}' -e '{resp}' -m '{request}'\n",
        port = listen.port(),
        cid = creds.client_id(),
        user = creds.username(),
        req = Topic::request(&pid, &unique),
        resp = Topic::response(&pid, &unique),
    );
    Ok(())
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
                    demo(&store, endpoint.local_addr()?)?;
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
