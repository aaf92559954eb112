#!/usr/bin/env bash
# The whole test suite. Extra arguments go to pytest.
source "$(dirname "$0")/venv.sh" test
exec .venv/bin/python -m pytest -q "$@"
