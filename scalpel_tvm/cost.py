"""The cost interface the planner asks: how many seconds would this layer take in this form?

Two implementations live here: `AnalyticalCost`, a roofline-style model (fixed call overhead, then
the larger of compute time and weight-streaming time) whose rates were measured on this machine
kind by `python/bench_kernels.py`, and `MeasuredCost`, which compiles the candidate kernel and
times it on the spot. The autotuning-log models of a later issue plug in behind the same
`estimate(query) -> Estimate` call.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import tvm

from .errors import ScalpelError
from .target import TargetSpec

FORMS = ("dense", "gsparse_gx1", "gsparse_1xg", "csr")


@dataclass(frozen=True)
class KernelQuery:
    """One candidate: a layer's (possibly shrunk) shape in one form.

    FC: k inputs, n outputs, `groups` non-zero groups of `group` weights (sparse forms).
    Conv: n = output channels, k = in_channels * kh * kw, `pixels` output pixels per item.
    """

    kind: str  # "fc" | "conv"
    form: str
    batch: int
    k: int
    n: int
    pixels: int = 1
    group: int = 1
    groups: int = 0  # non-zero groups (sparse forms)

    @property
    def macs(self) -> int:
        if self.form == "dense":
            return self.batch * self.pixels * self.k * self.n
        return self.batch * self.groups * self.group

    @property
    def weight_bytes(self) -> int:
        if self.form == "dense":
            return 4 * self.k * self.n
        blocks = -(-self.n // self.group) if self.form == "gsparse_gx1" else self.n
        return self.groups * (4 * self.group + 4) + 4 * (blocks + 1)


@dataclass(frozen=True)
class Estimate:
    seconds: float
    source: str  # "analytical" | "measured" (later: "log", "model")


@dataclass(frozen=True)
class _Rates:
    overhead: float  # seconds per kernel call
    macs_per_s: float  # sustained multiply-accumulates per second, one core
    bytes_per_s: float  # weight streaming bandwidth (L2/L3 resident between calls)


# One core of this machine kind (AMD EPYC, AVX2+FMA), fitted by eye to bench_kernels' medians;
# the sparse forms pay for the index gather (gx1: one broadcast load per group; 1xg: a horizontal
# reduction per output), which shows up as a lower sustained MAC rate.
_X86_AVX2_RATES = {
    "dense": _Rates(0.6e-6, 20e9, 60e9),
    "gsparse_gx1": _Rates(0.6e-6, 12e9, 50e9),
    "gsparse_1xg": _Rates(0.8e-6, 6e9, 40e9),
    "csr": _Rates(0.8e-6, 1.2e9, 30e9),
}


class AnalyticalCost:
    """Seconds from a roofline with measured rates: overhead + max(MACs / rate, bytes / bandwidth)."""

    def __init__(self, spec: TargetSpec):
        if spec.parallelism != "moderate":
            raise ScalpelError(
                f"no analytical cost model for {spec.name} ({spec.parallelism} parallelism) yet; "
                "x86 targets (x86-avx2, x86-avx512, host) are supported")
        # Wider vectors scale the compute rate, not the memory rate.
        self.width_scale = spec.lanes("float32") / 8
        self.rates = _X86_AVX2_RATES

    def estimate(self, query: KernelQuery) -> Estimate:
        rates = self.rates[query.form]
        compute = query.macs / (rates.macs_per_s * self.width_scale)
        memory = query.weight_bytes / rates.bytes_per_s
        return Estimate(rates.overhead + max(compute, memory), "analytical")


class MeasuredCost:
    """Seconds measured by compiling the candidate kernel and timing it (median of repeats).

    Needs the layer's weights for the sparse forms (their pattern decides the work), so the planner
    hands them in with `weights=`; results are cached per query.
    """

    def __init__(self, spec: TargetSpec, repeat: int = 5):
        if spec.parallelism != "moderate":
            raise ScalpelError(f"measuring kernels for {spec.name} needs that device; "
                               "only x86 targets are measured on this machine")
        self.spec = spec
        self.repeat = repeat
        self._cache: dict = {}

    def estimate(self, query: KernelQuery, weights: np.ndarray | None = None) -> Estimate:
        key = (query, None if weights is None else hash(weights.tobytes()))
        if key not in self._cache:
            self._cache[key] = Estimate(self._measure(query, weights), "measured")
        return self._cache[key]

    def _measure(self, query: KernelQuery, weights) -> float:
        from .passes.lower_layers import fc_kernel  # late: building kernels pulls in the schedules

        if query.kind != "fc":
            raise ScalpelError("on-the-spot measurement covers FC layers; conv uses AnalyticalCost")
        if weights is None:
            raise ScalpelError("MeasuredCost needs the layer's weights to time a kernel")
        prim, consts = fc_kernel(query.form, weights, query.batch, query.group, bias=False,
                                 activation=None, name="kernel")
        ex = tvm.compile(tvm.IRModule({"kernel": prim}), target=self.spec.target)
        dev = tvm.cpu()
        rng = np.random.default_rng(0)
        args = [rng.standard_normal((query.batch, query.k)).astype("float32"), *consts,
                np.zeros((query.batch, query.n), "float32")]
        args = [tvm.runtime.tensor(a, dev) for a in args]
        ex["kernel"](*args)
        start = time.perf_counter()
        ex["kernel"](*args)
        number = max(1, int(1e-3 / max(time.perf_counter() - start, 1e-7)))  # ~1 ms per repeat
        timer = ex.mod.time_evaluator("kernel", dev, number=number, repeat=self.repeat)
        return float(np.median(timer(*args).results))
