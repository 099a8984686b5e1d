#!/bin/sh
# A slow, non-idempotent test action that records every real run it gets,
# so that a test can prove no step ran twice (graceful shutdown, chaos):
#   slow-restart.sh --service NAME --seconds N [--dry-run]
set -eu
service=""
seconds=1
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --service) service="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ -n "$service" ] || { echo "--service is required" >&2; exit 2; }
if [ "$dry" = 1 ]; then
  echo "would restart $service slowly"
  exit 0
fi
# A fixed path: the tests and the chaos suite read it, whatever TMPDIR is.
runs=/tmp/opsloop-test-runs.log
echo "start $service $$" >> "$runs"
sleep "$seconds"
echo "done $service $$" >> "$runs"
echo "restarted $service"
