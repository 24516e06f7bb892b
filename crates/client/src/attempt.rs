//! One registration attempt: connect with fresh credentials, subscribe to the response
//! topic, publish the request, wait for the reply, disconnect.

use std::sync::Arc;
use std::time::Duration;

use dynreg_proto::credentials::{Credentials, sign};
use dynreg_proto::{RegisterReply, RegisterRequest, Topic};
use rumqttc::{TlsConfiguration, Transport};

use crate::{Error, MqttVersion, Registration, Tls, Triplet};

/// Everything one attempt sends, computed with a fresh ts.
struct Wire {
    client_id: String,
    username: String,
    password: String,
    request_topic: String,
    response_topic: String,
    request: Vec<u8>,
}

/// The rumqttc transport for `tls`: the given CA, or the system's roots
/// ([`dynreg_net::tls`]).
pub(crate) fn transport(tls: &Tls) -> Result<Transport, Error> {
    let pem;
    let roots = match tls {
        Tls::SystemRoots => dynreg_net::tls::Roots::System,
        Tls::CaPem(p) => dynreg_net::tls::Roots::Pem(p),
        Tls::CaFile(path) => {
            pem = std::fs::read(path).map_err(|e| {
                Error::Invalid(format!("cannot read CA file {}: {e}", path.display()))
            })?;
            dynreg_net::tls::Roots::Pem(&pem)
        }
    };
    let config =
        dynreg_net::tls::client_config(roots).map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(config),
    )))
}

/// Runs one exchange with a rumqttc client of either version (their APIs have the same
/// shape in different modules).
macro_rules! exchange {
    ($reg:expr, $wire:expr, $transport:expr, $client:path, $options:path, $event:path, $packet:path, $qos:path, $error:path, $suback_ok:expr, $setup:expr) => {{
        use $client as Client;
        use $error as ConnectionError;
        use $event as Event;
        use $options as MqttOptions;
        use $packet as Packet;
        use $qos as QoS;
        let reg: &Registration = $reg;
        let wire: Wire = $wire;
        let port = reg
            .port
            .unwrap_or(if reg.tls.is_some() { 8883 } else { 1883 });
        let mut opts = MqttOptions::new(wire.client_id.clone(), reg.host.clone(), port);
        opts.set_credentials(wire.username.clone(), wire.password.clone());
        opts.set_keep_alive(Duration::from_secs(30));
        if let Some(t) = $transport {
            opts.set_transport(t);
        }
        #[allow(clippy::redundant_closure_call)]
        ($setup)(&mut opts, reg.timeout);
        let (client, mut events) = Client::new(opts, 4);
        let server = format!("{}:{port}", reg.host);
        // Whether the server accepted the CONNECT: only then is there a connection to
        // close politely (polling the event loop again after a refusal or a network
        // error would open a second connection).
        let mut connected = false;
        let result = loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    if let Err(e) = client
                        .subscribe(wire.response_topic.clone(), QoS::AtLeastOnce)
                        .await
                    {
                        break Err(Error::Network(format!("{server}: {e}")));
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    #[allow(clippy::redundant_closure_call)]
                    if !ack.return_codes.iter().all($suback_ok) {
                        break Err(Error::SubscribeRefused);
                    }
                    if let Err(e) = client
                        .publish(
                            wire.request_topic.clone(),
                            QoS::AtLeastOnce,
                            false,
                            wire.request.clone(),
                        )
                        .await
                    {
                        break Err(Error::Network(e.to_string()));
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p)))
                    if AsRef::<[u8]>::as_ref(&p.topic) == wire.response_topic.as_bytes() =>
                {
                    break match RegisterReply::from_json(&p.payload) {
                        Ok(reply) => Ok(reply),
                        Err(e) => Err(Error::Network(format!("unreadable reply: {e}"))),
                    };
                }
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => {
                    break Err(Error::ConnectRefused {
                        server,
                        code: format!("{code:?}"),
                    });
                }
                Err(e) => break Err(network_error(&server, reg, &e)),
            }
        };
        if connected {
            // Be polite: say goodbye, and let the DISCONNECT go out.
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
        }
        result
    }};
}

