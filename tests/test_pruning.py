"""The pruning frontend: SIMD-aware group pruning with retraining ordered by the target's cost
model, the traditional and optimized baselines, and resuming an interrupted run."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nets import run_ort
from scalpel_tvm import ScalpelError, TargetSpec, datasets, models, paired_accuracy, paper_nets, pruning
from scalpel_tvm.cli import main
from scalpel_tvm.int16_net import read_chain


def test_importance_is_rms_max_or_mean_of_each_aligned_group():
    w = np.array([[3.0, -4.0, 1.0, 0.0, 2.0]])  # 1x2 groups: (3,-4), (1,0), (2, pad)
    np.testing.assert_allclose(pruning.group_importance(w, 2, "1xg", "rms"), [[np.sqrt(12.5), np.sqrt(0.5), np.sqrt(2)]])
    np.testing.assert_allclose(pruning.group_importance(w, 2, "1xg", "max"), [[4, 1, 2]])
    np.testing.assert_allclose(pruning.group_importance(w, 2, "1xg", "mean"), [[3.5, 0.5, 1]])
    with pytest.raises(ScalpelError, match="unknown importance 'median'"):
        pruning.group_importance(w, 2, "1xg", "median")


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 9), st.integers(1, 13), st.sampled_from([1, 2, 4, 8]), st.sampled_from(["1xg", "gx1"]),
       st.integers(0, 2**16), st.floats(0.05, 1.0))
def test_masks_keep_whole_aligned_groups_the_most_important_and_never_revive(n, k, group, orientation, seed, keep):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k))
    w[rng.random(w.shape) < 0.3] = 0
    alive = pruning.groups_alive(w, group, orientation)
    if alive == 0:
        return
    target = max(1, int(keep * alive))
    mask = pruning.group_mask(w, target, group, orientation)
    pruned = w * mask
    assert pruning.groups_alive(pruned, group, orientation) == target
    blocks = pruning._blocks(mask, group, orientation)
    real = pruning._blocks(np.ones_like(w), group, orientation) != 0
    assert np.all((blocks == blocks[..., :1]) | ~real)  # a group is kept or cut as a whole
    assert not np.any((w == 0) & (mask == 1) & (pruned != 0))  # nothing revived
    kept_rms = pruning.group_importance(pruned, group, orientation)[np.any(pruning._blocks(pruned, group, orientation) != 0, axis=2)]
    cut = pruning.group_importance(w * (1 - mask), group, orientation)
    cut = cut[np.any(pruning._blocks(w * (1 - mask), group, orientation) != 0, axis=2)]
    if len(cut) and len(kept_rms):
        assert kept_rms.min() >= cut.max() - 1e-12


def test_strategy_follows_the_hardware_class():
    _, layers = read_chain(paper_nets.network("lenet5"))
    m4 = pruning.layer_strategy(TargetSpec.preset("cortex-m4"), layers)
    assert {(s.method, s.group, s.orientation) for s in m4.values()} == {("simd", 2, "1xg")}
    assert {s.group for s in pruning.layer_strategy(TargetSpec.preset("cortex-m3"), layers).values()} == {1}
    x86 = pruning.layer_strategy(TargetSpec.preset("x86-avx2"), layers)
    assert (x86["fc1"].method, x86["fc1"].group, x86["fc1"].orientation) == ("simd", 8, "gx1")
    assert x86["conv1"].method == "node"


def test_the_loop_prunes_the_slowest_layer_first_and_undoes_a_round_that_costs_accuracy():
    """A stand-in model: accuracy falls with the weights removed; the loop must start with the
    layer the cost model prices highest, keep rounds above the floor, undo the one below it."""
    rng = np.random.default_rng(0)
    _, layers = read_chain(paper_nets.network("lenet_300_100"))
    state = {"w": {layer["name"]: rng.standard_normal(layer["w_nk"].shape) for layer in layers}}
    total = sum(w.size for w in state["w"].values())

    def evaluate():
        return 0.99 - 0.1 * max(0.0, 1 - sum(np.count_nonzero(w) for w in state["w"].values()) / total - 0.6)

    def set_mask(name, mask):
        state["w"][name] = state["w"][name] * mask

    spec = TargetSpec.preset("cortex-m4")
    result = pruning.prune_simd(
        lambda: {k: v.copy() for k, v in state["w"].items()}, set_mask, lambda masks: None, evaluate,
        lambda: {k: v.copy() for k, v in state["w"].items()}, lambda saved: state.update(w=saved),
        pruning.layer_strategy(spec, layers), pruning.LayerCost(spec, layers), tolerance=0.02, step=0.5)
    assert result.rounds[0].layer == "fc1" and result.rounds[0].kept
    undone = [r for r in result.rounds if not r.kept]
    assert undone and all(r.accuracy < 0.99 - 0.02 for r in undone)
    assert result.final_accuracy >= 0.99 - 0.02
    removed = 1 - sum(np.count_nonzero(w) for w in state["w"].values()) / total
    assert 0.6 < removed <= 0.8
    assert result.layers["fc1"]["predicted"] < result.layers["fc1"]["predicted_dense"]


@pytest.mark.slow
def test_scalpel_prune_on_mnist_writes_a_pruned_model_in_pairs_and_a_report(tmp_path, capsys):
    """The whole path, reduced: LeNet-300-100 trained one epoch on 6,000 MNIST images, three
    rounds of pruning for a Cortex-M4 and a short final retraining; the pruned ONNX model has its zeros in aligned pairs of
    inputs, runs in onnxruntime, and is not overwritten without asking."""
    model_path, out = tmp_path / "lenet.onnx", tmp_path / "pruned.onnx"
    onnx.save(paper_nets.network("lenet_300_100"), model_path)
    args = ["prune", str(model_path), "--target", "cortex-m4", "--data", "mnist", "--out", str(out),
            "--report", str(tmp_path / "report"), "--limit", "6000", "--train-epochs", "1", "--epochs", "0.3",
            "--rounds", "3", "--tolerance", "3", "--finetune", "0.3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "weights removed" in printed and "final retraining (0.3 epochs, annealed): " in printed
    paired = json.loads((tmp_path / "report" / "prune.json").read_text())["test_accuracy"]["paired"]
    assert paired["images"] == 10_000 and f"of 10,000 images {paired['fixed']} fixed" in printed
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"prune.json", "prune.txt", "prune.png"}
    pruned = onnx.load(str(out))
    _, layers = read_chain(pruned)
    fc1 = layers[0]["w_nk"]
    assert 0.3 < 1 - np.count_nonzero(fc1) / fc1.size
    pairs = fc1.reshape(300, 392, 2)
    assert np.all((pairs[..., 0] == 0) == (pairs[..., 1] == 0))  # whole pairs cut (trained weights are never 0)
    data = datasets.load("mnist")
    logits = run_ort(pruned, data.test_x[:500].reshape(500, -1))
    assert np.mean(logits.argmax(1) == data.test_y[:500]) > 0.85
    assert main(args) == 2
    assert "exists; choose another --out or pass --overwrite" in capsys.readouterr().err


def test_data_that_does_not_fit_the_model_is_a_clear_error():
    data = datasets.load("mnist", limit=100)
    with pytest.raises(ScalpelError, match=r"mnist images are \(1, 28, 28\), the model takes \(3, 32, 32\)"):
        pruning.prune_onnx(paper_nets.network("convnet"), "cortex-m4", data)
    with pytest.raises(ScalpelError, match="unknown data set 'cifar10'"):
        datasets.load("cifar10")
    from nets import mlp

    with pytest.raises(ScalpelError, match=r"not one: Sigmoid node .* scalpel_tvm.prune\(module"):
        pruning.prune_onnx(mlp([784, 30, 10], activation="Sigmoid"), "cuda", data)
    bad = datasets.Dataset("mine", data.train_x, data.train_y + 5, data.test_x, data.test_y, 10)
    with pytest.raises(ScalpelError, match=r"mine's training labels run 5..14, outside the 10 classes 0..9"):
        pruning.prune_onnx(paper_nets.network("lenet_300_100"), "cortex-m4", bad)
    with pytest.raises(ScalpelError, match="finetune is a number of epochs, 0 for none; got -1"):
        pruning.prune_onnx(paper_nets.network("lenet_300_100"), "cortex-m4", data, finetune=-1)


def test_rounds_the_confirmation_images_reject_are_walked_back():
    """The validation images approve every round, but images no round was judged on disagree
    past 50% removed: the result goes back to the last kept state they accept, and says so."""
    rng = np.random.default_rng(0)
    _, layers = read_chain(paper_nets.network("lenet_300_100"))
    state = {"w": {layer["name"]: rng.standard_normal(layer["w_nk"].shape) for layer in layers}}
    total = sum(w.size for w in state["w"].values())

    def removed():
        return 1 - sum(np.count_nonzero(w) for w in state["w"].values()) / total

    def set_mask(name, mask):
        state["w"][name] = state["w"][name] * mask

    spec = TargetSpec.preset("cortex-m4")
    result = pruning.prune_simd(
        lambda: {k: v.copy() for k, v in state["w"].items()}, set_mask, lambda masks: None, lambda: 0.99,
        lambda: {k: v.copy() for k, v in state["w"].items()}, lambda saved: state.update(w=saved),
        pruning.layer_strategy(spec, layers), pruning.LayerCost(spec, layers), tolerance=0.001, step=0.5,
        max_rounds=12, confirm=lambda: 0.99 if removed() <= 0.5 else 0.9)
    assert result.walked_back > 0 and result.confirmed_accuracy == 0.99
    assert 0 < removed() <= 0.5 and result.weights_removed == pytest.approx(removed())


def test_the_baselines_prune_single_weights_everywhere_and_deploy_as_csr_or_dense():
    _, layers = read_chain(paper_nets.network("lenet5"))
    traditional = pruning.traditional_strategy(layers)
    assert {(s.method, s.group) for s in traditional.values()} == {("magnitude", 1)}
    assert list(traditional) == ["conv1", "conv2", "fc1", "fc2"]  # the output layer too
    weights = {"a": np.array([[1.0, 0, 0, 0]]), "b": np.array([[1.0, 2, 3, 0]])}
    assert pruning.baseline_forms("traditional", weights) == {"a": "csr", "b": "csr"}
    assert pruning.baseline_forms("optimized", weights) == {"a": "csr", "b": "dense"}
    assert pruning.baseline_forms("scalpel", weights) is None
    with pytest.raises(ScalpelError, match="unknown pruning method 'lottery'"):
        pruning.prune_onnx(paper_nets.network("lenet5"), "cortex-m4", datasets.load("mnist", limit=100), method="lottery")


def test_traditional_pruning_takes_the_layer_with_the_most_weights_first_whatever_the_hardware():
    rng = np.random.default_rng(0)
    _, layers = read_chain(paper_nets.network("lenet5"))
    state = {layer["name"]: rng.standard_normal(layer["w_nk"].shape) for layer in layers if "w_nk" in layer}

    def set_mask(name, mask):
        state[name] = state[name] * mask

    result = pruning.prune_simd(
        lambda: {k: v.copy() for k, v in state.items()}, set_mask, lambda masks: None, lambda: 0.99,
        lambda: {k: v.copy() for k, v in state.items()}, lambda saved: state.update(saved),
        pruning.traditional_strategy(layers), pruning.WeightCount(), tolerance=0.01, step=0.6, max_rounds=6)
    # fc1 400k -> 160k -> 64k -> 25.6k -> 10.2k weights; conv2's 25k comes in between
    assert [r.layer for r in result.rounds] == ["fc1", "fc1", "fc1", "fc1", "conv2", "fc1"]
    assert [r.groups_after for r in result.rounds][:5] == [160000, 64000, 25600, 10240, 10000]


@pytest.mark.slow
def test_optimized_pruning_gives_half_pruned_layers_their_weights_back_and_deploys_them_dense(tmp_path, capsys):
    import json

    model_path, out = tmp_path / "lenet.onnx", tmp_path / "pruned.onnx"
    onnx.save(paper_nets.network("lenet_300_100"), model_path)
    assert main(["prune", str(model_path), "--target", "cortex-m4", "--out", str(out), "--report", str(tmp_path / "r"),
                 "--limit", "6000", "--train-epochs", "1", "--epochs", "0.3", "--rounds", "2", "--tolerance", "5",
                 "--method", "optimized"]) == 0
    assert "given their unpruned weights back and retrained: fc2, fc3" in capsys.readouterr().out
    report = json.loads((tmp_path / "r" / "prune.json").read_text())
    assert {name: layer["form"] for name, layer in report["layers"].items()} == {"fc1": "csr", "fc2": "dense", "fc3": "dense"}
    _, layers = read_chain(onnx.load(str(out)))
    fc1, fc2 = layers[0]["w_nk"], layers[1]["w_nk"]
    assert 0.45 < np.count_nonzero(fc1) / fc1.size < 0.5 and np.count_nonzero(fc2) == fc2.size


@pytest.mark.slow
@pytest.mark.parametrize("stop_at, where, schedule", [
    (3, "node pruning round 1 done", []), (9, r"pruning round \d done", []),
    (9, r"pruning round \d done", ["--anneal", "--distill", "--finetune", "0.2"]),
    (9, r"gradual step \d done", ["--sparsity", "0.9", "--steps", "5", "--orientation", "1xg"]),
    (4, "gradual step 2 done", ["--sparsity", "0.9", "--node-sparsity", "0.5", "--steps", "4"])])
def test_an_interrupted_run_resumes_from_its_last_finished_round_and_ends_where_an_uninterrupted_one_does(
        tmp_path, capsys, monkeypatch, stop_at, where, schedule):
    """Interrupted in node pruning, and in the FC groups' rounds after it; with the training
    schedule's options too (the resumed run gets its teacher back from the checkpoint); and in
    gradual pruning's steps, of groups and of groups and nodes (the removed nodes come back from
    the checkpoint)."""
    from onnx import numpy_helper

    from scalpel_tvm import torch_chain

    model_path = tmp_path / "lenet5.onnx"
    onnx.save(paper_nets.network("lenet5"), model_path)

    def args(out):
        return ["prune", str(model_path), "--target", "x86-avx2", "--out", str(out), "--limit", "3000",
                "--train-epochs", "0.5", "--epochs", "0.2", "--rounds", "4", "--tolerance", "5", "--penalty", "3e-3",
                *schedule]

    assert main(args(tmp_path / "straight.onnx")) == 0
    assert not (tmp_path / "straight.onnx.checkpoint").exists()  # removed once the run completes
    train, calls = torch_chain.train, []

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return train(*a, **kw)

    monkeypatch.setattr(torch_chain, "train", interrupted)
    out = tmp_path / "resumed.onnx"
    assert main(args(out)) == 2
    assert "interrupted; the same command resumes from" in capsys.readouterr().err
    assert (tmp_path / "resumed.onnx.checkpoint").exists() and not out.exists()
    monkeypatch.setattr(torch_chain, "train", train)
    assert main(args(out)) == 0
    assert re.search(f"resuming from .*({where})", capsys.readouterr().err)
    for a, b in zip(onnx.load(str(tmp_path / "straight.onnx")).graph.initializer, onnx.load(str(out)).graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


@pytest.mark.slow
def test_optimized_pruning_resumes_the_traditional_runs_loop_and_ends_as_it_would_alone(tmp_path, capsys):
    """Traditional and optimized pruning share their loop: an optimized run started from a
    finished traditional run's checkpoint (kept with keep_checkpoint) only reverts and retrains,
    and its result equals an optimized run from scratch."""
    data = datasets.load("mnist", limit=3000)
    model = paper_nets.network("lenet_300_100")
    options = dict(tolerance=0.05, epochs=0.2, train_epochs=0.5, max_rounds=4)
    alone, alone_result, _ = pruning.prune_onnx(model, "cortex-m4", data, method="optimized", **options)
    shared = tmp_path / "loop.checkpoint"
    pruning.prune_onnx(model, "cortex-m4", data, method="traditional", checkpoint=shared, keep_checkpoint=True, **options)
    assert shared.exists()
    capsys.readouterr()
    resumed, resumed_result, _ = pruning.prune_onnx(model, "cortex-m4", data, method="optimized", checkpoint=shared,
                                                    **options)
    assert "resuming from" in capsys.readouterr().err and not shared.exists()
    assert resumed_result.reverted == alone_result.reverted and resumed_result.reverted  # a layer went back to dense
    for a, b in zip(alone.graph.initializer, resumed.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))


def test_a_checkpoint_of_another_run_or_a_broken_one_is_refused_with_the_way_out(tmp_path):
    from scalpel_tvm.prune_checkpoint import Checkpoint

    path = tmp_path / "run.checkpoint"
    Checkpoint(path, {"tolerance": 0.001}).save(seed=3)
    assert Checkpoint(path, {"tolerance": 0.001}).get("seed") == 3
    with pytest.raises(ScalpelError, match=r"checkpoint of a different run \(tolerance differ\).*--restart"):
        Checkpoint(path, {"tolerance": 0.002})
    assert not Checkpoint(path, {"tolerance": 0.002}, restart=True).resuming
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ScalpelError, match="is not a readable pruning checkpoint"):
        Checkpoint(path, {"tolerance": 0.001})


def test_fashion_mnist_loads_from_its_debian_package_and_the_convnet_takes_its_shape():
    data = datasets.load("fashion-mnist", limit=1000)
    assert data.train_x.shape == (1000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert 0 <= data.train_x.min() and data.train_x.max() < 1 and set(np.unique(data.test_y)) == set(range(10))
    convnet = paper_nets.network("convnet", input_shape=(1, 28, 28))
    input_shape, layers = read_chain(convnet)
    data.check_fits(input_shape, layers[-1]["w_nk"].shape[0])
    assert layers[0]["window"].c == 1 and layers[-1]["w_nk"].shape == (10, 64 * 4 * 4)


def test_a_tolerance_no_round_can_keep_returns_the_model_unpruned_and_says_so():
    from scalpel_tvm import prune_report

    rng = np.random.default_rng(0)
    _, layers = read_chain(paper_nets.network("lenet_300_100"))
    state = {layer["name"]: rng.standard_normal(layer["w_nk"].shape) for layer in layers}
    accuracy = {"value": 0.99}

    def set_mask(name, mask):
        state[name] = state[name] * mask
        accuracy["value"] = 0.5  # any pruning costs too much

    def restore(saved):
        state.update(saved)
        accuracy["value"] = 0.99

    spec = TargetSpec.preset("cortex-m4")
    result = pruning.prune_simd(
        lambda: {k: v.copy() for k, v in state.items()}, set_mask, lambda masks: None, lambda: accuracy["value"],
        lambda: {k: v.copy() for k, v in state.items()}, restore, pruning.layer_strategy(spec, layers),
        pruning.LayerCost(spec, layers), tolerance=0.001, max_rounds=40)
    assert result.weights_removed == 0 and not any(r.kept for r in result.rounds)
    assert all(np.all(w != 0) for w in state.values())
    report = prune_report.as_dict(result, {"dense": 0.99, "pruned": 0.99}, "cortex-m4", {"tolerance": 0.001})
    assert "the model is returned unpruned" in prune_report.table(report)


def test_scalpel_net_writes_the_papers_networks_and_refuses_a_bad_input_shape(tmp_path, capsys):
    out = tmp_path / "convnet.onnx"
    assert main(["net", "convnet", "--out", str(out), "--input-shape", "1x28x28"]) == 0
    input_shape, layers = read_chain(onnx.load(str(out)))
    assert input_shape == (1, 28, 28) and [lay["name"] for lay in layers if "w_nk" in lay] == ["conv1", "conv2", "conv3", "fc1"]
    assert main(["net", "convnet", "--out", str(out)]) == 2  # never overwrites unasked
    assert main(["net", "lenet5", "--out", str(tmp_path / "l.onnx"), "--input-shape", "28x28"]) == 2
    assert main(["net", "lenet_300_100", "--out", str(tmp_path / "m.onnx"), "--input-shape", "1x28x28"]) == 2
    assert main(["net", "resnet", "--out", str(tmp_path / "r.onnx")]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "not CxHxW" in err and "flat input" in err and "unknown network 'resnet'" in err


@pytest.mark.slow
def test_the_convnet_on_fashion_mnist_loses_whole_filters_for_a_gpu_and_keeps_its_outputs(tmp_path, capsys):
    """The paper's CIFAR-10 ConvNet, on its Fashion-MNIST stand-in, node-pruned from the command line:
    what is removed is whole filters (and the consumer channels they fed), and the pruned file
    runs in onnxruntime exactly as the retrained network does."""
    import json

    model_path, out = tmp_path / "convnet.onnx", tmp_path / "pruned.onnx"
    assert main(["net", "convnet", "--out", str(model_path), "--input-shape", "1x28x28"]) == 0
    assert main(["prune", str(model_path), "--target", "cuda", "--data", "fashion-mnist", "--out", str(out),
                 "--report", str(tmp_path / "r"), "--limit", "3000", "--train-epochs", "1", "--epochs", "2",
                 "--rounds", "4", "--tolerance", "5", "--penalty", "3e-3"]) == 0
    report = json.loads((tmp_path / "r" / "prune.json").read_text())
    _, layers = read_chain(onnx.load(str(out)))
    weights = {lay["name"]: lay["w_nk"] for lay in layers if "w_nk" in lay}
    for name, nxt in [("conv1", "conv2"), ("conv2", "conv3")]:
        alive = np.abs(weights[name]).sum(axis=1) > 0
        assert report["layers"][name]["nodes"] == [alive.size, int(alive.sum())]
        # a removed filter's channel is gone from the next layer's inputs as well
        columns = weights[nxt].reshape(weights[nxt].shape[0], alive.size, -1)
        assert not np.abs(columns[:, ~alive]).any()
    assert sum(report["layers"][n]["nodes"][1] for n in ("conv1", "conv2", "conv3")) < 32 + 32 + 64
    assert report["layers"]["fc1"]["nodes"] == [10, 10]  # the output layer keeps its classes
    test = datasets.load("fashion-mnist", limit=1)
    predicted = run_ort(onnx.load(str(out)), test.test_x).argmax(axis=1)
    assert abs((predicted == test.test_y).mean() - report["test_accuracy"]["pruned"]) < 1e-9


def test_on_a_gpu_scalpels_layers_are_priced_in_the_forms_pass_compiles_and_csr_only_for_a_baseline():
    """Pass(cuda) compiles a pruned layer dense (node-shrunk) or warp-grouped; pricing Scalpel's
    layers in CSR where the GPU model finds it cheaper would credit it a kernel it never gets."""
    _, layers = read_chain(paper_nets.network("lenet5"))
    fc2 = next(lay["w_nk"] for lay in layers if lay["name"] == "fc2")
    cost = pruning.LayerCost(TargetSpec.preset("cuda"), layers)
    times = cost.times("fc2", fc2)
    assert times["csr"] < times["dense"]  # the GPU model's CSR is cheaper for this small layer...
    assert cost("fc2", fc2) == (times["dense"], "dense")  # ...but Scalpel's layer is compiled dense
    assert cost("fc2", fc2, "csr") == (times["csr"], "csr")  # a baseline asks for its CSR
    from scalpel_tvm.objectives import ObjectiveCost

    assert ObjectiveCost(cost, "energy")("fc2", fc2)[1] == "dense"  # every objective chooses among the same forms


@pytest.mark.slow
def test_the_pruning_benchmark_builds_every_method_as_firmware_and_prices_it(tmp_path):
    """`python/bench_pruning.py` end to end, reduced: each method's model is built, run on QEMU
    against the reference and priced; Scalpel's pairs are faster and smaller than dense."""
    bench = Path(__file__).parents[1] / "python" / "bench_pruning.py"
    subprocess.run([sys.executable, str(bench), "--net", "lenet_300_100", "--target", "cortex-m4", "--limit", "3000",
                    "--train-epochs", "0.5", "--epochs", "0.2", "--rounds", "2", "--tolerance", "5",
                    "--methods", "scalpel,traditional", "--out", str(tmp_path)], check=True, capture_output=True)
    report = json.loads((tmp_path / "bench_pruning_lenet_300_100_cortex-m4.json").read_text())
    assert report["dense_cycles"] > 0
    for method, run in report["methods"].items():
        assert run["weights_removed"] > 0.3, method
        assert run["cycles"] == pytest.approx(report["dense_cycles"] / run["speedup"])
    scalpel = report["methods"]["scalpel"]
    assert scalpel["speedup"] > 1 and scalpel["size_vs_dense"] < 1
    assert (tmp_path / "bench_pruning_lenet_300_100_cortex-m4.png").exists()


