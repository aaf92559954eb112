"""Aligned (Scalpel) against unaligned (Lee et al.: dynamic program, greedy) groups of 2 on a trained
LeNet-300-100, at the same number of stored pairs, side by side in one run.

    python python/bench_unaligned.py --out out      # a few minutes

Trains LeNet-300-100 on MNIST (`--train-epochs`), then for each fraction of pairs removed keeps,
in every layer, the same number of pairs three ways — aligned pairs by root-mean-square, unaligned
pairs by the dynamic program, unaligned pairs greedily — and reports the squared weight
magnitude kept, test accuracy at once and after one epoch of retraining with the pruned weights
held at zero (same seed for every way), and the Cortex-M4 cost model's cycles for the network
in the pairs format (unaligned pairs pay the unaligned-load cycle; `m4_cost.unaligned_pairs`).
Writes `bench_unaligned.json` and `bench_unaligned.png`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from scalpel_tvm import datasets, m4_cost, pruning, torch_chain
from scalpel_tvm.int16_net import read_chain
from scalpel_tvm.unaligned_groups import cover_count, unaligned_mask

WAYS = ("aligned", "dp", "greedy")


def masks_for(weights: dict, removed: float, way: str) -> dict:
    out = {}
    for name, w in weights.items():
        budget = max(1, round((1 - removed) * w.shape[0] * -(-w.shape[1] // 2)))
        out[name] = (pruning.group_mask(w, budget, 2, "1xg") if way == "aligned"
                     else unaligned_mask(w, budget, 2, way)).astype(np.float32)
    return out


def main():
    import bench_pruning

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-epochs", type=float, default=3.0)
    parser.add_argument("--removed", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9, 0.95])
    parser.add_argument("--out", default="out")
    args = parser.parse_args()
    data = datasets.load("mnist")
    validation = pruning.validation_images(data)
    model = bench_pruning.trained("lenet_300_100", data, args.train_epochs, validation)
    _, layers = read_chain(model)
    windows = {layer["name"]: layer["window"] for layer in layers}
    base = torch_chain.chain_net(model)
    weights = torch_chain.weights(base)
    dense_accuracy = torch_chain.accuracy(base, data.test_x, data.test_y)
    cost = m4_cost.CortexMCost.for_core("cortex-m4")
    rows = []
    for removed in args.removed:
        for way in WAYS:
            masks = masks_for(weights, removed, way)
            net = torch_chain.chain_net(model)
            for name, mask in masks.items():
                net.weight(name).data.mul_(torch_chain._torch().from_numpy(mask))
            pruned = {name: w * masks[name] for name, w in weights.items()}
            row = {"removed": removed, "way": way,
                   "pairs": sum(cover_count(w, 2) for w in pruned.values()),
                   "magnitude_kept": sum(float((w ** 2).sum()) for w in pruned.values())
                   / sum(float((w ** 2).sum()) for w in weights.values()),
                   "accuracy_at_once": torch_chain.accuracy(net, data.test_x, data.test_y),
                   "predicted_cycles": sum(cost.cycles(SimpleNamespace(op="fc", w_nk=w, window=windows[n]), "gsparse2")
                                           for n, w in pruned.items())}
            torch_chain.train(net, data.train_x[:-validation], data.train_y[:-validation], epochs=1, masks=masks,
                              lr=3e-4, seed=1, desc=f"{way} {removed:.0%}")
            row["accuracy_retrained"] = torch_chain.accuracy(net, data.test_x, data.test_y)
            rows.append(row)
            print(f"{removed:>5.0%} {way:<8} pairs {row['pairs']:>7} magnitude kept {row['magnitude_kept']:.3f} "
                  f"accuracy {row['accuracy_at_once']:.2%} -> {row['accuracy_retrained']:.2%} "
                  f"cycles {row['predicted_cycles']:,.0f}", file=sys.stderr)
    report = {"date": datetime.date.today().isoformat(), "net": "lenet_300_100", "dense_accuracy": dense_accuracy,
              "train_epochs": args.train_epochs, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_unaligned.json").write_text(json.dumps(report, indent=2))
    print_report(report)
    plot(report, out / "bench_unaligned.png")


def print_report(report: dict) -> None:
    print(f"LeNet-300-100, groups of 2, the same pairs per layer ({report['date']}); dense test accuracy "
          f"{report['dense_accuracy']:.2%}")
    print(f"{'removed':>8} {'way':<8}{'pairs':>8}{'magnitude':>11}{'at once':>9}{'retrained':>11}{'M4 cycles':>11}")
    for row in report["rows"]:
        print(f"{row['removed']:>8.0%} {row['way']:<8}{row['pairs']:>8}{row['magnitude_kept']:>11.3f}"
              f"{row['accuracy_at_once']:>9.2%}{row['accuracy_retrained']:>11.2%}{row['predicted_cycles']:>11,.0f}")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for way in WAYS:
        rows = [r for r in report["rows"] if r["way"] == way]
        x = [100 * r["removed"] for r in rows]
        axes[0].plot(x, [r["magnitude_kept"] for r in rows], "o-", label=way)
        axes[1].plot(x, [100 * r["accuracy_at_once"] for r in rows], "o-", label=way)
        axes[2].plot(x, [100 * r["accuracy_retrained"] for r in rows], "o-", label=way)
    for ax, title in zip(axes, ("squared magnitude kept", "test accuracy, no retraining (%)",
                                "test accuracy, 1 epoch retrained (%)")):
        ax.set_xlabel("pairs removed (%)")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
