"""The pruning frontend: hardware-aware pruning with retraining (Scalpel §3.3–3.5), layer by layer
in the order the target's cost model gives, until accuracy can no longer be kept.

Strategy per hardware class (Scalpel §3.5), `layer_strategy`:

* low parallelism (Cortex-M): every Conv and Gemm layer loses aligned groups of G = the core's
  int16 lanes (2 on an M4: the pairs one SMUAD multiplies; 1 without the DSP extension) along its
  inputs — the 1xG groups `int16_net` stores as pairs;
* moderate (x86): conv layers lose whole filters (node pruning with mask layers,
  `node_pruning`), then FC layers lose aligned groups of G = the fp32 lanes (8 with AVX2) across
  outputs — the Gx1 groups the x86 kernels vectorize; conv first, then FC, as the paper orders it;
* high (CUDA): node pruning of every layer but the output layer — the layers stay dense and
  shrink, which is what a GPU can skip.

SIMD-aware rounds (`prune_simd`) take the layer with the largest predicted time (the Cortex-M
cycle model, or the planner's cost model, each in the layer's cheapest form), remove `step` of
its remaining groups — those least important by root-mean-square (MAX and MEAN selectable) —
retrain with the pruned weights held at zero, and keep the result if validation accuracy stays
within `tolerance` of the unpruned model's; otherwise they restore the layer's last kept state
and halve that layer's step (a single retraining is noisy at a 0.1-point tolerance), and once
the step is below `min_step` the layer is done. At the end, images no round was judged on
confirm the result, and kept rounds are walked back until they agree (many decisions on one
validation set overfit it). The numpy parts (importance, masks, strategy, ordering) need no
PyTorch; the retraining goes through callables (`torch_chain` for ONNX models of the LeNet /
ConvNet family).
"""
from __future__ import annotations

import copy
import sys
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from .errors import ScalpelError
from .gradual_pruning import is_gradual
from .objectives import ObjectiveCost
from .paired_accuracy import paired_difference
from .prune_checkpoint import Checkpoint, NoCheckpoint, model_digest
from .target import TargetSpec
from .unaligned_groups import cover_count, unaligned_mask

IMPORTANCE = ("rms", "max", "mean")
METHODS = ("scalpel", "traditional", "optimized")
# The loop each method runs: optimized is traditional's loop with another ending (its dense reverts)
LOOP_OF = {"scalpel": "scalpel", "traditional": "magnitude", "optimized": "magnitude"}
GROUP_METHODS = ("simd", "magnitude")  # what prune_simd prunes: groups, or single weights (traditional)
GROUPINGS = ("aligned", "dp", "greedy")  # aligned groups, or unaligned ones (Lee et al.)


class BelowTolerance(UserWarning):
    """A gradual run ended below the tolerance: it prunes to the fraction asked for and reports
    the loss rather than undoing it. A fraction search expects some of its trials to end so and
    silences this for them (`sparsity_search.search_onnx`)."""


def _blocks(w_nk: np.ndarray, group: int, orientation: str) -> np.ndarray:
    """(rows, groups, G) view of the aligned groups, zero-padded: 1xg along the inputs of each
    output, gx1 along the outputs of each input."""
    w = np.asarray(w_nk) if orientation == "1xg" else np.asarray(w_nk).T
    rows, cols = w.shape
    return np.pad(w, [(0, 0), (0, (-cols) % group)]).reshape(rows, -1, group)


def group_importance(w_nk: np.ndarray, group: int, orientation: str = "1xg", how: str = "rms") -> np.ndarray:
    """Importance of every aligned group: root-mean-square (Scalpel's choice), max or mean of
    its absolute values. Shape (rows, groups)."""
    if how not in IMPORTANCE:
        raise ScalpelError(f"unknown importance {how!r}; known: {', '.join(IMPORTANCE)}")
    blocks = np.abs(_blocks(w_nk, group, orientation))
    if how == "rms":
        return np.sqrt(np.mean(blocks ** 2, axis=2))
    return blocks.max(axis=2) if how == "max" else blocks.mean(axis=2)


def group_mask(w_nk: np.ndarray, keep: int, group: int, orientation: str = "1xg", how: str = "rms") -> np.ndarray:
    """0/1 mask of `w_nk`'s shape keeping the `keep` most important groups; a group that is
    already all zero never comes back."""
    importance = group_importance(w_nk, group, orientation, how)
    alive = np.any(_blocks(w_nk, group, orientation) != 0, axis=2)
    order = np.argsort(np.where(alive, importance, -1.0), axis=None, kind="stable")[::-1]
    kept = np.zeros(importance.size, bool)
    kept[order[:max(1, min(keep, int(alive.sum())))]] = True
    mask = np.repeat(kept.reshape(importance.shape), group, axis=1)
    rows, cols = (w_nk.shape if orientation == "1xg" else w_nk.shape[::-1])
    mask = mask[:, :cols]
    return (mask if orientation == "1xg" else mask.T).astype(np.float32)


def groups_alive(w_nk: np.ndarray, group: int, orientation: str) -> int:
    return int(np.count_nonzero(np.any(_blocks(w_nk, group, orientation) != 0, axis=2)))


@dataclass
class LayerStrategy:
    name: str
    method: str  # "simd" | "node" | "magnitude" (traditional) | "none"
    group: int = 1
    orientation: str = "1xg"
    reason: str = ""
    grouping: str = "aligned"  # or unaligned groups (Lee et al.) chosen by "dp" or "greedy"

    def alive(self, w_nk: np.ndarray) -> int:
        """The groups the layer's kernel would store for `w_nk` (a node layer: its nodes)."""
        if self.method == "node":
            return nodes_alive(w_nk)
        if self.grouping == "aligned":
            return groups_alive(w_nk, self.group, self.orientation)
        return cover_count(w_nk, self.group)

    def mask(self, w_nk: np.ndarray, keep: int, how: str) -> np.ndarray:
        """0/1 mask keeping `keep` groups of `w_nk`, the most important first; for a node layer
        `keep` whole rows (a node is the group of all its inputs)."""
        if self.method == "node":
            return group_mask(w_nk, keep, w_nk.shape[1], "1xg", how)
        if self.grouping == "aligned":
            return group_mask(w_nk, keep, self.group, self.orientation, how)
        return unaligned_mask(w_nk, keep, self.group, self.grouping)


