//! A minimal MQTT connection for load generation: the `rmqtt-codec` packets over one
//! TCP stream, one read buffer and one write buffer, no task per connection. Cheap on
//! purpose, so that the load generator measures the server and not itself.

use std::io;
use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use rmqtt_codec::types::{Protocol, QoS};
use rmqtt_codec::{MqttCodec, MqttPacket, v3, v5};
use std::sync::Arc;

use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::codec::{Decoder, Encoder};

/// A packet received, reduced to what a registering device cares about.
#[derive(Debug)]
pub(crate) enum Rx {
    /// CONNACK: accepted, or refused with this code.
    ConnAck(Result<(), u8>),
    /// SUBACK: every filter granted.
    SubAck(bool),
    /// PUBLISH.
    Publish {
        topic: String,
        qos: u8,
        packet_id: Option<u16>,
        payload: Bytes,
    },
    /// PUBACK.
    PubAck,
    /// DISCONNECT from the server.
    Disconnect,
    /// Anything else.
    Other,
}

/// One MQTT connection.
pub(crate) struct Conn {
    stream: Box<dyn Io>,
    codec: MqttCodec,
    v5: bool,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn id(v: u16) -> NonZeroU16 {
    NonZeroU16::new(v).unwrap_or(NonZeroU16::MIN)
}

fn bad(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// A byte stream: plain TCP or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// TLS settings for simulated devices: the CA to trust and the server name to check.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsClient({:?})", self.server_name)
    }
}

impl TlsClient {
    /// Trusts the PEM CA certificates in `ca_pem` and expects the server to be `host`.
    /// The error (kind `InvalidInput`) says which of the two is unusable.
    pub fn new(ca_pem: &[u8], host: &str) -> std::io::Result<Self> {
        let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
        let config = dynreg_net::tls::client_config(dynreg_net::tls::Roots::Pem(ca_pem))
            .map_err(|e| bad(format!("CA: {e}")))?;
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| bad(format!("server name {host}: {e}")))?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

impl Conn {
    /// Opens a TCP connection (TCP_NODELAY), from `source` when given (`addr` must then
    /// be an IP address and port), with TLS when given, speaking MQTT 5 or 3.1.1.
    pub(crate) async fn open(
        addr: &str,
        source: Option<SocketAddr>,
        v5: bool,
        tls: Option<&TlsClient>,
    ) -> io::Result<Self> {
        let tcp = match source {
            Some(from) => {
                let to: SocketAddr = addr.parse().map_err(bad)?;
                let socket = TcpSocket::new_v4()?;
                // Ports of this address still in TIME_WAIT may be reused.
                socket.set_reuseaddr(true)?;
                socket.bind(from)?;
                socket.connect(to).await?
            }
            None => TcpStream::connect(addr).await?,
        };
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Io> = match tls {
            Some(t) => Box::new(t.connector.connect(t.server_name.clone(), tcp).await?),
            None => Box::new(tcp),
        };
        Ok(Self {
            stream,
            codec: if v5 {
                MqttCodec::V5(v5::Codec::new(1 << 20, 0))
            } else {
                MqttCodec::V3(v3::Codec::new(1 << 20))
            },
            v5,
            rbuf: BytesMut::with_capacity(1024),
            wbuf: BytesMut::with_capacity(512),
        })
    }

    fn queue(&mut self, p: MqttPacket) -> io::Result<()> {
        self.codec.encode(p, &mut self.wbuf).map_err(bad)
    }

    /// Writes everything queued.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Queues a CONNECT with a 30 s keepalive.
    pub(crate) fn connect(
        &mut self,
        client_id: &str,
        user: Option<&str>,
        password: Option<&[u8]>,
    ) -> io::Result<()> {
        self.connect_with_keepalive(client_id, user, password, 30)
    }

    /// Queues a CONNECT with the given keepalive (0: none).
    pub(crate) fn connect_with_keepalive(
        &mut self,
        client_id: &str,
        user: Option<&str>,
        password: Option<&[u8]>,
        keep_alive: u16,
    ) -> io::Result<()> {
        let username = user.map(|u| u.to_owned().into());
        let password = password.map(Bytes::copy_from_slice);
        let p = if self.v5 {
            MqttPacket::V5(v5::Packet::Connect(Box::new(v5::Connect {
                clean_start: true,
                keep_alive,
                session_expiry_interval_secs: 0,
                auth_method: None,
                auth_data: None,
                request_problem_info: false,
                request_response_info: false,
                receive_max: None,
                topic_alias_max: 0,
                user_properties: Vec::new(),
                max_packet_size: None,
                last_will: None,
                client_id: client_id.to_owned().into(),
                username,
                password,
                cert: None,
            })))
        } else {
            MqttPacket::V3(v3::Packet::Connect(Box::new(v3::Connect {
                protocol: Protocol::default(),
                clean_session: true,
                keep_alive,
                last_will: None,
                client_id: client_id.to_owned().into(),
                username,
                password,
                cert: None,
            })))
        };
        self.queue(p)
    }

