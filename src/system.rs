//! What pgkeel asks of the operating system: TCP keepalive on client and
//! server sockets, and an open-file limit that fits its connections.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

use crate::config::ProxyConfig;

/// Keepalive as `[proxy] tcp_keepalive*` says, or none when it is off.
pub fn keepalive_settings(p: &ProxyConfig) -> Option<TcpKeepalive> {
    p.tcp_keepalive.then(|| {
        TcpKeepalive::new()
            .with_time(nonzero(p.tcp_keepalive_idle.0))
            .with_interval(nonzero(p.tcp_keepalive_interval.0))
            .with_retries(p.tcp_keepalive_count.max(1))
    })
}

/// The kernel takes whole seconds, at least one.
fn nonzero(d: Duration) -> Duration {
    d.max(Duration::from_secs(1))
}

/// Turns keepalive on for a socket: a peer that vanished without a FIN (a
/// crashed host, a cut cable) is noticed instead of holding its slot or its
/// server connection forever. Failing to set it is not worth a connection.
pub fn set_keepalive<'a>(sock: impl Into<SockRef<'a>>, ka: Option<&TcpKeepalive>) {
    if let Some(ka) = ka {
        let sock = sock.into();
        if let Err(e) = sock.set_tcp_keepalive(ka) {
            tracing::debug!(error = %e, "cannot set TCP keepalive");
        }
    }
}

/// File descriptors pgkeel may need: a client socket per client and per
/// login in flight, a server connection per pool slot, and some to spare
/// (listeners, etcd, probes, log files).
pub fn files_needed(p: &ProxyConfig, pool_slots: u64) -> u64 {
    const SPARE: u64 = 256;
    u64::from(p.max_client_connections)
        + u64::from(p.admin_reserved_connections)
        + u64::from(p.max_login_connections)
        + pool_slots
        + SPARE
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (EMFILE long before
/// `max_client_connections` otherwise) and warns when even that is below
/// what the config needs. Returns the soft limit now in force.
pub fn raise_open_files(needed: u64) -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open-file limit");
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::info!(
                from = lim.rlim_cur,
                to = lim.rlim_max,
                "raised the open-file limit to its hard limit"
            );
            lim.rlim_cur = lim.rlim_max;
        } else {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot raise the open-file limit");
        }
    }
    let soft: u64 = lim.rlim_cur;
    if soft < needed {
        tracing::warn!(
            limit = soft,
            needed,
            "the open-file limit is below what max_client_connections, max_login_connections and the pools need; raise it (ulimit -n, LimitNOFILE=) or lower them"
        );
    }
    Some(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_follows_the_config() {
        let mut p = ProxyConfig::default();
        assert!(keepalive_settings(&p).is_some());
        p.tcp_keepalive = false;
        assert!(keepalive_settings(&p).is_none());
    }

    #[test]
    fn open_file_limit_is_raised_to_the_hard_limit() {
        let soft = raise_open_files(0).expect("getrlimit works");
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!((soft, lim.rlim_cur), (lim.rlim_max, lim.rlim_max));
    }

    #[test]
    fn files_needed_counts_clients_logins_and_pools() {
        let p = ProxyConfig::default();
        assert_eq!(files_needed(&p, 40), 10_000 + 3 + 1000 + 40 + 256);
    }
}
