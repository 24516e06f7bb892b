//! What the hook tests and the hook benchmark share.

/// Encodes a form value (`application/x-www-form-urlencoded`).
pub(crate) fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
