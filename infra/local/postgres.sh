#!/usr/bin/env bash
# Local Postgres for tests and development.
#
#   eval "$(infra/local/postgres.sh start)"   # sets DATABASE_URL
#   infra/local/postgres.sh url               # URL of the running private cluster
#   infra/local/postgres.sh stop
#
# When DATABASE_URL is already set, `start` only echoes it back as an export line.
# Otherwise it runs a private cluster (Postgres 15+, trust auth, 127.0.0.1 on a
# free port) with its data in .local/postgres/data and a database named `edge`,
# and reuses that cluster when it is already running. Progress goes to stderr;
# stdout carries only the export line (start) or the URL (url).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MIN_MAJOR=15
DB_NAME=edge
DB_USER=postgres

log() { echo "postgres.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  cat >&2 <<'USAGE'
usage: infra/local/postgres.sh start|stop|url
  start  print `export DATABASE_URL=...`; starts (or reuses) a private cluster unless DATABASE_URL is set
  stop   stop the private cluster
  url    print the URL of the running private cluster
USAGE
  exit 2
}

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# Run a Postgres binary; as root, run it as the `postgres` user (Postgres refuses root).
as_pg() {
  if is_root; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

major_of() { # "$bindir" -> major version of its initdb
  "$1/initdb" --version 2>/dev/null | sed -nE 's/.* ([0-9]+)(\.[0-9]+)*.*/\1/p' | head -n1
}

usable_bindir() { # "$bindir" -> 0 when it has initdb/pg_ctl/psql of version >= MIN_MAJOR
  local dir="$1" major
  [[ -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/psql" ]] || return 1
  major="$(major_of "$dir")"
  [[ -n "$major" && "$major" -ge "$MIN_MAJOR" ]]
}

find_bindir() {
  local dir
  if command -v pg_config >/dev/null 2>&1; then
    dir="$(pg_config --bindir 2>/dev/null || true)"
    if [[ -n "$dir" ]] && usable_bindir "$dir"; then echo "$dir"; return 0; fi
  fi
  # Newest major version first: /usr/lib/postgresql/<major>/bin
  for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5,5nr); do
    if usable_bindir "$dir"; then echo "$dir"; return 0; fi
  done
  return 1
}

ensure_bindir() {
  if BINDIR="$(find_bindir)"; then return 0; fi
  is_root || die "no Postgres ${MIN_MAJOR}+ server binaries found (looked at pg_config --bindir and /usr/lib/postgresql/*/bin); install the 'postgresql' package or set DATABASE_URL"
  log "no Postgres ${MIN_MAJOR}+ server binaries found; installing the 'postgresql' package"
  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; } >&2 \
    || die "apt-get install postgresql failed"
  BINDIR="$(find_bindir)" || die "Postgres ${MIN_MAJOR}+ still not found after installing 'postgresql'"
}

ensure_pg_user() {
  is_root || return 0
  id -u postgres >/dev/null 2>&1 && return 0
  log "creating system user 'postgres'"
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres \
    || die "could not create the 'postgres' user"
}

# State lives in .local/postgres. As root, the postgres user must be able to reach it;
# if the checkout is in a directory it cannot enter, fall back to a directory in /tmp.
choose_state_dir() {
  PGSTATE="$ROOT/.local/postgres"
  if is_root && id -u postgres >/dev/null 2>&1; then
    mkdir -p "$PGSTATE"
    chown postgres: "$PGSTATE"
    if ! runuser -u postgres -- test -w "$PGSTATE"; then
      PGSTATE="${TMPDIR:-/tmp}/edge-postgres-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
      log "the postgres user cannot write to $ROOT/.local; using $PGSTATE"
    fi
  fi
  DATA="$PGSTATE/data"
  LOGFILE="$PGSTATE/log"
  SOCKDIR="$PGSTATE/run"
  # Unix socket paths are limited to ~107 bytes.
  if (( ${#SOCKDIR} > 90 )); then
    SOCKDIR="${TMPDIR:-/tmp}/edge-pg-sock-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
  fi
}

prepare_dirs() {
  mkdir -p "$PGSTATE" "$SOCKDIR"
  chmod 700 "$PGSTATE"
  if is_root; then chown postgres: "$PGSTATE" "$SOCKDIR"; fi
}

running_port() { # prints the port of the running private cluster, or fails (needs BINDIR)
  [[ -f "$DATA/postmaster.pid" ]] || return 1
  as_pg "$BINDIR/pg_ctl" -D "$DATA" status >/dev/null 2>&1 || return 1
  local port
  port="$(sed -n 4p "$DATA/postmaster.pid")"
  [[ "$port" =~ ^[0-9]+$ ]] || return 1
  echo "$port"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' \
    || die "could not pick a free port (python3 is needed)"
}

url_for() { echo "postgres://${DB_USER}@127.0.0.1:$1/${DB_NAME}"; }

init_cluster() {
  if [[ -f "$DATA/PG_VERSION" ]]; then
    local have want
    have="$(cat "$DATA/PG_VERSION")"
    want="$(major_of "$BINDIR")"
    [[ "$have" == "$want" ]] \
      || die "$DATA was created by Postgres $have but the binaries are $want; remove $DATA to start over"
    return 0
  fi
  log "initdb into $DATA (Postgres $(major_of "$BINDIR"))"
  rm -rf "$DATA"
  as_pg "$BINDIR/initdb" -D "$DATA" -U "$DB_USER" --auth=trust --encoding=UTF8 --locale=C >"$PGSTATE/initdb.log" 2>&1 \
    || { cat "$PGSTATE/initdb.log" >&2; die "initdb failed (log: $PGSTATE/initdb.log)"; }
}

start_server() {
  local port attempt
  for attempt in 1 2 3; do
    port="$(free_port)"
    log "starting private cluster on 127.0.0.1:$port (log: $LOGFILE)"
    if as_pg "$BINDIR/pg_ctl" -D "$DATA" -l "$LOGFILE" \
        -o "-p $port -k $SOCKDIR -c listen_addresses=127.0.0.1" -w -t 60 start >&2; then
      echo "$port"
      return 0
    fi
    log "start attempt $attempt failed; last log lines:"
    tail -n 5 "$LOGFILE" >&2 || true
  done
  die "could not start Postgres (see $LOGFILE)"
}

ensure_database() {
  local port="$1"
  local exists
  exists="$(as_pg "$BINDIR/psql" -h "$SOCKDIR" -p "$port" -U "$DB_USER" -d postgres -XtAc \
    "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" \
    || die "cannot connect to the private cluster on port $port"
  if [[ "$exists" != "1" ]]; then
    log "creating database $DB_NAME"
    as_pg "$BINDIR/psql" -h "$SOCKDIR" -p "$port" -U "$DB_USER" -d postgres -Xqc "CREATE DATABASE $DB_NAME" >&2 \
      || die "CREATE DATABASE $DB_NAME failed"
  fi
}

cmd_start() {
  if [[ -n "${DATABASE_URL:-}" ]]; then
    log "DATABASE_URL is set; using it as is"
    printf 'export DATABASE_URL=%q\n' "$DATABASE_URL"
    return 0
  fi
  ensure_bindir
  ensure_pg_user
  choose_state_dir
  prepare_dirs
  local port
  if port="$(running_port)"; then
    log "private cluster already running on 127.0.0.1:$port"
  else
    init_cluster
    port="$(start_server)"
  fi
  ensure_database "$port"
  printf 'export DATABASE_URL=%q\n' "$(url_for "$port")"
}

cmd_stop() {
  choose_state_dir
  if ! BINDIR="$(find_bindir)" || ! running_port >/dev/null; then
    log "private cluster is not running"
    return 0
  fi
  log "stopping private cluster in $DATA"
  as_pg "$BINDIR/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >&2 || die "pg_ctl stop failed (see $LOGFILE)"
}

cmd_url() {
  choose_state_dir
  local port
  if ! BINDIR="$(find_bindir)" || ! port="$(running_port)"; then
    die "private cluster is not running (start it with: infra/local/postgres.sh start)"
  fi
  url_for "$port"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  url) cmd_url ;;
  *) usage ;;
esac
