//! Configuration: the TOML schema, its defaults and its validation.
//!
//! A `Config` is immutable once built; the running proxy holds it in an
//! `ArcSwap` so a reload is one pointer swap (see ARCHITECTURE.md).

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::auth::Secret;

/// A configuration error: which key, on which line, and what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub key: Option<String>,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.key, self.line) {
            (Some(k), Some(l)) => write!(f, "line {l}: `{k}`: {}", self.message),
            (Some(k), None) => write!(f, "`{k}`: {}", self.message),
            (None, Some(l)) => write!(f, "line {l}: {}", self.message),
            (None, None) => write!(f, "{}", self.message),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A server connection is lent for one transaction.
    Transaction,
    /// A server connection is lent for the client's whole session.
    Session,
}

/// Session features that cannot be shared in transaction mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PinFeature {
    /// LISTEN: notifications arrive on the connection that listens.
    Listen,
    /// pg_advisory_lock() and friends (not the _xact_ ones).
    AdvisoryLocks,
    /// DECLARE ... WITH HOLD cursors.
    HoldCursors,
    /// CREATE TEMP TABLE (without ON COMMIT DROP).
    TempTables,
    /// SET SESSION AUTHORIZATION: who the session is cannot be read back
    /// and restored like a setting.
    SessionAuthorization,
}

impl PinFeature {
    pub const ALL: [PinFeature; 5] = [
        PinFeature::Listen,
        PinFeature::AdvisoryLocks,
        PinFeature::HoldCursors,
        PinFeature::TempTables,
        PinFeature::SessionAuthorization,
    ];

    /// The name used in `pin_on` and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            PinFeature::Listen => "listen",
            PinFeature::AdvisoryLocks => "advisory_locks",
            PinFeature::HoldCursors => "hold_cursors",
            PinFeature::TempTables => "temp_tables",
            PinFeature::SessionAuthorization => "session_authorization",
        }
    }

    /// What the client did, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            PinFeature::Listen => "LISTEN",
            PinFeature::AdvisoryLocks => "session-level advisory locks",
            PinFeature::HoldCursors => "WITH HOLD cursors",
            PinFeature::TempTables => "temporary tables",
            PinFeature::SessionAuthorization => "SET SESSION AUTHORIZATION",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum AuthMethod {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A duration written as `"500ms"`, `"5s"`, `"2m"`, `"1h"` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"500ms\", \"5s\", \"2m\" or a number of seconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(|s| Dur(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Duration::try_from_secs_f64(v)
                    .map(Dur)
                    .map_err(|_| E::custom("invalid duration"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Written back the way a config file would say it ("30s", "500ms", "2m").
impl serde::Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() == 0 {
        match secs {
            0 => "0s".into(),
            s if s % 3600 == 0 => format!("{}h", s / 3600),
            s if s % 60 == 0 => format!("{}m", s / 60),
            s => format!("{s}s"),
        }
    } else if d.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. \"500ms\", \"5s\", \"2m\""))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        u => {
            return Err(format!(
                "invalid duration unit {u:?} in {s:?} (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {s:?}"))
}

/// A byte size written as a number of bytes or `"64KB"`, `"16MB"`, `"1GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 1048576, \"64KB\", \"16MB\" or \"1GB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size(self.0))
    }
}

