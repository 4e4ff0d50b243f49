#!/usr/bin/env bash
# The yibao/postgres image: Debian's PostgreSQL 15, initialised on first start.
#   POSTGRES_PASSWORD   the postgres superuser's password (required: TCP logins use it)
#   PGPORT              port (5432);  PG_LISTEN  address (127.0.0.1)
#   POSTGRES_DATABASES  comma-separated databases created at initialisation
#   PG_MAX_CONNECTIONS  (300)
#   PG_HOST_AUTH        TCP logins: scram-sha-256 (default), or trust as the local
#                       bring-up's loopback cluster (the test fixtures: host network,
#                       127.0.0.1 only)
set -euo pipefail
: "${POSTGRES_PASSWORD:?yibao/postgres: POSTGRES_PASSWORD not set; refusing to start}"
PGPORT="${PGPORT:-5432}"
PG_LISTEN="${PG_LISTEN:-127.0.0.1}"
export PGPORT
mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
as_pg() { runuser -u postgres -- "$@"; }
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  chown postgres "$pwfile"
  as_pg initdb -D "$PGDATA" -U postgres --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host="${PG_HOST_AUTH:-scram-sha-256}" --pwfile="$pwfile" >/dev/null
  rm -f "$pwfile"
  if [ -n "${POSTGRES_DATABASES:-}" ]; then
    as_pg pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p $PGPORT" -w start >/dev/null
    IFS=',' read -ra dbs <<< "$POSTGRES_DATABASES"
    for db in "${dbs[@]}"; do
      as_pg psql -q -v ON_ERROR_STOP=1 -p "$PGPORT" -d postgres -c "CREATE DATABASE \"$db\""
    done
    as_pg pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  fi
  echo "yibao/postgres: initialised $PGDATA"
fi
exec runuser -u postgres -- postgres -D "$PGDATA" -p "$PGPORT" \
  -c listen_addresses="$PG_LISTEN" -c max_connections="${PG_MAX_CONNECTIONS:-300}" \
  -c unix_socket_directories=/var/run/postgresql
