#!/bin/sh
# A test action whose rehearsal passes and whose run fails: what no dry run
# can promise. The tests' targets file declares --dry-run for it.
for arg in "$@"; do
  if [ "$arg" = "--dry-run" ]; then
    echo "would change nothing harmful"
    exit 0
  fi
done
echo "failed for real" >&2
exit 1
