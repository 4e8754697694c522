//! Which statements are read-only, for deciding what may be retried on
//! another server after a failure.
//!
//! Deliberately conservative and lexical: a statement counts as read-only
//! only when it is one SELECT/SHOW/VALUES/TABLE with no locking clause, no
//! INTO, and no function call outside a list of built-in functions known
//! not to write. Anything else (a user function, nextval(), a CTE that
//! writes, two statements) is "may write". A false "may write" costs a
//! retry; a false "read-only" could run a write twice, so every doubt goes
//! that way. The read/write split replaces this with the PostgreSQL parser.

/// Built-in functions that never write and need no particular server.
const READ_ONLY_FUNCTIONS: &[&str] = &[
    "abs",
    "array_agg",
    "array_length",
    "avg",
    "bool_and",
    "bool_or",
    "btrim",
    "ceil",
    "char_length",
    "coalesce",
    "concat",
    "count",
    "current_database",
    "current_date",
    "current_schema",
    "current_setting",
    "current_time",
    "current_timestamp",
    "current_user",
    "date_part",
    "date_trunc",
    "extract",
    "floor",
    "format",
    "greatest",
    "inet_server_addr",
    "inet_server_port",
    "jsonb_agg",
    "json_agg",
    "least",
    "length",
    "localtimestamp",
    "lower",
    "ltrim",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nullif",
    "pg_backend_pid",
    "pg_is_in_recovery",
    "pg_last_wal_replay_lsn",
    "pg_postmaster_start_time",
    "position",
    "random",
    "repeat",
    "replace",
    "round",
    "row_number",
    "rtrim",
    "session_user",
    "sqrt",
    "statement_timestamp",
    "string_agg",
    "substr",
    "substring",
    "sum",
    "to_char",
    "to_timestamp",
    "trim",
    "trunc",
    "upper",
    "version",
    "generate_series",
    "unnest",
    "exists",
];

/// Keywords followed by `(` that are syntax, not function calls.
const SYNTAX_BEFORE_PAREN: &[&str] = &[
    "in",
    "any",
    "all",
    "some",
    "values",
    "from",
    "join",
    "on",
    "and",
    "or",
    "not",
    "as",
    "select",
    "where",
    "when",
    "then",
    "else",
    "case",
    "over",
    "partition",
    "by",
    "filter",
    "within",
    "group",
    "distinct",
    "lateral",
    "using",
    "array",
    "row",
    "cast",
    "is",
    "between",
    "like",
    "ilike",
    "having",
    "limit",
    "offset",
    "order",
    "with",
    "interval",
    "numeric",
    "decimal",
    "varchar",
    "char",
    "timestamp",
    "time",
    "union",
    "intersect",
    "except",
    "asc",
    "desc",
];

/// Words that make a statement write or lock, wherever they appear.
const WRITING_WORDS: &[&str] = &[
    "insert", "update", "delete", "merge", "into", "for", "lock", "call", "do", "copy", "create",
    "alter", "drop", "truncate", "grant", "revoke", "set", "reset", "listen", "notify", "prepare",
    "execute", "nextval", "setval",
];

/// Strips comments, string literals and quoted identifiers' contents; lowercases.
fn normalize(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = sql[i + 2..].find("*/")?;
                i += end + 4;
                out.push(' ');
            }
            b'\'' => {
                i += 1;
                loop {
                    match b.get(i)? {
                        b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
                        b'\'' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
                out.push_str(" '' ");
            }
            b'"' => {
                // A quoted identifier could name a function: keep it as a word.
                let end = sql[i + 1..].find('"')?;
                out.push_str(&sql[i + 1..i + 1 + end].to_ascii_lowercase());
                i += end + 2;
            }
            // Dollar quoting: give up (function bodies, DO blocks).
            b'$' if b
                .get(i + 1)
                .is_some_and(|c| *c == b'$' || c.is_ascii_alphabetic()) =>
            {
                return None
            }
            c => {
                out.push(c.to_ascii_lowercase() as char);
                i += 1;
            }
        }
    }
    Some(out)
}

/// True when `sql` is certainly a read-only statement (see the module docs).
pub fn is_read_only(sql: &str) -> bool {
    let Some(text) = normalize(sql) else {
        return false;
    };
    let text = text.trim().trim_end_matches(';').trim_end();
    if text.contains(';') {
        return false;
    }
    let words: Vec<(usize, &str)> = text
        .match_indices(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .scan(0usize, |start, (idx, _)| {
            let w = (*start, &text[*start..idx]);
            *start = idx + 1;
            Some(w)
        })
        .chain(std::iter::once({
            let last = text
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                .map_or(0, |i| i + 1);
            (last, &text[last..])
        }))
        .filter(|(_, w)| !w.is_empty())
        .collect();
    let Some((_, first)) = words.first() else {
        return false;
    };
    if !matches!(*first, "select" | "show" | "values" | "table") {
        return false;
    }
    for (pos, w) in &words {
        if WRITING_WORDS.contains(w) {
            return false;
        }
        let after = text[pos + w.len()..].trim_start();
        if after.starts_with('(') && !w.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            let name = w.rsplit('.').next().unwrap_or(w);
            if !(READ_ONLY_FUNCTIONS.contains(&name) || SYNTAX_BEFORE_PAREN.contains(&name)) {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::is_read_only;

    #[test]
    fn plain_reads_are_read_only() {
        for q in [
            "SELECT 1",
            "select abalance from pgbench_accounts where aid = 42;",
            "SELECT count(*), max(id) FROM t WHERE x IN (1, 2) AND y = 'it''s; insert'",
            "SHOW search_path",
            "VALUES (1), (2)",
            "TABLE t",
            "SELECT inet_server_port(), pg_is_in_recovery() -- comment; delete",
            "/* hint */ SELECT now()",
            "SELECT \"Weird\".col FROM \"Weird\"",
        ] {
            assert!(is_read_only(q), "{q}");
        }
    }

    #[test]
    fn anything_that_may_write_is_not() {
        for q in [
            "INSERT INTO t VALUES (1)",
            "SELECT nextval('s')",
            "SELECT my_function(1)",
            "SELECT public.do_things()",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * INTO new_t FROM t",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "SELECT 1; DELETE FROM t",
            "SELECT pg_advisory_lock(1)",
            "SELECT set_config('a', 'b', false)",
            "SELECT $$text$$",
            "BEGIN",
            "SELECT 'unterminated",
            "",
            "SELECT \"my_func\"(1)",
        ] {
            assert!(!is_read_only(q), "{q}");
        }
    }
}
