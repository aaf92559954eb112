"""Pictures of what a person would rather see than read: the per-layer plan."""
from __future__ import annotations

import numpy as np


def plot_plan(layer_plan, path) -> None:
    """Per layer: estimated time of every candidate form, the chosen one outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    forms = sorted({c.form for lp in layer_plan.layers for c in lp.candidates},
                   key=lambda f: ("dense", "gsparse_gx1", "gsparse_1xg", "csr").index(f))
    width = 0.8 / len(forms)
    fig, ax = plt.subplots(figsize=(1.8 * len(layer_plan.layers) + 2.5, 3.8))
    for i, form in enumerate(forms):
        label = form
        for j, lp in enumerate(layer_plan.layers):
            found = [c for c in lp.candidates if c.form == form]
            if found:
                ax.bar(j + (i - (len(forms) - 1) / 2) * width, found[0].seconds * 1e6, width,
                       color=f"C{i}", label=label, linewidth=1.5,
                       edgecolor="black" if lp.chosen == form else "none")
                label = None  # one legend entry per form
    ax.set_xticks(np.arange(len(layer_plan.layers)),
                  [f"{lp.name}\n{lp.density:.0%} dense\n-{lp.removed_nodes} nodes" for lp in layer_plan.layers])
    ax.set_yscale("log")
    ax.set_ylabel("estimated us (log)")
    ax.set_title(f"plan for {layer_plan.target}: candidates per layer (chosen outlined)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
