//! The console's commands as text: statements split on `;`, words (with
//! quoted names), and the command each statement is. Pure functions.

use super::result::{fail, Failure};

pub(super) const SYNTAX_ERROR: &str = "42601";

pub(super) const COMMANDS: &str = "SHOW POOLS|MEMBER_POOLS|STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS|DATABASES|LISTS|CLIENTS|SERVERS|USERS|CONFIG|MEM|TOPOLOGY|FAILOVERS|PEERS|VERSION|HELP, RELOAD, PAUSE [db], RESUME [db], RECONNECT [db], WAIT_CLOSE [db], DISABLE db, ENABLE db, KILL db, KILL <client id>, SHUTDOWN";

/// Splits a query into statements on `;` outside double quotes.
pub(super) fn statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in sql.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => {
                out.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&sql[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Words of a statement; `"a b"` is one word (`""` inside is a quote).
pub(super) fn words(stmt: &str) -> Result<Vec<String>, Failure> {
    let mut out = Vec::new();
    let mut chars = stmt.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut w = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        w.push('"');
                    }
                    Some('"') => break,
                    Some(c) => w.push(c),
                    None => return Err(fail(SYNTAX_ERROR, "unterminated quoted identifier")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                w.push(c);
                chars.next();
            }
        }
        out.push(w);
    }
    Ok(out)
}

/// What SHOW shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Show {
    Stats,
    StatsTotals,
    StatsAverages,
    Totals,
    Pools,
    MemberPools,
    Databases,
    Lists,
    Clients,
    Servers,
    Users,
    Config,
    Mem,
    Topology,
    Failovers,
    Peers,
    Version,
    Help,
}

impl Show {
    fn parse(word: &str) -> Option<Show> {
        Some(match word.to_ascii_uppercase().as_str() {
            "STATS" => Show::Stats,
            "STATS_TOTALS" => Show::StatsTotals,
            "STATS_AVERAGES" => Show::StatsAverages,
            "TOTALS" => Show::Totals,
            "POOLS" => Show::Pools,
            "MEMBER_POOLS" => Show::MemberPools,
            "DATABASES" => Show::Databases,
            "LISTS" => Show::Lists,
            "CLIENTS" => Show::Clients,
            "SERVERS" => Show::Servers,
            "USERS" => Show::Users,
            "CONFIG" => Show::Config,
            "MEM" => Show::Mem,
            "TOPOLOGY" => Show::Topology,
            "FAILOVERS" => Show::Failovers,
            "PEERS" => Show::Peers,
            "VERSION" => Show::Version,
            "HELP" => Show::Help,
            _ => return None,
        })
    }
}

/// One console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Command {
    Show(Show),
    Reload,
    /// `None`: every database.
    Pause(Option<String>),
    Resume(Option<String>),
    Reconnect(Option<String>),
    WaitClose(Option<String>),
    Disable(String),
    Enable(String),
    /// End every client of a database and pause it (PgBouncer's KILL db).
    KillDatabase(String),
    /// End one client, by the id SHOW CLIENTS shows (pgkeel's own).
    KillClient(u64),
    Shutdown,
}

impl Command {
    /// Whether a read-only (`stats_users`) login may run it.
    pub(super) fn read_only(&self) -> bool {
        matches!(self, Command::Show(_))
    }
}

