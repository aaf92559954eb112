"""Scalpel against the baselines, on one trained network for one target, side by side in one run.

    python python/bench_pruning.py --net lenet_300_100 --target cortex-m4 --out out   # ~2.5 min
    python python/bench_pruning.py --net lenet5 --target cuda --out out              # predicted only
    python python/bench_pruning.py --net convnet --target cortex-m4 --out out
    python python/bench_pruning.py --net lenet_300_100 --target x86-avx2 --train-epochs 8 --anneal-train \
        --sparsity 0.93 --steps 20 --epochs 1 --finetune 10 --orientation 1xg --distill --order-neurons --out out

Trains the network once (`--train-epochs`, the recipe every method starts from) on MNIST, or for
the ConvNet on Fashion-MNIST at 1x28x28 (the stand-in for the paper's CIFAR-10, which cannot be
had here), then prunes that same model three ways through `scalpel_tvm.pruning.prune_onnx` with the same
tolerance, retraining and round budget:

* scalpel: the target's strategy (SIMD-aware groups / node pruning), each layer in its fastest form;
* traditional: single weights by magnitude in every layer (Han et al. 2015), every layer CSR;
* optimized: traditional, then the layers keeping more than half their weights restored and
  deployed dense (the paper's "optimized pruning").

With `--sparsity` every method is pruned gradually to that fraction instead (`scalpel prune
--sparsity`: Scalpel's groups, the baselines' single weights), and `--anneal-train` trains the
dense model with an annealed rate (8 epochs of it converge LeNet-300-100). `--node-sparsity`
(and `--layer-sparsity`) cut Scalpel's node-pruned layers along the same ramp instead of its mask
layers' rounds (where Scalpel has no grouped layer to cut, as the ConvNet for x86, `--sparsity` is
then the baselines' alone):

    python python/bench_pruning.py --net lenet5 --target x86-avx2 --train-epochs 8 --anneal-train \
        --sparsity 0.93 --node-sparsity 0.7 --layer-sparsity conv1=0.5 --steps 20 --epochs 1 --finetune 10 \
        --orientation 1xg --distill --order-neurons --out out

`--search sparsity` (or `node_sparsity`) has Scalpel's run search its fraction (`scalpel prune
... auto`), `--search-per-layer` each layer's own (`--search sparsity node_sparsity
--search-per-layer`: of both kinds), while the baselines keep `--sparsity`.

For each it reports test accuracy, weights removed and the predicted speedup over the dense model
by the target's cost model; on a Cortex-M target also the cycle ESTIMATE of the int16 firmware
(built, run on QEMU and checked bit for bit against the numpy reference first, then priced by
`scalpel_tvm.cycles`; dense measured in the same run) and its flash. On an x86 target this CPU
can run, each model is compiled through `Pass` and timed side by side with the dense model
(also through `Pass`), at batch 1 and 50, in interleaved rounds (medians): Scalpel's model as
`Pass` plans it; the baselines as they deploy (every FC layer CSR, optimized pruning's restored
layers dense; conv layers run dense, as there is no CSR conv kernel for CPUs) and, to show what
our compiler makes of their unstructured zeros, as `Pass` plans them. Each compiled model's output
is checked against the same model compiled without the pass. Scalpel's test accuracy is
compared with each baseline's image by image (the paired change and its 95% interval,
`scalpel_tvm.paired_accuracy`). Writes `bench_pruning_<net>_<target>.json`, a plot, and each
method's pruned model as `bench_pruning_<net>_<target>_<method>.onnx`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import onnx

# One TVM thread, as `scalpel demo` and onnxruntime there: with a pool of two, TVM's own
# parallel loops for the ops between our kernels (LeNet-5's pooling) cost a pool launch each, and LeNet-5 at
# batch 1 measured 33.7 us instead of 17.8. Set before TVM starts its pool; torch keeps its own.
os.environ.setdefault("TVM_NUM_THREADS", "1")

from scalpel_tvm import ScalpelError, datasets, paper_nets, pruning  # noqa: E402
from scalpel_tvm.demo import check_runs_here
from scalpel_tvm.gradual_pruning import cut_in_groups, parse_layer_sparsity
from scalpel_tvm.paired_accuracy import describe, onnx_correct, paired_difference
from scalpel_tvm.prune_report import search_lines
from scalpel_tvm.sparsity_search import KINDS, parse_ranges, search_onnx
from scalpel_tvm.target import TargetSpec

METHODS = ("scalpel", "traditional", "optimized")
DATA = {"lenet_300_100": ("mnist", None), "lenet5": ("mnist", None), "convnet": ("fashion-mnist", (1, 28, 28))}


def trained(name: str, data, epochs: float, validation: int, seed: int = 0, anneal: bool = False):
    """The dense model as `prune_onnx(..., train_epochs=epochs, seed=seed, anneal=anneal)` trains it."""
    return pruning.train_onnx(paper_nets.network(name, input_shape=DATA[name][1]), data, epochs,
                              validation=validation, seed=seed, anneal=anneal)


def firmware(name: str, model, formats, tmp: Path) -> dict:
    import bench_cortex_m

    return bench_cortex_m.measure(name, model, formats, "latency", tmp, np.random.default_rng(0))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="lenet_300_100", choices=list(DATA))
    parser.add_argument("--target", default="cortex-m4")
    parser.add_argument("--train-epochs", type=float, default=3.0)
    parser.add_argument("--epochs", type=float, default=1.0, help="retraining epochs per round")
    parser.add_argument("--rounds", type=int, default=80, help="at most this many rounds per method "
                        "(scalpel prune's default)")
    parser.add_argument("--tolerance", type=float, default=0.1, help="accuracy points")
    parser.add_argument("--validation", type=int, help="as scalpel prune's: training images held out")
    parser.add_argument("--limit", type=int, help="train on the first N images (quick runs)")
    parser.add_argument("--methods", default=",".join(METHODS), help="a comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--order-neurons", action="store_true", help="as scalpel prune's (Scalpel's groups only)")
    parser.add_argument("--finetune", type=float, default=0.0, help="as scalpel prune's: epochs ending every method")
    parser.add_argument("--recover", action="store_true", help="as scalpel prune's (node pruning only)")
    parser.add_argument("--anneal-train", action="store_true",
                        help="train the dense model with the rate annealed to zero (8 epochs of it converge)")
    parser.add_argument("--sparsity", type=float, help="as scalpel prune's: every method pruned gradually to it")
    parser.add_argument("--steps", type=int, default=10, help="as scalpel prune's (with --sparsity)")
    parser.add_argument("--node-sparsity", type=float,
                        help="as scalpel prune's: Scalpel's node-pruned layers cut gradually")
    parser.add_argument("--layer-sparsity", nargs="+", default=[], metavar="LAYER=FRACTION",
                        help="as scalpel prune's, for Scalpel's run")
    parser.add_argument("--orientation", choices=["1xg", "gx1"], help="as scalpel prune's (Scalpel's x86 groups)")
    parser.add_argument("--search", choices=list(KINDS), nargs="+", default=[],
                        help="Scalpel's run searches this fraction (as scalpel prune's auto) instead of taking it; "
                             "both with --search-per-layer; the baselines keep --sparsity")
    parser.add_argument("--search-range", nargs="+", metavar="[groups=|nodes=]LOW:HIGH", help="as scalpel prune's")
    parser.add_argument("--search-trials", type=int, default=4, help="as scalpel prune's")
    parser.add_argument("--search-per-layer", action="store_true", help="as scalpel prune's (with --search)")
    parser.add_argument("--distill", action="store_true", help="as scalpel prune's: every method")
    parser.add_argument("--batches", default="1,50", help="x86: the batch sizes timed")
    parser.add_argument("--seed", type=int, default=0, help="the dense model's training and every method's pruning")
    parser.add_argument("--out", default="out")
    args = parser.parse_args()
    methods = args.methods.split(",")
    if not methods or set(methods) - set(METHODS):
        parser.error(f"--methods takes a comma-separated subset of {','.join(METHODS)}")
    spec = TargetSpec.preset(args.target)
    if spec.parallelism == "moderate":  # before the pruning runs, not after them
        check_runs_here(spec)
    if args.search_per_layer and not args.search:
        parser.error("--search-per-layer is for a searched fraction: give --search too")
    if args.search_range and not args.search:
        parser.error("--search-range is for a searched fraction: give --search too")
    if len(args.search) > 1 and not args.search_per_layer:
        parser.error("--search one fraction, or both with --search-per-layer")
    try:
        ranges = parse_ranges(args.search_range, args.search)
    except ScalpelError as error:
        parser.error(str(error))
    data = datasets.load(DATA[args.net][0], limit=args.limit)
    validation = args.validation or pruning.validation_images(data)
    model = trained(args.net, data, args.train_epochs, validation, seed=args.seed, anneal=args.anneal_train)
    runs = {}
    gradual_nodes = {"node_sparsity": args.node_sparsity, "layer_sparsity": parse_layer_sparsity(args.layer_sparsity)}
    # --sparsity is the baselines' too: where Scalpel cuts only nodes (the ConvNet for x86, whose one
    # FC layer is the output layer), its run takes --node-sparsity alone
    nodes_named = args.node_sparsity is not None or "node_sparsity" in args.search
    scalpel_sparsity = args.sparsity if not nodes_named or cuts_groups(model, spec) else None
    search = None
    if args.search:
        search = {"ranges": ranges, "trials": args.search_trials, "per_layer": args.search_per_layer}
        if "sparsity" in args.search:
            scalpel_sparsity = None
        gradual_nodes["node_sparsity"] = None if "node_sparsity" in args.search else args.node_sparsity
    # traditional and optimized share their loop: the optimized run resumes the traditional run's
    # finished checkpoint and only reverts and retrains (same seeds: the same result as from scratch)
    with tempfile.TemporaryDirectory() as tmp:
        shared = Path(tmp) / "magnitude_loop.pt"
        for method in methods:
            print(f"--- {method} ---", file=sys.stderr)
            prune = partial(scalpel_search, search) if method == "scalpel" and search else prune_once
            pruned, result, test, found = prune(model, spec, data, tolerance=args.tolerance / 100, epochs=args.epochs,
                                                      max_rounds=args.rounds, method=method, validation=validation,
                                                      seed=args.seed,
                                                      order_neurons=args.order_neurons, finetune=args.finetune,
                                                      recover=args.recover, steps=args.steps,
                                                      sparsity=scalpel_sparsity if method == "scalpel" else args.sparsity,
                                                      distill=args.distill,
                                                      orientation=args.orientation if method == "scalpel" else None,
                                                      **(gradual_nodes if method == "scalpel" else {}),
                                                      checkpoint=shared if method != "scalpel" else None,
                                                      keep_checkpoint=method == "traditional")
            layers = result.layers
            runs[method] = {"model": pruned, "test": test, "weights_removed": result.weights_removed,
                            "predicted_speedup": sum(v["predicted_dense"] for v in layers.values())
                            / sum(v["predicted"] for v in layers.values()),
                            "forms": {name: v["form"] for name, v in layers.items()},
                            "nodes": {name: v["nodes"] for name, v in layers.items()}, "reverted": result.reverted}
            if found is not None:
                runs[method]["search"] = found.as_dict()
    report = {"date": datetime.date.today().isoformat(), "net": args.net, "target": args.target,
              "settings": {k: v for k, v in vars(args).items() if k != "out"},
              "data": data.name, "dense_test_accuracy": runs[methods[0]]["test"]["dense"], "methods": {}}
    if spec.parallelism == "low":
        with tempfile.TemporaryDirectory() as tmp:
            dense = firmware(args.net, model, dict.fromkeys(paper_nets.layer_kinds(args.net), "dense"), Path(tmp) / "d")
            report["dense_cycles"] = dense["cycles"]
            report["dense_flash"] = dense["flash_bytes"]
            for method, run in runs.items():
                built = firmware(args.net, run["model"], None if method == "scalpel" else run["forms"], Path(tmp) / method)
                run.update(cycles=built["cycles"], speedup=dense["cycles"] / built["cycles"],
                           flash_bytes=built["flash_bytes"], size_vs_dense=built["flash_bytes"] / dense["flash_bytes"])
    if spec.parallelism == "moderate":
        report["measured"] = measure_cpu(model, {m: run["model"] for m, run in runs.items()}, spec,
                                         [int(b) for b in args.batches.split(",")])
    if "scalpel" in runs:  # "at equal or better accuracy": Scalpel against each baseline, image by image
        correct = {method: onnx_correct(run["model"], data) for method, run in runs.items()}
        report["scalpel_vs"] = {method: paired_difference(correct[method], correct["scalpel"])
                                for method in runs if method != "scalpel"}
    for method, run in runs.items():
        report["methods"][method] = {k: v for k, v in run.items() if k != "model"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_pruning_{args.net}_{args.target}" + (f"_seed{args.seed}" if args.seed else "")
    for method, run in runs.items():  # kept, to score or time them again later
        onnx.save(run["model"], out / f"{stem}_{method}.onnx")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    print_report(report)
    plot(report, out / f"{stem}.png")


def prune_once(model, spec, data, **options):
    """`pruning.prune_onnx`, with no search to report."""
    return (*pruning.prune_onnx(model, spec, data, **options), None)


def scalpel_search(search: dict, model, spec, data, **options):
    """Scalpel's run with its fraction searched (`sparsity_search.search_onnx`, `search` its
    ranges, trials and per_layer), from the model every method starts from."""
    pruned, result, test, found = search_onnx(model, spec, data, **search, **options)
    if result is None:
        sys.exit("bench_pruning: no searched fraction kept the accuracy (see the trials above); lower --search-range")
    return pruned, result, test, found


def cuts_groups(model, spec) -> bool:
    """Whether Scalpel's gradual pruning has a layer to cut in groups on `spec` (not the output layer)."""
    from scalpel_tvm.int16_net import read_chain

    return bool(cut_in_groups(pruning.layer_strategy(spec, read_chain(model)[1])))


