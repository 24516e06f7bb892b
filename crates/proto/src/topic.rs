//! The two topics of a registering device (PROTOCOL.md section 3):
//!
//! - request, device to cloud: `register/v2/${pid}/${unique}/register`
//! - response, cloud to device: `register/v2/${pid}/${unique}/register_response`
//!
//! A parsed [`Topic`] says whose it is, so that the endpoint can check that a
//! connection publishes and subscribes only to its own.

use core::fmt;

use crate::is_valid_id;

/// The first two topic levels, shared by both topics.
pub const TOPIC_ROOT: &str = "register/v2/";
/// The last level of the request topic.
pub const REQUEST_SUFFIX: &str = "register";
/// The last level of the response topic.
pub const RESPONSE_SUFFIX: &str = "register_response";

/// Which of a device's two topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// `.../register`: the device publishes its request here.
    Request,
    /// `.../register_response`: the cloud publishes the reply here.
    Response,
}

impl TopicKind {
    /// The last topic level of this kind.
    pub const fn suffix(self) -> &'static str {
        match self {
            Self::Request => REQUEST_SUFFIX,
            Self::Response => RESPONSE_SUFFIX,
        }
    }
}

/// Why a topic is not one of a device's registration topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The topic does not start with `register/v2/`.
    #[error("topic does not start with `register/v2/`")]
    Root,
    /// The topic has not exactly five levels.
    #[error("topic is not `register/v2/<pid>/<unique>/<register|register_response>`")]
    Levels,
    /// The pid or unique level is empty, too long, or holds a wildcard.
    #[error("pid or unique level of the topic is not valid")]
    InvalidId,
    /// The last level is neither `register` nor `register_response`.
    #[error("last topic level is neither `register` nor `register_response`")]
    Suffix,
}

/// A registration topic, borrowing from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Topic<'a> {
    /// The product id level.
    pub pid: &'a str,
    /// The device unique level.
    pub unique: &'a str,
    /// Request or response.
    pub kind: TopicKind,
}

impl<'a> Topic<'a> {
    /// The request topic of a device.
    pub const fn request(pid: &'a str, unique: &'a str) -> Self {
        Self {
            pid,
            unique,
            kind: TopicKind::Request,
        }
    }

    /// The response topic of a device.
    pub const fn response(pid: &'a str, unique: &'a str) -> Self {
        Self {
            pid,
            unique,
            kind: TopicKind::Response,
        }
    }

    /// Parses a topic name. Wildcards (`+`, `#`) in the pid or unique level are refused,
    /// so a topic filter that parses is always a single exact topic.
    pub fn parse(s: &'a str) -> Result<Self, TopicError> {
        let rest = s.strip_prefix(TOPIC_ROOT).ok_or(TopicError::Root)?;
        let mut levels = rest.split('/');
        let (Some(pid), Some(unique), Some(suffix), None) =
            (levels.next(), levels.next(), levels.next(), levels.next())
        else {
            return Err(TopicError::Levels);
        };
        if !is_valid_id(pid) || !is_valid_id(unique) {
            return Err(TopicError::InvalidId);
        }
        let kind = match suffix {
            REQUEST_SUFFIX => TopicKind::Request,
            RESPONSE_SUFFIX => TopicKind::Response,
            _ => return Err(TopicError::Suffix),
        };
        Ok(Self { pid, unique, kind })
    }

    /// Whether this topic belongs to the device (`pid`, `unique`) and is of `kind`.
    pub fn is(&self, pid: &str, unique: &str, kind: TopicKind) -> bool {
        self.kind == kind && self.pid == pid && self.unique == unique
    }

    /// Whether the topic name or filter `s` is exactly the device's (`pid`, `unique`)
    /// own topic of `kind`: the one authorization rule of PROTOCOL.md section 3 that
    /// the embedded endpoint and every broker hook apply. Wildcards never match.
    pub fn is_own(s: &str, pid: &str, unique: &str, kind: TopicKind) -> bool {
        Topic::parse(s).is_ok_and(|t| t.is(pid, unique, kind))
    }

    /// The length of the topic name in bytes, for pre-sizing buffers.
    pub fn len(&self) -> usize {
        TOPIC_ROOT.len() + self.pid.len() + 1 + self.unique.len() + 1 + self.kind.suffix().len()
    }

    /// Always false: a topic name is never empty. (Pairs with [`Topic::len`].)
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl fmt::Display for Topic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOPIC_ROOT}{}/{}/{}",
            self.pid,
            self.unique,
            self.kind.suffix()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn build_and_parse() {
        let t = Topic::request("p", "u");
        assert_eq!(t.to_string(), "register/v2/p/u/register");
        assert_eq!(t.len(), t.to_string().len());
        let r = Topic::response("p", "u");
        assert_eq!(r.to_string(), "register/v2/p/u/register_response");
        assert_eq!(Topic::parse("register/v2/p/u/register"), Ok(t));
        assert_eq!(Topic::parse("register/v2/p/u/register_response"), Ok(r));
        assert!(r.is("p", "u", TopicKind::Response));
        assert!(!r.is("p", "v", TopicKind::Response));
    }

    #[test]
    fn refusals() {
        for (s, e) in [
            ("register/v1/p/u/register", TopicError::Root),
            ("register/v2/p/u", TopicError::Levels),
            ("register/v2/p/u/register/x", TopicError::Levels),
            ("register/v2/+/u/register", TopicError::InvalidId),
            ("register/v2/p/#", TopicError::Levels),
            ("register/v2/p/#/register", TopicError::InvalidId),
            ("register/v2//u/register", TopicError::InvalidId),
            ("register/v2/p/u/+", TopicError::Suffix),
            ("register/v2/p/u/#", TopicError::Suffix),
        ] {
            assert_eq!(Topic::parse(s), Err(e), "{s}");
        }
    }
}
