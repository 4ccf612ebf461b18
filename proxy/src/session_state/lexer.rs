//! Just enough of PostgreSQL's lexer to find words in SQL text: it skips string
//! literals (`'…'`, `E'…'` with backslash escapes), quoted identifiers (`"…"`), dollar
//! quotes (`$tag$…$tag$`) and comments (`-- …`, nested `/* … */`), and yields the
//! words, numbers and punctuation between them. It never fails: text it cannot make
//! sense of (an unterminated quote) ends the input, which is what Postgres would refuse
//! anyway.
//!
//! Words are ASCII-case-insensitive keywords or identifiers; a quoted identifier is
//! yielded as [`Token::Quoted`] (its case kept), a literal as [`Token::Literal`] with
//! its text when it is a plain one.

/// One token of SQL text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token<'a> {
    /// A keyword or unquoted identifier, as written (compare case-insensitively).
    Word(&'a str),
    /// A quoted identifier, without its quotes (`""` left as is).
    Quoted(&'a str),
    /// A string literal: its body for `'…'` without escapes to undo, else `None`.
    Literal(Option<&'a str>),
    /// A number, a `$n` parameter, or any other run the lexer does not look into.
    Other,
    /// A single punctuation character: `(`, `)`, `,`, `;`, `.`, `=`, …
    Punct(u8),
}

impl Token<'_> {
    /// This token is the keyword `word` (ASCII case-insensitive).
    pub fn is(&self, word: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(word))
    }
}

/// The tokens of `sql`, in order.
pub fn tokens(sql: &str) -> Tokens<'_> {
    Tokens { sql, pos: 0 }
}

/// An iterator over the tokens of SQL text.
#[derive(Debug, Clone)]
pub struct Tokens<'a> {
    sql: &'a str,
    pos: usize,
}

fn is_word_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_word_byte(b: u8) -> bool {
    is_word_start(b) || b.is_ascii_digit() || b == b'$'
}

