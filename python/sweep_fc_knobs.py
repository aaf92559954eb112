"""Break-even of grouped-sparse against dense with each side at its best template knobs.

`bench_kernels.py` compares the templates at their default knobs. This sweeps the knobs that
matter at batch 1 (dense: lane-blocks per tile x K streams; grouped-sparse: streams per block)
for one FC shape at one group sparsity, timed side by side (one thread, medians of interleaved
rounds, every output checked against numpy first), and prints every setting, fastest first:

    python python/sweep_fc_knobs.py --shape 100x300 --sparsity 0.3     # N x K, 1 min
"""
import os

os.environ["TVM_NUM_THREADS"] = "1"

import argparse  # noqa: E402

import numpy as np  # noqa: E402

from bench_kernels import G, Case, zero_fraction  # noqa: E402
from scalpel_tvm.schedules.fc import dense_fc, pack_dense_weight  # noqa: E402
from scalpel_tvm.schedules.grouped_sparse import GroupedSparseWeight, grouped_sparse_fc  # noqa: E402
from scalpel_tvm.timing import median_us  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="100x300", help="N x K (outputs x inputs)")
    parser.add_argument("--sparsity", type=float, default=0.3, help="fraction of all-zero aligned groups")
    args = parser.parse_args()
    n, k = (int(d) for d in args.shape.split("x"))
    rng = np.random.default_rng(0)
    case = Case(n, k, 1, rng)
    timers = {}
    for vectors in (1, 2, 4, 8):
        for streams in (1, 2, 4):
            if 2 <= vectors * streams <= 12:
                prim = dense_fc(1, k, n, bias=True, activation="relu", vectors=vectors, k_streams=streams)
                timers[f"dense vectors={vectors} k_streams={streams}"] = case.timer(
                    prim, pack_dense_weight(case.w), w=case.w)
    for orientation, group_shape in (("gx1", (1, G)), ("1xg", (G, 1))):
        w = zero_fraction(rng, case.w, args.sparsity, group_shape)
        weight = GroupedSparseWeight.from_dense(w, G, orientation)
        for streams in (1, 2, 4, 8):
            prim = grouped_sparse_fc(weight, 1, bias=True, activation="relu", streams=streams, name="gsparse")
            timers[f"{orientation} streams={streams}"] = case.timer(
                prim, weight.indptr, weight.indices, weight.values, w=w)
    us = median_us(timers, budget_s=3.0, rounds=15)
    best_dense = min(t for name, t in us.items() if name.startswith("dense"))
    print(f"{n}x{k} (N x K), batch 1, {args.sparsity:.0%} of the groups zero; x = best dense / this")
    for name, t in sorted(us.items(), key=lambda item: item[1]):
        print(f"  {name:<28}{t:8.3f} us  {best_dense / t:5.2f}x")


if __name__ == "__main__":
    main()
