//! `dynreg bench`: the load generator, and `dynreg bench responder` for a bare broker.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use dynreg_bench::{BenchConfig, Failure, Report};
use dynreg_proto::credentials::SignMethod;
use serde_json::json;

use crate::progress::Bar;
use crate::{Global, output};

/// Options of `dynreg bench`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    responder: Option<BenchCmd>,
    /// The broker or dynreg endpoint host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Its port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// The product id the simulated devices register with.
    #[arg(long, default_value = "")]
    pid: String,
    /// The product secret (or DYNREG_SECRET).
    #[arg(
        long,
        env = "DYNREG_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    secret: String,
    /// Registrations in all.
    #[arg(short = 'n', long = "total", default_value_t = 10_000)]
    total: u64,
    /// Devices registering at once.
    #[arg(short = 'c', long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    concurrency: u64,
    /// MQTT version: 3 (3.1.1) or 5.
    #[arg(long, default_value = "5", value_parser = ["3", "5"])]
    mqtt: String,
    /// QoS of the subscription and the request.
    #[arg(long, default_value = "1", value_parser = ["0", "1"])]
    qos: String,
    /// The sign method: hmacSha256 or hmacSha1 (the seed's), or the device-bound
    /// hmacSha256u or hmacSha1u. Every device signs the current second, as firmware
    /// does, so the devices of a second share a seed credential.
    #[arg(long, default_value = "hmacSha256", value_parser = |s: &str| SignMethod::parse(s).map_err(|e| e.to_string()))]
    sign_method: SignMethod,
    /// Seconds one cycle may take before it counts as a timeout.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Uniques are this prefix and a serial number (change it between runs to register
    /// new devices; keep it to measure repeat registrations).
    #[arg(long, default_value = "bench-")]
    unique_prefix: String,
    /// Sign every device with this Unix second instead of the current one (within the
    /// product's ts window of the server's clock): a factory line's worst case, every
    /// device presenting the same credential.
    #[arg(long)]
    sign_ts: Option<u64>,
    /// Start cycles at this many per second (open loop; latency counted from each
    /// cycle's scheduled start).
    #[arg(long)]
    rate: Option<f64>,
    /// Stop starting cycles after this many seconds (with --hold: hold this long).
    #[arg(long)]
    duration: Option<u64>,
    /// Instead of registering, open N registration connections (CONNECT + SUBSCRIBE),
    /// keep them until Ctrl-C or --duration: for measuring server memory per connection.
    #[arg(long)]
    hold: Option<u64>,
    /// Connect over TLS, trusting the CA certificates of this PEM file.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// On a loopback target, connect every device from 127.0.0.1. By default each one
    /// connects from its own address in 127.1.0.0/16, as devices come from many
    /// addresses, so that the kernel's search for a free port does not slow down as
    /// closed connections pile up in TIME_WAIT.
    #[arg(long)]
    single_source: bool,
}

#[derive(Debug, Subcommand)]
enum BenchCmd {
    /// Answer every register request on an external broker with a fixed success reply
    /// (no auth, no storage): the bare-transport floor to compare dynreg with.
    Responder {
        /// The broker host.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// The broker port.
        #[arg(long, default_value_t = 1883)]
        port: u16,
        /// MQTT version of the responder's own connection.
        #[arg(long, default_value = "3", value_parser = ["3", "5"])]
        mqtt: String,
        /// QoS of the replies.
        #[arg(long, default_value = "1", value_parser = ["0", "1"])]
        qos: String,
        /// Take the requests like `serve --attach` does instead (an `amqp://` queue or
        /// an MQTT 5 shared subscription), through the attach worker: the floor of an
        /// attached deployment.
        #[arg(long)]
        attach: Option<String>,
        /// With --attach: the queue type (quorum or classic) [default: quorum].
        #[arg(long, default_value = "quorum")]
        attach_queue_type: String,
    },
}

fn failure_name(f: &Failure) -> String {
    match f {
        Failure::ConnectRefused(c) => format!("connect_refused_{c}"),
        Failure::SubscribeRefused => "subscribe_refused".into(),
        Failure::Res(r) => format!("res_{r}"),
        Failure::Timeout => "timeout".into(),
        Failure::Transport => "transport".into(),
    }
}

fn print(g: &Global, cfg: &BenchConfig, r: &Report) -> anyhow::Result<()> {
    let q = |p: f64| r.latency_us.value_at_quantile(p) as f64 / 1000.0;
    let failed: serde_json::Map<String, serde_json::Value> = r
        .failed
        .iter()
        .map(|(k, v)| (failure_name(k), json!(v)))
        .collect();
    if g.json {
        output::json(&json!({
            "target": cfg.addr, "mqtt": if cfg.v5 { "5" } else { "3.1.1" }, "qos": cfg.qos,
            "total": cfg.total, "concurrency": cfg.concurrency,
            "completed": r.completed, "failed": failed,
            "elapsed_s": r.elapsed.as_secs_f64(), "throughput_per_s": r.throughput(),
            "latency_ms": { "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": r.latency_us.max() as f64 / 1000.0 },
            "bench_cpu_us_per_cycle": r.own_cpu_us_per_cycle,
            "first_errors": r.first_errors.iter().map(|(k, v)| (failure_name(k), json!(v))).collect::<serde_json::Map<_, _>>(),
        }))?;
    } else {
        output::fields(&[
            (
                "target",
                format!(
                    "{} (MQTT {}, QoS {})",
                    cfg.addr,
                    if cfg.v5 { "5" } else { "3.1.1" },
                    cfg.qos
                ),
            ),
            ("completed", format!("{} of {}", r.completed, cfg.total)),
            (
                "failed",
                if failed.is_empty() {
                    "none".into()
                } else {
                    serde_json::Value::Object(failed).to_string()
                },
            ),
            ("elapsed", format!("{:.2} s", r.elapsed.as_secs_f64())),
            (
                "throughput",
                format!("{:.0} registrations/s", r.throughput()),
            ),
            (
                "latency",
                format!(
                    "p50 {:.2} ms, p90 {:.2}, p99 {:.2}, p99.9 {:.2}, max {:.2}",
                    q(0.5),
                    q(0.9),
                    q(0.99),
                    q(0.999),
                    r.latency_us.max() as f64 / 1000.0
                ),
            ),
            (
                "bench CPU",
                format!("{:.1} µs per cycle (this process)", r.own_cpu_us_per_cycle),
            ),
        ])?;
        for (kind, text) in &r.first_errors {
            eprintln!("first {} error: {text}", failure_name(kind));
        }
    }
    Ok(())
}

