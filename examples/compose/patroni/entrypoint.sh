#!/bin/sh
# Passwords come from the compose secrets, into the environment variables
# Patroni reads; the member's name and addresses from its service name.
set -eu
PATRONI_SUPERUSER_PASSWORD=$(cat /run/secrets/postgres_password)
PATRONI_REPLICATION_PASSWORD=$(cat /run/secrets/replication_password)
PATRONI_NAME=$(hostname)
PATRONI_RESTAPI_CONNECT_ADDRESS="$PATRONI_NAME:8008"
PATRONI_POSTGRESQL_CONNECT_ADDRESS="$PATRONI_NAME:5432"
export PATRONI_SUPERUSER_PASSWORD PATRONI_REPLICATION_PASSWORD PATRONI_NAME \
    PATRONI_RESTAPI_CONNECT_ADDRESS PATRONI_POSTGRESQL_CONNECT_ADDRESS
exec patroni /etc/patroni/patroni.yml
