#!/usr/bin/env bash
# Formatting and lints, as CI-strict as the code is kept: rustfmt check and
# clippy with warnings as errors, over every target.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/opsloop-target}"
cargo fmt --all -- --check
# No import circle between files of src/ (the layering of docs/ARCHITECTURE.md).
python3 scripts/import_cycles.py
cargo clippy --locked --all-targets -- -D warnings
echo "lint: clean"
