//! What a client's SQL does to its session, as far as transaction pooling cares: the
//! statements that leave state behind on the server connection (a setting, a role,
//! a prepared statement, a LISTEN, a temporary table, a session advisory lock, a cursor
//! WITH HOLD, a loaded library, anything a DO block may do), and the names of Sluice's
//! own prepared statements, which SQL must not reach.
//!
//! A small lexer ([`lexer`]) skips literals, quoted identifiers, dollar quotes and
//! comments; the rest is a look at each statement's first words and at a few function
//! calls. It is not a SQL parser: it errs on the side of "this holds state" (which
//! only costs pooling for that client), never on the side of missing it for the
//! statement forms listed in docs/transaction-mode.md.

pub mod lexer;

use lexer::Token;

/// Why a client keeps its server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinReason {
    /// `SET` (not `SET LOCAL`) of a setting the server does not report.
    Set,
    /// `SET ROLE`, `SET SESSION AUTHORIZATION`, `SET SESSION CHARACTERISTICS`.
    Role,
    /// `set_config(name, value, false)`, or with a third argument that is not `true`.
    SetConfig,
    /// SQL `PREPARE`.
    Prepare,
    /// `LISTEN`.
    Listen,
    /// `CREATE TEMP…`, `SELECT … INTO TEMP`, or a name in `pg_temp`.
    TempTable,
    /// `pg_advisory_lock` and friends (the session-level ones, not `_xact_`).
    AdvisoryLock,
    /// `DECLARE … WITH HOLD`.
    HoldCursor,
    /// `LOAD`.
    Load,
    /// `DO`: a block that may do any of the above.
    Do,
    /// A text longer than [`MAX_SCANNED`], not looked into: it may hold any of the
    /// above (lexing it would cost the shared runtime thread too much).
    Unscanned,
}

/// The longest SQL text looked into (1 MiB); a longer one pins as
/// [`PinReason::Unscanned`].
pub const MAX_SCANNED: usize = 1 << 20;

impl PinReason {
    /// Every reason, in the order of [`PinReason::index`].
    pub const ALL: [PinReason; 11] = [
        PinReason::Set,
        PinReason::Role,
        PinReason::SetConfig,
        PinReason::Prepare,
        PinReason::Listen,
        PinReason::TempTable,
        PinReason::AdvisoryLock,
        PinReason::HoldCursor,
        PinReason::Load,
        PinReason::Do,
        PinReason::Unscanned,
    ];

    /// The `reason` label of `sluice_pins_total` and the word in logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            PinReason::Set => "set",
            PinReason::Role => "set_role",
            PinReason::SetConfig => "set_config",
            PinReason::Prepare => "prepare",
            PinReason::Listen => "listen",
            PinReason::TempTable => "temp_table",
            PinReason::AdvisoryLock => "advisory_lock",
            PinReason::HoldCursor => "hold_cursor",
            PinReason::Load => "load",
            PinReason::Do => "do",
            PinReason::Unscanned => "unscanned",
        }
    }

    /// The statement, as an error message names it.
    pub fn statement(self) -> &'static str {
        match self {
            PinReason::Set => "SET",
            PinReason::Role => "SET ROLE / SET SESSION AUTHORIZATION",
            PinReason::SetConfig => "set_config(..., false)",
            PinReason::Prepare => "PREPARE",
            PinReason::Listen => "LISTEN",
            PinReason::TempTable => "a temporary table",
            PinReason::AdvisoryLock => "a session advisory lock",
            PinReason::HoldCursor => "DECLARE ... WITH HOLD",
            PinReason::Load => "LOAD",
            PinReason::Do => "DO",
            PinReason::Unscanned => "a statement text over 1 MiB",
        }
    }

    /// Position in [`PinReason::ALL`].
    pub fn index(self) -> usize {
        PinReason::ALL
            .iter()
            .position(|&r| r == self)
            .expect("every reason is in ALL")
    }
}

/// What one statement of a client's SQL means for its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// It leaves state on the server connection.
    Pins(PinReason),
    /// `SET name` (session level): state unless the server reports `name`, in which
    /// case Sluice carries it across connections itself.
    Sets(String),
    /// It names one of Sluice's own prepared statements (`sluice_…`): the statement
    /// keyword and the name.
    SluiceName(&'static str, String),
    /// It fails while other sessions use database `name` (`DROP DATABASE`, `ALTER
    /// DATABASE … RENAME`, `CREATE DATABASE … TEMPLATE name`): Sluice's own idle
    /// connections to it must go first.
    NeedsDatabaseFree(String),
}

/// The prefix of the statement names Sluice gives clients' prepared statements.
pub const SLUICE_PREFIX: &str = "sluice_";

/// Session-level advisory lock functions.
const ADVISORY_LOCKS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// Words that start a statement [`statement_effects`] looks into.
const FIRST_WORDS: &[&str] = &[
    "set",
    "prepare",
    "execute",
    "deallocate",
    "drop",
    "alter",
    "create",
    "listen",
    "load",
    "do",
    "declare",
];

