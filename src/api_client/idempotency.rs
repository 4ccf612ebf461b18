//! The `Idempotency-Key` a create request carries, so that sending it again after a
//! timeout or a broken connection cannot act twice.

use std::fmt;
use std::str::FromStr;

use hyper::header::HeaderValue;

/// Longest key accepted from the command line; random ones are 32 characters.
const MAX_LEN: usize = 255;

/// A key: 1 to 255 visible ASCII characters, no spaces.
#[derive(Clone, PartialEq, Eq)]
pub struct IdempotencyKey(HeaderValue);

impl IdempotencyKey {
    pub const HEADER: &'static str = "idempotency-key";

    /// 128 random bits in hex: one per CLI invocation.
    pub fn random() -> Self {
        let text = format!("{:032x}", rand::random::<u128>());
        IdempotencyKey(HeaderValue::from_str(&text).expect("hex is a valid header value"))
    }

    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().expect("checked to be visible ASCII")
    }
}

impl FromStr for IdempotencyKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "must be 1 to {MAX_LEN} visible ASCII characters without spaces"
            ));
        }
        HeaderValue::from_str(s)
            .map(IdempotencyKey)
            .map_err(|e| e.to_string())
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({})", self.as_str())
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_keys_differ_and_user_keys_are_checked() {
        let (a, b) = (IdempotencyKey::random(), IdempotencyKey::random());
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert_eq!(
            "retry-7".parse::<IdempotencyKey>().unwrap().as_str(),
            "retry-7"
        );
        for bad in ["", "a b", "é", "a\nb", &"k".repeat(256)] {
            assert!(bad.parse::<IdempotencyKey>().is_err(), "{bad:?}");
        }
    }
}
