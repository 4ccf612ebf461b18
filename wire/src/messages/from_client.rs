//! Parsers for client messages Sluice reads during authentication.

use super::reader::Reader;
use super::ParseError;

/// Parses a SASLInitialResponse body into the mechanism name and the
/// client-first-message (empty when the client sent length -1).
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), ParseError> {
    let mut r = Reader::new(body);
    let mechanism = r.cstr("SASL mechanism")?;
    let len = r.i32("SASL data length")?;
    let data = match len {
        -1 => &[][..],
        len => {
            let n = usize::try_from(len).map_err(|_| ParseError::Invalid {
                what: "SASL data length",
                value: len.into(),
            })?;
            r.bytes(n, "SASL data")?
        }
    };
    r.finish()?;
    Ok((mechanism, data))
}
