//! Configuration: the TOML schema, its defaults and its validation.
//!
//! A `Config` is immutable once built; the running proxy holds it in an
//! `ArcSwap` so a reload is one pointer swap (see ARCHITECTURE.md).

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

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

mod validate;
mod values;

use validate::{toml_error, validate};

pub use values::{
    format_duration, format_size, parse_duration, parse_http_url, parse_size, ByteSize, Dur,
};

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

    // Limits and timeouts (README "Limits and timeouts"). A 0 turns a
    // timeout or a cap off.
    /// Connections still logging in (startup and authentication), across
    /// all listeners; more are closed at accept. Apart from
    /// `max_client_connections`, so unauthenticated peers cannot fill it.
    pub max_login_connections: u32,
    /// Connections still logging in from one source address.
    pub max_logins_per_address: u32,
    /// Logged-in clients per `[[users]]` name (53300 beyond it).
    pub max_user_connections: u32,
    /// Logged-in clients per database (53300 beyond it).
    pub max_db_connections: u32,
    /// Admin console logins allowed beyond `max_client_connections`.
    pub admin_reserved_connections: u32,
    /// A client idle outside a transaction this long is closed (57P05).
    pub client_idle_timeout: Dur,
    /// A client idle inside a transaction this long is closed (25P03), its
    /// server connection closed rather than returned to the pool.
    pub idle_transaction_timeout: Dur,
    /// A request running this long is cancelled on the server (57014).
    pub query_timeout: Dur,
    /// A failed password is answered only after this delay (per
    /// connection; no shared lock is held while waiting).
    pub auth_failure_delay: Dur,
    /// TCP keepalive on client and server sockets.
    pub tcp_keepalive: bool,
    pub tcp_keepalive_idle: Dur,
    pub tcp_keepalive_interval: Dur,
    pub tcp_keepalive_count: u32,

    // Upgrades that keep client connections (docs/deploying.md "Rolling
    // upgrade with the handover"). Both need a restart to change.
    /// The Unix socket a new process started with `--takeover` finds this
    /// one on; "" derives `/tmp/pgkeel-<listen port>.handover` (none for
    /// port 0), "off" turns the handover off.
    pub handover_socket: String,
    /// How long the old process hands over clients as they become idle
    /// (and waits for those that cannot move) before it exits.
    pub handover_timeout: Dur,
    // The runtime (docs/performance.md "The runtime").
    /// Runtime worker threads; 0: one per core. One worker spends less CPU
    /// per transaction where the proxy shares few cores with its clients
    /// and servers; more spread clients over more cores. Needs a restart.
    pub worker_threads: u32,
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
            max_login_connections: 1000,
            max_logins_per_address: 100,
            max_user_connections: 0,
            max_db_connections: 0,
            admin_reserved_connections: 3,
            client_idle_timeout: d(0),
            idle_transaction_timeout: d(0),
            query_timeout: d(0),
            auth_failure_delay: d(0),
            tcp_keepalive: true,
            tcp_keepalive_idle: d(60),
            tcp_keepalive_interval: d(10),
            tcp_keepalive_count: 6,
            handover_socket: String::new(),
            handover_timeout: d(60),
            worker_threads: 0,
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
    /// `[[users]]` names allowed in the admin console read-only (PgBouncer's
    /// `stats_users`): SHOW works, commands that change anything get 42501.
    pub stats_users: Vec<String>,

    // Admin HTTP hardening (README "Admin endpoints").
    /// Bearer token required for /status and /metrics (`Authorization:
    /// Bearer <token>`); /health and /ready stay open. Unset: no token.
    pub http_token: Option<crate::auth::Redacted>,
    /// A file holding the token (trailing newline ignored), instead of `http_token`.
    pub http_token_file: Option<String>,
    /// Serve /metrics without the token (for a Prometheus without credentials).
    pub metrics_open: bool,
    /// A second HTTP address serving only /metrics, without the token; "" for none.
    pub metrics_listen: String,
    /// How long a client may take to send its request headers.
    pub http_header_timeout: Dur,
    /// HTTP connections open at once; more are closed at accept.
    pub max_http_connections: u32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9930".into(),
            database: "pgkeel".into(),
            users: Vec::new(),
            stats_users: Vec::new(),
            http_token: None,
            http_token_file: None,
            metrics_open: false,
            metrics_listen: String::new(),
            http_header_timeout: d(5),
            max_http_connections: 64,
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
#[derive(Clone, Deserialize, serde::Serialize)]
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

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Plain text, a SCRAM-SHA-256 verifier (`SCRAM-SHA-256$...`) or an md5 hash (`md5...`).
    /// Exactly one of `password`, `password_env` and `password_file`.
    pub password: Option<String>,
    /// The name of an environment variable holding the password (any form above).
    pub password_env: Option<String>,
    /// A file holding the password (any form above; a trailing newline is ignored).
    pub password_file: Option<String>,
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
    /// Re-run a transaction whose server died while it was open (not while
    /// committing) on the new primary, and let the client go on if every
    /// answer it already had comes out the same.
    pub replay_transactions: bool,
    /// A transaction whose messages outgrow this is not replayed.
    pub replay_max_size: ByteSize,
    /// Replays of one transaction, at most (its server may fail again).
    pub replay_attempts: u32,
    /// Find out whether a COMMIT in flight when its server died happened
    /// (`token`: a row written in the transaction, looked up on the new
    /// primary) instead of telling the client its outcome is unknown.
    pub commit_outcome: CommitOutcome,
}