def measure_cpu(dense_model, models: dict, spec, batches, rounds: int = 15, logs=None) -> dict:
    """Per batch: µs per call (medians of interleaved rounds) of the dense model and of each
    method's model through `Pass` on this CPU (`spec` one it can run), each model's speedup over
    dense, and its largest output difference against the same model compiled without the pass.
    A model keyed by a baseline's name (traditional, optimized) is also timed as it deploys.
    `logs`: a tuning log directory for every model's plan and kernels (default: the shipped log)."""
    import tvm
    from onnx import numpy_helper
    from tqdm import tqdm

    from scalpel_tvm import Pass, plan
    from scalpel_tvm.onnx_import import import_onnx, input_shapes
    from scalpel_tvm.timing import cpu_vm, median_us, vm_timer

    out = {}
    for batch in tqdm(batches, desc="time on this CPU", unit="batch"):
        (shape,) = input_shapes(dense_model, batch).values()
        x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(shape).astype("float32"))
        vms, diffs, forms = {"dense": cpu_vm(Pass(spec, logs=logs)(import_onnx(dense_model, batch)), spec)}, {}, {}
        for method, model in models.items():
            mod = import_onnx(model, batch)
            reference = cpu_vm(mod, spec)["main"](x).numpy()
            layer_plan = plan(mod, spec, logs=logs)
            variants = {method: layer_plan}
            if method in ("traditional", "optimized"):
                weights = {i.name.removesuffix(".weight"): numpy_helper.to_array(i)
                           for i in model.graph.initializer if i.name.endswith(".weight")}
                fc = {lp.name for lp in layer_plan.layers if lp.kind == "fc"}
                deployed = pruning.baseline_forms(method, weights)
                variants = {method: layer_plan.with_forms({k: f for k, f in deployed.items() if k in fc}),
                            f"{method} as Pass plans it": layer_plan}
            for name, variant in variants.items():
                vms[name] = cpu_vm(Pass(spec, plan=variant, logs=logs)(mod), spec)
                diffs[name] = float(np.abs(vms[name]["main"](x).numpy() - reference).max())
                forms[name] = {lp.name: lp.chosen for lp in variant.layers}
        us = median_us({name: vm_timer(vm, x) for name, vm in vms.items()}, budget_s=0.2 * rounds, rounds=rounds)
        out[str(batch)] = {"us": us, "speedup": {name: us["dense"] / t for name, t in us.items() if name != "dense"},
                           "max_abs_diff_vs_no_pass": diffs, "forms": forms}
    return out


