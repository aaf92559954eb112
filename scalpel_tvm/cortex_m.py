"""Running the int16 micro-kernels on an emulated Cortex-M4 (QEMU's mps2-an386).

`run_selftest(layers)` writes the layers (inputs, weights in their format, bias, shift) into a C
header, builds `firmware/q15_selftest.c` with `CMakeLists.txt` and Debian's arm-none-eabi
toolchain, runs it under `qemu-system-arm -M mps2-an386` with semihosting, and returns what the
firmware computed. The tests compare that with `fixed_point`'s numpy reference bit for bit.
QEMU is not cycle-accurate: this checks results, not speed.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ScalpelError

ROOT = Path(__file__).resolve().parents[1]
APT_LINE = "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm cmake"
KINDS = {"dense": 0, "gsparse2": 1, "csr": 2}


@dataclass
class Q15Layer:
    """One FC layer for the firmware: `kind` dense (values = W as [N, K]), gsparse2 or csr
    (indptr, indices, values as the kernels take them); x is (batch, K) int16."""

    kind: str
    x: np.ndarray
    n: int
    values: np.ndarray
    indptr: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int32))
    indices: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int32))
    bias: np.ndarray | None = None
    shift: int = 0
    relu: bool = False


def check_toolchain() -> None:
    missing = [tool for tool in ("arm-none-eabi-gcc", "qemu-system-arm", "cmake") if not shutil.which(tool)]
    if missing:
        raise ScalpelError(f"{', '.join(missing)} not found; the Cortex-M build and its emulation "
                           f"need them: {APT_LINE}")


def _array(name: str, ctype: str, values) -> str:
    flat = np.asarray(values).ravel()
    body = ", ".join(str(int(v)) for v in flat) if flat.size else "0"
    return f"static const {ctype} {name}[] = {{{body}}};\n"


def layers_header(layers: list[Q15Layer]) -> str:
    """The C header the self-test firmware includes."""
    text = ["#include <stdint.h>\n",
            "struct scalpel_layer { int kind, batch, k, n, shift, relu; const int16_t *x; "
            "const int32_t *indptr; const int32_t *indices; const int16_t *values; "
            "const int32_t *bias; };\n"]
    entries = []
    for i, layer in enumerate(layers):
        batch, k = layer.x.shape
        text += [_array(f"x{i}", "int16_t", layer.x), _array(f"p{i}", "int32_t", layer.indptr),
                 _array(f"j{i}", "int32_t", layer.indices), _array(f"v{i}", "int16_t", layer.values)]
        if layer.bias is not None:
            text.append(_array(f"b{i}", "int32_t", layer.bias))
        entries.append(f"{{{KINDS[layer.kind]}, {batch}, {k}, {layer.n}, {layer.shift}, {int(layer.relu)}, "
                       f"x{i}, p{i}, j{i}, v{i}, {f'b{i}' if layer.bias is not None else '0'}}}")
    text.append(f"#define SCALPEL_NUM_LAYERS {len(layers)}\n")
    text.append(f"#define SCALPEL_MAX_N {max(layer.n for layer in layers)}\n")
    text.append("static const struct scalpel_layer scalpel_layers[] = {\n  " + ",\n  ".join(entries) + "\n};\n")
    return "".join(text)


def build_selftest(layers: list[Q15Layer], build_dir: Path, mcpu: str = "cortex-m4") -> Path:
    """Configure and build the self-test firmware for `layers`; returns the ELF."""
    check_toolchain()
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    header = build_dir / "layers.h"
    header.write_text(layers_header(layers))
    configure = ["cmake", "-S", str(ROOT), "-B", str(build_dir),
                 f"-DCMAKE_TOOLCHAIN_FILE={ROOT / 'cmake' / 'arm-none-eabi.cmake'}",
                 f"-DSCALPEL_MCPU={mcpu}", f"-DSCALPEL_LAYERS={header}"]
    for command in (configure, ["cmake", "--build", str(build_dir), "--target", "q15_selftest"]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise ScalpelError(f"building the Cortex-M firmware failed ({' '.join(command[:2])}):\n"
                               f"{(result.stdout + result.stderr)[-3000:]}")
    return build_dir / "q15_selftest.elf"


def run_qemu(elf: Path, timeout_s: float = 60) -> str:
    """Run a semihosting ELF on QEMU's mps2-an386; its standard output. A firmware that does not
    finish in `timeout_s` is an error showing its last output."""
    check_toolchain()
    command = ["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor", "none",
               "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        tail = (err.stdout or b"")[-1000:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        raise ScalpelError(f"the firmware did not finish within {timeout_s} s under QEMU; its last "
                           f"output:\n{tail}") from None
    if result.returncode != 0 or "done" not in result.stdout:
        raise ScalpelError(f"the firmware failed under QEMU (exit {result.returncode}):\n"
                           f"{(result.stdout + result.stderr)[-2000:]}")
    return result.stdout


def run_selftest(layers: list[Q15Layer], build_dir: Path, mcpu: str = "cortex-m4") -> list[np.ndarray]:
    """Each layer's outputs, (batch, N) int16, as the emulated Cortex-M computed them."""
    output = run_qemu(build_selftest(layers, build_dir, mcpu))
    results = [np.zeros((layer.x.shape[0], layer.n), np.int16) for layer in layers]
    for line in output.splitlines():
        if line.startswith("y "):
            _, index, row, *values = line.split()
            results[int(index)][int(row)] = np.array(values, dtype=np.int16)
    return results
