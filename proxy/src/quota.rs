//! Storage watermarks in the data plane: a tenant whose databases reached its disk
//! limit (`router::TenantDisk::full`, set by the control plane's disk sampler) is
//! read-only for new transactions. Every server connection its clients get runs with
//! `default_transaction_read_only = on` (set when a transaction-mode client attaches
//! one, and by the session-mode relay at the client's next request); a client's SQL
//! that would turn that off ([`escapes`]) is swapped for a statement that fails with
//! 53100; and the server's 25006 (`read_only_sql_transaction`) answer to a write
//! becomes a 53100 naming the quota ([`rewrite_error`]). So that the tenant can get
//! under again, a simple Query outside a transaction that only drops ([`frees_space`])
//! runs in a read-write transaction of its own ([`lifted`]).
//! Tenants under their limit cost
//! one relaxed atomic load per attach (transaction mode) or per client read (session
//! mode). See docs/limits.md, "Storage watermarks".

use bytes::{Buf, BytesMut};
use wire::frame::{DEFAULT_MAX_FRAME_LEN, HEADER_LEN};
use wire::messages::{self, tag};

use crate::session_state::lexer::{self, Token};

/// SQLSTATE `disk_full`: what a write of a tenant over its quota gets.
pub const DISK_FULL: &str = "53100";
/// SQLSTATE `read_only_sql_transaction`: what the server says to such a write.
const READ_ONLY: &str = "25006";
/// The setting Sluice holds on for a full tenant.
pub const SETTING: &str = "default_transaction_read_only";

/// The settings a client must not change while its tenant is full.
const GUARDED: [&str; 2] = [SETTING, "transaction_read_only"];

/// What makes a session read-only.
pub const FORCE: &str = "SET default_transaction_read_only = on";

/// What undoes [`FORCE`]: the client's own startup value if it gave one, else the
/// server's default.
pub fn restore(client_settings: &[(String, String)]) -> String {
    match client_settings
        .iter()
        .rev()
        .find(|(k, _)| k.eq_ignore_ascii_case(SETTING))
    {
        Some((_, v)) if matches!(v.to_ascii_lowercase().as_str(), "on" | "true" | "1" | "yes") => {
            FORCE.to_owned()
        }
        _ => format!("RESET {SETTING}"),
    }
}

/// Whether `sql` would let a transaction write although its session is read-only:
/// `SET`/`RESET` of the read-only settings, `RESET ALL`, `DISCARD ALL`, `READ WRITE`
/// in `BEGIN`, `START TRANSACTION`, `SET TRANSACTION` or `SET SESSION CHARACTERISTICS`,
/// `set_config` of those settings (or of a name it cannot read), and `DO` blocks (which
/// may do any of that). Not a parser: it errs on the side of refusing.
pub fn escapes(sql: &str) -> bool {
    let mut statement: Vec<Token> = Vec::new();
    for token in lexer::tokens(sql) {
        if token == Token::Punct(b';') {
            if statement_escapes(&statement) {
                return true;
            }
            statement.clear();
        } else {
            statement.push(token);
        }
    }
    statement_escapes(&statement)
}

fn guarded(token: Option<&Token>) -> bool {
    match token {
        Some(Token::Word(w) | Token::Quoted(w)) => {
            GUARDED.iter().any(|g| g.eq_ignore_ascii_case(w))
        }
        _ => false,
    }
}

fn statement_escapes(t: &[Token]) -> bool {
    let first = t
        .iter()
        .position(|tok| *tok != Token::Punct(b'('))
        .unwrap_or(t.len());
    let t = &t[first..];
    let at = |i: usize, w: &str| t.get(i).is_some_and(|tok| tok.is(w));
    let read_write = t.windows(2).any(|w| w[0].is("read") && w[1].is("write"));
    let set = at(0, "set") && {
        let n = if at(1, "session") || at(1, "local") {
            2
        } else {
            1
        };
        guarded(t.get(n)) || read_write
    };
    let escapes = set
        || ((at(0, "begin") || at(0, "start")) && read_write)
        || (at(0, "reset") && (at(1, "all") || guarded(t.get(1))))
        || (at(0, "discard") && at(1, "all"))
        || at(0, "do");
    if escapes {
        return true;
    }
    // set_config('default_transaction_read_only', ...), or of a name not written out.
    t.windows(3).enumerate().any(|(i, w)| {
        let call = matches!(&w[0], Token::Word(f) | Token::Quoted(f) if f.eq_ignore_ascii_case("set_config"))
            && w[1] == Token::Punct(b'(');
        call && match &w[2] {
            Token::Literal(Some(name)) => {
                GUARDED.iter().any(|g| g.eq_ignore_ascii_case(name.trim()))
                    // `set_config('a' || 'b', ...)`: not a plain name.
                    || t.get(i + 3).is_some_and(|next| *next != Token::Punct(b','))
            }
            _ => true,
        }
    })
}