/// The command `stmt` is, or why it is none.
pub(super) fn parse(stmt: &str) -> Result<Command, Failure> {
    let words = words(stmt)?;
    let Some(first) = words.first() else {
        return Err(unknown(stmt));
    };
    let verb = first.to_ascii_uppercase();
    let args = &words[1..];
    let none = |c: Command| {
        if args.is_empty() {
            Ok(c)
        } else {
            Err(fail(SYNTAX_ERROR, format!("{verb} takes no argument")))
        }
    };
    let optional_db = || match args {
        [] => Ok(None),
        [db] => Ok(Some(db.clone())),
        _ => Err(fail(
            SYNTAX_ERROR,
            format!("{verb} takes at most one database name"),
        )),
    };
    let db = || match args {
        [db] => Ok(db.clone()),
        _ => Err(fail(
            SYNTAX_ERROR,
            format!("{verb} takes one database name"),
        )),
    };
    match verb.as_str() {
        "SHOW" => match args {
            [] => Err(fail(
                SYNTAX_ERROR,
                format!("SHOW what? commands: {COMMANDS}"),
            )),
            [what] => Show::parse(what)
                .map(Command::Show)
                .ok_or_else(|| unknown(stmt)),
            _ => Err(fail(SYNTAX_ERROR, "SHOW takes one word, e.g. SHOW POOLS")),
        },
        "RELOAD" => none(Command::Reload),
        "SHUTDOWN" => none(Command::Shutdown),
        "PAUSE" => optional_db().map(Command::Pause),
        "RESUME" => optional_db().map(Command::Resume),
        "RECONNECT" => optional_db().map(Command::Reconnect),
        "WAIT_CLOSE" => optional_db().map(Command::WaitClose),
        "DISABLE" => db().map(Command::Disable),
        "ENABLE" => db().map(Command::Enable),
        "KILL" => match args {
            [a] => Ok(match a.parse::<u64>() {
                Ok(id) => Command::KillClient(id),
                Err(_) => Command::KillDatabase(a.clone()),
            }),
            _ => Err(fail(
                SYNTAX_ERROR,
                "KILL takes a database name, or a client id (the id column of SHOW CLIENTS)",
            )),
        },
        _ => Err(unknown(stmt)),
    }
}

pub(super) fn unknown(stmt: &str) -> Failure {
    fail(
        SYNTAX_ERROR,
        format!("unknown admin console command {stmt:?}; commands: {COMMANDS}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes() {
        assert_eq!(statements("show pools;"), vec!["show pools"]);
        assert_eq!(statements(" ; ;"), Vec::<&str>::new());
        assert_eq!(
            statements("PAUSE \"a;b\"; RESUME \"a;b\""),
            vec!["PAUSE \"a;b\"", "RESUME \"a;b\""]
        );
    }

    #[test]
    fn words_keep_quoted_names_whole() {
        let w = words("pause \"My \"\"DB\"\"\"").ok().unwrap();
        assert_eq!(w, vec!["pause", "My \"DB\""]);
        assert!(words("pause \"open").is_err());
        assert_eq!(words("KILL   7").ok().unwrap(), vec!["KILL", "7"]);
    }

    fn ok(s: &str) -> Command {
        parse(s).unwrap_or_else(|f| panic!("{s}: {}", f.message))
    }

    fn code(s: &str) -> &'static str {
        parse(s).err().map(|f| f.code).unwrap_or("ok")
    }

    #[test]
    fn commands_parse_like_pgbouncer() {
        assert_eq!(ok("show stats_totals"), Command::Show(Show::StatsTotals));
        assert_eq!(ok("SHOW Databases"), Command::Show(Show::Databases));
        assert_eq!(ok("PAUSE"), Command::Pause(None));
        assert_eq!(ok("pause appdb"), Command::Pause(Some("appdb".into())));
        assert_eq!(ok("RECONNECT"), Command::Reconnect(None));
        assert_eq!(
            ok("wait_close \"a b\""),
            Command::WaitClose(Some("a b".into()))
        );
        assert_eq!(ok("DISABLE appdb"), Command::Disable("appdb".into()));
        assert_eq!(ok("KILL appdb"), Command::KillDatabase("appdb".into()));
        assert_eq!(ok("KILL 12"), Command::KillClient(12));
        assert_eq!(ok("shutdown"), Command::Shutdown);
        for bad in [
            "SHOW",
            "SHOW POOLS now",
            "SHOW NOTHING",
            "DISABLE",
            "ENABLE a b",
            "KILL",
            "RELOAD x",
            "PAUSE a b",
            "FROB",
        ] {
            assert_eq!(code(bad), SYNTAX_ERROR, "{bad}");
        }
    }

    #[test]
    fn only_show_is_read_only() {
        assert!(ok("SHOW POOLS").read_only());
        for c in [
            "PAUSE",
            "RESUME",
            "RELOAD",
            "KILL a",
            "KILL 1",
            "RECONNECT",
            "WAIT_CLOSE",
            "DISABLE a",
            "ENABLE a",
            "SHUTDOWN",
        ] {
            assert!(!ok(c).read_only(), "{c}");
        }
    }
}
