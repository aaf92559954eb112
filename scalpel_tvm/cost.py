"""The cost interface the planner asks: how many seconds would this layer take in this form?

Two implementations live here: `AnalyticalCost`, a roofline-style model (call overhead plus
compute time plus weight-streaming time) whose rates are fitted to this machine's kernel
benchmark by `python/calibrate_cost.py`, and `MeasuredCost`, which compiles the candidate kernel
and times it on the spot. `tuned_cost.LogCost`, the planner's default where a tuning log exists,
answers the same `estimate(query, weights) -> Estimate` call from autotuning records.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm

from .errors import ScalpelError
from .target import TargetSpec

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
    source: str  # "analytical" | "measured" | "log" (a tuning record) | "model" (trained on them)


COST_FILE = Path(__file__).parent / "data" / "cost_x86-avx2.json"
L2_BYTES = 512 * 1024  # per core on this machine kind (AMD EPYC, Zen 3)


def rate_key(query: KernelQuery) -> str:
    """Kernels switch schedules between batch 1 (latency-bound gathers) and batched (register
    tiles over rows), so each form has one set of rates per regime."""
    return f"{query.form}@{'batch1' if query.batch == 1 else 'batched'}"


def predict_seconds(query: KernelQuery, rates: dict) -> float:
    """overhead + compute + weight streaming (from L2 while the weight fits).

    Additive rather than a max: these kernels overlap the two poorly (a sum fitted the benchmark
    with a third less error)."""
    bytes_per_s = rates["l2_bytes_per_s"] if query.weight_bytes <= L2_BYTES else rates["l3_bytes_per_s"]
    return rates["overhead"] + query.macs / rates["macs_per_s"] + query.weight_bytes / bytes_per_s


class AnalyticalCost:
    """Seconds from a roofline whose rates were fitted to this machine's kernel benchmark.

    `python/calibrate_cost.py` fits them (per form: call overhead, MAC rate, L2 and L3 weight
    bandwidth) to `python/bench_kernels.py`'s measurements and writes `data/cost_x86-avx2.json`.
    Wider vectors (AVX-512) scale the MAC rate, not the bandwidth.
    """

    def __init__(self, spec: TargetSpec):
        if spec.parallelism != "moderate":
            raise ScalpelError(
                f"no analytical cost model for {spec.name} ({spec.parallelism} parallelism) yet; "
                "x86 targets (x86-avx2, x86-avx512, host) are supported")
        calibration = json.loads(COST_FILE.read_text())
        width_scale = spec.lanes("float32") / 8
        self.rates = {key: {**rates, "macs_per_s": rates["macs_per_s"] * width_scale}
                      for key, rates in calibration["rates"].items()}

    def estimate(self, query: KernelQuery, weights: np.ndarray | None = None) -> Estimate:
        """`weights` is part of the cost interface (a measuring model needs them); unused here."""
        return Estimate(predict_seconds(query, self.rates[rate_key(query)]), "analytical")


class MeasuredCost:
    """Seconds measured by compiling the candidate FC kernel and timing it (median of rounds).

    Needs the layer's weights for the sparse forms (their pattern decides the work), so the planner
    hands them in with `weights=`; results are cached per query. Conv layers have one form on
    CPUs, so they are priced by `AnalyticalCost` (the estimate's source says so).
    """

    def __init__(self, spec: TargetSpec, rounds: int = 5):
        if spec.parallelism != "moderate":
            raise ScalpelError(f"measuring kernels for {spec.name} needs that device; "
                               "only x86 targets are measured on this machine")
        self.spec = spec
        self.rounds = rounds
        self.analytical = AnalyticalCost(spec)
        self._cache: dict = {}

    def estimate(self, query: KernelQuery, weights: np.ndarray | None = None) -> Estimate:
        if query.kind != "fc":
            return self.analytical.estimate(query)
        if weights is None:
            raise ScalpelError("MeasuredCost needs the layer's weights to time a kernel")
        key = (query, hash(weights.tobytes()))
        if key not in self._cache:
            self._cache[key] = Estimate(self._measure(query, weights), "measured")
        return self._cache[key]

    def _measure(self, query: KernelQuery, weights: np.ndarray) -> float:
        from .passes.lower_layers import fc_kernel  # late: building kernels pulls in the schedules
        from .timing import median_us, vm_timer

        prim, consts = fc_kernel(query.form, weights, query.batch, query.group, bias=False,
                                 activation=None, name="kernel")
        module = tvm.compile(tvm.IRModule({"kernel": prim}), target=self.spec.target).jit()
        x = np.random.default_rng(0).standard_normal((query.batch, query.k)).astype("float32")
        args = [tvm.runtime.tensor(a) for a in (x, *consts, np.zeros((query.batch, query.n), "float32"))]
        timer = vm_timer(module, *args, func="kernel")
        return median_us({"kernel": timer}, budget_s=0.02 * self.rounds, rounds=self.rounds)["kernel"] * 1e-6
