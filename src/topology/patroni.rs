//! What Patroni keeps in etcd, as pgkeel reads it. Pure: no I/O, so the
//! parsing and the key bookkeeping are tested without a cluster.
//!
//! Keys under `<namespace><scope>/`: `leader` (the leader's member name),
//! `members/<name>` (JSON: conn_url, role, state, xlog_location, tags, ...),
//! `status` (`{"optime": N}`, the leader's WAL position), `failover`
//! (`{"leader": .., "member": ..}` while a switchover is planned, else `{}`),
//! `config` (the dynamic configuration: `synchronous_mode`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One member as its key describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatroniMember {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// `master` (Patroni 3.0), `primary` (newer), `replica`, `standby_leader`, `demoted`.
    pub role: String,
    /// `running`, `starting`, `stopping`, `stopped`, `crashed`, ...
    pub state: String,
    pub xlog_location: Option<u64>,
    pub timeline: Option<u64>,
    pub api_url: Option<String>,
    pub noloadbalance: bool,
    pub nofailover: bool,
}

impl PatroniMember {
    /// Patroni says this member runs as the writable leader.
    pub fn is_leader_role(&self) -> bool {
        matches!(self.role.as_str(), "master" | "primary")
    }
}

/// A planned switchover announced in the `failover` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Switchover {
    pub from: Option<String>,
    pub to: Option<String>,
    /// Set for `patronictl switchover --scheduled`: not imminent, so no drain
    /// (the leader key moving at the scheduled time still triggers the hold).
    pub scheduled_at: Option<String>,
}

/// Everything pgkeel knows from one scope's keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatroniState {
    pub leader: Option<String>,
    pub members: BTreeMap<String, PatroniMember>,
    pub optime: Option<u64>,
    pub switchover: Option<Switchover>,
    /// The dynamic `config` key says `synchronous_mode`: only a synchronous
    /// standby is promoted, so a commit the new leader lacks never
    /// happened for good.
    pub synchronous: bool,
    /// Member keys whose value could not be read, with the reason (logged once).
    pub unreadable: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct MemberJson {
    conn_url: Option<String>,
    api_url: Option<String>,
    #[serde(default)]
    role: String,
    #[serde(default)]
    state: String,
    xlog_location: Option<u64>,
    timeline: Option<u64>,
    #[serde(default)]
    tags: BTreeMap<String, serde_json::Value>,
}

/// Host and port of a libpq URL such as `postgres://127.0.0.1:5431/postgres`.
pub fn parse_conn_url(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit('@').next()?;
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, p) = v6.split_once(']')?;
        (h, p.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => 5432,
    };
    Some((host.to_owned(), port))
}

fn truthy(v: Option<&serde_json::Value>) -> bool {
    match v {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => {
            matches!(s.to_ascii_lowercase().as_str(), "true" | "on" | "yes" | "1")
        }
        Some(serde_json::Value::Number(n)) => n.as_i64() == Some(1),
        _ => false,
    }
}

pub fn parse_member(name: &str, value: &[u8]) -> Result<PatroniMember, String> {
    let m: MemberJson =
        serde_json::from_slice(value).map_err(|e| format!("not Patroni member JSON: {e}"))?;
    let url = m.conn_url.ok_or("no conn_url")?;
    let (host, port) = parse_conn_url(&url)
        .ok_or_else(|| format!("cannot read host and port from conn_url {url:?}"))?;
    Ok(PatroniMember {
        name: name.to_owned(),
        host,
        port,
        role: m.role,
        state: m.state,
        xlog_location: m.xlog_location,
        timeline: m.timeline,
        api_url: m.api_url,
        noloadbalance: truthy(m.tags.get("noloadbalance")),
        nofailover: truthy(m.tags.get("nofailover")),
    })
}

