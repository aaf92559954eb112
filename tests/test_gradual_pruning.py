"""Gradual pruning to a named sparsity (`gradual_pruning`) and the x86 FC groups' orientation:
the ramp, the loop on a stand-in model, resuming, and the whole path through `scalpel prune`
and `Pass`."""
import copy
import json
import re

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nets import relax_module, run_ort
from scalpel_tvm import ScalpelError, TargetSpec, datasets, paper_nets, prune_report, pruning
from scalpel_tvm.cli import main
from scalpel_tvm.gradual_pruning import (GradualState, gradual_layers, layer_schedules, parse_layer_sparsity,
                                         prune_gradual, ramp)
from scalpel_tvm.int16_net import read_chain


@settings(max_examples=80, deadline=None)
@given(st.floats(0.01, 0.99), st.integers(1, 60))
def test_the_ramp_cuts_most_early_least_late_and_ends_at_the_sparsity(sparsity, steps):
    fractions = ramp(sparsity, steps)
    assert len(fractions) == steps and fractions[-1] == pytest.approx(sparsity)
    cuts = np.diff([0.0, *fractions])
    assert np.all(cuts > 0)
    assert np.all(np.diff(cuts) <= 1e-12)  # each step cuts no more than the one before
    assert fractions[0] >= sparsity / steps


def test_a_sparsity_or_step_count_out_of_range_is_a_clear_error():
    with pytest.raises(ScalpelError, match=r"sparsity is the fraction of each layer's groups \(or nodes\) removed, "
                                           r"in \(0, 1\); got 1.5"):
        ramp(1.5, 10)
    with pytest.raises(ScalpelError, match="steps must be at least 1; got 0"):
        ramp(0.9, 0)


def test_the_orientation_chooses_the_x86_fc_groups_and_is_refused_where_the_kernels_fix_it():
    _, layers = read_chain(paper_nets.network("lenet5"))
    x86 = TargetSpec.preset("x86-avx2")
    inputs = pruning.layer_strategy(x86, layers, orientation="1xg")
    assert (inputs["fc1"].orientation, inputs["fc1"].group, inputs["conv1"].method) == ("1xg", 8, "node")
    assert "groups of 8 inputs" in inputs["fc1"].reason
    assert pruning.layer_strategy(x86, layers, orientation="gx1")["fc1"].orientation == "gx1"
    with pytest.raises(ScalpelError, match="cortex-m4 stores groups of inputs .* leave --orientation out"):
        pruning.layer_strategy(TargetSpec.preset("cortex-m4"), layers, orientation="gx1")
    with pytest.raises(ScalpelError, match="cuda prunes whole nodes, not groups"):
        pruning.layer_strategy(TargetSpec.preset("cuda"), layers, orientation="1xg")
    with pytest.raises(ScalpelError, match="unknown orientation '8x8'; known: 1xg"):
        pruning.layer_strategy(x86, layers, orientation="8x8")


def test_gradual_pruning_leaves_the_output_layer_whole_and_says_why():
    _, layers = read_chain(paper_nets.network("lenet_300_100"))
    for method in ("scalpel", "traditional"):
        strategy = pruning.pruning_strategy(TargetSpec.preset("x86-avx2"), layers, method, gradual=True)
        assert gradual_layers(strategy, 0.9) == ["fc1", "fc2"]
        assert (strategy["fc3"].method, strategy["fc3"].reason) == ("none", "gradual pruning leaves the output layer whole")
    gpu = pruning.pruning_strategy(TargetSpec.preset("cuda"), layers, "scalpel", gradual=True)
    with pytest.raises(ScalpelError, match=r"gradual pruning \(--sparsity\) found no layer to cut in groups.* leave "
                                           r"--sparsity out and give --node-sparsity for its node-pruned layers"):
        gradual_layers(gpu, 0.9)
    data = datasets.load("mnist", limit=100)
    with pytest.raises(ScalpelError, match="steps must be at least 1; got 0"):
        pruning.prune_onnx(paper_nets.network("lenet_300_100"), "x86-avx2", data, sparsity=0.9, steps=0)