pub(crate) fn run(g: &Global, args: &BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    if let Some(BenchCmd::Responder {
        attach: Some(url),
        attach_queue_type,
        ..
    }) = &args.responder
    {
        let target = dynreg_attach::Target::parse(url).map_err(|e| anyhow::anyhow!(e))?;
        let config = dynreg_attach::WorkerConfig {
            queue_type: dynreg_attach::QueueType::parse(attach_queue_type)
                .map_err(|e| anyhow::anyhow!("--attach-queue-type: {e}"))?,
            ..dynreg_attach::WorkerConfig::default()
        };
        let canned = Arc::new(Canned(std::sync::atomic::AtomicU64::new(0)));
        let stop = tokio_util::sync::CancellationToken::new();
        eprintln!("responder taking requests from {target}; Ctrl-C to stop");
        runtime.block_on(async {
            let signal = stop.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                signal.cancel();
            });
            dynreg_attach::run(target, canned.clone(), config, stop).await;
        });
        eprintln!(
            "{} requests answered",
            canned.0.load(std::sync::atomic::Ordering::Relaxed)
        );
        return Ok(());
    }
    if let Some(BenchCmd::Responder {
        host,
        port,
        mqtt,
        qos,
        ..
    }) = &args.responder
    {
        let addr = format!("{host}:{port}");
        let answered = runtime
            .block_on(dynreg_bench::responder(
                &addr,
                mqtt == "5",
                qos.parse().unwrap_or(1),
                || eprintln!("responder subscribed on {addr}; Ctrl-C to stop"),
                async {
                    let _ = tokio::signal::ctrl_c().await;
                },
            ))
            .with_context(|| format!("responder on {addr}"))?;
        eprintln!("{answered} requests answered");
        return Ok(());
    }
    if args.pid.is_empty() {
        anyhow::bail!("--pid is required (and --secret or DYNREG_SECRET)");
    }
    // Resolved once, here: the target's address decides whether sources are spread.
    let target = std::net::ToSocketAddrs::to_socket_addrs(&(args.host.as_str(), args.port))
        .with_context(|| format!("cannot resolve {}", args.host))?
        .next()
        .with_context(|| format!("{} has no address", args.host))?;
    let cfg = BenchConfig {
        addr: target.to_string(),
        pid: args.pid.clone(),
        secret: args.secret.clone(),
        total: args.total,
        concurrency: usize::try_from(args.concurrency).unwrap_or(200),
        v5: args.mqtt == "5",
        qos: args.qos.parse().unwrap_or(1),
        sign_method: args.sign_method,
        timeout: Duration::from_secs(args.timeout.max(1)),
        unique_prefix: args.unique_prefix.clone(),
        sign_ts: args.sign_ts,
        rate: args.rate.filter(|r| *r > 0.0),
        duration: args.duration.map(Duration::from_secs),
        tls: match &args.tls_ca {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Some(dynreg_bench::TlsClient::new(&pem, &args.host)?)
            }
            None => None,
        },
        spread_sources: !args.single_source,
    };
    if let Some(n) = args.hold {
        let want = n + 64;
        let got = crate::fdlimit::raise_open_file_limit(want).unwrap_or(0);
        if got < want {
            anyhow::bail!(
                "--hold {n}: the open-file limit is {got}, {want} are needed: raise it (ulimit -n; raising the hard limit needs root with CAP_SYS_RESOURCE)"
            );
        }
        let bar = Bar::new("connecting", n);
        let held = runtime
            .block_on(dynreg_bench::hold(&cfg, n, &|k| bar.set(k)))
            .context("--hold")?;
        bar.finish();
        if g.json {
            output::json(&json!({ "held": held.len(), "target": cfg.addr }))?;
        } else {
            eprintln!(
                "holding {} connections to {}; Ctrl-C to close them",
                held.len(),
                cfg.addr
            );
        }
        runtime.block_on(async {
            match cfg.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        });
        drop(held);
        return Ok(());
    }
    let bar = Arc::new(Bar::new("registering", cfg.total));
    let b = bar.clone();
    let report = runtime.block_on(dynreg_bench::run(cfg.clone(), Arc::new(move |n| b.set(n))));
    bar.finish();
    print(g, &cfg, &report)
}

/// The canned answer of `bench responder --attach`, counting what it answered.
struct Canned(std::sync::atomic::AtomicU64);

impl dynreg_attach::Answer for Canned {
    async fn answer(
        &self,
        _via: &'static str,
        device: dynreg_registrar::Device<'_>,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(dynreg_bench::canned_reply(
            device.pid,
            device.unique,
            payload,
        ))
    }
}
