//! Keyword questions about SQL text, answered by one small lexer: comments
//! (`--`, nested `/* */`), quoted text (`'...'`, `E'...'`, `"..."`,
//! `$tag$...$tag$`) are skipped, and statements are split on top-level `;`.
//! No allocation: each statement's first words are kept in a small array.

/// Words kept per statement: enough for `COMMIT WORK AND NO CHAIN`.
const KEPT: usize = 6;

/// One token of a statement: a bare word (keyword or identifier), or
/// anything else (literal, quoted identifier, operator, number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok<'a> {
    Word(&'a [u8]),
    Other,
}

/// The first tokens of one statement, and how many it has in all.
struct Statement<'a> {
    toks: [Tok<'a>; KEPT],
    count: usize,
}

impl<'a> Statement<'a> {
    fn new() -> Statement<'a> {
        Statement {
            toks: [Tok::Other; KEPT],
            count: 0,
        }
    }

    fn push(&mut self, t: Tok<'a>) {
        if self.count < KEPT {
            self.toks[self.count] = t;
        }
        self.count += 1;
    }

    /// Token `i` is the keyword `k` (case-insensitive).
    fn is(&self, i: usize, k: &str) -> bool {
        i < self.count.min(KEPT)
            && matches!(self.toks[i], Tok::Word(w) if w.eq_ignore_ascii_case(k.as_bytes()))
    }

    /// The tokens from `i` on are exactly `words` (and nothing more).
    fn rest_is(&self, i: usize, words: &[&str]) -> bool {
        self.count == i + words.len() && words.iter().enumerate().all(|(j, w)| self.is(i + j, w))
    }

    /// `[WORK | TRANSACTION] [AND NO CHAIN]` from token `i` to the end:
    /// the tail that leaves a COMMIT or ROLLBACK plain.
    fn plain_tail(&self, i: usize) -> bool {
        let i = if self.is(i, "work") || self.is(i, "transaction") {
            i + 1
        } else {
            i
        };
        self.rest_is(i, &[]) || self.rest_is(i, &["and", "no", "chain"])
    }

    /// COMMIT / END in any form, COMMIT PREPARED, PREPARE TRANSACTION.
    fn commits(&self) -> bool {
        self.is(0, "commit")
            || self.is(0, "end")
            || (self.is(0, "prepare") && self.is(1, "transaction"))
    }
}

