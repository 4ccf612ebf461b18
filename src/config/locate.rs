//! Finding the line of a key in the config text, for error messages.

use toml_edit::{ImDocument, Item, TableLike};

use super::error::ConfigError;

/// A path segment: a table key or an array index.
#[derive(Debug, Clone)]
pub enum Seg {
    Key(&'static str),
    /// A key found in the file rather than named in code.
    Owned(String),
    Index(usize),
}

pub fn path_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => push_key(&mut s, k),
            Seg::Owned(k) => push_key(&mut s, k),
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn push_key(s: &mut String, key: &str) {
    if !s.is_empty() {
        s.push('.');
    }
    s.push_str(key);
}

/// The 1-based line where the value at `path` starts, or where the nearest enclosing
/// table starts when the key itself is absent.
pub fn line_of(text: &str, path: &[Seg]) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    let mut item: &Item = doc.as_item();
    let mut best = None;
    for seg in path {
        let next = match seg {
            Seg::Key(k) => item.get(*k),
            Seg::Owned(k) => item.get(k.as_str()),
            Seg::Index(i) => item.get(*i),
        };
        match next {
            Some(next) => {
                item = next;
                if let Some(span) = item.span() {
                    best = Some(span.start);
                }
            }
            None => break,
        }
    }
    best.map(|offset| line_at(text, offset))
}

fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// A TOML syntax or type error, located by the parser itself. The key is the one
/// whose value holds the error (a string where a list belongs, say) or the key the
/// error points at (an unknown key), else `(syntax)`.
pub fn parse_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let key = e
        .span()
        .and_then(|span| key_at(text, span.start))
        .unwrap_or_else(|| "(syntax)".into());
    ConfigError {
        key,
        line: e.span().map(|s| line_at(text, s.start)),
        message: match e.message().trim() {
            // toml leaves it empty for some syntax errors (a key with no value at the
            // end of the file): say at least that much.
            "" => "invalid TOML here (a key without a value, or an unclosed table?)".to_owned(),
            message => message.to_owned(),
        },
    }
}

/// The key path of the value that contains `offset`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    path_at(text, offset).map(|path| path_string(&path))
}

/// The path of the innermost key or value that contains `offset` (None for the whole
/// file).
pub fn path_at(text: &str, offset: usize) -> Option<Vec<Seg>> {
    let doc = ImDocument::parse(text).ok()?;
    find(doc.as_item(), offset).filter(|path| !path.is_empty())
}

/// Searches every value (config files are small) for the one spanning `offset`.
fn find(item: &Item, offset: usize) -> Option<Vec<Seg>> {
    if let Some(table) = item.as_table_like() {
        // No key of the table holds it, but the table does: a missing key's error
        // points at its table.
        return in_table(table, offset).or_else(|| spans(item.span(), offset).then(Vec::new));
    }
    if let Some(array) = item.as_array_of_tables() {
        return array.iter().enumerate().find_map(|(i, table)| {
            let mut rest =
                in_table(table, offset).or_else(|| spans(table.span(), offset).then(Vec::new))?;
            rest.insert(0, Seg::Index(i));
            Some(rest)
        });
    }
    spans(item.span(), offset).then(Vec::new)
}

/// The key of `table` (itself, as an unknown key's error points at it, or its value)
/// that holds `offset`.
fn in_table(table: &dyn TableLike, offset: usize) -> Option<Vec<Seg>> {
    table.iter().find_map(|(key, child)| {
        let on_key = table
            .get_key_value(key)
            .is_some_and(|(k, _)| spans(k.span(), offset));
        let mut rest = if on_key {
            Vec::new()
        } else {
            find(child, offset)?
        };
        rest.insert(0, Seg::Owned(key.to_owned()));
        Some(rest)
    })
}

fn spans(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|span| span.start <= offset && offset < span.end.max(span.start + 1))
}
