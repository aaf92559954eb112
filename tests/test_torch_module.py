"""A user's own torch.nn.Module, trained by the user's own loop: the frontend prunes a copy, in
the structure the target skips, and the pruned module exports to ONNX and compiles."""
import io

import numpy as np
import onnx
import pytest
import torch
import tvm
from torch import nn

from nets import run_ort
import scalpel_tvm
from scalpel_tvm import ScalpelError, pruning, sparsity_search
from scalpel_tvm.gradual_pruning import kept_count
from scalpel_tvm.torch_module import read_module


class Custom(nn.Module):
    """BatchNorm, tanh and sigmoid (a dead node feeds a constant, not zero) and a grouped conv
    the frontend cannot mask."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Tanh(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 32), nn.Sigmoid(), nn.Linear(32, 3))

    def forward(self, x):
        return self.head(self.features(x))


def task(n, seed):
    """8x8 images whose class is the brightest of three bands."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.random((n, 1, 8, 8)).astype(np.float32) * 0.5
    for i, c in enumerate(y):
        x[i, 0, :, 3 * c:3 * c + 2] += 0.8
    return torch.from_numpy(x), torch.from_numpy(y)


TRAIN, VALID, CONFIRM = task(1024, 0), task(400, 1), task(400, 2)


def user_train(module, epochs):
    """A plain user loop: builds its optimizer from module.parameters() on every call."""
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(max(1, int(epochs))):
        for index in torch.randperm(len(TRAIN[0]), generator=generator).split(64):
            loss = nn.functional.cross_entropy(module(TRAIN[0][index]), TRAIN[1][index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def accuracy(data):
    def measure(module):
        module.eval()
        with torch.no_grad():
            return float((module(data[0]).argmax(1) == data[1]).float().mean())
    return measure


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = Custom()
    user_train(model, 3)
    assert accuracy(VALID)(model) > 0.9
    return model


def test_node_pruning_of_a_users_module_for_a_gpu_removes_nodes_and_keeps_accuracy(trained):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    pruned, result, test = pruning.prune_module(trained, "cuda", user_train, accuracy(VALID), TRAIN[0][:4],
                                                confirm=accuracy(CONFIRM), test=accuracy(VALID), tolerance=0.03,
                                                penalty=1e-3, max_rounds=8, epochs=4)
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())  # the user's module is untouched
    assert result.skipped == {"features.4": "grouped or dilated convolution"}
    nodes = result.nodes.nodes
    assert set(nodes) == {"features.0", "head.1"}  # the output layer keeps its classes
    assert nodes["head.1"][1] < 32  # neurons went
    dead = ~pruned.head[1].weight.detach().any(1)
    assert dead.sum() == 32 - nodes["head.1"][1] and not pruned.head[1].bias.detach()[dead].any()
    assert test["pruned"] >= test["dense"] - 0.03 - 0.02
    assert result.final_accuracy >= result.baseline_accuracy - 0.03
    assert not list(pruned.parameters())[0].grad_fn
    # the pruned module exports and runs: ONNX (onnxruntime) computes what torch does
    buffer = io.BytesIO()
    pruned.eval()
    torch.onnx.export(pruned, (VALID[0][:8],), buffer, dynamo=False, input_names=["input"])
    model = onnx.load_from_string(buffer.getvalue())
    with torch.no_grad():
        np.testing.assert_allclose(run_ort(model, VALID[0][:8].numpy()), pruned(VALID[0][:8]).numpy(), atol=1e-5)


def test_a_users_module_for_a_gpu_loses_the_nodes_node_sparsity_names_along_the_ramp(trained):
    pruned, result, test = pruning.prune_module(trained, "cuda", user_train, accuracy(VALID), TRAIN[0][:4],
                                                test=accuracy(VALID), node_sparsity=0.5, steps=2,
                                                layer_sparsity={"head.1": 0.75})
    assert result.nodes is None and len(result.rounds) == 2  # no mask layers
    for layer, kept in ((pruned.features[0], 4), (pruned.head[1], 8)):
        rows = layer.weight.detach().reshape(layer.weight.shape[0], -1).any(1)
        assert rows.sum() == kept and not layer.bias.detach()[~rows].any()  # whole nodes, bias too
    # a dead neuron's sigmoid is 0.5, not zero: the classifier keeps reading it (the compiler folds it)
    assert pruned.head[3].weight.detach().all() and pruned.features[4].weight.detach().all()
    assert test["pruned"] >= test["dense"] - 0.1


def test_a_users_module_gets_its_node_fraction_searched_through_its_own_loop(trained):
    """`sparsity_search.search_fraction` around `prune_module`: every trial is the user's module
    pruned gradually (tolerance 100 points, so every trial holds and the search goes up), and the
    module returned is the one of the largest fraction tried."""
    search, (pruned, result, test) = sparsity_search.search_fraction(
        lambda fraction: pruning.prune_module(trained, "cuda", user_train, accuracy(VALID), TRAIN[0][:4],
                                              test=accuracy(VALID), node_sparsity=fraction, steps=2),
        "node_sparsity", low=0.0, high=0.9, trials=2, tolerance=1.0, progress=lambda _: None)
    assert [t.fraction for t in search.trials] == [0.45, 0.675] and search.chosen.fraction == 0.675
    rows = pruned.features[0].weight.detach().reshape(pruned.features[0].weight.shape[0], -1).any(1)
    assert rows.sum() == kept_count(len(rows), 0.675)
    assert search.chosen.test == test and search.chosen.weights_removed == result.weights_removed


def test_simd_pruning_of_a_users_module_for_cortex_m_cuts_aligned_pairs(trained):
    pruned, result, _ = scalpel_tvm.prune(trained, "cortex-m4", user_train, accuracy(VALID), TRAIN[0][:4],
                                             tolerance=0.03, max_rounds=4, step=0.5)
    assert result.rounds[0].layer == "features.0" and result.rounds[0].kept  # the most cycles on an M4
    w = pruned.features[0].weight.detach().numpy().reshape(8, 9)  # im2col rows: pairs of the 9 taps
    pairs = np.pad(w, [(0, 0), (0, 1)]).reshape(8, 5, 2)
    assert pruning.groups_alive(w, 2, "1xg") <= 20
    assert np.all((pairs[:, :4, 0] == 0) == (pairs[:, :4, 1] == 0))  # whole pairs cut
    assert pruned.features[4].weight.detach().all()  # the grouped conv is left alone


def test_a_module_with_nothing_to_prune_is_a_clear_error():
    with pytest.raises(ScalpelError, match="calls no nn.Linear or nn.Conv2d the frontend can prune"):
        pruning.prune_module(nn.Sequential(nn.ReLU()), "cuda", user_train, accuracy(VALID), TRAIN[0][:4])


class Tokens(nn.Module):
    """A transformer-style block: token-wise Linear + GELU + Linear on [batch, tokens, features]
    (an image's 8 rows as 8 tokens of 8 features), averaged over the tokens, then a classifier."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.mlp(x.flatten(1, 2)).mean(1))


def test_token_wise_linears_are_node_pruned_and_the_pass_shrinks_them():
    """A Linear on [batch, tokens, features] loses whole output features (its last axis); the
    exported model's MatMuls then compile node-shrunk (through the GELU and the mean over tokens)
    and compute what torch does."""
    torch.manual_seed(0)
    model = Tokens()
    user_train(model, 3)
    layers, skipped = read_module(model, TRAIN[0][:4])
    assert not skipped and [layer["tokens"] for layer in layers] == [8, 8, 1]
    pruned, result, test = pruning.prune_module(model, "cuda", user_train, accuracy(VALID), TRAIN[0][:4],
                                                confirm=accuracy(CONFIRM), test=accuracy(VALID), tolerance=0.03,
                                                penalty=1e-3, max_rounds=8, epochs=4)
    nodes = result.nodes.nodes
    assert nodes["mlp.0"][1] < 32 or nodes["mlp.2"][1] < 16  # features went
    # torch.fx finds each layer's consumer (through the GELU, and the mean over the tokens), so
    # the consumer's inputs that dead features fed are zeroed too
    assert result.consumers_unknown == {"head": "its output is the module's output"}
    for layer, consumer in ((pruned.mlp[0], pruned.mlp[2]), (pruned.mlp[2], pruned.head)):
        dead = ~layer.weight.detach().any(1)
        assert not consumer.weight.detach()[:, dead].any()
    assert test["pruned"] >= test["dense"] - 0.03 - 0.02
    buffer = io.BytesIO()
    pruned.eval()
    torch.onnx.export(pruned, (VALID[0][:2],), buffer, dynamo=False, input_names=["input"])
    model_onnx = onnx.load_from_string(buffer.getvalue())
    mod = tvm.transform.Sequential([scalpel_tvm.Pass("x86-avx2")])(scalpel_tvm.import_onnx(model_onnx, batch=2))
    kernels = [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    # each pruned layer shrinks: the mean over tokens passes its dead features on as constants
    assert sum("shrunk" in name for name in kernels) == sum(nodes[n][1] < nodes[n][0] for n in ("mlp.0", "mlp.2"))
    target = scalpel_tvm.TargetSpec.preset("x86-avx2").target
    vm = tvm.relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    with torch.no_grad():
        np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(VALID[0][:2].numpy())).numpy(),
                                   pruned(VALID[0][:2]).numpy(), atol=1e-5)


class MLP(nn.Module):
    """Functional ReLUs between the layers: the graph, not the module list, says who feeds whom."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 32), nn.Linear(32, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(nn.functional.relu(self.fc1(x.flatten(1))))))


def test_a_users_module_gets_its_neurons_ordered_for_the_groups():
    """On x86 the FC layers lose groups of 8 outputs; `order_neurons` first gathers alike
    neurons into those groups, moving the consumers' inputs with them (found in the traced
    graph), so the module computes what it did."""
    from scalpel_tvm import neuron_order, torch_module

    torch.manual_seed(0)
    model = MLP()
    user_train(model, 3)
    net, layers, _ = torch_module.module_net(model, TRAIN[0][:4])
    orders = neuron_order.orders_for_groups(net, pruning.layer_strategy(scalpel_tvm.TargetSpec.preset("x86-avx2"), layers))
    assert set(orders) == {"fc1", "fc2"}
    with torch.no_grad():
        before = net(VALID[0]).numpy()
        for name, order in orders.items():
            assert not np.array_equal(order, np.arange(len(order)))
            neuron_order.reorder_neurons(net, name, order)
        np.testing.assert_allclose(net(VALID[0]).numpy(), before, rtol=1e-5, atol=1e-5)

    # with no pruning rounds the result is the reordered module itself
    ordered, result, _ = pruning.prune_module(model, "x86-avx2", user_train, accuracy(VALID), TRAIN[0][:4],
                                              max_rounds=0, order_neurons=True)
    assert result.consumers_unknown == {"fc3": "its output is the module's output"}
    original = dict(model.named_parameters())
    np.testing.assert_array_equal(ordered.fc1.weight.detach(), original["fc1.weight"].detach()[orders["fc1"]])
    np.testing.assert_array_equal(ordered.fc3.weight.detach(), original["fc3.weight"].detach()[:, orders["fc2"]])

    pruned, result, test = pruning.prune_module(model, "x86-avx2", user_train, accuracy(VALID), TRAIN[0][:4],
                                                test=accuracy(VALID), tolerance=0.03, max_rounds=3, step=0.5,
                                                order_neurons=True)
    assert pruning.groups_alive(pruned.fc1.weight.detach().numpy(), 8, "gx1") < 4 * 64  # whole groups of 8 outputs
    assert test["pruned"] >= test["dense"] - 0.03 - 0.02


def test_a_users_module_is_pruned_gradually_in_groups_of_8_inputs_its_output_layer_whole():
    torch.manual_seed(0)
    model = MLP()
    user_train(model, 3)
    pruned, result, test = pruning.prune_module(model, "x86-avx2", user_train, accuracy(VALID), TRAIN[0][:4],
                                                test=accuracy(VALID), sparsity=0.75, steps=3, orientation="1xg")
    assert len(result.rounds) == 3 and result.strategy["fc3"]["method"] == "none"
    for name, width in (("fc1", 64), ("fc2", 32)):
        w = getattr(pruned, name).weight.detach().numpy()
        groups = w.reshape(w.shape[0], width // 8, 8)
        assert np.all((groups == 0).all(axis=2) | (groups != 0).all(axis=2))  # whole groups of 8 inputs
        assert pruning.groups_alive(w, 8, "1xg") == np.ceil(groups.shape[0] * groups.shape[1] * 0.25)
    assert pruned.fc3.weight.detach().all()  # retrained, nothing cut
    assert test["pruned"] >= test["dense"] - 0.1