/// A network error in words, with a hint when the port seems to speak the other
/// transport: a plain client on a TLS port reads a TLS record as a malformed MQTT
/// packet, and a TLS client on a plain port gets no TLS answer.
fn network_error<E: std::fmt::Display + std::fmt::Debug>(
    server: &str,
    reg: &Registration,
    e: &E,
) -> Error {
    let tls = reg.tls.is_some();
    let debug = format!("{e:?}");
    // rumqttc's connection timeout (3.1.1: NetworkTimeout; 5: Timeout) is the
    // attempt's own timeout.
    if debug.starts_with("NetworkTimeout") || debug.starts_with("Timeout(") {
        return Error::Timeout(reg.timeout);
    }
    let shown = e.to_string();
    let text = format!("{shown} {debug}").to_lowercase();
    // A connection reset or closed mid-packet reads as a deserialization error too:
    // that is the server (or a broker taking the clientId over), not the transport.
    let cut = text.contains("connection reset")
        || text.contains("connection aborted")
        || text.contains("broken pipe");
    let hint = if !tls
        && !cut
        && (text.contains("deserialization")
            || text.contains("boundary")
            || text.contains("malformed")
            || text.contains("invalidprotocol")
            || text.contains("incorrectpacketformat"))
    {
        Some(
            "the answer is not MQTT: if this is the server's TLS port (8883 by default), add --tls (and --ca for a private CA)",
        )
    } else if tls
        && (text.contains("corrupt")
            || text.contains("invalidcontenttype")
            || text.contains("invalidmessage")
            || text.contains("peerincompatible"))
    {
        Some(
            "the answer is not TLS: if this is the server's plain MQTT port (1883 by default), drop --tls",
        )
    } else {
        None
    };
    match hint {
        Some(h) => Error::Network(format!("{server}: {h} ({shown})")),
        None => Error::Network(format!("{server}: {shown}")),
    }
}

impl Registration {
    fn wire(&self, ts: u64) -> Wire {
        let unique = self.unique.as_deref().unwrap_or_default();
        let creds = Credentials {
            pid: &self.pid,
            unique,
            sign_method: self.sign_method,
            ts,
        };
        let mut request = RegisterRequest::new(format!("{ts}{}", &crate::random_uuid()[..8]), ts);
        if let Some(b) = &self.barcode {
            request.data.barcode.clone_from(b);
        }
        if let Some((pid, secret)) = &self.replace {
            request.data.replace_pid.clone_from(pid);
            request.data.secret.clone_from(secret);
        }
        Wire {
            client_id: creds.client_id().to_string(),
            username: creds.username().to_string(),
            password: sign(
                self.sign_method,
                self.secret.as_bytes(),
                &self.pid,
                unique,
                ts,
            )
            .to_string(),
            request_topic: Topic::request(&self.pid, unique).to_string(),
            response_topic: Topic::response(&self.pid, unique).to_string(),
            request: request.to_json(),
        }
    }

    /// One attempt, bounded by the timeout, signed at `ts`.
    pub(crate) async fn attempt(&self, ts: u64) -> Result<Triplet, Error> {
        let wire = self.wire(ts);
        let transport = self.tls.as_ref().map(transport).transpose()?;
        let exchange = async {
            match self.version {
                MqttVersion::V311 => exchange!(
                    self,
                    wire,
                    transport,
                    rumqttc::AsyncClient,
                    rumqttc::MqttOptions,
                    rumqttc::Event,
                    rumqttc::Packet,
                    rumqttc::QoS,
                    rumqttc::ConnectionError,
                    |c: &rumqttc::SubscribeReasonCode| matches!(
                        c,
                        rumqttc::SubscribeReasonCode::Success(_)
                    ),
                    |_: &mut rumqttc::MqttOptions, _: Duration| {}
                ),
                MqttVersion::V5 => exchange!(
                    self,
                    wire,
                    transport,
                    rumqttc::v5::AsyncClient,
                    rumqttc::v5::MqttOptions,
                    rumqttc::v5::Event,
                    rumqttc::v5::mqttbytes::v5::Packet,
                    rumqttc::v5::mqttbytes::QoS,
                    rumqttc::v5::ConnectionError,
                    |c: &rumqttc::v5::mqttbytes::v5::SubscribeReasonCode| matches!(
                        c,
                        rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                    ),
                    |o: &mut rumqttc::v5::MqttOptions, t: Duration| {
                        // rumqttc's default preallocates 65,535 inflight slots (~13 MB).
                        o.set_outgoing_inflight_upper_limit(4);
                        o.set_connection_timeout(t.as_secs().max(1));
                    }
                ),
            }
        };
        let reply = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Error::Timeout(self.timeout))??;
        if reply.res != 0 {
            return Err(Error::Refused {
                res: reply.res,
                msg: reply.msg,
            });
        }
        let d = reply.data;
        match (d.pid, d.uuid, d.secret) {
            (Some(pid), Some(uuid), Some(secret)) => Ok(Triplet {
                pid,
                uuid,
                secret,
                mac: d.mac.unwrap_or_default(),
                unique: self.unique.clone().unwrap_or_default(),
            }),
            _ => Err(Error::Network("success reply without a triplet".into())),
        }
    }
}
