#!/usr/bin/env bash
# pgkeel's test command (the README's second command; .ci/run runs it).
# From a fresh Debian machine with Rust: installs what the tests need, then
# runs cargo fmt --check, clippy with warnings denied, and every test.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# PostgreSQL for every integration test; etcd and Patroni for tests/patroni.rs;
# prometheus (prometheus and promtool) for tests/metrics_promtool.rs, which
# runs its own on a free port: a packaged service on 9090, running or not,
# is not used; and the packages the build needs (BUILD_PACKAGES in lib.sh).
install_packages postgresql-15 postgresql-client-15 etcd-server etcd-client patroni \
    prometheus curl ca-certificates "${BUILD_PACKAGES[@]}"
ensure_rust_components
# The drivers tests/drivers.rs runs through pgkeel (Java, Node.js, Python).
bash scripts/install-drivers.sh

section "cargo fmt --check"
cargo fmt --all -- --check

section "cargo clippy"
cargo clippy --all-targets -- -D warnings

section "cargo test"
# Each test binary shares one PostgreSQL between its tests (a static), which
# needs the tests of a binary to be threads of one process: plain cargo test.
cargo test --lib --bins --tests --examples -- --test-threads=2

section "benches (one quick pass each, to prove they run)"
cargo test --benches
