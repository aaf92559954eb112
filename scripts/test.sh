#!/usr/bin/env bash
# The whole test suite. Extra arguments go to pytest.
# The CUDA tests compile with nvcc (installed into .venv by the cuda extra), which needs a host
# C++ compiler.
if ! command -v g++ >/dev/null; then
  echo "installing g++ (nvcc's host compiler) with apt-get"
  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++; } \
    > /tmp/scalpel-apt.log 2>&1 || { tail -20 /tmp/scalpel-apt.log; exit 1; }
fi
source "$(dirname "$0")/venv.sh" test,cuda
exec .venv/bin/python -m pytest -q "$@"
