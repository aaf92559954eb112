"""Trained neuron order against `neuron_order.similar_order`, one-shot, side by side in one run.

    python python/bench_neuron_order.py --out out      # ~30 s

Trains LeNet-300-100 on MNIST (`--train-epochs`), then for each fraction of groups cut keeps, in
fc1 and fc2, the same number of x86 G×1 groups (8 outputs sharing an input, by root-mean-square)
two ways — the neurons in their trained order, and first reordered by `similar_order` (exact: the
reordered dense network computes the same) — and reports the squared weight magnitude kept and
test accuracy at once and after one epoch of retraining with the cut weights held at zero (same
seed both ways). Writes `bench_neuron_order.json` and `.png`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

from scalpel_tvm import TargetSpec, datasets, neuron_order, pruning, torch_chain
from scalpel_tvm.int16_net import read_chain

ORDERS = ("trained", "similar")


def main():
    import bench_pruning

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-epochs", type=float, default=3.0)
    parser.add_argument("--cut", type=float, nargs="+", default=[0.8, 0.9, 0.93, 0.95])
    parser.add_argument("--out", default="out")
    args = parser.parse_args()
    torch = torch_chain._torch()
    data = datasets.load("mnist")
    validation = pruning.validation_images(data)
    model = bench_pruning.trained("lenet_300_100", data, args.train_epochs, validation)
    _, layers = read_chain(model)
    strategy = pruning.layer_strategy(TargetSpec.preset("x86-avx2"), layers)
    dense_accuracy = torch_chain.accuracy(torch_chain.chain_net(model), data.test_x, data.test_y)
    rows = []
    for cut in args.cut:
        for way in ORDERS:
            net = torch_chain.chain_net(model)
            if way == "similar":
                neuron_order.reorder_for_groups(net, strategy)
            weights = torch_chain.weights(net)
            masks = {}
            for name in ("fc1", "fc2"):
                s = strategy[name]
                keep = round(s.alive(np.ones_like(weights[name])) * (1 - cut))
                masks[name] = s.mask(weights[name], keep, "rms").astype(np.float32)
                net.weight(name).data.mul_(torch.from_numpy(masks[name]))
            row = {"cut": cut, "order": way,
                   "magnitude_kept": sum(float(((weights[n] * m) ** 2).sum()) for n, m in masks.items())
                   / sum(float((weights[n] ** 2).sum()) for n in masks),
                   "accuracy_at_once": torch_chain.accuracy(net, data.test_x, data.test_y)}
            torch_chain.train(net, data.train_x[:-validation], data.train_y[:-validation], epochs=1, masks=masks,
                              lr=3e-4, seed=1, desc=f"{way} {cut:.0%}")
            row["accuracy_retrained"] = torch_chain.accuracy(net, data.test_x, data.test_y)
            rows.append(row)
    report = {"date": datetime.date.today().isoformat(), "net": "lenet_300_100", "groups": "x86 G×1, G = 8",
              "dense_accuracy": dense_accuracy, "train_epochs": args.train_epochs, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_neuron_order.json").write_text(json.dumps(report, indent=2))
    print(f"LeNet-300-100, x86 groups of 8 outputs in fc1 and fc2 ({report['date']}); dense test accuracy "
          f"{dense_accuracy:.2%}")
    print(f"{'cut':>6} {'order':<9}{'magnitude':>11}{'at once':>9}{'retrained':>11}")
    for row in rows:
        print(f"{row['cut']:>6.0%} {row['order']:<9}{row['magnitude_kept']:>11.3f}{row['accuracy_at_once']:>9.2%}"
              f"{row['accuracy_retrained']:>11.2%}")
    plot(report, out / "bench_neuron_order.png")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for way in ORDERS:
        rows = [r for r in report["rows"] if r["order"] == way]
        x = [100 * r["cut"] for r in rows]
        left.plot(x, [r["magnitude_kept"] for r in rows], "o-", label=f"{way} order")
        right.plot(x, [100 * r["accuracy_retrained"] for r in rows], "o-", label=f"{way} order")
    left.set_xlabel("groups cut (%)")
    left.set_ylabel("squared magnitude kept")
    right.set_xlabel("groups cut (%)")
    right.set_ylabel("test accuracy after one epoch (%)")
    for ax in (left, right):
        ax.legend()
    fig.suptitle("LeNet-300-100: neurons reordered before G×1 group pruning")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