/// The effects of every statement in `sql` (a simple Query may hold several).
///
/// Every Query and Parse of a transaction-mode client passes here, so the usual text
/// (no statement that can have an effect) costs one pass of the lexer and allocates
/// nothing: [`may_have_effects`] first, and only when it says so the statements are
/// looked into ([`effects_in_full`], which gives the same result on any text).
pub fn effects(sql: &str) -> Vec<Effect> {
    if !may_have_effects(sql) {
        return Vec::new();
    }
    effects_in_full(sql)
}

/// Whether a statement of `sql` may have an effect: one that starts with a word of
/// [`FIRST_WORDS`] (after leading parentheses), the word `into`, a name starting with
/// `pg_temp`, or a call of a function [`calls`] looks for. A superset of what
/// [`effects_in_full`] reports, found without allocating.
fn may_have_effects(sql: &str) -> bool {
    let mut at_start = true;
    let mut previous: Option<Token> = None;
    for token in lexer::tokens(sql) {
        match token {
            Token::Punct(b';') => {
                at_start = true;
                previous = None;
                continue;
            }
            Token::Punct(b'(') => {
                if previous.as_ref().is_some_and(holds_state_when_called) {
                    return true;
                }
                // Leading parentheses: the statement's first word is still to come.
            }
            Token::Word(w) => {
                if at_start && FIRST_WORDS.iter().any(|f| w.eq_ignore_ascii_case(f)) {
                    return true;
                }
                if w.eq_ignore_ascii_case("into") || names_pg_temp(w) {
                    return true;
                }
                at_start = false;
            }
            Token::Quoted(q) if names_pg_temp(q) => return true,
            _ => at_start = false,
        }
        previous = Some(token);
    }
    false
}

/// A word or quoted identifier starting with `pg_temp` (ASCII case-insensitive).
fn names_pg_temp(w: &str) -> bool {
    w.as_bytes()
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"pg_temp"))
}

/// Whether `token` names the function `name` (lowercase), as [`name_of`] would.
fn names(token: &Token, name: &str) -> bool {
    match token {
        Token::Word(w) => w.eq_ignore_ascii_case(name),
        Token::Quoted(q) => *q == name,
        _ => false,
    }
}

/// A function [`calls`] reports when called: a session advisory lock or `set_config`.
fn holds_state_when_called(token: &Token) -> bool {
    ADVISORY_LOCKS.iter().any(|f| names(token, f)) || names(token, "set_config")
}

/// The effects of every statement in `sql`, each looked into: what [`effects`] gives,
/// without its quick pass (the `session_state` fuzz target compares the two).
pub fn effects_in_full(sql: &str) -> Vec<Effect> {
    let mut found = Vec::new();
    let mut statement: Vec<Token> = Vec::new();
    for token in lexer::tokens(sql) {
        if token == Token::Punct(b';') {
            statement_effects(&statement, &mut found);
            statement.clear();
        } else {
            statement.push(token);
        }
    }
    statement_effects(&statement, &mut found);
    found
}

/// The name a token gives an object: a word lowercased, a quoted identifier as is.
fn name_of(token: Option<&Token>) -> Option<String> {
    match token? {
        Token::Word(w) => Some(w.to_ascii_lowercase()),
        Token::Quoted(q) => Some((*q).to_owned()),
        _ => None,
    }
}

