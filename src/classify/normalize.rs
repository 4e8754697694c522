//! The routing key of a statement: its text with literals replaced by `?`,
//! comments removed, whitespace collapsed and unquoted words lowercased, so
//! `SELECT * FROM t WHERE id = 7` and `select * from t where id = 42` share
//! one cached classification. One pass, no allocation once `out` has grown.
//!
//! Literals never change what a statement does to the database (the one
//! exception, `SET default_transaction_read_only`, is never cached), and
//! comments never do either, except pgkeel's own routing hints, which are
//! picked out on the way.

/// A routing hint in a comment: `/* pgkeel: replica */`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    Primary,
    Replica,
    Any,
}

const fn ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

// Byte classes: what may start at a byte.
const OTHER: u8 = 0;
const SPACE: u8 = 1;
/// A letter, `_` or a non-ASCII byte: a word starts.
const WORD: u8 = 2;
const DIGIT: u8 = 3;
const DASH: u8 = 4;
const SLASH: u8 = 5;
const QUOTE: u8 = 6;
const DQUOTE: u8 = 7;
const DOLLAR: u8 = 8;
const DOT: u8 = 9;

const CLASS: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = match c {
            _ if c.is_ascii_whitespace() => SPACE,
            _ if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => WORD,
            _ if c.is_ascii_digit() => DIGIT,
            b'-' => DASH,
            b'/' => SLASH,
            b'\'' => QUOTE,
            b'"' => DQUOTE,
            b'$' => DOLLAR,
            b'.' => DOT,
            _ => OTHER,
        };
        i += 1;
    }
    t
};

/// Bytes that continue a word (`ident_byte`), by table.
const IDENT: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ident_byte(i as u8);
        i += 1;
    }
    t
};

/// Where the number whose first byte ends before `i` ends.
fn number_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        match b[i] {
            b'e' | b'E' if matches!(b.get(i + 1), Some(b'+' | b'-')) => i += 2,
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' => i += 1,
            _ => break,
        }
    }
    i
}

fn hint_in(comment: &[u8]) -> Option<Hint> {
    let at = comment
        .windows(7)
        .position(|w| w.eq_ignore_ascii_case(b"pgkeel:"))?;
    let rest = &comment[at + 7..];
    let start = rest.iter().position(|c| !c.is_ascii_whitespace())?;
    let word: Vec<u8> = rest[start..]
        .iter()
        .take_while(|c| c.is_ascii_alphabetic())
        .map(u8::to_ascii_lowercase)
        .collect();
    match &word[..] {
        b"primary" => Some(Hint::Primary),
        b"replica" => Some(Hint::Replica),
        b"any" => Some(Hint::Any),
        _ => None,
    }
}

/// What `normalize_key` found besides the key itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Normalized {
    /// The first routing hint in a comment.
    pub hint: Option<Hint>,
    /// A literal was replaced by `?`, or a comment dropped: the text is one
    /// of many with this key (with neither, the text itself recurs, as a
    /// prepared statement's does).
    pub literals: bool,
}

/// Writes the routing key of `sql` into `out` (cleared first) and returns
/// the first routing hint found in a comment.
pub fn normalize(sql: &[u8], out: &mut Vec<u8>) -> Option<Hint> {
    normalize_key(sql, out).hint
}