class StandIn:
    """A model reached through the loop's callables: random weights, a no-op retraining that
    records the masks it was asked to hold, and a validation accuracy falling with the weights
    removed."""

    def __init__(self, layers, seed=0):
        rng = np.random.default_rng(seed)
        self.w = {layer["name"]: rng.standard_normal(layer["w_nk"].shape) for layer in layers if "w_nk" in layer}
        self.held = []

    def weights(self):
        return {k: v.copy() for k, v in self.w.items()}

    def set_mask(self, name, mask):
        self.w[name] = self.w[name] * mask

    def retrain(self, masks):
        self.held.append({k: v.copy() for k, v in masks.items()})

    def evaluate(self):
        total = sum(w.size for w in self.w.values())
        return 0.99 - 0.05 * (1 - sum(np.count_nonzero(w) for w in self.w.values()) / total)

    def run(self, strategy, **kwargs):
        return prune_gradual(self.weights, self.set_mask, self.retrain, self.evaluate, self.weights,
                             lambda saved: setattr(self, "w", saved), strategy, **kwargs)


@pytest.mark.parametrize("orientation", ["1xg", "gx1"])
def test_each_step_cuts_every_layer_to_the_ramp_in_whole_aligned_groups_and_nothing_revives(orientation):
    _, layers = read_chain(paper_nets.network("lenet_300_100"))
    strategy = pruning.pruning_strategy(TargetSpec.preset("x86-avx2"), layers, "scalpel", orientation=orientation,
                                        gradual=True)
    model = StandIn(layers)
    output = model.w["fc3"].copy()
    result = model.run(strategy, sparsity=0.9, steps=5, confirm=lambda: 0.5)
    assert len(result.rounds) == len(model.held) == 5 and all(r.kept for r in result.rounds)
    assert [r.layer for r in result.rounds] == ["fc1+fc2"] * 5
    np.testing.assert_array_equal(model.w["fc3"], output)
    for name in ("fc1", "fc2"):
        w = model.w[name] if orientation == "1xg" else model.w[name].T
        alive = np.any(pruning._blocks(w, 8, "1xg") != 0, axis=2)
        assert alive.sum() == int(np.ceil(alive.size * (1 - 0.9)))  # the ramp's last fraction of all groups
        np.testing.assert_array_equal(w != 0, np.repeat(alive, 8, axis=1)[:, :w.shape[1]])  # whole groups
    for before, after in zip(model.held, model.held[1:]):
        for name in ("fc1", "fc2"):
            assert np.all(after[name] <= before[name])  # a cut group never comes back
    totals = [pruning._blocks(model.w[name], 8, orientation).shape[:2] for name in ("fc1", "fc2")]
    assert [r.groups_after for r in result.rounds] == [  # each step follows the ramp
        sum(int(np.ceil(rows * groups * (1 - f))) for rows, groups in totals) for f in ramp(0.9, 5)]
    removed = [r.weights_removed for r in result.rounds]
    assert removed == sorted(removed) and removed[-1] == pytest.approx(result.weights_removed)
    assert 0.89 < result.weights_removed < 0.91
    assert result.baseline_accuracy == 0.99 and result.final_accuracy == pytest.approx(model.evaluate())
    assert (result.confirmed_baseline, result.confirmed_accuracy) == (0.5, 0.5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20), st.integers(1, 30), st.sampled_from(["simd", "node"])), min_size=1,
                max_size=3),
       st.sampled_from([1, 2, 4, 8]), st.sampled_from(["1xg", "gx1"]), st.floats(0.05, 0.95), st.floats(0.05, 0.95),
       st.integers(1, 6), st.integers(0, 99))