/// A size the way a config file would say it ("256MB", "64KB", "1000").
pub fn format_size(n: u64) -> String {
    for (unit, mul) in [("GB", 1u64 << 30), ("MB", 1 << 20), ("KB", 1 << 10)] {
        if n != 0 && n % mul == 0 {
            return format!("{}{unit}", n / mul);
        }
    }
    n.to_string()
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. \"16MB\""))?;
    let mul = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" | "K" | "KIB" => 1 << 10,
        "MB" | "M" | "MIB" => 1 << 20,
        "GB" | "G" | "GIB" => 1 << 30,
        u => {
            return Err(format!(
                "invalid size unit {u:?} in {s:?} (use B, KB, MB or GB)"
            ))
        }
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn d(secs: u64) -> Dur {
    Dur(Duration::from_secs(secs))
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address clients connect to. Changing it needs a restart.
    pub listen: String,
    pub pool_mode: PoolMode,
    /// Server connections per (server, database, user).
    pub pool_size: u32,
    /// Server connections kept open per pool even when idle.
    pub min_pool_size: u32,
    pub max_client_connections: u32,
    pub auth_method: AuthMethod,
    pub server_idle_timeout: Dur,
    pub server_lifetime: Dur,
    pub connect_timeout: Dur,
    /// How long a client waits for a server connection before an error.
    pub query_wait_timeout: Dur,
    /// How long a new client may take to finish startup and authentication.
    pub client_login_timeout: Dur,
    pub shutdown_timeout: Dur,
    pub max_message_size: ByteSize,
    /// Run on a server connection when a session-mode client leaves.
    pub server_reset_query: String,
    /// Named prepared statements follow clients across server connections
    /// in transaction mode (prepared again where missing).
    pub prepared_statements: bool,
    /// Prepared statements kept per server connection (LRU beyond that).
    pub prepared_statements_cache_size: u32,
    /// Session features that pin a transaction-mode client to its server
    /// connection for the rest of its session; the others are refused.
    pub pin_on: Vec<PinFeature>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "0.0.0.0:54320".into(),
            pool_mode: PoolMode::Transaction,
            pool_size: 20,
            min_pool_size: 0,
            max_client_connections: 10_000,
            auth_method: AuthMethod::ScramSha256,
            server_idle_timeout: d(600),
            server_lifetime: d(3600),
            connect_timeout: d(5),
            query_wait_timeout: d(30),
            client_login_timeout: d(15),
            shutdown_timeout: d(30),
            max_message_size: ByteSize(256 << 20),
            server_reset_query: "DISCARD ALL".into(),
            prepared_statements: true,
            prepared_statements_cache_size: 500,
            pin_on: PinFeature::ALL.to_vec(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// HTTP address for /metrics, /health, /ready and /status; "" disables it.
    pub listen: String,
    /// Connecting to this database name opens the admin console (SHOW
    /// POOLS, RELOAD, PAUSE...) instead of a pooled session.
    pub database: String,
    /// `[[users]]` names allowed in the admin console; others get 42501.
    pub users: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9930".into(),
            database: "pgkeel".into(),
            users: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
    /// One info line per client Query and Parse (reloadable).
    pub log_queries: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
            log_queries: false,
        }
    }
}

/// Credentials and cadence of pgkeel's own health checks (`pg_is_in_recovery()`).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Defaults to the first `[[users]]` entry's server user and password.
    pub user: Option<String>,
    pub password: Option<String>,
    pub database: String,
    pub interval: Dur,
    pub timeout: Dur,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            user: None,
            password: None,
            database: "postgres".into(),
            interval: d(1),
            timeout: d(3),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Plain text, a SCRAM-SHA-256 verifier (`SCRAM-SHA-256$...`) or an md5 hash (`md5...`).
    pub password: String,
    /// The role used on the server; defaults to `name`.
    pub server_user: Option<String>,
    /// The server password; defaults to `password` (when it is plain text).
    pub server_password: Option<String>,
    pub pool_size: Option<u32>,
    pub pool_mode: Option<PoolMode>,
}

/// How clients are carried through a failover.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// How long a transaction that needs the primary waits for one.
    pub hold_timeout: Dur,
    /// After a planned switchover is announced, how long new transactions
    /// wait for the leader to move before going to the old primary again.
    pub drain_timeout: Dur,
    /// Re-run a read-only autocommit statement whose server died before any
    /// of its result reached the client.
    pub retry_reads: bool,
    /// Clients held at once; more get an error instead of waiting.
    pub max_held_clients: u32,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            hold_timeout: d(30),
            drain_timeout: d(10),
            retry_reads: true,
            max_held_clients: 10_000,
        }
    }
}

/// A hook run on leader changes and failovers.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Run with `sh -c`, with PGKEEL_EVENT, PGKEEL_KIND, PGKEEL_OLD_LEADER,
    /// PGKEEL_NEW_LEADER, PGKEEL_HELD_CLIENTS and PGKEEL_OUTAGE_MS set.
    pub command: Option<String>,
    /// An http:// URL that gets the event as a JSON POST.
    pub webhook: Option<String>,
    /// Which events: leader_change, failover_start, failover_end (default: all).
    #[serde(default = "all_events")]
    pub events: Vec<String>,
    #[serde(default = "notify_timeout")]
    pub timeout: Dur,
}

