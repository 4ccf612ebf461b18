//! The console's commands, parsed from a simple Query's text; pure, no I/O.
//!
//! Words are case-insensitive, as in PgBouncer's console; a statement may end with
//! `;`, and a Query may hold several.

/// One console statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Show),
    /// New checkouts of the tenant (every tenant: `None`) wait; returns when its server
    /// connections are all idle.
    Pause(Option<String>),
    /// Waiting checkouts go on.
    Resume(Option<String>),
    /// Server connections close (idle ones now, the rest when released).
    Reconnect(Option<String>),
    /// The tenant's clients are disconnected and its server connections closed.
    Kill(String),
}

/// What `SHOW` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Pools,
    Stats,
    Clients,
    Servers,
    Tenants,
    Help,
    Version,
}

/// Why a statement is not a command, with the SQLSTATE the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// 42601: not a command at all, or a command with the wrong words after it.
    Syntax(String),
    /// 42704: `SHOW` of something the console does not have.
    UnknownShow(String),
}

impl ParseError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ParseError::Syntax(_) => "42601",
            ParseError::UnknownShow(_) => "42704",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ParseError::Syntax(text) => {
                format!("syntax error at or near \"{text}\" (SHOW HELP lists the commands)")
            }
            ParseError::UnknownShow(what) => {
                format!("unrecognized SHOW target \"{what}\" (SHOW HELP lists them)")
            }
        }
    }
}

impl Command {
    /// Whether it changes anything (so a viewer key may not run it, and it is audited).
    pub fn writes(&self) -> bool {
        !matches!(self, Command::Show(_))
    }

    /// Its audit action (`console.pause`, …).
    pub fn action(&self) -> &'static str {
        match self {
            Command::Show(_) => "console.show",
            Command::Pause(_) => "console.pause",
            Command::Resume(_) => "console.resume",
            Command::Reconnect(_) => "console.reconnect",
            Command::Kill(_) => "console.kill",
        }
    }

    /// The tenant it names, if any.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Command::Pause(t) | Command::Resume(t) | Command::Reconnect(t) => t.as_deref(),
            Command::Kill(t) => Some(t),
            Command::Show(_) => None,
        }
    }

    /// The CommandComplete tag of its answer.
    pub fn tag(&self) -> &'static str {
        match self {
            Command::Show(_) => "SHOW",
            Command::Pause(_) => "PAUSE",
            Command::Resume(_) => "RESUME",
            Command::Reconnect(_) => "RECONNECT",
            Command::Kill(_) => "KILL",
        }
    }
}

/// The statements of a Query's text: split at `;`, blank ones left out.
pub fn statements(text: &str) -> Vec<&str> {
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Parses one statement (no `;`).
pub fn parse(statement: &str) -> Result<Command, ParseError> {
    let words: Vec<&str> = statement.split_whitespace().collect();
    let verb = words.first().copied().unwrap_or_default();
    let rest = &words[1.min(words.len())..];
    let tenant = || -> Result<Option<String>, ParseError> {
        match rest {
            [] => Ok(None),
            [name] => Ok(Some(unquote(name))),
            [_, extra, ..] => Err(ParseError::Syntax((*extra).to_owned())),
        }
    };
    match verb.to_ascii_uppercase().as_str() {
        "SHOW" => match rest {
            [what] => show(what).map(Command::Show),
            [] => Err(ParseError::Syntax("SHOW".to_owned())),
            [_, extra, ..] => Err(ParseError::Syntax((*extra).to_owned())),
        },
        "PAUSE" => tenant().map(Command::Pause),
        "RESUME" => tenant().map(Command::Resume),
        "RECONNECT" => tenant().map(Command::Reconnect),
        "KILL" => match tenant()? {
            Some(tenant) => Ok(Command::Kill(tenant)),
            None => Err(ParseError::Syntax("KILL".to_owned())),
        },
        _ => Err(ParseError::Syntax(verb.to_owned())),
    }
}

fn show(what: &str) -> Result<Show, ParseError> {
    Ok(match what.to_ascii_uppercase().as_str() {
        "POOLS" => Show::Pools,
        "STATS" => Show::Stats,
        "CLIENTS" => Show::Clients,
        "SERVERS" => Show::Servers,
        "TENANTS" | "DATABASES" => Show::Tenants,
        "HELP" => Show::Help,
        "VERSION" => Show::Version,
        _ => return Err(ParseError::UnknownShow(what.to_owned())),
    })
}

/// A tenant name as written, `"acme"` or `acme`.
fn unquote(name: &str) -> String {
    name.strip_prefix('"')
        .and_then(|n| n.strip_suffix('"'))
        .unwrap_or(name)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_in_any_case_with_or_without_a_tenant() {
        assert_eq!(parse("show pools"), Ok(Command::Show(Show::Pools)));
        assert_eq!(parse("SHOW  Clients"), Ok(Command::Show(Show::Clients)));
        assert_eq!(parse("pause"), Ok(Command::Pause(None)));
        assert_eq!(parse("PAUSE acme"), Ok(Command::Pause(Some("acme".into()))));
        assert_eq!(
            parse("resume \"acme\""),
            Ok(Command::Resume(Some("acme".into())))
        );
        assert_eq!(parse("RECONNECT"), Ok(Command::Reconnect(None)));
        assert_eq!(parse("kill acme"), Ok(Command::Kill("acme".into())));
    }

    #[test]
    fn mistakes_get_their_sqlstates() {
        assert_eq!(parse("SHOW FOO").unwrap_err().sqlstate(), "42704");
        assert_eq!(parse("SELECT 1").unwrap_err().sqlstate(), "42601");
        assert_eq!(parse("SHOW").unwrap_err().sqlstate(), "42601");
        assert_eq!(parse("PAUSE a b").unwrap_err().sqlstate(), "42601");
        assert_eq!(parse("KILL").unwrap_err().sqlstate(), "42601");
    }

    #[test]
    fn a_query_splits_into_its_statements() {
        assert_eq!(statements("SHOW POOLS;"), ["SHOW POOLS"]);
        assert_eq!(
            statements(" ; SHOW STATS ; PAUSE acme;;"),
            ["SHOW STATS", "PAUSE acme"]
        );
        assert!(statements("  ").is_empty());
    }

    #[test]
    fn only_show_reads() {
        assert!(!parse("SHOW TENANTS").unwrap().writes());
        for write in ["PAUSE", "RESUME x", "RECONNECT", "KILL x"] {
            assert!(parse(write).unwrap().writes(), "{write}");
        }
    }
}
