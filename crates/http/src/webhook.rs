//! The platform's webhook as a destination of the outbox ([`crate::outbox`]): each
//! event POSTed as JSON over keep-alive connections, signed with
//! `X-Dynreg-Signature: sha256=<hex HMAC-SHA256 of the raw body keyed by the webhook
//! secret>`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dynreg_net::url::Url;
use dynreg_registrar::events::{Event, SendFuture, Sink, SinkError, SinkFactory};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpStream;

/// Where and how events are delivered.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The webhook.
    pub url: WebhookUrl,
    /// The HMAC key of the signature.
    pub secret: Arc<[u8]>,
    /// How long one POST may take.
    pub timeout: Duration,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl WebhookConfig {
    /// A configuration with the default timeout (10 s).
    pub fn new(url: WebhookUrl, secret: &[u8]) -> Self {
        Self {
            url,
            secret: Arc::from(secret),
            timeout: Duration::from_secs(10),
        }
    }
}

/// A webhook address: `http://` or `https://` (the system's roots), host, port, path.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The URL without its query (which may carry a credential).
impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        let path = self.path.split('?').next().unwrap_or("/");
        write!(f, "{scheme}://{}:{}{path}", self.host, self.port)
    }
}

impl std::str::FromStr for WebhookUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &dyn fmt::Display| {
            format!(
                "\"{}\" is not a webhook URL: {why}",
                dynreg_net::url::redact(text)
            )
        };
        let url = Url::parse(text).map_err(|e| bad(&e))?;
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(bad(&"use http:// or https://")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                &"no credentials in the URL: the webhook secret signs each request",
            ));
        }
        let host = dynreg_net::url::host(&url).ok_or_else(|| bad(&"no host"))?;
        let port = url.port_or_known_default().ok_or_else(|| bad(&"no port"))?;
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        Ok(Self {
            tls,
            host,
            port,
            path,
        })
    }
}

/// `sha256=<hex HMAC-SHA256 of body keyed by secret>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The webhook as a destination of events: [`crate::outbox::run`] keeps
/// [`crate::outbox::PARTITIONS`] keep-alive
/// connections to it.
pub struct Webhook {
    config: WebhookConfig,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Webhook {
    /// The webhook of `config` (TLS set up here, for `https://`).
    pub fn new(config: WebhookConfig) -> Self {
        let tls = config.url.tls.then(tls_connector);
        Self { config, tls }
    }
}

impl SinkFactory for Webhook {
    fn make(&self) -> Box<dyn Sink> {
        Box::new(Client {
            config: self.config.clone(),
            tls: self.tls.clone(),
            conn: None,
        })
    }

    fn describe(&self) -> String {
        self.config.url.to_string()
    }
}

/// One keep-alive connection to the webhook, made again when it breaks.
struct Client {
    config: WebhookConfig,
    tls: Option<tokio_rustls::TlsConnector>,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, SinkError> {
        let url = &self.config.url;
        let net = |e: std::io::Error| SinkError::unreachable(format!("{url}: {e}"));
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(net)?;
        let _ = tcp.set_nodelay(true);
        let hs = |e: hyper::Error| SinkError::unreachable(format!("{url}: {e}"));
        if let Some(tls) = &self.tls {
            let name = rustls_pki_types::ServerName::try_from(url.host.clone())
                .map_err(|e| SinkError::unreachable(format!("{url}: {e}")))?;
            let stream = tls.connect(name, tcp).await.map_err(net)?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(hs)?;
            tokio::spawn(conn);
            Ok(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(hs)?;
            tokio::spawn(conn);
            Ok(send)
        }
    }

    /// POSTs `event`; Ok on a 2xx. No connection or no answer in time is
    /// [`SinkError::unreachable`]; another status refuses this event.
    async fn post(&mut self, event: &Event) -> Result<(), SinkError> {
        let signature = signature(&self.config.secret, &event.body);
        let timeout = self.config.timeout;
        let url = self.config.url.clone();
        let net = |e: &dyn fmt::Display| SinkError::unreachable(format!("{url}: {e}"));
        let result = tokio::time::timeout(timeout, async {
            let mut send = match self.conn.take() {
                Some(c) if !c.is_closed() => c,
                _ => self.connect().await?,
            };
            send.ready().await.map_err(|e| net(&e))?;
            let request = hyper::Request::post(url.path.as_str())
                .header("host", format!("{}:{}", url.host, url.port))
                .header("content-type", "application/json")
                .header("user-agent", concat!("dynreg/", env!("CARGO_PKG_VERSION")))
                .header("x-dynreg-event-id", event.id.to_string())
                .header("x-dynreg-signature", signature)
                .body(Full::new(Bytes::from(event.body.clone())))
                .map_err(|e| net(&e))?;
            let response = send.send_request(request).await.map_err(|e| net(&e))?;
            let status = response.status();
            // Read the answer to its end, so that the connection can carry the next.
            let _ = response.into_body().collect().await;
            self.conn = Some(send);
            if status.is_success() {
                Ok(())
            } else {
                Err(SinkError::refused(format!(
                    "{url}: answered {}",
                    status.as_u16()
                )))
            }
        })
        .await;
        result.unwrap_or_else(|_| Err(net(&"no answer in time")))
    }
}

impl Sink for Client {
    fn send<'a>(&'a mut self, event: &'a Event) -> SendFuture<'a> {
        Box::pin(self.post(event))
    }

    fn describe(&self) -> String {
        self.config.url.to_string()
    }

    fn kind(&self) -> &'static str {
        "webhook"
    }
}

/// TLS to the webhook, checked against the system's roots.
fn tls_connector() -> tokio_rustls::TlsConnector {
    // With no system roots, every https webhook fails its handshake, and says so.
    let config =
        dynreg_net::tls::client_config(dynreg_net::tls::Roots::System).unwrap_or_else(|e| {
            tracing::warn!("webhook TLS: {e}");
            tokio_rustls::rustls::ClientConfig::builder_with_provider(dynreg_net::tls::provider())
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default TLS versions")
                .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
                .with_no_client_auth()
        });
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u: WebhookUrl = "http://127.0.0.1:9000/hooks/dynreg?x=1".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 9000));
        assert_eq!(u.path, "/hooks/dynreg?x=1");
        assert_eq!(u.to_string(), "http://127.0.0.1:9000/hooks/dynreg");
        let u: WebhookUrl = "https://platform.example.com".parse().unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (true, 443, "/"));
        let u: WebhookUrl = "http://[::1]:8080/x".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8080));
        for bad in ["ftp://x", "http://", "http://u:p@host/", "http://h:port/"] {
            assert!(bad.parse::<WebhookUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_signature_is_the_hmac_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
