#!/usr/bin/env bash
# Builds the stream consumer's Lambda artifact for provided.al2023 on arm64 (Graviton), as
# `sam build` does for the template's StreamConsumerFunction:
#
#   infra/aws/package.sh
#
# Output (under the cargo target directory, `target/` unless CARGO_TARGET_DIR is set):
#
#   target/lambda/stream-consumer/bootstrap       the executable (aarch64, glibc)
#   target/lambda/stream-consumer/bootstrap.zip   the same, zipped for `aws lambda update-function-code`
#
# Installs the pinned cargo-lambda and Zig (the cross linker) into the repo-local venv
# .local/venv-lambda, skipped while a stamp records the same pins, and adds the Rust target
# aarch64-unknown-linux-gnu through rustup when it is missing. Prints the zip's path on
# stdout; progress goes to stderr. With --setup it installs only and prints the venv's bin
# directory (put it on PATH for `sam build`, which runs cargo-lambda itself).
set -euo pipefail

CARGO_LAMBDA_VERSION=1.9.2
ZIGLANG_VERSION=0.15.2
RUST_TARGET=aarch64-unknown-linux-gnu
PACKAGE=stream-consumer
BINARY=stream-consumer

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.local/venv-lambda"
STAMP="$VENV/.pins"

log() { echo "package.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

setup_only=false
case "${1:-}" in
  --setup) setup_only=true ;;
  "") ;;
  *) die "unknown argument ${1}; usage: infra/aws/package.sh [--setup]" ;;
esac

command -v python3 >/dev/null || die "python3 not found (Debian: apt-get install -y python3 python3-venv)"
command -v cargo >/dev/null || die "cargo not found (install Rust with rustup)"

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv in $VENV"
  mkdir -p "$ROOT/.local"
  if ! python3 -m venv "$VENV" >&2; then
    rm -rf "$VENV"
    die "python3 -m venv failed (Debian: apt-get install -y python3-venv)"
  fi
fi

want="cargo-lambda==$CARGO_LAMBDA_VERSION ziglang==$ZIGLANG_VERSION $("$VENV/bin/python" --version 2>&1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  log "cargo-lambda and zig unchanged, skipping install"
else
  log "installing cargo-lambda $CARGO_LAMBDA_VERSION and ziglang $ZIGLANG_VERSION"
  rm -f "$STAMP"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet \
    "cargo-lambda==$CARGO_LAMBDA_VERSION" "ziglang==$ZIGLANG_VERSION" >&2 \
    || die "pip install of cargo-lambda and ziglang failed"
  echo "$want" > "$STAMP"
fi

# cargo-lambda finds `cargo-lambda` and Zig (`python3 -m ziglang`) through PATH.
export PATH="$VENV/bin:$PATH"

if command -v rustup >/dev/null; then
  if ! rustup target list --installed | grep -qx "$RUST_TARGET"; then
    log "adding the Rust target $RUST_TARGET"
    rustup target add "$RUST_TARGET" >&2 || die "rustup target add $RUST_TARGET failed"
  fi
else
  log "rustup not found; assuming the $RUST_TARGET standard library is installed"
fi

if $setup_only; then
  echo "$VENV/bin"
  exit 0
fi

cd "$ROOT"
target_dir="$(cargo metadata --format-version 1 --no-deps \
  | "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
out="$target_dir/lambda/$BINARY"

log "cargo lambda build --release --arm64 -p $PACKAGE --bin $BINARY"
started=$SECONDS
cargo lambda build --release --arm64 -p "$PACKAGE" --bin "$BINARY" >&2 \
  || die "cargo lambda build failed"
log "built in $((SECONDS - started)) s"

[[ -f "$out/bootstrap" ]] || die "expected $out/bootstrap after the build"

# Check the artifact is what provided.al2023 on arm64 runs, then zip it (mode 0755 kept).
"$VENV/bin/python" - "$out/bootstrap" "$out/bootstrap.zip" <<'PY' >&2 || die "bad artifact"
import os
import struct
import sys
import zipfile

binary, archive = sys.argv[1], sys.argv[2]
with open(binary, "rb") as f:
    header = f.read(20)
if header[:4] != b"\x7fELF" or header[4] != 2:
    sys.exit(f"{binary} is not a 64-bit ELF executable")
(machine,) = struct.unpack_from("<H", header, 18)
if machine != 0xB7:
    sys.exit(f"{binary} is not an aarch64 executable (e_machine {machine:#x})")
info = zipfile.ZipInfo("bootstrap", date_time=(1980, 1, 1, 0, 0, 0))
info.external_attr = (0o100755 & 0xFFFF) << 16
info.compress_type = zipfile.ZIP_DEFLATED
with open(binary, "rb") as f, zipfile.ZipFile(archive, "w") as z:
    z.writestr(info, f.read())
print(
    f"package.sh: bootstrap {os.path.getsize(binary) / 1e6:.1f} MB (aarch64), "
    f"bootstrap.zip {os.path.getsize(archive) / 1e6:.1f} MB"
)
PY

echo "$out/bootstrap.zip"