impl<'a> Tokens<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.sql.as_bytes()
    }

    /// Skips whitespace and comments; false at the end of the text.
    fn skip_blank(&mut self) -> bool {
        let b = self.bytes();
        loop {
            match b.get(self.pos..) {
                Some([c, ..]) if c.is_ascii_whitespace() => self.pos += 1,
                Some([b'-', b'-', ..]) => match b[self.pos..].iter().position(|&c| c == b'\n') {
                    Some(n) => self.pos += n + 1,
                    None => self.pos = b.len(),
                },
                Some([b'/', b'*', ..]) => {
                    let mut depth = 0usize;
                    while self.pos < b.len() {
                        match &b[self.pos..] {
                            [b'/', b'*', ..] => {
                                depth += 1;
                                self.pos += 2;
                            }
                            [b'*', b'/', ..] => {
                                depth -= 1;
                                self.pos += 2;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => self.pos += 1,
                        }
                    }
                }
                Some([_, ..]) => return true,
                _ => return false,
            }
        }
    }

    /// From an opening quote at `self.pos`: the end of the quoted text (past the
    /// closing quote), treating a doubled quote as one, and backslash escapes if asked.
    fn quoted_end(&self, quote: u8, backslashes: bool) -> Option<usize> {
        let b = self.bytes();
        let mut i = self.pos + 1;
        while i < b.len() {
            match b[i] {
                b'\\' if backslashes => i += 2,
                c if c == quote => {
                    if b.get(i + 1) == Some(&quote) {
                        i += 2;
                    } else {
                        return Some(i + 1);
                    }
                }
                _ => i += 1,
            }
        }
        None
    }

    /// A dollar quote's tag at `self.pos` (`$$` or `$name$`), if it is one.
    fn dollar_tag(&self) -> Option<&'a str> {
        let b = self.bytes();
        let rest = &b[self.pos + 1..];
        let n = rest.iter().position(|&c| !is_word_byte(c) || c == b'$')?;
        let valid = rest.get(n) == Some(&b'$') && rest.first().is_none_or(|&c| !c.is_ascii_digit());
        valid.then(|| &self.sql[self.pos..self.pos + n + 2])
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        if !self.skip_blank() {
            return None;
        }
        let b = self.bytes();
        let start = self.pos;
        let c = b[start];
        let end = |this: &mut Self, end: Option<usize>| {
            this.pos = end.unwrap_or(b.len());
            end
        };
        // E'…' (escape string), and the prefixes that behave like plain strings.
        if matches!(c, b'e' | b'E') && b.get(start + 1) == Some(&b'\'') {
            self.pos += 1;
            end(self, self.quoted_end(b'\'', true));
            return Some(Token::Literal(None));
        }
        if matches!(c, b'b' | b'B' | b'x' | b'X' | b'n' | b'N') && b.get(start + 1) == Some(&b'\'')
        {
            self.pos += 1;
            end(self, self.quoted_end(b'\'', false));
            return Some(Token::Literal(None));
        }
        if matches!(c, b'u' | b'U') && b.get(start + 1) == Some(&b'&') {
            if let Some(&q @ (b'\'' | b'"')) = b.get(start + 2) {
                self.pos += 2;
                end(self, self.quoted_end(q, false));
                return Some(if q == b'\'' {
                    Token::Literal(None)
                } else {
                    Token::Other
                });
            }
        }
        Some(match c {
            b'\'' => match end(self, self.quoted_end(b'\'', false)) {
                Some(e) => {
                    let body = &self.sql[start + 1..e - 1];
                    Token::Literal((!body.contains('\'')).then_some(body))
                }
                None => Token::Literal(None),
            },
            b'"' => match end(self, self.quoted_end(b'"', false)) {
                Some(e) => Token::Quoted(&self.sql[start + 1..e - 1]),
                None => Token::Other,
            },
            b'$' => match self.dollar_tag() {
                Some(tag) => {
                    let body = start + tag.len();
                    let close = self.sql[body..].find(tag).map(|n| body + n + tag.len());
                    end(self, close);
                    Token::Literal(None)
                }
                None => {
                    // `$1`: a parameter.
                    self.pos += 1;
                    while self.pos < b.len() && b[self.pos].is_ascii_digit() {
                        self.pos += 1;
                    }
                    Token::Other
                }
            },
            c if is_word_start(c) => {
                while self.pos < b.len() && is_word_byte(b[self.pos]) {
                    self.pos += 1;
                }
                // Multi-byte characters are word bytes, so this is a char boundary.
                Token::Word(&self.sql[start..self.pos])
            }
            c if c.is_ascii_digit() => {
                while self.pos < b.len()
                    && (b[self.pos].is_ascii_alphanumeric() || b[self.pos] == b'.')
                {
                    self.pos += 1;
                }
                Token::Other
            }
            c => {
                self.pos += 1;
                Token::Punct(c)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(sql: &str) -> Vec<String> {
        tokens(sql)
            .filter_map(|t| match t {
                Token::Word(w) => Some(w.to_ascii_lowercase()),
                Token::Quoted(q) => Some(format!("\"{q}\"")),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn literals_identifiers_and_comments_hide_their_words() {
        assert_eq!(
            words("select 'listen x' -- listen y\n, \"LISTEN\""),
            ["select", "\"LISTEN\""]
        );
        assert_eq!(words("/* a /* nested */ listen */ select 1"), ["select"]);
        assert_eq!(
            words("select $$ set role x $$, $f$ do $g$ x $f$"),
            ["select"]
        );
        assert_eq!(words(r"select E'it\'s listen', 'it''s set'"), ["select"]);
        assert_eq!(
            words("select U&'d\\0061t listen' , U&\"d\\0061t\""),
            ["select"]
        );
        assert_eq!(words("select $1, $2::text"), ["select", "text"]);
        assert_eq!(words("SeLeCt ñame$x"), ["select", "ñame$x"]);
    }

    #[test]
    fn unterminated_text_ends_the_input() {
        assert_eq!(words("select 'listen"), ["select"]);
        assert_eq!(words("select $$ listen"), ["select"]);
        assert_eq!(words("select /* listen"), ["select"]);
        assert_eq!(words("select \"listen"), ["select"]);
    }

    #[test]
    fn plain_literals_keep_their_text() {
        let t: Vec<Token> = tokens("set_config('a', 'it''s', false)").collect();
        assert_eq!(t[2], Token::Literal(Some("a")));
        assert_eq!(t[4], Token::Literal(None));
        assert!(t[6].is("FALSE"));
    }

    #[test]
    fn any_bytes_lex_without_panicking() {
        for sql in [
            "$", "$$", "$a", "E'", "E'\\", "U&", "U&'", "'", "\"", "--", "/*", "/**/", "é", "\u{0}",
        ] {
            let _ = tokens(sql).count();
        }
    }
}
