//! `dynreg serve`: the registration service on the embedded store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use dynreg_endpoint::{Endpoint, EndpointConfig};
use dynreg_proto::credentials::{Credentials, SignMethod, sign};
use dynreg_proto::{RegisterRequest, Topic};
use dynreg_registrar::{Registrar, SourceMode};
use dynreg_store::{NewProduct, SqliteStore};
use tracing::info;

use crate::{Global, now};

/// Options of `dynreg serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The TCP address to listen on for MQTT.
    #[arg(long, env = "DYNREG_LISTEN", default_value = "0.0.0.0:1883")]
    listen: SocketAddr,
    /// The largest MQTT packet accepted, in bytes.
    #[arg(long, env = "DYNREG_MAX_PACKET_SIZE", default_value_t = 8192,
          value_parser = clap::value_parser!(u32).range(128..=268_435_455))]
    max_packet_size: u32,
    /// The most connections open at once.
    #[arg(long, env = "DYNREG_MAX_CONNECTIONS", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    max_connections: u64,
    /// Seconds a client has to send CONNECT after the TCP connection opens.
    #[arg(long, env = "DYNREG_CONNECT_TIMEOUT", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    connect_timeout: u64,
    /// Seconds after which a connection that does nothing but ping is closed.
    #[arg(long, env = "DYNREG_IDLE_TIMEOUT", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    idle_timeout: u64,
    /// Make sure a product named `demo` exists and print a command that registers a
    /// device against it.
    #[arg(long)]
    demo: bool,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Finds or creates the `demo` product and prints a ready-to-paste registration.
fn demo(store: &SqliteStore, listen: SocketAddr) -> anyhow::Result<()> {
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
                },
                now(),
            )?;
            p.pid
        }
    };
    let product = store.load_product(&pid)?.context("demo product vanished")?;
    let ts = now();
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
    init_tracing();
    let config = EndpointConfig {
        listen: args.listen,
        max_packet_size: args.max_packet_size,
        max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        connect_timeout: Duration::from_secs(args.connect_timeout),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        ..EndpointConfig::default()
    };
    let store = g.open()?;
    if args.demo {
        demo(&store, args.listen)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let registrar = Arc::new(Registrar::new(store.clone()));
    runtime.block_on(async {
        let endpoint = Endpoint::bind(config, registrar)
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        info!(listen = %endpoint.local_addr()?, data_dir = %g.data_dir.display(), "dynreg serving MQTT registrations");
        endpoint.run(shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    store.close()?;
    info!("stopped; store closed");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
