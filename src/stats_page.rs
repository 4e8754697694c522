//! The admin HTTP listener's `GET /`: one self-contained HTML page (like
//! HAProxy's stats page) that refreshes itself from `/status`, and the
//! fields `/status` carries for it (clients by state, traffic totals the
//! page turns into rates). The page is `assets/stats.html`, embedded at
//! build time: no external assets, no build step.

use std::collections::BTreeMap;

use crate::clients::ClientState;
use crate::shared::Shared;

pub const PAGE: &str = include_str!("../assets/stats.html");

/// Pooled clients by state (console sessions apart).
pub fn clients_by_state(shared: &Shared) -> serde_json::Value {
    let mut by: BTreeMap<&'static str, u64> = [
        ClientState::Active,
        ClientState::Idle,
        ClientState::Waiting,
        ClientState::Held,
    ]
    .iter()
    .map(|s| (s.as_str(), 0))
    .collect();
    let mut console = 0u64;
    for c in shared.clients.all() {
        if c.spec.admin {
            console += 1;
        } else {
            *by.entry(c.state().as_str()).or_default() += 1;
        }
    }
    let mut v = serde_json::to_value(by).expect("counts serialize");
    v["console"] = console.into();
    v
}

/// Totals since start; the page's rates are their differences over time.
pub fn traffic(shared: &Shared) -> serde_json::Value {
    let m = &shared.metrics;
    serde_json::json!({
        "transactions_total": m.transactions_completed(),
        "queries_total": m.queries.iter().map(prometheus::IntCounter::get).sum::<u64>(),
        "client_bytes_received_total": m.client_bytes_received_total.get(),
        "client_bytes_sent_total": m.client_bytes_sent_total.get(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained() {
        assert!(PAGE.starts_with("<!DOCTYPE html>"));
        // Nothing fetched from elsewhere: only /status, relative.
        for outside in ["http://", "https://", "src=\"//", "<link"] {
            assert!(!PAGE.contains(outside), "{outside}");
        }
        assert!(PAGE.contains("fetch(\"status\""));
    }
}
