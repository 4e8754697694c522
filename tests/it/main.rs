//! pgkeel's integration tests: one test binary, so one link, one PostgreSQL
//! 15 (`common::shared_pg`) and one Patroni cluster (`common::cluster`)
//! shared by every module below, and their tests run as threads of one
//! process (`cargo test --test it -- --test-threads=2`). One module's tests:
//! `cargo test --test it data_path::`.
//!
//! To add a test module: put it in this folder as `tests/it/<name>.rs`, add
//! `mod <name>;` below (one line per file, sorted), and start it with
//! `use crate::common;` / `use crate::support;` as it needs them, never a
//! `mod common;` of its own (that would start a second server). Sharing
//! rules, because every module runs next to every other:
//! - name the tables, schemas, roles and databases it creates after the
//!   module (`dp_*`, `routing_*`), or create shared ones once (`OnceLock`);
//! - server-wide changes (ALTER SYSTEM, pg_hba.conf, restarts, killing
//!   backends other than the test's own) need a server of the test's own
//!   (started the way `common::start_replica` and `common::start_etcd`
//!   start theirs, with `common::TiedProcess`), never the shared one;
//! - a test that uses the Patroni cluster holds a turn for its whole
//!   length: `common::cluster::turn()` to have it alone (it switches
//!   leaders, kills members, stops etcd, pauses replay, or counts where
//!   reads land), asking for the mode it needs (`Turn::cluster()` or
//!   `Turn::sync_cluster()`); or `common::cluster::shared_turn()` when it
//!   changes nothing and minds no one else's traffic (scratch etcd scopes),
//!   to run alongside the others that do the same.

mod common;
mod support;

mod admin_console;
mod auth;
mod bad_input;
mod chaos;
mod cli;
mod console_compat;
mod data_path;
mod deploy_files;
mod differential;
mod docs;
mod drivers;
mod failover;
mod fleet;
mod handover;
mod harness_smoke;
mod hostile_frames;
mod hostile_limits;
mod import;
mod isolation;
mod isolation_settings;
mod metrics_promtool;
mod patroni;
mod prepared;
mod query_log;
mod reload;
mod replay;
mod routing;
mod stats_page;
mod tls;
mod transparency;