fn is_word_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// The end of a quoted run starting at `i` (on the opening `quote`);
/// `backslash`: `\` escapes the next byte (E'...'). A doubled quote is one.
fn skip_quoted(s: &[u8], mut i: usize, quote: u8, backslash: bool) -> usize {
    i += 1;
    while i < s.len() {
        let c = s[i];
        if backslash && c == b'\\' {
            i += 2;
            continue;
        }
        if c == quote {
            if s.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    s.len()
}

/// At a `$`: the end of a dollar-quoted string, or `None` if this `$` does
/// not open one (a parameter such as `$1`).
fn skip_dollar(s: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if s.get(j).is_some_and(|c| c.is_ascii_digit()) {
        return None;
    }
    while j < s.len() && s[j] != b'$' {
        if !(s[j].is_ascii_alphanumeric() || s[j] == b'_' || s[j] >= 0x80) {
            return None;
        }
        j += 1;
    }
    if j >= s.len() {
        return None;
    }
    let tag = &s[i..=j];
    let body = j + 1;
    Some(memchr::memmem::find(&s[body..], tag).map_or(s.len(), |at| body + at + tag.len()))
}

/// Calls `f` with each non-empty statement of `sql`; stops early when `f`
/// returns true, and returns whether it did.
fn any_statement(sql: &[u8], mut f: impl FnMut(&Statement) -> bool) -> bool {
    let s = sql;
    let mut st = Statement::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        match c {
            b';' => {
                if st.count > 0 && f(&st) {
                    return true;
                }
                st = Statement::new();
                i += 1;
            }
            b'-' if s.get(i + 1) == Some(&b'-') => {
                i = memchr::memchr(b'\n', &s[i..]).map_or(s.len(), |n| i + n + 1);
            }
            b'/' if s.get(i + 1) == Some(&b'*') => {
                let mut depth = 1;
                i += 2;
                while i < s.len() && depth > 0 {
                    if s[i] == b'/' && s.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if s[i] == b'*' && s.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
            }
            b'\'' => {
                i = skip_quoted(s, i, b'\'', false);
                st.push(Tok::Other);
            }
            b'"' => {
                i = skip_quoted(s, i, b'"', false);
                st.push(Tok::Other);
            }
            b'$' => {
                i = skip_dollar(s, i).unwrap_or(i + 1);
                st.push(Tok::Other);
            }
            c if is_word_start(c) => {
                let start = i;
                while i < s.len() && is_word_byte(s[i]) {
                    i += 1;
                }
                let word = &s[start..i];
                if s.get(i) == Some(&b'\'') && word.len() <= 2 {
                    // A prefixed string: E'..' (backslash escapes), B'', X'', N'', U&''.
                    let escapes = word.eq_ignore_ascii_case(b"e");
                    i = skip_quoted(s, i, b'\'', escapes);
                    st.push(Tok::Other);
                } else {
                    st.push(Tok::Word(word));
                }
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                i += 1;
                st.push(Tok::Other);
            }
        }
    }
    st.count > 0 && f(&st)
}

/// True if any statement in `sql` ends a transaction with a commit (or
/// hands it to two-phase commit): COMMIT / END [AND [NO] CHAIN], COMMIT
/// PREPARED, PREPARE TRANSACTION. If the server dies while one runs, the
/// transaction's outcome is unknown.
pub fn commits(sql: &[u8]) -> bool {
    any_statement(sql, |st| st.commits())
}

/// `sql` is one plain COMMIT or END (`[WORK | TRANSACTION] [AND NO CHAIN]`)
/// and nothing else.
pub fn lone_commit(sql: &[u8]) -> bool {
    lone(sql, |st| {
        (st.is(0, "commit") || st.is(0, "end")) && st.plain_tail(1)
    })
}

/// `sql` is one plain ROLLBACK or ABORT and nothing else (not ROLLBACK TO
/// SAVEPOINT, ROLLBACK PREPARED or AND CHAIN).
pub fn lone_rollback(sql: &[u8]) -> bool {
    lone(sql, |st| {
        (st.is(0, "rollback") || st.is(0, "abort")) && st.plain_tail(1)
    })
}

fn lone(sql: &[u8], test: impl Fn(&Statement) -> bool) -> bool {
    let mut statements = 0;
    let mut matched = false;
    any_statement(sql, |st| {
        statements += 1;
        matched = test(st);
        statements > 1
    });
    statements == 1 && matched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_anywhere_in_the_text() {
        for sql in [
            "COMMIT",
            "commit;",
            "  end  ",
            "/* app */ COMMIT",
            "-- note\nCOMMIT",
            "INSERT INTO t VALUES (1); COMMIT",
            "COMMIT AND CHAIN",
            "END TRANSACTION AND NO CHAIN",
            "PREPARE TRANSACTION 'x'",
            "COMMIT PREPARED 'x'",
            "/* a /* nested */ comment */ commit",
            "select 'a;b'; commit",
        ] {
            assert!(commits(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "",
            "SELECT 'COMMIT'",
            "SELECT \"commit\" FROM t",
            "SELECT $$; COMMIT$$",
            "SELECT $x$; COMMIT $x$",
            "-- COMMIT",
            "/* COMMIT */ SELECT 1",
            "ROLLBACK",
            "ROLLBACK PREPARED 'x'",
            "PREPARE p AS SELECT 1",
            "SELECT E'\\'; COMMIT'",
            "SELECT committed FROM t",
            "SELECT 1 WHERE $1 = 2; SELECT 'x'",
        ] {
            assert!(!commits(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn lone_statements() {
        for sql in [
            "COMMIT",
            "end;",
            "commit work",
            "COMMIT AND NO CHAIN",
            "/* x */ END;;",
        ] {
            assert!(lone_commit(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "COMMIT AND CHAIN",
            "COMMIT PREPARED 'x'",
            "COMMIT; SELECT 1",
            "SELECT 1; COMMIT",
            "ROLLBACK",
            "",
        ] {
            assert!(!lone_commit(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "ROLLBACK",
            "abort;",
            "rollback transaction",
            "ROLLBACK AND NO CHAIN",
        ] {
            assert!(lone_rollback(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "ROLLBACK TO SAVEPOINT a",
            "ROLLBACK TO a",
            "ROLLBACK PREPARED 'x'",
            "ROLLBACK AND CHAIN",
            "ROLLBACK; ROLLBACK",
            "COMMIT",
        ] {
            assert!(!lone_rollback(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn unterminated_quotes_and_comments_do_not_panic() {
        for sql in ["'", "\"", "$a$", "/*", "E'\\", "$", "--", "x'"] {
            assert!(!commits(sql.as_bytes()));
            assert!(!lone_commit(sql.as_bytes()));
        }
    }
}
