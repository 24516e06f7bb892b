//! Lowercase hex encoding and case-insensitive decoding into caller-provided buffers.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes the lowercase hex of `bytes` into `out`, which must be twice as long.
pub(crate) fn encode_into(bytes: &[u8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), bytes.len() * 2);
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes hex (either case) into `out`. Returns `None` unless `hex` is exactly
/// `2 * out.len()` hex digits.
pub(crate) fn decode_into(hex: &[u8], out: &mut [u8]) -> Option<()> {
    if hex.len() != out.len() * 2 {
        return None;
    }
    for (pair, o) in hex.chunks_exact(2).zip(out.iter_mut()) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_case() {
        let mut hex = [0u8; 6];
        encode_into(&[0x00, 0xab, 0xff], &mut hex);
        assert_eq!(&hex, b"00abff");
        let mut back = [0u8; 3];
        decode_into(b"00ABfF", &mut back).unwrap();
        assert_eq!(back, [0x00, 0xab, 0xff]);
        assert!(decode_into(b"00abf", &mut back).is_none());
        assert!(decode_into(b"00abfg", &mut back).is_none());
    }
}
