"""`scalpel deploy`: an int16 FC network as a self-contained Cortex-M firmware project.

The project directory holds the network as C (every layer's weights in flash, in the storage
format chosen for it: dense or pairs), the int16 micro-kernels, the start-up code and linker
script, a runner that prints the outputs over semihosting, a `CMakeLists.txt` for
arm-none-eabi-gcc (with its toolchain file), and `report.json` / `report.txt`: per layer its
format, Q formats and bytes, and flash and SRAM against the board's budget. A model that does
not fit is refused with the numbers before anything is written. With `run=True` the project is
built and run under QEMU's mps2-an386 on the calibration inputs, and must equal the numpy
reference bit for bit.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx

from . import cortex_m
from .errors import ScalpelError
from .int16_mlp import quantize_mlp
from .onnx_import import load_onnx
from .target import TargetSpec

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["schedules/cortex_m/q15_fc.c", "schedules/cortex_m/q15_fc.h", "firmware/startup.c",
           "firmware/q15_network.c", "firmware/scalpel_layer.h", "firmware/mps2_an386.ld"]


def load_calibration(path: str | Path) -> np.ndarray:
    try:
        data = np.load(path)
    except (OSError, ValueError) as err:
        raise ScalpelError(f"cannot read calibration data {path}: {err}; give a .npy array of "
                           "inputs like those the device will see, shape (samples, features)") from None
    return data.reshape(data.shape[0], -1) if data.ndim > 2 else data


def deploy(model, target: str, out: str | Path, calibration: np.ndarray, *, inputs: int = 4,
           run: bool = False, overwrite: bool = False) -> dict:
    """Write the firmware project for `model` to `out`; returns the report."""
    spec = TargetSpec.preset(target)
    if spec.parallelism != "low" or spec.memory is None:
        raise ScalpelError(f"deploy builds Cortex-M firmware; {target} is not a Cortex-M board target "
                           "(cortex-m4, cortex-m7, cortex-m55)")
    if spec.lanes("int16") < 2:
        raise ScalpelError(f"{target} has no 2x16-bit SIMD (no DSP extension)")
    model = model if isinstance(model, onnx.ModelProto) else load_onnx(model)
    net = quantize_mlp(model, calibration)
    use = cortex_m.check_fits(net, spec.memory)  # before anything is written
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ScalpelError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    (out / "src").mkdir(parents=True, exist_ok=True)
    for source in SOURCES:
        shutil.copy(ROOT / source, out / "src" / Path(source).name)
    shutil.copy(ROOT / "firmware" / "project_CMakeLists.txt", out / "CMakeLists.txt")
    toolchain = (ROOT / "cmake" / "arm-none-eabi.cmake").read_text().replace(
        "set(SCALPEL_MCPU cortex-m4", f"set(SCALPEL_MCPU {spec.target.attrs['mcpu']}")
    (out / "arm-none-eabi.cmake").write_text(toolchain)
    x_q = net.quantize_input(np.asarray(calibration)[:inputs])
    (out / "src" / "network.h").write_text(cortex_m.network_header(net, x_q))
    report = {
        "target": target, "board_memory": spec.memory, "flash_bytes": use["flash"],
        "sram_bytes": use["sram"], "input_frac_bits": net.input_bits,
        "layers": [{"name": layer.name, "shape_nk": list(layer.w_nk.shape), "format": layer.format,
                    "bytes": layer.flash_bytes(), "frac_bits": {"in": layer.in_bits, "w": layer.w_bits,
                                                                "out": layer.out_bits}, "shift": layer.shift}
                   for layer in net.layers],
        "not_counted": "code, stack and the C library's buffers",
    }
    if run:
        cortex_m.cmake_build(out, out / "build", out / "arm-none-eabi.cmake")
        got = cortex_m.network_outputs(cortex_m.run_qemu(out / "build" / "network.elf"))
        if not np.array_equal(got, net.forward(x_q)):
            raise ScalpelError("the firmware's outputs differ from the numpy reference")
        report["qemu_matches_reference"] = True
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.txt").write_text(report_text(report))
    return report


def report_text(report: dict) -> str:
    board = report["board_memory"]
    lines = [f"{'layer':<8}{'N x K':>12}{'format':>10}{'bytes':>10}  Q in/w/out  shift"]
    for layer in report["layers"]:
        q = layer["frac_bits"]
        lines.append(f"{layer['name']:<8}{'x'.join(map(str, layer['shape_nk'])):>12}{layer['format']:>10}"
                     f"{layer['bytes']:>10}  {q['in']}/{q['w']}/{q['out']:<8}{layer['shift']:>4}")
    lines.append(f"flash {report['flash_bytes'] / 1024:.1f} KB of {board['flash'] / 1024:.0f} KB, "
                 f"SRAM (activations) {report['sram_bytes'] / 1024:.1f} KB of {board['sram'] / 1024:.0f} KB; "
                 f"not counted: {report['not_counted']}")
    if report.get("qemu_matches_reference"):
        lines.append("run under QEMU mps2-an386: outputs equal the numpy reference")
    return "\n".join(lines) + "\n"
