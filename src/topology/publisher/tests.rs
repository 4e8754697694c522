//! The publisher's decisions, fed probe results and suspicions by hand.

use super::*;

/// A static-mode publisher over members that are never reachable (their
/// probers' own results are not read here: each test feeds results).
fn publisher(names: &[&str]) -> (Publisher, Arc<TopologyHandle>) {
    let handle = TopologyHandle::new();
    let (notify, _) = mpsc::channel(16);
    let settings = ProbeSettings {
        user: "nobody".into(),
        password: None,
        database: "postgres".into(),
        timeout: Duration::from_millis(200),
        tls: crate::tls::postgres::MakeRustls::new(Default::default()),
    };
    let (mut p, _) = Publisher::new(
        handle.clone(),
        Metrics::new(),
        settings,
        Duration::from_secs(3600),
        false,
        notify,
    );
    let wanted = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), "127.0.0.1".to_string(), 1 + i as u16, None))
        .collect();
    p.reconcile(wanted);
    p.seen_state = true;
    (p, handle)
}

fn probe(role: Role) -> Result<Probe, String> {
    Ok(Probe {
        role,
        lsn: Some(100),
        streaming: role == Role::Replica,
        replay_lag: Some(0.0),
    })
}

fn result(
    p: &Publisher,
    name: &str,
    r: Result<Probe, String>,
    started: Instant,
    token: Option<u64>,
) -> ProbeResult {
    ProbeResult {
        name: name.into(),
        id: p.entries[name].prober.id,
        result: r,
        started,
        token,
    }
}

fn suspect(p: &mut Publisher, name: &str) {
    let m = p.entries[name].member.clone();
    p.on_suspicion(Suspicion {
        host: m.host.clone(),
        port: m.port,
        at: Instant::now(),
    });
}

fn token(p: &Publisher, name: &str) -> u64 {
    p.entries[name].suspect.expect("suspect").token
}

fn primary(h: &TopologyHandle) -> Option<String> {
    h.load().primary.as_ref().map(|m| m.name.clone())
}

fn healthy(h: &TopologyHandle, name: &str) -> bool {
    h.load().member(name).expect("member").healthy
}

fn count(p: &Publisher, result: &str) -> u64 {
    p.metrics
        .suspicions_total
        .with_label_values(&[result])
        .get()
}

#[tokio::test]
async fn suspect_then_probe_ok_clears_without_a_failover() {
    let (mut p, h) = publisher(&["a", "b"]);
    let start = Instant::now();
    p.on_probe(result(&p, "a", probe(Role::Primary), start, None));
    p.on_probe(result(&p, "b", probe(Role::Replica), start, None));
    assert_eq!(primary(&h).as_deref(), Some("a"));

    suspect(&mut p, "a");
    assert_eq!(primary(&h), None, "new transactions are held");
    assert!(!healthy(&h, "a"));
    assert!(healthy(&h, "b"), "the replica is untouched");
    assert_eq!(count(&p, "raised"), 1);
    assert_eq!(p.metrics.suspicion_hold_delay_seconds.get_sample_count(), 1);
    // More connections ending the same way say nothing new.
    suspect(&mut p, "a");
    assert_eq!(count(&p, "raised"), 1);
    // Regular probes cannot clear it: begun before, or on the old connection.
    p.on_probe(result(&p, "a", probe(Role::Primary), start, None));
    p.on_probe(result(&p, "a", probe(Role::Primary), Instant::now(), None));
    assert_eq!(primary(&h), None);

    let t = token(&p, "a");
    p.on_probe(result(
        &p,
        "a",
        probe(Role::Primary),
        Instant::now(),
        Some(t),
    ));
    assert_eq!(primary(&h).as_deref(), Some("a"), "held clients go on");
    assert!(healthy(&h, "a"));
    assert_eq!(count(&p, "cleared"), 1);
    assert_eq!(count(&p, "confirmed"), 0);
    assert!(
        h.failovers().is_empty(),
        "a cleared suspicion is no failover"
    );
    assert_eq!(p.metrics.failover_in_progress.get(), 0);
    // A connection that ended before the clearing probe began: the same event.
    let m = p.entries["a"].member.clone();
    p.on_suspicion(Suspicion {
        host: m.host.clone(),
        port: m.port,
        at: start,
    });
    assert_eq!(count(&p, "raised"), 1);
    assert_eq!(primary(&h).as_deref(), Some("a"));
}

