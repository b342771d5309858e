#!/usr/bin/env bash
# The benchmark (README, Performance): release build, real Postgres, a fresh DynamoDB Local.
#
#   infra/local/bench.sh [--rate N] [--seconds N] [--environments N] [--burst N]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=infra/local/services.sh
source infra/local/services.sh
cargo build --release -p edge-tests --bin bench --quiet
exec target/release/bench "$@"
