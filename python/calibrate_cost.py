"""Fit the analytical cost model's rates to a kernel benchmark run, and write them into the package.

    python python/bench_kernels.py --out out          # measure (about 5 minutes)
    python python/calibrate_cost.py out/bench_kernels.json

For each kernel form and batch regime (batch 1, batched) the model is
t = overhead + MACs / mac_rate + weight bytes / bandwidth, the bandwidth being the L2 one while the
weight fits in L2 and the L3 one beyond. The four rates are fitted by least squares on log time
over every measured point, so the planner's estimates come from this machine's measurements, not
from hand-set numbers. Writes scalpel_tvm/data/cost_x86-avx2.json and prints the fit's error per
form and how often the fitted model picks the measured-fastest form.
"""
import argparse
import json
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from scalpel_tvm.cost import COST_FILE, AnalyticalCost, KernelQuery, predict_seconds, rate_key
from scalpel_tvm.target import TargetSpec

GROUP = 8


def sparse_point(batch: int, n: int, k: int, entry: dict) -> dict:
    """form -> (KernelQuery, measured seconds) for one sparsity row of the benchmark."""
    measured = {"dense": (KernelQuery("fc", "dense", batch, k, n), entry["dense_us"] * 1e-6)}
    for form, blocks in (("gx1", -(-n // GROUP)), ("1xg", n)):
        # Invert the format's size (values + one index per group + one pointer per block).
        groups = (entry[f"{form}_bytes"] - 4 * (blocks + 1)) // (4 * GROUP + 4)
        query = KernelQuery("fc", f"gsparse_{form}", batch, k, n, group=GROUP, groups=int(groups))
        measured[query.form] = (query, entry[f"{form}_us"] * 1e-6)
    nnz = (entry["csr_bytes"] - 4 * (n + 1)) // 8
    measured["csr"] = (KernelQuery("fc", "csr", batch, k, n, group=1, groups=int(nnz)), entry["csr_us"] * 1e-6)
    return measured


def sparse_points(bench: dict):
    for row in bench["results"]:
        n, k = row["shape"]
        for entry in row["sparse"]:
            yield sparse_point(row["batch"], n, k, entry)


def points(bench: dict):
    """(KernelQuery, measured seconds) for every kernel timed in the benchmark."""
    for measured in sparse_points(bench):
        yield from measured.values()
    for row in bench["results"]:
        for entry in row["shrunk"]:
            for key in ("n", "nk"):
                n_s, k_s = entry[f"{key}_shape"]
                yield KernelQuery("fc", "dense", row["batch"], k_s, n_s), entry[f"{key}_us"] * 1e-6


def fit(samples):
    queries = [q for q, _ in samples]
    measured = np.array([t for _, t in samples])

    def residuals(log_rates):
        rates = dict(zip(("overhead", "macs_per_s", "l2_bytes_per_s", "l3_bytes_per_s"), np.exp(log_rates)))
        predicted = np.array([predict_seconds(q, rates) for q in queries])
        return np.log(predicted) - np.log(measured)

    # Bounds keep the rates physical (one Zen 3 core: 2 FMA units x 8 lanes x ~3.5 GHz = 56 GMAC/s):
    # at a single batch size MACs and bytes of a sparse kernel are proportional, and an unbounded
    # fit would explain everything by one of them.
    lower = np.log([1e-8, 1e8, 1e9, 1e9])
    upper = np.log([2e-5, 56e9, 200e9, 100e9])
    start = np.log([0.5e-6, 20e9, 100e9, 40e9])
    result = least_squares(residuals, start, bounds=(lower, upper), method="trf")
    rates = dict(zip(("overhead", "macs_per_s", "l2_bytes_per_s", "l3_bytes_per_s"),
                     (float(v) for v in np.exp(result.x))))
    error = np.exp(np.abs(residuals(result.x))) - 1
    return rates, float(np.median(error)), float(np.max(error))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_json", help="bench_kernels.json from python/bench_kernels.py")
    args = parser.parse_args()
    bench = json.loads(Path(args.bench_json).read_text())
    by_key = {}
    for query, seconds in points(bench):
        by_key.setdefault(rate_key(query), []).append((query, seconds))
    calibration = {"source": "python/bench_kernels.py on " + bench["machine"]["cpu"],
                   "threads": bench["threads"], "rates": {}}
    for key, samples in sorted(by_key.items()):
        rates, median_error, max_error = fit(samples)
        calibration["rates"][key] = {**rates, "points": len(samples),
                                     "median_rel_error": median_error, "max_rel_error": max_error}
        print(f"{key:<20} {len(samples):>4} points  overhead {rates['overhead'] * 1e6:5.2f} us  "
              f"{rates['macs_per_s'] / 1e9:6.1f} GMAC/s  L2 {rates['l2_bytes_per_s'] / 1e9:6.1f} GB/s  "
              f"L3 {rates['l3_bytes_per_s'] / 1e9:6.1f} GB/s  error median {median_error:.0%} max {max_error:.0%}")
    COST_FILE.write_text(json.dumps(calibration, indent=2) + "\n")
    print(f"wrote {COST_FILE}")
    print_decision_quality(bench)


def print_decision_quality(bench: dict) -> None:
    """How often the fitted model picks the measured-fastest of dense / G×1 / 1×G (in-sample:
    the same points it was fitted to; held-out evaluation comes with the tuning-log models)."""
    cost = AnalyticalCost(TargetSpec.preset("x86-avx2"))
    right, regrets = 0, []
    for measured in sparse_points(bench):
        del measured["csr"]  # the planner never picks CSR; it stands for traditional pruning
        chosen = min(measured, key=lambda form: cost.estimate(measured[form][0]).seconds)
        best = min(measured, key=lambda form: measured[form][1])
        right += chosen == best
        regrets.append(measured[chosen][1] / measured[best][1])
    print(f"decision accuracy (in-sample): {right}/{len(regrets)} picks are the measured-fastest "
          f"form; the others are at most {max(regrets):.2f}x slower than it (mean {np.mean(regrets):.3f}x)")


if __name__ == "__main__":
    main()
