//! What the console writes back: a result set of text columns, an ERROR, a command tag.

use bytes::BytesMut;
use wire::messages::{self, Severity};

/// A result set: column names and rows of text (`None` is NULL).
#[derive(Debug, Default)]
pub struct Table {
    pub columns: &'static [&'static str],
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    pub fn new(columns: &'static [&'static str]) -> Self {
        Table {
            columns,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, values: Vec<Option<String>>) {
        debug_assert_eq!(values.len(), self.columns.len());
        self.rows.push(values);
    }

    /// RowDescription, the DataRows and CommandComplete `SHOW`.
    pub fn write(&self, out: &mut BytesMut) {
        messages::row_description(out, self.columns);
        for row in &self.rows {
            let values: Vec<Option<&str>> = row.iter().map(|v| v.as_deref()).collect();
            messages::data_row(out, &values);
        }
        messages::command_complete(out, "SHOW");
    }
}

/// A statement that failed; the session goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub sqlstate: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(sqlstate: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            sqlstate,
            message: message.into(),
        }
    }

    pub fn write(&self, out: &mut BytesMut) {
        messages::error_response(out, Severity::Error, self.sqlstate, &self.message);
    }
}

/// A value as text.
pub fn text(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}
