#!/usr/bin/env bash
# MNIST test-set accuracy of the int16 Cortex-M networks against float (python/int16_accuracy.py).
# Installs the `train` extra (PyTorch, CPU; with it MNIST, see venv.sh) and `cortex-m`. Needs the
# arm-none-eabi toolchain and QEMU (bash scripts/test.sh installs them). Arguments go to the script.
source "$(dirname "$0")/venv.sh" train,cortex-m
exec .venv/bin/python python/int16_accuracy.py "$@"
