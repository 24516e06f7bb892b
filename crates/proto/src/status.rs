//! The `res` status codes of the register reply (PROTOCOL.md section 5).
//!
//! The numbers are part of the wire contract: once published, a number never changes
//! meaning. `0` is success. `4xxx` means the request or the device's situation must
//! change before it can succeed; `5xxx` means the service could not serve it now. Each
//! code carries a retry hint ([`Status::retry_after`]) that the device SDK honours.
//! The table is reproduced in `docs/status-codes.md`; a test keeps the two in step.

use core::fmt;

/// A register reply status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Status {
    /// The device is registered; `data` holds its triplet.
    Success,
    /// The request is not a JSON object of the documented shape, or a field is too long.
    MalformedRequest,
    /// The request's `code` is not `register`.
    UnknownEventCode,
    /// The product is not known to the service.
    ProductUnknown,
    /// The operator has disabled registration for the product.
    RegistrationDisabled,
    /// `data.replacePid` names a product that is not known.
    ReplacePidUnknown,
    /// `data.replacePid` names a product whose registration is disabled.
    ReplacePidDisabled,
    /// `data.replacePid` is given without `data.secret`.
    ReplacePidSecretMissing,
    /// `data.secret` is not the secret of the `data.replacePid` product.
    ReplacePidSecretWrong,
    /// The device (pid, unique) was revoked by the operator.
    DeviceRevoked,
    /// The device registered before, and its product's re-registration policy no longer
    /// returns its triplet (the window after the first binding has passed, or the
    /// policy is `never`); an operator must reset the device.
    ReregistrationRefused,
    /// The product has bound as many devices as its quota allows.
    QuotaReached,
    /// `data.barcode` is already bound to another device.
    BarcodeTaken,
    /// The product's triplet pool is empty and it may not generate triplets.
    PoolExhausted,
    /// Too many registrations for this product right now.
    RateLimited,
    /// The service cannot serve registrations at the moment (e.g. storage unavailable).
    TemporarilyUnavailable,
    /// An unexpected error in the service.
    InternalError,
}

impl Status {
    /// Every status, in table order.
    pub const ALL: [Status; 17] = [
        Self::Success,
        Self::MalformedRequest,
        Self::UnknownEventCode,
        Self::ReplacePidSecretMissing,
        Self::ReplacePidSecretWrong,
        Self::ReplacePidUnknown,
        Self::ReplacePidDisabled,
        Self::RegistrationDisabled,
        Self::DeviceRevoked,
        Self::ReregistrationRefused,
        Self::QuotaReached,
        Self::ProductUnknown,
        Self::BarcodeTaken,
        Self::RateLimited,
        Self::InternalError,
        Self::PoolExhausted,
        Self::TemporarilyUnavailable,
    ];

    /// The `res` number on the wire.
    pub const fn code(self) -> u16 {
        match self {
            Self::Success => 0,
            Self::MalformedRequest => 4000,
            Self::UnknownEventCode => 4001,
            Self::ReplacePidSecretMissing => 4010,
            Self::ReplacePidSecretWrong => 4011,
            Self::ReplacePidUnknown => 4012,
            Self::ReplacePidDisabled => 4013,
            Self::RegistrationDisabled => 4030,
            Self::DeviceRevoked => 4031,
            Self::ReregistrationRefused => 4032,
            Self::QuotaReached => 4033,
            Self::ProductUnknown => 4040,
            Self::BarcodeTaken => 4090,
            Self::RateLimited => 4290,
            Self::InternalError => 5000,
            Self::PoolExhausted => 5030,
            Self::TemporarilyUnavailable => 5031,
        }
    }

    /// The status with the `res` number `code`, if there is one.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The `msg` sent with this status: what failed, in words a firmware developer can
    /// act on.
    pub const fn message(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::MalformedRequest => {
                "malformed request: expected a JSON object with string id, numeric ts, code \"register\", ack 0 or 1 and optional data.barcode, data.replacePid, data.secret"
            }
            Self::UnknownEventCode => "unknown event code: code must be \"register\"",
            Self::ProductUnknown => "product unknown: the pid is not registered with the service",
            Self::RegistrationDisabled => {
                "registration disabled: the operator has disabled registration for this product"
            }
            Self::ReplacePidUnknown => "replacePid unknown: no product has that pid",
            Self::ReplacePidDisabled => {
                "replacePid disabled: registration is disabled for the replacement product"
            }
            Self::ReplacePidSecretMissing => {
                "replacePid secret missing: data.secret is required when data.replacePid is given"
            }
            Self::ReplacePidSecretWrong => {
                "replacePid secret wrong: data.secret is not the replacement product's secret"
            }
            Self::DeviceRevoked => "device revoked: the operator revoked this device",
            Self::ReregistrationRefused => {
                "re-registration refused: this device registered before and its product no longer returns its triplet; an operator must reset the device"
            }
            Self::QuotaReached => {
                "quota reached: the product has bound as many devices as its quota allows"
            }
            Self::BarcodeTaken => "barcode taken: the barcode is bound to another device",
            Self::PoolExhausted => "pool exhausted: no free triplet is left for this product",
            Self::RateLimited => {
                "rate limited: too many registrations for this product, retry later"
            }
            Self::TemporarilyUnavailable => "temporarily unavailable: retry later",
            Self::InternalError => "internal error: retry later",
        }
    }

    /// Whether a device should retry the same request, and after how many seconds at
    /// least (a device adds its own backoff and jitter). `None`: do not retry; the
    /// request or the operator's setup must change first.
    pub const fn retry_after(self) -> Option<u32> {
        match self {
            Self::RateLimited => Some(5),
            Self::TemporarilyUnavailable => Some(2),
            Self::InternalError => Some(10),
            // The operator may enable the product, fill the pool or raise the quota.
            Self::RegistrationDisabled
            | Self::ReplacePidDisabled
            | Self::PoolExhausted
            | Self::QuotaReached => Some(600),
            Self::Success
            | Self::MalformedRequest
            | Self::UnknownEventCode
            | Self::ProductUnknown
            | Self::ReplacePidUnknown
            | Self::ReplacePidSecretMissing
            | Self::ReplacePidSecretWrong
            | Self::DeviceRevoked
            | Self::ReregistrationRefused
            | Self::BarcodeTaken => None,
        }
    }

    /// Whether this is [`Status::Success`].
    pub const fn is_success(self) -> bool {
        matches!(self, Self::Success)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        for (i, a) in Status::ALL.iter().enumerate() {
            assert_eq!(Status::from_code(a.code()), Some(*a));
            for b in &Status::ALL[i + 1..] {
                assert_ne!(a.code(), b.code(), "{a:?} and {b:?}");
                assert_ne!(a, b);
            }
        }
        assert_eq!(Status::from_code(1), None);
    }

    #[test]
    fn table_in_code_order() {
        assert!(Status::ALL.windows(2).all(|w| w[0].code() < w[1].code()));
    }
}
