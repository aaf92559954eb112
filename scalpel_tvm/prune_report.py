"""The pruning frontend's report: JSON, a per-layer table, and a plot of the rounds (accuracy
against weights removed, like the paper's figure 17; node pruning's accuracy against λ) and of
what each layer lost (groups for SIMD-aware layers, nodes for node-pruned ones)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from .gradual_pruning import gradual_target
from .paired_accuracy import describe


def as_dict(result, test: dict, target: str, settings: dict) -> dict:
    return {"target": target, "settings": settings, "test_accuracy": test,
            "validation_accuracy": {"baseline": result.baseline_accuracy, "final": result.final_accuracy,
                                    "confirmation_baseline": result.confirmed_baseline,
                                    "confirmation_final": result.confirmed_accuracy},
            "rounds_walked_back": result.walked_back, "reverted": result.reverted, "finetuned": result.finetuned,
            "weights_removed": result.weights_removed,
            "layers": result.layers, "rounds": [asdict(r) for r in result.rounds],
            "predicted_speedup": sum(lay["predicted_dense"] for lay in result.layers.values())
            / sum(lay["predicted"] for lay in result.layers.values()),
            "gains": gains(result.layers),
            "node_pruning": None if result.nodes is None else {
                "baseline": result.nodes.baseline_accuracy, "final": result.nodes.final_accuracy,
                "confirmation_final": result.nodes.confirmed_accuracy, "walked_back": result.nodes.walked_back,
                "nodes": result.nodes.nodes, "rounds": [asdict(r) for r in result.nodes.rounds]}}


def gains(layers: dict) -> dict:
    """Dense over pruned, summed over the layers, for every objective the layers were measured by."""
    if not all("measures" in layer for layer in layers.values()):
        return {}
    return {key: sum(layer["dense_measures"][key] for layer in layers.values())
            / sum(layer["measures"][key] for layer in layers.values()) for key in ("latency", "energy", "size")}


def table(report: dict) -> str:
    if "layers" not in report:  # a search in which no fraction held: nothing was pruned
        return "\n".join(search_lines(report["search"]))
    lines = [f"{'layer':<10}{'N x K':>12}{'method':>11}{'nodes kept':>12}{'groups cut':>12}{'weights kept':>14}"
             f"{'dense':>12}{'pruned':>12}  form"]
    for name, layer in report["layers"].items():
        unit = layer["unit"]
        fmt = {"cycles": lambda v: f"{v / 1e3:.1f}k", "s": lambda v: f"{v * 1e6:.1f}us",
               "pJ": lambda v: f"{v / 1e6:.2f}uJ", "bytes": lambda v: f"{v / 1e3:.1f}KB"}.get(unit, lambda v: f"{v:.3g}")
        groups = f"{layer['group_sparsity']:.1%}" if "group_sparsity" in layer else "-"
        lines.append(f"{name:<10}{'x'.join(map(str, layer['shape_nk'])):>12}{layer['method']:>11}"
                     f"{'/'.join(map(str, layer['nodes'][::-1])):>12}{groups:>12}{layer['weights_kept']:>14.1%}"
                     f"{fmt(layer['predicted_dense']):>12}{fmt(layer['predicted']):>12}  {layer['form']}"
                     + ("" if layer["method"] != "none" else f"  ({layer['reason']})"))
    test, val = report["test_accuracy"], report["validation_accuracy"]
    nodes = report.get("node_pruning")
    if nodes:
        lines.append(f"node pruning: {len(nodes['rounds'])} rounds, λ up to "
                     f"{max((r['penalty'] for r in nodes['rounds'] if r['kept']), default=0):.2g}; after removing the "
                     f"masked nodes and retraining, validation {nodes['baseline']:.2%} -> {nodes['final']:.2%}"
                     + (f", {nodes['walked_back']} rounds walked back" if nodes["walked_back"] else "")
                     + (f"; {sum(r.get('recovered', False) for r in nodes['rounds'])} rounds kept after a recovery round"
                        if any(r.get("recovered") for r in nodes["rounds"]) else ""))
    if report.get("reverted"):
        lines.append(f"given their unpruned weights back and retrained: {', '.join(report['reverted'])} "
                     + ("(kept more than half their weights: dense)" if report["settings"].get("method") == "optimized"
                        else f"(pruning them did not lower the predicted {report['settings'].get('objective', 'latency')})"))
    if report["rounds_walked_back"]:
        lines.append(f"{report['rounds_walked_back']} kept rounds walked back: images no round was judged on "
                     "disagreed with the validation images (the accuracy target could not be kept further)")
    if report.get("finetuned") is not None:
        lines.append(f"final retraining ({report['settings'].get('finetune', '?')} epochs, annealed): "
                     + ("kept" if report["finetuned"] else "undone, the confirmation images scored it lower"))
    rounds = len(report["rounds"]) + (len(nodes["rounds"]) if nodes else 0)
    sparsity, node_sparsity = report["settings"].get("sparsity"), report["settings"].get("node_sparsity")
    if (sparsity or node_sparsity) and val["final"] < val["baseline"] - report["settings"]["tolerance"]:
        lines.append(f"validation accuracy ended below the tolerance ({100 * report['settings']['tolerance']:.2g} "
                     "points): choose a lower --sparsity / --node-sparsity, more --steps or more --finetune epochs")
    if report["weights_removed"] == 0:
        lines.append(f"no round kept accuracy within the tolerance ({100 * report['settings']['tolerance']:.2g} points): "
                     "the model is returned unpruned; allow more (--tolerance) or retrain longer (--epochs)")
    how = f"{rounds} rounds"
    if sparsity or node_sparsity:
        own = report["settings"].get("layer_sparsity") or {}
        how = (f"{len(report['rounds'])} gradual steps to {gradual_target(sparsity, node_sparsity)}"
               + (" (" + ", ".join(f"{name} {value:.0%}" for name, value in own.items()) + ")" if own else "")
               + (f" after {len(nodes['rounds'])} node-pruning rounds" if nodes else ""))
    lines.append(f"weights removed {report['weights_removed']:.1%} of the prunable layers in {how}; "
                 f"validation accuracy {val['baseline']:.2%} -> {val['final']:.2%}, "
                 f"test {test['dense']:.2%} -> {test['pruned']:.2%}")
    if test.get("paired"):
        lines.append(f"test accuracy change: {describe(test['paired'])}")
    objective = report["settings"].get("objective", "latency")
    if report.get("gains"):
        g = report["gains"]
        lines.append(f"dense / pruned (chosen by {objective}): latency {g['latency']:.2f}x (the target's cost model), "
                     f"energy {g['energy']:.2f}x, size {g['size']:.2f}x (objectives.py)")
    else:
        lines.append(f"predicted {objective}: {report['predicted_speedup']:.2f}x lower than dense")
    if report.get("search"):
        lines += search_lines(report["search"])
    return "\n".join(lines)


def trial_line(t: dict) -> str:
    """One trial of a fraction search (`sparsity_search.Trial` as a dict): its accuracy changes,
    weights removed, predicted speedup, and whether it held."""
    confirmed = "" if t["confirmed"] is None else f", confirmation {100 * (t['confirmed'] - t['confirmed_baseline']):+.2f}"
    tested = "" if not t["test"] else f", test {100 * (t['test']['pruned'] - t['test']['dense']):+.2f}"
    return (f"{t['fraction']:6.1%}: validation {100 * (t['accuracy'] - t['baseline']):+.2f} points{confirmed}{tested}, "
            f"weights removed {t['weights_removed']:.1%}, predicted {t['predicted_speedup']:.2f}x: "
            + ("held" if t["held"] else "lost"))


def search_lines(search: dict) -> list[str]:
    """Every trial of a fraction search (`sparsity_search`), in the order of their fractions; of a
    per-layer search, layer by layer in the order they were searched."""
    if "per_layer" in search:
        lines = [f"searched each layer's own fraction of the {search['of']}, the slowest left first:"]
        for stage in search["per_layer"]:
            lines += [f"{stage['layer']}: {line}" if i == 0 else "  " + line
                      for i, line in enumerate(search_lines(stage))]
        chosen = search["chosen"] or {}
        lines.append("chosen: " + ", ".join(f"{stage['layer']} {chosen[stage['layer']]:.1%}" if stage["layer"] in chosen
                                            else f"{stage['layer']} whole" for stage in search["per_layer"]))
        return lines
    low, high = search["range"]
    lines = [f"searched the fraction of the {search['of']} in ({low:.0%}, {high:.0%}) by bisection, "
             f"{len(search['trials'])} gradual runs from the same trained model, each kept if its accuracy held "
             f"within {100 * search['tolerance']:.2g} points on the deciding and the confirmation images:"]
    lines += ["  " + trial_line(t) for t in sorted(search["trials"], key=lambda t: t["fraction"])]
    if search["chosen"] is None and search.get("layer"):
        lines.append(f"no fraction held: {search['layer']} stays whole")
    elif search["chosen"] is None:
        lines.append(f"no fraction held: the model is returned trained and unpruned; lower the range "
                     f"(--search-range {low}:{min(search['trials'], key=lambda t: t['fraction'])['fraction']}), "
                     "allow more (--tolerance) or retrain longer (--epochs, --steps, --finetune)")
    else:
        lines.append(f"chosen: {search['chosen']:.1%} of the {search['of']}, the largest fraction that held")
    return lines


def write(report: dict, directory: Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "prune.json").write_text(json.dumps(report, indent=2))
    (directory / "prune.txt").write_text(table(report) + "\n")
    if "layers" in report:
        plot(report, directory / "prune.png")
    if report.get("search"):
        plot_search(report["search"], directory / "search.png")


def plot_search(search: dict, path: Path) -> None:
    """Validation accuracy's change against the fraction, per trial, with the tolerance and the
    choice: where the edge the bisection found lies, and how noisy the trials around it are."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = search.get("per_layer", [search])
    fig, axes = plt.subplots(1, len(stages), figsize=(7 * len(stages), 4), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        _plot_trials(ax, stage)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot_trials(ax, search: dict) -> None:
    trials = sorted(search["trials"], key=lambda t: t["fraction"])
    for held, style, label in ((True, "o", "held"), (False, "x", "lost")):
        chosen = [t for t in trials if t["held"] == held]
        ax.plot([100 * t["fraction"] for t in chosen], [100 * (t["accuracy"] - t["baseline"]) for t in chosen],
                style, color="tab:green" if held else "tab:red", label=f"deciding images, {label}")
    confirmed = [t for t in trials if t["confirmed"] is not None]
    ax.plot([100 * t["fraction"] for t in confirmed],
            [100 * (t["confirmed"] - t["confirmed_baseline"]) for t in confirmed],
            "s", mfc="none", color="grey", label="confirmation images")
    for t in trials:
        ax.annotate(f" {t['predicted_speedup']:.2f}x", (100 * t["fraction"], 100 * (t["accuracy"] - t["baseline"])),
                    fontsize=7)
    ax.axhline(-100 * search["tolerance"], color="grey", linestyle="--", label="tolerance")
    if search["chosen"] is not None:
        ax.axvline(100 * search["chosen"], color="tab:green", linestyle=":", label="chosen")
    ax.set_xlabel(f"fraction of the {search['of']} removed (%)")
    ax.set_ylabel("accuracy change vs unpruned (points)")
    layer = f" of {search['layer']}" if search.get("layer") else ""
    ax.set_title(f"fraction search{layer} (labels: predicted speedup)")
    ax.legend(fontsize=7)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = report.get("node_pruning")
    fig, axes = plt.subplots(1, 3 if nodes else 2, figsize=(16 if nodes else 11, 4))
    left, right = axes[0], axes[-1]
    if nodes:
        _plot_node_rounds(axes[1], nodes, report["settings"]["tolerance"])
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
    layers = report["layers"]
    names = list(layers)
    removed = [100 * layers[n]["group_sparsity"] if "group_sparsity" in layers[n]
               else 100 * (1 - layers[n]["nodes"][1] / layers[n]["nodes"][0]) for n in names]
    bars = right.bar(names, removed)
    for bar, n in zip(bars, names):
        bar.set_color({"simd": "tab:blue", "node": "tab:orange"}.get(layers[n]["method"], "grey"))
    right.set_ylabel("removed (%): groups (blue) / nodes (orange)")
    right.set_title(f"what each layer lost ({report['target']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot_node_rounds(ax, nodes: dict, tolerance: float) -> None:
    rounds = nodes["rounds"]
    kept = [r for r in rounds if r["kept"]]
    ax.semilogx([r["penalty"] for r in kept], [100 * r["accuracy"] for r in kept], "o-", label="kept rounds")
    ax.semilogx([r["penalty"] for r in rounds if not r["kept"]], [100 * r["accuracy"] for r in rounds if not r["kept"]],
                "x", color="red", label="undone rounds")
    for r in kept:
        ax.annotate(" ".join(str(c) for c in r["alive"].values()), (r["penalty"], 100 * r["accuracy"]), fontsize=7)
    ax.axhline(100 * (nodes["baseline"] - tolerance), color="grey", linestyle="--", label="accuracy floor")
    ax.set_xlabel("L1 penalty λ on the masks")
    ax.set_ylabel("validation accuracy, masked (%)")
    ax.set_title("node pruning (labels: nodes kept per layer)")
    ax.legend()
