"""The int16 network as a TVM TIR function: one PrimFunc, `scalpel_network`, whose body calls the
Cortex-M micro-kernels (schedules/cortex_m) with `call_extern`, one call per layer, and TVM's C
code generator turns it into the firmware's network function (`network_tvm.c`).

Why `call_extern`: the kernels' inner loops are the dual 16-bit MAC (SMLAD) over pairs that one
index serves, with saturation as the numpy reference does it bit for bit; TVM's codegen does not
emit SMLAD from TIR, so the kernels stay hand-written C and TIR owns the rest: the layer order,
where each activation lives in the shared arena, the conv windows, and the weights as parameters.

Why the C target rather than the thumbv7em LLVM object: it gives source that any arm-none-eabi-gcc
builds for any Cortex-M, and `scalpel deploy`'s project stays buildable without TVM. TVM 0.27 emits
the function in tvm-ffi's packed convention (arguments as `TVMFFIAny`, tensors as `DLTensor`),
which needs five headers of tvm-ffi and DLPack (`copy_headers`); with TVM's argument checks kept
(`c_source(checks=True)`) also one runtime symbol, `TVMFFIErrorSetRaisedFromCStrParts`, which
`firmware/tvm_ffi_stub.c` provides (it prints the message). No TVM runtime runs on the board.

The function's parameters, in order: `arena` (the activations, the input at its start), `col`
(im2col scratch), then each weighted layer's arrays in `layer_arrays` order. Layer l writes at the
arena's end when l is even and at its start when odd, so a layer's input and output never overlap
and the arena needs only the largest input + output of a layer (`QuantizedNet.arena_values`); the
outputs are where the last layer wrote them (`output_offset`).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tvm
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from .cortex_m import ARRAY_NAMES, index16

FUNCTION = "scalpel_network"
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.MULTILINE)
# The kernel each (op, format) calls, and the weight arrays it takes before the bias.
KERNELS = {("fc", "dense"): ("scalpel_fc_q15_dense", ["values"]),
           ("fc", "gsparse2"): ("scalpel_fc_q15_gsparse2", ["indptr", "indices", "values"]),
           ("fc", "gsparse2_delta"): ("scalpel_fc_q15_gsparse2_delta", ["indptr", "steps", "values"]),
           ("fc", "csr"): ("scalpel_fc_q15_csr", ["indptr", "indices", "values"]),
           ("conv", "dense"): ("scalpel_conv_q15_dense", ["values"]),
           ("conv", "gsparse2"): ("scalpel_conv_q15_gsparse2", ["indptr", "indices", "values"]),
           ("conv", "gsparse2_delta"): ("scalpel_conv_q15_gsparse2_delta", ["indptr", "steps", "values"]),
           ("conv", "csr"): ("scalpel_conv_q15_csr", ["indptr", "indices", "values"])}


def layer_arrays(net) -> list[tuple[str, np.ndarray]]:
    """The weight parameters after arena and col: (name, flat array) per array of each
    weighted layer, its format's arrays then the bias, named as `cortex_m.network_header` names
    the C arrays that hold them in flash. An empty array (a layer with no pairs left) is given one
    zero, as C has no empty arrays; the kernel reads none of it."""
    params = []
    for index, layer in enumerate(net.layers):
        if layer.op not in ("fc", "conv"):
            continue
        arrays = dict(layer.arrays(), bias=layer.bias)
        _, names = KERNELS[(layer.op, layer.format)]
        for name in names + ["bias"]:
            flat = np.ravel(index16(arrays[name]) if name == "indices" else arrays[name])
            params.append((f"{ARRAY_NAMES[name]}{index}", flat if flat.size else np.zeros(1, flat.dtype)))
    return params


def output_offset(net) -> int:
    """Where in the arena the last layer writes the network's outputs."""
    return output_offsets(net)[-1]


def output_offsets(net) -> list[int]:
    """Where in the arena each layer writes: at the end for even layers, at the start for odd."""
    arena = net.arena_values()
    return [arena - layer.out_size if index % 2 == 0 else 0 for index, layer in enumerate(net.layers)]


