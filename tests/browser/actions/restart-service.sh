#!/bin/sh
# The browser test's remediation: the demo's restart script, but a real run
# first takes 6 s, so that EXECUTING is on screen long enough for the test
# to see it arrive live (tests/browser/console.py). A rehearsal is quick.
set -eu
case " $* " in
  *" --dry-run "*) ;;
  *) sleep 6 ;;
esac
exec "$(dirname "$0")/../../../scripts/actions/restart-service.sh" "$@"
