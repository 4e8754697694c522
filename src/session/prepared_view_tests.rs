//! Unit tests of `prepared_view.rs`: where the view is found and what
//! stands in for it.

use super::*;
use crate::classify::words::Tokens;

fn row<'a>(name: &'a str, statement: &'a str) -> Shown<'a> {
    Shown {
        name: name.as_bytes(),
        statement: statement.as_bytes(),
        prepared_at: UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_000_042),
        server_name: b"pgkeel_00_1",
        declared: vec![23, 0],
        from_sql: false,
    }
}

fn rewritten(sql: &str, rows: &[Shown]) -> Option<String> {
    rewrite(sql.as_bytes(), rows).map(|v| String::from_utf8(v).unwrap())
}

#[test]
fn the_relation_is_replaced_and_aliased() {
    let got = rewritten(
        "select name from pg_prepared_statements where name != ''",
        &[],
    )
    .unwrap();
    assert!(got.starts_with("select name from (SELECT c.name"), "{got}");
    assert!(
        got.ends_with(") AS pg_prepared_statements where name != ''"),
        "{got}"
    );
    let got = rewritten("SELECT * FROM pg_catalog.PG_PREPARED_STATEMENTS", &[]).unwrap();
    assert!(got.starts_with("SELECT * FROM (SELECT"), "{got}");
    assert!(got.ends_with("AS pg_prepared_statements"), "{got}");
    let got = rewritten(
        "select p.name from \"pg_catalog\".\"pg_prepared_statements\" p",
        &[],
    )
    .unwrap();
    assert!(got.starts_with("select p.name from (SELECT"), "{got}");
    assert!(got.ends_with(") p"), "{got}: the query's alias is kept");
}

#[test]
fn strings_comments_columns_and_other_schemas_are_left_alone() {
    for sql in [
        "select 'pg_prepared_statements'",
        "select 1 -- from pg_prepared_statements",
        "select $$pg_prepared_statements$$",
        "select myschema.pg_prepared_statements.x from myschema.pg_prepared_statements",
        "select \"PG_PREPARED_STATEMENTS\" from t",
    ] {
        assert_eq!(rewritten(sql, &[]), None, "{sql}");
    }
    let got = rewritten(
        "select pg_prepared_statements.name from pg_prepared_statements",
        &[],
    )
    .unwrap();
    assert!(
        got.starts_with("select pg_prepared_statements.name from (SELECT"),
        "{got}"
    );
}

#[test]
fn rows_are_literals_that_survive_any_text() {
    let tricky = "select '$k$', $k1$x$k1$ -- $k";
    let got = rewritten(
        "select * from pg_prepared_statements",
        &[row("a$k", tricky)],
    )
    .unwrap();
    assert!(got.contains("to_timestamp(1700000000.000042)"), "{got}");
    assert!(
        got.contains("'{23,0}'::oid[]::regtype[], false, $k$pgkeel_00_1$k$"),
        "{got}"
    );
    // Every literal comes back whole: the lexer reads the values as given.
    let strings: Vec<&[u8]> = Tokens::new(got.as_bytes())
        .filter_map(|t| match t {
            crate::classify::words::Token::DollarString(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(
        strings,
        [&b"a$k"[..], tricky.as_bytes(), b"pgkeel_00_1"],
        "{got}"
    );
}

#[test]
fn mentions_ignores_case_and_declared_types_read_the_parse_body() {
    assert!(mentions(b"SELECT * FROM Pg_Prepared_Statements"));
    assert!(!mentions(b"select 1"));
    assert!(!mentions(b""));
    assert_eq!(declared_types(b"\0\x02\0\0\0\x17\0\0\0\0"), vec![23, 0]);
    assert_eq!(declared_types(b"\0\0"), Vec::<u32>::new());
    assert_eq!(
        declared_types(b"\0\x05\0\0\0\x17"),
        vec![23],
        "short body: what is there"
    );
}

proptest::proptest! {
    /// Whatever the client's names and texts (any bytes), each comes back
    /// whole as one literal of the rewritten query, and the query's own
    /// text around the view is kept.
    #[test]
    fn any_names_and_texts_stay_literals(
        values in proptest::collection::vec(
            (proptest::collection::vec(proptest::sample::select(b"$k1a'\"; \\-*/x".to_vec()), 0..12),
             proptest::collection::vec(proptest::num::u8::ANY, 0..24)),
            0..4),
        tail in "[ a-z=0-9']{0,12}",
    ) {
        let rows: Vec<Shown> = values
            .iter()
            .map(|(name, text)| Shown {
                name,
                statement: text,
                prepared_at: UNIX_EPOCH,
                server_name: b"pgkeel_0_1",
                declared: Vec::new(),
                from_sql: false,
            })
            .collect();
        let sql = format!("select 1 from pg_prepared_statements where {tail}");
        let got = rewrite(sql.as_bytes(), &rows).unwrap();
        let strings: Vec<&[u8]> = Tokens::new(&got)
            .filter_map(|t| match t {
                crate::classify::words::Token::DollarString(s) => Some(s),
                _ => None,
            })
            .collect();
        let want: Vec<&[u8]> = values
            .iter()
            .flat_map(|(n, t)| [&n[..], &t[..], b"pgkeel_0_1"])
            .collect();
        proptest::prop_assert_eq!(&strings[..want.len()], &want[..]);
        proptest::prop_assert!(got.starts_with(b"select 1 from (SELECT"));
        let end = format!(") AS pg_prepared_statements where {tail}");
        proptest::prop_assert!(got.ends_with(end.as_bytes()));
    }
}
