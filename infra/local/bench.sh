#!/usr/bin/env bash
# The benchmarks (README, Performance): release build, real Postgres, fresh DynamoDB Local.
#
#   infra/local/bench.sh [--rate N] [--seconds N] [--environments N] [--burst N]
#       the writer: commit -> DynamoDB latency and coalesced throughput
#   infra/local/bench.sh identities [--counts 100000,1000000] [--environments 200] [--verify-only]
#       the identity migration job (rate, peak RSS), writer verify over its identities and
#       backfills; --verify-only: the job without its references, then verify
#   infra/local/bench.sh consumer [--records 20000] [--cold-starts 10]
#       the stream consumer: records verified per second, cold start of the Lambda binary
#   infra/local/bench.sh ingest [--writes 4000] [--concurrency 4]
#       edge -> core ingestion: edge identity writes applied to core per second
#   infra/local/bench.sh capture [--rounds 4] [--seconds 10] [--clients 4]
#       what the capture triggers cost Flagsmith's transactions (pgbench, with and without)
#   infra/local/bench.sh scale [--identities 20000] [--environments 20] [--processes 1,2,4]
#       horizontal scale: 1, 2, 4 writer processes draining one storm
#   infra/local/bench.sh soak [--minutes 10] [--rate 50]
#       the writer process's resident memory over a long steady run (/metrics unscraped)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=infra/local/services.sh
source infra/local/services.sh
if [[ "${1:-}" == "identities" ]]; then
  shift
  cargo build --release -p edge-tests -p edge-writer --bins --quiet
  exec target/release/bench_identities "$@"
fi
if [[ "${1:-}" == "consumer" ]]; then
  shift
  cargo build --release -p edge-tests -p stream-consumer --bins --quiet
  exec target/release/bench_consumer "$@"
fi
if [[ "${1:-}" == "ingest" ]]; then
  shift
  cargo build --release -p edge-tests --bin bench_ingest --quiet
  exec target/release/bench_ingest "$@"
fi
if [[ "${1:-}" == "capture" ]]; then
  shift
  command -v pgbench >/dev/null 2>&1 || { echo "bench.sh: pgbench not found; install the PostgreSQL client tools (Debian: postgresql-client)" >&2; exit 1; }
  cargo build --release -p edge-tests --bin bench_capture --quiet
  exec target/release/bench_capture "$@"
fi
if [[ "${1:-}" == "scale" ]]; then
  shift
  cargo build --release -p edge-tests -p edge-writer --bins --quiet
  exec target/release/bench_scale "$@"
fi
if [[ "${1:-}" == "soak" ]]; then
  shift
  cargo build --release -p edge-tests -p edge-writer --bins --quiet
  exec target/release/bench_soak "$@"
fi
cargo build --release -p edge-tests --bin bench --quiet
exec target/release/bench "$@"
