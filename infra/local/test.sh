#!/usr/bin/env bash
# Runs every test of the project on real services: the README's test command; CI runs it.
#
#   infra/local/test.sh [extra cargo test arguments]
#
# Sets up what the suites need, on a fresh machine too (infra/local/services.sh): Postgres
# (each test creates and drops its own database), DynamoDB Local (each test binary starts
# its own in-memory instance), the Python venv of the Flagsmith compatibility check. Then:
# formatting and lints, a build of the binaries (the process tests run the real writer),
# and `cargo test` for the whole workspace.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
log() { echo "test.sh: $*" >&2; }

# shellcheck source=infra/local/services.sh
source infra/local/services.sh

# Formatting and lints gate the run where the toolchain has the components.
if cargo fmt --version >/dev/null 2>&1; then
  log "cargo fmt --check"
  cargo fmt --all -- --check
else
  log "warning: rustfmt is not installed (rustup component add rustfmt); format check skipped"
fi
if cargo clippy --version >/dev/null 2>&1; then
  log "cargo clippy"
  cargo clippy --workspace --all-targets --quiet -- -D warnings
else
  log "warning: clippy is not installed (rustup component add clippy); lints skipped"
fi

log "deployment lint: cfn-lint and checkov on infra/aws (pinned, offline)"
infra/aws/lint.sh
EDGE_INFRA_PYTHON="$ROOT/.local/venv-infra/bin/python"
export EDGE_INFRA_PYTHON

log "building the binaries"
cargo build --workspace --bins --quiet

log "running the tests"
cargo test --workspace "$@"
