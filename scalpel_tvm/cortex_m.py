"""Running the int16 micro-kernels on an emulated Cortex-M4 (QEMU's mps2-an386).

`run_selftest(layers)` writes the layers (inputs, weights in their format, bias, shift) into a C
header, builds `firmware/q15_selftest.c` with `CMakeLists.txt` and Debian's arm-none-eabi
toolchain, runs it under `qemu-system-arm -M mps2-an386` with semihosting, and returns what the
firmware computed; `run_network(net, x)` does the same for a whole int16 network
(`int16_net.QuantizedNet`, `firmware/q15_network.c`) after checking that it fits the board.
The tests compare both with the numpy reference bit for bit. QEMU is not cycle-accurate: this
checks results, not speed.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ScalpelError
from .fixed_point import Window

ROOT = Path(__file__).resolve().parents[1]
APT_LINE = "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm cmake"
# firmware/scalpel_layer.h: SCALPEL_DENSE, SCALPEL_PAIRS, SCALPEL_CSR, SCALPEL_PAIRS_DELTA
KINDS = {"dense": 0, "gsparse2": 1, "csr": 2, "gsparse2_delta": 3, "-": 0}
OPS = {"fc": 0, "conv": 1, "maxpool": 2, "avgpool": 3}  # SCALPEL_FC, SCALPEL_CONV, ...
# The C array of layer i's weights of each kind is ARRAY_NAMES[kind] + str(i) (layers_header).
ARRAY_NAMES = {"indptr": "p", "indices": "j", "steps": "s", "values": "v", "bias": "b"}


@dataclass
class Q15Layer:
    """One layer for the firmware. FC (window None): `kind` dense (values = W as [N, K]),
    gsparse2 or csr (indptr, indices, values as the kernels take them), gsparse2_delta (indptr,
    steps, values). Conv: the same over the window's im2col columns. Max/avg pooling (`op`):
    only the window. x is (batch, input size) int16: the self-test's inputs."""

    kind: str
    x: np.ndarray
    n: int
    values: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int16))
    indptr: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int32))
    indices: np.ndarray = field(default_factory=lambda: np.zeros(1, np.uint16))
    bias: np.ndarray | None = None
    shift: int = 0
    relu: bool = False  # avgpool: count_include_pad
    op: str = "fc"
    window: Window | None = None
    steps: np.ndarray = field(default_factory=lambda: np.zeros(1, np.uint8))

    @property
    def k(self) -> int:
        return self.window.column if self.op == "conv" else self.x.shape[1]

    @property
    def in_size(self) -> int:
        return self.x.shape[1]

    @property
    def out_size(self) -> int:
        return self.n if self.window is None else self.n * self.window.oh * self.window.ow


def check_toolchain() -> None:
    missing = [tool for tool in ("arm-none-eabi-gcc", "qemu-system-arm", "cmake") if not shutil.which(tool)]
    if missing:
        raise ScalpelError(f"{', '.join(missing)} not found; the Cortex-M build and its emulation "
                           f"need them: {APT_LINE}")


def _array(name: str, ctype: str, values) -> str:
    flat = np.asarray(values).ravel()
    body = ", ".join(str(int(v)) for v in flat) if flat.size else "0"
    # word-aligned: the kernels read int16 pairs (inputs, weights) as one 32-bit word
    return f"static const {ctype} {name}[] __attribute__((aligned(4))) = {{{body}}};\n"


def index16(indices: np.ndarray) -> np.ndarray:
    """Input indices as the kernels store them: 16 bits (an FC layer on a microcontroller has
    fewer than 65536 inputs; a larger one is refused, not truncated)."""
    indices = np.asarray(indices)
    if indices.size and (indices.min() < 0 or indices.max() > 0xFFFF):
        raise ScalpelError(f"input index {int(indices.max())} does not fit the kernels' 16-bit indices")
    return indices.astype(np.uint16)


