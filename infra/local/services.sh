# Sourced by test.sh and bench.sh: makes the services the suites need available and exports
#   TEST_DATABASE_URL   a Postgres server where databases can be created
#   DYNAMODB_LOCAL_DIR  DynamoDB Local's jar directory (each test binary starts its own)
#   EDGE_COMPAT_PYTHON  the venv python with Flagsmith's packages
#   TEST_REDIS_URL      a Redis for the cache-invalidation tests (infra/local/redis.sh)
#
# Postgres: TEST_DATABASE_URL or DATABASE_URL when set; else the local server on
# 127.0.0.1:5432 when it accepts user postgres without a password; else a private cluster
# (infra/local/postgres.sh).

services_log() { echo "services: $*" >&2; }

command -v cargo >/dev/null 2>&1 || { services_log "error: cargo not found; install Rust (rustup) first"; exit 1; }

if [[ -n "${TEST_DATABASE_URL:-}" ]]; then
  services_log "Postgres: TEST_DATABASE_URL"
elif [[ -n "${DATABASE_URL:-}" ]]; then
  export TEST_DATABASE_URL="$DATABASE_URL"
  services_log "Postgres: DATABASE_URL"
elif command -v psql >/dev/null 2>&1 \
  && psql -h 127.0.0.1 -p 5432 -U postgres -w -d postgres -qAtc 'select 1' >/dev/null 2>&1; then
  export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
  services_log "Postgres: local server on 127.0.0.1:5432"
else
  services_log "Postgres: starting a private cluster"
  eval "$(env -u DATABASE_URL infra/local/postgres.sh start)"
  export TEST_DATABASE_URL="$DATABASE_URL"
fi

infra/local/dynamodb.sh install >&2
DYNAMODB_LOCAL_DIR="$(infra/local/dynamodb.sh dir)"
export DYNAMODB_LOCAL_DIR
EDGE_COMPAT_PYTHON="$(infra/local/python.sh)"
export EDGE_COMPAT_PYTHON
TEST_REDIS_URL="$(infra/local/redis.sh url)"
export TEST_REDIS_URL
