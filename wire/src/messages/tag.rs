//! Message type bytes used by Sluice.
//!
//! Some bytes mean different things in each direction (`b'D'` is DataRow
//! from a server but Describe from a client), hence the direction in the
//! comment of each.

/// Authentication request (server → client).
pub const AUTHENTICATION: u8 = b'R';
/// BackendKeyData (server → client).
pub const BACKEND_KEY_DATA: u8 = b'K';
/// Bind (client → server).
pub const BIND: u8 = b'B';
/// CommandComplete (server → client).
pub const COMMAND_COMPLETE: u8 = b'C';
/// Close (client): a statement or portal.
pub const CLOSE: u8 = b'C';
/// ParseComplete (server).
pub const PARSE_COMPLETE: u8 = b'1';
/// BindComplete (server).
pub const BIND_COMPLETE: u8 = b'2';
/// CloseComplete (server).
pub const CLOSE_COMPLETE: u8 = b'3';
/// FunctionCall (client).
pub const FUNCTION_CALL: u8 = b'F';
/// DataRow (server → client).
pub const DATA_ROW: u8 = b'D';
/// Describe (client → server).
pub const DESCRIBE: u8 = b'D';
/// EmptyQueryResponse (server → client).
pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
/// ErrorResponse (server → client).
pub const ERROR_RESPONSE: u8 = b'E';
/// Execute (client → server).
pub const EXECUTE: u8 = b'E';
/// NegotiateProtocolVersion (server → client).
pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
/// NoticeResponse (server → client).
pub const NOTICE_RESPONSE: u8 = b'N';
/// ParameterStatus (server → client).
pub const PARAMETER_STATUS: u8 = b'S';
/// Parse (client → server).
pub const PARSE: u8 = b'P';
/// PasswordMessage, SASLInitialResponse and SASLResponse (client → server).
pub const PASSWORD_MESSAGE: u8 = b'p';
/// Query (client → server).
pub const QUERY: u8 = b'Q';
/// ReadyForQuery (server → client).
pub const READY_FOR_QUERY: u8 = b'Z';
/// RowDescription (server → client).
pub const ROW_DESCRIPTION: u8 = b'T';
/// Sync (client → server).
pub const SYNC: u8 = b'S';
/// Terminate (client → server).
pub const TERMINATE: u8 = b'X';
/// CopyInResponse (server → client).
pub const COPY_IN_RESPONSE: u8 = b'G';
/// CopyOutResponse (server → client).
pub const COPY_OUT_RESPONSE: u8 = b'H';
/// CopyBothResponse (server → client).
pub const COPY_BOTH_RESPONSE: u8 = b'W';
/// CopyData (both directions).
pub const COPY_DATA: u8 = b'd';
/// CopyDone (both directions).
pub const COPY_DONE: u8 = b'c';
/// CopyFail (client → server).
pub const COPY_FAIL: u8 = b'f';
/// Flush (client → server).
pub const FLUSH: u8 = b'H';

/// ReadyForQuery status: idle, not in a transaction.
pub const STATUS_IDLE: u8 = b'I';
/// ReadyForQuery status: in a transaction block.
pub const STATUS_IN_TRANSACTION: u8 = b'T';
/// ReadyForQuery status: in a failed transaction block.
pub const STATUS_FAILED: u8 = b'E';