impl PatroniState {
    /// Applies a put (`Some(value)`) or a delete (`None`) of `key`, given
    /// relative to the scope prefix (e.g. `leader`, `members/pg1`).
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>) {
        match (key, value) {
            ("leader", Some(v)) => {
                let name = String::from_utf8_lossy(v).trim().to_owned();
                self.leader = (!name.is_empty()).then_some(name);
            }
            ("leader", None) => self.leader = None,
            ("status", Some(v)) => {
                self.optime = serde_json::from_slice::<serde_json::Value>(v)
                    .ok()
                    .and_then(|j| j.get("optime").and_then(|o| o.as_u64()));
            }
            ("status", None) => self.optime = None,
            ("failover", Some(v)) => {
                let j: serde_json::Value = serde_json::from_slice(v).unwrap_or_default();
                let field = |k: &str| j.get(k).and_then(|x| x.as_str()).map(str::to_owned);
                let (from, to) = (field("leader"), field("member"));
                let scheduled_at = field("scheduled_at");
                self.switchover = (from.is_some() || to.is_some()).then_some(Switchover {
                    from,
                    to,
                    scheduled_at,
                });
            }
            ("failover", None) => self.switchover = None,
            ("config", v) => {
                let j: serde_json::Value = v
                    .and_then(|v| serde_json::from_slice(v).ok())
                    .unwrap_or_default();
                self.synchronous = truthy(j.get("synchronous_mode"));
            }
            (k, v) => {
                let Some(name) = k.strip_prefix("members/") else {
                    return;
                };
                match v {
                    Some(v) => match parse_member(name, v) {
                        Ok(m) => {
                            self.unreadable.remove(name);
                            self.members.insert(name.to_owned(), m);
                        }
                        Err(e) => {
                            self.members.remove(name);
                            self.unreadable.insert(name.to_owned(), e);
                        }
                    },
                    None => {
                        self.members.remove(name);
                        self.unreadable.remove(name);
                    }
                }
            }
        }
    }

    /// Replication lag of `member` in bytes behind the leader's last optime.
    pub fn lag_bytes(&self, member: &PatroniMember) -> Option<u64> {
        if member.is_leader_role() {
            return Some(0);
        }
        Some(self.optime?.saturating_sub(member.xlog_location?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG1: &str = r#"{"conn_url":"postgres://127.0.0.1:5431/postgres","api_url":"http://127.0.0.1:8008/patroni","state":"running","role":"master","version":"3.0.2","xlog_location":71602112,"timeline":1}"#;
    const PG2: &str = r#"{"conn_url":"postgres://127.0.0.1:5432/postgres","state":"running","role":"replica","xlog_location":71600000,"tags":{"noloadbalance":true,"nofailover":"true"}}"#;

    #[test]
    fn conn_urls() {
        assert_eq!(
            parse_conn_url("postgres://127.0.0.1:5431/postgres"),
            Some(("127.0.0.1".into(), 5431))
        );
        assert_eq!(
            parse_conn_url("postgresql://u:p@db.example:6000/x?sslmode=off"),
            Some(("db.example".into(), 6000))
        );
        assert_eq!(
            parse_conn_url("postgres://[::1]:5433/postgres"),
            Some(("::1".into(), 5433))
        );
        assert_eq!(
            parse_conn_url("postgres://host/postgres"),
            Some(("host".into(), 5432))
        );
        assert_eq!(parse_conn_url("http://host:1/"), None);
        assert_eq!(parse_conn_url("postgres://:5/"), None);
    }

    #[test]
    fn keys_build_and_unbuild_the_state() {
        let mut s = PatroniState::default();
        s.apply("members/pg1", Some(PG1.as_bytes()));
        s.apply("members/pg2", Some(PG2.as_bytes()));
        s.apply("leader", Some(b"pg1"));
        s.apply("status", Some(br#"{"optime":71602112}"#));
        s.apply("config", Some(b"{}"));
        assert_eq!(s.leader.as_deref(), Some("pg1"));
        let pg1 = &s.members["pg1"];
        assert!(pg1.is_leader_role());
        assert_eq!((pg1.host.as_str(), pg1.port), ("127.0.0.1", 5431));
        let pg2 = &s.members["pg2"];
        assert!(pg2.noloadbalance && pg2.nofailover);
        assert_eq!(s.lag_bytes(pg2), Some(2112));
        assert_eq!(s.lag_bytes(pg1), Some(0));

        s.apply("failover", Some(br#"{"leader":"pg1","member":"pg2"}"#));
        assert_eq!(
            s.switchover,
            Some(Switchover {
                from: Some("pg1".into()),
                to: Some("pg2".into()),
                scheduled_at: None
            })
        );
        s.apply("failover", Some(b"{}"));
        assert_eq!(s.switchover, None);

        s.apply("leader", None);
        assert_eq!(s.leader, None);
        s.apply("members/pg2", None);
        assert!(!s.members.contains_key("pg2"));
    }

    #[test]
    fn synchronous_mode_comes_from_the_config_key() {
        let mut s = PatroniState::default();
        s.apply("config", Some(br#"{"ttl":10,"synchronous_mode":true}"#));
        assert!(s.synchronous);
        s.apply("config", Some(br#"{"ttl":10}"#));
        assert!(!s.synchronous);
        s.apply("config", Some(br#"{"synchronous_mode":"on"}"#));
        assert!(s.synchronous);
        s.apply("config", None);
        assert!(!s.synchronous);
    }

    #[test]
    fn newer_patroni_primary_role_and_bad_values() {
        let mut s = PatroniState::default();
        s.apply(
            "members/pg3",
            Some(br#"{"conn_url":"postgres://h:1/x","role":"primary","state":"running"}"#),
        );
        assert!(s.members["pg3"].is_leader_role());
        s.apply("members/pg3", Some(b"not json"));
        assert!(!s.members.contains_key("pg3"));
        assert!(s.unreadable.contains_key("pg3"));
        s.apply("members/pg4", Some(br#"{"role":"replica"}"#));
        assert!(s.unreadable["pg4"].contains("conn_url"));
    }
}
