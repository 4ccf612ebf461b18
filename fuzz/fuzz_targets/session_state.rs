//! Fuzzes the recognition of session state in SQL text (`proxy::session_state`), and
//! the disk quota's screening of it (`proxy::quota`: SQL that would turn read-only off,
//! SQL that only frees space): any bytes, as the relay reads a Query or Parse text
//! (lossy UTF-8).
//!
//! Checks: no panic; `effects` (with its quick pass) equals `effects_in_full`; the lexer ends (every token moves it forward: it yields at most one
//! token per byte); words are never empty; a name of Sluice's own statements is only
//! reported with the prefix; a following statement of only a comment and a literal
//! holding `LISTEN`, `SET ROLE` and `DO` adds nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::session_state::lexer::{tokens, Token};
use proxy::session_state::{effects, effects_in_full, Effect, SLUICE_PREFIX};

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data);
    let mut n = 0;
    for token in tokens(&sql) {
        n += 1;
        assert!(n <= sql.len(), "more tokens than bytes");
        if let Token::Word(w) = token {
            assert!(!w.is_empty());
        }
    }
    // A text that frees space never escapes the read-only guard.
    if proxy::quota::frees_space(&sql) {
        assert!(!proxy::quota::escapes(&sql), "{sql:?}");
    }
    let found = effects(&sql);
    // The quick pass that lets plain queries through unexamined misses nothing.
    assert_eq!(found, effects_in_full(&sql), "{sql:?}");
    for effect in &found {
        if let Effect::SluiceName(_, name) = effect {
            assert!(name.starts_with(SLUICE_PREFIX), "{name}");
        }
    }
    // What is hidden in a comment or a literal in a statement after the text is no
    // statement: the text's own effects stay, and nothing is added. (Only for texts that
    // cannot leave a quote or a comment open, which would swallow what follows.)
    if !sql.contains(['\'', '"', '$', '-', '/', '\\', ';']) {
        let more = format!("{sql}; /* listen x; set role y */ 'do $$ $$'");
        assert_eq!(effects(&more), found, "{more:?}");
    }
});
