//! The console's commands that act: RELOAD, PAUSE, RESUME, RECONNECT,
//! WAIT_CLOSE, DISABLE, ENABLE, KILL and SHUTDOWN, with PgBouncer's meaning.

use std::time::Duration;

use super::parse::{Command, Show};
use super::result::{fail, Failure, Reply};
use super::{show, Console, NOT_IN_PREREQUISITE_STATE};
use crate::clients::ClientState;
use crate::protocol::sqlstate;

/// How long KILL waits for the clients' sessions to end.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// How often PAUSE and WAIT_CLOSE look whether they are done.
const POLL: Duration = Duration::from_millis(20);

const UNDEFINED_OBJECT: &str = "42704";
const CONFIG_FILE_ERROR: &str = "F0000";
const QUERY_CANCELED: &str = "57014";

impl Console {
    pub(super) async fn execute(&mut self, cmd: Command) -> Result<Reply, Failure> {
        if !cmd.read_only() && !self.may_change() {
            return Err(fail(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!(
                    "permission denied: user \"{}\" is in [admin] stats_users, which may only run SHOW",
                    self.user
                ),
            ));
        }
        let s = &self.shared;
        Ok(match cmd {
            Command::Show(what) => Reply::Rows(match what {
                Show::Stats => show::stats::stats(s),
                Show::StatsTotals => show::stats::stats_totals(s),
                Show::StatsAverages => show::stats::stats_averages(s),
                Show::Totals => show::stats::totals(s),
                Show::Pools => show::pools::pools(s),
                Show::MemberPools => show::pools::member_pools(s),
                Show::Databases => show::pools::databases(s),
                Show::Lists => show::lists::lists(s),
                Show::Mem => show::lists::mem(s),
                Show::Users => show::lists::users(s),
                Show::Clients => show::conns::clients(s),
                Show::Servers => show::conns::servers(s),
                Show::Config => show::config::config(s),
                Show::Topology => show::cluster::topology(s),
                Show::Failovers => show::cluster::failovers(s),
                Show::Peers => show::cluster::peers(s),
                Show::Version => show::version(),
                Show::Help => show::help(),
            }),
            Command::Reload => self.reload()?,
            Command::Pause(db) => self.pause(db.as_deref()).await?,
            Command::Resume(db) => self.resume(db.as_deref())?,
            Command::Reconnect(db) => self.reconnect(db.as_deref())?,
            Command::WaitClose(db) => self.wait_close(db.as_deref()).await?,
            Command::Disable(db) => self.disable(&db, true)?,
            Command::Enable(db) => self.disable(&db, false)?,
            Command::KillDatabase(db) => self.kill_database(&db).await?,
            Command::KillClient(id) => self.kill_client(id).await?,
            Command::Shutdown => {
                tracing::info!(user = %self.user, "SHUTDOWN from the admin console");
                self.shared.stop_requested.notify_one();
                Reply::Done("SHUTDOWN", Vec::new())
            }
        })
    }

    /// Users in `[admin] users` may; `stats_users` only look.
    fn may_change(&self) -> bool {
        self.shared.config.load().admin.users.contains(&self.user)
    }

    fn not_the_console(&self, db: &str, what: &str) -> Result<(), Failure> {
        if db == self.shared.config.load().admin.database {
            return Err(fail(
                NOT_IN_PREREQUISITE_STATE,
                format!("the admin console's database cannot be {what}"),
            ));
        }
        Ok(())
    }

    /// The pools of `db`, or all.
    fn pools_of(&self, db: Option<&str>) -> Vec<std::sync::Arc<crate::pool::Pool>> {
        self.shared
            .pools
            .all()
            .into_iter()
            .filter(|p| db.is_none_or(|d| p.key.database == d))
            .collect()
    }

    /// RECONNECT: every server connection of `db` (or all) is closed and
    /// replaced: idle ones now, lent ones when their transaction ends.
    fn reconnect(&mut self, db: Option<&str>) -> Result<Reply, Failure> {
        tracing::info!(user = %self.user, database = db.unwrap_or("(all)"), "RECONNECT from the admin console");
        for p in self.pools_of(db) {
            p.reconnect();
        }
        Ok(Reply::Done("RECONNECT", Vec::new()))
    }

    /// WAIT_CLOSE: waits until the connections RECONNECT marked are closed.
    async fn wait_close(&mut self, db: Option<&str>) -> Result<Reply, Failure> {
        loop {
            let left: usize = self.pools_of(db).iter().map(|p| p.stale()).sum();
            if left == 0 {
                return Ok(Reply::Done("WAIT_CLOSE", Vec::new()));
            }
            self.wait_a_little("the wait was stopped").await?;
        }
    }

    /// One poll interval, or the statement's cancel, or shutdown.
    async fn wait_a_little(&mut self, cancelled: &str) -> Result<(), Failure> {
        let slot = self.cancel.slot.clone();
        tokio::select! {
            _ = tokio::time::sleep(POLL) => Ok(()),
            _ = slot.cancelled() => Err(fail(QUERY_CANCELED, format!("canceling statement due to user request; {cancelled}"))),
            _ = self.shutdown.changed() => Err(fail(sqlstate::ADMIN_SHUTDOWN, "pgkeel is shutting down")),
        }
    }

    /// DISABLE / ENABLE: new logins to `db` are refused (55000) / let in.
    fn disable(&mut self, db: &str, disabled: bool) -> Result<Reply, Failure> {
        let tag = if disabled { "DISABLE" } else { "ENABLE" };
        self.not_the_console(db, "disabled")?;
        tracing::info!(user = %self.user, database = db, "{tag} from the admin console");
        self.shared.disabled.set(db, disabled);
        Ok(Reply::Done(tag, Vec::new()))
    }

    /// KILL db: pauses the database (new transactions wait for RESUME),
    /// ends every client connected to it (FATAL 57P01) and closes its
    /// server connections.
    async fn kill_database(&mut self, db: &str) -> Result<Reply, Failure> {
        self.not_the_console(db, "killed")?;
        // Already paused is fine: KILL only adds the kills.
        let _ = self.shared.pause.pause(Some(db));
        tracing::info!(user = %self.user, database = db, "KILL of a database from the admin console");
        let victims: Vec<_> = self
            .shared
            .clients
            .all()
            .into_iter()
            .filter(|c| !c.spec.admin && c.spec.database == db)
            .collect();
        let deadline = tokio::time::Instant::now() + KILL_WAIT;
        for c in &victims {
            c.kill();
        }
        for c in &victims {
            let gone = c.gone();
            tokio::pin!(gone);
            gone.as_mut().enable();
            if self.shared.clients.get(c.id).is_some() {
                let _ = tokio::time::timeout_at(deadline, gone).await;
            }
        }
        for p in self.pools_of(Some(db)) {
            p.reconnect();
        }
        let left = victims
            .iter()
            .filter(|c| self.shared.clients.get(c.id).is_some())
            .count();
        let notices = if left == 0 {
            Vec::new()
        } else {
            vec![(
                "WARNING",
                format!(
                    "{left} client(s) were told to end but are still cleaning up after {}s",
                    KILL_WAIT.as_secs()
                ),
            )]
        };
        Ok(Reply::Done("KILL", notices))
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
        if let Some(db) = db {
            self.not_the_console(db, "paused")?;
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
            if let Err(f) = self.wait_a_little("the pause was undone").await {
                // A cancelled statement has no effect.
                if f.code == QUERY_CANCELED {
                    let _ = self.shared.pause.resume(db);
                }
                return Err(f);
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
    async fn kill_client(&mut self, id: u64) -> Result<Reply, Failure> {
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