def layer_strategy(spec: TargetSpec, layers: list[dict], grouping: str = "aligned",
                   orientation: str | None = None) -> dict[str, LayerStrategy]:
    """What each Conv / Gemm layer gets on `spec`'s hardware class (see module doc). `grouping`
    "dp" or "greedy" lets groups start anywhere in a row (Lee et al.; `unaligned_groups`), which
    only a kernel that indexes every group can use: the Cortex-M pairs format. `orientation`
    "1xg" prunes a CPU's FC layers in groups of G inputs of one output instead of G outputs of
    one input ("gx1", the default): the x86 kernels run both, and from a converged model the
    input-wise groups keep more accuracy at the same sparsity (README, "Which groups keep
    accuracy"); on other targets the groups' direction is fixed by their kernels."""
    if grouping not in GROUPINGS:
        raise ScalpelError(f"unknown grouping {grouping!r}; known: {', '.join(GROUPINGS)}")
    if orientation not in (None, "1xg", "gx1"):
        raise ScalpelError(f"unknown orientation {orientation!r}; known: 1xg (G inputs of one output), "
                           "gx1 (G outputs of one input)")
    if orientation and spec.parallelism != "moderate":
        fixed = ("prunes whole nodes, not groups" if spec.parallelism == "high"
                 else "stores groups of inputs (1xg) only, as its int16 pairs")
        raise ScalpelError(f"the groups' orientation is a choice for a CPU's FC layers (x86); {spec.name} {fixed}: "
                           "leave --orientation out")
    if grouping != "aligned" and spec.parallelism != "low":
        raise ScalpelError(f"unaligned groups need a kernel that stores an index per group (the Cortex-M pairs "
                           f"format); {spec.name}'s grouped kernels vectorise aligned lanes: use --groups aligned")
    out = {}
    pruned = [layer for layer in layers if layer["op"] in ("fc", "conv")]
    for layer in pruned:
        if spec.parallelism == "high":
            if layer is pruned[-1]:
                out[layer["name"]] = LayerStrategy(layer["name"], "none", reason="the output layer keeps its nodes")
            else:
                out[layer["name"]] = LayerStrategy(layer["name"], "node", reason="node pruning (a GPU skips whole nodes)")
        elif spec.parallelism == "low":
            group = spec.lanes("int16")
            unaligned = grouping != "aligned" and group > 1
            out[layer["name"]] = LayerStrategy(layer["name"], "simd", group, "1xg",
                                               f"SIMD-aware, {'unaligned ' if unaligned else ''}groups of {group} inputs "
                                               "(int16 lanes)", grouping if unaligned else "aligned")
        elif layer["op"] == "fc":
            group = spec.lanes("float32")
            along = orientation or "gx1"
            what = "outputs" if along == "gx1" else "inputs"
            out[layer["name"]] = LayerStrategy(layer["name"], "simd", group, along,
                                               f"SIMD-aware, groups of {group} {what} (fp32 lanes)")
        else:
            out[layer["name"]] = LayerStrategy(layer["name"], "node", reason="node pruning (conv on a CPU)")
    return out


def pruning_strategy(spec: TargetSpec, layers: list[dict], method: str, grouping: str = "aligned",
                     orientation: str | None = None, gradual: bool = False) -> dict[str, LayerStrategy]:
    """The strategy a pruning run follows: Scalpel's per hardware class (`layer_strategy`) or the
    traditional baseline's; pruned gradually, the output layer is left whole (`gradual_pruning`)."""
    if method == "scalpel":
        strategy = layer_strategy(spec, layers, grouping, orientation)
    else:
        strategy = traditional_strategy(layers)
    output = list(strategy)[-1] if strategy else None
    if gradual and output and strategy[output].method in GROUP_METHODS:
        strategy[output] = LayerStrategy(output, "none", reason="gradual pruning leaves the output layer whole")
    return strategy


def nodes_alive(w_nk: np.ndarray) -> int:
    """Output nodes (rows) with a non-zero weight: those node shrinking keeps."""
    return int(np.count_nonzero(np.any(w_nk != 0, axis=1)))


