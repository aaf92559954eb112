"""The paper's networks and the three ways the GPU benchmark prunes them."""
import numpy as np
import pytest
from onnx import numpy_helper

import scalpel_tvm
from nets import run_ort
from scalpel_tvm import paper_nets
from scalpel_tvm.schedules.grouped_sparse import group_sparsity


def weights(model):
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


@pytest.mark.parametrize("name", ["lenet_300_100", "lenet5", "convnet", "nin"])
def test_networks_run_and_have_the_layers_the_node_counts_name(name):
    model = paper_nets.network(name)
    x = np.random.default_rng(0).standard_normal((2, *paper_nets.ARCHITECTURES[name][0][1:])).astype("float32")
    out = run_ort(model, x)
    assert out.shape[0] == 2 and np.all(np.isfinite(out))
    assert set(paper_nets.NODES_KEPT[name]) < set(paper_nets.layer_kinds(name))


def test_alexnet_has_the_standard_shapes():
    w = weights(paper_nets.network("alexnet"))
    assert w["conv1.weight"].shape == (96, 3, 11, 11)
    assert w["fc6.weight"].shape == (4096, 256 * 6 * 6)
    assert w["fc8.weight"].shape == (1000, 4096)


def test_node_pruning_leaves_exactly_the_kept_nodes_and_the_pass_removes_the_rest():
    dense = paper_nets.network("lenet5")
    pruned = paper_nets.node_pruned(dense, paper_nets.NODES_KEPT["lenet5"])
    w = weights(pruned)
    for layer, kept in paper_nets.NODES_KEPT["lenet5"].items():
        alive = np.any(w[f"{layer}.weight"].reshape(w[f"{layer}.weight"].shape[0], -1) != 0, axis=1)
        assert alive.sum() == kept
        assert np.all(w[f"{layer}.bias"][~alive] == 0)
    plan = scalpel_tvm.plan(scalpel_tvm.import_onnx(pruned, batch=1), "x86-avx2")
    removed = {lp.name: lp.removed_nodes for lp in plan.layers}
    assert removed == {"conv1": 11, "conv2": 32, "fc1": 435, "fc2": 0}


def test_magnitude_pruning_keeps_the_largest_weights_at_han_densities():
    dense = paper_nets.network("lenet_300_100")
    densities = paper_nets.han_density("lenet_300_100")
    before, after = weights(dense), weights(paper_nets.magnitude_pruned(dense, densities))
    for layer, density in densities.items():
        w0, w1 = before[f"{layer}.weight"], after[f"{layer}.weight"]
        assert abs(np.count_nonzero(w1) / w1.size - density) < 0.002
        kept = np.abs(w0[w1 != 0]).min()
        assert kept >= np.abs(w0[w1 == 0]).max()


def test_group_pruning_zeroes_whole_aligned_warp_groups():
    dense = paper_nets.network("lenet_300_100")
    pruned = weights(paper_nets.group_pruned(dense, {"fc1": 0.1}, 32))
    w_kn = pruned["fc1.weight"].T
    assert abs(group_sparsity(w_kn, 32, "gx1") - 0.9) < 0.01
    assert np.array_equal(pruned["fc2.weight"], weights(dense)["fc2.weight"])


def test_han_density_falls_back_to_alexnets_rates_by_layer_kind():
    assert paper_nets.han_density("nin") == {layer: 0.37 for layer in paper_nets.layer_kinds("nin")}
    assert paper_nets.han_density("convnet")["fc1"] == 0.09


def test_unknown_network_is_a_clear_error():
    with pytest.raises(ValueError, match="known: lenet_300_100"):
        paper_nets.network("resnet50")