@pytest.mark.slow
def test_the_pruning_benchmark_compiles_and_times_every_method_on_x86(tmp_path):
    """`python/bench_pruning.py` for x86, reduced: each method's model goes through `Pass` and
    computes what it computes without the pass; the baselines run as they deploy (CSR) and as
    `Pass` plans them; Scalpel's own plan has no CSR layer."""
    bench = Path(__file__).parents[1] / "python" / "bench_pruning.py"
    subprocess.run([sys.executable, str(bench), "--net", "lenet_300_100", "--target", "x86-avx2", "--limit", "3000",
                    "--train-epochs", "0.5", "--epochs", "0.2", "--rounds", "2", "--tolerance", "5", "--batches", "1,3",
                    "--out", str(tmp_path)], check=True, capture_output=True)
    report = json.loads((tmp_path / "bench_pruning_lenet_300_100_x86-avx2.json").read_text())
    assert set(report["measured"]) == {"1", "3"}
    for timed in report["measured"].values():
        assert set(timed["us"]) == {"dense", "scalpel", "traditional", "traditional as Pass plans it", "optimized",
                                    "optimized as Pass plans it"}
        assert max(timed["max_abs_diff_vs_no_pass"].values()) < 1e-4
        assert set(timed["forms"]["traditional"].values()) == {"csr"}
        assert "csr" not in timed["forms"]["scalpel"].values()
        assert "csr" not in timed["forms"]["traditional as Pass plans it"].values()
        assert timed["speedup"]["scalpel"] == pytest.approx(timed["us"]["dense"] / timed["us"]["scalpel"])
    assert (tmp_path / "bench_pruning_lenet_300_100_x86-avx2.png").exists()
    accuracy = {method: run["test"]["pruned"] for method, run in report["methods"].items()}
    for baseline in ("traditional", "optimized"):  # scored again by onnxruntime: float order may move an image
        paired = report["scalpel_vs"][baseline]
        assert paired["images"] == 10_000
        assert paired["difference"] == pytest.approx(accuracy["scalpel"] - accuracy[baseline], abs=3e-4)
        saved = onnx.load(tmp_path / f"bench_pruning_lenet_300_100_x86-avx2_{baseline}.onnx")
        assert models.weights_removed(saved) == pytest.approx(report["methods"][baseline]["weights_removed"], abs=0.01)


