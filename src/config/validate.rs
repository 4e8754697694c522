//! From the parsed TOML to a validated `Config`: every check names the key
//! and the line.

use super::*;

pub(super) fn toml_error(src: &str, e: &toml::de::Error) -> ConfigError {
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

/// More runtime workers than any machine has cores is a typo.
const MAX_WORKER_THREADS: u32 = 1024;

pub(super) fn validate(raw: RawConfig, src: &str) -> Result<Config, ConfigError> {
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
    let metrics_addr = if raw.admin.metrics_listen.is_empty() {
        None
    } else {
        Some(raw.admin.metrics_listen.parse().map_err(|_| {
            err(
                "admin",
                0,
                "metrics_listen",
                format!(
                    "{:?} is not an address like \"127.0.0.1:9931\"",
                    raw.admin.metrics_listen
                ),
            )
        })?)
    };
    let admin_token = match (&raw.admin.http_token, &raw.admin.http_token_file) {
        (Some(_), Some(_)) => {
            return Err(err(
                "admin",
                0,
                "http_token_file",
                "give http_token or http_token_file, not both".into(),
            ))
        }
        (Some(t), None) => Some(t.clone()),
        (None, Some(path)) => Some(crate::auth::Redacted::new(
            read_secret_file(path).map_err(|m| err("admin", 0, "http_token_file", m))?,
        )),
        (None, None) => None,
    };
    if admin_token.as_ref().is_some_and(|t| t.matches(b"")) {
        return Err(err("admin", 0, "http_token", "must not be empty".into()));
    }
    if raw.admin.max_http_connections == 0 {
        return Err(err(
            "admin",
            0,
            "max_http_connections",
            "must be at least 1".into(),
        ));
    }
    if p.pool_size == 0 {
        return Err(err("proxy", 0, "pool_size", "must be at least 1".into()));
    }
    if p.worker_threads > MAX_WORKER_THREADS {
        return Err(err(
            "proxy",
            0,
            "worker_threads",
            format!("{} is more than {MAX_WORKER_THREADS}", p.worker_threads),
        ));
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
        if e.instance_ttl.0 < std::time::Duration::from_secs(2) {
            return Err(err(
                "etcd",
                0,
                "instance_ttl",
                "must be at least 2s (etcd leases count whole seconds)".into(),
            ));
        }
        if let Some(n) = &e.instance_name {
            if n.is_empty() || n.contains('/') {
                return Err(err(
                    "etcd",
                    0,
                    "instance_name",
                    "must be non-empty and contain no '/'".into(),
                ));
            }
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
    if raw.failover.replay_max_size.0 > 1 << 30 {
        return Err(err(
            "failover",
            0,
            "replay_max_size",
            "must be at most 1GB (each client in a transaction may keep this much)".into(),
        ));
    }
    if raw.failover.replay_attempts > 100 {
        return Err(err(
            "failover",
            0,
            "replay_attempts",
            "must be at most 100".into(),
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
            if parse_http_url(w).is_none() {
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
        let (key, text) = password_text(u).map_err(|(k, m)| err("users", i, k, m))?;
        let secret = Secret::parse(&text).map_err(|m| err("users", i, key, m))?;
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
    for (key, list) in [
        ("users", &raw.admin.users),
        ("stats_users", &raw.admin.stats_users),
    ] {
        if let Some(u) = list.iter().find(|a| !users.iter().any(|u| &u.name == *a)) {
            return Err(err(
                "admin",
                0,
                key,
                format!(
                    "{u:?} is not a [[users]] entry; admin users log in with a [[users]] password"
                ),
            ));
        }
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
    if raw.query_rules.len() > MAX_QUERY_RULES {
        return Err(ConfigError {
            key: Some("query_rules".into()),
            line: None,
            message: format!("at most {} rules are supported", MAX_QUERY_RULES),
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
        tls: validate_tls(raw.tls, &err)?,
        listen_addr,
        admin_addr,
        metrics_addr,
        admin_token,
    })
}

/// A user's password text, from the one of `password`, `password_env` and
/// `password_file` that is set; the key it came from, for messages.
fn password_text(u: &super::UserConfig) -> Result<(&'static str, String), (&'static str, String)> {
    match (&u.password, &u.password_env, &u.password_file) {
        (Some(p), None, None) => Ok(("password", p.clone())),
        (None, Some(var), None) => std::env::var(var)
            .map(|v| ("password_env", v))
            .map_err(|_| {
                (
                    "password_env",
                    format!("environment variable {var:?} is not set (or not UTF-8)"),
                )
            }),
        (None, None, Some(path)) => read_secret_file(path)
            .map(|v| ("password_file", v))
            .map_err(|m| ("password_file", m)),
        _ => Err((
            "password",
            "give exactly one of password, password_env and password_file".into(),
        )),
    }
}

/// A secret kept in a file: its text without the trailing newline.
fn read_secret_file(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
        .map_err(|e| format!("cannot read {path:?}: {e}"))
}

/// `[tls]`: pairs that go together, and modes that need a certificate.
/// The files themselves are read by `tls::Tls::build` (at start, at reload
/// and by `--check-config`).
fn validate_tls(
    t: TlsConfig,
    err: &impl Fn(&str, usize, &str, String) -> ConfigError,
) -> Result<TlsConfig, ConfigError> {
    if t.cert.is_some() != t.key.is_some() {
        let missing = if t.cert.is_some() { "key" } else { "cert" };
        return Err(err(
            "tls",
            0,
            missing,
            "cert and key go together: set both or neither".into(),
        ));
    }
    if t.client_mode() != ClientTlsMode::Disable && t.cert.is_none() {
        return Err(err(
            "tls",
            0,
            "client_tls_mode",
            "TLS to clients needs a certificate: set cert and key".into(),
        ));
    }
    if t.server_cert.is_some() != t.server_key.is_some() {
        let missing = if t.server_cert.is_some() {
            "server_key"
        } else {
            "server_cert"
        };
        return Err(err(
            "tls",
            0,
            missing,
            "server_cert and server_key go together: set both or neither".into(),
        ));
    }
    if matches!(
        t.server_tls_mode,
        ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull
    ) && t.server_ca.is_none()
    {
        return Err(err(
            "tls",
            0,
            "server_ca",
            "verify-ca and verify-full check the server against server_ca: set it".into(),
        ));
    }
    Ok(t)
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

    #[test]
    fn passwords_come_from_exactly_one_of_text_env_and_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, b"from-file\n").unwrap();
        let src = format!(
            "[[users]]\nname = \"a\"\npassword_file = \"{}\"\n[[servers]]\nhost = \"h\"\n",
            file.path().display()
        );
        let c = Config::from_toml_str(&src).unwrap();
        assert_eq!(c.users[0].secret.plain(), Some("from-file"));
        // PATH is set in any test environment; its value is the password.
        let path = std::env::var("PATH").unwrap();
        let src = "[[users]]\nname = \"a\"\npassword_env = \"PATH\"\n[[servers]]\nhost = \"h\"\n";
        let c = Config::from_toml_str(src).unwrap();
        assert_eq!(c.users[0].secret.plain(), Some(path.as_str()));
        for (users, key) in [
            (
                "password_env = \"PGKEEL_NO_SUCH_VARIABLE_X\"",
                "users[0].password_env",
            ),
            (
                "password_file = \"/nonexistent/pgkeel\"",
                "users[0].password_file",
            ),
            (
                "password = \"a\"\npassword_env = \"PATH\"",
                "users[0].password",
            ),
            ("pool_size = 3", "users[0].password"),
        ] {
            let src = format!("[[users]]\nname = \"a\"\n{users}\n[[servers]]\nhost = \"h\"\n");
            let e = Config::from_toml_str(&src).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{users}: {e}");
        }
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let src = "[admin]\nhttp_token = \"tok-secret-1\"\n[health]\nuser = \"u\"\npassword = \"health-secret-2\"\n[etcd]\nscope = \"s\"\nusername = \"e\"\npassword = \"etcd-secret-3\"\n[[users]]\nname = \"a\"\npassword = \"user-secret-4\"\nserver_password = \"server-secret-5\"\n";
        let c = Config::from_toml_str(src).unwrap();
        let shown = format!("{c:?}");
        for secret in [
            "tok-secret",
            "health-secret",
            "etcd-secret",
            "user-secret",
            "server-secret",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(c.admin_token.unwrap().matches(b"tok-secret-1"));
    }

    #[test]
    fn tls_pairs_and_modes_are_checked() {
        let with = |tls: &str| Config::from_toml_str(&format!("{MIN}\n[tls]\n{tls}\n"));
        let c = with("").unwrap();
        assert_eq!(c.tls.client_mode(), ClientTlsMode::Disable);
        assert_eq!(
            c.tls.server_auth_allow,
            vec![ServerAuth::ScramSha256, ServerAuth::Md5]
        );
        let c = with("cert = \"c.pem\"\nkey = \"k.pem\"").unwrap();
        assert_eq!(c.tls.client_mode(), ClientTlsMode::Prefer);
        for (bad, key) in [
            ("cert = \"c.pem\"", "tls.key"),
            ("client_tls_mode = \"require\"", "tls.client_tls_mode"),
            ("server_tls_mode = \"verify-full\"", "tls.server_ca"),
            ("server_key = \"k.pem\"", "tls.server_cert"),
        ] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{bad}: {e}");
        }
        assert!(with("server_tls_mode = \"verify-everything\"").is_err());
        assert!(with("server_auth_allow = [\"kerberos\"]").is_err());
    }
}