pub const NOTIFY_EVENTS: [&str; 3] = ["leader_change", "failover_start", "failover_end"];

fn all_events() -> Vec<String> {
    NOTIFY_EVENTS.iter().map(|s| s.to_string()).collect()
}

fn notify_timeout() -> Dur {
    d(10)
}

/// Follow a Patroni cluster through etcd (v3 API) instead of `[[servers]]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Patroni's `namespace` (default `/service/`).
    pub namespace: String,
    /// Patroni's `scope` (the cluster name).
    pub scope: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub dial_timeout: Dur,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            namespace: "/service/".into(),
            scope: String::new(),
            username: None,
            password: None,
            dial_timeout: d(2),
        }
    }
}

impl EtcdConfig {
    /// The key prefix of the scope, e.g. `/service/demo/`.
    pub fn prefix(&self) -> String {
        let ns = self.namespace.trim_matches('/');
        if ns.is_empty() {
            format!("/{}/", self.scope)
        } else {
            format!("/{ns}/{}/", self.scope)
        }
    }
}

/// Where a statement, rule, hint or listener sends work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    Primary,
    Replica,
    /// Any member that may take reads, the primary included.
    Any,
}

impl Route {
    /// As the config spells it.
    pub fn name(self) -> &'static str {
        match self {
            Route::Primary => "primary",
            Route::Replica => "replica",
            Route::Any => "any",
        }
    }
}

/// What a listener does with the statements it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerRoute {
    /// Split reads from writes (the main `listen` address).
    Auto,
    /// Everything to the primary, like HAProxy's primary port.
    Primary,
    /// Everything to the replicas, like HAProxy's replica port.
    Replica,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    LeastConnections,
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Reads go to the primary while no replica is usable.
    Primary,
    /// Reads wait for a replica (up to `hold_timeout`), then fail.
    Error,
}

/// The read/write split.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Send read-only statements and transactions to replicas.
    pub read_write_split: bool,
    pub balance: Balance,
    /// Relative share of reads per member name (default 1; 0 takes none).
    pub weights: std::collections::BTreeMap<String, u32>,
    /// A replica further behind the primary than this takes no reads.
    pub max_replica_lag_bytes: Option<ByteSize>,
    /// A replica whose last replayed transaction is older than this (while
    /// it has more to replay) takes no reads.
    pub max_replica_lag_time: Option<Dur>,
    pub replica_fallback: Fallback,
    /// After a client's write commits, its reads go only to servers that
    /// have replayed that commit.
    pub read_your_writes: bool,
    /// Where statements calling functions pgkeel does not know go:
    /// "primary" or "replica".
    pub unknown_functions: Route,
    /// More functions that need the primary (`name` or `prefix*`).
    pub primary_functions: Vec<String>,
    /// User functions that only read, so statements calling them may go to replicas.
    pub replica_functions: Vec<String>,
    /// Statement shapes whose classification is remembered.
    pub classify_cache_size: usize,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            read_write_split: true,
            balance: Balance::RoundRobin,
            weights: Default::default(),
            max_replica_lag_bytes: None,
            max_replica_lag_time: None,
            replica_fallback: Fallback::Primary,
            read_your_writes: false,
            unknown_functions: Route::Primary,
            primary_functions: Vec::new(),
            replica_functions: Vec::new(),
            classify_cache_size: 10_000,
        }
    }
}

/// An extra listener with a fixed route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: String,
    pub route: ListenerRoute,
}

/// A ProxySQL-style rule: the first rule whose matchers all match decides
/// the route of a statement.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRule {
    /// Regular expression, matched case-insensitively against the
    /// statement's normalized text (literals as `?`, comments removed).
    pub pattern: Option<String>,
    pub user: Option<String>,
    pub database: Option<String>,
    pub application_name: Option<String>,
    pub route: Route,
    /// Log the first statement of each transaction the rule routes.
    #[serde(default)]
    pub log: bool,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
}

