//! A request as the endpoints see it ([`Call`]) and what they answer ([`Answer`]).

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// A request as the handlers see it: method, decoded path segments after `/api2/json/`,
/// and the merged parameters.
pub(crate) struct Call {
    pub method: String,
    pub segments: Vec<String>,
    pub params: BTreeMap<String, String>,
}

/// An answer: data, or an error with status, message and per-parameter errors.
pub(crate) enum Answer {
    Data(Value),
    Error {
        status: u16,
        message: String,
        errors: Option<Value>,
    },
}

impl Answer {
    pub fn error(status: u16, message: impl Into<String>) -> Answer {
        Answer::Error {
            status,
            message: message.into(),
            errors: None,
        }
    }

    /// A 400 `Parameter verification failed.` with one parameter's error.
    pub fn param(name: &str, message: impl Into<String>) -> Answer {
        Answer::Error {
            status: 400,
            message: "Parameter verification failed.".to_owned(),
            errors: Some(json!({ name: format!("{}\n", message.into()) })),
        }
    }
}
