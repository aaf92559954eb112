#!/usr/bin/env bash
# The main job on its built-in default: `scalpel demo` (LeNet-300-100 and LeNet-5, batch 1 and 50,
# on this machine's CPU). Extra arguments go to `scalpel demo`.
source "$(dirname "$0")/venv.sh" ""  # no extras; the explicit argument keeps ours away from it
exec .venv/bin/scalpel demo "$@"
