//! Decides which member a transaction goes to.
//!
//! Today every transaction goes to the primary. The read/write split adds
//! classification here (query rules, SQL-aware read detection, lag-aware
//! replica choice); sessions only ever ask `route`.

use std::sync::Arc;
use std::time::Duration;

use crate::topology::{Member, Topology};

/// Where a transaction must run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Primary,
}

/// The route for the next transaction of a client.
pub fn route() -> Target {
    Target::Primary
}

/// The member serving `target` in this topology, if one may take new
/// transactions now (a planned switchover drains the primary for up to `drain`).
pub fn pick(topology: &Topology, target: Target, drain: Duration) -> Option<Arc<Member>> {
    match target {
        Target::Primary => topology.usable_primary(drain).cloned(),
    }
}
