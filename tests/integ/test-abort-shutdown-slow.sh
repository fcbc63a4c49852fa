#!/usr/bin/env bash
# test-abort-shutdown with each parent write taking 9 s (hold 12): the
# stop's seal cannot get the disk from the abort within its 5 s, so no
# identity is recorded, and the remount must still work (it compared a
# stale identity and refused the healthy parent for ever).
ABORT_HOLD=12 ABORT_SLOW=9 ABORT_WAIT=2 exec bash "$(dirname "$0")/test-abort-shutdown.sh"
