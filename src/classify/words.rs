//! A small SQL tokenizer for the keyword decisions the data path makes on
//! every Query and Parse (is this a COMMIT, does it SET something, does it
//! PREPARE a name), where PostgreSQL's parser would cost too much.
//!
//! It follows PostgreSQL's lexical rules closely enough never to mistake
//! quoted text or comments for keywords: white space, `--` and nested
//! `/* */` comments, `'...'` strings (`''` escapes; B'', X'', N'', U&''
//! alike), `E'...'` strings (backslash escapes), `$tag$...$tag$` dollar
//! quoting, `"..."` identifiers (`""` escapes), numbers, `$1` parameters,
//! words and punctuation. Statements end at a `;` outside parentheses.
//! Unterminated quotes or comments run to the end of the text, as the
//! server would fail them; any bytes (invalid UTF-8 included) are accepted,
//! bytes >= 0x80 being identifier characters as in PostgreSQL. Nothing here
//! allocates.

/// One token of SQL text. Slices borrow the text; quoted contents are raw
/// (escapes not undone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    /// An unquoted keyword or identifier, as written.
    Word(&'a [u8]),
    /// The inside of a `"..."` identifier.
    Quoted(&'a [u8]),
    /// The inside of a string constant: `'...'` (and its B/X/N/U& forms).
    String(&'a [u8]),
    /// The inside of an `E'...'` string: backslash escapes apply.
    EscapeString(&'a [u8]),
    /// The inside of a `$tag$...$tag$` string.
    DollarString(&'a [u8]),
    /// A numeric constant.
    Number(&'a [u8]),
    /// A `$n` parameter.
    Param(&'a [u8]),
    /// Any other byte (operators, punctuation).
    Other(u8),
}

impl<'a> Token<'a> {
    /// An unquoted word equal to `kw`, ignoring ASCII case.
    pub fn is(&self, kw: &[u8]) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    /// An unquoted word equal to one of `kws`, ignoring ASCII case.
    pub fn is_any(&self, kws: &[&[u8]]) -> bool {
        kws.iter().any(|k| self.is(k))
    }

    /// An identifier: the word (case as written) or the quoted name.
    pub fn ident(&self) -> Option<&'a [u8]> {
        match *self {
            Token::Word(w) | Token::Quoted(w) => Some(w),
            _ => None,
        }
    }

    /// A string constant of any form.
    pub fn string(&self) -> Option<&'a [u8]> {
        match *self {
            Token::String(s) | Token::EscapeString(s) | Token::DollarString(s) => Some(s),
            _ => None,
        }
    }
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

fn ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn ident_cont(c: u8) -> bool {
    ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// Tokens of `sql`, comments and white space skipped.
#[derive(Debug, Clone)]
pub struct Tokens<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Tokens<'a> {
    pub fn new(s: &'a [u8]) -> Tokens<'a> {
        Tokens { s, pos: 0 }
    }

    /// Where the next token (or the end) starts, after white space and
    /// comments.
    fn skip_blank(&mut self) {
        let s = self.s;
        while self.pos < s.len() {
            let c = s[self.pos];
            if is_space(c) {
                self.pos += 1;
            } else if c == b'-' && s.get(self.pos + 1) == Some(&b'-') {
                self.pos = s[self.pos..]
                    .iter()
                    .position(|&c| c == b'\n' || c == b'\r')
                    .map_or(s.len(), |p| self.pos + p);
            } else if c == b'/' && s.get(self.pos + 1) == Some(&b'*') {
                // Comments nest in PostgreSQL.
                let mut depth = 1usize;
                let mut i = self.pos + 2;
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
                self.pos = i.min(s.len());
            } else {
                return;
            }
        }
    }

    /// The end of a quoted run starting after its opening `q` at `from`:
    /// (end of contents, position after the closing quote). Doubled quotes
    /// are part of the contents; with `backslash`, so is `\` and the byte
    /// after it.
    fn quoted_end(&self, from: usize, q: u8, backslash: bool) -> (usize, usize) {
        let s = self.s;
        let mut i = from;
        while i < s.len() {
            let c = s[i];
            if backslash && c == b'\\' {
                i += 2;
            } else if c == q {
                if s.get(i + 1) == Some(&q) {
                    i += 2;
                } else {
                    return (i, i + 1);
                }
            } else {
                i += 1;
            }
        }
        (s.len(), s.len())
    }

    /// A `$tag$` opening at `at` (where `s[at] == '$'`): the position after it.
    fn dollar_tag(&self, at: usize) -> Option<usize> {
        let s = self.s;
        let mut i = at + 1;
        if i < s.len() && ident_start(s[i]) {
            i += 1;
            while i < s.len() && (ident_start(s[i]) || s[i].is_ascii_digit()) {
                i += 1;
            }
        }
        (s.get(i) == Some(&b'$')).then_some(i + 1)
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        self.skip_blank();
        let s = self.s;
        let start = self.pos;
        let c = *s.get(start)?;
        match c {
            b'\'' => {
                let (end, after) = self.quoted_end(start + 1, b'\'', false);
                self.pos = after;
                Some(Token::String(&s[start + 1..end]))
            }
            b'"' => {
                let (end, after) = self.quoted_end(start + 1, b'"', false);
                self.pos = after;
                Some(Token::Quoted(&s[start + 1..end]))
            }
            b'$' => {
                if s.get(start + 1).is_some_and(u8::is_ascii_digit) {
                    let n = s[start + 1..]
                        .iter()
                        .position(|c| !c.is_ascii_digit())
                        .map_or(s.len(), |p| start + 1 + p);
                    self.pos = n;
                    return Some(Token::Param(&s[start..n]));
                }
                let Some(body) = self.dollar_tag(start) else {
                    self.pos = start + 1;
                    return Some(Token::Other(c));
                };
                let tag = &s[start..body];
                match memchr::memmem::find(&s[body..], tag) {
                    Some(p) => {
                        self.pos = body + p + tag.len();
                        Some(Token::DollarString(&s[body..body + p]))
                    }
                    None => {
                        self.pos = s.len();
                        Some(Token::DollarString(&s[body..]))
                    }
                }
            }
            b'0'..=b'9' => {
                self.pos = number_end(s, start);
                Some(Token::Number(&s[start..self.pos]))
            }
            b'.' if s.get(start + 1).is_some_and(u8::is_ascii_digit) => {
                self.pos = number_end(s, start);
                Some(Token::Number(&s[start..self.pos]))
            }
            c if ident_start(c) => {
                let end = s[start..]
                    .iter()
                    .position(|&c| !ident_cont(c))
                    .map_or(s.len(), |p| start + p);
                let w = &s[start..end];
                if s.get(end) == Some(&b'\'') {
                    // E'..', and B'..', X'..', N'..' (plain quoting).
                    if w.eq_ignore_ascii_case(b"e") {
                        let (e, after) = self.quoted_end(end + 1, b'\'', true);
                        self.pos = after;
                        return Some(Token::EscapeString(&s[end + 1..e.min(s.len())]));
                    }
                    if w.len() == 1 && b"bBxXnN".contains(&w[0]) {
                        let (e, after) = self.quoted_end(end + 1, b'\'', false);
                        self.pos = after;
                        return Some(Token::String(&s[end + 1..e]));
                    }
                }
                self.pos = end;
                Some(Token::Word(w))
            }
            _ => {
                self.pos = start + 1;
                Some(Token::Other(c))
            }
        }
    }
}

fn number_end(s: &[u8], start: usize) -> usize {
    let mut i = start;
    while i < s.len() {
        let c = s[i];
        let exponent_sign =
            (c == b'+' || c == b'-') && i > start && matches!(s[i - 1], b'e' | b'E');
        if !(c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || exponent_sign) {
            break;
        }
        i += 1;
    }
    i
}

/// One statement of a text: its bytes, without the `;` that ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statement<'a> {
    pub text: &'a [u8],
}

impl<'a> Statement<'a> {
    /// Its tokens, comments skipped.
    pub fn words(&self) -> Tokens<'a> {
        Tokens::new(self.text)
    }

    /// Whether its first tokens are the words `kws` (ignoring case).
    pub fn starts_with(&self, kws: &[&[u8]]) -> bool {
        let mut w = self.words();
        kws.iter().all(|k| w.next().is_some_and(|t| t.is(k)))
    }

    /// Its first word, if it starts with one.
    pub fn first_word(&self) -> Option<&'a [u8]> {
        match self.words().next()? {
            Token::Word(w) => Some(w),
            _ => None,
        }
    }
}

/// The statements of `sql`: split at `;` outside quotes, comments and
/// parentheses; empty ones (only white space and comments) left out.
pub fn statements(sql: &[u8]) -> Statements<'_> {
    Statements {
        tokens: Tokens::new(sql),
    }
}

/// See [`statements`].
#[derive(Debug, Clone)]
pub struct Statements<'a> {
    tokens: Tokens<'a>,
}

impl<'a> Iterator for Statements<'a> {
    type Item = Statement<'a>;

    fn next(&mut self) -> Option<Statement<'a>> {
        loop {
            self.tokens.skip_blank();
            let start = self.tokens.pos;
            if start >= self.tokens.s.len() {
                return None;
            }
            let mut depth = 0usize;
            let mut end = self.tokens.s.len();
            let mut any = false;
            while let Some(t) = self.tokens.next() {
                match t {
                    Token::Other(b'(') => depth += 1,
                    // An unbalanced `)` is a syntax error; the statement
                    // still ends at the next top-level `;`.
                    Token::Other(b')') => depth = depth.saturating_sub(1),
                    Token::Other(b';') if depth == 0 => {
                        end = self.tokens.pos - 1;
                        break;
                    }
                    _ => {}
                }
                any = true;
            }
            if any {
                return Some(Statement {
                    text: &self.tokens.s[start..end],
                });
            }
        }
    }
}