def inputs_alive(w_nk: np.ndarray, channels: int) -> int:
    """Columns of `w_nk` a shrunk layer still reads: whole input channels for a conv
    (`channels` of them, each KH·KW columns), single inputs for an FC layer (`channels` = K)."""
    per_channel = np.any(w_nk.reshape(w_nk.shape[0], channels, -1) != 0, axis=(0, 2))
    return int(np.count_nonzero(per_channel)) * (w_nk.shape[1] // channels)


def traditional_strategy(layers: list[dict]) -> dict[str, LayerStrategy]:
    """The baseline: every Conv and Gemm layer, the output layer too, loses single weights by
    magnitude (Han et al. 2015), with no regard for the hardware."""
    return {layer["name"]: LayerStrategy(layer["name"], "magnitude", 1, "1xg", "traditional: single weights by magnitude")
            for layer in layers if layer["op"] in ("fc", "conv")}


class WeightCount:
    """Traditional pruning's order: the layer with the most weights left first (Han et al. prune
    where the parameters are; no model of the hardware)."""

    unit = "weights"

    def __call__(self, name: str, w_nk: np.ndarray, form: str | None = None) -> tuple[float, str]:
        return float(np.count_nonzero(w_nk)), "csr"


def baseline_forms(method: str, weights: dict) -> dict[str, str] | None:
    """The formats a baseline deploys with: traditional pruning stores every layer as CSR,
    optimized pruning (Scalpel §5) keeps a layer dense when more than half its weights are left.
    None for Scalpel: each layer takes its fastest form."""
    if method == "scalpel":
        return None
    return {name: "dense" if method == "optimized" and np.count_nonzero(w) > w.size / 2 else "csr"
            for name, w in weights.items()}


class LayerCost:
    """Predicted time of a layer with a given weight, in its cheapest form on the target: the
    Cortex-M cycle model (cycles) or the planner's cost model (seconds; batch 50 on a GPU, the
    paper's, and 1 on a CPU). Dense is priced node-shrunk: the rows and input channels that are
    all zero are gone, as `Pass` and `int16_net` remove them."""

    def __init__(self, spec: TargetSpec, layers: list[dict]):
        self.spec = spec
        self.batch = 50 if spec.parallelism == "high" else 1
        self.layers = {layer["name"]: layer for layer in layers}
        if spec.parallelism == "low":
            from .m4_cost import CortexMCost

            self.model, self.unit = CortexMCost.for_core(spec.target.attrs["mcpu"]), "cycles"
        else:
            from .planner import default_cost

            self.model, self.unit = default_cost(spec), "s"

    def __call__(self, name: str, w_nk: np.ndarray, form: str | None = None) -> tuple[float, str]:
        """(time, form): in `form` where the target has it (a baseline's CSR), else the cheapest
        form the compiler would pick. On a GPU that excludes CSR: `Pass(cuda)` compiles a pruned
        layer dense (node-shrunk) or warp-grouped, and CSR is priced there only for the baselines."""
        costs = self.times(name, w_nk)
        best = form if form in costs else min(self.compiled_forms(costs), key=costs.get)
        return costs[best], best

    def compiled_forms(self, forms) -> list[str]:
        """Of `forms`, those the compiler gives a pruned layer: on a GPU not CSR (the baselines' form)."""
        return [f for f in forms if not (f == "csr" and self.spec.parallelism == "high")]

    def times(self, name: str, w_nk: np.ndarray) -> dict[str, float]:
        """Predicted time of layer `name` with weight `w_nk` in every form the target has. A
        token-wise FC layer (a Linear on [batch, tokens, features]) runs `tokens` rows per item."""
        layer = self.layers[name]
        tokens = layer.get("tokens", 1)
        if self.spec.parallelism == "low":
            cycles = self.model.candidates(SimpleNamespace(op=layer["op"], w_nk=w_nk, window=layer["window"]))
            return {form: c * tokens for form, c in cycles.items()}
        from .cost import KernelQuery

        batch = self.batch * tokens
        n, k = w_nk.shape
        group = self.spec.lanes("float32")
        window = layer["window"]
        pixels = 1 if window is None else window.oh * window.ow
        shrunk_k = inputs_alive(w_nk, k if window is None else window.c)
        queries = [KernelQuery(layer["op"], "dense", batch, max(shrunk_k, 1), max(nodes_alive(w_nk), 1), pixels=pixels)]
        if layer["op"] == "fc" and self.spec.parallelism != "high":
            for orientation in ("gx1", "1xg"):
                groups = groups_alive(w_nk, group, orientation)
                queries.append(KernelQuery("fc", f"gsparse_{orientation}", batch, k, n, group=group, groups=groups))
        if layer["op"] == "fc" and self.spec.parallelism == "high":
            queries.append(KernelQuery("fc", "csr", batch, k, n, groups=max(int(np.count_nonzero(w_nk)), 1)))
        return {q.form: self.model.estimate(q, w_nk.T).seconds for q in queries}


def layer_summary(strategy: dict, weights: dict, cost: LayerCost, forms: dict | None = None) -> dict:
    """Per layer: shape, method, what was removed, and the objective's value dense and pruned (in
    `forms[layer]` where given and the target has it, else the best form) — with an
    `objectives.ObjectiveCost`, latency, energy and size too."""
    out = {}
    for name, s in strategy.items():
        w = weights[name]
        entry = {"shape_nk": list(w.shape), "method": s.method, "reason": s.reason,
                 "weights_kept": float(np.count_nonzero(w) / w.size),
                 "nodes": [w.shape[0], nodes_alive(w)]}
        if s.method in GROUP_METHODS:
            blocks = _blocks(w, s.group, s.orientation)
            entry["group_sparsity"] = 1 - s.alive(w) / (blocks.shape[0] * blocks.shape[1])
        dense_time, _ = cost(name, np.ones_like(w), "dense")
        time, form = cost(name, w, (forms or {}).get(name))
        entry.update(predicted_dense=dense_time, predicted=time, form=form, unit=cost.unit)
        if hasattr(cost, "measures"):  # every objective, for the report
            entry["dense_measures"] = cost.measures(name, np.ones_like(w), "dense")
            entry["measures"] = cost.measures(name, w, form)
        out[name] = entry
    return out


@dataclass
class Round:
    layer: str
    groups_before: int
    groups_after: int
    accuracy: float
    kept: bool
    weights_removed: float  # of all prunable weights, after the round (or as before when not kept)


@dataclass
class PruneResult:
    baseline_accuracy: float
    final_accuracy: float
    rounds: list[Round] = field(default_factory=list)
    layers: dict = field(default_factory=dict)  # name -> per-layer summary
    strategy: dict = field(default_factory=dict)
    walked_back: int = 0  # kept rounds undone at the end because the confirmation images disagreed
    confirmed_baseline: float | None = None  # the unpruned model on the confirmation images
    confirmed_accuracy: float | None = None
    weights_removed: float = 0.0  # of all prunable weights, in the result
    nodes: object = None  # node_pruning.NodeResult when layers were node-pruned
    reverted: list = field(default_factory=list)  # layers given their unpruned weights back
    skipped: dict = field(default_factory=dict)  # a user module's layers left alone: name -> why
    consumers_unknown: dict = field(default_factory=dict)  # a user module's layers whose consumer is not known: -> why
    finetuned: bool | None = None  # the final retraining kept (None: none asked for)


@dataclass
class SimdState:
    """Everything `prune_simd` carries from round to round: what a checkpoint holds."""
    result: PruneResult
    masks: dict  # layer -> 0/1 mask of its weight
    steps: dict  # layer -> fraction of its groups the next round removes
    done: set  # layers that cannot lose more
    kept_states: list  # (snapshot, masks, accuracy) after each kept round, for the walk-back
    round: int = 0  # rounds started
    net: object = None  # the model's snapshot at the checkpoint


def starting_result(strategy: dict, evaluate, confirm, reference: tuple | None) -> PruneResult:
    """A pruning loop's result before its first round: the unpruned model's validation (and
    confirmation) accuracy, measured now or, after an earlier phase, its `reference`."""
    baseline = reference[0] if reference else evaluate()
    result = PruneResult(baseline, baseline, strategy={n: s.__dict__ for n, s in strategy.items()})
    result.confirmed_baseline = (reference[1] if reference else confirm()) if confirm else None
    return result


def prune_simd(net_weights, set_mask, retrain, evaluate, snapshot, restore, strategy: dict, cost: LayerCost, *,
               tolerance: float, step: float = 0.3, min_step: float = 0.05, how: str = "rms",
               max_rounds: int = 80, progress=None, confirm=None, reference: tuple | None = None,
               checkpoint=None, resume: SimdState | None = None) -> PruneResult:
    """The SIMD-aware loop (module doc), on a model reached through callables:
    `net_weights()` -> {layer: [N, K] weight}, `set_mask(layer, mask)` zeroes and holds pruned
    weights, `retrain(masks)`, `evaluate()` -> validation accuracy, `snapshot()` / `restore(s)`.

    Many keep/undo decisions on one validation set overfit it, so with `confirm()` (accuracy on
    images the decisions never saw) the result is checked at the end against the same
    tolerance, and when it fails, the loop's kept rounds are walked back, newest first, to the
    last state that passes (`PruneResult.walked_back` says how many). `reference` = (validation,
    confirmation accuracy) of the unpruned model when an earlier phase changed the model already,
    so the tolerance is spent once, not per phase. `checkpoint(SimdState)` is called after every
    round; `resume=` that state goes on from there."""
    if not 0 < step < 1:
        raise ScalpelError(f"step must be in (0, 1): the fraction of a layer's remaining groups a round removes; got {step}")
    active = {name for name, s in strategy.items() if s.method in GROUP_METHODS}
    if not active:
        raise ScalpelError("no layer can be pruned on this target (see the strategy's reasons)")
    weights = net_weights()
    total = sum(weights[name].size for name in active)
    if resume:
        state = resume
        restore(state.net)
    else:
        result = starting_result(strategy, evaluate, confirm, reference)
        masks = {name: (weights[name] != 0).astype(np.float32) for name in active}
        state = SimdState(result, masks, dict.fromkeys(active, step), set(),
                          [(snapshot(), copy.deepcopy(masks), result.baseline_accuracy)])
    result, masks = state.result, state.masks
    floor = result.baseline_accuracy - tolerance
    while state.round < max_rounds:
        state.round += 1
        candidates = [name for name in active if name not in state.done]
        if not candidates:
            break
        weights = net_weights()
        name = max(candidates, key=lambda n: cost(n, weights[n])[0])
        s = strategy[name]
        before = s.alive(weights[name])
        target = int(np.floor(before * (1 - state.steps[name])))
        if target < 1:
            state.done.add(name)
        else:  # cut the layer to `target` groups, retrain, keep or undo
            saved, saved_mask = snapshot(), masks[name]
            masks[name] = masks[name] * s.mask(weights[name] * masks[name], target, how)
            set_mask(name, masks[name])
            retrain(masks)
            accuracy = evaluate()
            kept = accuracy >= floor
            if not kept:  # undo; try that layer again with half the step, down to min_step
                restore(saved)
                masks[name] = saved_mask
                state.steps[name] /= 2
                if state.steps[name] < min_step:
                    state.done.add(name)
            removed = 1 - sum(float(m.sum()) for m in masks.values()) / total
            result.rounds.append(Round(name, before, target if kept else before, accuracy, kept, removed))
            if kept:
                result.final_accuracy = accuracy
                if confirm:
                    state.kept_states.append((snapshot(), copy.deepcopy(masks), accuracy))
            if progress:
                progress(result.rounds[-1])
        if checkpoint:
            state.net = snapshot()
            checkpoint(state)
    if confirm:
        while len(state.kept_states) > 1 and confirm() < result.confirmed_baseline - tolerance:
            state.kept_states.pop()
            restore(state.kept_states[-1][0])
            masks = state.kept_states[-1][1]
            result.walked_back += 1
        result.confirmed_accuracy = confirm()
    result.weights_removed = 1 - sum(float(m.sum()) for m in masks.values()) / total
    result.layers = layer_summary(strategy, net_weights(), cost)
    result.final_accuracy = evaluate()
    return result


def validation_images(data) -> int:
    """How many of `data`'s training images `prune_onnx` holds out by default: a tenth, at most
    10,000 (a script that trains the model first holds out the same ones)."""
    return min(10000, len(data.train_x) // 10)


def chain_layers(model) -> tuple:
    """(input shape, layers) of an ONNX chain the frontend can retrain (`int16_net.read_chain`),
    or a clear error pointing a user with another model to `prune_module`."""
    from .int16_net import read_chain

    try:
        return read_chain(model)
    except ScalpelError as err:
        raise ScalpelError(f"the pruning frontend rebuilds ONNX chains of the LeNet / ConvNet family for "
                           f"retraining, and this model is not one: {err}. Prune the torch.nn.Module it came from "
                           "with scalpel_tvm.prune(module, target, train, evaluate, example)") from None


def train_onnx(model, data, epochs: float, *, validation: int | None = None, seed: int = 0, anneal: bool = False,
               dropout: float = 0.0):
    """`model` trained as `prune_onnx(model, ..., train_epochs=epochs)` trains it first, on the
    training images it does not hold out; returns the trained ONNX model. For runs that prune
    one trained model several times (the baselines, a fraction search)."""
    from . import torch_chain

    validation = validation or validation_images(data)
    torch_chain._torch().manual_seed(seed)
    net = torch_chain.chain_net(model)
    torch_chain.set_dropout(net, dropout)
    torch_chain.train(net, data.train_x[:-validation], data.train_y[:-validation], epochs=epochs, seed=seed,
                      anneal=anneal, desc="train")
    return torch_chain.write_weights(model, net)


def prune_onnx(model, target: str, data, *, tolerance: float = 0.001, epochs: float = 1.0,
               train_epochs: float = 0.0, step: float = 0.3, how: str = "rms", max_rounds: int = 80,
               validation: int | None = None, seed: int = 0, penalty: float = 1e-4, node_penalty: str = "cost",
               method: str = "scalpel", grouping: str = "aligned", objective: str = "latency", dropout: float = 0.0,
               recover: bool = False, order_neurons: bool = False, anneal: bool = False, finetune: float = 0.0,
               distill: bool = False, orientation: str | None = None, sparsity: float | None = None, steps: int = 10,
               layer_sparsity: dict | None = None, node_sparsity: float | None = None, checkpoint=None,
               restart: bool = False, keep_checkpoint: bool = False):
    """Prune an ONNX model of the LeNet / ConvNet family for `target` on `data`
    (datasets.Dataset): returns (pruned ONNX model, PruneResult, test accuracies). Node pruning
    comes first (its layers, `penalty` its starting λ, `node_penalty` "cost" to weigh each layer's
    nodes by what they cost on the target or "uniform" as the paper), then SIMD-aware pruning. The last
    `validation` training images (default a tenth, at most 10,000) are held out from training:
    one half decides each round, the other confirms the end result; the test set only reports.

    `method` "traditional" or "optimized" runs the baselines through the same loop, tolerance and
    retraining: single weights by magnitude in every layer, largest layer first, deployed as CSR;
    optimized then restores the layers that kept more than half their weights and deploys them
    dense. Scalpel itself restores a SIMD-pruned layer whose pruned form is not predicted faster
    than its dense one (pruning it bought nothing on this target).

    With `checkpoint` (a file), the run's state is saved after training and after every round,
    and an interrupted run called again with the same arguments resumes from its last finished
    round (`prune_checkpoint`); `restart` starts over instead. The traditional and optimized methods
    share their loop (they differ only in how it ends), so either resumes the other's checkpoint;
    with `keep_checkpoint` a completed run leaves its checkpoint in place, which is how
    `bench_pruning.py` gets the optimized result from the traditional run's loop. `grouping` "dp" / "greedy" prunes
    unaligned groups on Cortex-M (`layer_strategy`). `objective` "energy" or "size" orders the
    layers, weighs the node penalty and picks each layer's form by that measure instead of the
    predicted latency (`objectives`); the result reports all three. `dropout` trains with that
    ratio on the input of every FC layer but the first, scaled to the connections each keeps
    (`torch_chain.set_dropout`). `recover` gives a node-pruning round that loses accuracy one
    recovery round before it is undone (`node_pruning`). `order_neurons` first puts each hidden FC
    layer's neurons in an order that gathers alike ones into the groups SIMD-aware pruning cuts
    (`neuron_order`; exact, the written model computes the same function).

    `anneal` brings Adam's rates down to zero along a cosine in every training call — the first
    training (so `train_epochs` gives a settled model rather than a last noisy step) and each
    round's retraining, which then starts at the training rate 1e-3 instead of holding 3e-4, so
    every round is judged on a settled model too (node pruning's rounds included, β's rate with
    the weights'). `finetune` epochs of retraining, annealed from 1e-3, end a run that pruned
    something, the pruned weights held at zero (Han et al.'s final retraining); they are kept
    unless the confirmation images score the model lower than before them (so those images have
    then seen one decision, this one). `distill`
    retrains against the unpruned model's softened outputs as well as the labels (half each,
    `torch_chain.train`'s `teacher`).

    `sparsity` replaces the keep/undo rounds of the group-pruned layers by gradual pruning to that
    fraction of each layer's groups in `steps` steps (`gradual_pruning`; the output layer left
    whole; `layer_sparsity` {layer: fraction} gives named layers their own): the user names the
    sparsity, and a result below `tolerance` is reported, not undone. `node_sparsity` does the
    same for the node-pruned layers (a CPU's convs, a GPU's layers): their least important nodes
    go along the same ramp, in the same steps as the groups, instead of the mask layers' rounds
    (which from a converged model stop early; `gradual_pruning`). `orientation` "1xg" or "gx1"
    chooses the x86 FC groups (`layer_strategy`)."""
    from . import neuron_order, torch_chain

    if method not in METHODS:
        raise ScalpelError(f"unknown pruning method {method!r}; known: {', '.join(METHODS)}")
    if finetune < 0:
        raise ScalpelError(f"finetune is a number of epochs, 0 for none; got {finetune}")
    torch = torch_chain._torch()
    torch.manual_seed(seed)
    spec = TargetSpec.preset(target) if isinstance(target, str) else target
    input_shape, layers = chain_layers(model)
    data.check_fits(input_shape, [lay for lay in layers if lay["op"] in ("fc", "conv")][-1]["w_nk"].shape[0])
    validation = validation or validation_images(data)
    if not 1 < validation < len(data.train_x):
        raise ScalpelError(f"validation must be between 2 and {len(data.train_x) - 1} images")
    train_x, train_y = data.train_x[:-validation], data.train_y[:-validation]
    half = validation // 2  # one half decides each round, the other confirms the end result
    val_x, val_y = data.train_x[-validation:-half], data.train_y[-validation:-half]
    fresh_x, fresh_y = data.train_x[-half:], data.train_y[-half:]
    settings = {"target": spec.name, "loop": LOOP_OF[method], "tolerance": tolerance, "epochs": epochs, "train_epochs": train_epochs,
                "step": step, "how": how, "max_rounds": max_rounds, "validation": validation, "seed": seed,
                "penalty": penalty, "node_penalty": node_penalty, "grouping": grouping, "objective": objective,
                "dropout": dropout, "recover": recover, "order_neurons": order_neurons,
                "data": (data.name, len(data.train_x)),
                "model": model_digest(model)}
    # named only when asked for, so the checkpoints of runs from before these options still resume
    settings.update({key: value for key, value in
                     {"anneal": anneal, "finetune": finetune, "distill": distill}.items() if value})
    settings.update(_gradual_settings(orientation, sparsity, steps, layer_sparsity, node_sparsity))
    ck = Checkpoint(checkpoint, settings, restart=restart) if checkpoint else NoCheckpoint()
    gradual = is_gradual(sparsity, node_sparsity)
    net = torch_chain.chain_net(model)
    teacher = []  # with distill: the unpruned model, as trained

    def train_first():
        if train_epochs:
            torch_chain.set_dropout(net, dropout)
            torch_chain.train(net, train_x, train_y, epochs=train_epochs, seed=seed, anneal=anneal, desc="train")
        if order_neurons and method == "scalpel":
            neuron_order.reorder_for_groups(net, pruning_strategy(spec, layers, method, grouping, orientation,
                                                                  gradual))
        if distill:
            teacher.append(copy.deepcopy(net).eval())

    def the_teacher():
        if distill and not teacher:  # a resumed run: its checkpoint holds the teacher
            if ck.get("teacher") is None:
                raise ScalpelError(f"{checkpoint} holds no unpruned model to distill from; pass --restart")
            with torch.random.fork_rng():  # building it draws initial weights: keep the run's random stream
                teacher.append(torch_chain.chain_net(model))
            teacher[0].load_state_dict(ck.get("teacher"))
            teacher[0].eval()
        return teacher[0] if teacher else None

    def retrain(round_seed, masks=None, **kwargs):
        torch_chain.set_dropout(net, dropout)  # scaled to the connections left
        torch_chain.train(net, train_x, train_y, epochs=epochs, masks=masks, lr=1e-3 if anneal else 3e-4,
                          anneal=anneal, teacher=the_teacher(), seed=round_seed, desc="retrain", **kwargs)

    def final_retrain(round_seed, masks):
        torch_chain.set_dropout(net, dropout)
        torch_chain.train(net, train_x, train_y, epochs=finetune, masks=masks, lr=1e-3, anneal=True,
                          teacher=the_teacher(), seed=round_seed, desc="fine-tune")

    hooks = SimpleNamespace(train_first=train_first, retrain=retrain, finetune=final_retrain if finetune else None,
                            saved=lambda: {"teacher": teacher[0].state_dict()} if teacher else {},
                            evaluate=lambda: torch_chain.accuracy(net, val_x, val_y),
                            confirm=lambda: torch_chain.accuracy(net, fresh_x, fresh_y),
                            test=lambda: torch_chain.correct(net, data.test_x, data.test_y))
    result, test = _prune(net, layers, spec, hooks, ck, checkpoint, method=method, grouping=grouping,
                          objective=objective, node_penalty=node_penalty, penalty=penalty, step=step, how=how,
                          tolerance=tolerance, max_rounds=max_rounds, seed=seed, recover=recover,
                          orientation=orientation, sparsity=sparsity, steps=steps, layer_sparsity=layer_sparsity,
                          node_sparsity=node_sparsity)
    if test["dense"] < 2.0 / data.classes:
        print(f"scalpel prune: the model scored {test['dense']:.1%} on {data.name}'s test set, near chance: was it "
              "trained? (--train-epochs N trains it first)", file=sys.stderr)
    pruned = torch_chain.write_weights(model, net)
    if not keep_checkpoint:
        ck.finish()
    return pruned, result, test


def prune_module(module, target, train, evaluate, example, *, confirm=None, test=None, tolerance: float = 0.001,
                 epochs: float = 1.0, step: float = 0.3, how: str = "rms", max_rounds: int = 80, seed: int = 0,
                 penalty: float = 1e-4, node_penalty: str = "cost", method: str = "scalpel",
                 grouping: str = "aligned", objective: str = "latency", recover: bool = False,
                 order_neurons: bool = False, orientation: str | None = None, sparsity: float | None = None,
                 steps: int = 10, layer_sparsity: dict | None = None, node_sparsity: float | None = None,
                 checkpoint=None, restart: bool = False):
    """Prune a user's own `torch.nn.Module` for `target` (`torch_module`): `train(module, epochs)`
    is the user's training loop (it builds its optimizer from `module.parameters()` each call),
    `evaluate(module)` returns validation accuracy, `example` is one input batch (shapes);
    `confirm(module)` — accuracy on other held-out data — checks the end result, `test(module)`
    only reports: an accuracy, or per test image whether the module got it right (a bool array),
    which adds the paired difference and its interval (`paired_accuracy`). Returns (a pruned copy
    of the module, PruneResult, {"dense", "pruned"[, "paired"]} test accuracy or None). Options
    as `prune_onnx` but for the training schedule's (`anneal`,
    `finetune`, `distill`, `dropout`), which the user's loop owns; the module is never changed. `order_neurons`
    reorders the Linear layers whose consumer `module_graph` finds (`PruneResult.consumers_unknown`
    names the others and why)."""
    from . import neuron_order, torch_module

    if method not in METHODS:
        raise ScalpelError(f"unknown pruning method {method!r}; known: {', '.join(METHODS)}")
    torch_module._torch().manual_seed(seed)
    spec = TargetSpec.preset(target) if isinstance(target, str) else target
    net, layers, skipped = torch_module.module_net(module, example)
    settings = {"target": spec.name, "loop": LOOP_OF[method], "tolerance": tolerance, "epochs": epochs, "step": step,
                "how": how, "max_rounds": max_rounds, "seed": seed, "penalty": penalty, "node_penalty": node_penalty,
                "grouping": grouping, "objective": objective, "recover": recover, "order_neurons": order_neurons,
                "module": type(module).__name__,
                "layers": [(layer["name"], list(layer["w_nk"].shape)) for layer in layers]}
    settings.update(_gradual_settings(orientation, sparsity, steps, layer_sparsity, node_sparsity))
    ck = Checkpoint(checkpoint, settings, restart=restart) if checkpoint else NoCheckpoint()
    gradual = is_gradual(sparsity, node_sparsity)

    def retrain(_round_seed, masks=None, penalty=0.0, after_step=None):
        with torch_module.constraints(net, masks, penalty, after_step):
            net.train()
            train(net, epochs)
        net.eval()

    def train_first():
        if order_neurons and method == "scalpel":
            neuron_order.reorder_for_groups(net, pruning_strategy(spec, layers, method, grouping, orientation,
                                                                  gradual))

    hooks = SimpleNamespace(train_first=train_first, retrain=retrain, finetune=None, saved=dict,
                            evaluate=lambda: evaluate(net),
                            confirm=(lambda: confirm(net)) if confirm else None,
                            test=(lambda: test(net)) if test else (lambda: None))
    result, accuracy = _prune(net, layers, spec, hooks, ck, checkpoint, method=method, grouping=grouping,
                              objective=objective, node_penalty=node_penalty, penalty=penalty, step=step, how=how,
                              tolerance=tolerance, max_rounds=max_rounds, seed=seed, recover=recover,
                              orientation=orientation, sparsity=sparsity, steps=steps, layer_sparsity=layer_sparsity,
                              node_sparsity=node_sparsity)
    result.skipped = skipped
    result.consumers_unknown = net.consumers_unknown
    ck.finish()
    return torch_module.unwrap(net), result, accuracy if test else None


def _gradual_settings(orientation, sparsity, steps, layer_sparsity, node_sparsity=None) -> dict:
    """The checkpoint settings of the groups' orientation and gradual pruning, named only when
    asked for, so the checkpoints of runs from before these options still resume."""
    gradual = is_gradual(sparsity, node_sparsity)
    given = {"orientation": orientation, "sparsity": sparsity, "steps": steps if gradual else None,
             "layer_sparsity": layer_sparsity, "node_sparsity": node_sparsity}
    return {key: value for key, value in given.items() if value}


def _prune(net, layers, spec, hooks, ck, checkpoint, *, method, grouping, objective, node_penalty, penalty, step,
           how, tolerance, max_rounds, seed, recover=False, orientation=None, sparsity=None, steps=10,
           layer_sparsity=None, node_sparsity=None):
    """The frontend on a model reached through `net` (a `torch_chain` chain or a
    `torch_module` wrapper) and `hooks` (train_first, retrain(seed, masks, ...), evaluate,
    confirm or None, test: an accuracy, per-image correctness or None): node pruning with mask
    layers, then group pruning — or, with `sparsity` / `node_sparsity`, gradual pruning of the
    groups (after the mask layers' rounds) or of groups and nodes together (no mask layers) —
    then the layers restored that did not pay. Returns (PruneResult, {"dense",
    "pruned"} test accuracy, with "paired" when `test` scores per image)."""
    from . import torch_chain
    from .gradual_pruning import gradual_target, layer_schedules

    gradual = is_gradual(sparsity, node_sparsity)
    strategy = pruning_strategy(spec, layers, method, grouping, orientation, gradual)
    if gradual:  # a bad sparsity, step count or layer name is refused before any training
        layer_schedules(strategy, sparsity, steps, layer_sparsity, node_sparsity)
    elif layer_sparsity:
        raise ScalpelError("a layer sparsity overrides the sparsity of gradual pruning: give that too (--sparsity "
                           "or --node-sparsity)")
    node_layers = [name for name, s in strategy.items() if s.method == "node" and node_sparsity is None]
    if ck.resuming:
        print(f"scalpel prune: resuming from {checkpoint} ({_progress(ck)})", file=sys.stderr)
        original, dense_test, dense_correct = ck.get("original"), ck.get("dense_test"), ck.get("dense_correct")
        if node_layers:  # the snapshots hold the masks' parameters
            torch_chain.add_node_masks(net, node_layers, ck.get("node_scale"))
        torch_chain.restore(net, ck.get("net"))
    else:
        hooks.train_first()
        dense_test, dense_correct = _test_score(hooks.test())
        original = torch_chain.weights(net)
    cost = ObjectiveCost(LayerCost(spec, layers), objective)
    scale = node_penalty_scale(node_layers, original, cost) if node_layers and node_penalty == "cost" else None
    if not ck.resuming:
        if node_layers:
            torch_chain.add_node_masks(net, node_layers, scale)
        ck.save(original=original, dense_test=dense_test, dense_correct=dense_correct, node_scale=scale,
                net=torch_chain.snapshot(net), seed=seed + 1, **hooks.saved())
    seeds = [ck.get("seed", seed + 1)]

    def retrain(masks=None, **kwargs):
        seeds[0] += 1
        hooks.retrain(seeds[0] - 1, masks, **kwargs)

    run = SimpleNamespace(net=net, retrain=retrain, tolerance=tolerance, max_rounds=max_rounds, ck=ck, seeds=seeds,
                          evaluate=hooks.evaluate, confirm=hooks.confirm)
    node_result = ck.get("node_result")
    if node_layers and node_result is None:
        node_result = _prune_nodes(run, penalty, recover)
        ck.save(node_result=node_result, node_state=None, net=torch_chain.snapshot(net), seed=seeds[0])
    if any(s.method in GROUP_METHODS for s in strategy.values()) or node_sparsity is not None:
        reference = (node_result.baseline_accuracy, node_result.confirmed_baseline) if node_result else None
        if gradual:
            result = _prune_gradual(run, strategy, sparsity, steps, layer_sparsity, node_sparsity, how, reference)
        else:
            result = _prune_simd(run, strategy, cost if method == "scalpel" else WeightCount(), step, how, reference)
    else:
        result = PruneResult(node_result.baseline_accuracy, node_result.final_accuracy,
                             strategy={n: s.__dict__ for n, s in strategy.items()}, walked_back=node_result.walked_back,
                             confirmed_baseline=node_result.confirmed_baseline,
                             confirmed_accuracy=node_result.confirmed_accuracy)
    weights = torch_chain.weights(net)
    if method == "optimized":
        reverted = [name for name, w in weights.items() if np.count_nonzero(w) > w.size / 2]
    else:
        reverted = [name for name, s in strategy.items() if s.method == "simd" and not weights[name].all()
                    and cost(name, weights[name])[0] >= cost(name, np.ones_like(weights[name]), "dense")[0]]
    if reverted:
        _revert(net, reverted, original, retrain)
        result.final_accuracy = hooks.evaluate()
        result.confirmed_accuracy = hooks.confirm() if hooks.confirm else None
        weights = torch_chain.weights(net)
    result.reverted = reverted
    if hooks.finetune and any(not w.all() for w in weights.values()):  # nothing pruned: nothing to retrain
        _finetune(net, hooks, result, retrain_seed=seeds[0])
        weights = torch_chain.weights(net)
    if gradual and result.final_accuracy < result.baseline_accuracy - tolerance:
        warnings.warn(f"scalpel prune: pruned gradually to {gradual_target(sparsity, node_sparsity)}, validation "
                      f"accuracy ended {100 * (result.baseline_accuracy - result.final_accuracy):.2f} points below the "
                      f"unpruned model's (tolerance {100 * tolerance:.2g}); choose a lower sparsity, more steps or a "
                      "longer final retraining", BelowTolerance, stacklevel=3)
    result.nodes = node_result
    result.layers = layer_summary(strategy, weights, cost, baseline_forms(method, weights))
    prunable = [name for name, s in strategy.items() if s.method != "none"]
    result.weights_removed = 1 - sum(np.count_nonzero(weights[n]) for n in prunable) / sum(weights[n].size for n in prunable)
    pruned_test, pruned_correct = _test_score(hooks.test())
    test = {"dense": dense_test, "pruned": pruned_test}
    if dense_correct is not None and pruned_correct is not None:
        test["paired"] = paired_difference(dense_correct, pruned_correct)
    return result, test


def _test_score(score):
    """(accuracy, per-image correctness or None) of what a `test` hook returned."""
    if score is None or np.ndim(score) == 0:
        return score, None
    correct = np.asarray(score, dtype=bool)
    return float(correct.mean()), correct


def _finetune(net, hooks, result, retrain_seed) -> None:
    """The final retraining, pruned weights held at zero; undone when the confirmation images
    (which no decision saw) score the model lower than before it."""
    from . import torch_chain

    before = torch_chain.snapshot(net)
    confirmed = hooks.confirm() if hooks.confirm else None
    hooks.finetune(retrain_seed, {name: (w != 0).astype(np.float32) for name, w in torch_chain.weights(net).items()})
    after = hooks.confirm() if hooks.confirm else None
    result.finetuned = after is None or after >= confirmed
    if not result.finetuned:
        torch_chain.restore(net, before)
    result.final_accuracy = hooks.evaluate()
    result.confirmed_accuracy = after if result.finetuned else confirmed


def _progress(ck) -> str:
    """Where a checkpointed run stopped, in words."""
    simd, nodes, gradual = ck.get("simd_state"), ck.get("node_state"), ck.get("gradual_state")
    if gradual is not None:
        return f"gradual step {gradual.step} done"
    if simd is not None:
        return f"pruning round {simd.round} done"
    if ck.get("node_result") is not None:
        return "node pruning done"
    if nodes is not None:
        return f"node pruning round {nodes.round} done"
    return "the model trained, no round done"


def node_penalty_scale(names: list[str], weights: dict, cost: LayerCost) -> dict[str, float]:
    """Each node-pruned layer's weight in the L1 penalty: what removing one of its nodes saves
    by the target's cost model — its share of its own layer's time and of the next layer's
    (whose inputs it feeds) — relative to the average node. The paper's uniform λ treats a
    conv filter and an FC neuron alike; on a GPU a LeNet-5 conv filter costs ~30x a neuron."""
    order = list(weights)
    saving = {}
    for name in names:
        nxt = order[order.index(name) + 1] if order.index(name) + 1 < len(order) else None
        time = cost(name, np.ones_like(weights[name]))[0] + (cost(nxt, np.ones_like(weights[nxt]))[0] if nxt else 0.0)
        saving[name] = time / weights[name].shape[0]
    nodes = sum(weights[name].shape[0] for name in names)
    mean = sum(saving[name] * weights[name].shape[0] for name in names) / nodes
    return {name: saving[name] / mean for name in names}


def _revert(net, names, original, retrain) -> None:
    """Give `names` their unpruned weights back and retrain, the other layers' zeros held."""
    from . import torch_chain

    torch = torch_chain._torch()
    with torch.no_grad():
        for name in names:
            net.weight(name).copy_(torch.from_numpy(original[name]).reshape(net.weight(name).shape))
    torch_chain.hold_removed_nodes(net)
    weights = torch_chain.weights(net)
    retrain({name: (w != 0).astype(np.float32) for name, w in weights.items() if name not in names})


def _prune_nodes(run, penalty, recover):
    """`node_pruning.prune_nodes` on the torch chain `run.net`, whose masks are in place."""
    from tqdm import tqdm

    from . import torch_chain
    from .node_pruning import prune_nodes, update_alpha

    net = run.net

    def update(net):
        for name, (alpha, beta) in torch_chain.node_masks(net).items():
            new = update_alpha(alpha, beta)
            if not new.any():  # a layer is never pruned to nothing: its strongest node stays
                new[np.argmax(beta)] = 1.0
            if not np.array_equal(new, alpha):
                torch_chain.set_alpha(net, name, new)

    def alive():
        return {name: int(alpha.sum()) for name, (alpha, _) in torch_chain.node_masks(net).items()}

    def remove_and_retrain():
        torch_chain.remove_masked_nodes(net)
        run.retrain()

    resume = run.ck.get("node_state")
    bar = tqdm(total=run.max_rounds, initial=resume.round if resume else 0, desc="node pruning rounds", file=sys.stderr)

    def report(round_):
        bar.update(1)
        verdict = ("kept after recovery" if round_.recovered else "kept") if round_.kept else "undone"
        bar.set_postfix_str(f"λ {round_.penalty:.2g} {verdict}, val {round_.accuracy:.2%}, "
                            + " ".join(f"{n} {c}" for n, c in round_.alive.items()))

    result = prune_nodes(lambda lam: run.retrain(penalty=lam, after_step=update), alive, run.evaluate,
                         lambda: torch_chain.snapshot(net), lambda s: torch_chain.restore(net, s), remove_and_retrain,
                         tolerance=run.tolerance, penalty=penalty, max_rounds=run.max_rounds, confirm=run.confirm,
                         progress=report, resume=resume, recover=(lambda lam: run.retrain(penalty=lam)) if recover else None,
                         checkpoint=lambda state: run.ck.save(node_state=state, seed=run.seeds[0]))
    bar.close()
    return result


def _chain_access(net, node_layers=()):
    """The pruning loops' view of the torch chain `net`: (net_weights, set_mask, snapshot,
    restore), `set_mask` zeroing the layer's weights the mask drops; in `node_layers` the mask
    drops whole rows, and those nodes are removed as node pruning removes them (their bias and
    the consumer's inputs they fed zeroed, and held so while training: `torch_chain.hold_removed_nodes`),
    so the compiler can drop them, not fold a constant."""
    from . import torch_chain

    torch = torch_chain._torch()

    def set_mask(name, mask):
        with torch.no_grad():
            net.weight(name).mul_(torch.from_numpy(mask).reshape(net.weight(name).shape))
        if name in node_layers:
            net.removed[name] = mask.reshape(mask.shape[0], -1).any(axis=1).astype(np.float32)
            torch_chain.hold_removed_nodes(net)

    return (lambda: torch_chain.weights(net)), set_mask, (lambda: torch_chain.snapshot(net)), \
        (lambda saved: torch_chain.restore(net, saved))


def _prune_simd(run, strategy, cost, step, how, reference):
    """`prune_simd` on the torch chain `run.net`."""
    from tqdm import tqdm

    resume = run.ck.get("simd_state")
    bar = tqdm(total=run.max_rounds, initial=resume.round if resume else 0, desc="pruning rounds", file=sys.stderr)

    def report(round_):
        bar.update(1)
        bar.set_postfix_str(f"{round_.layer} {'kept' if round_.kept else 'undone'}, "
                            f"val {round_.accuracy:.2%}, removed {round_.weights_removed:.1%}")

    net_weights, set_mask, snapshot, restore = _chain_access(run.net)
    result = prune_simd(net_weights, set_mask, lambda masks: run.retrain(masks), run.evaluate, snapshot, restore,
                        strategy, cost, tolerance=run.tolerance, step=step, how=how, max_rounds=run.max_rounds,
                        progress=report, confirm=run.confirm, reference=reference, resume=resume,
                        checkpoint=lambda state: run.ck.save(simd_state=state, seed=run.seeds[0]))
    bar.close()
    return result


def _prune_gradual(run, strategy, sparsity, steps, layer_sparsity, node_sparsity, how, reference):
    """`gradual_pruning.prune_gradual` on the torch chain `run.net`."""
    from tqdm import tqdm

    from .gradual_pruning import prune_gradual

    resume = run.ck.get("gradual_state")
    bar = tqdm(total=steps, initial=resume.step if resume else 0, desc="gradual pruning steps", file=sys.stderr)

    def report(round_):
        bar.update(1)
        bar.set_postfix_str(f"val {round_.accuracy:.2%}, removed {round_.weights_removed:.1%}")

    node_layers = {name for name, s in strategy.items() if s.method == "node"} if node_sparsity is not None else set()
    net_weights, set_mask, snapshot, restore = _chain_access(run.net, node_layers)
    result = prune_gradual(net_weights, set_mask, lambda masks: run.retrain(masks), run.evaluate, snapshot, restore,
                           strategy, sparsity=sparsity, steps=steps, layer_sparsity=layer_sparsity,
                           node_sparsity=node_sparsity, how=how, progress=report, confirm=run.confirm,
                           reference=reference, resume=resume,
                           checkpoint=lambda state: run.ck.save(gradual_state=state, seed=run.seeds[0]))
    bar.close()
    return result