def test_annealed_training_brings_the_rate_down_to_zero_along_a_cosine(monkeypatch):
    import torch

    from scalpel_tvm import torch_chain

    rates = []
    step = torch.optim.Adam.step

    def record(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", record)
    data = datasets.load("mnist", limit=1280)
    net = torch_chain.chain_net(paper_nets.network("lenet_300_100"))
    torch_chain.train(net, data.train_x, data.train_y, epochs=1, anneal=True)
    assert len(rates) == 10 and rates[0] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] < 0.03 * rates[0]
    assert rates[5] == pytest.approx(0.5e-3)  # half way down the cosine
    rates.clear()
    torch_chain.train(net, data.train_x, data.train_y, epochs=1)
    assert rates == [1e-3] * 10


def _finetune_setup(confirmations):
    """A LeNet-300-100 chain with half of fc1's weights pruned, and the hooks `_finetune` reads;
    the confirmation images score it `confirmations` in turn."""
    from types import SimpleNamespace

    import torch

    from scalpel_tvm import torch_chain

    data = datasets.load("mnist", limit=2000)
    net = torch_chain.chain_net(paper_nets.network("lenet_300_100"))
    with torch.no_grad():
        net.weight("fc1")[: net.weight("fc1").shape[0] // 2] = 0
    scores = iter(confirmations)
    hooks = SimpleNamespace(
        finetune=lambda seed, masks: torch_chain.train(net, data.train_x, data.train_y, epochs=0.2, masks=masks,
                                                       anneal=True, seed=seed),
        evaluate=lambda: torch_chain.accuracy(net, data.train_x[:500], data.train_y[:500]),
        confirm=lambda: next(scores))
    return net, hooks


def test_the_final_retraining_holds_the_pruned_zeros_and_is_kept_when_confirmed():
    from scalpel_tvm import torch_chain

    net, hooks = _finetune_setup([0.80, 0.85, 0.85])
    before = torch_chain.weights(net)
    result = pruning.PruneResult(0.9, 0.9)
    pruning._finetune(net, hooks, result, retrain_seed=1)
    after = torch_chain.weights(net)
    assert result.finetuned and result.confirmed_accuracy == 0.85
    assert np.all(after["fc1"][:150] == 0) and np.any(after["fc1"][150:] != before["fc1"][150:])
    assert np.any(after["fc2"] != before["fc2"])


def test_a_final_retraining_the_confirmation_images_score_lower_is_undone():
    from scalpel_tvm import torch_chain

    net, hooks = _finetune_setup([0.85, 0.80, 0.85])
    before = torch_chain.weights(net)
    result = pruning.PruneResult(0.9, 0.9)
    pruning._finetune(net, hooks, result, retrain_seed=1)
    assert result.finetuned is False and result.confirmed_accuracy == 0.85
    assert all(np.array_equal(w, before[name]) for name, w in torch_chain.weights(net).items())


def test_distillation_adds_the_teachers_softened_outputs_to_the_loss():
    """With the student as its own teacher the KL term and its gradient are zero, so one Adam
    step (which normalises the gradient's scale) moves the weights as without a teacher, but for
    the few whose gradient is near Adam's epsilon; another teacher pulls them elsewhere."""
    import copy

    import torch

    from scalpel_tvm import torch_chain

    data = datasets.load("mnist", limit=128)
    start = torch_chain.chain_net(paper_nets.network("lenet_300_100"))
    plain, itself, other = (copy.deepcopy(start) for _ in range(3))
    stranger = torch_chain.chain_net(paper_nets.network("lenet_300_100"))
    with torch.no_grad():
        for p in stranger.parameters():
            p.mul_(3.0)
    torch_chain.train(plain, data.train_x, data.train_y, epochs=1)
    torch_chain.train(itself, data.train_x, data.train_y, epochs=1, teacher=copy.deepcopy(start).eval())
    torch_chain.train(other, data.train_x, data.train_y, epochs=1, teacher=stranger.eval())
    def differ(net):  # the fraction of weights a step (of 1e-3) moved by a tenth of it otherwise than without a teacher
        w = torch_chain.weights(net)
        return np.mean(np.concatenate([np.abs(w[n] - p).ravel() > 1e-4 for n, p in torch_chain.weights(plain).items()]))

    assert differ(itself) < 1e-3 and differ(other) > 0.1


def test_the_distillation_loss_is_half_labels_half_the_teachers_softened_outputs():
    import torch

    from scalpel_tvm.torch_chain import distillation_loss

    student = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    teacher = np.array([[1.0, 1.5, -2.0], [0.0, -1.0, 2.0]])
    labels = np.array([0, 2])

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    t = 4.0
    hard = -np.mean(np.log(softmax(student)[[0, 1], labels]))
    p, q = softmax(teacher / t), softmax(student / t)
    kl = np.mean(np.sum(p * np.log(p / q), axis=1))
    got = distillation_loss(torch.tensor(student), torch.tensor(labels), torch.tensor(teacher), t)
    assert float(got) == pytest.approx(0.5 * hard + 0.5 * t * t * kl, rel=1e-6)


def test_the_paired_accuracy_change_counts_the_images_that_changed():
    """Ten images: the pruned model fixes one and breaks three, so it is 0.2 down, and the Wald
    interval of paired proportions is 0.2 ± 1.96 · sqrt((4/10 - 0.2²) / 10)."""
    before = np.array([1, 1, 1, 1, 1, 0, 0, 1, 0, 1], bool)
    after = np.array([1, 0, 0, 0, 1, 1, 0, 1, 0, 1], bool)
    paired = paired_accuracy.paired_difference(before, after)
    half = 1.959963984540054 * np.sqrt((0.4 - 0.04) / 10)
    assert (paired["fixed"], paired["broken"], paired["images"]) == (1, 3, 10)
    assert paired["difference"] == pytest.approx(-0.2)
    assert paired["interval95"] == pytest.approx([-0.2 - half, -0.2 + half])
    assert paired_accuracy.describe(paired) == (
        f"-20.00 points (95% interval {100 * (-0.2 - half):+.2f} to {100 * (-0.2 + half):+.2f}; "
        "of 10 images 1 fixed, 3 broken)")
    same = paired_accuracy.paired_difference(before, before)
    assert same["difference"] == 0 and same["interval95"] == [0, 0]
    with pytest.raises(ScalpelError, match="two per-image score vectors of one length"):
        paired_accuracy.paired_difference(before, after[:5])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=300))
def test_the_paired_interval_holds_the_difference_and_swapping_the_models_mirrors_it(scores):
    before, after = (np.array(side, bool) for side in zip(*scores))
    forward = paired_accuracy.paired_difference(before, after)
    backward = paired_accuracy.paired_difference(after, before)
    low, high = forward["interval95"]
    assert low <= forward["difference"] <= high
    assert forward["difference"] == pytest.approx(after.mean() - before.mean())
    assert backward["interval95"] == pytest.approx([-high, -low])
