#!/usr/bin/env bash
# The pipeline end to end on this machine: the README's demo command.
#
#   infra/local/demo.sh [--keep]
#
# Starts a private Postgres (unless DATABASE_URL is set) and DynamoDB Local, loads
# Flagsmith's core schema into a fresh database `edge_demo`, applies the writer's
# migrations, creates the DynamoDB tables, seeds a demo project, starts `writer run` and the
# stream consumer (`stream-consumer poll`, invalidating Redis), then changes a flag in core
# Postgres, shows the document arriving in DynamoDB with its new version, its acknowledgement
# by the consumer with the replication lag, `writer verify`, and last `writer status`, the
# operator's one view. Everything it started is stopped at the end unless --keep is given.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
KEEP=false
[[ "${1:-}" == "--keep" ]] && KEEP=true
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
log() { echo "demo.sh: $*" >&2; }

command -v cargo >/dev/null 2>&1 || { log "error: cargo not found; install Rust (rustup) first"; exit 1; }

say "Building the writer and the stream consumer"
cargo build --release --bin writer --bin stream-consumer --quiet
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
WRITER="$TARGET/release/writer"
CONSUMER="$TARGET/release/stream-consumer"

say "Starting Postgres and DynamoDB Local"
eval "$(infra/local/postgres.sh start)"
eval "$(infra/local/dynamodb.sh start demo)"
command -v psql >/dev/null 2>&1 || { log "error: psql not found (apt-get install -y postgresql-client)"; exit 1; }
ADMIN_URL="$DATABASE_URL"
psql "$ADMIN_URL" -qAt -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS edge_demo WITH (FORCE)" -c "CREATE DATABASE edge_demo" >/dev/null
DATABASE_URL="$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/edge_demo")))' "$ADMIN_URL")"
export DATABASE_URL
export EDGE_TABLE_PREFIX="demo_"
export DYNAMODB_ENDPOINT="$AWS_ENDPOINT_URL"

WRITER_PID=""
CONSUMER_PID=""
cleanup() {
  [[ -n "$WRITER_PID" ]] && kill -TERM "$WRITER_PID" 2>/dev/null && wait "$WRITER_PID" 2>/dev/null || true
  [[ -n "$CONSUMER_PID" ]] && kill -INT "$CONSUMER_PID" 2>/dev/null && wait "$CONSUMER_PID" 2>/dev/null || true
  if ! $KEEP; then
    infra/local/dynamodb.sh stop demo >/dev/null 2>&1 || true
  else
    log "kept running: DynamoDB Local at $AWS_ENDPOINT_URL, Postgres at $DATABASE_URL"
  fi
}
trap cleanup EXIT

say "Core schema (Flagsmith's DDL), writer migrations, DynamoDB tables"
psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 -f tests/fixtures/flagsmith-core-schema.sql >/dev/null
"$WRITER" migrate
"$WRITER" tables create

say "Seeding a demo project in core Postgres"
psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 -f infra/local/demo-seed.sql >/dev/null
echo "organisation 'Demo Org', project 'Demo Project', environment 'Production' (api_key demoEnvKey)"

say "Starting the writer and the stream consumer"
"$WRITER" run --workers 4 --http-addr 127.0.0.1:0 --log-format text 2> .local/demo-writer.log &
WRITER_PID=$!
REDIS_URL="$(infra/local/redis.sh url)"
echo "stream consumer: region 'local', invalidating $REDIS_URL (keys and channels 'demo:...'),"
echo "  ingesting identities written at the edge into core (home role)"
"$CONSUMER" poll --region-name local --table-prefix demo_ --endpoint-url "$AWS_ENDPOINT_URL" \
  --redis-url "$REDIS_URL" --redis-prefix demo: \
  --ingest-database-url "$DATABASE_URL" --ingest-role home --stream-time-precision-ms 60000 \
  > .local/demo-consumer.log 2>&1 &
CONSUMER_PID=$!

wait_for_version() { # $1: version to exceed (0: any)
  local deadline=$((SECONDS + 30)) line version
  while (( SECONDS < deadline )); do
    if line="$("$WRITER" inspect --environment demoEnvKey 2>/dev/null)"; then
      version="$(sed -nE '1s/.*version=([0-9]+).*/\1/p' <<<"$line")"
      if [[ -n "$version" && "$version" -gt "$1" ]]; then echo "$line"; return 0; fi
    fi
    sleep 0.05
  done
  log "error: the document did not arrive within 30 s; writer log:"; tail -20 .local/demo-writer.log >&2
  return 1
}

out="$(wait_for_version 0)"
echo "$out"
first="$(sed -nE '1s/.*version=([0-9]+).*/\1/p' <<<"$out")"

say "Changing a flag in core Postgres: dark_mode on"
start_ns=$(date +%s%N)
psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 -c \
  "UPDATE features_featurestate SET enabled = true, updated_at = now() WHERE id = 1" >/dev/null
out="$(wait_for_version "$first")"
end_ns=$(date +%s%N)
echo "$out"
echo "arrived in DynamoDB $(( (end_ns - start_ns) / 1000000 )) ms after the commit (version $first -> $(sed -nE '1s/.*version=([0-9]+).*/\1/p' <<<"$out"))"

say "The stream consumer verified and acknowledged it"
deadline=$((SECONDS + 30))
# The first write and the change: two verified records of the environments table (in one
# batch or two).
verified_environments() {
  sed -E 's/\x1b\[[0-9;]*m//g' .local/demo-consumer.log | grep 'table="environments"' \
    | sed -nE 's/.* verified=([0-9]+).*/\1/p' | awk '{ n += $1 } END { print n + 0 }'
}
until (( $(verified_environments) >= 2 )); do
  if (( SECONDS > deadline )); then log "error: no acknowledgement within 30 s; consumer log:"; tail -20 .local/demo-consumer.log >&2; exit 1; fi
  sleep 0.1
done
grep 'batch handled' .local/demo-consumer.log | sed -E 's/\x1b\[[0-9;]*m//g' | tail -4

say "writer verify: Postgres against DynamoDB and the acknowledgements"
set +e
"$WRITER" verify --region "local=$AWS_ENDPOINT_URL" --ack-deadline-secs 60
code=$?
set -e
echo "exit code $code (0: no drift)"

say "Dead letters"
"$WRITER" dead-letters list

say "writer status: capture, queue, dead letters, lag, migrations, regions, the last verify"
set +e
"$WRITER" status --region local
code=$?
set -e
echo "exit code $code (0: nothing needs an operator, 2: something does)"
say "Done"