def print_report(report: dict) -> None:
    measured = "dense_cycles" in report
    print(f"{report['net']} on {report['data']} for {report['target']} ({report['date']}); dense test accuracy "
          f"{report['dense_test_accuracy']:.2%}" + (f", {report['dense_cycles']:,} cycles (estimate)" if measured else ""))
    print(f"{'method':<13}{'test acc':>10}{'removed':>10}{'predicted x':>13}" + (f"{'cycles':>12}{'cycles x':>10}{'size':>8}" if measured else "")
          + "   test change vs dense")
    for method, run in report["methods"].items():
        line = f"{method:<13}{run['test']['pruned']:>10.2%}{run['weights_removed']:>10.1%}{run['predicted_speedup']:>12.2f}x"
        if measured:
            line += f"{run['cycles']:>12,}{run['speedup']:>9.2f}x{run['size_vs_dense']:>8.1%}"
        print(line + (f"   {describe(run['test']['paired'])}" if "paired" in run["test"] else ""))
    if "search" in report["methods"].get("scalpel", {}):
        print("\n".join(search_lines(report["methods"]["scalpel"]["search"])))
    for method, paired in report.get("scalpel_vs", {}).items():
        print(f"scalpel's test accuracy against {method}'s: {describe(paired)}")
    for batch, timed in report.get("measured", {}).items():
        print(f"through Pass on this CPU, batch {batch} (medians of interleaved rounds): dense {timed['us']['dense']:.1f} us")
        for name, speedup in timed["speedup"].items():
            forms = ", ".join(f"{layer} {form}" for layer, form in timed["forms"][name].items())
            print(f"  {name:<32}{timed['us'][name]:>9.1f} us{speedup:>7.2f}x   max diff "
                  f"{timed['max_abs_diff_vs_no_pass'][name]:.1e}   {forms}")