/// Whether every statement of `sql` only frees space: `DROP`. Such a simple Query, sent
/// outside a transaction, runs read-write with [`lifted`]: a tenant over its quota can
/// still get under it. Not `DELETE` or `TRUNCATE`: they run the table's triggers, and
/// a `DELETE` any function in its expressions, which could write anything once the
/// transaction is read-write (and a `DELETE` frees no disk until a `VACUUM`).
pub fn frees_space(sql: &str) -> bool {
    let mut statement: Vec<Token> = Vec::new();
    let mut any = false;
    let frees = |t: &[Token]| t.is_empty() || t.first().is_some_and(|tok| tok.is("drop"));
    for token in lexer::tokens(sql) {
        if token == Token::Punct(b';') {
            if !frees(&statement) {
                return false;
            }
            any |= !statement.is_empty();
            statement.clear();
        } else {
            statement.push(token);
        }
    }
    any |= !statement.is_empty();
    // Belt and braces: nothing that could turn read-only off rides along.
    frees(&statement) && any && !escapes(sql)
}

/// What a freeing Query is sent as: its own transaction made read-write first. The
/// server answers the `SET` with a CommandComplete `SET` that Sluice drops.
pub(crate) fn lifted(sql: &[u8]) -> BytesMut {
    let mut text = b"SET transaction_read_only = off;".to_vec();
    text.extend_from_slice(sql);
    let mut out = BytesMut::new();
    messages::query(&mut out, &String::from_utf8_lossy(&text));
    out
}

/// The body of a Query that [`frees_space`], if it is one.
pub(crate) fn freeing_query(msg: u8, body: &[u8]) -> Option<&[u8]> {
    let sql = body.strip_suffix(&[0])?;
    (msg == tag::QUERY
        && sql.len() <= crate::session_state::MAX_SCANNED
        && frees_space(&String::from_utf8_lossy(sql)))
    .then_some(sql)
}

/// A statement that fails with `code` and `message` on the server, so the protocol
/// stays in step (the client gets the ErrorResponse and ReadyForQuery, and inside a
/// transaction the aborted state, that Postgres would give it).
pub(crate) fn failing_sql(code: &str, message: &str) -> String {
    let message = message.replace('\'', "''");
    format!(
        "DO $sluice$BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = '{message}'; END$sluice$"
    )
}

/// The body of a Query or Parse (`tag`, `body`) whose SQL is swapped for one that fails
/// with 53100 and `message`, if its SQL [`escapes`]; a Parse keeps its name and
/// parameter types.
pub(crate) fn screen(msg: u8, body: &[u8], message: &str) -> Option<BytesMut> {
    let sql = match msg {
        tag::QUERY => body.strip_suffix(&[0]).unwrap_or(body),
        tag::PARSE => messages::parse_parse(body).ok()?.query,
        _ => return None,
    };
    if sql.len() > crate::session_state::MAX_SCANNED || !escapes(&String::from_utf8_lossy(sql)) {
        return None;
    }
    let failing = failing_sql(DISK_FULL, message);
    let mut out = BytesMut::new();
    if msg == tag::PARSE {
        let p = messages::parse_parse(body).ok()?;
        messages::parse_raw(&mut out, p.name, failing.as_bytes(), p.param_types);
    } else {
        messages::query(&mut out, &failing);
    }
    Some(out)
}

