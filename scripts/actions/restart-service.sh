#!/bin/sh
# Demo remediation: "restarts" a service by writing a marker file. Called by
# the executor's script.exec adapter with an argv array (never a shell line):
#   restart-service.sh --service NAME [--undo] [--dry-run]
# --dry-run (declared in config/targets.toml) says what it would do and
# changes nothing: the executor's rehearsal before the gate.
set -eu
service=""
undo=0
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --service) service="$2"; shift 2 ;;
    --undo) undo=1; shift ;;
    --dry-run) dry=1; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ -n "$service" ] || { echo "--service is required" >&2; exit 2; }
if [ "$dry" = 1 ]; then
  if [ "$undo" = 1 ]; then echo "would restore the previous instance of $service"
  else echo "would restart $service"; fi
  exit 0
fi
state="${TMPDIR:-/tmp}/opsloop-demo-restarts.log"
if [ "$undo" = 1 ]; then
  echo "$(date -u +%FT%TZ) undo restart of $service" >> "$state"
  echo "restored previous instance of $service"
else
  echo "$(date -u +%FT%TZ) restart $service" >> "$state"
  echo "restarted $service"
fi