COLORS = {"scalpel": "tab:green", "traditional": "tab:grey", "optimized": "tab:blue"}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(report["methods"])
    runs = report["methods"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    key = "speedup" if "dense_cycles" in report else "predicted_speedup"
    if "measured" in report:  # predicted and measured side by side, per batch
        bars = {"predicted (cost model, batch 1)": [runs[m][key] for m in methods]}
        bars.update({f"measured, batch {b}": [t["speedup"][m] for m in methods] for b, t in report["measured"].items()})
        width = 0.8 / len(bars)
        for i, (label, values) in enumerate(bars.items()):
            left.bar(np.arange(len(methods)) + (i - (len(bars) - 1) / 2) * width, values, width, label=label)
        left.set_xticks(np.arange(len(methods)), methods)
        left.legend(fontsize=8)
        left.set_ylabel("speedup over dense")
    else:
        left.bar(methods, [runs[m][key] for m in methods], color=[COLORS[m] for m in methods])
        left.set_ylabel("speedup over dense" + (" (cycle estimate)" if key == "speedup" else " (cost model)"))
    left.set_title(f"{report['net']} on {report['target']}")
    right.bar(methods, [100 * runs[m]["test"]["pruned"] for m in methods], color=[COLORS[m] for m in methods])
    right.axhline(100 * report["dense_test_accuracy"], color="black", linestyle="--", label="dense")
    right.set_ylim(100 * report["dense_test_accuracy"] - 2, 100 * report["dense_test_accuracy"] + 1)
    right.set_ylabel("test accuracy (%)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
