//! The broker hooks under load: `cargo bench -p dynreg-http --bench hooks`.
//!
//! Starts the HTTP server on loopback port 0 over a SQLite store (the embedded default)
//! and drives `POST /hooks/emqx/authn` from `HOOK_BENCH_CONNS` (default 32) keep-alive
//! connections, each CONNECT a fresh, validly signed credential for its own unique (so
//! the record of shared credentials takes every one), for `HOOK_BENCH_SECS` (default 10) seconds;
//! then the same for `/hooks/rabbitmq/topic`, the call RabbitMQ makes most. It prints
//! calls per second and the latency a caller sees (request written to reply read, which
//! bounds the time inside the hook from above), p50/p99/max.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dynreg_http::{HookAuth, HttpServer, router};
use dynreg_proto::credentials::{SignMethod, sign};
use dynreg_registrar::{AuthPolicy, Registrar, SourceMode};
use dynreg_testkit::TempStore;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "../tests/support/mod.rs"]
mod support;
use support::enc;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Posts `body` (form) to `path`; the reply's body.
    async fn post(&mut self, path: &str, body: &str) -> String {
        let req = format!(
            "POST {path} HTTP/1.1\r\nhost: b\r\nauthorization: Bearer bench-token\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.s.write_all(req.as_bytes()).await.unwrap();
        self.buf.clear();
        let mut chunk = [0u8; 1024];
        loop {
            let n = self.s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&self.buf);
            if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if rest.len() >= len {
                    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                    return rest[..len].to_owned();
                }
            }
        }
    }
}

async fn load(
    addr: SocketAddr,
    conns: u64,
    secs: u64,
    path: &'static str,
    body: Arc<dyn Fn(u64, u64) -> String + Send + Sync>,
    want: &'static str,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..conns {
        let (stop, body) = (stop.clone(), body.clone());
        tasks.spawn(async move {
            let mut conn = Conn {
                s: TcpStream::connect(addr).await.unwrap(),
                buf: Vec::new(),
            };
            conn.s.set_nodelay(true).unwrap();
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let b = body(c, i);
                let t = Instant::now();
                let reply = conn.post(path, &b).await;
                h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
                assert!(reply.contains(want), "{path}: {reply}");
                i += 1;
            }
            h
        });
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    while let Some(h) = tasks.join_next().await {
        all.add(h.unwrap()).unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{path}: {conns} connections, {:.0} calls/s, latency p50 {} us, p99 {} us, max {} us ({} calls)",
        all.len() as f64 / elapsed,
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.99),
        all.max(),
        all.len()
    );
}

/// Products in the store: the CONNECTs of one second are spread over them, so that each
/// credential is shared by calls/s / PRODUCTS uniques.
const PRODUCTS: u64 = 200;

fn main() {
    let conns = env("HOOK_BENCH_CONNS", 32);
    let secs = env("HOOK_BENCH_SECS", 10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = TempStore::new();
    for p in 0..PRODUCTS {
        store.product(&format!("p{p}"), SourceMode::Generate);
    }
    runtime.block_on(async {
        let registrar = Arc::new(Registrar::with_policy(
            store.store.clone(),
            AuthPolicy::default(),
        ));
        let server = HttpServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(server.run(
            router(registrar, HookAuth::token("bench-token"), None),
            std::future::pending(),
        ));
        // Call n of all connections signs for product n % PRODUCTS with the current
        // second, as independent firmware does, and a unique of its own: the devices
        // of one product within a second share a credential, which is recorded.
        let authn = Arc::new(move |c: u64, i: u64| {
            let n = i * conns + c;
            let pid = format!("p{}", n % PRODUCTS);
            let ts = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
            let unique = format!("u{n}");
            let password = sign(
                SignMethod::HmacSha256,
                format!("secret-of-{pid}").as_bytes(),
                &pid,
                &unique,
                ts,
            );
            format!(
                "clientid=register_{pid}_{unique}&username={}&password={}&peerhost=127.0.0.1",
                enc(&format!("{pid}|signMethod=hmacSha256,ts={ts}")),
                password.as_str()
            )
        });
        load(addr, conns, secs, "/hooks/emqx/authn", authn, "\"allow\"").await;
        let topic = Arc::new(|c: u64, _: u64| {
            format!(
                "username=p1%7CsignMethod%3DhmacSha256%2Cts%3D1&vhost=%2F&resource=topic&name=amq.topic&permission=write&routing_key=register.v2.p1.u{c}.register&variable_map.client_id=register_p1_u{c}"
            )
        });
        load(addr, conns, secs, "/hooks/rabbitmq/topic", topic, "allow").await;
    });
}