    /// Queues a SUBSCRIBE to one filter.
    pub(crate) fn subscribe(&mut self, packet_id: u16, filter: &str, q: u8) -> io::Result<()> {
        let p = if self.v5 {
            MqttPacket::V5(v5::Packet::Subscribe(v5::Subscribe {
                packet_id: id(packet_id),
                id: None,
                user_properties: Vec::new(),
                topic_filters: vec![(
                    filter.to_owned().into(),
                    v5::SubscriptionOptions {
                        qos: qos(q),
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: v5::RetainHandling::AtSubscribe,
                    },
                )],
            }))
        } else {
            MqttPacket::V3(v3::Packet::Subscribe {
                packet_id: id(packet_id),
                topic_filters: vec![(filter.to_owned().into(), qos(q))],
            })
        };
        self.queue(p)
    }

    /// Queues a PUBLISH.
    pub(crate) fn publish(
        &mut self,
        topic: &str,
        q: u8,
        packet_id: Option<u16>,
        payload: Bytes,
    ) -> io::Result<()> {
        let publish = rmqtt_codec::types::Publish {
            dup: false,
            retain: false,
            qos: qos(q),
            topic: topic.to_owned().into(),
            packet_id: packet_id.and_then(NonZeroU16::new),
            payload,
            properties: self.v5.then(v5::PublishProperties::default),
        };
        let p = if self.v5 {
            MqttPacket::V5(v5::Packet::Publish(Box::new(publish)))
        } else {
            MqttPacket::V3(v3::Packet::Publish(Box::new(publish)))
        };
        self.queue(p)
    }

    /// Queues a PUBACK.
    pub(crate) fn puback(&mut self, packet_id: u16) -> io::Result<()> {
        let p = if self.v5 {
            MqttPacket::V5(v5::Packet::PublishAck(v5::PublishAck {
                packet_id: id(packet_id),
                reason_code: v5::PublishAckReason::Success,
                properties: Vec::new(),
                reason_string: None,
            }))
        } else {
            MqttPacket::V3(v3::Packet::PublishAck {
                packet_id: id(packet_id),
            })
        };
        self.queue(p)
    }

    /// Queues a DISCONNECT.
    pub(crate) fn disconnect(&mut self) -> io::Result<()> {
        let p = if self.v5 {
            MqttPacket::V5(v5::Packet::Disconnect(v5::Disconnect::default()))
        } else {
            MqttPacket::V3(v3::Packet::Disconnect)
        };
        self.queue(p)
    }

    /// Receives the next packet.
    pub(crate) async fn recv(&mut self) -> io::Result<Rx> {
        loop {
            if let Some((p, _)) = self.codec.decode(&mut self.rbuf).map_err(bad)? {
                return Ok(reduce(p));
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

fn reduce(p: MqttPacket) -> Rx {
    match p {
        MqttPacket::V3(p) => match p {
            v3::Packet::ConnectAck(a) => Rx::ConnAck(match a.return_code {
                v3::ConnectAckReason::ConnectionAccepted => Ok(()),
                other => Err(u8::from(other)),
            }),
            v3::Packet::SubscribeAck { status, .. } => Rx::SubAck(
                status
                    .iter()
                    .all(|s| matches!(s, v3::SubscribeReturnCode::Success(_))),
            ),
            v3::Packet::Publish(p) => Rx::Publish {
                topic: p.topic.to_string(),
                qos: u8::from(p.qos),
                packet_id: p.packet_id.map(NonZeroU16::get),
                payload: p.payload,
            },
            v3::Packet::PublishAck { .. } => Rx::PubAck,
            v3::Packet::Disconnect => Rx::Disconnect,
            _ => Rx::Other,
        },
        MqttPacket::V5(p) => match p {
            v5::Packet::ConnectAck(a) => Rx::ConnAck(match a.reason_code {
                v5::ConnectAckReason::Success => Ok(()),
                other => Err(u8::from(other)),
            }),
            v5::Packet::SubscribeAck(a) => Rx::SubAck(a.status.iter().all(|s| {
                matches!(
                    s,
                    v5::SubscribeAckReason::GrantedQos0
                        | v5::SubscribeAckReason::GrantedQos1
                        | v5::SubscribeAckReason::GrantedQos2
                )
            })),
            v5::Packet::Publish(p) => Rx::Publish {
                topic: p.topic.to_string(),
                qos: u8::from(p.qos),
                packet_id: p.packet_id.map(NonZeroU16::get),
                payload: p.payload,
            },
            v5::Packet::PublishAck(_) => Rx::PubAck,
            v5::Packet::Disconnect(_) => Rx::Disconnect,
            _ => Rx::Other,
        },
        MqttPacket::Version(_) => Rx::Other,
    }
}