def pairs(indptr, indices, values, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups of 2 inputs as `scalpel_fc_q15_gsparse2` takes them: a group that starts at the last
    input (k odd, or an unaligned group) is stored one input earlier as (0, w), so the kernel
    never reads past its input and needs no special last step; same products, same order.
    Returns (indptr, 16-bit indices, values (groups, 2))."""
    indices, values = np.array(indices, np.int64), np.array(values, np.int16).reshape(-1, 2)
    last = indices == k - 1
    if np.any(last):
        if k < 2:
            raise ScalpelError("a layer with a single input cannot be stored as pairs; keep it dense")
        if np.any(values[last, 1]):
            raise ScalpelError(f"a group starting at the last input ({k - 1}) has a second weight")
        indices[last] -= 1
        values[last] = np.stack([np.zeros(int(last.sum()), np.int16), values[last, 0]], axis=1)
    return np.asarray(indptr, np.int32), index16(indices), values


def pair_gaps(indptr, starts) -> tuple[np.ndarray, np.ndarray]:
    """(each pair's step from the previous pair of its output — the first's from input 0 —, the
    zero pairs 255 inputs apart that bridge a step over 255): what the 8-bit steps format
    stores, without building it (`m4_cost.pair_layout` counts it for the cost model)."""
    indptr, starts = np.asarray(indptr, np.int64), np.asarray(starts, np.int64)
    gaps = np.diff(np.concatenate([[0], starts]))
    firsts = indptr[:-1][np.diff(indptr) > 0]
    gaps[firsts] = starts[firsts]
    return gaps, np.maximum(gaps - 1, 0) // 255


def pair_steps(indptr, indices, values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs of `pairs` with 8-bit steps in place of 16-bit indices, as
    `scalpel_fc_q15_gsparse2_delta` takes them: each pair's start minus the previous pair's of the
    same output (the first: minus 0). A gap over 255 inputs gets zero pairs 255 inputs apart
    (adding 0 leaves the saturating sum unchanged; their inputs exist, as the next pair's do).
    Returns (indptr, steps, values (pairs, 2))."""
    indptr = np.asarray(indptr, np.int64)
    values = np.asarray(values, np.int16).reshape(-1, 2)
    gaps, bridges = pair_gaps(indptr, indices)
    if np.any(gaps < 0):
        j = int(np.argmax(gaps < 0))
        o = int(np.searchsorted(indptr, j, side="right")) - 1
        raise ScalpelError(f"pair starts of output {o} are not in order ({indices[j - 1]} then {indices[j]})")
    ends = np.cumsum(bridges + 1)  # each pair after its bridges
    own = ends - 1
    steps = np.full(int(ends[-1]) if len(ends) else 0, 255, np.uint8)
    steps[own] = gaps - 255 * bridges
    out = np.zeros((len(steps), 2), np.int16)
    out[own] = values
    new_indptr = np.concatenate([[0], ends])[indptr]
    return new_indptr.astype(np.int32), steps, out


def steps_to_starts(indptr, steps) -> np.ndarray:
    """The inputs each pair of `pair_steps` starts at: per output, the running sum of its steps."""
    steps = np.asarray(steps, np.int64)
    starts = np.cumsum(steps)
    row_base = np.repeat(np.concatenate([[0], starts])[np.asarray(indptr[:-1], np.int64)], np.diff(indptr))
    return starts - row_base


def layers_header(layers: list[Q15Layer]) -> str:
    """The C header the firmware includes: `scalpel_layers`, each layer's input and output sizes,
    and the largest output and im2col column (the self-test's buffers)."""
    text = ['#include "scalpel_layer.h"\n']
    entries = []
    for i, layer in enumerate(layers):
        text += [_array(f"x{i}", "int16_t", layer.x), _array(f"p{i}", "int32_t", layer.indptr),
                 _array(f"j{i}", "uint16_t", index16(layer.indices)), _array(f"s{i}", "uint8_t", layer.steps),
                 _array(f"v{i}", "int16_t", layer.values)]  # the letters of ARRAY_NAMES
        if layer.bias is not None:
            text.append(_array(f"b{i}", "int32_t", layer.bias))
        window = "{" + ", ".join(map(str, layer.window.fields() if layer.window else [0] * 11)) + "}"
        entries.append(f"{{{OPS[layer.op]}, {KINDS[layer.kind]}, {layer.x.shape[0]}, {layer.k}, {layer.n}, "
                       f"{layer.shift}, {int(layer.relu)}, {window}, x{i}, p{i}, j{i}, s{i}, v{i}, "
                       f"{f'b{i}' if layer.bias is not None else '0'}}}")
    columns = [layer.window.column for layer in layers if layer.op == "conv"]
    text.append(f"#define SCALPEL_NUM_LAYERS {len(layers)}\n")
    text.append(f"#define SCALPEL_MAX_OUT {max(layer.out_size for layer in layers)}\n")
    text.append(f"#define SCALPEL_MAX_COL {max(columns + [1])}\n")
    text.append(_array("scalpel_in_size", "int32_t", [layer.in_size for layer in layers]))
    text.append(_array("scalpel_out_size", "int32_t", [layer.out_size for layer in layers]))
    text.append("static const struct scalpel_layer scalpel_layers[] = {\n  " + ",\n  ".join(entries) + "\n};\n")
    return "".join(text)


def cmake_build(source_dir: Path, build_dir: Path, toolchain: Path, defines: dict | None = None,
                target: str | None = None) -> None:
    """Configure and build a CMake project for the board; a clear error with the log's tail."""
    check_toolchain()
    configure = ["cmake", "-S", str(source_dir), "-B", str(build_dir), f"-DCMAKE_TOOLCHAIN_FILE={toolchain}",
                 *[f"-D{key}={value}" for key, value in (defines or {}).items()]]
    build = ["cmake", "--build", str(build_dir), *(["--target", target] if target else [])]
    for command in (configure, build):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise ScalpelError(f"building the Cortex-M firmware in {source_dir} failed "
                               f"({' '.join(command[:2])}):\n{(result.stdout + result.stderr)[-3000:]}")


def build_firmware(program: str, header: str, build_dir: Path, mcpu: str = "cortex-m4",
                   defines: dict | None = None) -> Path:
    """Build `firmware/<program>.c` around `header` with this repository's CMakeLists.txt."""
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    header_path = build_dir / "layers.h"
    header_path.write_text(header)
    cmake_build(ROOT, build_dir, ROOT / "cmake" / "arm-none-eabi.cmake",
                {"SCALPEL_MCPU": mcpu, "SCALPEL_LAYERS": header_path, **(defines or {})}, program)
    return build_dir / f"{program}.elf"


def build_selftest(layers: list[Q15Layer], build_dir: Path, mcpu: str = "cortex-m4") -> Path:
    return build_firmware("q15_selftest", layers_header(layers), build_dir, mcpu)


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
    """Each layer's outputs, (batch, output size) int16, as the emulated Cortex-M computed them."""
    output = run_qemu(build_selftest(layers, build_dir, mcpu))
    results = [np.zeros((layer.x.shape[0], layer.out_size), np.int16) for layer in layers]
    for line in output.splitlines():
        if line.startswith("y "):
            _, index, row, *values = line.split()
            results[int(index)][int(row)] = np.array(values, dtype=np.int16)
    return results


def check_fits(net, memory: dict) -> dict:
    """Flash (weights, biases, indices) and SRAM (the activation arena and im2col column) of
    `net` against the board's budget ({"flash": bytes, "sram": bytes}); a clear error, with the
    numbers, before any build when it does not fit. Code and stack need the built firmware
    (`firmware_memory`)."""
    use = {"flash": net.flash_bytes(), "sram": net.activation_bytes()}
    for kind, used in use.items():
        if used > memory[kind]:
            per_layer = ", ".join(f"{layer.name} {layer.format} {layer.flash_bytes() / 1024:.1f} KB"
                                  for layer in net.layers if layer.flash_bytes())
            raise ScalpelError(
                f"the network needs {used / 1024:.1f} KB of {kind}, the board has "
                f"{memory[kind] / 1024:.0f} KB ({per_layer}); prune further, store more layers "
                "as pairs / CSR, or choose formats by size (`scalpel deploy --objective size`)")
    return use


def network_header(net, x_q: np.ndarray) -> str:
    """The C header `firmware/q15_network.c` includes: every layer in its format, the inputs, the
    activation arena (`QuantizedNet.arena_values`), and the arguments of TVM's network function
    (`network_tir`)."""
    layers = []
    for layer in net.layers:
        x = np.zeros((0, layer.in_size), np.int16)
        if layer.op in ("maxpool", "avgpool"):
            layers.append(Q15Layer("-", x, layer.window.c, relu=layer.count_include_pad, op=layer.op,
                                   window=layer.window))
            continue
        arrays = layer.arrays()
        layers.append(Q15Layer(layer.format, x, layer.w_nk.shape[0], arrays["values"],
                               arrays.get("indptr", np.zeros(1, np.int32)),
                               arrays.get("indices", np.zeros(1, np.uint16)), layer.bias, layer.shift,
                               layer.relu, layer.op, layer.window, arrays.get("steps", np.zeros(1, np.uint8))))
    return (layers_header(layers) + _array("scalpel_inputs", "int16_t", x_q)
            + f"#define SCALPEL_BATCH {x_q.shape[0]}\n#define SCALPEL_INPUT_SIZE {net.input_size}\n"
            f"#define SCALPEL_ARENA {net.arena_values()}\n" + _network_arguments(net))


def _network_arguments(net) -> str:
    """The packed call of TVM's `scalpel_network`: one DLTensor per parameter, the weights'
    pointing at the arrays above (flash, not copied), and the `TVMFFIAny` arguments, all const
    (in flash too)."""
    from .network_tir import layer_arrays, output_offset  # imports TVM's compiler

    params = [("scalpel_arena", np.dtype(np.int16), net.arena_values()),
              ("scalpel_col", np.dtype(np.int16), net.column_values())]
    params += [(name, array.dtype, array.size) for name, array in layer_arrays(net)]

    def tensor(i, name, dtype):
        code = "kDLUInt" if dtype.kind == "u" else "kDLInt"
        return (f"{{.data = (void *){name}, .device = {{kDLCPU, 0}}, .ndim = 1, .dtype = {{{code}, "
                f"{8 * dtype.itemsize}, 1}}, .shape = (int64_t *)&scalpel_shapes[{i}]}}")

    arguments = [f"{{.type_index = kTVMFFIDLTensorPtr, .v_ptr = (void *)&scalpel_tensors[{i}]}}"
                 for i in range(len(params))]
    return ('#include "tvm/ffi/c_api.h"\n'
            + "".join(f"static int16_t {name}[{size}] __attribute__((aligned(4)));\n"  # as _array's
                      for name, _, size in params[:2])
            + _array("scalpel_shapes", "int64_t", [size for _, _, size in params])
            + "static const DLTensor scalpel_tensors[] = {\n  "
            + ",\n  ".join(tensor(i, name, dtype) for i, (name, dtype, _) in enumerate(params))
            + "\n};\nstatic const TVMFFIAny scalpel_args[] = {\n  " + ",\n  ".join(arguments) + "\n};\n"
            + f"#define SCALPEL_NUM_ARGS {len(params)}\n#define SCALPEL_OUTPUT_OFFSET {output_offset(net)}\n")


def build_network(net, x_q: np.ndarray, build_dir: Path, mcpu: str = "cortex-m4", checks: bool = False) -> Path:
    """The `firmware/q15_network.c` firmware for `net` on inputs `x_q`: its header
    (`network_header`) and TVM's C for the network function (`network_tir.c_source`, with TVM's
    argument checks if `checks`)."""
    from . import network_tir  # imports TVM's compiler

    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / "network_tvm.c").write_text(network_tir.c_source(net, mcpu, checks))
    include = ";".join(map(str, network_tir.include_dirs()))
    return build_firmware("q15_network", network_header(net, x_q), build_dir, mcpu,
                          {"SCALPEL_NETWORK_C": build_dir / "network_tvm.c", "SCALPEL_TVM_INCLUDE": include})