/// `[failover] commit_outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitOutcome {
    /// A COMMIT in flight at a server's loss is 08006, outcome unknown.
    #[default]
    Off,
    /// Write transactions record a token before COMMIT (`pgkeel.commit_token`,
    /// installed by `pgkeel commit-outcome-sql`).
    Token,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            hold_timeout: d(30),
            drain_timeout: d(10),
            retry_reads: true,
            max_held_clients: 10_000,
            replay_transactions: true,
            replay_max_size: ByteSize(1 << 20),
            replay_attempts: 3,
            commit_outcome: CommitOutcome::Off,
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
#[derive(Clone, Deserialize, serde::Serialize)]
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
    /// This instance's name in the fleet (default `<hostname>:<listen port>`).
    pub instance_name: Option<String>,
    /// Where clients reach this instance, as its peers list it (default:
    /// `proxy.listen`, with an unspecified address replaced by the hostname).
    pub advertise: Option<String>,
    /// The lease under which the instance is registered: a dead instance
    /// leaves the fleet this long after its last keep-alive.
    pub instance_ttl: Dur,
    /// Where the fleet registers: `<instance_prefix><scope>/<instance_name>`.
    pub instance_prefix: String,
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
            instance_name: None,
            advertise: None,
            instance_ttl: d(10),
            instance_prefix: "/pgkeel/".into(),
        }
    }
}

// Never print passwords, not even in debug output.
impl fmt::Debug for HealthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthConfig")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("namespace", &self.namespace)
            .field("scope", &self.scope)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dial_timeout", &self.dial_timeout)
            .finish()
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

    /// The key prefix under which the fleet of this scope registers, e.g.
    /// `/pgkeel/demo/`. Outside Patroni's namespace, so Patroni never sees it.
    pub fn instances_prefix(&self) -> String {
        let p = self.instance_prefix.trim_matches('/');
        if p.is_empty() {
            format!("/{}/", self.scope)
        } else {
            format!("/{p}/{}/", self.scope)
        }
    }
}

/// `[[query_rules]]` supported: the router caches which rules a statement
/// matches as one 128-bit set.
pub const MAX_QUERY_RULES: usize = 128;

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

/// Why a route was chosen (the `reason` label of `pgkeel_routed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Listener,
    SessionMode,
    SplitOff,
    Hint,
    Rule,
    Read,
    Write,
    ReadOnlyTransaction,
    Transaction,
}

