//! Messages Sluice builds and the few it must read.
//!
//! Builders append one complete message to a `&mut BytesMut`, so a caller can
//! batch several into one write. Parsers take a frame body (as split by
//! [`crate::frame`]) and return views borrowing it; they are bounds-checked
//! and never panic, whatever the bytes.

mod from_client;
mod from_server;
mod reader;
pub mod tag;
mod to_client;
mod to_server;

pub use from_client::{
    parse_bind, parse_parse, parse_sasl_initial_response, parse_target, BindView, ParseView,
};
pub use from_server::{
    parse_authentication, parse_backend_key_data, parse_backend_key_data_any, parse_data_row,
    parse_error_fields, parse_parameter_status, parse_ready_for_query, Authentication, ErrorFields,
};
pub use reader::ParseError;
pub use to_client::{
    auth_cleartext, auth_md5, auth_ok, auth_sasl, auth_sasl_continue, auth_sasl_final,
    backend_key_data, backend_key_data_long, client_key_data, close_complete, command_complete,
    data_row, empty_query_response, error_response, negotiate_protocol_version, notice_response,
    parameter_status, parse_complete, ready_for_query, row_description, Severity, TEXT_OID,
};
pub use to_server::{
    bind_raw, bind_text, close, describe, describe_portal, execute, parse, parse_raw,
    password_message, query, sasl_initial_response, sync, terminate,
};

#[cfg(test)]
mod tests;
