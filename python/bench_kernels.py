"""Benchmark the FC kernel templates: dense, node-shrunk dense, grouped-sparse and CSR, one thread.

Every layer is y = relu(x @ W + b), x [batch, K], W [K, N], for the FC shapes (N x K) of
LeNet-300-100 and AlexNet at batch 1 and 50. Variants, all PrimFuncs from ``schedules/``:
  * dense   -- ``fc.py`` at the full shape, beside numpy's matmul (OpenBLAS) and an onnxruntime
               Gemm + Relu at the same shape, so the baseline is visibly not a strawman;
  * shrunk  -- the same dense template after node pruning at node sparsity s: (1-s)N outputs
               ("N"), and (1-s)N outputs of (1-s)K inputs when the previous layer shrank too
               ("NK"); ideal speedup = the MAC ratio;
  * gx1/1xg -- ``grouped_sparse.py``, G = the target's fp32 lanes (8 for x86-avx2, 16 for
               x86-avx512), a random fraction s of the aligned groups zero;
  * csr     -- ``csr.py`` at the same fraction s of (unstructured) zero weights, beside the CSR
               libraries a user of traditional pruning would call on the same weight: MKL's
               sparse BLAS (through PyTorch, the paper's CSR baseline) and scipy.sparse.
Every kernel's output is checked against numpy before it is timed. Times are medians of repeats
taken in interleaved rounds (dense, then each variant at this sparsity, again), so host noise
hits them alike; speedups are dense time / variant time from the same rounds.

    python python/bench_kernels.py [--target x86-avx2|x86-avx512] [--quick] [--shape NxK ...] [--out DIR]

writes DIR/bench_kernels.json and DIR/bench_kernels.png (speedup vs sparsity per shape); for
another target than x86-avx2, DIR/bench_kernels_<target>.json and .png. Every kernel runs with
its template's default knobs (no tuning log), dense ones packed to the target's lanes.
"""

import os

# One thread everywhere, for stable figures on a shared machine; set before TVM and numpy load.
os.environ["TVM_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import argparse
import json
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import onnxruntime as ort
import scipy
import scipy.sparse
import torch
import tvm
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm

from scalpel_tvm.schedules.csr import CSRWeight, csr_fc
from scalpel_tvm.timing import call_timer, cpu_name, median_us, ort_session, ort_timer, vm_timer
from scalpel_tvm.schedules.fc import dense_fc, pack_dense_weight
from scalpel_tvm.schedules.grouped_sparse import GroupedSparseWeight, grouped_sparse_fc
from scalpel_tvm.demo import MODEL_TARGETS, per_target, runnable_target
from scalpel_tvm.target import TargetSpec

SHAPES = [(300, 784), (100, 300), (4096, 4096), (4096, 9216)]  # (N, K): out x in features
BATCHES = (1, 50)
GROUP_SPARSITY = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
NODE_SPARSITY = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
QUICK = dict(
    shapes=[(300, 784), (4096, 4096)], batches=(1, 50), group=(0.0, 0.3, 0.9), node=(0.5,)
)


def tvm_timer(prim, *inputs, out_shape, target):
    """Compile a PrimFunc; return (timer, output). timer(number) = seconds per call."""
    name = prim.attrs["global_symbol"]
    mod = tvm.compile(tvm.IRModule({name: prim}), target=target).jit()
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in inputs]
    args.append(tvm.runtime.tensor(np.zeros(out_shape, "float32"), dev))
    mod[name](*args)
    return vm_timer(mod, *args, func=name), args[-1].numpy()


def numpy_timer(x, w, b):
    return call_timer(lambda: np.maximum(x @ w + b, 0))


def ort_timer_fc(x, w, b):
    """onnxruntime Gemm + Relu (W an initializer), run_with_iobinding with x bound once."""
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["g"]),
        helper.make_node("Relu", ["g"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "fc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort_session(model.SerializeToString())
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], reference(x, w, b), **TOLERANCE)
    return ort_timer(sess, {"x": x})


