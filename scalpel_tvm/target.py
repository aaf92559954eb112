"""Target specs: what a `tvm.target.Target` can skip, derived from the target's own attributes.

Scalpel's rule of thumb is that the pruned structure must match the hardware's parallelism:
low (microcontrollers: SIMD-aware weight groups), moderate (desktop CPUs: node pruning on CONV,
groups on FC), high (GPUs: node pruning only). The group width G of grouped-sparse kernels is the
number of vector lanes for the layer's dtype, so lanes are read from the target (mcpu, mattr, keys)
rather than assumed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import tvm
from tvm.target import codegen

from .errors import ScalpelError

_DTYPE_BITS = {"float32": 32, "float16": 16, "int32": 32, "int16": 16, "int8": 8}

# Presets: name -> (target dict, memory budget). The Cortex-M budgets are those of the boards the
# Scalpel paper and its follow-ups use (STM32F4: 128 KB SRAM / 512 KB flash; STM32F7 and an
# Arm Corstone-300 (M55) configuration for the others).
_PRESETS = {
    "x86-avx2": ({"kind": "llvm", "mcpu": "core-avx2"}, None),
    "x86-avx512": ({"kind": "llvm", "mcpu": "skylake-avx512"}, None),
    "cortex-m4": (
        {"kind": "llvm", "mtriple": "thumbv7em-none-eabihf", "mcpu": "cortex-m4",
         "mattr": ["+dsp"], "mfloat-abi": "hard"},
        {"sram": 128 * 1024, "flash": 512 * 1024},
    ),
    "cortex-m7": (
        {"kind": "llvm", "mtriple": "thumbv7em-none-eabihf", "mcpu": "cortex-m7",
         "mattr": ["+dsp"], "mfloat-abi": "hard"},
        {"sram": 320 * 1024, "flash": 1024 * 1024},
    ),
    "cortex-m55": (
        {"kind": "llvm", "mtriple": "thumbv8.1m.main-none-eabihf", "mcpu": "cortex-m55",
         "mfloat-abi": "hard"},
        {"sram": 512 * 1024, "flash": 2048 * 1024},
    ),
    # Cores without the DSP extension (no 2x16-bit SIMD: groups fall back to 1): an NXP LPC1768
    # (M3: 64 KB SRAM / 512 KB flash) and a Nordic nRF51822 (M0: 32 KB / 256 KB).
    "cortex-m3": (
        {"kind": "llvm", "mtriple": "thumbv7m-none-eabi", "mcpu": "cortex-m3"},
        {"sram": 64 * 1024, "flash": 512 * 1024},
    ),
    "cortex-m0": (
        {"kind": "llvm", "mtriple": "thumbv6m-none-eabi", "mcpu": "cortex-m0"},
        {"sram": 32 * 1024, "flash": 256 * 1024},
    ),
    "cuda": ({"kind": "cuda", "arch": "sm_80"}, None),
}


def preset_names() -> list[str]:
    """Names accepted by `TargetSpec.preset` (and the CLI's --target), plus 'host'."""
    return [*_PRESETS, "host"]


@dataclass(frozen=True)
class TargetSpec:
    """What scalpel-tvm needs to know about a target.

    `vector_bits` is the SIMD register width used for arithmetic of each dtype; `lanes(dtype)` is
    the group width G for that dtype. `memory` is the board budget in bytes ({"sram", "flash"}),
    None where no fixed budget applies.
    """

    name: str
    target: tvm.target.Target
    parallelism: str  # "low" | "moderate" | "high"
    vector_bits: dict = field(default_factory=dict)  # dtype -> bits per vector op
    memory: dict | None = None

    def lanes(self, dtype: str = "float32") -> int:
        if dtype not in _DTYPE_BITS:
            raise ScalpelError(f"dtype {dtype!r} has no lane count; known: {sorted(_DTYPE_BITS)}")
        if self.parallelism == "high":
            return 32  # a warp: groups of one warp keep value loads coalesced
        return max(1, self.vector_bits.get(dtype, 0) // _DTYPE_BITS[dtype])

    @classmethod
    def preset(cls, name: str) -> "TargetSpec":
        """A named target: x86-avx2, x86-avx512, cortex-m4, cortex-m7, cortex-m55, cortex-m3,
        cortex-m0, cuda, host."""
        if name == "host":
            return cls.host()
        if name not in _PRESETS:
            raise ScalpelError(f"unknown target preset {name!r}; known: {', '.join(preset_names())}")
        target_dict, memory = _PRESETS[name]
        return cls.from_target(tvm.target.Target(target_dict), name=name, memory=memory)

    @classmethod
    def host(cls) -> "TargetSpec":
        """The machine this runs on, with the CPU LLVM detects (e.g. znver3: AVX2, 8 fp32 lanes)."""
        target = tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()})
        return cls.from_target(target, name="host")

    @classmethod
    def from_target(cls, target, *, name: str | None = None, lanes: dict | None = None,
                    memory: dict | None = None) -> "TargetSpec":
        """Derive a spec from a `tvm.target.Target` (or its dict form).

        `lanes` overrides the lane count per dtype (e.g. {"float32": 4}); an unknown target kind
        or an llvm target with no CPU named is an error, never a guess.
        """
        if isinstance(target, dict) and target.get("kind") == "cuda" and "arch" not in target:
            _check_cuda_arch_known()
        if isinstance(target, (dict, str)):
            target = tvm.target.Target(target)
        kind = target.kind.name
        attrs = dict(target.attrs)
        if kind == "cuda" or "gpu" in target.keys:
            parallelism, bits = "high", {}
        elif kind in ("llvm", "c"):
            parallelism, bits = _cpu_class(target, attrs)
        else:
            raise ScalpelError(
                f"target kind {kind!r} is not supported; use an llvm (x86 or Cortex-M), c (Cortex-M) "
                f"or cuda target, or a preset: {', '.join(preset_names())}")
        if lanes:
            bits = {**bits, **{dt: n * _DTYPE_BITS[dt] for dt, n in lanes.items()}}
        return cls(name=name or str(attrs.get("mcpu", kind)), target=target,
                   parallelism=parallelism, vector_bits=bits, memory=memory)


