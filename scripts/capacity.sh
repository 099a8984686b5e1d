#!/usr/bin/env bash
# The figures of docs/CAPACITY.md, with the release build, on a database and
# a nats-server of their own:
#   - bench_footprint: memory of an all-roles `opsloop serve` at idle and
#     under load, without and with the embedding model;
#   - bench_scale: the loop's throughput with 1, 2 and 3 worker processes.
#   bash scripts/capacity.sh [footprint|scale] [the program's options]
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/opsloop-target}"
state=$(pwd)/.opsloop/capacity
mkdir -p "$state"

. scripts/private-stack.sh
private_stack opsloop_capacity_admin "$state"
OPSLOOP_EMBEDDINGS_MODEL_DIR=$(bash scripts/model.sh)
export OPSLOOP_EMBEDDINGS_MODEL_DIR

which=all
case "${1:-}" in footprint | scale) which=$1; shift ;; esac
cargo build --locked --release --bin opsloop --bin bench_footprint --bin bench_scale
for bench in footprint scale; do
  if [ "$which" = all ] || [ "$which" = "$bench" ]; then
    "$CARGO_TARGET_DIR/release/bench_$bench" --opsloop "$CARGO_TARGET_DIR/release/opsloop" "$@"
    echo
  fi
done
