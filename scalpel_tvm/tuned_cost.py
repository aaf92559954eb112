"""`LogCost`: the planner's seconds from autotuning logs — a log record when the kernel was tuned,
otherwise a model trained on the log's records.

meta_schedule's own `XGBModel` scores candidates *within* one workload (best cost ÷ cost), which
is what its search needs but not what the planner asks: it compares different kernels (dense at
one shape, grouped-sparse at another) in seconds. So this model predicts seconds directly:
gradient-boosted trees (XGBoost) on shape, density, group and form features, learning the log of
the ratio between the measured seconds and the analytical roofline's estimate. Learning the
correction rather than the seconds keeps predictions sensible outside the tuned shapes, where
trees alone would flatten out, because the roofline scales with MACs and bytes.
"""
from __future__ import annotations

import math

import numpy as np

from .cost import AnalyticalCost, Estimate, KernelQuery, L2_BYTES
from .logs import TuningLog
from .target import TargetSpec

FORMS = ("dense", "gsparse_gx1", "gsparse_1xg")


def features(query: KernelQuery, analytical_seconds: float) -> list[float]:
    macs, size = query.macs, query.weight_bytes
    density = 1.0 if query.form == "dense" else query.macs / (query.batch * query.k * query.n)
    return [
        *(float(query.form == form) for form in FORMS),
        math.log2(query.batch), math.log2(query.k), math.log2(query.n),
        density, float(query.group),
        math.log2(max(macs, 1)), math.log2(max(size, 1)), float(size > L2_BYTES),
        math.log(analytical_seconds),
    ]


class SecondsModel:
    """XGBoost regression of log(measured / analytical seconds) over `features`."""

    def __init__(self, spec: TargetSpec, seed: int = 0):
        self.analytical = AnalyticalCost(spec)
        self.seed = seed
        self.booster = None

    def _rows(self, queries):
        guesses = [self.analytical.estimate(q).seconds for q in queries]
        return np.array([features(q, g) for q, g in zip(queries, guesses)]), np.array(guesses)

    def fit(self, seconds_by_query: dict) -> SecondsModel:
        import xgboost  # late: only planning with a log needs it

        queries = [q for q in seconds_by_query if q.kind == "fc"]
        if len(queries) < 8:
            return self  # too few records to learn from; predict the roofline
        rows, guesses = self._rows(queries)
        target = np.log([seconds_by_query[q] for q in queries]) - np.log(guesses)
        params = {"max_depth": 4, "eta": 0.05, "subsample": 0.9, "min_child_weight": 2,
                  "seed": self.seed, "nthread": 1, "objective": "reg:squarederror"}
        self.booster = xgboost.train(params, xgboost.DMatrix(rows, label=target), num_boost_round=300)
        return self

    def predict(self, queries: list[KernelQuery]) -> np.ndarray:
        rows, guesses = self._rows(queries)
        if self.booster is None:
            return guesses
        import xgboost

        return guesses * np.exp(self.booster.predict(xgboost.DMatrix(rows)))


class LogCost:
    """Seconds for the planner from a tuning log: the best record of a tuned kernel ("log"),
    else the model trained on all records ("model"). Conv layers, not tuned yet, are priced by
    the analytical roofline ("analytical")."""

    def __init__(self, spec: TargetSpec, log: TuningLog):
        self.log = log
        self.measured = log.seconds_by_query()
        self.model = SecondsModel(spec).fit(self.measured)
        self.analytical = self.model.analytical

    def estimate(self, query: KernelQuery, weights: np.ndarray | None = None) -> Estimate:
        if query.kind != "fc":
            return self.analytical.estimate(query)
        if query in self.measured:
            return Estimate(self.measured[query], "log")
        return Estimate(float(self.model.predict([query])[0]), "model")


_COSTS: dict = {}


def log_cost(spec: TargetSpec, log: TuningLog) -> LogCost:
    """`LogCost(spec, log)`, trained once per log and target (the planner asks per compile)."""
    key = (spec.name, spec.lanes("float32"), id(log))
    if key not in _COSTS or _COSTS[key][0] is not log:
        _COSTS[key] = (log, LogCost(spec, log))
    return _COSTS[key][1]
