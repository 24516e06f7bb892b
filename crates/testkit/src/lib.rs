//! # dynreg-testkit: the fixtures dynreg's tests share
//!
//! Dev-only (a dev-dependency of the crates whose tests use it; never published):
//! - [`TempStore`]: a SQLite store in a temporary directory, with products and pools
//!   put in the way the operator's commands would;
//! - [`TestServer`]: the embedded endpoint on loopback port 0 over such a store, with
//!   the CONNECT policy and limits a test asks for, stopped when dropped.
//!
//! Products come from [`dynreg_registrar::conformance::product`] (secret
//! `secret-of-<pid>`), so that a test signs credentials without asking the store.
//!
//! ## Layout
//! - `lib.rs`: [`TempStore`], [`TestServer`], and Mosquitto for the tests that drive it.
//! - [`pg`]: a PostgreSQL database of its own for one test.

pub mod pg;

use dynreg_store::Operator;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use dynreg_endpoint::{Endpoint, EndpointConfig};
use dynreg_registrar::conformance::product;
use dynreg_registrar::{AuthPolicy, NewTriplet, Product, Registrar, SourceMode};
use dynreg_store::{SqliteConfig, SqliteStore};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A SQLite store in a temporary directory (removed when dropped).
#[derive(Debug)]
pub struct TempStore {
    /// The store.
    pub store: SqliteStore,
    /// The directory holding it; the store's data dir is `data` inside it.
    pub dir: tempfile::TempDir,
}

impl TempStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::in_dir(tempfile::tempdir().expect("a temporary directory"))
    }

    /// An empty store in `dir` (its data dir is `dir/data`).
    pub fn in_dir(dir: tempfile::TempDir) -> Self {
        let store = SqliteStore::open(&SqliteConfig::new(dir.path().join("data")))
            .expect("open a store in a temporary directory");
        Self { store, dir }
    }

    /// Adds `product` (blocking: call it from a blocking context or outside a runtime).
    /// Adds a product (generate mode) that admits only the listed `uniques`
    /// (`admission = listed`), each listed with barcode `BC-<unique>` and no MAC.
    pub fn listed(&self, pid: &str, uniques: &[&str]) -> &Self {
        let mut p = dynreg_registrar::conformance::product(pid, SourceMode::Generate);
        p.admission = dynreg_registrar::Admission::Listed;
        self.put(&p);
        let devices = uniques
            .iter()
            .map(|u| dynreg_registrar::ExpectedDevice {
                unique: (*u).to_owned(),
                barcode: format!("BC-{u}"),
                mac: String::new(),
                added_at: 0,
            })
            .collect();
        self.store
            .expect_devices(pid, devices, std::sync::Arc::new(|_| {}))
            .expect("list the devices");
        self
    }

    /// Adds a product exactly as given.
    pub fn put(&self, product: &Product) -> &Self {
        self.store
            .insert_product(product)
            .expect("insert a product");
        self
    }

    /// Adds a product `pid`, enabled, with the conformance defaults.
    pub fn product(&self, pid: &str, mode: SourceMode) -> &Self {
        self.put(&product(pid, mode))
    }

    /// Adds a disabled product `pid`.
    pub fn disabled(&self, pid: &str, mode: SourceMode) -> &Self {
        let mut p = product(pid, mode);
        p.enabled = false;
        self.put(&p)
    }

    /// Imports `triplets` into `pid`'s pool.
    pub fn pool(&self, pid: &str, triplets: Vec<NewTriplet>) -> &Self {
        self.store
            .import_pool(pid, triplets, Arc::new(|_| {}))
            .expect("import a pool");
        self
    }
}

impl Default for TempStore {
    fn default() -> Self {
        Self::new()
    }
}

/// What a [`TestServer`] runs with.
#[derive(Debug, Default)]
pub struct ServerOptions {
    /// The endpoint's settings; `listen` is replaced by loopback port 0 unless it is a
    /// loopback address already (only loopback addresses are test targets).
    pub endpoint: EndpointConfig,
    /// The CONNECT policy.
    pub policy: AuthPolicy,
    /// Registrations per second per product (0: no limit).
    pub registrations_per_pid: u32,
}

impl From<EndpointConfig> for ServerOptions {
    fn from(endpoint: EndpointConfig) -> Self {
        Self {
            endpoint,
            ..Self::default()
        }
    }
}

/// The embedded endpoint on loopback port 0 over a [`TempStore`]; stopped when dropped
/// (or by [`TestServer::stop`]).
#[derive(Debug)]
pub struct TestServer {
    /// The plain MQTT address.
    pub addr: SocketAddr,
    /// The MQTT-over-TLS address, when TLS is configured.
    pub tls_addr: Option<SocketAddr>,
    /// The store the server uses (a clone: changes made through it are seen at once).
    pub store: SqliteStore,
    /// The registrar the server uses.
    pub registrar: Arc<Registrar<SqliteStore>>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<JoinHandle<io::Result<()>>>,
    _store: TempStore,
}

impl TestServer {
    /// Starts the endpoint (inside a tokio runtime) over `store` with `options`.
    pub fn start(store: TempStore, options: impl Into<ServerOptions>) -> Self {
        let options = options.into();
        let registrar = Arc::new(
            Registrar::with_policy(store.store.clone(), options.policy)
                .limit_registrations_per_pid(options.registrations_per_pid),
        );
        let listen = if options.endpoint.listen.ip().is_loopback() {
            options.endpoint.listen
        } else {
            SocketAddr::from(([127, 0, 0, 1], 0))
        };
        let endpoint = Endpoint::bind(
            EndpointConfig {
                listen,
                ..options.endpoint
            },
            registrar.clone(),
        )
        .expect("bind loopback port 0");
        let addr = endpoint.local_addr().expect("the bound address");
        let tls_addr = endpoint
            .tls_local_addr()
            .map(|a| a.expect("the bound TLS address"));
        let (tx, rx) = oneshot::channel();
        let done = tokio::spawn(endpoint.run(async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            tls_addr,
            store: store.store.clone(),
            registrar,
            stop: Some(tx),
            done: Some(done),
            _store: store,
        }
    }

    /// Shuts the endpoint down as SIGTERM would and waits until it has stopped.
    pub async fn stop(mut self) -> io::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.done.take() {
            Some(done) => done.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A Mosquitto broker on a free loopback port (killed when the child is dropped), and
/// its port, once it accepts connections. Panics when `mosquitto` cannot be run: mark
/// such tests ignored with the `no_mosquitto` cfg of `support/prerequisites.rs`.
pub async fn mosquitto() -> (tokio::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port();
    let broker = tokio::process::Command::new("mosquitto")
        .args(["-p", &port.to_string()])
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto runs (apt-get install mosquitto)");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    (broker, port)
}
