#!/bin/sh
# Writes random passwords and the admin token into secrets/ (once: existing
# files are kept). compose.yaml hands them to the containers as secrets.
set -eu
cd "$(dirname "$0")"
mkdir -p secrets
for s in postgres_password replication_password pgkeel_admin_token grafana_admin_password; do
    [ -s "secrets/$s" ] || od -An -N18 -tx1 /dev/urandom | tr -d ' \n' > "secrets/$s"
done
# Compose bind-mounts them as they are: the containers (other uids) must read them.
