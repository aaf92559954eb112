"""Seconds of a layer's candidate forms on a CUDA GPU, for the planner.

A roofline with a critical path, one set of rates per form (dense / node-shrunk, warp-grouped
sparse, CSR; conv is priced as dense, both being dlight's GEMM) and batch regime:

    t = overhead + max(block MACs / block rate, MACs / GPU rate) + weight bytes / bandwidth

The middle term is what a GPU adds to the CPU model (`cost.AnalyticalCost`): a kernel takes at
least as long as one thread block's serial work, so a skinny layer that launches fewer blocks
than the GPU has multiprocessors runs at the block rate, not the GPU's. Block MACs follow each
kernel's tile: the batched dense FC kernel's block is 128 outputs x 4 rows over all of K, dlight's
conv GEMM tile 32 rows x 64 outputs; the warp-grouped kernel's block is 32 outputs x up to 8
batch rows over one block's groups; CSR's is 4 outputs x up to 8 rows over a row's weights. The rates are fitted by least squares on log time to a kernel sweep
measured on the GPU (`python/bench_gpu.py sweep`, then `calibrate`, which writes
`data/cost_cuda.json` naming the GPU).
"""
from __future__ import annotations

import json
from pathlib import Path

from .cost import Estimate, KernelQuery, rate_key
from .errors import ScalpelError

COST_FILE = Path(__file__).parent / "data" / "cost_cuda.json"
RATE_NAMES = ("overhead", "block_macs_per_s", "macs_per_s", "bytes_per_s")
WARP = 32


def block_macs(query: KernelQuery) -> float:
    """MACs of one thread block of the kernel that runs `query` (its critical path)."""
    rows = min(query.batch, 8)
    if query.kind == "conv":
        return 32 * 64 * query.k
    if query.form == "dense":
        return 128 * min(query.batch, 4) * query.k if query.batch > 1 else 4 * query.k
    if query.form == "gsparse_gx1":
        return query.groups / -(-query.n // WARP) * WARP * rows
    if query.form == "csr":
        return query.groups / query.n * 4 * rows
    raise ScalpelError(f"no GPU kernel for the form {query.form!r}")


def gpu_seconds(query: KernelQuery, rates: dict) -> float:
    compute = max(block_macs(query) / rates["block_macs_per_s"], query.macs / rates["macs_per_s"])
    return rates["overhead"] + compute + query.weight_bytes / rates["bytes_per_s"]


def regime_key(query: KernelQuery) -> str:
    regime = rate_key(query).split("@")[1]
    return f"conv@{regime}" if query.kind == "conv" else rate_key(query)


class GpuCost:
    """The planner's cost model for CUDA targets (see the module docstring)."""

    def __init__(self, spec, calibration: dict | None = None):
        if spec.parallelism != "high":
            raise ScalpelError(f"GpuCost prices CUDA targets, not {spec.name}")
        calibration = calibration or json.loads(COST_FILE.read_text())
        self.gpu = calibration.get("gpu", "unknown GPU")
        self.rates = calibration["rates"]

    def estimate(self, query: KernelQuery, weights=None) -> Estimate:
        key = regime_key(query)
        if key not in self.rates:
            raise ScalpelError(f"no GPU rates for {key}; re-run python/bench_gpu.py calibrate")
        return Estimate(gpu_seconds(query, self.rates[key]), "analytical")
