"""`LogCost`: the planner's seconds from autotuning logs — a log record when the kernel was tuned,
otherwise a model trained on the log's records.

meta_schedule's own `XGBModel` scores candidates *within* one workload (best cost ÷ cost), which
is what its search needs but not what the planner asks: it compares different kernels (dense at
one shape, grouped-sparse at another) in seconds. So this model predicts seconds directly:
gradient-boosted trees (XGBoost) on shape, density, group and form features (`SecondsModel`).
Dense seconds are learnt as a correction to the analytical roofline rather than raw seconds,
which keeps predictions sensible outside the tuned shapes, where trees alone would flatten out,
because the roofline scales with MACs and bytes; sparse forms as a ratio to dense.
meta_schedule's per-store schedule features, added as inputs, did not improve the held-out
decisions (`python/bench_cost_model.py --schedule-features`), so they are not used.
"""
from __future__ import annotations

import math

import numpy as np

from .cost import AnalyticalCost, Estimate, KernelQuery, L2_BYTES
from .logs import TuningLog
from .target import TargetSpec

FORMS = ("dense", "gsparse_gx1", "gsparse_1xg")


def features(query: KernelQuery, analytical_seconds: float) -> list[float]:
    """Shape, density and work descriptors of a candidate, plus the roofline's estimate.

    Besides MACs and bytes, the loop structure: blocks (packed lane-blocks for dense, G-output
    blocks for G×1, outputs for 1×G) and groups per block, which decide the per-block overheads
    of the sparse kernels, and the padding of N to whole lane-blocks.
    """
    macs, size = query.macs, query.weight_bytes
    lanes = query.group if query.form != "dense" else 8
    padded_n = -(-query.n // lanes) * lanes
    if query.form == "dense":
        blocks, per_block, density = padded_n // lanes, query.k, 1.0
    else:
        blocks = padded_n // lanes if query.form == "gsparse_gx1" else query.n
        per_block = query.groups / blocks
        density = query.macs / (query.batch * query.k * query.n)
    return [
        *(float(query.form == form) for form in FORMS),
        math.log2(query.batch), math.log2(query.k), math.log2(query.n),
        density, float(query.group), padded_n / query.n,
        math.log2(blocks), math.log2(max(per_block, 1e-3)),
        math.log2(max(macs, 1)), math.log2(max(size, 1)), float(size > L2_BYTES),
        math.log(analytical_seconds),
    ]


def dense_partner(query: KernelQuery) -> KernelQuery:
    """The dense kernel at the same shape: what a sparse form is compared against."""
    return KernelQuery("fc", "dense", query.batch, query.k, query.n)


class SecondsModel:
    """Seconds of FC kernels in two XGBoost regressions.

    * dense: log(measured / roofline seconds), from the dense records;
    * sparse: log(sparse seconds / dense seconds at the same shape), from the sparse records
      whose dense partner was measured too.

    The planner's decisions are relative — is this layer faster sparse than dense? — and the
    speed ratio of a sparse form to dense depends mostly on density, batch and the blocks'
    loop structure, so it carries over to unseen shapes better than absolute seconds do (on
    an earlier log, held out by input width, 91% right decisions against 86% for one model of
    all forms' seconds). A sparse prediction is the dense partner's seconds — measured when the
    log has it, else predicted — times the ratio.
    """

    def __init__(self, spec: TargetSpec, seed: int = 0):
        self.analytical = AnalyticalCost(spec)
        self.seed = seed
        self.dense = None
        self.ratio = None
        self.measured: dict = {}

    def _rows(self, queries):
        guesses = [self.analytical.estimate(q).seconds for q in queries]
        return np.array([features(q, g) for q, g in zip(queries, guesses)]), np.array(guesses)

    def _train(self, rows, target):
        import xgboost  # late: only planning with a log needs it

        params = {"max_depth": 4, "eta": 0.05, "subsample": 0.9, "min_child_weight": 2,
                  "seed": self.seed, "nthread": 1, "objective": "reg:squarederror"}
        return xgboost.train(params, xgboost.DMatrix(rows, label=target), num_boost_round=300)

    def fit(self, seconds_by_query: dict) -> SecondsModel:
        self.measured = {q: s for q, s in seconds_by_query.items() if q.kind == "fc"}
        dense = [q for q in self.measured if q.form == "dense"]
        if len(dense) >= 8:
            rows, guesses = self._rows(dense)
            self.dense = self._train(rows, np.log([self.measured[q] for q in dense]) - np.log(guesses))
        paired = [q for q in self.measured if q.form != "dense" and dense_partner(q) in self.measured]
        if len(paired) >= 8:
            rows, _ = self._rows(paired)
            self.ratio = self._train(rows, np.log([self.measured[q] / self.measured[dense_partner(q)]
                                                   for q in paired]))
        return self

    def predict(self, queries: list[KernelQuery]) -> np.ndarray:
        """Predicted seconds (the roofline's where a part of the model had too few records)."""
        import xgboost

        if not queries:
            return np.zeros(0)
        rows, guesses = self._rows(queries)
        partners = [dense_partner(q) for q in queries]
        partner_rows, partner_guesses = self._rows(partners)
        if self.dense is not None:
            partner_guesses = partner_guesses * np.exp(self.dense.predict(xgboost.DMatrix(partner_rows)))
        dense = np.array([self.measured.get(p, d) for p, d in zip(partners, partner_guesses)])
        sparse = np.array([q.form != "dense" for q in queries])
        if not sparse.any():
            return dense
        if self.ratio is None:
            return np.where(sparse, guesses, dense)
        ratio = np.exp(self.ratio.predict(xgboost.DMatrix(rows)))
        return np.where(sparse, dense * ratio, dense)


class LogCost:
    """Seconds for the planner from a tuning log: the best record of a tuned kernel ("log"),
    else the model trained on all records ("model"). Conv layers without a record are priced by
    the analytical roofline ("analytical"): they have one form on CPUs, so nothing is decided
    by their price."""

    def __init__(self, spec: TargetSpec, log: TuningLog):
        self.log = log
        self.measured = log.seconds_by_query()
        self.model = SecondsModel(spec).fit(self.measured)
        self.analytical = self.model.analytical

    def estimate(self, query: KernelQuery, weights: np.ndarray | None = None) -> Estimate:
        if query in self.measured:
            return Estimate(self.measured[query], "log")
        if query.kind != "fc":
            return self.analytical.estimate(query)
        return Estimate(float(self.model.predict([query])[0]), "model")


_COSTS: dict = {}


def log_cost(spec: TargetSpec, log: TuningLog) -> LogCost:
    """`LogCost(spec, log)`, trained once per log and target (the planner asks per compile)."""
    key = (spec.name, spec.lanes("float32"), id(log))
    if key not in _COSTS or _COSTS[key][0] is not log:
        _COSTS[key] = (log, LogCost(spec, log))
    return _COSTS[key][1]
