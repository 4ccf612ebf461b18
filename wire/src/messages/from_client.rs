//! Parsers for client messages Sluice reads during authentication.

use super::reader::{ParseError, Reader};

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

/// A Parse message (`P`), borrowed from its body. Names and query are raw bytes so
/// they can be forwarded exactly as the client sent them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseView<'a> {
    pub name: &'a [u8],
    pub query: &'a [u8],
    /// The Int16 count and the Int32 OIDs, as sent.
    pub param_types: &'a [u8],
}

/// Parses a Parse body: name, query, then a parameter-type list whose length must
/// match its count.
pub fn parse_parse(body: &[u8]) -> Result<ParseView<'_>, ParseError> {
    let mut r = Reader::new(body);
    let name = r.cbytes("statement name")?;
    let query = r.cbytes("query")?;
    let param_types = r.rest();
    let mut types = Reader::new(param_types);
    let count = types.i16("parameter type count")?;
    let count = usize::try_from(count).map_err(|_| ParseError::Invalid {
        what: "parameter type count",
        value: count.into(),
    })?;
    types.bytes(count * 4, "parameter types")?;
    types.finish()?;
    Ok(ParseView {
        name,
        query,
        param_types,
    })
}

/// A Bind message (`B`): the portal, the statement, and the rest (formats, values,
/// result formats) untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindView<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub rest: &'a [u8],
}

pub fn parse_bind(body: &[u8]) -> Result<BindView<'_>, ParseError> {
    let mut r = Reader::new(body);
    let portal = r.cbytes("portal name")?;
    let statement = r.cbytes("statement name")?;
    Ok(BindView {
        portal,
        statement,
        rest: r.rest(),
    })
}

/// The target of a Describe (`D`) or Close (`C`): `b'S'` (statement) or `b'P'`
/// (portal) and its name.
pub fn parse_target(body: &[u8]) -> Result<(u8, &[u8]), ParseError> {
    let mut r = Reader::new(body);
    let kind = r.u8("target kind")?;
    if kind != b'S' && kind != b'P' {
        return Err(ParseError::Invalid {
            what: "target kind",
            value: kind.into(),
        });
    }
    let name = r.cbytes("target name")?;
    r.finish()?;
    Ok((kind, name))
}
