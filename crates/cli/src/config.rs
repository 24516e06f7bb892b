//! The service configuration: `dynreg.toml`, overridden by `DYNREG_*` variables and
//! flags, validated (naming the key) before any port is bound.
//!
//! Precedence, lowest first: built-in defaults, the TOML file, environment variables,
//! flags (clap merges the last two). `dynreg.example.toml` at the repository root lists
//! every key with its default; a test keeps it parsing to the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// The file read when `--config` is not given, if it exists.
pub(crate) const DEFAULT_CONFIG_FILE: &str = "dynreg.toml";

/// The MQTT-over-TLS address when TLS is on and `tls.listen` is not given (the
/// endpoint's other defaults are `EndpointConfig::default()`).
pub(crate) const DEFAULT_TLS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 8883);

/// The TOML file, every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) master_key_file: Option<PathBuf>,
    /// A PostgreSQL store instead of the data dir.
    pub(crate) database_url: Option<String>,
    /// Certificate authorities for the database's certificate (`sslmode=verify-*`).
    pub(crate) database_ca_file: Option<PathBuf>,
    /// PostgreSQL writer connections (group-commit batches in flight at once).
    pub(crate) database_writers: Option<usize>,
    /// The HTTP server (broker hooks): an address, a port (loopback), or `off`.
    pub(crate) http_listen: Option<String>,
    /// The token the broker hooks require.
    pub(crate) hook_token: Option<String>,
    /// Serve /metrics without a token.
    pub(crate) metrics_public: Option<bool>,
    /// `text` or `json`.
    pub(crate) log_format: Option<String>,
    /// Where device events are POSTed.
    pub(crate) webhook_url: Option<String>,
    /// The key of their signature.
    pub(crate) webhook_secret: Option<String>,
    /// The topic prefix of device events published to the attached broker.
    pub(crate) broker_events: Option<String>,
    /// Whether registration events carry the device's secret.
    pub(crate) events_include_secrets: Option<bool>,
    /// Brokers whose register requests workers consume.
    pub(crate) attach: Option<Vec<String>>,
    /// The attach workers' AMQP queue.
    pub(crate) attach_queue: Option<String>,
    /// Requests in flight per attach worker.
    pub(crate) attach_inflight: Option<u16>,
    /// The attach workers' AMQP queue type.
    pub(crate) attach_queue_type: Option<String>,
    /// `[env.NAME]`: where `dynreg register --env NAME` connects.
    #[serde(default)]
    pub(crate) env: std::collections::BTreeMap<String, dynreg_client::Environment>,
    #[serde(default)]
    pub(crate) mqtt: MqttSection,
    #[serde(default)]
    pub(crate) tls: TlsSection,
    #[serde(default)]
    pub(crate) limits: LimitsSection,
}

/// `[mqtt]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MqttSection {
    pub(crate) listen: Option<String>,
    pub(crate) max_packet_size: Option<u32>,
    pub(crate) connect_timeout_secs: Option<u64>,
    pub(crate) idle_timeout_secs: Option<u64>,
    pub(crate) write_timeout_secs: Option<u64>,
}

/// `[tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSection {
    pub(crate) listen: Option<String>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsSection {
    pub(crate) max_connections: Option<u64>,
    pub(crate) max_pending_per_ip: Option<u32>,
    pub(crate) connections_per_ip_per_sec: Option<u32>,
    pub(crate) registrations_per_pid_per_sec: Option<u32>,
    /// Obsolete: read so that old files still load, and warned about.
    pub(crate) replay_guard: Option<bool>,
    pub(crate) ban_failures: Option<u32>,
    pub(crate) ban_window_secs: Option<u64>,
    pub(crate) ban_secs: Option<u64>,
}

impl FileConfig {
    /// Reads `path`, or `dynreg.toml` in the current directory when `path` is `None`
    /// and the file exists, or nothing.
    pub(crate) fn load(path: Option<&Path>) -> anyhow::Result<(Self, Option<PathBuf>)> {
        let path = match path {
            Some(p) => p.to_owned(),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => PathBuf::from(DEFAULT_CONFIG_FILE),
            None => return Ok((Self::default(), None)),
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let config =
            Self::parse(&text).with_context(|| format!("config file {}", path.display()))?;
        Ok((config, Some(path)))
    }

    /// Parses TOML text; unknown keys are errors that name the key.
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }
}

/// One setting's sources: the flag/env value (clap), the file's value, the default.
pub(crate) struct Setting<'a, T> {
    /// The TOML key.
    pub(crate) key: &'a str,
    /// The flag.
    pub(crate) flag: &'a str,
    /// The environment variable.
    pub(crate) env: &'a str,
    pub(crate) cli: Option<T>,
    pub(crate) file: Option<T>,
    pub(crate) default: T,
}

impl<T: PartialOrd + std::fmt::Display + Copy> Setting<'_, T> {
    /// The effective value, refused outside `min..=max` with a message naming where it
    /// can be set.
    pub(crate) fn in_range(&self, min: T, max: T) -> anyhow::Result<T> {
        let v = self.cli.or(self.file).unwrap_or(self.default);
        if v < min || v > max {
            bail!(
                "{} = {v} is out of range: use {min} to {max} (TOML key {}, flag {}, env {})",
                self.key,
                self.key,
                self.flag,
                self.env
            );
        }
        Ok(v)
    }
}