/// An ErrorResponse body with SQLSTATE 25006, as the whole ErrorResponse that replaces
/// it: SQLSTATE 53100, `message`, and the server's message as its detail.
pub(crate) fn rewrite_error(body: &[u8], message: &str) -> Option<BytesMut> {
    let mut fields: Vec<(u8, &[u8])> = Vec::new();
    let mut rest = body;
    loop {
        let (&code, after) = rest.split_first()?;
        if code == 0 {
            break;
        }
        let end = after.iter().position(|&b| b == 0)?;
        fields.push((code, &after[..end]));
        rest = &after[end + 1..];
    }
    if !fields
        .iter()
        .any(|(c, v)| *c == b'C' && *v == READ_ONLY.as_bytes())
    {
        return None;
    }
    let original = fields
        .iter()
        .find(|(c, _)| *c == b'M')
        .map(|(_, v)| *v)
        .unwrap_or_default();
    let mut out = BytesMut::new();
    out.extend_from_slice(&[tag::ERROR_RESPONSE, 0, 0, 0, 0]);
    let field = |out: &mut BytesMut, code: u8, value: &[u8]| {
        out.extend_from_slice(&[code]);
        out.extend_from_slice(value);
        out.extend_from_slice(&[0]);
    };
    for (code, value) in &fields {
        match code {
            b'C' => field(&mut out, b'C', DISK_FULL.as_bytes()),
            b'M' => field(&mut out, b'M', message.as_bytes()),
            b'D' => field(&mut out, b'D', original),
            // The server's hint is about its setting, not the quota.
            b'H' => {}
            _ => field(&mut out, *code, value),
        }
    }
    if !fields.iter().any(|(c, _)| *c == b'D') {
        field(&mut out, b'D', original);
    }
    out.extend_from_slice(&[0]);
    let len = u32::try_from(out.len() - 1).ok()?;
    out[1..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

/// Whole messages out of a verbatim stream (the session-mode relay's, while its tenant
/// is full), so the few that must be looked into can be: messages of the types `held`
/// are kept until whole (up to `cap` bytes), every other one is passed on as it comes.
#[derive(Debug, Default)]
pub(crate) struct Screen {
    /// Bytes of a message passed on unread still to come.
    passthrough: usize,
}

impl Screen {
    /// Moves what can go from `buf` to `out` (the whole messages, each through
    /// `replace`, which may give a message to send instead; the parts of messages not
    /// held), leaving in `buf` the start of a held message that is not whole yet.
    pub(crate) fn run(
        &mut self,
        buf: &mut BytesMut,
        out: &mut BytesMut,
        held: &[u8],
        cap: usize,
        mut replace: impl FnMut(u8, &[u8], bool) -> Option<BytesMut>,
    ) {
        let start = out.len();
        loop {
            if self.passthrough > 0 {
                let n = self.passthrough.min(buf.len());
                out.extend_from_slice(&buf[..n]);
                buf.advance(n);
                self.passthrough -= n;
            }
            if buf.len() < HEADER_LEN || self.passthrough > 0 {
                return;
            }
            let msg = buf[0];
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if !(4..=DEFAULT_MAX_FRAME_LEN).contains(&len) {
                // The relay's scanner reports it.
                out.extend_from_slice(buf);
                buf.clear();
                return;
            }
            let whole = 1 + len;
            if buf.len() < whole {
                if held.contains(&msg) && whole <= cap {
                    return;
                }
                self.passthrough = whole;
                continue;
            }
            let body = &buf[HEADER_LEN..whole];
            let first = out.len() == start;
            match held
                .contains(&msg)
                .then(|| replace(msg, body, first))
                .flatten()
            {
                Some(instead) => out.extend_from_slice(&instead),
                None => out.extend_from_slice(&buf[..whole]),
            }
            buf.advance(whole);
        }
    }

    /// No message is half passed on (what `buf` holds starts at a message boundary).
    pub(crate) fn passthrough_done(&self) -> bool {
        self.passthrough == 0
    }

    /// Nothing is held or half passed on.
    pub(crate) fn at_rest(&self, buf: &BytesMut) -> bool {
        self.passthrough == 0 && buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ways_around_read_only_are_seen() {
        for sql in [
            "SET default_transaction_read_only = off",
            "set session default_transaction_read_only to false",
            "SET LOCAL transaction_read_only = off",
            "SET \"transaction_read_only\" = off",
            "BEGIN READ WRITE",
            "begin isolation level serializable, read write",
            "START TRANSACTION READ WRITE",
            "SET TRANSACTION READ WRITE",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
            "RESET default_transaction_read_only",
            "RESET ALL",
            "DISCARD ALL",
            "select 1; reset all",
            "DO $$BEGIN PERFORM 1; END$$",
            "SELECT set_config('default_transaction_read_only', 'off', false)",
            "SELECT pg_catalog.set_config('transaction_read_only', 'off', true)",
            "SELECT set_config($1, $2, false)",
            "SELECT set_config('default_' || 'transaction_read_only', 'off', false)",
        ] {
            assert!(escapes(sql), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "INSERT INTO t VALUES (1)",
            "BEGIN",
            "BEGIN READ ONLY",
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "SET search_path = app",
            "SELECT 'SET default_transaction_read_only = off'",
            "SELECT set_config('application_name', 'x', false)",
            "RESET search_path",
            "-- BEGIN READ WRITE\nSELECT 1",
            "TRUNCATE t",
        ] {
            assert!(!escapes(sql), "{sql}");
        }
    }

    #[test]
    fn only_statements_that_free_space_are_lifted() {
        for sql in ["DROP TABLE big", "drop table a; drop index b;"] {
            assert!(frees_space(sql), "{sql}");
        }
        for sql in [
            "",
            ";",
            "INSERT INTO t VALUES (1)",
            "DROP TABLE a; INSERT INTO t VALUES (1)",
            "BEGIN; DROP TABLE a",
            "WITH x AS (INSERT INTO t VALUES (1)) DELETE FROM t",
            // Triggers and functions in expressions could write.
            "TRUNCATE a",
            "DELETE FROM t WHERE id < 5",
            "DELETE FROM t WHERE writes_elsewhere()",
        ] {
            assert!(!frees_space(sql), "{sql}");
        }
    }

    #[test]
    fn restore_keeps_the_clients_own_value() {
        assert_eq!(restore(&[]), "RESET default_transaction_read_only");
        let own = vec![("default_transaction_read_only".to_owned(), "on".to_owned())];
        assert_eq!(restore(&own), FORCE);
    }

    fn error(fields: &[(u8, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (c, v) in fields {
            body.push(*c);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        body
    }

    #[test]
    fn the_servers_read_only_error_becomes_the_quotas() {
        let body = error(&[
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', "25006"),
            (b'M', "cannot execute INSERT in a read-only transaction"),
        ]);
        let out = rewrite_error(&body, "tenant \"acme\" is over its disk quota").unwrap();
        assert_eq!(out[0], tag::ERROR_RESPONSE);
        let fields = messages::parse_error_fields(&out[HEADER_LEN..]).unwrap();
        assert_eq!(fields.code, "53100");
        assert_eq!(fields.severity, "ERROR");
        assert_eq!(fields.message, "tenant \"acme\" is over its disk quota");
        let other = error(&[(b'C', "23505"), (b'M', "duplicate key")]);
        assert!(rewrite_error(&other, "x").is_none());
    }

    #[test]
    fn escaping_statements_are_swapped_for_failing_ones() {
        let mut q = BytesMut::new();
        messages::query(&mut q, "BEGIN READ WRITE");
        let out = screen(tag::QUERY, &q[HEADER_LEN..], "it's full").unwrap();
        let sql = String::from_utf8_lossy(&out[HEADER_LEN..]).into_owned();
        assert!(
            sql.contains("ERRCODE = '53100'") && sql.contains("it''s full"),
            "{sql}"
        );
        let mut ok = BytesMut::new();
        messages::query(&mut ok, "SELECT 1");
        assert!(screen(tag::QUERY, &ok[HEADER_LEN..], "x").is_none());
    }

    #[test]
    fn the_screen_holds_partial_messages_it_must_read_and_passes_the_rest() {
        let mut stream = BytesMut::new();
        messages::query(&mut stream, "SET default_transaction_read_only = off");
        stream.extend_from_slice(&[b'd', 0, 0, 0, 8, 1, 2, 3, 4]);
        messages::query(&mut stream, "SELECT 1");
        let whole = stream.clone();
        let mut screen_state = Screen::default();
        let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
        // Byte by byte: the result is the same as all at once.
        for b in whole.iter() {
            buf.extend_from_slice(&[*b]);
            screen_state.run(&mut buf, &mut out, &[tag::QUERY], 1024, |m, body, _| {
                screen(m, body, "full")
            });
        }
        assert!(screen_state.at_rest(&buf));
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(
            text.contains("53100") && text.contains("SELECT 1"),
            "{text}"
        );
        assert!(!text.contains("= off"), "{text}");
    }
}
