#!/usr/bin/env bash
# The scenario harness (issue #20) on a database and a NATS server of its
# own, so that nothing else on this machine (a running demo's workers on the
# shared NATS) takes its messages:
#   scripts/scenarios.sh                 every scenario in scenarios/, report on stdout
#   scripts/scenarios.sh --report FILE   also write the report (docs/SCENARIOS.md)
# scripts/test.sh runs it (the whole set takes about half a minute).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/opsloop-target}"
state=$(pwd)/.opsloop/scenarios
mkdir -p "$state"

. scripts/private-stack.sh
private_stack opsloop_scenarios "$state"

[ -n "${OPSLOOP_PREBUILT:-}" ] || cargo build --locked --bin opsloop
bin="$CARGO_TARGET_DIR/debug/opsloop"
"$bin" migrate >/dev/null
"$bin" scenario run scenarios/*.toml "$@"
