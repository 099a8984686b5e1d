#!/usr/bin/env bash
# The web console in a real browser (tests/browser/console.py): Debian's
# Chromium driven by Playwright for Python, axe-core from npm. Installs
# what is missing (Chromium and npm from Debian, Playwright into a venv,
# axe-core into a folder, both outside the clone), then runs the test
# against an `opsloop serve` of its own: a fresh database on the project's
# PostgreSQL and a private nats-server, so that no other run's messages
# reach its roles and its roles take none of theirs.
#
#   scripts/browser.sh       (scripts/test.sh runs it after the cargo tests)
#
# Screenshots go to docs/screenshots/ (SCREENSHOTS=dir to put them
# elsewhere). Says SKIPPED, and passes, only where Chromium cannot be
# installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PLAYWRIGHT_VERSION=1.65.2
AXE_VERSION=4.11.0

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/opsloop-target}"
state=$(pwd)/.opsloop/browser
mkdir -p "$state"

if ! CHROMIUM=$(bash scripts/debian-package.sh chromium chromium); then
  echo "browser: SKIPPED: Chromium could not be installed (the reason is above)"
  exit 0
fi
export CHROMIUM
npm=$(bash scripts/debian-package.sh npm npm) || { echo "browser: npm is needed for axe-core and could not be installed" >&2; exit 1; }

venv=/var/tmp/opsloop-browser-venv-$PLAYWRIGHT_VERSION
if ! "$venv/bin/python" -c 'import playwright' 2>/dev/null; then
  echo "browser: installing Playwright $PLAYWRIGHT_VERSION for Python into $venv (its own browser download is not used)"
  rm -rf "$venv"
  python3 -m venv "$venv" || { echo "browser: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
  "$venv/bin/pip" install -q "playwright==$PLAYWRIGHT_VERSION"
fi
axe=/var/tmp/opsloop-axe-$AXE_VERSION
export AXE_JS=$axe/node_modules/axe-core/axe.min.js
if [ ! -s "$AXE_JS" ]; then
  echo "browser: installing axe-core $AXE_VERSION from npm into $axe"
  rm -rf "$axe"
  mkdir -p "$axe"
  "$npm" install --prefix "$axe" --no-audit --no-fund --silent "axe-core@$AXE_VERSION"
fi

. scripts/private-stack.sh
private_stack opsloop_browser "$state"

[ -n "${OPSLOOP_PREBUILT:-}" ] || cargo build --locked --bin opsloop
bin="$CARGO_TARGET_DIR/debug/opsloop"
"$bin" migrate >/dev/null
export OPSLOOP_TOKENS_FILE="$state/tokens.toml"
rm -f "$OPSLOOP_TOKENS_FILE"
OPSLOOP_TOKEN_ALICE=$("$bin" token create --identity alice --roles operator,approver --tenants t-001 --file "$OPSLOOP_TOKENS_FILE")
OPSLOOP_TOKEN_BOB=$("$bin" token create --identity bob --roles approver --tenants t-001 --file "$OPSLOOP_TOKENS_FILE")
OPSLOOP_TOKEN_CAROL=$("$bin" token create --identity carol --roles approver --tenants t-001 --file "$OPSLOOP_TOKENS_FILE")
OPSLOOP_TOKEN_VIC=$("$bin" token create --identity vic --roles viewer --tenants t-001 --file "$OPSLOOP_TOKENS_FILE")
export OPSLOOP_TOKEN_ALICE OPSLOOP_TOKEN_BOB OPSLOOP_TOKEN_CAROL OPSLOOP_TOKEN_VIC

port=$(free_port)
export OPSLOOP_URL=http://127.0.0.1:$port
# No planner: alice writes the plan (tests/browser/console.py says why).
OPSLOOP_LISTEN=127.0.0.1:$port OPSLOOP_ROLES=api,relay,orchestrator,analyst,gatekeeper,executor,verifier \
  OPSLOOP_TARGETS_FILE=tests/browser/targets.toml OPSLOOP_SCRIPTS_DIR=tests/browser/actions \
  OPSLOOP_VERIFY_DELAY_S=0 OPSLOOP_DETECT_INTERVAL_MS=3600000 \
  "$bin" serve >"$state/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$OPSLOOP_URL/readyz" >/dev/null 2>&1 && break
  kill -0 "${pids[-1]}" 2>/dev/null || { cat "$state/serve.log" >&2; echo "browser: opsloop did not start" >&2; exit 1; }
  sleep 0.2
done

export SCREENSHOTS=${SCREENSHOTS:-docs/screenshots}
echo "browser: Chromium $("$CHROMIUM" --version 2>/dev/null | awk '{print $2}'), Playwright $PLAYWRIGHT_VERSION, axe-core $AXE_VERSION, opsloop at $OPSLOOP_URL"
if ! "$venv/bin/python" tests/browser/console.py; then
  echo "browser: the service's log ($state/serve.log) ends:" >&2
  tail -n 40 "$state/serve.log" >&2
  exit 1
fi
