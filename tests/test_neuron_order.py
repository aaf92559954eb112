"""Reordering hidden neurons before SIMD-aware pruning: a permutation that keeps the network's
function and gathers alike neurons into the aligned groups."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalpel_tvm import TargetSpec, datasets, neuron_order, paper_nets, pruning, torch_chain
from scalpel_tvm.int16_net import read_chain


@settings(max_examples=40, deadline=None)
@given(neurons=st.integers(1, 40), inputs=st.integers(1, 30), group=st.sampled_from([2, 4, 8]),
       seed=st.integers(0, 2**16))
def test_the_order_is_a_permutation_of_the_neurons(neurons, inputs, group, seed):
    profiles = np.random.default_rng(seed).standard_normal((neurons, inputs))
    profiles[::3] = 0  # silent neurons too
    order = neuron_order.similar_order(profiles, group)
    assert sorted(order.tolist()) == list(range(neurons))


@given(seed=st.integers(0, 2**16), group=st.sampled_from([2, 4, 8]), clusters=st.integers(2, 5))
@settings(max_examples=30, deadline=None)
def test_neurons_that_use_the_same_inputs_end_up_in_one_aligned_group(seed, group, clusters):
    """Planted clusters: each cluster's neurons have weight only on its own inputs; shuffled,
    the order puts every cluster into one aligned run of `group`."""
    rng = np.random.default_rng(seed)
    inputs = 4 * clusters
    cluster_of = np.repeat(np.arange(clusters), group)
    profiles = np.zeros((clusters * group, inputs))
    for n, c in enumerate(cluster_of):
        profiles[n, 4 * c:4 * c + 4] = rng.uniform(0.5, 1.5, 4)
    shuffle = rng.permutation(len(profiles))
    order = neuron_order.similar_order(profiles[shuffle], group)
    runs = cluster_of[shuffle][order].reshape(clusters, group)
    assert np.all(runs == runs[:, :1])


@pytest.mark.parametrize("target, reordered", [("x86-avx2", {"fc1", "fc2"}), ("cortex-m4", {"fc1", "fc2"})])
def test_reordering_keeps_the_networks_outputs_and_the_output_layers_order(target, reordered):
    """x86 prunes G outputs of a layer (its own rows decide), the M4 pairs of inputs (the
    consumer's columns decide); either way the network computes the same and the output layer,
    whose outputs are the model's, is never reordered."""
    torch = torch_chain._torch()
    torch.manual_seed(0)
    model = paper_nets.network("lenet_300_100")
    _, layers = read_chain(model)
    net = torch_chain.chain_net(model)
    x = torch.from_numpy(np.random.default_rng(0).random((16, 784), dtype=np.float32))
    before = net(x).detach().numpy()
    weights_before = torch_chain.weights(net)
    orders = neuron_order.orders_for_groups(net, pruning.layer_strategy(TargetSpec.preset(target), layers))
    assert set(orders) == reordered
    for name, order in orders.items():
        assert not np.array_equal(order, np.arange(len(order)))
        neuron_order.reorder_neurons(net, name, order)
    np.testing.assert_allclose(net(x).detach().numpy(), before, rtol=1e-5, atol=1e-5)
    after = torch_chain.weights(net)
    np.testing.assert_array_equal(after["fc1"], weights_before["fc1"][orders["fc1"]])
    np.testing.assert_array_equal(after["fc3"], weights_before["fc3"][:, orders["fc2"]])


def test_alike_neurons_together_keep_more_of_the_weights_when_the_same_groups_are_cut():
    """What the order is for: with neurons that share inputs in clusters but sit in random order,
    cutting the same number of G×1 groups keeps more squared magnitude after reordering."""
    rng = np.random.default_rng(1)
    clusters, group, inputs = 12, 8, 96
    cluster_of = rng.permutation(np.repeat(np.arange(clusters), group))
    support = rng.random((clusters, inputs)) < 0.25
    w = rng.standard_normal((clusters * group, inputs)) * (0.1 + support[cluster_of])

    def kept(w_nk):
        alive = pruning.groups_alive(np.ones_like(w_nk), group, "gx1")
        mask = pruning.group_mask(w_nk, alive // 4, group, "gx1")
        return float(((w_nk * mask) ** 2).sum() / (w_nk ** 2).sum())

    assert kept(w[neuron_order.similar_order(w, group)]) > kept(w) + 0.1


def test_prune_onnx_reorders_before_the_rounds_and_writes_a_model_that_computes_the_same():
    """With no round to run, what `order_neurons` writes is the reordered model: fc1's rows
    permuted, fc3's columns with fc2's order, the same outputs in onnxruntime."""
    from nets import run_ort

    model = paper_nets.network("lenet_300_100")
    data = datasets.load("mnist", limit=2000)
    pruned, _, _ = pruning.prune_onnx(model, "x86-avx2", data, max_rounds=0, order_neurons=True)
    _, before = read_chain(model)
    _, after = read_chain(pruned)
    rows = {tuple(r) for r in before[0]["w_nk"].round(6)}
    assert {tuple(r) for r in after[0]["w_nk"].round(6)} == rows
    assert not np.array_equal(after[0]["w_nk"], before[0]["w_nk"])
    x = np.random.default_rng(0).random((8, 784), dtype=np.float32)
    np.testing.assert_allclose(run_ort(pruned, x), run_ort(model, x), rtol=1e-4, atol=1e-5)