def test_random_layers_end_with_the_ramps_groups_or_nodes_whole_and_the_output_layer_untouched(
        shapes, group, orientation, sparsity, node_sparsity, steps, seed):
    rng = np.random.default_rng(seed)
    names = [f"fc{i}" for i in range(len(shapes) + 1)]
    w = {name: rng.standard_normal(shape[:2]) for name, shape in zip(names, [*shapes, (3, 5)])}
    strategy = {name: pruning.LayerStrategy(name, method, group, orientation)
                for name, (*_, method) in zip(names, [*shapes, (3, 5, "simd")])}
    output = w[names[-1]].copy()
    nodes = any(s.method == "node" for s in strategy.values())
    grouped = any(s.method == "simd" for s in list(strategy.values())[:-1])

    def set_mask(name, mask):
        w[name] = w[name] * mask

    prune_gradual(lambda: dict(w), set_mask, lambda masks: None, lambda: 0.9, None, None, strategy,
                  sparsity=sparsity if grouped else None, node_sparsity=node_sparsity if nodes else None, steps=steps)
    np.testing.assert_array_equal(w[names[-1]], output)
    for name in names[:-1]:
        if strategy[name].method == "node":
            rows = np.any(w[name] != 0, axis=1)
            assert rows.sum() == max(1, int(np.ceil(round(len(rows) * (1 - node_sparsity), 9))))
            np.testing.assert_array_equal(w[name] != 0, np.repeat(rows[:, None], w[name].shape[1], axis=1))
            continue
        oriented = w[name] if orientation == "1xg" else w[name].T
        alive = np.any(pruning._blocks(oriented, group, "1xg") != 0, axis=2)
        assert alive.sum() == max(1, int(np.ceil(round(alive.size * (1 - sparsity), 9))))
        np.testing.assert_array_equal(oriented != 0, np.repeat(alive, group, axis=1)[:, :oriented.shape[1]])


def test_a_layer_of_its_own_sparsity_follows_its_own_ramp():
    _, layers = read_chain(paper_nets.network("lenet_300_100"))
    strategy = pruning.pruning_strategy(TargetSpec.preset("x86-avx2"), layers, "scalpel", orientation="1xg",
                                        gradual=True)
    model = StandIn(layers)
    model.run(strategy, sparsity=0.9, steps=3, layer_sparsity={"fc2": 0.5})
    for name, sparsity in (("fc1", 0.9), ("fc2", 0.5)):
        alive = np.any(pruning._blocks(model.w[name], 8, "1xg") != 0, axis=2)
        assert alive.sum() == int(np.ceil(alive.size * (1 - sparsity)))
    with pytest.raises(ScalpelError, match="a layer sparsity names fc3, which gradual pruning does not cut; it cuts fc1, fc2"):
        layer_schedules(strategy, 0.9, 3, {"fc3": 0.5})
    with pytest.raises(ScalpelError, match=r"in \(0, 1\); got 1.0"):
        layer_schedules(strategy, 0.9, 3, {"fc1": 1.0})
    whole = StandIn(layers)  # a fraction of 0 leaves the layer whole, as a per-layer search holds those to come
    before = {name: w.copy() for name, w in whole.w.items()}
    whole.run(strategy, sparsity=0.9, steps=3, layer_sparsity={"fc1": 0.0})
    np.testing.assert_array_equal(whole.w["fc1"], before["fc1"])
    assert np.any(pruning._blocks(whole.w["fc2"], 8, "1xg") != 0, axis=2).mean() == pytest.approx(0.1, abs=0.01)
    with pytest.raises(ScalpelError, match=r"was given 0 for every layer it cuts \(fc1, fc2\): nothing to prune"):
        layer_schedules(strategy, 0.9, 3, {"fc1": 0.0, "fc2": 0.0})
    assert parse_layer_sparsity(["conv1=0.5", "fc1=0.8"]) == {"conv1": 0.5, "fc1": 0.8}
    assert parse_layer_sparsity([]) is None
    with pytest.raises(ScalpelError, match="a layer sparsity is LAYER=FRACTION, e.g. conv1=0.5; got 'conv1'"):
        parse_layer_sparsity(["conv1"])
    data = datasets.load("mnist", limit=100)
    with pytest.raises(ScalpelError, match="a layer sparsity overrides the sparsity of gradual pruning: give that too"):
        pruning.prune_onnx(paper_nets.network("lenet_300_100"), "x86-avx2", data, layer_sparsity={"fc1": 0.5})


