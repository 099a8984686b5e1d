#!/bin/sh
# The browser test's remediation: like scripts/actions/restart-service.sh,
# but a real run takes a few seconds, so that EXECUTING is on screen long
# enough for the test to see it arrive live (tests/browser/console.py).
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
  echo "would restart $service (slowly)"
  exit 0
fi
sleep 6
if [ "$undo" = 1 ]; then echo "restored previous instance of $service"; else echo "restarted $service"; fi