/// Skips `WORK` or `TRANSACTION` after COMMIT/END/ROLLBACK/ABORT.
fn skip_noise<'a>(w: &mut std::iter::Peekable<Tokens<'a>>) {
    if w.peek()
        .is_some_and(|t| t.is_any(&[b"work", b"transaction"]))
    {
        w.next();
    }
}

/// What a statement does to its transaction's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// COMMIT / END [WORK | TRANSACTION].
    Commit,
    /// The same, AND [NO] CHAIN.
    CommitChain,
    /// COMMIT PREPARED or PREPARE TRANSACTION: commits (or makes durable)
    /// a two-phase transaction.
    TwoPhase,
    /// ROLLBACK / ABORT [WORK | TRANSACTION].
    Rollback,
    /// Anything else (ROLLBACK TO SAVEPOINT, ROLLBACK AND CHAIN, ...).
    Other,
}

fn end_of(st: &Statement) -> End {
    let mut w = st.words().peekable();
    let Some(first) = w.next() else {
        return End::Other;
    };
    let commit = first.is_any(&[b"commit", b"end"]);
    let rollback = first.is_any(&[b"rollback", b"abort"]);
    if first.is(b"prepare") {
        return if w.next().is_some_and(|t| t.is(b"transaction")) {
            End::TwoPhase
        } else {
            End::Other
        };
    }
    if !commit && !rollback {
        return End::Other;
    }
    if first.is(b"commit") && w.peek().is_some_and(|t| t.is(b"prepared")) {
        return End::TwoPhase;
    }
    skip_noise(&mut w);
    match w.next() {
        None if commit => End::Commit,
        None => End::Rollback,
        Some(t) if t.is(b"and") && commit => End::CommitChain,
        _ => End::Other,
    }
}

