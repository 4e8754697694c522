//! The documentation's examples, run: README.md and every page of docs/.
//!
//! - Every ```toml block is a config file or a fragment of one; completed
//!   with a server and a user where it has none, `pgkeel --check-config`
//!   must accept it (the config denies unknown keys, so a renamed key in
//!   the docs fails here). Secrets it reads from the environment or from
//!   files (`password_env`, `password_file`, `http_token_file`) are
//!   provided.
//! - Every key of the shipped `config.toml` is documented: named in a
//!   reference table (`proxy.pool_size`) or shown in a TOML example under
//!   its section.
//! - Every ```sh block whose commands are all `psql` or `curl` (what a user
//!   types against a running pgkeel) runs against a pgkeel in front of the
//!   shared PostgreSQL, with the docs' addresses (127.0.0.1:54320, the
//!   admin endpoint on 9930, database `app`) rewritten to the test's; the
//!   migration page's PgBouncer port (6432) goes to a second pgkeel whose
//!   console answers as `pgbouncer`, as that page configures it.
//!   Blocks with other commands (the cluster script, cargo, promtool) are
//!   shown but not run here; their own tests run them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common;
use crate::support;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One fenced block: where it is, its info string, its text.
struct Block {
    file: String,
    line: usize,
    info: String,
    text: String,
}

fn doc_files() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    files.extend(pages);
    files
}

fn blocks_of(path: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(path).unwrap();
    let file = path.strip_prefix(repo()).unwrap().display().to_string();
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        match open.take() {
            None => {
                if let Some(info) = line.strip_prefix("```") {
                    open = Some(Block {
                        file: file.clone(),
                        line: i + 1,
                        info: info.trim().to_string(),
                        text: String::new(),
                    });
                }
            }
            Some(mut b) => {
                if line.trim_start().starts_with("```") {
                    out.push(b);
                } else {
                    b.text.push_str(line);
                    b.text.push('\n');
                    open = Some(b);
                }
            }
        }
    }
    assert!(open.is_none(), "{file}: a code block is never closed");
    out
}

fn all_blocks() -> Vec<Block> {
    doc_files().iter().flat_map(|f| blocks_of(f)).collect()
}

/// A TOML example made a whole config: a server and a user added where the
/// example has none, so that only the example's own keys are judged.
fn completed(example: &str) -> Result<toml::Table, String> {
    let mut doc: toml::Table = example.parse().map_err(|e| format!("not TOML: {e}"))?;
    if !doc.contains_key("servers") && !doc.contains_key("etcd") {
        doc.insert(
            "servers".into(),
            toml::Value::Array(vec![toml::Value::Table(
                "host = \"127.0.0.1\"\nport = 5432".parse().unwrap(),
            )]),
        );
    }
    if !doc.contains_key("users") {
        doc.insert(
            "users".into(),
            toml::Value::Array(vec![toml::Value::Table(
                "name = \"app\"\npassword = \"app_password\""
                    .parse()
                    .unwrap(),
            )]),
        );
    }
    // Console users the example names but does not define are [[users]]
    // entries of the file it is a part of.
    let mut named = Vec::new();
    if let Some(admin) = doc.get("admin").and_then(|a| a.as_table()) {
        for key in ["users", "stats_users"] {
            for n in admin
                .get(key)
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
            {
                if let Some(n) = n.as_str() {
                    named.push(n.to_owned());
                }
            }
        }
    }
    let users = doc
        .get_mut("users")
        .and_then(|u| u.as_array_mut())
        .ok_or("`users` is not an array of tables")?;
    for n in named {
        let known = users
            .iter()
            .any(|u| u.get("name").and_then(|v| v.as_str()) == Some(n.as_str()));
        if !known {
            let mut u = toml::Table::new();
            u.insert("name".into(), n.clone().into());
            u.insert("password".into(), format!("{n}_password").into());
            users.push(toml::Value::Table(u));
        }
    }
    Ok(doc)
}

/// Secrets an example takes from outside the file (`*_env`, `*_file`):
/// the variables to set and the files to create for `--check-config`,
/// with the example rewritten to point at the created files.
fn secrets_for(mut doc: toml::Table, dir: &Path) -> (String, Vec<(String, String)>) {
    let mut env = Vec::new();
    let mut n = 0;
    fn walk(v: &mut toml::Value, dir: &Path, env: &mut Vec<(String, String)>, n: &mut usize) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t.iter_mut() {
                    match (k.as_str(), v.as_str()) {
                        (k, Some(name)) if k.ends_with("_env") => {
                            env.push((name.to_owned(), "docs-secret".into()));
                        }
                        ("password_file" | "http_token_file", Some(_)) => {
                            *n += 1;
                            let f = dir.join(format!("secret{n}"));
                            std::fs::write(&f, "docs-secret\n").unwrap();
                            *v = f.display().to_string().into();
                        }
                        _ => walk(v, dir, env, n),
                    }
                }
            }
            toml::Value::Array(a) => a.iter_mut().for_each(|v| walk(v, dir, env, n)),
            _ => {}
        }
    }
    for (_, v) in doc.iter_mut() {
        walk(v, dir, &mut env, &mut n);
    }
    (toml::to_string(&doc).unwrap(), env)
}

