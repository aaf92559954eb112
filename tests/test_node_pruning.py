"""Node pruning with mask layers (Scalpel §3.3): equation (6)'s α update, equation (8)'s dropout,
the λ loop, and the removal of masked nodes, which must keep the network's outputs exactly."""
import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nets import TARGET, run_ort
from scalpel_tvm import ScalpelError, TargetSpec, datasets, node_pruning, paper_nets, pruning, torch_chain
from scalpel_tvm.cli import main
from scalpel_tvm.int16_net import read_chain
from scalpel_tvm.node_pruning import HYSTERESIS as EPS
from scalpel_tvm.node_pruning import THRESHOLD as T


def test_alpha_switches_off_below_the_threshold_and_on_only_past_the_hysteresis():
    beta = np.array([0.0, T - 1e-3, T, T + EPS / 2, T + EPS, 1.0] * 2, np.float32)
    alpha = np.array([1.0] * 6 + [0.0] * 6, np.float32)
    np.testing.assert_array_equal(node_pruning.update_alpha(alpha, beta), [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1])


def test_dropout_follows_the_square_root_of_the_nodes_kept():
    assert node_pruning.dropout_ratio(0.5, 25, 100) == pytest.approx(0.25)
    assert node_pruning.dropout_ratio(0.5, 100, 100) == 0.5
    with pytest.raises(ScalpelError, match="kept <= total"):
        node_pruning.dropout_ratio(0.5, 120, 100)


class StandIn:
    """A model whose masked nodes fall as λ grows (alive = N / (1 + λ/λ0)) and whose accuracy
    holds until 60% of the nodes are gone; removal and retraining cost `removal_cost` points."""

    def __init__(self, removal_cost=0.0, recovery=0.0):
        self.penalty, self.removed, self.removal_cost, self.retrained = 0.0, False, removal_cost, 0
        self.recovery, self.recovered = recovery, False  # points a recovery round gives back

    def alive(self):
        return {"a": int(100 / (1 + self.penalty / 1e-3)), "b": int(50 / (1 + self.penalty / 1e-3))}

    def evaluate(self):
        gone = 1 - sum(self.alive().values()) / 150
        return (0.99 - 0.1 * max(0.0, gone - 0.6) - (self.removal_cost * gone if self.removed else 0.0)
                + (self.recovery if self.recovered else 0.0))

    def run(self, **kwargs):
        def remove():
            self.removed, self.retrained = True, self.retrained + 1

        def restore(saved):
            self.penalty, self.removed, self.recovered = saved

        def train_masked(lam):
            self.penalty, self.recovered = lam, False

        def recover(lam):  # α frozen: the nodes stay as they are; accuracy comes back by `recovery`
            self.recovered = True

        return node_pruning.prune_nodes(train_masked, self.alive, self.evaluate,
                                        lambda: (self.penalty, self.removed, self.recovered), restore, remove,
                                        recover=recover if self.recovery else None, **kwargs)


def test_the_loop_raises_the_penalty_until_accuracy_falls_then_removes_the_nodes():
    model = StandIn()
    result = model.run(tolerance=0.005, penalty=1e-4, growth=4.0)
    kept = [r for r in result.rounds if r.kept]
    assert [r.penalty for r in kept[:3]] == pytest.approx([1e-4, 4e-4, 1.6e-3])
    undone = [r for r in result.rounds if not r.kept]
    assert undone and all(r.accuracy < 0.99 - 0.005 for r in undone)
    assert all(b.penalty < a.penalty * 4 for a, b in zip(undone, undone[1:]))  # smaller steps after an undo
    assert result.final_accuracy >= 0.99 - 0.005 and model.retrained == 1
    kept_fraction = sum(after for _, after in result.nodes.values()) / 150
    assert 0.3 < kept_fraction < 0.5
    assert result.nodes["a"][0] == 100 and result.nodes["a"][1] == model.alive()["a"]


def test_a_failing_round_is_kept_when_a_recovery_round_brings_accuracy_back():
    plain = StandIn().run(tolerance=0.005, penalty=1e-4, growth=4.0)
    model = StandIn(recovery=0.006)  # gives back a failing round's small losses, not its large ones
    result = model.run(tolerance=0.005, penalty=1e-4, growth=4.0)
    recovered = [r for r in result.rounds if r.recovered]
    assert recovered and all(r.kept and r.accuracy >= 0.99 - 0.005 for r in recovered)
    assert any(not r.kept for r in result.rounds)  # a loss too large to recover is still undone
    assert sum(after for _, after in result.nodes.values()) < sum(after for _, after in plain.nodes.values())
    assert result.final_accuracy >= 0.99 - 0.005


def test_rounds_the_retrained_network_cannot_hold_are_walked_back():
    model = StandIn(removal_cost=0.01)  # removing more than half the nodes costs more than the tolerance
    result = model.run(tolerance=0.005, penalty=1e-4, growth=4.0)
    assert result.walked_back > 0 and result.final_accuracy >= 0.99 - 0.005
    assert model.retrained == result.walked_back + 1


