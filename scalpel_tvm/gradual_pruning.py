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

The node-pruned layers (a CPU's convs, a GPU's layers) can join the ramp too (`node_sparsity`):
their least important filters or neurons go whole, bias and the consumer's inputs with them,
instead of going through the mask layers' rounds. Those rounds stop where one rise of the L1
penalty costs more than a retraining wins back; from a converged LeNet-5 that was 1 of conv1's 20
filters and 9 of conv2's 50, where the paper removes 50% and 68% (README). Nodes and groups are
cut together, step by step, not convs first: every step retrains both.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ScalpelError


def ramp(sparsity: float, steps: int) -> list[float]:
    """Fraction of each layer's groups (or nodes) removed after each of `steps` steps; the last is `sparsity`."""
    if not 0 < sparsity < 1:
        raise ScalpelError(f"sparsity is the fraction of each layer's groups (or nodes) removed, in (0, 1); "
                           f"got {sparsity}")
    if steps < 1:
        raise ScalpelError(f"steps must be at least 1; got {steps}")
    return [sparsity * (1 - (1 - t / steps) ** 3) for t in range(1, steps + 1)]


def kept_count(total: int, sparsity: float) -> int:
    """Groups (or nodes) of `total` a layer keeps at `sparsity`: at least one, and rounded up from
    the decimal fraction the user wrote (in binary 1 − 0.7 is 0.30000000000000004, and 300 of them
    would keep 91, not 90)."""
    return max(1, int(np.ceil(round(total * (1 - sparsity), 9))))


def cut_in_groups(strategy: dict) -> list[str]:
    """The layers gradual pruning cuts in groups (or single weights): all so pruned but the output layer."""
    from .pruning import GROUP_METHODS

    output = list(strategy)[-1] if strategy else None
    return [name for name, s in strategy.items() if s.method in GROUP_METHODS and name != output]


def is_gradual(sparsity: float | None, node_sparsity: float | None) -> bool:
    """Whether a run prunes gradually: it names a sparsity of the groups or of the nodes to reach."""
    return sparsity is not None or node_sparsity is not None


def gradual_layers(strategy: dict, sparsity: float | None = None, node_sparsity: float | None = None) -> list[str]:
    """The layers gradual pruning cuts, in the model's order: those pruned in groups (or single
    weights) but the output layer (module doc), and with `node_sparsity` the node-pruned ones.
    Asking for a kind of cut no layer takes, or cutting groups with no `sparsity` named, is an
    error that says which option to drop or give."""
    if not is_gradual(sparsity, node_sparsity):
        raise ScalpelError("gradual pruning needs a sparsity to reach: --sparsity (groups), --node-sparsity (nodes)")
    grouped = cut_in_groups(strategy)
    nodes = [name for name, s in strategy.items() if s.method == "node"]
    if node_sparsity is not None and not nodes:
        raise ScalpelError("gradual node pruning (--node-sparsity) found no node-pruned layer: this target prunes "
                           "its layers in groups (see the strategy's reasons); leave --node-sparsity out")
    if sparsity is not None and not grouped:
        raise ScalpelError("gradual pruning (--sparsity) found no layer to cut in groups: it leaves the output layer "
                           "whole, and no other layer is pruned in groups on this target (see the strategy's reasons); "
                           "leave --sparsity out" + (" and give --node-sparsity for its node-pruned layers"
                                                     if nodes and node_sparsity is None else ""))
    if node_sparsity is not None and sparsity is None and grouped:
        raise ScalpelError(f"gradual pruning cuts every layer along one ramp, and {', '.join(grouped)} "
                           f"{'is' if len(grouped) == 1 else 'are'} pruned in groups: give --sparsity for "
                           "them too")
    chosen = set(grouped if sparsity is not None else []) | set(nodes if node_sparsity is not None else [])
    return [name for name in strategy if name in chosen]