#[test]
fn every_toml_example_is_a_valid_config() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for b in all_blocks().iter().filter(|b| b.info == "toml") {
        let cfg = match completed(&b.text) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{}:{}: {e}", b.file, b.line));
                continue;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let (cfg, env) = secrets_for(cfg, dir.path());
        let file = dir.path().join("example.toml");
        std::fs::write(&file, &cfg).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_pgkeel"))
            .arg("--check-config")
            .arg(&file)
            .envs(env)
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!(
                "{}:{}: pgkeel --check-config refused it: {}{}",
                b.file,
                b.line,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} TOML examples found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `(section, key)` of every key `config.toml` sets.
fn shipped_keys() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(repo().join("config.toml")).unwrap();
    let doc: toml::Table = text.parse().unwrap();
    let mut keys = BTreeSet::new();
    for (section, value) in &doc {
        let tables: Vec<&toml::Table> = match value {
            toml::Value::Table(t) => vec![t],
            toml::Value::Array(a) => a.iter().filter_map(|v| v.as_table()).collect(),
            _ => continue,
        };
        for t in tables {
            for key in t.keys() {
                keys.insert((section.clone(), key.clone()));
            }
        }
    }
    keys
}

/// `(section, key)` pairs the docs name: `section.key` in backticks (a
/// reference row's later cells may name more keys of the same section
/// bare: `` `health.user` / `password` ``), and `key = ...` lines inside
/// a TOML example, under their `[section]`.
fn documented_keys() -> BTreeSet<(String, String)> {
    let mut keys = BTreeSet::new();
    for f in doc_files() {
        let text = std::fs::read_to_string(&f).unwrap();
        for line in text.lines() {
            let Some(cell) = line.strip_prefix("| ").and_then(|l| l.split(" | ").next()) else {
                continue;
            };
            let mut section: Option<String> = None;
            for (i, tick) in cell.split('`').enumerate() {
                if i % 2 == 0 {
                    continue;
                }
                match tick.split_once('.') {
                    Some((s, k)) => {
                        section = Some(s.to_string());
                        keys.insert((s.to_string(), k.to_string()));
                    }
                    None => {
                        if let Some(s) = &section {
                            keys.insert((s.clone(), tick.to_string()));
                        }
                    }
                }
            }
        }
        for b in blocks_of(&f).iter().filter(|b| b.info == "toml") {
            let mut section = String::new();
            for line in b.text.lines() {
                let l = line.trim_start_matches(['#', ' ']);
                if let Some(h) = l.strip_prefix('[') {
                    section = h
                        .trim_start_matches('[')
                        .split(']')
                        .next()
                        .unwrap()
                        .to_string();
                } else if let Some((k, _)) = l.split_once('=') {
                    let k = k.trim();
                    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        keys.insert((section.clone(), k.to_string()));
                    }
                }
            }
        }
    }
    keys
}

#[test]
fn every_shipped_config_key_is_documented() {
    let documented = documented_keys();
    let missing: Vec<String> = shipped_keys()
        .into_iter()
        .filter(|k| !documented.contains(k))
        .map(|(s, k)| format!("{s}.{k}"))
        .collect();
    assert!(
        missing.is_empty(),
        "config.toml has keys no page of docs/ (or README) documents: {missing:?}"
    );
}

/// Whether a shell example is one a test can run against a plain pgkeel:
/// every command a `psql` or a `curl`.
fn runnable(sh: &str) -> bool {
    let mut any = false;
    for line in sh.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cmd = line
            .strip_prefix("PGPASSWORD=")
            .and_then(|rest| rest.split_once(' ').map(|(_, c)| c))
            .unwrap_or(line);
        // A one-line loop of psql calls counts: `for i in 1 2; do psql ...; done`.
        let looped = cmd.starts_with("for ") && cmd.contains("; do psql ");
        let ok = cmd.starts_with("psql ")
            || cmd.starts_with("curl ")
            || cmd.starts_with("export PG")
            || looped;
        if !ok {
            return false;
        }
        any = true;
    }
    any
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_psql_and_curl_example_runs() {
    let pg = common::shared_pg();
    let cfg = support::config(
        pg.port,
        "",
        r#"
[[users]]
name = "admin"
password = "admin_password"
"#,
    )
    .replace("[admin]\n", "[admin]\nusers = [\"admin\"]\n");
    let proxy = support::start(&cfg).await;
    let addr = proxy.local_addr();
    let admin = proxy.admin_addr().expect("admin endpoint");
    // The migration page's pgkeel on PgBouncer's port, with PgBouncer's
    // console database name, as that page configures it.
    let bouncer_cfg = cfg.replace("[admin]\n", "[admin]\ndatabase = \"pgbouncer\"\n");
    let bouncer = support::start(&bouncer_cfg).await;
    let bouncer_addr = bouncer.local_addr();
    let rewrite = |sh: &str| {
        sh.replace("127.0.0.1:54320/app", &format!("{addr}/appdb"))
            .replace("-p 6432", &format!("-p {}", bouncer_addr.port()))
            .replace("127.0.0.1:6432", &bouncer_addr.to_string())
            .replace("127.0.0.1:54320", &addr.to_string())
            .replace("-p 54320", &format!("-p {}", addr.port()))
            .replace("127.0.0.1:9930", &admin.to_string())
    };
    let mut ran = 0;
    let mut failures = Vec::new();
    for b in all_blocks()
        .iter()
        .filter(|b| b.info == "sh" && runnable(&b.text))
    {
        let script = rewrite(&b.text);
        let out = tokio::process::Command::new("bash")
            .arg("-e")
            .arg("-o")
            .arg("pipefail")
            .arg("-c")
            .arg(format!(
                "export PGCONNECT_TIMEOUT=10 PSQLRC=/dev/null\n{script}"
            ))
            .output()
            .await
            .unwrap();
        if !out.status.success() {
            failures.push(format!(
                "{}:{}: exit {:?}\n{script}\nstdout: {}\nstderr: {}",
                b.file,
                b.line,
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        ran += 1;
    }
    assert!(ran >= 5, "only {ran} runnable shell examples found");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