def test_the_strategy_prunes_nodes_on_gpus_and_cpu_convolutions():
    _, layers = read_chain(paper_nets.network("lenet5"))
    cuda = pruning.layer_strategy(TargetSpec.preset("cuda"), layers)
    assert [cuda[n].method for n in ("conv1", "conv2", "fc1", "fc2")] == ["node", "node", "node", "none"]
    x86 = pruning.layer_strategy(TargetSpec.preset("x86-avx2"), layers)
    assert [x86[n].method for n in ("conv1", "conv2", "fc1", "fc2")] == ["node", "node", "simd", "simd"]


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(["lenet5", "lenet_300_100"]), st.integers(0, 2**16))
def test_removing_masked_nodes_keeps_the_masked_networks_outputs_and_onnx_agrees(name, seed):
    """Random α and β in every mask; folding β and zeroing the α = 0 nodes (and the consumer
    inputs they fed) computes what the masked network did, in torch and in onnxruntime."""
    rng = np.random.default_rng(seed)
    model = paper_nets.network(name)
    net = torch_chain.chain_net(model)
    masked = net.names[:-1]
    torch_chain.add_node_masks(net, masked)
    for layer in masked:
        alpha = (rng.random(net.weight(layer).shape[0]) < 0.6).astype(np.float32)
        alpha[rng.integers(len(alpha))] = 1
        torch_chain.set_alpha(net, layer, alpha)
        with torch.no_grad():
            net.beta[layer].copy_(torch.from_numpy(rng.uniform(T, 1, len(alpha)).astype(np.float32)))
    x = rng.random((8, *net.input_shape), dtype=np.float32)
    before = net(torch.from_numpy(x)).detach().numpy()
    kept = torch_chain.remove_masked_nodes(net)
    after = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)
    weights = torch_chain.weights(net)
    for layer in masked:
        assert pruning.nodes_alive(weights[layer]) <= kept[layer]
        consumer = net.consumer(layer)
        dead = np.flatnonzero(torch_chain.node_masks(net)[layer][0] == 0)
        columns = weights[consumer].reshape(weights[consumer].shape[0], net.weight(layer).shape[0], -1)
        assert not columns[:, dead].any()
    written = torch_chain.write_weights(model, net)
    np.testing.assert_allclose(run_ort(written, x), before, rtol=1e-4, atol=1e-4)


def test_retraining_holds_removed_nodes_at_zero():
    net = torch_chain.chain_net(paper_nets.network("lenet_300_100"))
    torch_chain.add_node_masks(net, ["fc1"])
    alpha = np.ones(300, np.float32)
    alpha[:100] = 0
    torch_chain.set_alpha(net, "fc1", alpha)
    torch_chain.remove_masked_nodes(net)
    rng = np.random.default_rng(0)
    torch_chain.train(net, rng.random((256, 784), dtype=np.float32), rng.integers(0, 10, 256), epochs=1)
    w = torch_chain.weights(net)
    assert not w["fc1"][:100].any() and not net.module("fc1").bias[:100].detach().numpy().any()
    assert not w["fc2"][:, :100].any() and w["fc2"][:, 100:].all()


@pytest.mark.slow
def test_scalpel_prune_for_x86_removes_conv_filters_then_fc_groups_and_the_pass_compiles_it(tmp_path, capsys):
    """The whole moderate-parallelism path, reduced: LeNet-5 on 8,000 MNIST images; conv layers
    lose whole filters, FC layers aligned groups of 8 outputs; the pruned model compiled by
    `scalpel_tvm.Pass` computes what onnxruntime does."""
    import tvm

    import scalpel_tvm
    from scalpel_tvm.onnx_import import import_onnx

    model_path, out = tmp_path / "lenet5.onnx", tmp_path / "pruned.onnx"
    onnx.save(paper_nets.network("lenet5"), model_path)
    assert main(["prune", str(model_path), "--target", "x86-avx2", "--out", str(out), "--report", str(tmp_path / "r"),
                 "--limit", "8000", "--train-epochs", "1", "--epochs", "0.5", "--rounds", "4", "--tolerance", "3",
                 "--penalty", "3e-3"]) == 0
    table = capsys.readouterr().out
    assert "node pruning:" in table
    pruned = onnx.load(str(out))
    _, layers = read_chain(pruned)
    w = {layer["name"]: layer["w_nk"] for layer in layers if layer["op"] in ("fc", "conv")}
    assert pruning.nodes_alive(w["conv1"]) + pruning.nodes_alive(w["conv2"]) < 70  # filters went
    assert pruning.groups_alive(w["fc1"], 8, "gx1") < 0.8 * w["fc1"].size / 8  # groups of 8 outputs went
    data = datasets.load("mnist", limit=100)
    x = data.test_x[:50]
    mod = tvm.transform.Sequential([scalpel_tvm.Pass(TARGET)])(import_onnx(pruned, len(x)))
    vm = tvm.relax.VirtualMachine(tvm.compile(mod, target=TARGET), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x))
    np.testing.assert_allclose(np.asarray(got.numpy()), run_ort(pruned, x), rtol=1e-4, atol=1e-4)


def test_dropout_before_fc_layers_follows_the_connections_pruning_left():
    net = torch_chain.chain_net(paper_nets.network("lenet_300_100"))
    with torch.no_grad():
        net.weight("fc2")[:, :225] = 0  # 25% of fc2's connections left
    torch_chain.set_dropout(net, 0.5)
    assert net.dropout == pytest.approx({"fc2": 0.25, "fc3": 0.5})  # the first layer's input: none
    x = torch.ones(4, 784)
    net.eval()
    assert torch.equal(net(x), net(x))  # no dropout at inference
    net.train()
    assert not torch.equal(net(x), net(x))
    torch_chain.set_dropout(net, 0.0)
    assert net.dropout == {}