def run_network(net, x_q: np.ndarray, build_dir: Path, memory: dict, mcpu: str = "cortex-m4",
                checks: bool = False) -> np.ndarray:
    """The int16 network's outputs (batch, N) for inputs `x_q`, computed on the emulated M4."""
    check_fits(net, memory)
    return network_outputs(run_qemu(build_network(net, x_q, build_dir, mcpu, checks)))


def code_bytes(elf: Path) -> int:
    """Bytes of the firmware's functions: its code, without the weights it holds in flash."""
    check_toolchain()
    listing = subprocess.run(["arm-none-eabi-readelf", "-sW", str(elf)], capture_output=True, text=True, check=True)
    return sum(int(parts[2], 0) for parts in map(str.split, listing.stdout.splitlines())
               if len(parts) >= 8 and parts[3] == "FUNC")


def image_bytes(elf: Path) -> int:
    """Bytes the firmware puts in flash: code, constants (the weights among them) and the initial
    values of its data."""
    check_toolchain()
    sizes = subprocess.run(["arm-none-eabi-size", str(elf)], capture_output=True, text=True, check=True)
    text, data = map(int, sizes.stdout.splitlines()[1].split()[:2])
    return text + data


def firmware_memory(elf: Path) -> dict:
    """Code bytes, the whole flash image and the stack of one `scalpel_infer` (emulated), from the
    built firmware."""
    from .cycles import count_cycles

    return {"code": code_bytes(elf), "image": image_bytes(elf), "stack": count_cycles(elf).stack_bytes}


def network_outputs(output: str) -> np.ndarray:
    """The (inputs, N) int16 outputs `firmware/q15_network.c` printed ("y <row> v0 v1 ...")."""
    return np.array([line.split()[2:] for line in output.splitlines() if line.startswith("y ")], dtype=np.int16)
