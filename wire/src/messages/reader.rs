//! A bounds-checked cursor over a message body.
//!
//! Every read returns a [`ParseError`] instead of panicking when the body is
//! too short, so parsers can be written as straight-line code.

/// Reads fields off the front of a body.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(body: &'a [u8]) -> Self {
        Self { rest: body }
    }

    /// Takes exactly `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ParseError> {
        if n > self.rest.len() {
            return Err(ParseError::Truncated(what));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    /// Takes a fixed-size array.
    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], ParseError> {
        let mut out = [0; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, ParseError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn i16(&mut self, what: &'static str) -> Result<i16, ParseError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, ParseError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    /// Takes a NUL-terminated string as raw bytes, without the NUL.
    pub(crate) fn cbytes(&mut self, what: &'static str) -> Result<&'a [u8], ParseError> {
        let nul = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(ParseError::MissingNul(what))?;
        let s = self.bytes(nul, what)?;
        self.bytes(1, what)?;
        Ok(s)
    }

    /// Takes a NUL-terminated UTF-8 string.
    pub(crate) fn cstr(&mut self, what: &'static str) -> Result<&'a str, ParseError> {
        std::str::from_utf8(self.cbytes(what)?).map_err(|_| ParseError::NonUtf8(what))
    }

    /// Takes everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Fails unless the whole body has been read.
    pub(crate) fn finish(&self) -> Result<(), ParseError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(ParseError::TrailingBytes(n)),
        }
    }
}

/// A message body that does not have the layout its tag promises.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum ParseError {
    /// The body ended while reading a field.
    #[error("message truncated while reading {0}")]
    Truncated(&'static str),
    /// A string field has no NUL terminator.
    #[error("string field {0} is not NUL-terminated")]
    MissingNul(&'static str),
    /// A string field is not UTF-8.
    #[error("string field {0} is not valid UTF-8")]
    NonUtf8(&'static str),
    /// A numeric field has an impossible value.
    #[error("invalid {what}: {value}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// Its value.
        value: i64,
    },
    /// Bytes left over after the last field.
    #[error("{0} unexpected bytes after the end of the message")]
    TrailingBytes(usize),
}