fn default_pg_port() -> u16 {
    5432
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    proxy: ProxyConfig,
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    health: HealthConfig,
    #[serde(default)]
    users: Vec<UserConfig>,
    #[serde(default)]
    servers: Vec<ServerConfig>,
    etcd: Option<EtcdConfig>,
    #[serde(default)]
    failover: FailoverConfig,
    #[serde(default)]
    notify: Vec<NotifyConfig>,
    #[serde(default)]
    routing: RoutingConfig,
    #[serde(default)]
    listeners: Vec<ListenerConfig>,
    #[serde(default)]
    query_rules: Vec<QueryRule>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub health: HealthConfig,
    pub users: Vec<User>,
    pub servers: Vec<ServerConfig>,
    /// When set, the topology comes from Patroni's keys in etcd.
    pub etcd: Option<EtcdConfig>,
    pub failover: FailoverConfig,
    pub notify: Vec<NotifyConfig>,
    pub routing: RoutingConfig,
    /// Extra listeners with fixed routes, parsed.
    pub listeners: Vec<(SocketAddr, ListenerRoute)>,
    pub query_rules: Vec<QueryRule>,
    pub listen_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
}

/// A configured user with its secret prepared for authentication.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub secret: Secret,
    pub server_user: String,
    /// Plain-text server password, when one is known.
    pub server_password: Option<String>,
    pub pool_size: u32,
    pub pool_mode: PoolMode,
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            key: None,
            line: None,
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        Config::from_toml_str(&text)
    }

    pub fn from_toml_str(src: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(src).map_err(|e| toml_error(src, &e))?;
        validate(raw, src)
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// Credentials for health checks: `[health]`, else the first user's server credentials.
    pub fn health_credentials(&self) -> (String, Option<String>) {
        match &self.health.user {
            Some(u) => (u.clone(), self.health.password.clone()),
            None => {
                let u = &self.users[0];
                (u.server_user.clone(), u.server_password.clone())
            }
        }
    }
}

fn toml_error(src: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| src[..s.start.min(src.len())].matches('\n').count() + 1);
    ConfigError {
        key: None,
        line,
        message: e.message().to_string(),
    }
}

/// Finds the line of `key` inside the `index`-th occurrence of table `table`
/// (`[table]` or `[[table]]`), or the table header itself when `key` is absent.
fn locate(src: &str, table: &str, index: usize, key: Option<&str>) -> Option<usize> {
    let mut seen = 0usize;
    let mut inside = false;
    let mut header_line = None;
    for (i, line) in src.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            let name = t.trim_matches(|c| c == '[' || c == ']').trim();
            if inside {
                break;
            }
            if name == table {
                if seen == index {
                    inside = true;
                    header_line = Some(i + 1);
                }
                seen += 1;
            }
            continue;
        }
        if inside {
            if let Some(k) = key {
                let lhs = t.split('=').next().unwrap_or("").trim().trim_matches('"');
                if t.contains('=') && lhs == k {
                    return Some(i + 1);
                }
            }
        }
    }
    header_line
}

