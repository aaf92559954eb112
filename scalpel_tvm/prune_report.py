"""The pruning frontend's report: JSON, a per-layer table, and a plot of the rounds (accuracy
against weights removed, like the paper's figure 17) and of each layer's group sparsity."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path


def as_dict(result, test: dict, target: str, settings: dict) -> dict:
    return {"target": target, "settings": settings, "test_accuracy": test,
            "validation_accuracy": {"baseline": result.baseline_accuracy, "final": result.final_accuracy,
                                    "confirmation_baseline": result.confirmed_baseline,
                                    "confirmation_final": result.confirmed_accuracy},
            "rounds_walked_back": result.walked_back,
            "weights_removed": result.weights_removed,
            "layers": result.layers, "rounds": [asdict(r) for r in result.rounds]}


def table(report: dict) -> str:
    lines = [f"{'layer':<10}{'N x K':>12}{'method':>8}{'groups cut':>12}{'weights kept':>14}"
             f"{'dense':>12}{'pruned':>12}  form"]
    for name, layer in report["layers"].items():
        unit = layer["unit"]
        fmt = (lambda v: f"{v / 1e3:.1f}k") if unit == "cycles" else (lambda v: f"{v * 1e6:.1f}us")
        lines.append(f"{name:<10}{'x'.join(map(str, layer['shape_nk'])):>12}{layer['method']:>8}"
                     f"{layer.get('group_sparsity', 0):>12.1%}{layer['weights_kept']:>14.1%}"
                     f"{fmt(layer['predicted_dense']):>12}{fmt(layer['predicted']):>12}  {layer['form']}"
                     + ("" if layer["method"] == "simd" else f"  ({layer['reason']})"))
    test, val = report["test_accuracy"], report["validation_accuracy"]
    if report["rounds_walked_back"]:
        lines.append(f"{report['rounds_walked_back']} kept rounds walked back: images no round was judged on "
                     "disagreed with the validation images (the accuracy target could not be kept further)")
    lines.append(f"weights removed {report['weights_removed']:.1%} of the prunable layers in {len(report['rounds'])} "
                 f"rounds; validation accuracy {val['baseline']:.2%} -> {val['final']:.2%}, "
                 f"test {test['dense']:.2%} -> {test['pruned']:.2%} (predicted times: the target's cost model)")
    return "\n".join(lines)


def write(report: dict, directory: Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "prune.json").write_text(json.dumps(report, indent=2))
    (directory / "prune.txt").write_text(table(report) + "\n")
    plot(report, directory / "prune.png")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    rounds = report["rounds"]
    kept = [r for r in rounds if r["kept"]]
    removed = [0.0] + [r["weights_removed"] for r in kept]
    accuracy = [report["validation_accuracy"]["baseline"]] + [r["accuracy"] for r in kept]
    left.plot([100 * r for r in removed], [100 * a for a in accuracy], "o-", markersize=3, label="kept rounds")
    undone = [r for r in rounds if not r["kept"]]
    left.plot([100 * r["weights_removed"] for r in undone], [100 * r["accuracy"] for r in undone], "x",
              color="red", label="undone rounds")
    if report["rounds_walked_back"]:
        left.axvline(100 * report["weights_removed"], color="green", linestyle=":",
                     label=f"result ({report['rounds_walked_back']} rounds walked back)")
    left.axhline(100 * (report["validation_accuracy"]["baseline"] - report["settings"]["tolerance"]),
                 color="grey", linestyle="--", label="accuracy floor")
    left.set_xlabel("weights removed (%)")
    left.set_ylabel("validation accuracy (%)")
    left.set_title("validation accuracy vs pruning, round by round")
    left.legend()
    names = list(report["layers"])
    right.bar(names, [100 * report["layers"][n].get("group_sparsity", 0) for n in names])
    right.set_ylabel("groups removed (%)")
    right.set_title(f"group sparsity per layer ({report['target']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
