"""How well does the tuning log's seconds model price kernels it has not seen?

Leave-one-input-width-out over the log: for every distinct K, the model is trained on the
records of all other K and predicts the held-out kernels (every form, batch, width and
sparsity with that K). Prints and writes (out/bench_cost_model.json, .png):

* MAPE of the predicted seconds and Spearman's rank correlation with the measured seconds;
* decision accuracy: for each held-out layer case (batch, K, N, group sparsity 10/30/50/70/90%) the
  form the planner would choose — dense, grouped-sparse G×1 or 1×G — against the measured
  fastest, and when wrong, how much slower the chosen form measured (regret);
* the same for the analytical roofline (the cost model of the compiler-core issue), as a
  baseline measured on the same records;
* with `--remeasure`, the decisions once more against the three forms of every case timed side
  by side in this run (the kernel the Pass would compile from the log for each form, medians of
  interleaved rounds). The log's records were measured on different days, and on a shared
  machine a record can be off by more than the forms differ (dense 784x296 measured 16.1 us one
  day, 784x300 12.5 us another), so the "measured fastest" of a case is only as sure as the
  records it is read from; timing the forms together takes the day out of the comparison.

    python python/bench_cost_model.py [--logs DIR] [--out out] [--remeasure] [--schedule-features]
"""
from __future__ import annotations

import os

