#!/usr/bin/env bash
# Fuzzes the HTTP API from its own OpenAPI document with Schemathesis (a
# third-party fuzzer from PyPI): every check on, coverage, fuzzing and
# stateful phases, against a real `opsloop serve --roles api` on the
# services `scripts/services.sh` runs. Fails when Schemathesis finds a
# failure (an undocumented status or media type, a 5xx, a response that
# breaks its schema, a valid request refused or an invalid one accepted).
#
#   scripts/fuzz.sh [--max-examples N]     (default 25 per operation)
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
SPEC_VALIDATOR_VERSION=0.9.0
examples=25
if [ "${1:-}" = "--max-examples" ]; then examples=$2; fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/opsloop-target}"
scripts/services.sh up >/dev/null
eval "$(scripts/services.sh env)"
state=$(pwd)/.opsloop/fuzz
mkdir -p "$state"

# The project's own Python environment for the two PyPI tools, outside the
# clone so repeated runs reuse it.
venv=/var/tmp/opsloop-fuzz-venv-$SCHEMATHESIS_VERSION-$SPEC_VALIDATOR_VERSION
if ! "$venv/bin/schemathesis" --version >/dev/null 2>&1 || [ ! -x "$venv/bin/openapi-spec-validator" ]; then
  echo "fuzz: installing schemathesis $SCHEMATHESIS_VERSION and openapi-spec-validator $SPEC_VALIDATOR_VERSION from PyPI into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || { echo "fuzz: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
  "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" \
    "openapi-spec-validator==$SPEC_VALIDATOR_VERSION"
fi

# A fresh database for every run, so that a run with the same seed meets
# the same data (and leaves the tests' database alone).
psql_bin=$(ls .opsloop/pg/pgserver/pginstall/bin/psql 2>/dev/null || command -v psql || true)
if [ -n "$psql_bin" ]; then
  "$psql_bin" "$DATABASE_URL" -qX -v ON_ERROR_STOP=1 \
    -c "DROP DATABASE IF EXISTS opsloop_fuzz WITH (FORCE)" -c "CREATE DATABASE opsloop_fuzz" >/dev/null
  DATABASE_URL=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/opsloop_fuzz")))' "$DATABASE_URL")
  export DATABASE_URL
else
  echo "fuzz: no psql found: fuzzing against DATABASE_URL's own database"
fi

[ -n "${OPSLOOP_PREBUILT:-}" ] || cargo build --locked --bin opsloop
bin="$CARGO_TARGET_DIR/debug/opsloop"
rm -f "$state/tokens.toml"
token=$("$bin" token create --identity fuzz-admin --roles admin --tenants '*' --file "$state/tokens.toml")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# ChatOps on, so its routes are fuzzed past "not configured": every
# unsigned request must be a clean 401.
python3 -c 'import secrets; print(secrets.token_hex(24))' >"$state/slack-secret"
# The librarian on, so that /kb/* is fuzzed past "not configured".
OPSLOOP_EMBEDDINGS_MODEL_DIR=$(bash scripts/model.sh)
export OPSLOOP_EMBEDDINGS_MODEL_DIR
OPSLOOP_LISTEN=127.0.0.1:$port OPSLOOP_TOKENS_FILE="$state/tokens.toml" \
  OPSLOOP_SLACK_SIGNING_SECRET_FILE="$state/slack-secret" \
  OPSLOOP_CHATOPS_FILE=config/chatops.example.toml \
  "$bin" serve --roles api >"$state/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
    "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$state/serve.log" >&2; echo "fuzz: the API did not start" >&2; exit 1; }
  sleep 0.1
done

echo "fuzz: validating /openapi.json as OpenAPI 3.1 (openapi-spec-validator $SPEC_VALIDATOR_VERSION)"
"$venv/bin/python" - "http://127.0.0.1:$port/openapi.json" <<'PY'
import json, sys, urllib.request
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator
doc = json.load(urllib.request.urlopen(sys.argv[1], timeout=10))
assert doc.get("openapi", "").startswith("3.1"), f"not OpenAPI 3.1: {doc.get('openapi')}"
validate(doc, cls=OpenAPIV31SpecValidator)
print(f"fuzz: /openapi.json is valid OpenAPI {doc['openapi']}: {len(doc['paths'])} paths")
PY

echo "fuzz: schemathesis $SCHEMATHESIS_VERSION, every check, $examples examples per operation"
cd tests/fuzz
"$venv/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks all \
  --max-examples "$examples" \
  --seed "${FUZZ_SEED:-20261130}" \
  --no-color
