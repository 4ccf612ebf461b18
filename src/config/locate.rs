//! Finding the line of a key in the config text, for error messages.

use toml_edit::{ImDocument, Item};

use super::ConfigError;

/// A path segment: a table key or an array index.
#[derive(Debug, Clone)]
pub enum Seg {
    Key(&'static str),
    Index(usize),
}

pub fn path_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
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

/// A TOML syntax or type error, located by the parser itself.
pub fn parse_error(text: &str, e: &toml::de::Error) -> ConfigError {
    ConfigError {
        key: "(syntax)".into(),
        line: e.span().map(|s| line_at(text, s.start)),
        message: e.message().trim().to_owned(),
    }
}
