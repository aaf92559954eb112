"""Break-even of grouped-sparse against dense with each side at its best template knobs.

`bench_kernels.py` compares the templates at their default knobs. This times every setting
`scalpel tune` would measure (`workloads.knob_space`: at batch 1 dense lane-blocks per tile x K
streams and grouped-sparse streams per block; batched, the batch tiles and loop orders) for one
FC shape at one group sparsity, side by side
(one thread, medians of interleaved rounds, every output checked against numpy first), and
prints every setting, fastest first:

    python python/sweep_fc_knobs.py --shape 100x300 --sparsity 0.3 [--batch 1] [--target x86-avx2]    # N x K, 15 s
"""
import os

os.environ["TVM_NUM_THREADS"] = "1"

import argparse  # noqa: E402

import numpy as np  # noqa: E402

from bench_kernels import Case, zero_fraction  # noqa: E402
from scalpel_tvm.demo import MODEL_TARGETS, runnable_target  # noqa: E402
from scalpel_tvm.schedules.fc import pack_dense_weight  # noqa: E402
from scalpel_tvm.schedules.grouped_sparse import GroupedSparseWeight, grouped_sparse_fc  # noqa: E402
from scalpel_tvm.target import TargetSpec  # noqa: E402
from scalpel_tvm.timing import median_us  # noqa: E402
from scalpel_tvm.workloads import Workload, default_knobs, knob_space, template_kernel  # noqa: E402


def describe(knobs: dict, workload: Workload) -> str:
    """The knobs a setting changes from the template's defaults (`defaults` if none)."""
    defaults = default_knobs(workload)
    changed = [f"{key}={value}" for key, value in sorted(knobs.items()) if defaults.get(key) != value]
    return " ".join(changed) or "defaults"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="100x300", help="N x K (outputs x inputs)")
    parser.add_argument("--sparsity", type=float, default=0.3, help="fraction of all-zero aligned groups")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--target", default="x86-avx2", choices=MODEL_TARGETS, type=runnable_target,
                        help="groups as wide as its fp32 lanes")
    args = parser.parse_args()
    n, k = (int(d) for d in args.shape.split("x"))
    rng = np.random.default_rng(0)
    case = Case(n, k, args.batch, rng, TargetSpec.preset(args.target))
    G = case.lanes
    timers = {}
    dense = Workload("dense", args.batch, k, n, G)
    for knobs in knob_space(dense):
        timers[f"dense {describe(knobs, dense)}"] = case.timer(
            template_kernel(dense, knobs), pack_dense_weight(case.w, G), w=case.w)
    for orientation, group_shape in (("gx1", (1, G)), ("1xg", (G, 1))):
        w = zero_fraction(rng, case.w, args.sparsity, group_shape)
        weight = GroupedSparseWeight.from_dense(w, G, orientation)
        sparse = Workload(f"gsparse_{orientation}", args.batch, k, n, G, groups=weight.n_groups)
        for knobs in knob_space(sparse):
            prim = grouped_sparse_fc(weight, args.batch, bias=True, activation="relu", name="gsparse", **knobs)
            timers[f"{orientation} {describe(knobs, sparse)}"] = case.timer(
                prim, weight.indptr, weight.indices, weight.values, w=w)
    us = median_us(timers, budget_s=3.0, rounds=15)
    best_dense = min(t for name, t in us.items() if name.startswith("dense"))
    print(f"{n}x{k} (N x K), batch {args.batch}, {args.sparsity:.0%} of the groups zero; x = best dense / this")
    for name, t in sorted(us.items(), key=lambda item: item[1]):
        print(f"  {name:<36}{t:8.3f} us  {best_dense / t:5.2f}x")


if __name__ == "__main__":
    main()
