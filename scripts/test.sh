#!/usr/bin/env bash
# The whole test suite. Extra arguments go to pytest.
# Debian packages the tests need: a host C/C++ compiler (nvcc's host compiler; the Cortex-M
# micro-kernels' host build), CMake (that build), the Arm bare-metal toolchain (their Cortex-M
# build), QEMU (running that firmware on an emulated Cortex-M4) and Fashion-MNIST (a data set of
# the pruning frontend).
missing=()
command -v g++ >/dev/null || missing+=(g++)
command -v cmake >/dev/null || missing+=(cmake)
command -v arm-none-eabi-gcc >/dev/null || missing+=(gcc-arm-none-eabi libnewlib-arm-none-eabi)
command -v qemu-system-arm >/dev/null || missing+=(qemu-system-arm)
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} with apt-get"
  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; } \
    > /tmp/scalpel-apt.log 2>&1 || { tail -20 /tmp/scalpel-apt.log; exit 1; }
fi
source "$(dirname "$0")/venv.sh" test,cuda,cortex-m,train
exec .venv/bin/python -m pytest -q "$@"
