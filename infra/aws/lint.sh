#!/usr/bin/env bash
# Lints the deployment: infra/aws/template.yaml and infra/aws/Dockerfile.
#
#   infra/aws/lint.sh            # install the pinned tools if needed, then lint
#   infra/aws/lint.sh --setup    # install only; prints the venv's python on stdout
#                                # (tests/tests/deployment.rs reads the template with it)
#
# The tools live in the repo-local venv .local/venv-infra; the install is skipped while a
# stamp records the same pins and Python. Checks, each of which must pass:
#
#   1. cfn-lint on the SAM template: no error and no warning.
#   2. The SAM transform (aws-sam-translator, offline), then cfn-lint on the resulting
#      CloudFormation: what CloudFormation will really receive.
#   3. checkov on the template (framework cloudformation) and on the Dockerfile: no failed
#      check. A suppression is a `checkov: skip:` entry in the resource's Metadata with its
#      reason; they are listed in the summary.
#
# Exits non-zero when any check fails. Progress and findings go to stderr.
set -euo pipefail

CFN_LINT_VERSION=1.58.0
CHECKOV_VERSION=3.3.30
SAM_TRANSLATOR_VERSION=1.115.0

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.local/venv-infra"
STAMP="$VENV/.pins"
TEMPLATE=infra/aws/template.yaml
DOCKERFILE=infra/aws/Dockerfile

log() { echo "lint.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

setup_only=false
case "${1:-}" in
  --setup) setup_only=true ;;
  "") ;;
  *) die "unknown argument ${1}; usage: infra/aws/lint.sh [--setup]" ;;
esac

command -v python3 >/dev/null || die "python3 not found (Debian: apt-get install -y python3 python3-venv)"
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
  || die "python3 >= 3.9 is required; found $(python3 --version 2>&1)"

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv in $VENV"
  mkdir -p "$ROOT/.local"
  if ! python3 -m venv "$VENV" >&2; then
    rm -rf "$VENV"
    die "python3 -m venv failed (Debian: apt-get install -y python3-venv)"
  fi
fi

want="cfn-lint==$CFN_LINT_VERSION checkov==$CHECKOV_VERSION aws-sam-translator==$SAM_TRANSLATOR_VERSION $("$VENV/bin/python" --version 2>&1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  log "tools unchanged, skipping install"
else
  log "installing cfn-lint $CFN_LINT_VERSION, checkov $CHECKOV_VERSION, aws-sam-translator $SAM_TRANSLATOR_VERSION"
  rm -f "$STAMP"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet \
    "cfn-lint==$CFN_LINT_VERSION" "checkov==$CHECKOV_VERSION" \
    "aws-sam-translator==$SAM_TRANSLATOR_VERSION" >&2 \
    || die "pip install of the lint tools failed"
  echo "$want" > "$STAMP"
fi

if $setup_only; then
  echo "$VENV/bin/python"
  exit 0
fi

cd "$ROOT"
[[ -f "$TEMPLATE" ]] || die "$TEMPLATE not found"
export PATH="$VENV/bin:$PATH"
# checkov: no calls home, no update check; it runs offline.
export BC_SKIP_MAPPING=TRUE CKV_SKIP_PACKAGE_UPDATE_CHECK=TRUE

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=0
summary=()

# cfn-lint exit status is a bit mask: 2 errors, 4 warnings, 8 informational.
run_cfn_lint() { # label file
  local label="$1" file="$2" status=0
  cfn-lint --format parseable -- "$file" > "$work/cfn-lint.out" 2>&1 || status=$?
  if [[ -s "$work/cfn-lint.out" ]]; then
    sed 's/^/  /' "$work/cfn-lint.out" >&2
  fi
  local errors warnings
  errors="$(grep -c ':E[0-9]\{4\}:' "$work/cfn-lint.out" || true)"
  warnings="$(grep -c ':W[0-9]\{4\}:' "$work/cfn-lint.out" || true)"
  if (( status & 6 )) || (( status == 1 )) || (( status > 15 )); then
    failed=1
    summary+=("FAIL  $label: $errors error(s), $warnings warning(s) (exit $status)")
  else
    summary+=("ok    $label: no errors, no warnings")
  fi
}

