#!/usr/bin/env bash
# Runs every test of the project on real services: the README's test command; CI runs it.
#
#   infra/local/test.sh [extra cargo test arguments]
#
# Sets up what the suites need, on a fresh machine too (infra/local/services.sh): Postgres
# (each test creates and drops its own database), DynamoDB Local (each test binary starts
# its own in-memory instance), the Python venv of the Flagsmith compatibility check. Then:
# formatting and lints, a build of the binaries (the process tests run the real writer and
# consumer), `cargo test` for the whole workspace, and the consumer's Lambda artifact
# (cargo lambda build --release --arm64).
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

# The deployable artifact: the consumer built by cargo-lambda for provided.al2023 on arm64, as
# `sam build` builds it (installs the pinned cargo-lambda and Zig, and the Rust target; checks
# the executable is aarch64).
log "packaging the consumer's Lambda artifact (infra/aws/package.sh)"
infra/aws/package.sh >/dev/null
