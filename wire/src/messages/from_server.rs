//! Parsers for server messages Sluice reads when it logs into a backend or
//! watches a relayed session.

use super::reader::{ParseError, Reader};
use super::to_client::auth_code;
use crate::startup::{CancelKey, MAX_SECRET_LEN, MIN_SECRET_LEN};

/// An Authentication request (`'R'`), borrowing the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication<'a> {
    /// AuthenticationOk.
    Ok,
    /// AuthenticationCleartextPassword.
    CleartextPassword,
    /// AuthenticationMD5Password.
    Md5Password {
        /// Salt to hash the password with.
        salt: [u8; 4],
    },
    /// AuthenticationSASL with the mechanisms the server offers.
    Sasl {
        /// Mechanism names in the server's order of preference.
        mechanisms: Vec<&'a str>,
    },
    /// AuthenticationSASLContinue with a server-first-message.
    SaslContinue(&'a [u8]),
    /// AuthenticationSASLFinal with a server-final-message.
    SaslFinal(&'a [u8]),
    /// Any other method (Kerberos, GSS, SSPI...), which Sluice does not do.
    Other(i32),
}

/// Parses an Authentication (`'R'`) body.
pub fn parse_authentication(body: &[u8]) -> Result<Authentication<'_>, ParseError> {
    let mut r = Reader::new(body);
    let auth = match r.i32("authentication code")? {
        auth_code::OK => Authentication::Ok,
        auth_code::CLEARTEXT => Authentication::CleartextPassword,
        auth_code::MD5 => Authentication::Md5Password {
            salt: r.array("md5 salt")?,
        },
        auth_code::SASL => {
            let mut mechanisms = Vec::new();
            loop {
                let name = r.cstr("SASL mechanism")?;
                if name.is_empty() {
                    break;
                }
                mechanisms.push(name);
            }
            Authentication::Sasl { mechanisms }
        }
        auth_code::SASL_CONTINUE => Authentication::SaslContinue(r.rest()),
        auth_code::SASL_FINAL => Authentication::SaslFinal(r.rest()),
        // Other methods carry method-specific data we do not interpret.
        other => {
            r.rest();
            Authentication::Other(other)
        }
    };
    r.finish()?;
    Ok(auth)
}

/// The fields of an ErrorResponse or NoticeResponse Sluice cares about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields {
    /// Non-localized severity (`V`), or the localized one (`S`) from servers
    /// older than 9.6; empty if neither was sent.
    pub severity: String,
    /// SQLSTATE (`C`); empty if absent.
    pub code: String,
    /// Primary message (`M`); empty if absent.
    pub message: String,
}

/// Parses an ErrorResponse or NoticeResponse body.
///
/// Text is decoded leniently (invalid UTF-8 replaced) because a server may
/// use another encoding and the message is still worth logging.
pub fn parse_error_fields(body: &[u8]) -> Result<ErrorFields, ParseError> {
    let mut r = Reader::new(body);
    let mut fields = ErrorFields::default();
    let mut localized_severity = None;
    loop {
        let code = r.u8("error field type")?;
        if code == 0 {
            break;
        }
        let value = r.cbytes("error field")?;
        let value = String::from_utf8_lossy(value).into_owned();
        match code {
            b'V' => fields.severity = value,
            b'S' => localized_severity = Some(value),
            b'C' => fields.code = value,
            b'M' => fields.message = value,
            _ => {}
        }
    }
    r.finish()?;
    if fields.severity.is_empty() {
        fields.severity = localized_severity.unwrap_or_default();
    }
    Ok(fields)
}

/// Parses a ParameterStatus body into name and value.
pub fn parse_parameter_status(body: &[u8]) -> Result<(&str, &str), ParseError> {
    let mut r = Reader::new(body);
    let name = r.cstr("parameter name")?;
    let value = r.cstr("parameter value")?;
    r.finish()?;
    Ok((name, value))
}

/// Parses a BackendKeyData body (protocol 3.0: a 4-byte secret).
pub fn parse_backend_key_data(body: &[u8]) -> Result<CancelKey, ParseError> {
    let mut r = Reader::new(body);
    let pid = r.i32("process id")?;
    let secret = r.i32("secret key")?;
    r.finish()?;
    Ok(CancelKey { pid, secret })
}

/// Parses a BackendKeyData body of any protocol 3.x: the process id and a secret of
/// 4 to 256 bytes (protocol 3.2; 3.0's is 4).
pub fn parse_backend_key_data_any(body: &[u8]) -> Result<(i32, &[u8]), ParseError> {
    let mut r = Reader::new(body);
    let pid = r.i32("process id")?;
    let secret = r.rest();
    if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&secret.len()) {
        return Err(ParseError::Invalid {
            what: "secret key length",
            value: secret.len() as i64,
        });
    }
    Ok((pid, secret))
}

/// Parses a ReadyForQuery body into its transaction status byte.
pub fn parse_ready_for_query(body: &[u8]) -> Result<u8, ParseError> {
    let mut r = Reader::new(body);
    let status = r.u8("transaction status")?;
    r.finish()?;
    Ok(status)
}

/// Parses a DataRow body into its columns; `None` is SQL NULL.
pub fn parse_data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, ParseError> {
    let mut r = Reader::new(body);
    let count = r.i16("column count")?;
    let count = usize::try_from(count).map_err(|_| ParseError::Invalid {
        what: "column count",
        value: count.into(),
    })?;
    // Each column takes at least its 4-byte length, so the body bounds how
    // many there can be; do not trust `count` for the allocation.
    let mut columns = Vec::with_capacity(count.min(r.remaining() / 4));
    for _ in 0..count {
        let len = r.i32("column length")?;
        let column = match len {
            -1 => None,
            len => {
                let n = usize::try_from(len).map_err(|_| ParseError::Invalid {
                    what: "column length",
                    value: len.into(),
                })?;
                Some(r.bytes(n, "column value")?)
            }
        };
        columns.push(column);
    }
    r.finish()?;
    Ok(columns)
}
