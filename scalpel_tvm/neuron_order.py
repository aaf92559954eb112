"""Reordering hidden neurons so that aligned groups gather neurons that look alike.

The neurons of a hidden layer can be put in any order — permute the layer's outputs (its weight
rows and bias) and its consumer's inputs the same way and the network computes exactly the same
function. Which order they are in decides what an aligned group holds: a G×1 group is G
consecutive neurons of one layer sharing an input, a 1×G group G consecutive inputs of one
neuron of the next layer, that is G consecutive neurons of this one. Training leaves the order
arbitrary, so a group often mixes a neuron that needs an input with neurons that do not, and
pruning it costs the one that needed it. Grouping neurons whose weights are large in the same
places first (`similar_order`) lets whole groups be cut for less: on LeNet-300-100 with 90–95% of
its G×1 groups of 8 cut at once, 0.7–2.3 more test points after one epoch of retraining than the
trained order (`python python/bench_neuron_order.py`). In the full pruning loop the gain is
smaller than the loop's run-to-run noise (README), so the frontend uses it only when asked.
"""
from __future__ import annotations

import numpy as np


def similar_order(profiles: np.ndarray, group: int) -> np.ndarray:
    """A permutation of the rows of `profiles` (one row per neuron: the magnitudes of the weights
    a group of it would share) that puts alike rows into the same aligned run of `group`.

    Greedy: the strongest neuron not yet placed opens a run and takes the `group - 1` unplaced
    neurons whose magnitude profiles are closest to it in cosine similarity. Stronger neurons
    choose first, so they get the closest company."""
    magnitude = np.abs(np.asarray(profiles, dtype=np.float64))
    norms = np.linalg.norm(magnitude, axis=1)
    unit = magnitude / np.where(norms > 0, norms, 1.0)[:, None]
    by_strength = np.argsort(-norms, kind="stable")
    rank = np.argsort(by_strength)  # a neuron's place in by_strength
    placed = np.zeros(len(norms), bool)
    order = []
    for seed in by_strength:
        if placed[seed]:
            continue
        placed[seed] = True
        left = by_strength[~placed[by_strength]]  # strongest first: ties go to the stronger
        company = left[np.argsort(-(unit[left] @ unit[seed]), kind="stable")[:group - 1]]
        placed[company] = True
        order += [seed, *sorted(company, key=lambda n: rank[n])]
    return np.array(order, dtype=np.int64)


def orders_for_groups(net, strategy: dict) -> dict[str, np.ndarray]:
    """For each FC layer feeding another FC layer: the order of its neurons that suits the
    groups the strategy prunes — by its own rows where its groups are G outputs (gx1), by its
    consumer's columns where the consumer's groups are G inputs (1xg). The model's output layer
    keeps its order (its outputs are the model's)."""
    orders = {}
    for name in net.names:
        consumer = net.consumer(name)
        if consumer is None or not _is_fc(net, name) or not _is_fc(net, consumer):
            continue
        own, next_ = strategy.get(name), strategy.get(consumer)
        if own is not None and own.method == "simd" and own.orientation == "gx1" and own.group > 1:
            profiles = net.weight(name).detach().numpy()
            orders[name] = similar_order(profiles, own.group)
        elif next_ is not None and next_.method == "simd" and next_.orientation == "1xg" and next_.group > 1:
            profiles = net.weight(consumer).detach().numpy().T
            orders[name] = similar_order(profiles, next_.group)
    return orders


def reorder_for_groups(net, strategy: dict) -> dict[str, np.ndarray]:
    """Put every layer `orders_for_groups` finds in its order (exact); returns the orders."""
    orders = orders_for_groups(net, strategy)
    for name, order in orders.items():
        reorder_neurons(net, name, order)
    return orders


def reorder_neurons(net, name: str, order: np.ndarray) -> None:
    """Put layer `name`'s neurons in `order` and its consumer's inputs with them (exact)."""
    import torch

    index = torch.from_numpy(np.asarray(order, dtype=np.int64))
    module, consumer = net.module(name), net.module(net.consumer(name))
    with torch.no_grad():
        module.weight.copy_(module.weight[index])
        if module.bias is not None:
            module.bias.copy_(module.bias[index])
        consumer.weight.copy_(consumer.weight[:, index])


def _is_fc(net, name: str) -> bool:
    return net.weight(name).dim() == 2
