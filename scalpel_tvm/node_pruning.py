"""Node pruning with mask layers (Scalpel §3.3): whole neurons and conv filters go, so the layer
stays dense and only shrinks — what a GPU (and a CPU's conv layers) can skip.

A mask layer follows every pruned layer (`torch_chain.add_node_masks`): output_i = α_i·β_i·x_i,
α_i ∈ {0, 1}, β_i ∈ [0, 1]. Training minimises the loss plus λ·Σβ (an L1 penalty that drives the
β of nodes the network can do without towards zero), clips β to [0, 1], and after every step
updates α by equation (6), a threshold T with hysteresis ε:

    α_i = 0 if β_i < T,   α_i = 1 if β_i ≥ T + ε,   α_i unchanged otherwise.

A round trains `epochs` at the current λ and is kept if validation accuracy stays within
`tolerance` of the unpruned model's; λ then grows by `growth`. With `recover` (opt-in), a round
that costs accuracy first gets one recovery round: trained at the last kept λ with α frozen (the
nodes it switched off stay off), it is kept if accuracy comes back. Part of a failing round's
loss is the penalty squeezing the β of the nodes that stay, which a round at the gentler λ gives
back; what it cannot give back is capacity the network lacks. It is opt-in because it judges a
round twice on the same validation images: on the ConvNet (Fashion-MNIST) it removed 28-42% of
the filters instead of 9-16%, on LeNet-5 (MNIST) the rounds it kept failed the end check and
were walked back, leaving fewer nodes removed than without it (README). Otherwise the round is
undone and the growth factor is square-rooted (a smaller step in λ), until it is below
`min_growth`. Then the nodes with α = 0 are removed (zeroed, with the consumer's inputs they fed),
β is folded into the weights, the masks are gone, and the network is retrained with the removed
nodes held at zero. If that retrained network — or, with `confirm`, images no round was judged
on — falls below the floor, the kept rounds are walked back, newest first.

Dropout, where a network has it, is scaled to the nodes kept by equation (8),
D_r = D_o·sqrt(C_r / C_o) (`dropout_ratio`); the ONNX chains the frontend reads carry no dropout.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ScalpelError

THRESHOLD = 0.1  # T of equation (6)
HYSTERESIS = 0.05  # ε of equation (6)


def update_alpha(alpha: np.ndarray, beta: np.ndarray, threshold: float = THRESHOLD,
                 hysteresis: float = HYSTERESIS) -> np.ndarray:
    """Equation (6): switch a node off below T, back on at T + ε, leave it between."""
    alpha, beta = np.asarray(alpha, np.float32), np.asarray(beta, np.float32)
    return np.where(beta < threshold, 0.0, np.where(beta >= threshold + hysteresis, 1.0, alpha)).astype(np.float32)


def dropout_ratio(original: float, kept: int, total: int) -> float:
    """Equation (8): the dropout ratio for a layer keeping `kept` of its `total` nodes (or
    connections, for weight pruning)."""
    if total <= 0 or not 0 <= kept <= total:
        raise ScalpelError(f"dropout_ratio needs 0 <= kept <= total, got {kept} of {total}")
    return original * float(np.sqrt(kept / total))


@dataclass
class NodeRound:
    penalty: float  # λ of the round
    alive: dict  # layer -> nodes with α = 1 after the round (before it, when undone)
    accuracy: float
    kept: bool
    recovered: bool = False  # kept only after the recovery round


@dataclass
class NodeResult:
    baseline_accuracy: float
    final_accuracy: float  # after the masked nodes are removed and the network retrained
    nodes: dict = field(default_factory=dict)  # layer -> [nodes before, nodes kept]
    rounds: list[NodeRound] = field(default_factory=list)
    walked_back: int = 0
    confirmed_baseline: float | None = None
    confirmed_accuracy: float | None = None


@dataclass
class NodeState:
    """Everything `prune_nodes` carries from round to round: what a checkpoint holds."""
    result: NodeResult
    penalty: float  # λ of the next round
    growth: float  # λ's factor after a kept round
    kept_states: list  # (snapshot, λ) after each kept round
    round: int = 0  # rounds started
    stopped: bool = False  # the growth fell below min_growth: no more rounds
    net: object = None  # the model's snapshot at the checkpoint


def prune_nodes(train_masked, alive, evaluate, snapshot, restore, remove_and_retrain, *,
                tolerance: float, penalty: float = 1e-4, growth: float = 4.0, min_growth: float = 1.2,
                max_rounds: int = 20, confirm=None, progress=None, checkpoint=None,
                resume: NodeState | None = None, recover=None) -> NodeResult:
    """The loop of the module doc, on a model reached through callables: `train_masked(λ)` trains
    one round with the penalty (updating α by `update_alpha` after every step is its job),
    `recover(λ)` one with α left as it is (None: no recovery rounds),
    `alive()` -> {layer: nodes with α = 1}, `evaluate()` -> validation accuracy, `snapshot()` /
    `restore(s)`, and `remove_and_retrain()` removes the α = 0 nodes, folds β and retrains.
    `checkpoint(NodeState)` is called after every round; `resume=` that state goes on from there."""
    if not penalty > 0 or not growth > min_growth > 1:
        raise ScalpelError(f"node pruning needs penalty > 0 and growth > min_growth > 1; got {penalty}, {growth}, {min_growth}")
    if resume:
        state = resume
        restore(state.net)
    else:
        baseline = evaluate()
        result = NodeResult(baseline, baseline, nodes={name: [count, count] for name, count in alive().items()})
        result.confirmed_baseline = confirm() if confirm else None
        state = NodeState(result, penalty, growth, [(snapshot(), penalty)])
    result = state.result
    floor = result.baseline_accuracy - tolerance
    while state.round < max_rounds and not state.stopped:
        state.round += 1
        before = alive()
        train_masked(state.penalty)
        accuracy = evaluate()
        kept = recovered = accuracy >= floor
        if not kept and recover is not None:
            recover(state.kept_states[-1][1])
            accuracy = evaluate()
            kept = accuracy >= floor
        result.rounds.append(NodeRound(state.penalty, alive() if kept else before, accuracy, kept,
                                       recovered=kept and not recovered))
        if kept:
            state.kept_states.append((snapshot(), state.penalty))
            state.penalty *= state.growth
        else:  # undo; approach the failing λ in a smaller step
            restore(state.kept_states[-1][0])
            state.growth = float(np.sqrt(state.growth))
            state.stopped = state.growth < min_growth
            state.penalty = state.kept_states[-1][1] * state.growth
        if progress:
            progress(result.rounds[-1])
        if checkpoint:
            state.net = snapshot()
            checkpoint(state)
    kept_states = state.kept_states
    while True:  # remove, retrain, and walk back while the floors are not met
        remove_and_retrain()
        accuracy = evaluate()
        confirmed = confirm() if confirm else None
        if len(kept_states) == 1 or (accuracy >= floor and (confirm is None or confirmed >= result.confirmed_baseline - tolerance)):
            break
        kept_states.pop()
        restore(kept_states[-1][0])
        result.walked_back += 1
    result.final_accuracy, result.confirmed_accuracy = accuracy, confirmed
    for name, count in alive().items():
        result.nodes[name][1] = count
    return result