#[tokio::test]
async fn suspect_then_probe_fails_marks_down_until_probes_see_it() {
    let (mut p, h) = publisher(&["a", "b"]);
    let start = Instant::now();
    p.on_probe(result(&p, "a", probe(Role::Primary), start, None));
    p.on_probe(result(&p, "b", probe(Role::Replica), start, None));
    suspect(&mut p, "a");
    let t = token(&p, "a");
    p.on_probe(result(
        &p,
        "a",
        Err("connection refused".into()),
        Instant::now(),
        Some(t),
    ));
    assert_eq!(count(&p, "confirmed"), 1);
    assert_eq!(primary(&h), None);
    assert!(!healthy(&h, "a"));
    assert!(p.entries["a"].suspect.is_none());
    let f = h.failovers();
    assert_eq!(f.len(), 1, "a confirmed primary is a failover");
    assert_eq!(f[0].kind, "unplanned");
    assert_eq!(f[0].old_primary.as_deref(), Some("a"));
    assert_eq!(p.metrics.failover_in_progress.get(), 1);
    // A probe that began before the suspicion cannot bring it back...
    p.on_probe(result(&p, "a", probe(Role::Primary), start, None));
    assert_eq!(primary(&h), None);
    // ...nor can another suspicion's stale one-off probe...
    p.on_probe(result(
        &p,
        "a",
        probe(Role::Primary),
        Instant::now(),
        Some(t),
    ));
    assert_eq!(primary(&h), None);
    // ...and a down member is not suspected again.
    suspect(&mut p, "a");
    assert_eq!(count(&p, "raised"), 1);
    // Its regular probe seeing it again does.
    p.on_probe(result(&p, "a", probe(Role::Primary), Instant::now(), None));
    assert_eq!(primary(&h).as_deref(), Some("a"));
    assert_eq!(p.metrics.failover_in_progress.get(), 0);
    assert!(h.failovers()[0].ended_at.is_some());
}

#[tokio::test]
async fn a_suspected_probe_failure_from_the_regular_loop_confirms() {
    let (mut p, h) = publisher(&["a"]);
    p.on_probe(result(&p, "a", probe(Role::Primary), Instant::now(), None));
    suspect(&mut p, "a");
    p.on_probe(result(&p, "a", Err("eof".into()), Instant::now(), None));
    assert_eq!(count(&p, "confirmed"), 1);
    assert!(p.entries["a"].suspect.is_none());
    assert_eq!(primary(&h), None);
}

#[tokio::test]
async fn suspicion_never_promotes() {
    // Two servers out of recovery (a split brain): "a" is chosen.
    let (mut p, h) = publisher(&["a", "b", "c"]);
    let now = Instant::now();
    p.on_probe(result(&p, "a", probe(Role::Primary), now, None));
    p.on_probe(result(&p, "b", probe(Role::Primary), now, None));
    p.on_probe(result(&p, "c", probe(Role::Replica), now, None));
    assert_eq!(primary(&h).as_deref(), Some("a"));
    suspect(&mut p, "a");
    assert_eq!(
        primary(&h),
        None,
        "the other writable server is not promoted"
    );
    // A suspected replica only stops taking reads.
    suspect(&mut p, "c");
    assert!(!healthy(&h, "c"));
    assert!(!h.load().member("c").expect("c").serves_reads());
    let t = token(&p, "a");
    p.on_probe(result(
        &p,
        "a",
        probe(Role::Primary),
        Instant::now(),
        Some(t),
    ));
    assert_eq!(primary(&h).as_deref(), Some("a"));
    assert!(!healthy(&h, "c"), "c is still being probed");
    let t = token(&p, "c");
    p.on_probe(result(
        &p,
        "c",
        probe(Role::Replica),
        Instant::now(),
        Some(t),
    ));
    assert!(h.load().member("c").expect("c").serves_reads());
    assert_eq!(primary(&h).as_deref(), Some("a"));
    assert_eq!(count(&p, "raised"), 2);
    assert_eq!(count(&p, "cleared"), 2);
}