/// `normalize`, also telling whether the text had literals.
pub fn normalize_key(sql: &[u8], out: &mut Vec<u8>) -> Normalized {
    out.clear();
    let b = sql;
    let mut hint = None;
    let mut literals = false;
    let mut space = false;
    let mut i = 0;
    // Pushes a token, with one space before it if whitespace preceded it.
    macro_rules! token_start {
        () => {
            if space && !out.is_empty() {
                out.push(b' ');
            }
            space = false;
        };
    }
    while i < b.len() {
        let c = b[i];
        // One table load picks the arm, where a chain of tests did.
        match CLASS[c as usize] {
            SPACE => {
                space = true;
                i += 1;
            }
            DASH if b.get(i + 1) == Some(&b'-') => {
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p);
                hint = hint.or_else(|| hint_in(&b[i + 2..end]));
                // Comments vary (trace ids...) where the statement does not.
                literals = true;
                space = true;
                i = end;
            }
            SLASH if b.get(i + 1) == Some(&b'*') => {
                // Comments nest in PostgreSQL.
                let start = i + 2;
                let mut depth = 1;
                i += 2;
                while i < b.len() && depth > 0 {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
                hint = hint.or_else(|| hint_in(&b[start..i.min(b.len())]));
                literals = true;
                space = true;
            }
            QUOTE => {
                // E'...' strings take backslash escapes.
                let escapes =
                    i > 0 && matches!(b[i - 1], b'e' | b'E') && (i < 2 || !ident_byte(b[i - 2]));
                token_start!();
                literals = true;
                out.push(b'?');
                i += 1;
                while i < b.len() {
                    match b[i] {
                        b'\\' if escapes => i += 2,
                        b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
                        b'\'' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            DQUOTE => {
                token_start!();
                let start = i;
                i += 1;
                while i < b.len() {
                    if b[i] == b'"' {
                        if b.get(i + 1) == Some(&b'"') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i = (i + 1).min(b.len());
                out.extend_from_slice(&b[start..i]);
            }
            DOLLAR if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                // A parameter, $1.
                token_start!();
                let start = i;
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                out.extend_from_slice(&b[start..i]);
            }
            DOLLAR => {
                // Dollar quoting: $tag$ ... $tag$.
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80))
                    .map(|p| i + 1 + p);
                token_start!();
                match tag_end {
                    Some(e) if b[e] == b'$' => {
                        let tag = &b[i..=e];
                        let body = e + 1;
                        let close = b[body..]
                            .windows(tag.len())
                            .position(|w| w == tag)
                            .map_or(b.len(), |p| body + p + tag.len());
                        literals = true;
                        out.push(b'?');
                        i = close;
                    }
                    _ => {
                        out.push(b'$');
                        i += 1;
                    }
                }
            }
            DIGIT => {
                token_start!();
                literals = true;
                out.push(b'?');
                i = number_end(b, i + 1);
            }
            DOT if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                token_start!();
                literals = true;
                out.push(b'?');
                i = number_end(b, i + 1);
            }
            WORD => {
                token_start!();
                // Found whole, then copied in one go (one capacity check).
                let start = i;
                i += 1;
                while i < b.len() && IDENT[b[i] as usize] {
                    i += 1;
                }
                out.extend(b[start..i].iter().map(u8::to_ascii_lowercase));
            }
            _ => {
                token_start!();
                out.push(c);
                i += 1;
            }
        }
    }
    while matches!(out.last(), Some(b';' | b' ')) {
        out.pop();
    }
    Normalized { hint, literals }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sql: &str) -> (String, Option<Hint>) {
        let mut out = Vec::new();
        let h = normalize(sql.as_bytes(), &mut out);
        (String::from_utf8(out).unwrap(), h)
    }

    #[test]
    fn literals_comments_and_case_go() {
        assert_eq!(
            key("SELECT abalance FROM pgbench_accounts WHERE aid = 42;").0,
            "select abalance from pgbench_accounts where aid = ?"
        );
        assert_eq!(
            key("select  abalance\n from pgbench_accounts where aid = 7").0,
            key("SELECT abalance FROM pgbench_accounts WHERE aid = 12345").0
        );
        assert_eq!(
            key("SELECT 'it''s', E'a\\'b', $$x$$, $t$ y $t$, 1.5e-3, .5, x1 FROM t2 -- c").0,
            "select ?, e?, ?, ?, ?, ?, x1 from t2"
        );
        assert_eq!(
            key("SELECT \"Mixed\"\"Case\" FROM /* a /* nested */ comment */ t WHERE a=$1").0,
            "select \"Mixed\"\"Case\" from t where a=$1"
        );
        assert_eq!(
            key("SELECT 'Ünïcode', ünï FROM t").0,
            "select ?, ünï from t"
        );
    }

    #[test]
    fn literals_and_comments_are_noted() {
        let noted = |sql: &str| normalize_key(sql.as_bytes(), &mut Vec::new()).literals;
        assert!(!noted("SELECT a FROM t WHERE id = $1"));
        assert!(!noted("select \"x1\" from t2"));
        for sql in [
            "SELECT 1",
            "SELECT 'a'",
            "SELECT $$a$$",
            "SELECT a -- c",
            "/* c */ BEGIN",
        ] {
            assert!(noted(sql), "{sql}");
        }
    }

    #[test]
    fn hints_are_found() {
        assert_eq!(
            key("/* pgkeel: replica */ SELECT 1"),
            ("select ?".into(), Some(Hint::Replica))
        );
        assert_eq!(key("SELECT 1 -- pgkeel:primary").1, Some(Hint::Primary));
        assert_eq!(key("/* PGKEEL: Any */ SELECT 1").1, Some(Hint::Any));
        assert_eq!(key("/* pgkeel: nowhere */ SELECT 1").1, None);
        assert_eq!(
            key("SELECT '/* pgkeel: replica */'").1,
            None,
            "not in a literal"
        );
    }

    #[test]
    fn unterminated_input_does_not_panic() {
        for s in [
            "'abc",
            "\"abc",
            "/* abc",
            "$tag$ abc",
            "E'\\",
            "$",
            "1e+",
            "--",
        ] {
            key(s);
        }
    }
}
