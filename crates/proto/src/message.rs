//! The register request (device to cloud) and reply (cloud to device), PROTOCOL.md
//! sections 4 and 5, as JSON.
//!
//! Decisions where the protocol text is silent (part of the contract):
//! - Unknown fields are ignored; `null` is taken as absent.
//! - `ack` defaults to 1 when absent; values other than 0 and 1 are malformed.
//! - Empty `barcode`, `replacePid` and `secret` strings are taken as absent.
//! - Bounds: `id` at most [`MAX_MESSAGE_ID_LEN`] bytes and non-empty, `barcode` at most
//!   [`MAX_BARCODE_LEN`] bytes without control characters, `replacePid` a valid pid,
//!   `secret` at most [`MAX_SECRET_LEN`] bytes.
//! - On failure, the reply's `data` is `{}`; its `id` and `code` echo the request's as
//!   far as they could be read.
//!
//! Neither type prints secrets in its `Debug` output.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{Status, is_valid_id};

/// The only event code of a register request.
pub const REGISTER_CODE: &str = "register";
/// The longest request `id` accepted, in bytes.
pub const MAX_MESSAGE_ID_LEN: usize = 128;
/// The longest `data.barcode` accepted, in bytes.
pub const MAX_BARCODE_LEN: usize = 64;
/// The longest `data.secret` accepted, in bytes.
pub const MAX_SECRET_LEN: usize = 128;

fn default_ack() -> u8 {
    1
}

/// Deserializes `null` as the type's default.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

fn is_empty(s: &str) -> bool {
    s.is_empty()
}

/// A register request, as published by a device on its request topic.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The message id, echoed in the reply.
    #[serde(default, deserialize_with = "null_as_default")]
    pub id: String,
    /// The device's time in seconds, if it sent one (informative only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    /// The event code; must be `register`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub code: String,
    /// 1: a reply is required; 0: no reply. Defaults to 1.
    #[serde(default = "default_ack")]
    pub ack: u8,
    /// The optional request data.
    #[serde(default, deserialize_with = "null_as_default")]
    pub data: RequestData,
}

/// The `data` object of a register request.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestData {
    /// Overwrites the barcode that was pre-generated with the triplet.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_empty"
    )]
    pub barcode: String,
    /// Registers the device under this product instead.
    #[serde(
        rename = "replacePid",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_empty"
    )]
    pub replace_pid: String,
    /// The secret of the `replacePid` product.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_empty"
    )]
    pub secret: String,
}

impl fmt::Debug for RequestData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestData")
            .field("barcode", &self.barcode)
            .field("replace_pid", &self.replace_pid)
            .field(
                "secret",
                &if self.secret.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

impl fmt::Debug for RegisterRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("id", &self.id)
            .field("ts", &self.ts)
            .field("code", &self.code)
            .field("ack", &self.ack)
            .field("data", &self.data)
            .finish()
    }
}

/// A request that could not be read as a register request.
#[derive(Debug)]
pub struct MessageError {
    /// The request's `id`, if it could be read, else empty: echo it in the reply.
    pub id: String,
    /// The request's `code`, if it could be read, else empty: echo it in the reply.
    pub code: String,
    /// What was wrong, from the JSON parser.
    pub reason: serde_json::Error,
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed register request: {}", self.reason)
    }
}

impl core::error::Error for MessageError {}

impl RegisterRequest {
    /// A request with `code` = `register`, `ack` = 1 and no data.
    pub fn new(id: impl Into<String>, ts: u64) -> Self {
        Self {
            id: id.into(),
            ts: Some(ts),
            code: REGISTER_CODE.into(),
            ack: 1,
            data: RequestData::default(),
        }
    }

