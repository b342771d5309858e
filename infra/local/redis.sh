#!/usr/bin/env bash
# Redis for the consumer's cache-invalidation tests and the demo.
#
#   infra/local/redis.sh url     prints a Redis URL that answers: TEST_REDIS_URL when set,
#                                the server on 127.0.0.1:6379 when it answers PING, else a
#                                private redis-server (no persistence) started under
#                                .local/redis on port 6390
#   infra/local/redis.sh stop    stops the private server
#
# Installs Debian's redis-server package when no server binary is found and it runs as root.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DIR="$ROOT/.local/redis"
PORT=6390
log() { echo "redis.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

answers() { # host port -> 0 when a Redis server answers PING
  local reply
  exec 3<>"/dev/tcp/$1/$2" 2>/dev/null || return 1
  printf 'PING\r\n' >&3
  read -r -t 2 reply <&3 || true
  exec 3<&- 3>&-
  [[ "$reply" == +PONG* ]]
}

case "${1:-url}" in
  url)
    if [[ -n "${TEST_REDIS_URL:-}" ]]; then echo "$TEST_REDIS_URL"; exit 0; fi
    if answers 127.0.0.1 6379; then echo "redis://127.0.0.1:6379"; exit 0; fi
    if answers 127.0.0.1 "$PORT"; then echo "redis://127.0.0.1:$PORT"; exit 0; fi
    if ! command -v redis-server >/dev/null 2>&1; then
      [[ "$(id -u)" == 0 ]] || die "no Redis answers on 127.0.0.1:6379 and redis-server is not installed; install it or set TEST_REDIS_URL"
      log "installing Debian's redis-server package"
      { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; } >&2 \
        || die "apt-get install redis-server failed"
    fi
    mkdir -p "$DIR"
    log "starting a private redis-server on 127.0.0.1:$PORT"
    redis-server --bind 127.0.0.1 --port "$PORT" --save '' --appendonly no \
      --daemonize yes --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log" --dir "$DIR" >&2
    for _ in $(seq 1 50); do
      if answers 127.0.0.1 "$PORT"; then echo "redis://127.0.0.1:$PORT"; exit 0; fi
      sleep 0.1
    done
    die "redis-server did not answer on port $PORT (see $DIR/redis.log)"
    ;;
  stop)
    if [[ -f "$DIR/redis.pid" ]]; then kill "$(cat "$DIR/redis.pid")" 2>/dev/null || true; rm -f "$DIR/redis.pid"; fi
    ;;
  *) die "usage: redis.sh url|stop" ;;
esac
