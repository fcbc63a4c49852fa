#!/usr/bin/env bash
# The documentation and the program agree (doc/check-options, also run by
# `scons check`): every option each command's parser accepts is documented
# for it in doc/commands and no other, the config keys of doc/config are
# config.c's, every --help fits in 80 columns, README.md's command table is
# the generated one and the man pages render through groff without a
# warning.  No daemon is started.
. "$(dirname "$0")/../functions.sh"
requires python3 --version
python3 "$TOP/doc/check-options" "$CORFS" || fail "the documentation differs from the program"
echo OK