    /// Reads a request from JSON. On failure the error still carries the `id` and
    /// `code` when they could be read, so that the reply can echo them.
    pub fn from_json(bytes: &[u8]) -> Result<Self, MessageError> {
        serde_json::from_slice(bytes).map_err(|reason| {
            #[derive(Deserialize)]
            struct Echo {
                #[serde(default)]
                id: Option<String>,
                #[serde(default)]
                code: Option<String>,
            }
            let echo = serde_json::from_slice::<Echo>(bytes).ok();
            let (id, code) = echo.map_or((None, None), |e| (e.id, e.code));
            MessageError {
                id: id.unwrap_or_default(),
                code: code.unwrap_or_default(),
                reason,
            }
        })
    }

    /// Writes the request as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings and integers into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks the request against the contract's bounds and the event code, giving the
    /// status to reply with when it fails.
    pub fn validate(&self) -> Result<(), Status> {
        let d = &self.data;
        let malformed = self.id.is_empty()
            || self.id.len() > MAX_MESSAGE_ID_LEN
            || self.ack > 1
            || d.barcode.len() > MAX_BARCODE_LEN
            || d.barcode.chars().any(char::is_control)
            || (!d.replace_pid.is_empty() && !is_valid_id(&d.replace_pid))
            || d.secret.len() > MAX_SECRET_LEN;
        if malformed {
            Err(Status::MalformedRequest)
        } else if self.code != REGISTER_CODE {
            Err(Status::UnknownEventCode)
        } else {
            Ok(())
        }
    }

    /// Whether the device wants a reply (`ack` is not 0).
    pub fn wants_reply(&self) -> bool {
        self.ack != 0
    }

    /// The barcode to bind, if one was given.
    pub fn barcode(&self) -> Option<&str> {
        Some(self.data.barcode.as_str()).filter(|s| !s.is_empty())
    }

    /// The replacement product, if one was given.
    pub fn replace_pid(&self) -> Option<&str> {
        Some(self.data.replace_pid.as_str()).filter(|s| !s.is_empty())
    }

    /// The replacement product's secret, if one was given.
    pub fn replace_secret(&self) -> Option<&str> {
        Some(self.data.secret.as_str()).filter(|s| !s.is_empty())
    }
}

/// The reply to a register request, published on the device's response topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterReply {
    /// 0 on success, else a [`Status`] code.
    pub res: u16,
    /// What happened, in words.
    pub msg: String,
    /// The request's `id`.
    pub id: String,
    /// The server time, in seconds.
    pub ts: u64,
    /// The request's `code`.
    pub code: String,
    /// The triplet on success; `{}` on failure.
    #[serde(default)]
    pub data: ReplyData,
}

/// The `data` of a reply: the device triplet and its pid on success, empty on failure.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyData {
    /// The pid the device is registered under (the replacement pid after replacePid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    /// The device uuid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// The device secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The device MAC address; may be empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl ReplyData {
    /// The data of a successful reply.
    pub fn triplet(
        pid: impl Into<String>,
        uuid: impl Into<String>,
        secret: impl Into<String>,
        mac: impl Into<String>,
    ) -> Self {
        Self {
            pid: Some(pid.into()),
            uuid: Some(uuid.into()),
            secret: Some(secret.into()),
            mac: Some(mac.into()),
        }
    }
}

impl fmt::Debug for ReplyData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyData")
            .field("pid", &self.pid)
            .field("uuid", &self.uuid)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("mac", &self.mac)
            .finish()
    }
}

impl RegisterReply {
    /// A success reply carrying the device triplet.
    pub fn success(
        id: impl Into<String>,
        code: impl Into<String>,
        ts: u64,
        data: ReplyData,
    ) -> Self {
        Self {
            res: Status::Success.code(),
            msg: Status::Success.message().into(),
            id: id.into(),
            ts,
            code: code.into(),
            data,
        }
    }

    /// A failure reply with `status`, its message, and `data` = `{}`.
    pub fn failure(
        id: impl Into<String>,
        code: impl Into<String>,
        ts: u64,
        status: Status,
    ) -> Self {
        Self {
            res: status.code(),
            msg: status.message().into(),
            id: id.into(),
            ts,
            code: code.into(),
            data: ReplyData::default(),
        }
    }

