"""How well does the tuning log's seconds model price kernels it has not seen?

Leave-one-input-width-out over the log: for every distinct K, the model is trained on the
records of all other K and predicts the held-out kernels (every form, batch, width and
sparsity with that K). Prints and writes (out/bench_cost_model.json, .png):

* MAPE of the predicted seconds and Spearman's rank correlation with the measured seconds;
* decision accuracy: for each held-out layer case (batch, K, N, group sparsity 50/70/90%) the
  form the planner would choose — dense, grouped-sparse G×1 or 1×G — against the measured
  fastest, and when wrong, how much slower the chosen form measured (regret);
* the same for the analytical roofline (the cost model of the compiler-core issue), as a
  baseline measured on the same records.

    python python/bench_cost_model.py [--logs DIR] [--out out]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from scalpel_tvm.cost import AnalyticalCost, KernelQuery
from scalpel_tvm.logs import SHIPPED, TuningLog
from scalpel_tvm.target import TargetSpec
from scalpel_tvm.tuned_cost import SecondsModel
from scalpel_tvm.tuning import GROUP_SPARSITIES
from scalpel_tvm.workloads import Workload


def held_out_predictions(measured: dict, spec: TargetSpec) -> dict:
    predicted = {}
    for k in sorted({q.k for q in measured}):
        train = {q: s for q, s in measured.items() if q.k != k}
        test = [q for q in measured if q.k == k]
        model = SecondsModel(spec).fit(train)
        predicted.update(zip(test, model.predict(test)))
    return predicted


def decision_cases(measured: dict, lanes: int) -> list[dict]:
    """Layer cases with all three forms measured: dense at [K, N] and both grouped-sparse forms
    at the same group sparsity (the kept-group counts `tuning.layer_workloads` makes)."""
    cases = []
    for q in measured:
        if q.form != "dense":
            continue
        for sparsity in GROUP_SPARSITIES:
            forms = {"dense": q}
            for orientation in ("gx1", "1xg"):
                shell = Workload(f"gsparse_{orientation}", q.batch, q.k, q.n, lanes, 1)
                groups = max(1, round(shell.max_groups * (1 - sparsity)))
                forms[shell.form] = KernelQuery("fc", shell.form, q.batch, q.k, q.n, group=lanes,
                                                groups=groups)
            if all(f in measured for f in forms.values()):
                cases.append({"batch": q.batch, "k": q.k, "n": q.n, "sparsity": sparsity,
                              "forms": forms})
    return cases


def decide(cases, measured, price) -> dict:
    right, regrets = 0, []
    for case in cases:
        forms = case["forms"]
        chosen = min(forms, key=lambda f: price(forms[f]))
        best = min(forms, key=lambda f: measured[forms[f]])
        right += chosen == best
        regrets.append(measured[forms[chosen]] / measured[forms[best]])
    wrong = [r for r in regrets if r > 1]
    return {"cases": len(cases), "accuracy": right / max(len(cases), 1),
            "worst_regret": max(regrets, default=1.0),
            "mean_regret_when_wrong": float(np.mean(wrong)) if wrong else 1.0,
            "within_10pct_when_wrong": sum(r <= 1.10 for r in wrong) / max(len(wrong), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=Path, default=SHIPPED / "x86-avx2")
    parser.add_argument("--target", default="x86-avx2")
    parser.add_argument("--out", type=Path, default=Path("out"))
    args = parser.parse_args()
    spec = TargetSpec.preset(args.target)
    started = time.time()
    measured = {q: s for q, s in TuningLog(args.logs).seconds_by_query().items() if q.kind == "fc"}
    predicted = held_out_predictions(measured, spec)
    analytical = AnalyticalCost(spec)
    queries = list(predicted)
    truth = np.array([measured[q] for q in queries])
    guess = np.array([predicted[q] for q in queries])
    roofline = np.array([analytical.estimate(q).seconds for q in queries])
    cases = decision_cases(measured, spec.lanes("float32"))
    report = {
        "log": str(args.logs), "kernels": len(queries), "held_out": "one input width K at a time",
        "model": {"mape": float(np.mean(np.abs(guess - truth) / truth)),
                  "spearman": float(spearmanr(guess, truth).statistic),
                  "decisions": decide(cases, measured, lambda q: predicted[q])},
        "analytical": {"mape": float(np.mean(np.abs(roofline - truth) / truth)),
                       "spearman": float(spearmanr(roofline, truth).statistic),
                       "decisions": decide(cases, measured, lambda q: analytical.estimate(q).seconds)},
        "seconds": round(time.time() - started, 1),
    }
    for name in ("model", "analytical"):
        r, d = report[name], report[name]["decisions"]
        print(f"{name:>10}: MAPE {r['mape']:.1%}  Spearman {r['spearman']:.3f}  decisions "
              f"{d['accuracy']:.1%} of {d['cases']}  worst regret {d['worst_regret']:.2f}x  "
              f"wrong within 10%: {d['within_10pct_when_wrong']:.0%}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_cost_model.json").write_text(json.dumps(report, indent=2))
    _plot(truth, guess, roofline, args.out / "bench_cost_model.png")
    print(f"wrote {args.out / 'bench_cost_model.json'} and .png")


def _plot(truth, guess, roofline, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.loglog(truth * 1e6, roofline * 1e6, ".", alpha=0.4, label="analytical roofline")
    ax.loglog(truth * 1e6, guess * 1e6, ".", alpha=0.7, label="log model (held out)")
    lo, hi = truth.min() * 1e6, truth.max() * 1e6
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.set_xlabel("measured µs")
    ax.set_ylabel("predicted µs")
    ax.set_title("Predicted vs measured kernel time (x86-avx2)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