def test_the_most_important_groups_are_the_ones_kept():
    _, layers = read_chain(paper_nets.network("lenet_300_100"))
    strategy = pruning.pruning_strategy(TargetSpec.preset("x86-avx2"), layers, "scalpel", orientation="1xg",
                                        gradual=True)
    model = StandIn(layers, seed=3)
    rms = pruning.group_importance(model.w["fc2"], 8, "1xg")
    model.run(strategy, sparsity=0.75, steps=1)
    alive = np.any(pruning._blocks(model.w["fc2"], 8, "1xg") != 0, axis=2)
    assert rms[alive].min() >= rms[~alive].max()


def test_a_resumed_run_ends_where_an_uninterrupted_one_does():
    _, layers = read_chain(paper_nets.network("lenet_300_100"))
    strategy = pruning.pruning_strategy(TargetSpec.preset("x86-avx2"), layers, "scalpel", gradual=True)
    straight = StandIn(layers)
    straight.run(strategy, sparsity=0.8, steps=4)
    saved = []
    interrupted = StandIn(layers)
    with pytest.raises(KeyboardInterrupt):
        def checkpoint(state):
            saved.append(copy.deepcopy(state))
            if state.step == 2:
                raise KeyboardInterrupt
        interrupted.run(strategy, sparsity=0.8, steps=4, checkpoint=checkpoint)
    assert isinstance(saved[-1], GradualState) and saved[-1].step == 2
    resumed = StandIn(layers, seed=99)  # other weights: the checkpoint's must replace them
    result = resumed.run(strategy, sparsity=0.8, steps=4, resume=saved[-1])
    assert len(result.rounds) == 4 and len(resumed.held) == 2
    for name in straight.w:
        np.testing.assert_array_equal(resumed.w[name], straight.w[name])


def test_node_sparsity_cuts_whole_rows_of_the_node_layers_along_the_ramp_the_strongest_kept():
    _, layers = read_chain(paper_nets.network("lenet5"))
    strategy = pruning.pruning_strategy(TargetSpec.preset("x86-avx2"), layers, "scalpel", orientation="1xg",
                                        gradual=True)
    model = StandIn(layers, seed=5)
    rms = {name: np.sqrt(np.mean(model.w[name] ** 2, axis=1)) for name in ("conv1", "conv2")}
    output = model.w["fc2"].copy()
    result = model.run(strategy, sparsity=0.9, node_sparsity=0.6, steps=4, layer_sparsity={"conv1": 0.5})
    assert [r.layer for r in result.rounds] == ["conv1+conv2+fc1"] * 4
    for name, sparsity in (("conv1", 0.5), ("conv2", 0.6)):
        rows = np.any(model.w[name] != 0, axis=1)
        assert rows.sum() == int(np.ceil(len(rows) * (1 - sparsity)))
        np.testing.assert_array_equal(model.w[name] != 0, np.repeat(rows[:, None], model.w[name].shape[1], axis=1))
        assert rms[name][rows].min() >= rms[name][~rows].max()  # one step here cuts the weakest rows
    alive = np.any(pruning._blocks(model.w["fc1"], 8, "1xg") != 0, axis=2)
    assert alive.sum() == int(np.ceil(alive.size * (1 - 0.9)))
    np.testing.assert_array_equal(model.w["fc2"], output)
    for before, after in zip(model.held, model.held[1:]):
        assert all(np.all(after[name] <= before[name]) for name in after)  # nothing revives


