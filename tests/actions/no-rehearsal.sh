#!/bin/sh
# A test action with no dry-run flag declared: the executor cannot
# rehearse it (`unavailable`), so the gate asks a person.
echo "did the thing: $*"