fn statement_effects(t: &[Token], found: &mut Vec<Effect>) {
    let word = |i: usize, w: &str| t.get(i).is_some_and(|tok| tok.is(w));
    // Leading parentheses: `(SELECT …)`.
    let first = t
        .iter()
        .position(|tok| *tok != Token::Punct(b'('))
        .unwrap_or(t.len());
    let at = |i: usize, w: &str| word(first + i, w);
    if at(0, "set") {
        set_effects(&t[first + 1..], found);
    } else if at(0, "prepare") && !at(1, "transaction") {
        match name_of(t.get(first + 1)) {
            Some(name) if name.starts_with(SLUICE_PREFIX) => {
                found.push(Effect::SluiceName("PREPARE", name))
            }
            _ => found.push(Effect::Pins(PinReason::Prepare)),
        }
    } else if at(0, "execute") {
        if let Some(name) = name_of(t.get(first + 1)).filter(|n| n.starts_with(SLUICE_PREFIX)) {
            found.push(Effect::SluiceName("EXECUTE", name));
        }
    } else if at(0, "deallocate") {
        let n = if at(1, "prepare") { 2 } else { 1 };
        if let Some(name) = name_of(t.get(first + n)).filter(|n| n.starts_with(SLUICE_PREFIX)) {
            found.push(Effect::SluiceName("DEALLOCATE", name));
        }
    } else if at(0, "drop") && at(1, "database") {
        let n = if at(2, "if") && at(3, "exists") { 4 } else { 2 };
        if let Some(name) = name_of(t.get(first + n)) {
            found.push(Effect::NeedsDatabaseFree(name));
        }
    } else if at(0, "alter") && at(1, "database") && at(3, "rename") {
        if let Some(name) = name_of(t.get(first + 2)) {
            found.push(Effect::NeedsDatabaseFree(name));
        }
    } else if at(0, "create") && at(1, "database") {
        let template = t.iter().position(|tok| tok.is("template"));
        let name = template.and_then(|i| match t.get(i + 1) {
            Some(Token::Punct(b'=')) => name_of(t.get(i + 2)),
            other => name_of(other),
        });
        if let Some(name) = name {
            found.push(Effect::NeedsDatabaseFree(name));
        }
    } else if at(0, "listen") {
        found.push(Effect::Pins(PinReason::Listen));
    } else if at(0, "load") {
        found.push(Effect::Pins(PinReason::Load));
    } else if at(0, "do") {
        found.push(Effect::Pins(PinReason::Do));
    } else if at(0, "declare") {
        let hold = t.windows(2).any(|w| w[0].is("with") && w[1].is("hold"));
        if hold {
            found.push(Effect::Pins(PinReason::HoldCursor));
        }
    }
    if at(0, "create") {
        let temp = t[first + 1..]
            .iter()
            .take_while(|tok| !tok.is("as") && **tok != Token::Punct(b'('))
            .any(|tok| tok.is("temp") || tok.is("temporary"));
        if temp {
            found.push(Effect::Pins(PinReason::TempTable));
        }
    }
    // `SELECT … INTO TEMP t`, and anything created in or named through `pg_temp`.
    let into_temp = t
        .windows(2)
        .any(|w| w[0].is("into") && (w[1].is("temp") || w[1].is("temporary")));
    let pg_temp = t.iter().any(|tok| match tok {
        Token::Word(w) | Token::Quoted(w) => names_pg_temp(w),
        _ => false,
    });
    if into_temp || (pg_temp && !found.contains(&Effect::Pins(PinReason::TempTable))) {
        found.push(Effect::Pins(PinReason::TempTable));
    }
    calls(t, found);
}

/// `SET …` after the keyword.
fn set_effects(t: &[Token], found: &mut Vec<Effect>) {
    let first = |w: &str| t.first().is_some_and(|tok| tok.is(w));
    if first("local") || first("transaction") || first("constraints") {
        return;
    }
    let t = if first("session") { &t[1..] } else { t };
    let first = |w: &str| t.first().is_some_and(|tok| tok.is(w));
    if first("role") || first("authorization") || first("characteristics") {
        found.push(Effect::Pins(PinReason::Role));
        return;
    }
    // `SET name TO …` / `SET name = …`; a dotted custom name `a.b` is one setting.
    let mut name = match name_of(t.first()) {
        Some(name) => name,
        None => return,
    };
    let mut rest = &t[1..];
    while let [Token::Punct(b'.'), part, tail @ ..] = rest {
        match name_of(Some(part)) {
            Some(part) => name = format!("{name}.{part}"),
            None => break,
        }
        rest = tail;
    }
    // `SET TIME ZONE …` is `SET timezone`.
    if name == "time" && rest.first().is_some_and(|tok| tok.is("zone")) {
        name = "timezone".into();
    }
    found.push(Effect::Sets(name));
}

/// Function calls that hold state: session advisory locks, `set_config(…, false)`.
fn calls(t: &[Token], found: &mut Vec<Effect>) {
    for (i, tok) in t.iter().enumerate() {
        if t.get(i + 1) != Some(&Token::Punct(b'(')) {
            continue;
        }
        if ADVISORY_LOCKS.iter().any(|f| names(tok, f)) {
            push_once(found, Effect::Pins(PinReason::AdvisoryLock));
        } else if names(tok, "set_config") && !third_argument_is_true(&t[i + 2..]) {
            push_once(found, Effect::Pins(PinReason::SetConfig));
        }
    }
}

fn push_once(found: &mut Vec<Effect>, effect: Effect) {
    if !found.contains(&effect) {
        found.push(effect);
    }
}

/// After `set_config(`: whether the third argument is the constant `true` (a setting
/// local to the transaction, which leaves nothing behind).
fn third_argument_is_true(args: &[Token]) -> bool {
    let mut depth = 0usize;
    let mut commas = 0;
    let mut third: Vec<&Token> = Vec::new();
    for tok in args {
        match tok {
            Token::Punct(b'(') => depth += 1,
            Token::Punct(b')') if depth == 0 => break,
            Token::Punct(b')') => depth -= 1,
            Token::Punct(b',') if depth == 0 => {
                commas += 1;
                continue;
            }
            _ => {}
        }
        if commas == 2 {
            third.push(tok);
        }
    }
    match third.as_slice() {
        [tok] if tok.is("true") => true,
        [Token::Literal(Some(v))] => ["t", "true", "on", "yes", "1"]
            .iter()
            .any(|s| v.trim().eq_ignore_ascii_case(s)),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