fn validate(raw: RawConfig, src: &str) -> Result<Config, ConfigError> {
    let err = |table: &str, index: usize, key: &str, message: String| {
        let path = if matches!(
            table,
            "users" | "servers" | "notify" | "listeners" | "query_rules"
        ) {
            format!("{table}[{index}].{key}")
        } else {
            format!("{table}.{key}")
        };
        ConfigError {
            line: locate(src, table, index, Some(key)),
            key: Some(path),
            message,
        }
    };
    let p = &raw.proxy;
    let listen_addr: SocketAddr = p.listen.parse().map_err(|_| {
        err(
            "proxy",
            0,
            "listen",
            format!("{:?} is not an address like \"0.0.0.0:54320\"", p.listen),
        )
    })?;
    let admin_addr = if raw.admin.listen.is_empty() {
        None
    } else {
        Some(raw.admin.listen.parse().map_err(|_| {
            err(
                "admin",
                0,
                "listen",
                format!(
                    "{:?} is not an address like \"127.0.0.1:9930\"",
                    raw.admin.listen
                ),
            )
        })?)
    };
    if p.pool_size == 0 {
        return Err(err("proxy", 0, "pool_size", "must be at least 1".into()));
    }
    if p.min_pool_size > p.pool_size {
        return Err(err(
            "proxy",
            0,
            "min_pool_size",
            format!(
                "{} is larger than pool_size ({})",
                p.min_pool_size, p.pool_size
            ),
        ));
    }
    if p.prepared_statements_cache_size == 0 {
        return Err(err(
            "proxy",
            0,
            "prepared_statements_cache_size",
            "must be at least 1 (set prepared_statements = false to turn the feature off)".into(),
        ));
    }
    if p.max_client_connections == 0 {
        return Err(err(
            "proxy",
            0,
            "max_client_connections",
            "must be at least 1".into(),
        ));
    }
    if p.max_message_size.0 < 1024 || p.max_message_size.0 > 0x3fff_ffff {
        return Err(err(
            "proxy",
            0,
            "max_message_size",
            "must be between 1KB and 1GB".into(),
        ));
    }
    for (key, v) in [
        ("connect_timeout", p.connect_timeout),
        ("query_wait_timeout", p.query_wait_timeout),
        ("client_login_timeout", p.client_login_timeout),
    ] {
        if v.0.is_zero() {
            return Err(err("proxy", 0, key, "must be greater than zero".into()));
        }
    }
    if raw.health.interval.0 < Duration::from_millis(10) {
        return Err(err("health", 0, "interval", "must be at least 10ms".into()));
    }
    if tracing_subscriber::EnvFilter::try_new(&raw.log.level).is_err() {
        return Err(err(
            "log",
            0,
            "level",
            format!(
                "{:?} is not a log level (error, warn, info, debug, trace)",
                raw.log.level
            ),
        ));
    }
    if raw.users.is_empty() {
        return Err(ConfigError {
            key: Some("users".into()),
            line: None,
            message: "at least one [[users]] entry is required".into(),
        });
    }
    if raw.servers.is_empty() && raw.etcd.is_none() {
        return Err(ConfigError {
            key: Some("servers".into()),
            line: None,
            message: "at least one [[servers]] entry (or an [etcd] section) is required".into(),
        });
    }
    if let Some(e) = &raw.etcd {
        if e.scope.trim_matches('/').is_empty() || e.scope.contains('/') {
            return Err(err(
                "etcd",
                0,
                "scope",
                "must be Patroni's scope (cluster name), e.g. \"demo\"".into(),
            ));
        }
        if e.endpoints.is_empty() {
            return Err(err(
                "etcd",
                0,
                "endpoints",
                "at least one endpoint is required".into(),
            ));
        }
        for ep in &e.endpoints {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) || ep.len() < 10 {
                return Err(err(
                    "etcd",
                    0,
                    "endpoints",
                    format!("{ep:?} is not an etcd URL like \"http://127.0.0.1:2379\""),
                ));
            }
        }
        if e.dial_timeout.0.is_zero() {
            return Err(err(
                "etcd",
                0,
                "dial_timeout",
                "must be greater than zero".into(),
            ));
        }
        if e.password.is_some() && e.username.is_none() {
            return Err(err(
                "etcd",
                0,
                "password",
                "is set but username is not".into(),
            ));
        }
    }
    if raw.failover.hold_timeout.0.is_zero() {
        return Err(err(
            "failover",
            0,
            "hold_timeout",
            "must be greater than zero".into(),
        ));
    }
    for (i, n) in raw.notify.iter().enumerate() {
        if n.command.is_none() && n.webhook.is_none() {
            return Err(err(
                "notify",
                i,
                "command",
                "a [[notify]] entry needs a command or a webhook".into(),
            ));
        }
        if let Some(w) = &n.webhook {
            if crate::notify::parse_http_url(w).is_none() {
                return Err(err(
                    "notify",
                    i,
                    "webhook",
                    format!("{w:?} is not an http:// URL"),
                ));
            }
        }
        if let Some(e) = n
            .events
            .iter()
            .find(|e| !NOTIFY_EVENTS.contains(&e.as_str()))
        {
            return Err(err(
                "notify",
                i,
                "events",
                format!("unknown event {e:?} (use {})", NOTIFY_EVENTS.join(", ")),
            ));
        }
    }
    let mut users = Vec::with_capacity(raw.users.len());
    for (i, u) in raw.users.iter().enumerate() {
        if u.name.is_empty() {
            return Err(err("users", i, "name", "must not be empty".into()));
        }
        if raw.users[..i].iter().any(|o| o.name == u.name) {
            return Err(err(
                "users",
                i,
                "name",
                format!("user {:?} is defined twice", u.name),
            ));
        }
        let secret = Secret::parse(&u.password).map_err(|m| err("users", i, "password", m))?;
        if p.auth_method == AuthMethod::Md5 && matches!(secret, Secret::Scram(_)) {
            return Err(err("users", i, "password", "a SCRAM verifier cannot check md5 logins; give the plain password or an md5 hash, or use auth_method = \"scram-sha-256\"".into()));
        }
        if p.auth_method == AuthMethod::ScramSha256 && matches!(secret, Secret::Md5(_)) {
            return Err(err("users", i, "password", "an md5 hash cannot check SCRAM logins; give the plain password or a SCRAM verifier, or use auth_method = \"md5\"".into()));
        }
        if u.pool_size == Some(0) {
            return Err(err("users", i, "pool_size", "must be at least 1".into()));
        }
        let server_password = u
            .server_password
            .clone()
            .or_else(|| secret.plain().map(str::to_owned));
        users.push(User {
            name: u.name.clone(),
            server_user: u.server_user.clone().unwrap_or_else(|| u.name.clone()),
            server_password,
            secret,
            pool_size: u.pool_size.unwrap_or(p.pool_size),
            pool_mode: u.pool_mode.unwrap_or(p.pool_mode),
        });
    }
    if raw.admin.database.is_empty() {
        return Err(err("admin", 0, "database", "must not be empty".into()));
    }
    if let Some(u) = raw
        .admin
        .users
        .iter()
        .find(|a| !users.iter().any(|u| &u.name == *a))
    {
        return Err(err(
            "admin",
            0,
            "users",
            format!("{u:?} is not a [[users]] entry; admin users log in with a [[users]] password"),
        ));
    }
    for (i, s) in raw.servers.iter().enumerate() {
        if s.host.is_empty() {
            return Err(err("servers", i, "host", "must not be empty".into()));
        }
        if s.port == 0 {
            return Err(err("servers", i, "port", "must not be 0".into()));
        }
    }
    let routing = &raw.routing;
    if routing.unknown_functions == Route::Any {
        return Err(err(
            "routing",
            0,
            "unknown_functions",
            "must be \"primary\" or \"replica\"".into(),
        ));
    }
    if routing.classify_cache_size == 0 {
        return Err(err(
            "routing",
            0,
            "classify_cache_size",
            "must be at least 1".into(),
        ));
    }
    let mut listeners = Vec::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        let addr: SocketAddr = l.address.parse().map_err(|_| {
            err(
                "listeners",
                i,
                "address",
                format!("{:?} is not an address like \"0.0.0.0:54321\"", l.address),
            )
        })?;
        if addr == listen_addr && addr.port() != 0 {
            return Err(err(
                "listeners",
                i,
                "address",
                "is the same as proxy.listen".into(),
            ));
        }
        listeners.push((addr, l.route));
    }
    if raw.query_rules.len() > crate::router::MAX_RULES {
        return Err(ConfigError {
            key: Some("query_rules".into()),
            line: None,
            message: format!("at most {} rules are supported", crate::router::MAX_RULES),
        });
    }
    for (i, r) in raw.query_rules.iter().enumerate() {
        if r.pattern.is_none()
            && r.user.is_none()
            && r.database.is_none()
            && r.application_name.is_none()
        {
            return Err(err(
                "query_rules",
                i,
                "route",
                "a rule needs at least one of pattern, user, database, application_name".into(),
            ));
        }
        if let Some(p) = &r.pattern {
            if let Err(e) = regex::bytes::RegexBuilder::new(p)
                .case_insensitive(true)
                .build()
            {
                return Err(err(
                    "query_rules",
                    i,
                    "pattern",
                    format!("invalid regular expression: {e}"),
                ));
            }
        }
    }
    Ok(Config {
        proxy: raw.proxy,
        admin: raw.admin,
        log: raw.log,
        health: raw.health,
        users,
        servers: raw.servers,
        etcd: raw.etcd,
        failover: raw.failover,
        notify: raw.notify,
        routing: raw.routing,
        listeners,
        query_rules: raw.query_rules,
        listen_addr,
        admin_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str =
        "[[users]]\nname = \"app\"\npassword = \"pw\"\n[[servers]]\nhost = \"127.0.0.1\"\n";

    #[test]
    fn defaults_fill_in() {
        let c = Config::from_toml_str(MIN).unwrap();
        assert_eq!(c.proxy.pool_mode, PoolMode::Transaction);
        assert_eq!(c.proxy.pool_size, 20);
        assert_eq!(c.listen_addr.port(), 54320);
        assert_eq!(c.servers[0].port, 5432);
        assert_eq!(c.users[0].server_password.as_deref(), Some("pw"));
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_size("16MB").unwrap(), 16 << 20);
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let src = format!("[proxy]\npool_size = 5\npool_sise = 5\n{MIN}");
        let e = Config::from_toml_str(&src).unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.to_string().contains("pool_sise"), "{e}");
    }

    #[test]
    fn semantic_error_names_key_and_line() {
        let src = format!("[proxy]\nlisten = \"0.0.0.0:1\"\npool_size = 0\n{MIN}");
        let e = Config::from_toml_str(&src).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("proxy.pool_size"));
        assert_eq!(e.line, Some(3));
        let src = format!("{MIN}[[users]]\nname = \"app\"\npassword = \"x\"\n");
        let e = Config::from_toml_str(&src).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("users[1].name"));
        assert_eq!(e.line, Some(7), "{e}");
    }

    #[test]
    fn wrong_type_is_reported() {
        let src = format!("[proxy]\npool_mode = \"statement\"\n{MIN}");
        let e = Config::from_toml_str(&src).unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn etcd_section_replaces_servers() {
        let src = "[[users]]\nname = \"a\"\npassword = \"b\"\n[etcd]\nscope = \"demo\"\n";
        let c = Config::from_toml_str(src).unwrap();
        let e = c.etcd.unwrap();
        assert_eq!(e.prefix(), "/service/demo/");
        assert_eq!(e.endpoints, vec!["http://127.0.0.1:2379".to_string()]);
        let e = Config::from_toml_str(
            "[[users]]\nname = \"a\"\npassword = \"b\"\n[etcd]\nendpoints = []\nscope = \"demo\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("etcd.endpoints"));
        let e = Config::from_toml_str("[[users]]\nname = \"a\"\npassword = \"b\"\n[etcd]\n")
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("etcd.scope"));
    }

    #[test]
    fn admin_users_must_be_users() {
        let c = Config::from_toml_str(MIN).unwrap();
        assert_eq!(c.admin.database, "pgkeel");
        assert!(c.admin.users.is_empty());
        let src = format!("[admin]\ndatabase = \"console\"\nusers = [\"app\"]\n{MIN}");
        let c = Config::from_toml_str(&src).unwrap();
        assert_eq!(
            (c.admin.database.as_str(), c.admin.users.len()),
            ("console", 1)
        );
        let src = format!("[admin]\nlisten = \"\"\nusers = [\"app\", \"root\"]\n{MIN}");
        let e = Config::from_toml_str(&src).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("admin.users"));
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("\"root\""), "{e}");
    }

    #[test]
    fn durations_and_sizes_format_back() {
        for d in ["30s", "10m", "1h", "500ms", "0s", "90s", "1.5s"] {
            let parsed = parse_duration(d).unwrap();
            assert_eq!(parse_duration(&format_duration(parsed)).unwrap(), parsed);
        }
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_size(256 << 20), "256MB");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(parse_size(&format_size(3 << 10)).unwrap(), 3 << 10);
    }

    #[test]
    fn md5_method_rejects_scram_verifier() {
        let v = postgres_protocol::password::scram_sha_256(b"pw");
        let src = format!("[proxy]\nauth_method = \"md5\"\n[[users]]\nname = \"a\"\npassword = \"{v}\"\n[[servers]]\nhost = \"h\"\n");
        let e = Config::from_toml_str(&src).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("users[0].password"));
    }
}
