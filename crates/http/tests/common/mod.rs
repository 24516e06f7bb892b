//! What the HTTP tests share: the server the API and console tests run against (the
//! whole HTTP router over a temporary SQLite store, on a free loopback port), one raw
//! HTTP request, and the clock.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dynreg_http::api::Api;
use dynreg_http::{HookAuth, HttpServer, router};
use dynreg_registrar::Registrar;
use dynreg_store::{Operator, Scope};
use dynreg_testkit::TempStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A running server; it stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub store: TempStore,
    pub registrar: Arc<Registrar<dynreg_store::SqliteStore>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A token of `scope` named `name`, made in the store as `dynreg token create` does.
pub fn token_named(store: &TempStore, name: &str, scope: Scope) -> String {
    store
        .store
        .create_token(name, scope, "test", now())
        .unwrap()
        .1
}

pub async fn start() -> Server {
    let store = TempStore::new();
    let registrar = Arc::new(Registrar::new(store.store.clone()));
    let admin = Api::new(Arc::new(store.store.clone()));
    let server = HttpServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    tokio::spawn(server.run(
        router(registrar.clone(), HookAuth::open(), Some(admin)),
        async {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        store,
        registrar,
        _stop: stop,
    }
}

/// One HTTP/1.0 request (the reply is not chunked, and ends with the connection)
/// with extra header lines (each ending in `\r\n`): the status, the head, the body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nhost: x\r\ncontent-length: {}\r\n{headers}\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// A header's value (names compared without case).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(": ")?;
        n.eq_ignore_ascii_case(name).then_some(v)
    })
}
