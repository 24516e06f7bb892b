//! `serve`'s configuration: flags and variables, the file, then the defaults, each value
//! validated (naming its key) before anything is opened or bound.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::bail;
use dynreg_attach::{QueueType, Target, WorkerConfig};
use dynreg_endpoint::{EndpointConfig, TlsSettings};
use dynreg_http::HookAuth;
use dynreg_registrar::events::SinkFactory;
use dynreg_registrar::{AuthPolicy, BanPolicy};

use tracing::info;

use crate::Global;
use crate::config::{self, Setting};

use super::*;

/// Everything `serve` needs, validated.
pub(super) struct Resolved {
    pub(super) store: crate::StoreLocation,
    /// The embedded endpoint, unless `--listen off`.
    pub(super) endpoint: Option<EndpointConfig>,
    /// The HTTP server's address, if on.
    pub(super) http: Option<SocketAddr>,
    pub(super) hooks: HookAuth,
    /// The brokers the workers attach to.
    pub(super) attach: Vec<Target>,
    pub(super) worker: WorkerConfig,
    pub(super) auth: AuthPolicy,
    /// Registrations per second per product (0: no limit).
    pub(super) per_pid: u32,
    /// /metrics without a token.
    pub(super) metrics_public: bool,
    /// Where device events are delivered (the webhook, the broker), if anywhere.
    pub(super) events: Vec<Arc<dyn SinkFactory>>,
    /// Whether registration events carry the device's secret.
    pub(super) include_secrets: bool,
}

/// Merges flags/env, the file and the defaults, and validates every value (naming the
/// key) before anything is opened or bound.
pub(super) fn resolve(g: &Global, args: &ServeArgs) -> anyhow::Result<Resolved> {
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
pub(super) fn webhook(
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
pub(super) fn json_log(g: &Global, args: &ServeArgs) -> anyhow::Result<bool> {
    let (file, _) = g.file()?;
    match args.log_format.as_deref().or(file.log_format.as_deref()) {
        None | Some("text") => Ok(false),
        Some("json") => Ok(true),
        Some(other) => bail!(
            "log_format `{other}` is not text or json (flag --log-format, env DYNREG_LOG_FORMAT)"
        ),
    }
}