def network_primfunc(net) -> tvm.tirx.PrimFunc:
    """`scalpel_network(arena, col, *weights)`: every layer of `net` in order, each a call to its
    kernel on the arena, which holds the input at its start (module docstring)."""
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name(FUNCTION)
            T.func_attr({"global_symbol": FUNCTION, "tir.noalias": True})
            arena = T.arg("arena", T.buffer((net.arena_values(),), "int16"))
            col = T.arg("col", T.buffer((net.column_values(),), "int16"))
            weights = {name: T.arg(name, T.buffer(array.shape, str(array.dtype)))
                       for name, array in layer_arrays(net)}
            window = IRBuilder.name("window", T.alloc_buffer((11,), "int32"))  # struct scalpel_window
            source = 0
            for index, (layer, target) in enumerate(zip(net.layers, output_offsets(net))):
                if layer.window is not None:
                    for field, value in enumerate(layer.window.fields()):
                        T.buffer_store(window, T.int32(int(value)), [field])
                x, y = (tvm.tirx.address_of(arena[offset]) for offset in (source, target))
                T.evaluate(_kernel_call(layer, index, x, y, window.data, col.data, weights))
                source = target
    return builder.get()


def _kernel_call(layer, index, x, y, window, col, weights):
    if layer.op not in ("fc", "conv"):  # pooling
        if layer.op == "maxpool":
            return tvm.tirx.call_extern("void", "scalpel_maxpool_q15", x, window, y)
        return tvm.tirx.call_extern("void", "scalpel_avgpool_q15", x, window, int(layer.count_include_pad), y)
    kernel, names = KERNELS[(layer.op, layer.format)]
    arrays = [weights[f"{ARRAY_NAMES[name]}{index}"].data for name in names + ["bias"]]
    n, shift, relu = layer.w_nk.shape[0], int(layer.shift), int(layer.relu)
    if layer.op == "conv":
        return tvm.tirx.call_extern("void", kernel, x, window, *arrays, col, y, n, shift, relu)
    return tvm.tirx.call_extern("void", kernel, x, *arrays, y, 1, layer.w_nk.shape[1], n, shift, relu)


def c_source(net, mcpu: str = "cortex-m4", checks: bool = False) -> str:
    """TVM's C for `network_primfunc(net)`: `__tvm_ffi_scalpel_network`, the packed function the
    firmware calls.

    `checks` keeps the checks TVM puts on every argument (type, dtype, shape, device, not null),
    each with its message. They cost some 12 KB of flash for LeNet-300-100's 14 tensors (the
    function is 0.4 KB without them) and 0.6% of its cycles, and they can only fail if the header
    and this source come from different networks, which the build never does; so they are off,
    as they were in microTVM's AOT executor, and on for debugging a hand-edited project."""
    module = tvm.IRModule({FUNCTION: network_primfunc(net)})
    with tvm.transform.PassContext(config={"tirx.disable_assert": not checks}):
        return tvm.compile(module, tvm.target.Target({"kind": "c", "mcpu": mcpu})).mod.inspect_source()


def include_dirs() -> list[Path]:
    """Where the installed TVM keeps the headers `c_source`'s output includes."""
    import tvm_ffi.libinfo

    return [Path(tvm_ffi.libinfo.find_include_path()), Path(tvm.__file__).parent / "include"]


def copy_headers(source: str, out: Path) -> list[str]:
    """Copy the headers TVM's C `source` includes, and those they include in turn, from the
    installed TVM into `out` (a deployed project's include/); the system headers among them
    (<stdint.h>, ...) are the toolchain's. Returns the headers copied."""
    roots, copied = include_dirs(), []
    pending = INCLUDE.findall(source)
    while pending:
        name = pending.pop()
        found = [root / name for root in roots if (root / name).is_file()]
        if name in copied or not found:
            continue
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(found[0].read_bytes())
        copied.append(name)
        pending += INCLUDE.findall(found[0].read_text())
    return sorted(copied)
