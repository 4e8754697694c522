//! A session moving to a new pgkeel process at an upgrade (`handoff.rs`
//! carries it, `handover/` is the transport): whether it can move now
//! (`movable`, pure), its state, and the other end, rebuilding a session
//! from that state (`resume`).

use std::os::fd::AsFd;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::{startup::Login, Session};
use crate::config::{ListenerRoute, PoolMode};
use crate::handoff::{Answer, SessionState};
use crate::limits::{ClientCaps, Kind};
use crate::shared::Shared;
use crate::tls::Stream;

/// What keeps a session on the old process, as the facts `movable` reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts {
    pub session_mode: bool,
    pub attached: bool,
    pub pinned: bool,
    /// A deferred BEGIN, a deferred transaction that failed, a server lost
    /// while idle in a transaction, a transaction being replayed, or an
    /// error's skip to Sync: state that lives in this process's loop only.
    pub deferred: bool,
    /// A TLS client: its session keys cannot move.
    pub tls: bool,
    /// Bytes of the next request already read from the socket.
    pub buffered: bool,
    /// This handover already refused this client (or had ended).
    pub refused: bool,
}

/// Why a session cannot move now (`None`: it can).
pub fn movable(f: Facts) -> Option<&'static str> {
    if f.session_mode {
        Some("session mode")
    } else if f.pinned {
        Some("pinned")
    } else if f.tls {
        Some("TLS")
    } else if f.refused {
        Some("refused")
    } else if f.attached || f.deferred || f.buffered {
        Some("busy")
    } else {
        None
    }
}

impl Session {
    fn handoff_facts(&self) -> Facts {
        Facts {
            session_mode: self.user.pool_mode == PoolMode::Session || self.login.key_owed,
            attached: self.server.is_some(),
            pinned: self.pinned.is_some(),
            deferred: self.deferred_begin.is_some()
                || self.deferred_aborted
                || self.lost.is_some()
                || self.skip_until_sync
                || self.replay.is_some(),
            tls: self.client.is_tls(),
            buffered: !self.att.bufs.from_client.is_empty(),
            refused: self.handoff_tried == self.shared.handoff.generation(),
        }
    }

    /// Whether this session would move now if a handover were under way.
    pub(super) fn can_move(&self) -> bool {
        movable(self.handoff_facts()).is_none()
    }

    /// Whether it could move at the next handover, this one's refusal aside.
    pub(super) fn could_move(&self) -> bool {
        movable(Facts {
            refused: false,
            ..self.handoff_facts()
        })
        .is_none()
    }

    fn handoff_state(&self) -> SessionState {
        let want = &self.want;
        SessionState {
            peer: self.peer,
            listener: self.listener,
            user: self.user.name.clone(),
            database: self.database.clone(),
            startup: self.login.params.clone(),
            cancel_pid: self.login.cancel.pid,
            cancel_secret: self.login.cancel.secret,
            want_reported: crate::params::TRACKED
                .iter()
                .filter_map(|n| want.get(n).map(|v| ((*n).to_owned(), v.to_owned())))
                .collect(),
            want_extra: want.extra().clone(),
            want_hidden: want.hidden().to_vec(),
            prepared: self.prepared.export(),
            default_read_only: self.default_read_only,
            min_lsn: self.min_lsn,
        }
    }

    /// Offers this session to the new process: true once it serves the
    /// client (this one then closes its copy of the socket, saying nothing).
    /// Otherwise the session goes on here and is not offered again in this
    /// handover.
    pub(super) async fn hand_over(&mut self) -> bool {
        self.handoff_tried = self.shared.handoff.generation();
        let Some(socket) = self
            .client
            .tcp()
            .and_then(|t| t.as_fd().try_clone_to_owned().ok())
        else {
            self.on_handoff = super::signal::Signal::new(self.shared.handoff.round());
            return false;
        };
        let answer = self
            .shared
            .handoff
            .offer(self.handoff_state(), socket)
            .await;
        if answer != Answer::Taken {
            // Not again in this handover: waits for the next one.
            self.on_handoff = super::signal::Signal::new(self.shared.handoff.round());
        }
        answer == Answer::Taken
    }
}

/// A session rebuilt from another process's state, ready to serve.
pub struct Resumed {
    session: Session,
}

/// Rebuilds the session `state` describes on `tcp` (the client's socket,
/// received from the old process): its user must still be configured, the
/// client caps must admit it, and its cancel key must be free here. The
/// client is not asked anything: it logged in to the old process.
pub fn resume(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    state: SessionState,
) -> Result<Resumed, String> {
    let cfg = shared.config.load_full();
    let user = cfg
        .user(&state.user)
        .cloned()
        .ok_or_else(|| format!("user \"{}\" is not in this configuration", state.user))?;
    if user.pool_mode != PoolMode::Transaction {
        return Err(format!("user \"{}\" is in session mode here", state.user));
    }
    let permit = shared
        .limits
        .client(
            &user.name,
            &state.database,
            Kind::Session,
            ClientCaps::from_config(&cfg.proxy),
        )
        .map_err(|limit| format!("{} reached", limit.setting()))?;
    let cancel = shared
        .cancels
        .adopt(state.cancel_pid, state.cancel_secret)
        .ok_or("its cancel key is in use here")?;
    let mut want = crate::params::Params::from_pairs(
        state
            .want_reported
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    want.set_extra(state.want_extra);
    want.remember_hidden(state.want_hidden);
    let login = Login {
        user,
        database: state.database,
        params: state.startup,
        cancel,
        pending: Default::default(),
        want,
        permit,
        key_owed: false,
    };
    let listener: ListenerRoute = state.listener;
    let mut session = Session::new(
        shared.clone(),
        Stream::plain(tcp),
        state.peer,
        login,
        listener,
    );
    for s in state.prepared {
        session.prepared.import(s);
    }
    session.default_read_only = state.default_read_only;
    session.min_lsn = state.min_lsn;
    Ok(Resumed { session })
}

impl Resumed {
    /// Serves the client to the end, as `session::serve` does a new login.
    pub async fn serve(mut self) {
        let s = &mut self.session;
        tracing::info!(peer = %s.peer, user = %s.user.name, database = %s.database, "client taken over from the old process");
        let reason = s.run().await;
        if s.pinned.is_some() {
            s.shared.metrics.pinned_clients.dec();
        }
        tracing::info!(peer = %s.peer, user = %s.user.name, reason, "client disconnected");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_idle_plain_transaction_session_moves() {
        assert_eq!(movable(Facts::default()), None);
        let cases = [
            (
                Facts {
                    session_mode: true,
                    ..Facts::default()
                },
                "session mode",
            ),
            (
                Facts {
                    pinned: true,
                    ..Facts::default()
                },
                "pinned",
            ),
            (
                Facts {
                    tls: true,
                    ..Facts::default()
                },
                "TLS",
            ),
            (
                Facts {
                    attached: true,
                    ..Facts::default()
                },
                "busy",
            ),
            (
                Facts {
                    deferred: true,
                    ..Facts::default()
                },
                "busy",
            ),
            (
                Facts {
                    buffered: true,
                    ..Facts::default()
                },
                "busy",
            ),
            (
                Facts {
                    refused: true,
                    ..Facts::default()
                },
                "refused",
            ),
        ];
        for (f, why) in cases {
            assert_eq!(movable(f), Some(why), "{f:?}");
        }
    }
}
