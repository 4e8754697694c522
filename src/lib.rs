//! pgkeel: a PostgreSQL wire-protocol proxy and pooler.
//!
//! The data path, left to right: [`listener`] accepts, [`session`] logs the
//! client in and runs its transactions, [`router`] picks the member,
//! [`pool`] lends a server connection, [`backend`] is that connection, and
//! [`session::relay`] moves the bytes. [`topology`] publishes who is primary;
//! [`proxy`] wires it all. See ARCHITECTURE.md.

pub mod admin;
pub mod auth;
pub mod backend;
pub mod cancel;
pub mod classify;
pub mod clients;
pub mod commit_token;
pub mod config;
pub mod console;
pub mod dbstats;
#[doc(hidden)]
pub mod fuzzing;
pub mod handoff;
pub mod handover;
pub mod import;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod params;
pub mod pool;
pub mod protocol;
pub mod proxy;
pub mod querylog;
pub mod reload;
pub mod router;
pub mod scrape;
pub mod session;
pub mod shared;
pub mod statements;
pub mod stats_page;
pub mod system;
pub mod tls;
pub mod topology;

pub use proxy::{Proxy, ProxyHandle};
