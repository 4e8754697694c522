//! The admin console: `psql -h HOST -p 54320 -U admin pgkeel`.
//!
//! A login to `[admin] database` by a user in `[admin] users` lands here
//! instead of in a pooled session. It speaks the simple Query protocol only
//! (as PgBouncer's console does) and answers SHOW commands with real result
//! sets, typed like PgBouncer's where the concept matches, so scripts and
//! dashboards written for PgBouncer adapt easily. RELOAD, PAUSE, RESUME and
//! KILL act on the running instance.

mod show;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::tls::Stream;
use bytes::{BufMut, BytesMut};
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};
use pgwire::messages::response::{CommandComplete, EmptyQueryResponse, NoticeResponse};
use pgwire::messages::startup::Authentication;
use pgwire::messages::Message;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::clients::{ClientSpec, ClientState, Registered};
use crate::config::ListenerRoute;
use crate::protocol::{self, sqlstate, Severity};
use crate::session::startup::AdminLogin;
use crate::shared::Shared;

/// Console queries are short; anything longer is not one of its commands.
const MAX_MESSAGE: usize = 64 << 10;

/// How long KILL waits for the client's session to end.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// How often PAUSE looks whether in-flight transactions have finished.
const PAUSE_POLL: Duration = Duration::from_millis(20);

const SYNTAX_ERROR: &str = "42601";
const UNDEFINED_OBJECT: &str = "42704";
const NOT_IN_PREREQUISITE_STATE: &str = "55000";
const CONFIG_FILE_ERROR: &str = "F0000";
const QUERY_CANCELED: &str = "57014";

const COMMANDS: &str = "SHOW POOLS|CLIENTS|SERVERS|STATS|TOPOLOGY|FAILOVERS|CONFIG|VERSION|HELP, RELOAD, PAUSE [db], RESUME [db], KILL <client id>";

/// Column types, with PostgreSQL's OIDs and sizes (PgBouncer uses int4 for
/// counts of clients and servers, int8 for totals, text for times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Type {
    Text,
    Int4,
    Int8,
    Bool,
    Float8,
}

impl Type {
    fn oid(self) -> u32 {
        match self {
            Type::Text => 25,
            Type::Int4 => 23,
            Type::Int8 => 20,
            Type::Bool => 16,
            Type::Float8 => 701,
        }
    }

    fn size(self) -> i16 {
        match self {
            Type::Text => -1,
            Type::Int4 => 4,
            Type::Int8 | Type::Float8 => 8,
            Type::Bool => 1,
        }
    }
}

