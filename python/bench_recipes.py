"""How much the training recipe decides "no accuracy loss": the SIMD-aware loop on one network
for one target, from a short-trained and from a converged dense model, with the frontend's
training-schedule options, over several seeds.

    python python/bench_recipes.py [--net lenet_300_100] [--target x86-avx2] [--seeds 0 1 2] --out out
    python python/bench_recipes.py --variants converged+gradual-1xg converged+gradual-1xg+distill \
        converged+gradual-gx1 converged+gradual-gx1+distill --time --out out

Per seed it trains the network twice on MNIST (the training images `prune_onnx` does not hold
out): 3 epochs at a constant rate (`--train-epochs 3`, the recipe of the README's frontend
figures) and 8 epochs annealed (`--anneal`), which converges. Then it prunes through
`scalpel_tvm.pruning.prune_onnx` (two retraining epochs a round, `order_neurons`):

* short: the 3-epoch model, the loop as it is by default;
* short+finetune: the same and 4 final annealed epochs (`finetune=4`);
* converged: the 8-epoch model, the default loop (rounds at a constant 3e-4);
* converged+anneal: each round's retraining annealed from 1e-3 (`anneal=True`);
* converged+anneal+distill: and half of its loss from the unpruned model's outputs (`distill=True`);
* converged+gradual-1xg / converged+gradual-gx1: instead of the keep/undo rounds, gradual pruning
  to 93% of the groups of every layer but the output layer in 20 steps of one epoch, then 10 final
  annealed epochs (`sparsity=0.93, steps=20, epochs=1, finetune=10`), in groups of 8 inputs of one
  output (`orientation="1xg"`) or 8 outputs of one input (the x86 default); on a Cortex-M the
  1xg variants prune its own groups (pairs of inputs), and the gx1 ones are refused;
* converged+gradual-1xg+distill / converged+gradual-gx1+distill: the same with `distill=True`.

It prints and writes (`bench_recipes_<net>_<target>.json`, `.png`) each run's weights removed and
test accuracy against its own dense model. With `--time` (an x86 target this CPU runs) each
seed's pruned models are also compiled through `Pass` and timed side by side with the dense model
at batch 1 and 50 (`bench_pruning.measure_cpu`: medians of interleaved rounds), with the shipped
tuning log or `--logs DIR`. Each pruned model is written as
`bench_recipes_<net>_<target>_<variant>_seed<S>.onnx` (and each dense model as
`..._short-dense_seed<S>.onnx`, `..._converged-dense_seed<S>.onnx`), so their kernels can be
tuned (`scalpel tune --model ... --logs DIR`) and the run repeated with `--logs DIR` (a seed
prunes the same way every time). About 2.5 min a keep/undo run and 30 s a gradual one on this
2-core machine.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).parent))

from bench_pruning import measure_cpu, trained  # noqa: E402

from scalpel_tvm import datasets, pruning  # noqa: E402
from scalpel_tvm.demo import check_runs_here  # noqa: E402
from scalpel_tvm.gradual_pruning import parse_layer_sparsity  # noqa: E402
from scalpel_tvm.target import TargetSpec  # noqa: E402

VARIANTS = {
    "short": ("short", {}),
    "short+finetune": ("short", {"finetune": 4.0}),
    "converged": ("converged", {}),
    "converged+anneal": ("converged", {"anneal": True}),
    "converged+anneal+distill": ("converged", {"anneal": True, "distill": True}),
}
GRADUAL = {"sparsity": 0.93, "steps": 20, "epochs": 1.0, "finetune": 10.0}
for _orientation in ("1xg", "gx1"):
    VARIANTS[f"converged+gradual-{_orientation}"] = ("converged", {**GRADUAL, "orientation": _orientation})
    VARIANTS[f"converged+gradual-{_orientation}+distill"] = ("converged", {**GRADUAL, "orientation": _orientation,
                                                                         "distill": True})
TRAINING = {"short": {"epochs": 3.0}, "converged": {"epochs": 8.0, "anneal": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="lenet_300_100", choices=["lenet_300_100", "lenet5"])
    parser.add_argument("--target", default="x86-avx2")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=[v for v in VARIANTS if "gradual" not in v],
                        choices=list(VARIANTS), help="default: the keep/undo loop's five")
    parser.add_argument("--epochs", type=float, default=2.0,
                        help="retraining epochs per round (the gradual variants retrain one a step)")
    parser.add_argument("--time", action="store_true",
                        help="also time each pruned model through Pass against the dense one (x86)")
    parser.add_argument("--layer-sparsity", nargs="+", default=[], metavar="LAYER=FRACTION",
                        help="the gradual variants: these layers' own fractions, e.g. conv1=0.5")
    parser.add_argument("--logs", help="with --time: the tuning log directory (default: the shipped log)")
    parser.add_argument("--out", type=Path, default=Path("out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    spec = TargetSpec.preset(args.target)
    if args.time:
        check_runs_here(spec)
    if spec.parallelism != "moderate" and any("gradual-gx1" in v for v in args.variants):
        parser.error(f"the gx1 variants are for x86: {args.target}'s groups run along the inputs (use the 1xg ones)")
    data = datasets.load("mnist")
    runs = []
    for seed in args.seeds:
        models = {name: trained(args.net, data, validation=pruning.validation_images(data), seed=seed, **recipe)
                  for name, recipe in TRAINING.items()
                  if any(VARIANTS[v][0] == name for v in args.variants)}
        for start, model in models.items():  # the dense models, to tune their kernels alike
            onnx.save(model, args.out / f"bench_recipes_{args.net}_{args.target}_{start}-dense_seed{seed}.onnx")
        pruned_models = {}
        for variant in args.variants:
            start, options = VARIANTS[variant]
            if "sparsity" in options and args.layer_sparsity:
                options = {**options, "layer_sparsity": parse_layer_sparsity(args.layer_sparsity)}
            if spec.parallelism != "moderate":  # the groups' direction is the target's own
                options = {key: value for key, value in options.items() if key != "orientation"}
            began = time.time()
            pruned_models[variant], result, test = pruning.prune_onnx(models[start], args.target, data, seed=seed,
                                                                      order_neurons=True,
                                                                      **{"epochs": args.epochs, **options})
            layers = result.layers.values()
            run = {"variant": variant, "seed": seed, "dense_test": test["dense"], "pruned_test": test["pruned"],
                   "change_points": round(100 * (test["pruned"] - test["dense"]), 2),
                   "change_interval95_points": [round(100 * v, 2) for v in test["paired"]["interval95"]],
                   "weights_removed": result.weights_removed, "walked_back": result.walked_back,
                   "finetuned": result.finetuned, "rounds": len(result.rounds),
                   "nodes_kept": {name: lay["nodes"] for name, lay in result.layers.items()},
                   "predicted_speedup": sum(lay["predicted_dense"] for lay in layers) / sum(lay["predicted"] for lay in layers),
                   "seconds": round(time.time() - began, 1)}
            runs.append(run)
            onnx.save(pruned_models[variant],
                      args.out / f"bench_recipes_{args.net}_{args.target}_{variant}_seed{seed}.onnx")
            print(f"seed {seed} {variant:<26} dense {run['dense_test']:.2%}  pruned {run['pruned_test']:.2%} "
                  f"({run['change_points']:+.2f}, 95% {run['change_interval95_points'][0]:+.2f} to "
                  f"{run['change_interval95_points'][1]:+.2f})  removed {run['weights_removed']:.1%}  "
                  f"predicted {run['predicted_speedup']:.2f}x  {run['seconds']:.0f} s", flush=True)
        if args.time:
            measured = measure_cpu(next(iter(models.values())), pruned_models, spec, [1, 50], logs=args.logs)
            for run in runs[-len(args.variants):]:
                run["measured_speedup"] = {batch: m["speedup"][run["variant"]] for batch, m in measured.items()}
                run["forms"] = {batch: m["forms"][run["variant"]] for batch, m in measured.items()}
                run["measured_us"] = {batch: {"dense": m["us"]["dense"], "pruned": m["us"][run["variant"]]}
                                      for batch, m in measured.items()}
                print(f"seed {seed} {run['variant']:<26} through Pass: "
                      + ", ".join(f"batch {b} {x:.2f}x" for b, x in run["measured_speedup"].items())
                      + " faster than dense  (" + ", ".join(f"{k} {v}" for k, v in run["forms"]["1"].items()) + ")",
                      flush=True)
    stem = args.out / f"bench_recipes_{args.net}_{args.target}"
    stem.with_suffix(".json").write_text(json.dumps(
        {"net": args.net, "target": args.target, "date": datetime.date.today().isoformat(),
         "layer_sparsity": parse_layer_sparsity(args.layer_sparsity),
         "retraining_epochs": args.epochs, "training": TRAINING, "runs": runs}, indent=2))
    _plot(runs, stem.with_suffix(".png"), args.net, args.target)
    print(f"wrote {stem}.json and .png")


def _plot(runs, path, net, target) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        ax.plot([100 * r["weights_removed"] for r in mine], [r["change_points"] for r in mine], "o", label=variant)
    ax.axhline(-0.1, color="k", lw=0.8, ls="--", label="tolerance (−0.1 points)")
    ax.set_xlabel("weights removed (%)")
    ax.set_ylabel("test accuracy change vs its dense model (points)")
    ax.set_title(f"{net} for {target}: one point per seed")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