impl Why {
    pub const ALL: [Why; 9] = [
        Why::Listener,
        Why::SessionMode,
        Why::SplitOff,
        Why::Hint,
        Why::Rule,
        Why::Read,
        Why::Write,
        Why::ReadOnlyTransaction,
        Why::Transaction,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Why::Listener => "listener",
            Why::SessionMode => "session_mode",
            Why::SplitOff => "split_off",
            Why::Hint => "hint",
            Why::Rule => "rule",
            Why::Read => "read",
            Why::Write => "write",
            Why::ReadOnlyTransaction => "read_only_transaction",
            Why::Transaction => "transaction",
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

/// How pgkeel answers clients about TLS (`[tls] client_tls_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientTlsMode {
    /// SSLRequest answered `N`: plaintext only.
    Disable,
    /// TLS when the client asks for it; plaintext accepted.
    Allow,
    /// The same as `allow` on this side (a server cannot insist); the
    /// name matches libpq's default.
    Prefer,
    /// Plaintext logins refused with 28000.
    Require,
}

/// How pgkeel connects to servers (`[tls] server_tls_mode`), as libpq's sslmode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    Disable,
    /// TLS when the server offers it, certificate not checked.
    Prefer,
    /// TLS or no connection, certificate not checked.
    Require,
    /// TLS, the certificate signed by `server_ca`.
    VerifyCa,
    /// TLS, signed by `server_ca` and naming the host pgkeel connects to.
    VerifyFull,
}

/// Ways a server may ask pgkeel to log in (`[tls] server_auth_allow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum ServerAuth {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    /// A cleartext password request.
    #[serde(rename = "password")]
    Password,
    /// AuthenticationOk with no challenge at all.
    #[serde(rename = "trust")]
    Trust,
}

/// `[tls]`: TLS to clients and to servers, and what server logins accept.
/// Certificates are read at start and at every reload.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// pgkeel's certificate chain for clients (PEM).
    pub cert: Option<std::path::PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<std::path::PathBuf>,
    /// Default: `prefer` with a cert and key, `disable` without.
    pub client_tls_mode: Option<ClientTlsMode>,
    pub server_tls_mode: ServerTlsMode,
    /// CA certificates (PEM) for `verify-ca` / `verify-full`.
    pub server_ca: Option<std::path::PathBuf>,
    /// A client certificate and key pgkeel presents to servers (optional).
    pub server_cert: Option<std::path::PathBuf>,
    pub server_key: Option<std::path::PathBuf>,
    /// Server authentication requests pgkeel answers; others fail the
    /// connection (a server asking for a cleartext password, or trusting
    /// anyone, may not be the server it should be).
    pub server_auth_allow: Vec<ServerAuth>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            client_tls_mode: None,
            server_tls_mode: ServerTlsMode::Disable,
            server_ca: None,
            server_cert: None,
            server_key: None,
            server_auth_allow: vec![ServerAuth::ScramSha256, ServerAuth::Md5],
        }
    }
}

impl TlsConfig {
    /// The client mode in force, the default resolved.
    pub fn client_mode(&self) -> ClientTlsMode {
        self.client_tls_mode
            .unwrap_or(if self.cert.is_some() && self.key.is_some() {
                ClientTlsMode::Prefer
            } else {
                ClientTlsMode::Disable
            })
    }
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
    #[serde(default)]
    tls: TlsConfig,
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
    pub tls: TlsConfig,
    pub listen_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    /// `[admin] metrics_listen`, parsed.
    pub metrics_addr: Option<SocketAddr>,
    /// The admin HTTP token, from `http_token` or `http_token_file`.
    pub admin_token: Option<crate::auth::Redacted>,
}

// Never print passwords, not even in debug output.
impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field("server_user", &self.server_user)
            .finish_non_exhaustive()
    }
}

/// A configured user with its secret prepared for authentication.
#[derive(Clone)]
pub struct User {
    pub name: String,
    pub secret: Secret,
    pub server_user: String,
    /// Plain-text server password, when one is known.
    pub server_password: Option<String>,
    pub pool_size: u32,
    pub pool_mode: PoolMode,
}

// The secret redacts itself; the server password is left out.
impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("secret", &self.secret)
            .field("server_user", &self.server_user)
            .field("pool_size", &self.pool_size)
            .field("pool_mode", &self.pool_mode)
            .finish_non_exhaustive()
    }
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