# One thread, as the tuning runs measured; set before TVM and numpy load.
os.environ.setdefault("TVM_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

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


def held_out_predictions(measured: dict, spec: TargetSpec, make_model=None) -> dict:
    predicted = {}
    for k in sorted({q.k for q in measured}):
        train = {q: s for q, s in measured.items() if q.k != k}
        test = [q for q in measured if q.k == k]
        model = (make_model() if make_model else SecondsModel(spec)).fit(train)
        predicted.update(zip(test, model.predict(test)))
    return predicted


class WithScheduleFeatures(SecondsModel):
    """The seconds model with meta_schedule's per-store features (`PerStoreFeature`, the ones
    its XGBModel learns from; max and mean over the kernel's stores) added to its own: does
    what meta_schedule sees in a schedule help it price kernels? Trained on the features of the
    schedule each record measured; a held-out kernel gets those of the template's default
    knobs, the kernel the Pass would compile for a shape nobody tuned."""

    def __init__(self, spec: TargetSpec, features: ScheduleFeatures):
        super().__init__(spec)
        self.features, self.training = features, False

    def fit(self, seconds_by_query: dict):
        self.training = True
        try:
            return super().fit(seconds_by_query)
        finally:
            self.training = False

    def _rows(self, queries):
        rows, guesses = super()._rows(queries)
        extra = [self.features(q, tuned=self.training) for q in queries]
        return np.hstack([rows, np.array(extra)]), guesses


class ScheduleFeatures:
    """meta_schedule's per-store features of the kernel a query stands for, cached per log."""

    def __init__(self, log: TuningLog, spec: TargetSpec):
        from tvm.s_tir import meta_schedule as ms

        from scalpel_tvm.tuning import tuning_target

        self.log, self.target, self.logged = log, tuning_target(spec), logged_workloads(log)
        self.lanes = spec.lanes("float32")  # the dense form's packing
        self.extractor = ms.feature_extractor.PerStoreFeature(extract_workload=False)
        self.cache: dict = {}

    def __call__(self, query: KernelQuery, tuned: bool) -> np.ndarray:
        if (query, tuned) not in self.cache:
            self.cache[query, tuned] = self._extract(query, tuned)
        return self.cache[query, tuned]

    def _extract(self, query: KernelQuery, tuned: bool) -> np.ndarray:
        import tvm
        from tvm import s_tir
        from tvm.s_tir import meta_schedule as ms

        from scalpel_tvm.logs import tuned_kernel
        from scalpel_tvm.workloads import default_knobs, template_kernel

        epilogues = self.logged.get(query, {})
        workload = epilogues.get(PREFERRED_EPILOGUE) or next(iter(epilogues.values()), None)
        if workload is None:  # not in the log: the sweep's epilogue
            workload = Workload(query.form, query.batch, query.k, query.n,
                                query.group if query.form != "dense" else self.lanes, query.groups)
        kernel = tuned_kernel(self.log, workload, "main") if tuned else None
        kernel = kernel or template_kernel(workload, default_knobs(workload), "main")
        mod = tvm.IRModule({"main": kernel})
        context = ms.TuneContext(mod=mod, target=self.target)
        candidate = ms.MeasureCandidate(s_tir.Schedule(mod), ms.arg_info.ArgInfo.from_prim_func(kernel))
        stores = self.extractor.extract_from(context, [candidate])[0].numpy()
        return np.concatenate([stores.max(0), stores.mean(0)])


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


PREFERRED_EPILOGUE = (True, "relu")  # the sweep's; the demo's output layers have none


def logged_workloads(log: TuningLog) -> dict:
    """query -> {(bias, activation): the logged workload}: a query (the planner prices forms,
    not epilogues) can be in the log with several epilogues."""
    found: dict = {}
    for key in log.records:
        workload = Workload.from_key(key)
        if isinstance(workload, Workload):
            found.setdefault(workload.query, {})[workload.bias, workload.activation] = workload
    return found


def case_workloads(case: dict, logged: dict) -> dict:
    """The kernels of a case's three forms with one epilogue they all have in the log."""
    shared = set.intersection(*(set(logged[q]) for q in case["forms"].values()))
    epilogue = PREFERRED_EPILOGUE if PREFERRED_EPILOGUE in shared else sorted(shared, key=str)[0]
    return {form: logged[q][epilogue] for form, q in case["forms"].items()}


def remeasure(cases, log: TuningLog, spec: TargetSpec, budget_s: float = 0.15,
              rounds: int = 9) -> dict:
    """Seconds of every form of every case, the three forms of a case timed side by side: the
    kernel the Pass compiles from the log, on a random pattern of the case's group count."""
    import tvm
    from tqdm import tqdm

    from scalpel_tvm.logs import tuned_kernel
    from scalpel_tvm.timing import interleaved_samples, vm_timer
    from scalpel_tvm.tuning import tuning_target
    from scalpel_tvm.workloads import measurement_arguments

    target, logged, timers, seconds = tuning_target(spec), logged_workloads(log), {}, {}

    def timer(workload):
        if workload not in timers:
            module = tvm.compile(tvm.IRModule({"main": tuned_kernel(log, workload, "main")}),
                                 target=target).jit()
            arrays = [tvm.runtime.tensor(a, tvm.cpu()) for a in measurement_arguments(workload)]
            timers[workload] = vm_timer(module, *arrays)
        return timers[workload]

    for case in tqdm(cases, desc="timing each case's forms side by side", unit="case"):
        workloads = case_workloads(case, logged)
        samples = interleaved_samples({f: timer(wl) for f, wl in workloads.items()}, budget_s, rounds)
        for form, values in samples.items():  # a dense kernel serves three sparsities
            seconds.setdefault(case["forms"][form], []).append(float(np.median(values)))
    return {query: float(np.median(v)) for query, v in seconds.items()}


def decide(cases, measured, price) -> dict:
    right, regrets, wrong_cases = 0, [], []
    for case in cases:
        forms = case["forms"]
        chosen = min(forms, key=lambda f: price(forms[f]))
        best = min(forms, key=lambda f: measured[forms[f]])
        right += chosen == best
        regrets.append(measured[forms[chosen]] / measured[forms[best]])
        if chosen != best:
            wrong_cases.append({**{k: case[k] for k in ("batch", "k", "n", "sparsity")},
                                "chosen": chosen, "best": best, "regret": round(regrets[-1], 3),
                                "measured_us": {f: round(measured[q] * 1e6, 3) for f, q in forms.items()}})
    wrong = [r for r in regrets if r > 1]
    return {"cases": len(cases), "accuracy": right / max(len(cases), 1), "wrong": wrong_cases,
            "worst_regret": max(regrets, default=1.0),
            "mean_regret_when_wrong": float(np.mean(wrong)) if wrong else 1.0,
            "within_10pct_when_wrong": sum(r <= 1.10 for r in wrong) / max(len(wrong), 1)}


def score(predicted: dict, measured: dict, cases: list) -> dict:
    queries = list(predicted)
    truth = np.array([measured[q] for q in queries])
    guess = np.array([predicted[q] for q in queries])
    return {"mape": float(np.mean(np.abs(guess - truth) / truth)),
            "spearman": float(spearmanr(guess, truth).statistic),
            "decisions": decide(cases, measured, lambda q: predicted[q])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=Path, default=SHIPPED / "x86-avx2")
    parser.add_argument("--target", default="x86-avx2")
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--remeasure", action="store_true",
                        help="also judge the decisions against the forms timed side by side now")
    parser.add_argument("--schedule-features", action="store_true",
                        help="also try the model with meta_schedule's per-store features (2 min)")
    args = parser.parse_args()
    spec = TargetSpec.preset(args.target)
    started = time.time()
    log = TuningLog(args.logs)
    measured = {q: s for q, s in log.seconds_by_query().items() if q.kind == "fc"}
    analytical = AnalyticalCost(spec)
    predictions = {"model": held_out_predictions(measured, spec)}
    predictions["analytical"] = {q: analytical.estimate(q).seconds for q in predictions["model"]}
    if args.schedule_features:
        features = ScheduleFeatures(log, spec)
        predictions["model+schedule_features"] = held_out_predictions(
            measured, spec, lambda: WithScheduleFeatures(spec, features))
    cases = decision_cases(measured, spec.lanes("float32"))
    report = {"log": str(args.logs), "kernels": len(measured),
              "held_out": "one input width K at a time",
              **{name: score(p, measured, cases) for name, p in predictions.items()}}
    if args.remeasure:
        now = remeasure(cases, log, spec)
        prices = {**predictions, "log_records": measured}
        report["side_by_side"] = {
            "what": "each case's three forms timed together in this run; medians",
            "records_vs_now_mape": float(np.mean([abs(measured[q] - s) / s for q, s in now.items()])),
            "decisions": {name: decide(cases, now, lambda q, p=p: p[q]) for name, p in prices.items()},
        }
    report["seconds"] = round(time.time() - started, 1)
    for name in predictions:
        r, d = report[name], report[name]["decisions"]
        print(f"{name:>23}: MAPE {r['mape']:.1%}  Spearman {r['spearman']:.3f}  decisions "
              f"{d['accuracy']:.1%} of {d['cases']}  mean regret when wrong "
              f"{d['mean_regret_when_wrong']:.2f}x  worst {d['worst_regret']:.2f}x  "
              f"wrong within 10%: {d['within_10pct_when_wrong']:.0%}")
    for name, d in report.get("side_by_side", {}).get("decisions", {}).items():
        print(f"side by side, {name:>23}: decisions {d['accuracy']:.1%} of {d['cases']}  "
              f"mean regret when wrong {d['mean_regret_when_wrong']:.2f}x  worst "
              f"{d['worst_regret']:.2f}x  wrong within 10%: {d['within_10pct_when_wrong']:.0%}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_cost_model.json").write_text(json.dumps(report, indent=2))
    queries = list(predictions["model"])
    _plot(*(np.array([source[q] for q in queries])
            for source in (measured, predictions["model"], predictions["analytical"])),
          args.out / "bench_cost_model.png")
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
