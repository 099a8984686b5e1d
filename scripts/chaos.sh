#!/usr/bin/env bash
# The chaos suite (issue #22, src/bin/bench_chaos.rs) on a PostgreSQL and a
# three-node NATS cluster of its own, which it kills and restarts; the
# services the other tests use are never touched.
#   bash scripts/chaos.sh                      a full run (100 s of load), report on stdout
#   bash scripts/chaos.sh --short              the CI form (40 s of load, about 2 minutes)
#   bash scripts/chaos.sh --seed 7 --report docs/CHAOS.md   append the report
# Exits non-zero when an invariant does not hold.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/opsloop-target}"
key=$(printf '%s' "$(pwd -P)" | sha256sum | cut -c1-12)
export OPSLOOP_SERVICES_STATE="/var/tmp/opsloop-chaos-$key"

stop_services() {
  bash scripts/services.sh cluster down >/dev/null 2>&1 || true
  bash scripts/services.sh down >/dev/null 2>&1 || true
}
trap stop_services EXIT

# Its own PostgreSQL and NATS, never the ones a caller's environment names
# (scripts/test.sh exports the shared ones): the faults must hit these.
unset DATABASE_URL NATS_URL OPSLOOP_NATS_SUBSCRIBER_URL
bash scripts/services.sh cluster up
eval "$(bash scripts/services.sh cluster env)"
unset OPSLOOP_NATS_SUBSCRIBER_URL

[ -n "${OPSLOOP_PREBUILT:-}" ] || cargo build --locked --bin opsloop --bin bench_chaos
"$CARGO_TARGET_DIR/debug/bench_chaos" --opsloop "$CARGO_TARGET_DIR/debug/opsloop" "$@"
