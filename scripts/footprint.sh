#!/usr/bin/env bash
# Memory of an all-roles `opsloop serve` at idle and under load, without and
# with the embedding model (src/bin/bench_footprint.rs), on a database and a
# nats-server of its own, with the release build:
#   bash scripts/footprint.sh [--seconds 60] [--rate 4]
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/opsloop-target}"
state=$(pwd)/.opsloop/footprint
mkdir -p "$state"

. scripts/private-stack.sh
private_stack opsloop_footprint_admin "$state"
OPSLOOP_EMBEDDINGS_MODEL_DIR=$(bash scripts/model.sh)
export OPSLOOP_EMBEDDINGS_MODEL_DIR

cargo build --locked --release --bin opsloop --bin bench_footprint
"$CARGO_TARGET_DIR/release/bench_footprint" --opsloop "$CARGO_TARGET_DIR/release/opsloop" "$@"