def gradual_target(sparsity: float | None, node_sparsity: float | None) -> str:
    """What gradual pruning was asked to reach, in words: "93% of the groups and 60% of the nodes"."""
    return " and ".join(f"{value:.0%} of the {what}" for value, what in ((sparsity, "groups"), (node_sparsity, "nodes"))
                        if value is not None)


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


def layer_schedules(strategy: dict, sparsity: float | None, steps: int, layer_sparsity: dict | None = None,
                    node_sparsity: float | None = None) -> dict:
    """Each cut layer's ramp: to `sparsity` of its groups, or for a node-pruned layer to
    `node_sparsity` of its nodes, or to its own fraction in `layer_sparsity` (a layer of a few
    hundred weights, such as a first conv, may want less). A layer whose fraction is 0 is left
    whole (how a per-layer search, `sparsity_search.search_layers`, holds the layers it has not
    reached yet). Refuses a name gradual pruning does not cut, and a run that would cut nothing."""
    names = gradual_layers(strategy, sparsity, node_sparsity)
    unknown = sorted(set(layer_sparsity or {}) - set(names))
    if unknown:
        raise ScalpelError(f"a layer sparsity names {', '.join(unknown)}, which gradual pruning does not cut; it cuts "
                           f"{', '.join(names)}")
    default = {name: node_sparsity if strategy[name].method == "node" else sparsity for name in names}
    fractions = {name: (layer_sparsity or {}).get(name, default[name]) for name in names}
    if not any(fractions.values()):
        raise ScalpelError(f"gradual pruning was given 0 for every layer it cuts ({', '.join(names)}): nothing to "
                           "prune; give a sparsity above 0")
    return {name: ramp(fraction, steps) for name, fraction in fractions.items() if fraction != 0}


def prune_gradual(net_weights, set_mask, retrain, evaluate, snapshot, restore, strategy: dict, *,
                  sparsity: float | None, steps: int, layer_sparsity: dict | None = None,
                  node_sparsity: float | None = None, how: str = "rms", progress=None, confirm=None,
                  reference: tuple | None = None, checkpoint=None, resume: GradualState | None = None):
    """Cut every layer of `gradual_layers` to (1 − s_t) of its groups (or nodes: rows of the
    weight) at step t (`layer_schedules`), the least important first (`how`: rms, max or mean),
    and retrain after each step with the cut weights held at zero. The callables are
    `pruning.prune_simd`'s; a node layer's `set_mask` gets a mask of whole rows, and removing the
    node's bias and its consumer's inputs is the caller's (`pruning._chain_access`).
    Returns a `pruning.PruneResult` with one `Round` per step (layer: the layers cut, joined by "+").
    `checkpoint(GradualState)` is called after every step; `resume=` that state goes on."""
    from .pruning import Round, starting_result

    schedules = layer_schedules(strategy, sparsity, steps, layer_sparsity, node_sparsity)
    names = list(schedules)
    weights = net_weights()
    total_groups = {name: strategy[name].alive(np.ones_like(weights[name])) for name in names}
    counted = gradual_layers(strategy, sparsity, node_sparsity)  # those left whole (a fraction of 0) too
    total_weights = sum(weights[name].size for name in counted)

    def removed(weights):  # of the cuttable layers' weights, the consumers' inputs of removed nodes too
        return 1 - sum(np.count_nonzero(weights[name]) for name in counted) / total_weights

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
            keep = kept_count(total_groups[name], schedules[name][state.step])
            masks[name] = masks[name] * strategy[name].mask(weights[name] * masks[name], keep, how)
            set_mask(name, masks[name])
        retrain(masks)
        state.step += 1
        weights = net_weights()
        result.rounds.append(Round("+".join(names), before, sum(strategy[name].alive(weights[name]) for name in names),
                                   evaluate(), True, removed(weights)))
        if progress:
            progress(result.rounds[-1])
        if checkpoint:
            state.net = snapshot()
            checkpoint(state)
    result.final_accuracy = evaluate()
    result.confirmed_accuracy = confirm() if confirm else None
    result.weights_removed = removed(net_weights())
    return result