def test_node_sparsity_is_refused_where_it_cannot_apply_and_is_all_a_gpu_needs():
    _, lenet5 = read_chain(paper_nets.network("lenet5"))
    x86 = pruning.pruning_strategy(TargetSpec.preset("x86-avx2"), lenet5, "scalpel", gradual=True)
    assert gradual_layers(x86, 0.9) == ["fc1"] and gradual_layers(x86, 0.9, 0.5) == ["conv1", "conv2", "fc1"]
    with pytest.raises(ScalpelError, match="fc1 is pruned in groups: give --sparsity for them too"):
        gradual_layers(x86, None, 0.5)
    gpu = pruning.pruning_strategy(TargetSpec.preset("cuda"), lenet5, "scalpel", gradual=True)
    assert gradual_layers(gpu, None, 0.5) == ["conv1", "conv2", "fc1"] and gpu["fc2"].method == "none"
    m4 = pruning.pruning_strategy(TargetSpec.preset("cortex-m4"), lenet5, "scalpel", gradual=True)
    with pytest.raises(ScalpelError, match=r"--node-sparsity\) found no node-pruned layer.* leave --node-sparsity out"):
        gradual_layers(m4, 0.9, 0.5)
    with pytest.raises(ScalpelError, match="needs a sparsity to reach: --sparsity .groups., --node-sparsity .nodes."):
        gradual_layers(x86, None, None)
    with pytest.raises(ScalpelError, match="a layer sparsity names conv1, which gradual pruning does not cut; it "
                                           "cuts fc1"):
        layer_schedules(x86, 0.9, 3, {"conv1": 0.5})  # without --node-sparsity the convs go by the mask layers


def test_gradual_node_pruning_removes_filters_whole_and_the_compiled_model_keeps_its_outputs():
    """LeNet-5 for x86, reduced (2,000 images, tenths of epochs): conv filters cut gradually
    lose their weights, their bias and the next layer's inputs they fed, so `Pass` shrinks the
    convs (nothing to fold), and the compiled module agrees with onnxruntime."""
    import tvm

    import scalpel_tvm

    data = datasets.load("mnist", limit=2000)
    options = dict(sparsity=0.8, node_sparsity=0.5, steps=2, layer_sparsity={"conv2": 0.6}, orientation="1xg")
    pruned, result, test = pruning.prune_onnx(paper_nets.network("lenet5"), "x86-avx2", data, train_epochs=0.3,
                                              epochs=0.1, **options)
    assert result.nodes is None and len(result.rounds) == 2  # no mask layers: the nodes went with the ramp
    assert result.layers["conv1"]["nodes"] == [20, 10] and result.layers["conv2"]["nodes"] == [50, 20]
    printed = prune_report.table(prune_report.as_dict(result, test, "x86-avx2", {"tolerance": 0.001, **options}))
    assert "in 2 gradual steps to 80% of the groups and 50% of the nodes (conv2 60%)" in printed
    assert re.search(r"conv2 .*node .*20/50", printed)
    _, layers = read_chain(pruned)
    conv1, conv2, fc1 = (layer for layer in layers if layer["op"] in ("fc", "conv") and layer["name"] != "fc2")
    for layer in (conv1, conv2):
        dead = ~layer["w_nk"].any(axis=1)
        assert np.all(layer["bias"][dead] == 0)
    dead1 = ~conv1["w_nk"].any(axis=1)
    assert not conv2["w_nk"].reshape(50, 20, 25)[:, dead1].any()  # conv2 reads nothing from conv1's dead filters
    dead2 = ~conv2["w_nk"].any(axis=1)
    assert not fc1["w_nk"].reshape(500, 50, 16)[:, dead2].any()  # nor fc1 from conv2's
    mod = relax_module(pruned)
    by_name = {lp.name: lp for lp in scalpel_tvm.plan(mod, "x86-avx2").layers}
    assert by_name["conv1"].removed_nodes == 10 and by_name["conv2"].removed_nodes == 30
    target = tvm.target.Target({"kind": "llvm", "mcpu": "core-avx2"})
    vm = tvm.relax.VirtualMachine(tvm.compile(scalpel_tvm.Pass("x86-avx2")(mod), target=target), tvm.cpu())
    x = data.test_x[:1].astype(np.float32).reshape(1, 1, 28, 28)
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), run_ort(pruned, x), rtol=1e-4, atol=1e-4)


