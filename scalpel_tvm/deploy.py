"""`scalpel deploy`: an int16 network (the LeNet / ConvNet family) as a self-contained Cortex-M
firmware project.

The project directory holds the network as C (every layer's weights in flash, in the storage
format the Cortex-M planner chose for it: dense, pairs, pairs with 8-bit steps or CSR — the fewest
estimated cycles, or with `objective="size"` the fewest bytes), the int16 micro-kernels, the
start-up code and linker script, a runner that prints the outputs over semihosting, a
`CMakeLists.txt` for arm-none-eabi-gcc (with its toolchain file), and `report.json` /
`report.txt`: per layer its format, estimated cycles, Q formats and bytes, the dead nodes removed,
the layers whose outputs saturate on the calibration data, and flash and SRAM against the board. A model
that does not fit is refused with the numbers before anything is written. With `run=True` the
project is built and run under QEMU's mps2-an386 on the first calibration inputs and must equal
the numpy reference bit for bit; the report's flash is then the whole built image (weights,
code, tables, test inputs) and its SRAM adds the stack of one inference.

The network function is TVM's: `network_tir` writes the network as a TIR function that calls
the micro-kernels layer by layer (`src/network_tir.py`, its TVMScript), and TVM's C code generator
emits it (`src/network_tvm.c`) in tvm-ffi's packed convention. The project carries the five tvm-ffi / DLPack headers that C includes
(`include/`, copied from the installed TVM) and `tvm_ffi_stub.c` for the one runtime symbol it
calls, so it builds without TVM and runs without a TVM runtime (microTVM's C runtime was removed).

A core without the DSP extension (cortex-m3, cortex-m0) has no 2x16-bit SIMD, so groups fall back
to G = 1: its layers are dense or CSR, never pairs, and the report says so.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx

from . import cortex_m, network_tir
from .errors import ScalpelError
from .int16_net import quantize_net
from .m4_cost import CortexMCost, formats_for
from .onnx_import import load_onnx
from .target import TargetSpec

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["schedules/cortex_m/q15_fc.c", "schedules/cortex_m/q15_fc.h", "schedules/cortex_m/q15_conv.c",
           "schedules/cortex_m/q15_conv.h", "firmware/startup.c", "firmware/q15_network.c",
           "firmware/scalpel_layer.h", "firmware/mps2_an386.ld", "firmware/tvm_ffi_stub.c"]


def load_calibration(path: str | Path) -> np.ndarray:
    try:
        data = np.load(path)
    except (OSError, ValueError) as err:
        raise ScalpelError(f"cannot read calibration data {path}: {err}; give a .npy array of "
                           "inputs like those the device will see, shape (samples, ...)") from None
    return data


def deploy(model, target: str, out: str | Path, calibration: np.ndarray, *, inputs: int = 4,
           run: bool = False, overwrite: bool = False, objective: str = "latency", checks: bool = False) -> dict:
    """Write the firmware project for `model` to `out`; returns the report. Each layer's format
    has the fewest estimated cycles, or with `objective="size"` the fewest flash bytes; `checks`
    keeps TVM's argument checks in the network function (`network_tir.c_source`)."""
    spec = TargetSpec.preset(target)
    if spec.parallelism != "low" or spec.memory is None:
        raise ScalpelError(f"deploy builds Cortex-M firmware; {target} is not a Cortex-M board target "
                           "(cortex-m4, cortex-m7, cortex-m55, cortex-m3, cortex-m0)")
    mcpu = spec.target.attrs["mcpu"]
    model = model if isinstance(model, onnx.ModelProto) else load_onnx(model)
    calibration = np.asarray(calibration)
    net = quantize_net(model, calibration, mcpu=mcpu, objective=objective)
    use = cortex_m.check_fits(net, spec.memory)  # before anything is written
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ScalpelError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    (out / "src").mkdir(parents=True, exist_ok=True)
    for source in SOURCES:
        shutil.copy(ROOT / source, out / "src" / Path(source).name)
    shutil.copy(ROOT / "firmware" / "project_CMakeLists.txt", out / "CMakeLists.txt")
    toolchain = (ROOT / "cmake" / "arm-none-eabi.cmake").read_text().replace(
        "set(SCALPEL_MCPU cortex-m4", f"set(SCALPEL_MCPU {mcpu}")
    (out / "arm-none-eabi.cmake").write_text(toolchain)
    x_q = net.quantize_input(calibration[:inputs])
    (out / "src" / "network.h").write_text(cortex_m.network_header(net, x_q))
    network_c = network_tir.c_source(net, mcpu, checks)
    (out / "src" / "network_tvm.c").write_text(network_c)
    network_tir.copy_headers(network_c, out / "include")
    # what TVM compiled into network_tvm.c, as TVMScript: to read, or to take into a TVM flow
    (out / "src" / "network_tir.py").write_text(network_tir.network_primfunc(net).script())
    cost = CortexMCost.for_core(mcpu)
    report = {
        "target": target, "objective": objective, "argument_checks": checks,
        "board_memory": spec.memory, "flash_bytes": use["flash"],
        "sram_bytes": use["sram"], "input_frac_bits": net.input_bits,
        "formats": list(formats_for(mcpu)),
        "layers": [{"name": layer.name, "op": layer.op, "format": layer.format,
                    "estimated_cycles": round(cost.cycles(layer)),
                    "bytes": layer.flash_bytes(),
                    **({"shape_nk": list(layer.w_nk.shape), "shift": layer.shift,
                        "frac_bits": {"in": layer.in_bits, "w": layer.w_bits, "out": layer.out_bits}}
                       if hasattr(layer, "w_nk") else {})}
                   for layer in net.layers],
        "saturated_outputs_on_calibration": net.saturation,
        "dead_nodes_removed": net.shrunk,
        "not_counted": "code and stack (build with --run to count them)",
    }
    if len(formats_for(mcpu)) == 2:
        report["note"] = (f"{mcpu} has no 2x16-bit SIMD (no DSP extension): groups fall back to "
                          "G = 1, so layers are dense or CSR, never pairs")
    if run:
        cortex_m.cmake_build(out, out / "build", out / "arm-none-eabi.cmake")
        elf = out / "build" / "network.elf"
        got = cortex_m.network_outputs(cortex_m.run_qemu(elf))
        if not np.array_equal(got, net.forward(x_q)):
            raise ScalpelError("the firmware's outputs differ from the numpy reference")
        report["qemu_matches_reference"] = True
        built = cortex_m.firmware_memory(elf)
        report.update(code_bytes=built["code"], stack_bytes=built["stack"], weight_bytes=use["flash"],
                      flash_bytes=built["image"], sram_bytes=use["sram"] + built["stack"],
                      not_counted="the C library's semihosting buffers (the board's own I/O replaces them)")
        for kind in ("flash", "sram"):
            if report[f"{kind}_bytes"] > spec.memory[kind]:
                raise ScalpelError(f"with its code and stack the firmware needs {report[f'{kind}_bytes'] / 1024:.1f} KB "
                                   f"of {kind}, the board has {spec.memory[kind] / 1024:.0f} KB")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.txt").write_text(report_text(report))
    return report