    /// The status of this reply, if `res` is a known code.
    pub fn status(&self) -> Option<Status> {
        Status::from_code(self.res)
    }

    /// Reads a reply from JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Writes the reply as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings and integers into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn protocol_example_parses() {
        let r = RegisterRequest::from_json(
            br#"{ "id": "45lkj3551234001", "ts": 1626197189, "code": "register", "ack": 1,
                  "data": { "barcode": "112233443234", "replacePid": "112233443234", "secret": "xxxx" } }"#,
        )
        .unwrap();
        assert_eq!(r.id, "45lkj3551234001");
        assert_eq!(r.ts, Some(1626197189));
        assert_eq!(r.barcode(), Some("112233443234"));
        assert_eq!(r.replace_pid(), Some("112233443234"));
        assert_eq!(r.replace_secret(), Some("xxxx"));
        assert!(r.wants_reply());
        assert_eq!(r.validate(), Ok(()));
        assert!(!format!("{r:?}").contains("xxxx"));
    }

    #[test]
    fn defaults_nulls_and_unknown_fields() {
        let r = RegisterRequest::from_json(
            br#"{"id":"1","code":"register","data":null,"extra":[1,{"a":2}]}"#,
        )
        .unwrap();
        assert_eq!(r.ack, 1);
        assert_eq!(r.ts, None);
        assert_eq!(r.barcode(), None);
        let r = RegisterRequest::from_json(
            br#"{"id":"1","code":"register","ack":0,"data":{"barcode":"","replacePid":null}}"#,
        )
        .unwrap();
        assert!(!r.wants_reply());
        assert_eq!(r.barcode(), None);
        assert_eq!(r.replace_pid(), None);
    }

    #[test]
    fn validation() {
        let ok = RegisterRequest::new("1", 5);
        assert_eq!(ok.validate(), Ok(()));
        let mut r = ok.clone();
        r.code = "unregister".into();
        assert_eq!(r.validate(), Err(Status::UnknownEventCode));
        let mut r = ok.clone();
        r.id.clear();
        assert_eq!(r.validate(), Err(Status::MalformedRequest));
        let mut r = ok.clone();
        r.ack = 2;
        assert_eq!(r.validate(), Err(Status::MalformedRequest));
        let mut r = ok.clone();
        r.data.barcode = "x".repeat(65);
        assert_eq!(r.validate(), Err(Status::MalformedRequest));
        let mut r = ok;
        r.data.replace_pid = "a/b".into();
        assert_eq!(r.validate(), Err(Status::MalformedRequest));
    }

    #[test]
    fn malformed_echoes_what_it_can() {
        let e =
            RegisterRequest::from_json(br#"{"id":"7","code":"register","ack":"yes"}"#).unwrap_err();
        assert_eq!((e.id.as_str(), e.code.as_str()), ("7", "register"));
        let e = RegisterRequest::from_json(b"not json").unwrap_err();
        assert_eq!((e.id.as_str(), e.code.as_str()), ("", ""));
    }

    #[test]
    fn reply_shapes() {
        let ok = RegisterReply::success("1", "register", 9, ReplyData::triplet("p", "u", "s", ""));
        assert_eq!(
            core::str::from_utf8(&ok.to_json()).unwrap(),
            r#"{"res":0,"msg":"success","id":"1","ts":9,"code":"register","data":{"pid":"p","uuid":"u","secret":"s","mac":""}}"#
        );
        let bad = RegisterReply::failure("1", "register", 9, Status::PoolExhausted);
        let json = bad.to_json();
        assert!(
            core::str::from_utf8(&json)
                .unwrap()
                .ends_with(r#""data":{}}"#)
        );
        assert_eq!(RegisterReply::from_json(&json).unwrap(), bad);
        assert_eq!(bad.status(), Some(Status::PoolExhausted));
        assert!(!format!("{ok:?}").contains("\"s\""));
    }
}
