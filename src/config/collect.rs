//! Reading a config file past its type errors and unknown keys, so that one run names
//! every problem: serde stops at the first, so each one found is reported, its key is
//! taken out of a working copy of the file, and the rest is read again.

use toml_edit::{DocumentMut, Item};

use super::error::ConfigError;
use super::locate::{line_of, parse_error, path_at, path_string, Seg};
use super::schema::Config;

/// More problems than this in one file are not looked for.
const MAX_PROBLEMS: usize = 100;

/// What [`deserialize`] found.
pub struct Read {
    /// The config read from what remained once the keys in error were taken out (their
    /// defaults in their place); None when the rest could not be read (a syntax error,
    /// a required key missing).
    pub config: Option<Config>,
    /// The syntax, type and unknown-key problems, in the order found, each with the
    /// line in the original text.
    pub errors: Vec<ConfigError>,
    /// The key paths taken out (`proxy.listen`), so later checks do not report them
    /// again with their defaults.
    pub removed: Vec<String>,
}

pub fn deserialize(text: &str) -> Read {
    let mut read = Read {
        config: None,
        errors: Vec::new(),
        removed: Vec::new(),
    };
    let mut work = text.to_owned();
    while read.errors.len() < MAX_PROBLEMS {
        let e = match toml::from_str::<Config>(&work) {
            Ok(config) => {
                read.config = Some(config);
                return read;
            }
            Err(e) => e,
        };
        let path = e.span().and_then(|span| path_at(&work, span.start));
        if read.errors.is_empty() {
            // The text as written: the parser's own span gives the line.
            read.errors.push(parse_error(text, &e));
        } else {
            read.errors.push(ConfigError {
                key: path.as_deref().map_or("(syntax)".into(), path_string),
                line: path.as_deref().and_then(|path| line_of(text, path)),
                message: e.message().trim().to_owned(),
            });
        }
        // A missing key cannot be taken out; a syntax error leaves nothing to read.
        if e.message().starts_with("missing field") {
            return read;
        }
        let Some(path) = path else { return read };
        let key = path_string(&path);
        if read.removed.contains(&key) {
            return read;
        }
        let Ok(mut doc) = work.parse::<DocumentMut>() else {
            return read;
        };
        if !remove(doc.as_item_mut(), &path) {
            return read;
        }
        read.removed.push(key);
        work = doc.to_string();
    }
    read
}

/// Takes the key at `path` out of its table; false when it is not a table's key (an
/// element of a list, whose removal would renumber the rest).
fn remove(root: &mut Item, path: &[Seg]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut item = root;
    for seg in parents {
        let next = match seg {
            Seg::Key(k) => item.get_mut(*k),
            Seg::Owned(k) => item.get_mut(k.as_str()),
            Seg::Index(i) => item.get_mut(*i),
        };
        match next {
            Some(next) => item = next,
            None => return false,
        }
    }
    let key = match last {
        Seg::Key(k) => *k,
        Seg::Owned(k) => k.as_str(),
        Seg::Index(_) => return false,
    };
    item.as_table_like_mut()
        .and_then(|table| table.remove(key))
        .is_some()
}
