#!/usr/bin/env bash
# Runs node-postgres's own integration tests (packages/pg/test/integration,
# pure JavaScript client) against one endpoint: a pgkeel listener, or
# PostgreSQL itself for the baseline. See docs/driver-suites.md.
#
#   scripts/node-postgres-suite.sh HOST PORT USER PASSWORD DBNAME
#
# The source comes from a git dir of node-postgres (NODE_POSTGRES_GIT_DIR,
# `git archive` of the pinned commit below) or an unpacked tree
# (NODE_POSTGRES_SRC); its test dependencies are installed once from the npm
# registry into the cache (NODE_POSTGRES_CACHE, default
# /tmp/pgkeel-node-postgres). node-postgres's runner stops a test file at
# its first failure, so each file counts once: passed (every test ran),
# failed (exit status not 0; its first failure and the tests that did not
# run are in the log), with the tests passed, failed and skipped inside
# counted too. Prints, last:  "N passed, N failed, N skipped" (test files).
# Outputs in $NODE_POSTGRES_OUT (default $CACHE/runs/<time>): one log per
# file, results.tsv ("<outcome>\t<file>\t<tests passed>"), summary.txt.
# Exit status: 0 no file failed, 1 some failed, 2 setup error.
set -euo pipefail

die() { echo "node-postgres-suite: $*" >&2; exit 2; }
[ $# -eq 5 ] || die "usage: $0 HOST PORT USER PASSWORD DBNAME"

# node-postgres at pg 8.23.0.
REV=c9e57617bc92c2ded23a75345f50eadc527bd131
CACHE=${NODE_POSTGRES_CACHE:-/tmp/pgkeel-node-postgres}
OUT=${NODE_POSTGRES_OUT:-$CACHE/runs/$(date +%Y%m%d-%H%M%S)-$$}
PER_FILE=${NODE_POSTGRES_FILE_TIMEOUT:-60}
# The published packages pg 8.23.0 depends on (the monorepo's own are
# TypeScript sources needing a build) and the tests' dev dependencies.
DEPS=(pg-protocol@1.16.0 pg-pool@3.14.0 pg-types@2.2.0 pgpass@1.0.5
    pg-connection-string@2.14.0 async@2.6.4 bluebird@3.7.2 co@4.6.0
    pg-copy-streams@0.3.0)
# Not run: native bindings (pg-native is not installed), and TLS tests (2085:
# ssl=true) that need a server certificate set up by node-postgres's CI.
SKIP_RE='/native-|/ssl-tests\.js$|/tls-tests\.js$|/2085-tests\.js$|/native/'

SRC=$CACHE/src-${REV:0:8}
mkdir -p "$CACHE" "$OUT"
exec 9>"$CACHE/.lock"
flock 9
if [ ! -f "$SRC/.ready" ]; then
    rm -rf "$SRC"
    mkdir -p "$SRC"
    if [ -n "${NODE_POSTGRES_SRC:-}" ]; then
        cp -r "$NODE_POSTGRES_SRC/packages" "$SRC/"
    elif [ -n "${NODE_POSTGRES_GIT_DIR:-}" ]; then
        git --git-dir="$NODE_POSTGRES_GIT_DIR" archive "$REV" packages/pg | tar -x -C "$SRC"
    else
        die "set NODE_POSTGRES_GIT_DIR (a git dir of node-postgres) or NODE_POSTGRES_SRC"
    fi
    [ -f "$SRC/packages/pg/test/suite.js" ] || die "source tree incomplete"
    touch "$SRC/.ready"
fi
if [ ! -f "$CACHE/deps/.ready" ]; then
    rm -rf "$CACHE/deps"
    mkdir -p "$CACHE/deps"
    echo '{"name":"pgkeel-node-postgres-deps","private":true}' > "$CACHE/deps/package.json"
    npm install --prefix "$CACHE/deps" --no-audit --no-fund --ignore-scripts \
        --loglevel=error "${DEPS[@]}" >&2 || die "npm install failed"
    touch "$CACHE/deps/.ready"
fi
ln -sfn "$CACHE/deps/node_modules" "$SRC/packages/pg/node_modules"
flock -u 9

cd "$SRC/packages/pg"
export PGHOST=$1 PGPORT=$2 PGUSER=$3 PGPASSWORD=$4 PGDATABASE=$5
RESULTS=$OUT/results.tsv
: > "$RESULTS"
all=$(find test/integration -name '*-tests.js' | sort)
files=$(echo "$all" | grep -Ev "$SKIP_RE" || true)
n_skip=$(echo "$all" | grep -Ec "$SKIP_RE" || true)
for f in $files; do
    log=$OUT/$(echo "${f#test/integration/}" | tr / _).log
    # Each file is its own process: one stalled file cannot hold the rest.
    if timeout -k 5 "$PER_FILE" node "$f" postgres:// > "$log" 2>&1; then
        outcome=passed
    else
        outcome=failed
    fi
    ok=$(grep -o '✔' "$log" | wc -l || true)
    skipped=$(grep -c 'SKIPPED' "$log" || true)
    printf '%s\t%s\t%s\t%s\n' "$outcome" "$f" "$ok" "$skipped" >> "$RESULTS"
done
read -r np nf tp ts < <(awk -F'\t' '{c[$1]++; t+=$3; s+=$4}
    END {printf "%d %d %d %d\n", c["passed"], c["failed"], t, s}' "$RESULTS")
echo "node-postgres-suite: $tp tests passed and $ts skipped inside the files; failed files:" >&2
awk -F'\t' '$1=="failed"{print "  " $2}' "$RESULTS" >&2
echo "$np passed, $nf failed, $n_skip skipped" | tee "$OUT/summary.txt"
[ "$nf" -eq 0 ]