/// Parses an address setting, naming the key when it is not an address.
pub(crate) fn address(
    key: &str,
    cli: Option<SocketAddr>,
    file: Option<&str>,
    default: SocketAddr,
) -> anyhow::Result<SocketAddr> {
    if let Some(a) = cli {
        return Ok(a);
    }
    let Some(text) = file else {
        return Ok(default);
    };
    text.parse()
        .map_err(|e| anyhow::anyhow!("{key} = \"{text}\" is not an address like 0.0.0.0:1883: {e}"))
}

/// Parses a listening address setting, the one grammar of every such key
/// (`mqtt.listen`, `http_listen`): `off`, an address (`0.0.0.0:1883`, `[::1]:1883`),
/// or a bare port, which binds loopback (`8080` is `127.0.0.1:8080`). The flag's value
/// wins over the file's; neither gives `default`. The error names the key.
pub(crate) fn address_or_off(
    key: &str,
    cli: Option<&str>,
    file: Option<&str>,
    default: Option<SocketAddr>,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(text) = cli.or(file) else {
        return Ok(default);
    };
    let t = text.trim();
    if t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    if let Ok(port) = t.parse::<u16>() {
        return Ok(Some(SocketAddr::from((
            std::net::Ipv4Addr::LOCALHOST,
            port,
        ))));
    }
    t.parse().map(Some).map_err(|e| {
        anyhow::anyhow!(
            "{key} = \"{text}\" is not `off`, a port, or an address like 0.0.0.0:1883: {e}"
        )
    })
}

/// Seconds as a duration.
pub(crate) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_to_the_defaults_and_unknown_keys_are_named() {
        let example = include_str!("../../../dynreg.example.toml");
        let c = FileConfig::parse(example).unwrap();
        // Every value the example sets is the built-in default.
        let d = dynreg_endpoint::EndpointConfig::default();
        assert_eq!(
            c.data_dir.as_deref(),
            Some(Path::new(crate::DEFAULT_DATA_DIR))
        );
        assert_eq!(
            c.mqtt.listen.as_deref(),
            Some(d.listen.to_string().as_str())
        );
        assert_eq!(c.mqtt.max_packet_size, Some(d.max_packet_size));
        assert_eq!(
            c.mqtt.connect_timeout_secs,
            Some(d.connect_timeout.as_secs())
        );
        assert_eq!(c.mqtt.idle_timeout_secs, Some(d.idle_timeout.as_secs()));
        assert_eq!(c.mqtt.write_timeout_secs, Some(d.write_timeout.as_secs()));
        assert_eq!(
            c.tls.listen.as_deref(),
            Some(DEFAULT_TLS_LISTEN.to_string().as_str())
        );
        assert_eq!((c.tls.cert, c.tls.key), (None, None));
        assert_eq!(c.limits.max_connections, Some(d.max_connections as u64));
        assert_eq!(
            c.limits.connections_per_ip_per_sec,
            Some(d.connections_per_ip_per_sec)
        );
        assert_eq!(c.limits.registrations_per_pid_per_sec, Some(0));
        assert_eq!(c.limits.max_pending_per_ip, Some(d.max_pending_per_ip));
        let auth = dynreg_registrar::AuthPolicy::default();
        assert_eq!(c.limits.ban_failures, Some(auth.ban.failures));
        assert_eq!(c.limits.ban_window_secs, Some(auth.ban.window_secs));
        assert_eq!(c.limits.ban_secs, Some(auth.ban.duration_secs));
        let err = FileConfig::parse("[mqtt]\nmax_packet_sise = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_packet_sise"), "{err}");
        let err = FileConfig::parse("[mqtt]\nmax_packet_size = \"big\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_packet_size"), "{err}");
    }

    #[test]
    fn ranges_name_the_key() {
        let s = Setting {
            key: "mqtt.max_packet_size",
            flag: "--max-packet-size",
            env: "DYNREG_MAX_PACKET_SIZE",
            cli: None,
            file: Some(10u32),
            default: 8192,
        };
        let err = s.in_range(128, 1000).unwrap_err().to_string();
        assert!(
            err.contains("mqtt.max_packet_size = 10") && err.contains("--max-packet-size"),
            "{err}"
        );
        let s = Setting {
            cli: Some(500u32),
            ..s
        };
        assert_eq!(
            s.in_range(128, 1000).unwrap(),
            500,
            "flags win over the file"
        );
        assert_eq!(
            address_or_off("mqtt.listen", Some("off"), Some("1.2.3.4:5"), None).unwrap(),
            None
        );
        assert_eq!(
            address_or_off("http_listen", None, Some("8080"), None).unwrap(),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            address_or_off("http_listen", Some(" [::1]:9000 "), None, None).unwrap(),
            Some("[::1]:9000".parse().unwrap())
        );
        assert!(
            address_or_off("mqtt.listen", None, Some("x"), None)
                .unwrap_err()
                .to_string()
                .contains("mqtt.listen = \"x\"")
        );
        assert!(
            address(
                "mqtt.listen",
                None,
                Some("nope"),
                SocketAddr::from(([0, 0, 0, 0], 1883))
            )
            .unwrap_err()
            .to_string()
            .contains("mqtt.listen")
        );
    }
}