def report_text(report: dict) -> str:
    board = report["board_memory"]
    lines = [f"{'layer':<10}{'op':<9}{'N x K':>12}{'format':>16}{'est. cycles':>13}{'bytes':>10}  Q in/w/out  shift"]
    for layer in report["layers"]:
        q = layer.get("frac_bits")
        shape = "x".join(map(str, layer.get("shape_nk", [])))
        quant = f"{q['in']}/{q['w']}/{q['out']:<8}{layer['shift']:>4}" if q else ""
        lines.append(f"{layer['name']:<10}{layer['op']:<9}{shape:>12}{layer['format']:>16}"
                     f"{layer['estimated_cycles']:>13}{layer['bytes']:>10}  {quant}")
    lines.append(f"formats chosen by {report.get('objective', 'latency')}; estimated cycles per inference (Cortex-M cost model, an estimate): "
                 f"{sum(layer['estimated_cycles'] for layer in report['layers'])}")
    lines.append(f"flash {report['flash_bytes'] / 1024:.1f} KB of {board['flash'] / 1024:.0f} KB, "
                 f"SRAM {report['sram_bytes'] / 1024:.1f} KB of {board['sram'] / 1024:.0f} KB"
                 + (f" (flash: the whole image, weights {report['weight_bytes'] / 1024:.1f} KB and code "
                    f"{report['code_bytes'] / 1024:.1f} KB in it; SRAM: stack {report['stack_bytes']} B included)"
                    if "code_bytes" in report else "") + f"; not counted: {report['not_counted']}")
    if report["dead_nodes_removed"]:
        lines.append("node-shrunk (dead neurons / filters removed with their inputs downstream): "
                     + ", ".join(f"{k} -{v}" for k, v in report["dead_nodes_removed"].items()))
    if report["saturated_outputs_on_calibration"]:
        lines.append("outputs at the int16 limit on the calibration data (saturated): "
                     + ", ".join(f"{k} {v}" for k, v in report["saturated_outputs_on_calibration"].items()))
    if report.get("note"):
        lines.append(report["note"])
    if report.get("qemu_matches_reference"):
        lines.append("run under QEMU mps2-an386: outputs equal the numpy reference")
    return "\n".join(lines) + "\n"