def _check_cuda_arch_known() -> None:
    """A CUDA target with no arch takes the GPU's; with no GPU, TVM would silently assume
    sm_50, and the kernels would be built for the wrong chip."""
    if not tvm.cuda(0).exist:
        raise ScalpelError(
            "the CUDA target names no arch and this machine has no GPU to take it from; give "
            "one, e.g. {'kind': 'cuda', 'arch': 'sm_80'} (A100) or 'sm_90' (H100)")


def _cpu_class(target, attrs) -> tuple[str, dict]:
    """Parallelism class and vector widths of an llvm or c CPU target, from mcpu/mattr."""
    mcpu = str(attrs.get("mcpu", ""))
    if mcpu.startswith("cortex-m"):
        # Cortex-M: M4/M7/M33/M35P have the DSP extension (2x int16 / 4x int8 in 32 bits, SMLAD),
        # M55/M85 have MVE (128-bit vectors); M0/M0+/M3 have neither, so groups fall back to 1.
        mattr = [str(a) for a in attrs.get("mattr", [])]
        has_mve = mcpu in ("cortex-m55", "cortex-m85") and "-mve" not in mattr
        has_dsp = mcpu in ("cortex-m4", "cortex-m7", "cortex-m33", "cortex-m35p") or has_mve
        has_dsp = has_dsp and "-dsp" not in mattr
        if has_mve:
            return "low", {"int8": 128, "int16": 128, "int32": 128, "float32": 128, "float16": 128}
        if has_dsp:
            return "low", {"int8": 32, "int16": 32, "int32": 32, "float32": 32}
        return "low", {"int8": 8, "int16": 16, "int32": 32, "float32": 32}
    if not mcpu and not attrs.get("mattr"):
        raise ScalpelError(
            "llvm target names no CPU, so its vector width is unknown; give one "
            "({'kind': 'llvm', 'mcpu': 'core-avx2'}), or use the preset 'host' for this machine")
    if target.kind.name != "llvm":
        raise ScalpelError(f"c targets are supported for Cortex-M only, not mcpu={mcpu!r}")
    features = set(codegen.llvm_get_cpu_features(target))
    if "avx512f" in features:
        width = 512
    elif "avx2" in features or "avx" in features:
        width = 256
    elif "sse2" in features or "neon" in features:
        width = 128
    else:
        raise ScalpelError(f"cannot tell the vector width of mcpu={mcpu!r}; pass lanes={{...}}")
    return "moderate", {dt: width for dt in _DTYPE_BITS}