log "cfn-lint $TEMPLATE"
run_cfn_lint "cfn-lint $TEMPLATE" "$TEMPLATE"

log "SAM transform of $TEMPLATE, then cfn-lint on the result"
# The transform runs offline: CodeUri is replaced by a placeholder S3 location (what
# `sam deploy` uploads), and no managed policy is looked up (the template names none).
if AWS_DEFAULT_REGION=eu-west-1 "$VENV/bin/python" - "$TEMPLATE" "$work/transformed.json" \
  > "$work/transform.out" 2>&1 <<'PY'
import json
import sys

from samtranslator.public.exceptions import InvalidDocumentException
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

source, target = sys.argv[1], sys.argv[2]
with open(source) as f:
    template = yaml_parse(f.read())
for resource in template.get("Resources", {}).values():
    if resource.get("Type") == "AWS::Serverless::Function":
        resource["Properties"]["CodeUri"] = "s3://placeholder-bucket/stream-consumer.zip"


class NoManagedPolicies:
    def load(self):
        return {}


try:
    transformed = transform(template, {}, NoManagedPolicies())
except InvalidDocumentException as e:
    for cause in e.causes:
        print(cause.message)
    sys.exit(1)
with open(target, "w") as f:
    json.dump(transformed, f, indent=1)
PY
then
  summary+=("ok    SAM transform")
  run_cfn_lint "cfn-lint on the transformed template" "$work/transformed.json"
else
  sed 's/^/  /' "$work/transform.out" >&2
  failed=1
  summary+=("FAIL  SAM transform: $(tail -1 "$work/transform.out")")
fi

run_checkov() { # label framework file
  local label="$1" framework="$2" file="$3" status=0
  checkov -f "$file" --framework "$framework" --skip-download --compact --quiet \
    > "$work/checkov.out" 2>&1 || status=$?
  sed 's/^/  /' "$work/checkov.out" >&2
  local line
  line="$(grep -o 'Passed checks: [0-9]*, Failed checks: [0-9]*, Skipped checks: [0-9]*' "$work/checkov.out" || true)"
  if [[ -z "$line" ]]; then
    failed=1
    summary+=("FAIL  $label: no result (exit $status)")
  elif (( status != 0 )) || [[ "$line" != *"Failed checks: 0,"* ]]; then
    failed=1
    summary+=("FAIL  $label: $line")
  else
    summary+=("ok    $label: $line")
  fi
}

log "checkov $TEMPLATE"
run_checkov "checkov $TEMPLATE" cloudformation "$TEMPLATE"
log "checkov $DOCKERFILE"
run_checkov "checkov $DOCKERFILE" dockerfile "$DOCKERFILE"

# The suppressions, with their reasons, as written in the template's Metadata.
suppressions="$("$VENV/bin/python" - "$TEMPLATE" <<'PY'
import sys

from cfnlint.decode import decode

template, _ = decode(sys.argv[1])
for name, resource in (template or {}).get("Resources", {}).items():
    for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
        print(f"      {skip.get('id')} on {name}: {' '.join(str(skip.get('comment', '')).split())}")
PY
)"

echo "lint.sh summary (cfn-lint $CFN_LINT_VERSION, checkov $CHECKOV_VERSION, aws-sam-translator $SAM_TRANSLATOR_VERSION):" >&2
printf '  %s\n' "${summary[@]}" >&2
if [[ -n "$suppressions" ]]; then
  echo "  checkov suppressions:" >&2
  echo "$suppressions" >&2
fi
if (( failed )); then
  log "FAILED"
  exit 1
fi
log "all checks passed"