def mkl_csr_timer(csr: CSRWeight, x, b):
    """MKL's CSR times dense, as PyTorch calls it: `torch.addmm` with a CSR tensor runs
    `mkl_sparse_s_mm` in torch's CPU wheel (seen with gdb), MKL being the paper's CSR baseline.
    The sparse operand is W^T, the arrays of our own kernel's `CSRWeight` (int32 indices; int64
    ones, torch's default, are converted on every call), and x^T comes laid out for it; torch
    makes MKL's matrix handle on each call, as any torch user gets it."""
    k, n = csr.shape
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        weight = torch.sparse_csr_tensor(torch.from_numpy(csr.indptr), torch.from_numpy(csr.indices),
                                         torch.from_numpy(csr.values), size=(n, k), check_invariants=True)
    x_t, bias = torch.from_numpy(np.ascontiguousarray(x.T)), torch.from_numpy(b)[:, None]
    y_t = torch.empty((n, x.shape[0]))

    def run():
        torch.addmm(bias, weight, x_t, out=y_t).relu_()

    run()
    np.testing.assert_allclose(y_t.numpy().T, reference(x, csr.to_dense(), b), **TOLERANCE)
    return call_timer(run)


def scipy_csr_timer(csr: CSRWeight, x, b):
    """scipy.sparse's CSR times dense (its own C++ loops): W^T from the same `CSRWeight` arrays,
    x^T laid out for it."""
    k, n = csr.shape
    weight = scipy.sparse.csr_array((csr.values, csr.indices, csr.indptr), shape=(n, k))
    x_t, bias = np.ascontiguousarray(x.T), b[:, None]

    def run():
        return np.maximum(weight @ x_t + bias, 0)

    np.testing.assert_allclose(run().T, reference(x, csr.to_dense(), b), **TOLERANCE)
    return call_timer(run)


TOLERANCE = dict(rtol=1e-3, atol=1e-3)


def reference(x, w, b):
    return np.maximum(x @ w + b, 0)