/// A result set in text format: column names and types, then rows (`None` is NULL).
pub(crate) struct ResultSet {
    columns: Vec<(&'static str, Type)>,
    rows: Vec<Vec<Option<String>>>,
}

impl ResultSet {
    pub(crate) fn new(columns: &[(&'static str, Type)]) -> ResultSet {
        ResultSet {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, row: Vec<Option<String>>) {
        debug_assert_eq!(row.len(), self.columns.len(), "row width");
        self.rows.push(row);
    }

    fn encode(&self, out: &mut BytesMut) {
        let fields = self
            .columns
            .iter()
            .map(|(name, t)| {
                FieldDescription::new((*name).to_owned(), 0, 0, t.oid(), t.size(), -1, 0)
            })
            .collect();
        RowDescription::new(fields)
            .encode(out)
            .expect("a RowDescription always encodes");
        for row in &self.rows {
            let mut data = BytesMut::new();
            for v in row {
                match v {
                    Some(s) => {
                        data.put_i32(s.len() as i32);
                        data.put_slice(s.as_bytes());
                    }
                    None => data.put_i32(-1),
                }
            }
            DataRow::new(data, row.len() as i16)
                .encode(out)
                .expect("a DataRow always encodes");
        }
        put_complete(out, "SHOW");
    }
}

/// Cell helpers: text, numbers, booleans, times.
pub(crate) fn text(s: impl Into<String>) -> Option<String> {
    Some(s.into())
}

pub(crate) fn num(n: impl ToString) -> Option<String> {
    Some(n.to_string())
}

pub(crate) fn boolean(b: bool) -> Option<String> {
    Some(if b { "t" } else { "f" }.to_owned())
}

pub(crate) fn time(t: SystemTime) -> Option<String> {
    Some(format_time(t))
}

/// `2026-11-29 19:39:02 UTC`, as PgBouncer writes its times (in UTC here).
pub(crate) fn format_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn put_complete(out: &mut BytesMut, tag: &str) {
    CommandComplete::new(tag.to_owned())
        .encode(out)
        .expect("a CommandComplete always encodes");
}

fn put_notice(out: &mut BytesMut, severity: &str, message: String) {
    NoticeResponse::new(vec![
        (b'S', severity.to_owned()),
        (b'V', severity.to_owned()),
        (
            b'C',
            if severity == "WARNING" {
                "01000"
            } else {
                "00000"
            }
            .to_owned(),
        ),
        (b'M', message),
    ])
    .encode(out)
    .expect("a NoticeResponse always encodes");
}

/// What a command answers.
enum Reply {
    Rows(ResultSet),
    /// A command tag, after notices (severity, message).
    Done(&'static str, Vec<(&'static str, String)>),
}

/// A command's error: SQLSTATE and message.
struct Failure {
    code: &'static str,
    message: String,
}

fn fail(code: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

/// Splits a query into statements on `;` outside double quotes.
fn statements(sql: &str) -> Vec<&str> {
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
fn words(stmt: &str) -> Result<Vec<String>, Failure> {
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

/// One admin console connection.
struct Console {
    shared: Arc<Shared>,
    stream: Stream,
    buf: BytesMut,
    registered: Registered,
    cancel: crate::cancel::Registration,
    shutdown: watch::Receiver<bool>,
    user: String,
    /// After an extended-protocol message, everything up to Sync is dropped.
    skip_until_sync: bool,
}

/// Serves an admin console login to the end.
pub async fn serve(
    shared: Arc<Shared>,
    stream: Stream,
    peer: SocketAddr,
    listener: ListenerRoute,
    login: AdminLogin,
) {
    let cancel = shared.cancels.register();
    let application_name = login
        .params
        .iter()
        .find(|(k, _)| k == "application_name")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let registered = shared.clients.register(ClientSpec {
        peer,
        local: stream.local_addr().ok(),
        user: login.user.name.clone(),
        database: shared.config.load().admin.database.clone(),
        application_name: application_name.clone(),
        listener,
        admin: true,
        cancel: cancel.slot.clone(),
    });
    let mut console = Console {
        shutdown: shared.shutdown.clone(),
        shared,
        stream,
        buf: login.pending,
        registered,
        cancel,
        user: login.user.name,
        skip_until_sync: false,
    };
    let mut out = BytesMut::new();
    Authentication::Ok
        .encode(&mut out)
        .expect("AuthenticationOk always encodes");
    let version = format!("{}/pgkeel", env!("CARGO_PKG_VERSION"));
    for (k, v) in [
        ("server_version", version.as_str()),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("is_superuser", "off"),
        ("session_authorization", console.user.as_str()),
        ("application_name", application_name.as_str()),
    ] {
        protocol::put_parameter_status(&mut out, k, v);
    }
    protocol::put_backend_key(&mut out, console.cancel.pid, console.cancel.secret);
    protocol::put_ready(&mut out, protocol::TxStatus::Idle);
    if console.stream.write_all(&out).await.is_err() {
        return;
    }
    let reason = console.run().await;
    tracing::debug!(%peer, reason, "admin console session ended");
}

impl Console {
    async fn run(&mut self) -> &'static str {
        loop {
            let msg = tokio::select! {
                m = protocol::read_message(&mut self.stream, &mut self.buf, MAX_MESSAGE) => m,
                _ = self.registered.killed() => {
                    self.fatal(sqlstate::ADMIN_SHUTDOWN, "terminating connection due to administrator command (KILL from pgkeel's admin console)").await;
                    return "killed";
                }
                _ = self.shutdown.changed() => {
                    self.fatal(sqlstate::ADMIN_SHUTDOWN, "terminating connection because pgkeel is shutting down").await;
                    return "shutdown";
                }
            };
            let (typ, body) = match msg {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return "client closed the connection"
                }
                Err(e) => {
                    self.fatal(sqlstate::PROTOCOL_VIOLATION, &e.to_string())
                        .await;
                    return "protocol violation";
                }
            };
            let mut out = BytesMut::new();
            match typ {
                b'X' => return "client terminated",
                b'Q' if self.skip_until_sync => {}
                b'Q' => {
                    if let Some(why) = self.no_longer_admin() {
                        self.fatal(sqlstate::INSUFFICIENT_PRIVILEGE, &why).await;
                        return "no longer an admin";
                    }
                    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                    let sql = String::from_utf8_lossy(&body[..end]).into_owned();
                    self.registered.info.set_state(ClientState::Active);
                    self.query(&sql, &mut out).await;
                    self.registered.info.set_state(ClientState::Idle);
                    protocol::put_ready(&mut out, protocol::TxStatus::Idle);
                }
                b'P' | b'B' | b'D' | b'E' | b'C' => {
                    if !self.skip_until_sync {
                        self.skip_until_sync = true;
                        protocol::put_error(
                            &mut out,
                            Severity::Error,
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            "the admin console supports only simple queries (the simple Query protocol, as psql sends)",
                        );
                    }
                }
                b'S' => {
                    self.skip_until_sync = false;
                    protocol::put_ready(&mut out, protocol::TxStatus::Idle);
                }
                b'F' => {
                    protocol::put_error(
                        &mut out,
                        Severity::Error,
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "the admin console supports only simple queries",
                    );
                    protocol::put_ready(&mut out, protocol::TxStatus::Idle);
                }
                // Flush has nothing to flush; stray COPY messages are ignored, as PostgreSQL does.
                b'H' | b'd' | b'c' | b'f' => {}
                t => {
                    self.fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        &format!("invalid frontend message type {t}"),
                    )
                    .await;
                    return "protocol violation";
                }
            }
            if !out.is_empty() && self.stream.write_all(&out).await.is_err() {
                return "client gone";
            }
        }
    }

    /// After a reload: the reason to end the session if this user is no
    /// longer allowed in the console.
    fn no_longer_admin(&self) -> Option<String> {
        let cfg = self.shared.config.load();
        (!cfg.admin.users.contains(&self.user)).then(|| {
            format!(
                "terminating connection: user \"{}\" is no longer in [admin] users",
                self.user
            )
        })
    }

    async fn fatal(&mut self, code: &str, msg: &str) {
        let mut out = BytesMut::new();
        protocol::put_error(&mut out, Severity::Fatal, code, msg);
        let _ = self.stream.write_all(&out).await;
    }

    /// Runs each statement of a simple Query; the first error ends it.
    async fn query(&mut self, sql: &str, out: &mut BytesMut) {
        let stmts = statements(sql);
        if stmts.is_empty() {
            EmptyQueryResponse::new()
                .encode(out)
                .expect("an EmptyQueryResponse always encodes");
            return;
        }
        for stmt in stmts {
            match self.execute(stmt).await {
                Ok(Reply::Rows(rs)) => rs.encode(out),
                Ok(Reply::Done(tag, notices)) => {
                    for (severity, message) in notices {
                        put_notice(out, severity, message);
                    }
                    put_complete(out, tag);
                }
                Err(f) => {
                    self.shared
                        .metrics
                        .errors_total
                        .with_label_values(&[f.code])
                        .inc();
                    protocol::put_error(out, Severity::Error, f.code, &f.message);
                    return;
                }
            }
        }
    }

    async fn execute(&mut self, stmt: &str) -> Result<Reply, Failure> {
        let words = words(stmt)?;
        let verb = words[0].to_ascii_uppercase();
        let args = &words[1..];
        let no_args = |what: &str| {
            if args.is_empty() {
                Ok(())
            } else {
                Err(fail(SYNTAX_ERROR, format!("{what} takes no argument")))
            }
        };
        match verb.as_str() {
            "SHOW" => {
                let Some(what) = args.first() else {
                    return Err(fail(
                        SYNTAX_ERROR,
                        format!("SHOW what? commands: {COMMANDS}"),
                    ));
                };
                if args.len() > 1 {
                    return Err(fail(SYNTAX_ERROR, "SHOW takes one word, e.g. SHOW POOLS"));
                }
                let s = &self.shared;
                let rs = match what.to_ascii_uppercase().as_str() {
                    "POOLS" => show::pools(s),
                    "CLIENTS" => show::clients(s),
                    "SERVERS" => show::servers(s),
                    "STATS" => show::stats(s),
                    "TOPOLOGY" => show::topology(s),
                    "FAILOVERS" => show::failovers(s),
                    "CONFIG" => show::config(s),
                    "VERSION" => show::version(),
                    "HELP" => show::help(),
                    _ => return Err(unknown(stmt)),
                };
                Ok(Reply::Rows(rs))
            }
            "RELOAD" => {
                no_args("RELOAD")?;
                self.reload()
            }
            "PAUSE" | "RESUME" => {
                if args.len() > 1 {
                    return Err(fail(
                        SYNTAX_ERROR,
                        format!("{verb} takes at most one database name"),
                    ));
                }
                let db = args.first().map(String::as_str);
                if verb == "PAUSE" {
                    self.pause(db).await
                } else {
                    self.resume(db)
                }
            }
            "KILL" => {
                let id = match args {
                    [id] => id.parse::<u64>().ok(),
                    _ => None,
                }
                .ok_or_else(|| {
                    fail(
                        SYNTAX_ERROR,
                        "KILL takes a client id (the id column of SHOW CLIENTS)",
                    )
                })?;
                self.kill(id).await
            }
            _ => Err(unknown(stmt)),
        }
    }

    fn reload(&mut self) -> Result<Reply, Failure> {
        let Some(path) = self.shared.config_info.load().path.clone() else {
            return Err(fail(
                NOT_IN_PREREQUISITE_STATE,
                "pgkeel was started without a configuration file: nothing to reload",
            ));
        };
        tracing::info!(user = %self.user, path, "RELOAD from the admin console");
        match crate::reload::reload_file(&self.shared, std::path::Path::new(&path)) {
            Ok(pending) if pending.is_empty() => Ok(Reply::Done("RELOAD", Vec::new())),
            Ok(pending) => Ok(Reply::Done(
                "RELOAD",
                vec![(
                    "WARNING",
                    format!(
                        "these keys changed but keep their running value until a restart: {}",
                        pending.join(", ")
                    ),
                )],
            )),
            Err(e) => Err(fail(
                CONFIG_FILE_ERROR,
                format!("configuration not reloaded, nothing changed: {e}"),
            )),
        }
    }

    /// Holds new transactions of `db` (or all), then waits (up to
    /// `hold_timeout`, the longest a held client waits anyway) for the
    /// transactions already running there to finish.
    async fn pause(&mut self, db: Option<&str>) -> Result<Reply, Failure> {
        let cfg = self.shared.config.load_full();
        if db == Some(cfg.admin.database.as_str()) {
            return Err(fail(
                NOT_IN_PREREQUISITE_STATE,
                "the admin console's database cannot be paused",
            ));
        }
        self.shared
            .pause
            .pause(db)
            .map_err(|m| fail(NOT_IN_PREREQUISITE_STATE, m))?;
        tracing::info!(user = %self.user, database = db.unwrap_or("(all)"), "PAUSE from the admin console");
        let limit = cfg.failover.hold_timeout.0;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let running = self
                .shared
                .clients
                .all()
                .iter()
                .filter(|c| !c.spec.admin && db.is_none_or(|d| c.spec.database == d))
                .filter(|c| matches!(c.state(), ClientState::Active | ClientState::Waiting))
                .count();
            if running == 0 {
                return Ok(Reply::Done("PAUSE", Vec::new()));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Reply::Done(
                    "PAUSE",
                    vec![(
                        "WARNING",
                        format!(
                            "paused, but {running} client(s) still hold a server connection after {}s (failover.hold_timeout): session-mode clients keep theirs until they leave",
                            limit.as_secs()
                        ),
                    )],
                ));
            }
            let slot = self.cancel.slot.clone();
            let cancelled = slot.cancelled();
            tokio::select! {
                _ = tokio::time::sleep(PAUSE_POLL) => {}
                _ = cancelled => {
                    // A cancelled statement has no effect.
                    let _ = self.shared.pause.resume(db);
                    return Err(fail(QUERY_CANCELED, "canceling statement due to user request; the pause was undone"));
                }
                _ = self.shutdown.changed() => {
                    return Err(fail(sqlstate::ADMIN_SHUTDOWN, "pgkeel is shutting down"));
                }
            }
        }
    }

