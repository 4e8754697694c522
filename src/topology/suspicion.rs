//! Fast suspicion, the pure part: what a probe result does to a suspected
//! member, and how suspects are taken out of a computed topology. The
//! publisher (the topology's one writer) raises suspicions and applies these.

use std::time::{Duration, Instant};

use super::Topology;

/// At most this long for a suspected member to answer on a fresh
/// connection (a crashed server refuses at once; a hung one holds clients
/// no longer than this before it is marked down).
pub const SUSPECT_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// What a suspected member's snapshot says while it is being probed.
pub(super) const SUSPECT_ERROR: &str = "suspect: a server connection ended unexpectedly; probing";

/// A member under suspicion.
#[derive(Debug, Clone, Copy)]
pub(super) struct Suspect {
    /// When the publisher raised it.
    pub(super) since: Instant,
    /// The one-off probe that decides it.
    pub(super) token: u64,
}

/// What a probe result does to a member's state and its suspicion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Record the result; the suspicion (if any) stands.
    Store,
    /// Says nothing about the member now: drop it.
    Ignore,
    /// The suspicion's probe answered: the member is fine.
    Cleared,
    /// A probe failed while suspect: the member is down.
    Confirmed,
}

/// Pure: how a result (`token`: which one-off probe, `None` for the
/// regular loop; `started`: when it began) bears on a member that is
/// `suspect`, or was last suspected at `distrust_before`. Only the
/// suspicion's own probe, on a fresh connection, clears it; any failure
/// confirms it; a success that began before the suspicion is stale.
pub(super) fn verdict(
    suspect: Option<Suspect>,
    distrust_before: Option<Instant>,
    token: Option<u64>,
    started: Instant,
    ok: bool,
) -> Verdict {
    match (suspect, token) {
        (Some(s), Some(t)) if s.token == t => {
            if ok {
                Verdict::Cleared
            } else {
                Verdict::Confirmed
            }
        }
        // A one-off probe for a suspicion already decided.
        (_, Some(_)) => Verdict::Ignore,
        (Some(_), None) if !ok => Verdict::Confirmed,
        (_, None) if ok && distrust_before.is_some_and(|d| started < d) => Verdict::Ignore,
        (_, None) => Verdict::Store,
    }
}

/// Pure: takes suspected members out of a computed topology. A suspected
/// member is down; a suspected primary leaves no primary (never another
/// one in its place).
pub(super) fn hold_suspects(t: &mut Topology, suspected: &[&str]) {
    if suspected.is_empty() {
        return;
    }
    for m in &mut t.members {
        if suspected.contains(&m.member.name.as_str()) {
            m.healthy = false;
            m.last_error = Some(SUSPECT_ERROR.to_owned());
        }
    }
    if t.primary
        .as_ref()
        .is_some_and(|p| suspected.contains(&p.name.as_str()))
    {
        t.primary = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Member, MemberState, Role};
    use std::sync::Arc;

    #[test]
    fn verdicts() {
        let t0 = Instant::now();
        let s = Suspect {
            since: t0 + Duration::from_millis(5),
            token: 7,
        };
        let d = Some(s.since);
        let before = t0;
        let after = t0 + Duration::from_millis(10);
        // The suspicion's own probe decides it.
        assert_eq!(verdict(Some(s), d, Some(7), after, true), Verdict::Cleared);
        assert_eq!(
            verdict(Some(s), d, Some(7), after, false),
            Verdict::Confirmed
        );
        // An older one-off probe, or one for a suspicion already decided.
        assert_eq!(verdict(Some(s), d, Some(6), after, true), Verdict::Ignore);
        assert_eq!(verdict(None, d, Some(7), after, false), Verdict::Ignore);
        // The regular loop: any failure confirms; a success never clears.
        assert_eq!(verdict(Some(s), d, None, after, false), Verdict::Confirmed);
        assert_eq!(verdict(Some(s), d, None, after, true), Verdict::Store);
        // A success that began before the suspicion is stale, now and later.
        assert_eq!(verdict(Some(s), d, None, before, true), Verdict::Ignore);
        assert_eq!(verdict(None, d, None, before, true), Verdict::Ignore);
        assert_eq!(verdict(None, d, None, after, true), Verdict::Store);
        assert_eq!(verdict(None, None, None, before, true), Verdict::Store);
        assert_eq!(verdict(None, d, None, before, false), Verdict::Store);
    }

    #[test]
    fn hold_suspects_takes_members_out_only() {
        let m = |name: &str, role| MemberState {
            member: Arc::new(Member {
                name: name.into(),
                host: "h".into(),
                port: 1,
            }),
            role,
            healthy: true,
            last_error: None,
            patroni: None,
            lag_bytes: Some(0),
            lsn: None,
            streaming: role == Role::Replica,
            replay_lag: None,
        };
        let members = vec![m("a", Role::Primary), m("b", Role::Replica)];
        let mut t = Topology {
            primary: Some(members[0].member.clone()),
            members,
            ..Topology::default()
        };
        hold_suspects(&mut t, &[]);
        assert!(t.primary.is_some() && t.members.iter().all(|m| m.healthy));
        hold_suspects(&mut t, &["b"]);
        assert_eq!(t.primary.as_ref().map(|p| p.name.as_str()), Some("a"));
        assert!(!t.members[1].healthy);
        assert_eq!(t.members[1].last_error.as_deref(), Some(SUSPECT_ERROR));
        hold_suspects(&mut t, &["a"]);
        assert!(t.primary.is_none());
        assert!(!t.members[0].healthy);
    }
}