def test_a_gpu_prunes_its_nodes_gradually_with_node_sparsity_alone():
    data = datasets.load("mnist", limit=1000)
    _, result, _ = pruning.prune_onnx(paper_nets.network("lenet_300_100"), "cuda", data, train_epochs=0.2,
                                      epochs=0.1, node_sparsity=0.7, steps=2)
    assert [result.layers[name]["nodes"] for name in ("fc1", "fc2", "fc3")] == [[300, 90], [100, 30], [10, 10]]
    assert result.layers["fc3"]["method"] == "none"
    with pytest.raises(ScalpelError, match="give --node-sparsity for its node-pruned layers"):
        pruning.prune_onnx(paper_nets.network("lenet_300_100"), "cuda", data, sparsity=0.7)


@pytest.mark.slow
def test_scalpel_prune_gradually_in_input_groups_compiles_to_the_1xg_kernel_and_keeps_its_outputs(tmp_path, capsys):
    """The whole path, reduced: LeNet-300-100 trained half an epoch on 3,000 images, pruned for
    x86 to 90% of its 1xg groups in 3 steps (fc1 to 80%); the ONNX model holds the zeros in whole groups of 8
    inputs, the pass turns fc1 into the 1xg kernel, and the compiled module agrees with onnxruntime."""
    import tvm

    import scalpel_tvm

    model_path, out = tmp_path / "lenet.onnx", tmp_path / "pruned.onnx"
    onnx.save(paper_nets.network("lenet_300_100"), model_path)
    assert main(["prune", str(model_path), "--target", "x86-avx2", "--out", str(out), "--report", str(tmp_path / "r"),
                 "--limit", "3000", "--train-epochs", "0.5", "--epochs", "0.2", "--sparsity", "0.9", "--steps", "3",
                 "--orientation", "1xg", "--order-neurons", "--layer-sparsity", "fc1=0.8"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"weights removed 8[01]\.\d% of the prunable layers in 3 gradual steps to 90% of the groups "
                     r"\(fc1 80%\)", printed)
    assert re.search(r"fc3 .* none .*\(gradual pruning leaves the output layer whole\)", printed)
    report = json.loads((tmp_path / "r" / "prune.json").read_text())
    assert report["settings"]["orientation"] == "1xg" and len(report["rounds"]) == 3
    assert report["layers"]["fc2"]["group_sparsity"] == pytest.approx(0.9, abs=0.01)
    pruned = onnx.load(str(out))
    _, layers = read_chain(pruned)
    fc1 = layers[0]["w_nk"]
    groups = fc1.reshape(300, 98, 8)
    assert np.all((groups == 0).all(axis=2) | (groups != 0).all(axis=2))
    assert 1 - np.count_nonzero(groups.any(axis=2)) / (300 * 98) == pytest.approx(0.8, abs=1e-3)
    assert np.count_nonzero(layers[2]["w_nk"]) == layers[2]["w_nk"].size
    mod = relax_module(pruned)
    fc1_plan = scalpel_tvm.plan(mod, "x86-avx2").layers[0]
    assert fc1_plan.chosen == "gsparse_1xg" and fc1_plan.group_sparsity["1xg"] == pytest.approx(0.8, abs=1e-3)
    target = tvm.target.Target({"kind": "llvm", "mcpu": "core-avx2"})
    vm = tvm.relax.VirtualMachine(tvm.compile(scalpel_tvm.Pass("x86-avx2")(mod), target=target), tvm.cpu())
    x = datasets.load("mnist").test_x[:1].reshape(1, -1).astype(np.float32)
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), run_ort(pruned, x), rtol=1e-4, atol=1e-4)