/// Whether any statement of `sql` commits (COMMIT / END, with or without
/// WORK / TRANSACTION and AND [NO] CHAIN, COMMIT PREPARED, PREPARE
/// TRANSACTION): if the server is lost while it runs, the outcome is
/// unknown.
pub fn commits(sql: &[u8]) -> bool {
    let commit =
        |s: &Statement| matches!(end_of(s), End::Commit | End::CommitChain | End::TwoPhase);
    match plainly_one(sql) {
        Some(s) => commit(&s),
        None => statements(sql).any(|s| commit(&s)),
    }
}

/// `sql` as one statement when it plainly is one: no `;`, or only a last
/// one followed by white space. Its first words are then all a keyword
/// decision needs, without lexing the rest of the text to find where
/// statements end (a `;` inside an unclosed quote or comment changes none
/// of its first words). `None`: split it with `statements`.
fn plainly_one(sql: &[u8]) -> Option<Statement<'_>> {
    match memchr::memrchr(b';', sql) {
        None => Some(Statement { text: sql }),
        Some(p) if sql[p + 1..].iter().all(|&c| is_space(c)) && !sql[..p].contains(&b';') => {
            Some(Statement { text: &sql[..p] })
        }
        Some(_) => None,
    }
}

fn lone(sql: &[u8]) -> Option<End> {
    if let Some(s) = plainly_one(sql) {
        return Some(end_of(&s));
    }
    let mut it = statements(sql);
    let first = it.next()?;
    it.next().is_none().then(|| end_of(&first))
}

/// Exactly one statement, an INSERT, UPDATE, DELETE or MERGE: one that
/// may run in a transaction block with another (unlike VACUUM or CREATE
/// INDEX CONCURRENTLY).
pub fn lone_dml(sql: &[u8]) -> bool {
    let first = |s: &Statement| {
        s.words()
            .next()
            .is_some_and(|w| w.is_any(&[b"insert", b"update", b"delete", b"merge"]))
    };
    if let Some(s) = plainly_one(sql) {
        return first(&s);
    }
    let mut it = statements(sql);
    it.next().is_some_and(|s| first(&s)) && it.next().is_none()
}