    fn resume(&mut self, db: Option<&str>) -> Result<Reply, Failure> {
        self.shared
            .pause
            .resume(db)
            .map_err(|m| fail(NOT_IN_PREREQUISITE_STATE, m))?;
        tracing::info!(user = %self.user, database = db.unwrap_or("(all)"), "RESUME from the admin console");
        Ok(Reply::Done("RESUME", Vec::new()))
    }

    /// Ends client `id` (FATAL 57P01) and waits for its session to be gone.
    async fn kill(&mut self, id: u64) -> Result<Reply, Failure> {
        if id == self.registered.info.id {
            return Err(fail(
                NOT_IN_PREREQUISITE_STATE,
                "cannot KILL your own connection; quit instead",
            ));
        }
        let Some(client) = self.shared.clients.get(id) else {
            return Err(fail(
                UNDEFINED_OBJECT,
                format!("no client with id {id} (see SHOW CLIENTS)"),
            ));
        };
        let gone = client.gone();
        tokio::pin!(gone);
        gone.as_mut().enable();
        tracing::info!(by = %self.user, id, user = %client.spec.user, database = %client.spec.database, peer = %client.spec.peer, "KILL from the admin console");
        client.kill();
        let ended = self.shared.clients.get(id).is_none()
            || tokio::time::timeout(KILL_WAIT, gone).await.is_ok();
        let notices = if ended {
            Vec::new()
        } else {
            vec![(
                "WARNING",
                format!(
                    "client {id} was told to end but is still cleaning up after {}s",
                    KILL_WAIT.as_secs()
                ),
            )]
        };
        Ok(Reply::Done("KILL", notices))
    }
}

fn unknown(stmt: &str) -> Failure {
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

    #[test]
    fn times_format_like_pgbouncer() {
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(format_time(t), "2024-02-29 12:34:56 UTC");
    }

    #[test]
    fn result_sets_encode_rows_and_nulls() {
        let mut rs = ResultSet::new(&[("a", Type::Text), ("n", Type::Int8)]);
        rs.push(vec![text("x"), None]);
        let mut out = BytesMut::new();
        rs.encode(&mut out);
        assert_eq!(out[0], b'T');
        let (_, tlen) = protocol::header(&out).unwrap().unwrap();
        let row = &out[tlen..];
        assert_eq!(row[0], b'D');
        // Two fields: "x" (length 1), then NULL (length -1).
        assert_eq!(&row[5..7], &[0, 2]);
        assert_eq!(&row[7..12], &[0, 0, 0, 1, b'x']);
        assert_eq!(&row[12..16], &[0xff, 0xff, 0xff, 0xff]);
        let (_, rlen) = protocol::header(row).unwrap().unwrap();
        assert_eq!(row[rlen], b'C');
    }
}
