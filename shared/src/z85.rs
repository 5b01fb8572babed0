//! Z85 (ZeroMQ RFC 32), the text form of CURVE keys. Written out rather
//! than taken from `zmq::z85_decode`, which leaks its buffer (rust-zmq
//! issue 387) and returns zeros for characters outside the alphabet.

const ALPHABET: &[u8; 85] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// Each byte's digit, or 0xFF for a byte outside the alphabet (keys are
/// decoded at every handshake).
const DIGITS: [u8; 256] = {
    let mut digits = [0xFF; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        digits[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    digits
};

/// Whether `c` is one of the 85 characters.
pub fn is_z85(c: char) -> bool {
    c.is_ascii() && DIGITS[c as usize] != 0xFF
}

/// The text of `bytes`, or `None` when their length is not a multiple of 4.
pub fn encode(bytes: &[u8]) -> Option<String> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = String::with_capacity(bytes.len() / 4 * 5);
    for chunk in bytes.chunks_exact(4) {
        let mut value = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let mut digits = [0u8; 5];
        for digit in digits.iter_mut().rev() {
            *digit = ALPHABET[(value % 85) as usize];
            value /= 85;
        }
        out.extend(digits.iter().map(|&d| d as char));
    }
    Some(out)
}

/// The bytes of `text`, or `None` when its length is not a multiple of 5,
/// it has a character outside the alphabet, or a group overflows 32 bits.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(5) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 5 * 4);
    for group in text.chunks_exact(5) {
        let mut value: u64 = 0;
        for &c in group {
            let digit = DIGITS[c as usize];
            if digit == 0xFF {
                return None;
            }
            value = value * 85 + u64::from(digit);
        }
        let value = u32::try_from(value).ok()?;
        out.extend_from_slice(&value.to_be_bytes());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_example_round_trips() {
        let bytes = [0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B];
        assert_eq!(encode(&bytes).as_deref(), Some("HelloWorld"));
        assert_eq!(decode("HelloWorld").as_deref(), Some(&bytes[..]));
    }

    #[test]
    fn agrees_with_libzmq_on_keys() {
        for _ in 0..20 {
            let pair = zmq::CurveKeyPair::new().unwrap();
            let text = encode(&pair.public_key).unwrap();
            assert_eq!(text, zmq::z85_encode(&pair.public_key).unwrap());
            assert_eq!(decode(&text).unwrap(), pair.public_key);
        }
    }

    #[test]
    fn bad_text_is_refused() {
        assert_eq!(decode("Hello"), Some(vec![0x86, 0x4F, 0xD2, 0x6F]));
        assert_eq!(decode("Hell"), None, "length");
        assert_eq!(decode("Hell\""), None, "a character outside the alphabet");
        assert_eq!(decode("#####"), None, "more than 32 bits");
        assert_eq!(encode(&[1, 2, 3]), None);
    }
}
