"""Gradual pruning to a named sparsity (Zhu & Gupta, "To prune, or not to prune", 2017), in the
groups the target's kernels skip.

Scalpel's own loop (`pruning.prune_simd`) cuts one layer at a time and undoes a cut that one
retraining cannot recover. From a converged model that loop stops early: a single cut of 30%
of a layer's groups costs more than an epoch wins back, and the layer is declared done. Here
every pruned layer is instead cut a little at every step, along the cubic ramp
s_t = s·(1 − (1 − t/n)³) — large cuts while the network still has slack, small ones near the
end — with retraining after each step and nothing undone. The user names the sparsity; the run
reports the accuracy it kept (README, "Which groups keep accuracy").

The model's output layer is left whole: its few weights (1,000 of LeNet-300-100's 266,200) decide
every class, and pruning them costs accuracy and buys little time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ScalpelError


def ramp(sparsity: float, steps: int) -> list[float]:
    """Fraction of each layer's groups removed after each of `steps` steps; the last is `sparsity`."""
    if not 0 < sparsity < 1:
        raise ScalpelError(f"sparsity is the fraction of each layer's groups removed, in (0, 1); got {sparsity}")
    if steps < 1:
        raise ScalpelError(f"steps must be at least 1; got {steps}")
    return [sparsity * (1 - (1 - t / steps) ** 3) for t in range(1, steps + 1)]


def gradual_layers(strategy: dict) -> list[str]:
    """The layers gradual pruning cuts: those pruned in groups (or single weights), in the
    model's order, but the output layer (module doc). None is an error."""
    from .pruning import GROUP_METHODS

    output = list(strategy)[-1] if strategy else None
    names = [name for name, s in strategy.items() if s.method in GROUP_METHODS and name != output]
    if not names:
        raise ScalpelError("gradual pruning (--sparsity) found no layer to cut: it leaves the output layer whole, and "
                           "no other layer is pruned in groups on this target (see the strategy's reasons); leave "
                           "--sparsity out")
    return names


def parse_layer_sparsity(pairs: list[str]) -> dict | None:
    """["conv1=0.5", ...] (the command line's LAYER=FRACTION) as {layer: fraction}."""
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            raise ScalpelError(f"a layer sparsity is LAYER=FRACTION, e.g. conv1=0.5; got {pair!r}") from None
    return out or None


@dataclass
class GradualState:
    """What `prune_gradual` carries from step to step: what a checkpoint holds."""
    result: object  # pruning.PruneResult
    masks: dict  # layer -> 0/1 mask of its weight
    step: int = 0  # steps done
    net: object = None  # the model's snapshot at the checkpoint


def layer_schedules(strategy: dict, sparsity: float, steps: int, layer_sparsity: dict | None = None) -> dict:
    """Each cut layer's ramp: to `sparsity`, or to its own fraction in `layer_sparsity` (a layer
    of a few hundred weights, such as a first conv, may want less). Refuses a name gradual
    pruning does not cut."""
    names = gradual_layers(strategy)
    unknown = sorted(set(layer_sparsity or {}) - set(names))
    if unknown:
        raise ScalpelError(f"a layer sparsity names {', '.join(unknown)}, which gradual pruning does not cut; it cuts "
                           f"{', '.join(names)}")
    return {name: ramp((layer_sparsity or {}).get(name, sparsity), steps) for name in names}


def prune_gradual(net_weights, set_mask, retrain, evaluate, snapshot, restore, strategy: dict, *, sparsity: float,
                  steps: int, layer_sparsity: dict | None = None, how: str = "rms", progress=None, confirm=None,
                  reference: tuple | None = None, checkpoint=None, resume: GradualState | None = None):
    """Cut every layer of `gradual_layers(strategy)` to (1 − s_t) of its groups at step t
    (`layer_schedules`), its least important groups first (`how`: rms, max or mean), and retrain
    after each step with the cut weights held at zero. The callables are `pruning.prune_simd`'s.
    Returns a `pruning.PruneResult` with one `Round` per step (layer: the layers cut, joined by "+").
    `checkpoint(GradualState)` is called after every step; `resume=` that state goes on."""
    from .pruning import Round, starting_result

    schedules = layer_schedules(strategy, sparsity, steps, layer_sparsity)
    names = list(schedules)
    weights = net_weights()
    total_groups = {name: strategy[name].alive(np.ones_like(weights[name])) for name in names}
    total_weights = sum(weights[name].size for name in names)
    if resume:
        state = resume
        restore(state.net)
    else:
        state = GradualState(starting_result(strategy, evaluate, confirm, reference),
                             {name: (weights[name] != 0).astype(np.float32) for name in names})
    result, masks = state.result, state.masks
    while state.step < steps:
        weights = net_weights()
        before = sum(strategy[name].alive(weights[name]) for name in names)
        for name in names:
            keep = max(1, int(np.ceil(total_groups[name] * (1 - schedules[name][state.step]))))
            masks[name] = masks[name] * strategy[name].mask(weights[name] * masks[name], keep, how)
            set_mask(name, masks[name])
        retrain(masks)
        state.step += 1
        weights = net_weights()
        removed = 1 - sum(float(masks[name].sum()) for name in names) / total_weights
        result.rounds.append(Round("+".join(names), before, sum(strategy[name].alive(weights[name]) for name in names),
                                   evaluate(), True, removed))
        if progress:
            progress(result.rounds[-1])
        if checkpoint:
            state.net = snapshot()
            checkpoint(state)
    result.final_accuracy = evaluate()
    result.confirmed_accuracy = confirm() if confirm else None
    result.weights_removed = 1 - sum(float(masks[name].sum()) for name in names) / total_weights
    return result