/// A text that is exactly one plain transaction end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoneEnd {
    /// COMMIT or END [WORK | TRANSACTION] (no AND CHAIN, not PREPARED).
    Commit,
    /// ROLLBACK or ABORT [WORK | TRANSACTION] (not TO SAVEPOINT, not
    /// PREPARED, not AND CHAIN).
    Rollback,
}

/// Whether `sql` is exactly one plain COMMIT or ROLLBACK, and which: one
/// pass where `lone_commit` then `lone_rollback` would make two.
pub fn lone_end(sql: &[u8]) -> Option<LoneEnd> {
    match lone(sql)? {
        End::Commit => Some(LoneEnd::Commit),
        End::Rollback => Some(LoneEnd::Rollback),
        _ => None,
    }
}

/// Exactly one statement, a plain COMMIT or END (no AND CHAIN, not
/// PREPARED).
pub fn lone_commit(sql: &[u8]) -> bool {
    lone_end(sql) == Some(LoneEnd::Commit)
}

/// Exactly one statement, a plain ROLLBACK or ABORT [WORK | TRANSACTION]
/// (not TO SAVEPOINT, not PREPARED, not AND CHAIN).
pub fn lone_rollback(sql: &[u8]) -> bool {
    lone_end(sql) == Some(LoneEnd::Rollback)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn toks(sql: &str) -> Vec<Token<'_>> {
        Tokens::new(sql.as_bytes()).collect()
    }

    fn texts(sql: &str) -> Vec<String> {
        statements(sql.as_bytes())
            .map(|s| String::from_utf8_lossy(s.text).trim().to_owned())
            .collect()
    }

    #[test]
    fn lone_dml_is_one_insert_update_delete_or_merge() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "insert into t values (1) returning id;",
            "/* app */ UPDATE t SET x = 1",
            "DELETE FROM t WHERE 'a;b' = x;  ",
            "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
        ] {
            assert!(lone_dml(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)",
            "VACUUM t",
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
            "",
        ] {
            assert!(!lone_dml(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn tokens() {
        use Token::*;
        assert_eq!(
            toks("SELECT a1, \"X\"\"y\" FROM t -- no\nWHERE b = 'it''s' /* a /* b */ c */ AND $1 > 1.5e-3"),
            vec![
                Word(b"SELECT"),
                Word(b"a1"),
                Other(b','),
                Quoted(b"X\"\"y"),
                Word(b"FROM"),
                Word(b"t"),
                Word(b"WHERE"),
                Word(b"b"),
                Other(b'='),
                String(b"it''s"),
                Word(b"AND"),
                Param(b"$1"),
                Other(b'>'),
                Number(b"1.5e-3"),
            ]
        );
        assert_eq!(
            toks(r"e'a\'b' $x$ ; 'q' $x$ $$;$$ x'1F' a$b"),
            vec![
                EscapeString(br"a\'b"),
                DollarString(b" ; 'q' "),
                DollarString(b";"),
                String(b"1F"),
                Word(b"a$b"),
            ]
        );
        assert_eq!(toks("'open"), vec![String(b"open")]);
        assert_eq!(toks("/* open /* */"), vec![]);
        assert_eq!(toks("$1x $"), vec![Param(b"$1"), Word(b"x"), Other(b'$')]);
        assert!(Word(b"Commit").is(b"commit"));
        assert!(!Quoted(b"commit").is(b"commit"));
    }

    #[test]
    fn splitting() {
        assert_eq!(
            texts("SELECT 'a;b'; SELECT \"c;\" -- ;\n; /* ; */ ;; SELECT $$;$$"),
            vec!["SELECT 'a;b'", "SELECT \"c;\" -- ;", "SELECT $$;$$"]
        );
        assert_eq!(texts("select (1; 2); x"), vec!["select (1; 2)", "x"]);
        assert_eq!(texts("select 1)); x"), vec!["select 1))", "x"]);
        assert_eq!(texts(" ; -- \n "), Vec::<String>::new());
        assert_eq!(texts(r"SELECT E'\';' ; b"), vec![r"SELECT E'\';'", "b"]);
    }

    #[test]
    fn commit_anywhere() {
        for sql in [
            "COMMIT",
            "/* app */ COMMIT",
            "INSERT INTO t VALUES (1); COMMIT",
            "commit and chain",
            "END WORK",
            "end transaction and no chain;",
            "COMMIT PREPARED 'gx'",
            "PREPARE TRANSACTION 'gx'",
        ] {
            assert!(commits(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "SELECT 'commit'",
            "-- commit\nSELECT 1",
            "ROLLBACK",
            "PREPARE p AS SELECT 1",
            "select commit from t",
            "\"commit\"",
        ] {
            assert!(!commits(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn lone_commit_and_rollback() {
        for sql in [
            "COMMIT",
            " commit work ; ",
            "/* x */ END",
            "END TRANSACTION",
        ] {
            assert!(lone_commit(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "COMMIT AND CHAIN",
            "COMMIT PREPARED 'x'",
            "COMMIT; COMMIT",
            "SELECT 1; COMMIT",
            "ROLLBACK",
            "",
        ] {
            assert!(!lone_commit(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "ROLLBACK",
            "abort",
            "ROLLBACK WORK;",
            "-- x\nrollback transaction",
        ] {
            assert!(lone_rollback(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "ROLLBACK TO SAVEPOINT a",
            "ROLLBACK TO a",
            "ROLLBACK PREPARED 'x'",
            "ROLLBACK AND CHAIN",
            "ROLLBACK; SELECT 1",
            "COMMIT",
        ] {
            assert!(!lone_rollback(sql.as_bytes()), "{sql}");
        }
    }

    /// SQL-ish pieces: tokens that end statements or open quotes.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("SELECT".to_owned()),
            Just("commit".to_owned()),
            Just(";".to_owned()),
            Just("(".to_owned()),
            Just(")".to_owned()),
            Just(",".to_owned()),
            Just("'a;b'".to_owned()),
            Just("'it''s'".to_owned()),
            Just(r"E'x\';'".to_owned()),
            Just("$q$ ; $q$".to_owned()),
            Just("$$;$$".to_owned()),
            Just("\"c;\"\"d\"".to_owned()),
            Just("$1".to_owned()),
            Just("1.5".to_owned()),
            "[a-z_][a-z0-9_]{0,6}",
        ]
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            for s in statements(&bytes) {
                prop_assert!(!s.text.is_empty());
                for _ in s.words() {}
            }
            let _ = (commits(&bytes), lone_commit(&bytes), lone_rollback(&bytes));
        }

        #[test]
        fn one_statement_shortcut_agrees_with_splitting(pieces in proptest::collection::vec(
            prop_oneof![piece(), Just("'".to_owned()), Just("$".to_owned()), Just("/*".to_owned()),
                        Just("--".to_owned()), Just("\"".to_owned()), Just("end".to_owned()),
                        Just("rollback".to_owned()), Just("work".to_owned()), Just("and".to_owned()),
                        Just("prepare".to_owned()), Just("transaction".to_owned()), Just("\n".to_owned())],
            0..8,
        )) {
            let sql = pieces.join(" ");
            let split = |sql: &[u8]| {
                let all: Vec<End> = statements(sql).map(|s| end_of(&s)).collect();
                let commits = all.iter().any(|e| matches!(e, End::Commit | End::CommitChain | End::TwoPhase));
                let lone = (all.len() == 1).then(|| all[0]);
                (commits, lone == Some(End::Commit), lone == Some(End::Rollback))
            };
            let b = sql.as_bytes();
            prop_assert_eq!((commits(b), lone_commit(b), lone_rollback(b)), split(b), "{}", sql);
        }

        #[test]
        fn never_panics_on_sqlish_text(pieces in proptest::collection::vec(
            prop_oneof![piece(), Just("'".to_owned()), Just("$".to_owned()), Just("/*".to_owned()),
                        Just("--".to_owned()), Just("e'\\".to_owned()), Just("\"".to_owned())],
            0..30,
        )) {
            let sql = pieces.join("");
            for s in statements(sql.as_bytes()) {
                for _ in s.words() {}
            }
        }

        #[test]
        fn comments_between_tokens_change_nothing(
            pieces in proptest::collection::vec(piece(), 0..25),
            comments in proptest::collection::vec(
                prop_oneof![Just(" /* ; commit */ "), Just(" -- ; x\n"), Just(" /* a /* ; */ b */ "), Just(" ")],
                25,
            ),
        ) {
            let plain = pieces.join(" ");
            let commented: String = pieces
                .iter()
                .zip(&comments)
                .map(|(p, c)| format!("{c}{p}"))
                .collect();
            let a: Vec<Vec<Token>> = statements(plain.as_bytes()).map(|s| s.words().collect()).collect();
            let b: Vec<Vec<Token>> = statements(commented.as_bytes()).map(|s| s.words().collect()).collect();
            prop_assert_eq!(a, b);
            prop_assert_eq!(commits(plain.as_bytes()), commits(commented.as_bytes()));
        }
    }
}
