#!/usr/bin/env bash
# Create the repo-local Python venv (.local/venv) for the compatibility check and
# install tests/compat/requirements.txt into it. Idempotent: the install is skipped
# while a stamp file records the same requirements. Prints the venv's python path
# on stdout; progress goes to stderr.
#
#   PY="$(infra/local/python.sh)" && "$PY" tests/compat/check_documents.py --help
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.local/venv"
REQ="$ROOT/tests/compat/requirements.txt"
STAMP="$VENV/.requirements.sha256"

log() { echo "python.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ -f "$REQ" ]] || die "requirements file not found: $REQ"
command -v python3 >/dev/null || die "python3 not found (Debian: apt-get install -y python3 python3-venv)"
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || die "python3 >= 3.11 is required (flagsmith-common needs it); found $(python3 --version 2>&1)"

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv in $VENV"
  mkdir -p "$ROOT/.local"
  if ! python3 -m venv "$VENV" >&2; then
    rm -rf "$VENV"
    die "python3 -m venv failed (Debian: apt-get install -y python3-venv)"
  fi
fi

want="$( (sha256sum "$REQ"; "$VENV/bin/python" --version) | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  log "requirements unchanged, skipping install"
else
  log "installing $REQ"
  rm -f "$STAMP"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -r "$REQ" >&2 \
    || die "pip install -r $REQ failed"
  echo "$want" > "$STAMP"
fi

echo "$VENV/bin/python"