def zero_fraction(rng, w, sparsity, group_shape):
    """w with an exact fraction ``sparsity`` of its aligned (gk x gn) groups set to zero."""
    gk, gn = group_shape
    k, n = w.shape
    grid = (-(-k // gk), -(-n // gn))
    dead = np.zeros(grid[0] * grid[1], bool)
    dead[rng.permutation(dead.size)[: round(sparsity * dead.size)]] = True
    mask = np.repeat(np.repeat(dead.reshape(grid), gk, axis=0), gn, axis=1)[:k, :n]
    return np.where(mask, np.float32(0), w)


class Case:
    """One FC shape at one batch: the dense weight, input, and the dense kernel's timer."""

    def __init__(self, n, k, batch, rng, spec: TargetSpec):
        self.n, self.k, self.batch = n, k, batch
        self.target, self.lanes = spec.target, spec.lanes("float32")
        self.x = rng.standard_normal((batch, k), dtype="float32")
        self.w = rng.standard_normal((k, n), dtype="float32") / np.float32(np.sqrt(k))
        self.b = rng.standard_normal(n, dtype="float32")
        self.dense = self.timer(self.dense_kernel(k, n), pack_dense_weight(self.w, self.lanes), w=self.w)

    def dense_kernel(self, k, n):
        return dense_fc(self.batch, k, n, bias=True, activation="relu", lanes=self.lanes)

    def timer(self, prim, *weight_args, w, x=None, b=None):
        """Timer of a kernel taking (x, *weight_args, b), checked against numpy first."""
        x = self.x if x is None else x
        b = self.b if b is None else b
        timer, y = tvm_timer(prim, x, *weight_args, b, out_shape=(self.batch, w.shape[1]), target=self.target)
        np.testing.assert_allclose(y, reference(x, w, b), **TOLERANCE)
        return timer

    def baselines(self, budget_s, rounds):
        timers = {
            "dense_us": self.dense,
            "numpy_us": numpy_timer(self.x, self.w, self.b),
            "ort_us": ort_timer_fc(self.x, self.w, self.b),
        }
        return median_us(timers, budget_s, rounds)

    def sparse(self, sparsity, rng, budget_s, rounds):
        """Dense vs grouped-sparse (both orientations) vs CSR at one sparsity."""
        timers, row = {"dense_us": self.dense}, {"sparsity": sparsity}
        for orientation, group_shape in (("gx1", (1, self.lanes)), ("1xg", (self.lanes, 1))):
            w = zero_fraction(rng, self.w, sparsity, group_shape)
            gw = GroupedSparseWeight.from_dense(w, self.lanes, orientation)
            prim = grouped_sparse_fc(gw, self.batch, bias=True, activation="relu",
                                     name=f"gsparse_{orientation}")
            timers[f"{orientation}_us"] = self.timer(prim, gw.indptr, gw.indices, gw.values, w=w)
            row[f"{orientation}_bytes"] = gw.nbytes
        w = zero_fraction(rng, self.w, sparsity, (1, 1))
        cw = CSRWeight.from_dense(w)
        prim = csr_fc(cw, self.batch, bias=True, activation="relu")
        timers["csr_us"] = self.timer(prim, cw.indptr, cw.indices, cw.values, w=w)
        timers["mkl_csr_us"] = mkl_csr_timer(cw, self.x, self.b)
        timers["scipy_csr_us"] = scipy_csr_timer(cw, self.x, self.b)
        row["csr_bytes"] = cw.nbytes
        row["dense_bytes"] = self.w.nbytes
        row.update(median_us(timers, budget_s, rounds))
        for kind in ("gx1", "1xg", "csr", "mkl_csr", "scipy_csr"):
            row[f"{kind}_speedup"] = row["dense_us"] / row[f"{kind}_us"]
        return row

    def shrunk(self, sparsity, budget_s, rounds):
        """Dense vs the dense template after removing a fraction ``sparsity`` of the nodes."""
        n = max(1, round((1 - sparsity) * self.n))
        k = max(1, round((1 - sparsity) * self.k))
        w_n, w_nk = self.w[:, :n], self.w[:k, :n]
        x_k = np.ascontiguousarray(self.x[:, :k])
        timers = {
            "dense_us": self.dense,
            "n_us": self.timer(self.dense_kernel(self.k, n), pack_dense_weight(w_n, self.lanes), w=w_n,
                               b=self.b[:n]),
            "nk_us": self.timer(self.dense_kernel(k, n), pack_dense_weight(w_nk, self.lanes), w=w_nk, x=x_k,
                                b=self.b[:n]),
        }
        row = {"sparsity": sparsity, "n_shape": [n, self.k], "nk_shape": [n, k]}
        row.update(median_us(timers, budget_s, rounds))
        row["n_speedup"] = row["dense_us"] / row["n_us"]
        row["nk_speedup"] = row["dense_us"] / row["nk_us"]
        row["n_ideal"] = self.n / n
        row["nk_ideal"] = self.n * self.k / (n * k)
        return row


def goals(results):
    """The issue's goals, each with the measured figure and whether it is met."""
    out = {}
    for r in results:
        tag = f"{r['shape'][0]}x{r['shape'][1]} b{r['batch']}"
        half = [s for s in r["shrunk"] if s["sparsity"] == 0.5]
        if half:
            s = half[0]
            out[f"shrunk@50% {tag}"] = {
                "N_of_ideal": s["n_speedup"] / s["n_ideal"],
                "NK_of_ideal": s["nk_speedup"] / s["nk_ideal"],
                "met": min(s["n_speedup"] / s["n_ideal"], s["nk_speedup"] / s["nk_ideal"]) >= 0.8,
            }
        best = [(g["sparsity"], max(g["gx1_speedup"], g["1xg_speedup"])) for g in r["sparse"]]
        break_even = next((s for s, x in best if all(y >= 1 for t, y in best if t >= s)), None)
        at90 = dict(best).get(0.9)
        out[f"grouped {tag}"] = {
            "break_even_sparsity": break_even,
            "met_break_even_le_30": break_even is not None and break_even <= 0.3,
            "speedup_at_90": at90,
        }
        for csr in ("csr", "mkl_csr", "scipy_csr"):
            vs = {g["sparsity"]: g[f"{csr}_us"] / min(g["gx1_us"], g["1xg_us"]) for g in r["sparse"]}
            out[f"grouped {tag}"][f"x_faster_than_{csr}"] = vs
            out[f"grouped {tag}"][f"sparsities_3x_faster_than_{csr}"] = [s for s, v in vs.items() if v >= 3]
        if r["shape"] == [4096, 4096] and r["batch"] == 1 and at90 is not None:
            out[f"grouped {tag}"]["met_6x_at_90"] = at90 >= 6
    return out


def plot(results, path, target_name):
    cols = sorted({tuple(r["shape"]) for r in results}, key=lambda s: s[0] * s[1])
    rows = sorted({r["batch"] for r in results})
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(4 * len(cols), 3.4 * len(rows)),
                             squeeze=False, sharey=True)
    for r in results:
        ax = axes[rows.index(r["batch"])][cols.index(tuple(r["shape"]))]
        sp = [g["sparsity"] * 100 for g in r["sparse"]]
        ax.plot(sp, [g["gx1_speedup"] for g in r["sparse"]], "o-", label="grouped G×1")
        ax.plot(sp, [g["1xg_speedup"] for g in r["sparse"]], "s-", label="grouped 1×G")
        ax.plot(sp, [g["csr_speedup"] for g in r["sparse"]], "^-", label="CSR (unstructured), ours")
        ax.plot(sp, [g["mkl_csr_speedup"] for g in r["sparse"]], "x--", label="CSR, MKL via PyTorch")
        ax.plot(sp, [g["scipy_csr_speedup"] for g in r["sparse"]], "+--", label="CSR, scipy.sparse")
        nodes = [s["sparsity"] * 100 for s in r["shrunk"]]
        ax.plot(nodes, [s["n_speedup"] for s in r["shrunk"]], "d-", label="node-shrunk N")
        ax.plot(nodes, [s["nk_speedup"] for s in r["shrunk"]], "v-", label="node-shrunk N,K")
        ideal = np.linspace(0, 95, 50)
        ax.plot(ideal, 1 / (1 - ideal / 100), "k:", lw=1, label="ideal (MAC ratio)")
        ax.plot(ideal, 1 / (1 - ideal / 100) ** 2, "k--", lw=0.6, label="ideal N,K")
        ax.axhline(1, color="gray", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"{r['shape'][0]}×{r['shape'][1]}, batch {r['batch']}", fontsize=10)
        ax.set_xlabel("sparsity (%)")
    for i, batch in enumerate(rows):
        axes[i][0].set_ylabel("speedup vs dense")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"FC kernels for {target_name}, 1 thread: speedup over the dense template", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def print_table(results):
    print("\nmicroseconds, median of interleaved rounds, 1 thread; y = relu(x @ W + b)")
    print(f"{'N x K':>11} {'B':>3} {'dense':>10} {'numpy':>10} {'onnxrt':>10}")
    for r in results:
        b = r["baselines"]
        print(f"{r['shape'][0]:>5}x{r['shape'][1]:<5} {r['batch']:>3} {b['dense_us']:10.1f} "
              f"{b['numpy_us']:10.1f} {b['ort_us']:10.1f}")
    print("\nspeedup vs dense (x); gx1/csr, gx1/mkl = times faster than our CSR kernel and MKL's at"
          " the same sparsity")
    print(f"{'N x K':>11} {'B':>3} {'sparsity':>8} {'gx1':>7} {'1xg':>7} {'csr':>7} {'mkl':>7}"
          f" {'scipy':>7} {'gx1/csr':>8} {'gx1/mkl':>8}"
          f" | {'nodes':>5} {'shrunk N':>8} {'ideal':>6} {'N,K':>7} {'ideal':>6}")
    for r in results:
        lines = max(len(r["sparse"]), len(r["shrunk"]))
        for i in range(lines):
            left = " " * 67
            if i < len(r["sparse"]):
                g = r["sparse"][i]
                left = (f"{g['sparsity']:8.0%} {g['gx1_speedup']:7.2f} {g['1xg_speedup']:7.2f} "
                        f"{g['csr_speedup']:7.2f} {g['mkl_csr_speedup']:7.2f} "
                        f"{g['scipy_csr_speedup']:7.2f} {g['csr_us'] / g['gx1_us']:8.2f} "
                        f"{g['mkl_csr_us'] / g['gx1_us']:8.2f}")
            right = ""
            if i < len(r["shrunk"]):
                s = r["shrunk"][i]
                right = (f"{s['sparsity']:5.0%} {s['n_speedup']:8.2f} {s['n_ideal']:6.2f} "
                         f"{s['nk_speedup']:7.2f} {s['nk_ideal']:6.2f}")
            print(f"{r['shape'][0]:>5}x{r['shape'][1]:<5} {r['batch']:>3} {left} | {right}")


def parse_shape(text):
    try:
        n, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not NxK, e.g. 300x784") from None
    return n, k


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out", help="folder for bench_kernels.json and .png")
    parser.add_argument("--target", default="x86-avx2", choices=MODEL_TARGETS, type=runnable_target)
    parser.add_argument("--quick", action="store_true", help="a small subset, about a minute")
    parser.add_argument("--shape", action="append", type=parse_shape, metavar="NxK",
                        help="only this FC shape (out x in features; repeatable)")
    args = parser.parse_args()
    spec = TargetSpec.preset(args.target)

    if args.quick:
        shapes, batches = QUICK["shapes"], QUICK["batches"]
        group, node, (budget_s, rounds) = QUICK["group"], QUICK["node"], (0.1, 5)
    else:
        shapes, batches = SHAPES, BATCHES
        group, node, (budget_s, rounds) = GROUP_SPARSITY, NODE_SPARSITY, (0.3, 7)
    shapes = args.shape or shapes
    rng = np.random.default_rng(0)
    cases = [(n, k, batch) for batch in batches for n, k in shapes]
    results = []
    with tqdm(total=len(cases) * (1 + len(group) + len(node)), desc="fc kernels") as bar:
        for n, k, batch in cases:
            bar.set_postfix_str(f"{n}x{k} b{batch}")
            case = Case(n, k, batch, rng, spec)
            result = {"shape": [n, k], "batch": batch,
                      "baselines": case.baselines(budget_s, rounds), "sparse": [], "shrunk": []}
            bar.update()
            for s in group:
                result["sparse"].append(case.sparse(s, rng, budget_s, rounds))
                bar.update()
            for s in node:
                result["shrunk"].append(case.shrunk(s, budget_s, rounds))
                bar.update()
            results.append(result)

    print_table(results)
    summary = goals(results)
    print("\ngoals")
    for key, value in summary.items():
        print(f"  {key}: {json.dumps(value, default=float)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "threads": "1 (TVM_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1, onnxruntime intra_op=1)",
        "target": str(spec.target),
        "group": spec.lanes("float32"),
        "timing": {"budget_s": budget_s, "rounds": rounds, "statistic": "median"},
        "versions": {
            "tvm": tvm.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__,
            "torch": torch.__version__, "scipy": scipy.__version__,
        },
        "results": results,
        "goals": summary,
    }
    stem = per_target("bench_kernels", args.target)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=float))
    plot(results, out / f"{stem}.png", f"{args.target} (G = {spec.lanes('float32')})")
    print(f"wrote {out / stem}.json and {out / stem}.png")


if __name__ == "__main__":
    main()
