"""`scalpel demo` runs the whole user path and reports what it measured."""
import json

import onnx
import pytest

from nets import run_ort
from scalpel_tvm import TargetSpec, datasets, models, paper_nets
from scalpel_tvm.cli import main
from scalpel_tvm.demo import (MODEL_TARGETS, NETWORKS, PRUNED_MODELS, _input_shape, check_runs_here, default_target,
                              demo_model_path, frontend_facts, pruned_model_path, recorded_target, runnable_target)


@pytest.mark.parametrize("network, target", [(n, t) for t, nets in PRUNED_MODELS.items() for n in nets])
def test_shipped_demo_models_are_trained_and_pruned_without_loss(network, target):
    """`python/make_demo_models.py`: the network trained on MNIST, and that network pruned for
    each x86 target by the frontend. Run here with onnxruntime, both score on MNIST's test set what the
    frontend recorded, and the pruned one is within the frontend's 0.1-point tolerance."""
    dense, pruned = (onnx.load(demo_model_path(network, p, target)) for p in (False, True))
    facts = frontend_facts(pruned)
    assert facts["data"] == "mnist" and facts["target"] == target
    assert [n.op_type for n in dense.graph.node] == [n.op_type for n in pruned.graph.node]
    assert models.weights_removed(dense) < 0.01 < models.weights_removed(pruned)
    mnist = datasets.load("mnist")
    x = mnist.test_x.reshape(len(mnist.test_x), *_input_shape(dense, 1)[1:])
    scores = {name: float((run_ort(model, x).argmax(1) == mnist.test_y).mean())
              for name, model in (("dense", dense), ("pruned", pruned))}
    assert scores["dense"] == pytest.approx(facts["test_accuracy_dense"], abs=3e-4)  # float order: a few images
    assert scores["pruned"] == pytest.approx(facts["test_accuracy_pruned"], abs=3e-4)
    assert scores["pruned"] >= scores["dense"] - 0.001


@pytest.mark.parametrize("target", [t for t, nets in PRUNED_MODELS.items() if "lenet_300_100" in nets])
def test_demo_models_carry_the_papers_pruning_in_groups_as_wide_as_their_targets_lanes(target):
    """92% of LeNet-300-100's weights removed, in whole groups of 8 for AVX2 and of 16 for AVX-512."""
    from scalpel_tvm import import_onnx, plan

    model = onnx.load(demo_model_path("lenet_300_100", True, target))
    assert models.weights_removed(model) >= 0.92
    layer_plan = plan(import_onnx(model, batch=1), target)
    assert layer_plan.group == TargetSpec.preset(target).lanes("float32")
    fc1 = layer_plan.layers[0]
    assert max(fc1.group_sparsity.values()) >= 0.9


def test_demo_reports_equal_outputs_latencies_and_sizes(tmp_path):
    assert main(["demo", "--network", "lenet_300_100", "--batch", "1", "--rounds", "3",
                 "--out", str(tmp_path)]) == 0
    (record,) = json.loads((tmp_path / "demo.json").read_text())
    assert record["target"] == default_target()  # the widest the models were pruned for that this CPU runs
    assert record["frontend"]["target"] == record["target"]  # LeNet-300-100 ships for both x86 targets
    assert record["pruned_model"] == f"lenet_300_100_scalpel_{record['target']}.onnx"
    assert record["max_abs_diff_vs_no_pass"] < 1e-4
    assert record["max_abs_diff_vs_onnxruntime"] < 1e-4
    assert record["model_bytes_pruned"] < record["model_bytes_dense"] * 0.2
    assert record["frontend"]["test_accuracy_pruned"] > 0.9
    assert set(record["seconds"]) == {"scalpel_dense", "scalpel_pruned", "ort_dense", "ort_pruned"}
    assert all(s > 0 for s in record["seconds"].values())
    assert (tmp_path / "demo.png").stat().st_size > 0


def test_demo_refuses_targets_this_machine_cannot_run(capsys, monkeypatch):
    assert main(["demo", "--target", "cortex-m4"]) == 2
    assert "not supported yet" in capsys.readouterr().err
    assert main(["demo", "--target", "cuda"]) == 2
    assert "bench_gpu.py" in capsys.readouterr().err
    check_runs_here(TargetSpec.preset("x86-avx2"))  # this machine kind runs AVX2 code
    # Pretend this machine is a pre-AVX CPU: AVX2 code must not be run on it.
    old_cpu = TargetSpec.from_target({"kind": "llvm", "mcpu": "nehalem"})
    monkeypatch.setattr(TargetSpec, "host", classmethod(lambda cls: old_cpu))
    assert main(["demo", "--target", "x86-avx2"]) == 2
    assert "lacks avx" in capsys.readouterr().err


@pytest.mark.parametrize("mcpu, expected", [("skylake-avx512", "x86-avx512"), ("znver3", "x86-avx2"),
                                             ("nehalem", "host")])
def test_demo_compiles_for_the_widest_target_its_models_were_pruned_for_that_this_cpu_runs(
        monkeypatch, mcpu, expected):
    """The models for x86-avx512 have groups of 16, those for x86-avx2 groups of 8: an AVX-512 CPU
    gets the first, an AVX2 one the second, a CPU without AVX2 its own lanes."""
    cpu = TargetSpec.from_target({"kind": "llvm", "mcpu": mcpu})
    monkeypatch.setattr(TargetSpec, "host", classmethod(lambda cls: cpu))
    assert default_target() == expected


def test_benchmark_scripts_refuse_a_target_this_cpu_cannot_run_as_a_usage_error(monkeypatch):
    """`--target` of the kernel benchmarks (`type=runnable_target`): on an AVX2 CPU x86-avx512 is
    an argparse error naming what the CPU lacks, before anything is compiled."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--target", choices=MODEL_TARGETS, type=runnable_target)
    cpu = TargetSpec.from_target({"kind": "llvm", "mcpu": "znver3"})
    monkeypatch.setattr(TargetSpec, "host", classmethod(lambda cls: cpu))
    assert parser.parse_args(["--target", "x86-avx2"]).target == "x86-avx2"
    with pytest.raises(argparse.ArgumentTypeError, match="lacks avx512"):
        runnable_target("x86-avx512")
    with pytest.raises(SystemExit):
        parser.parse_args(["--target", "cortex-m4"])  # not a choice


def test_demo_compiles_the_models_whose_groups_match_the_targets_lanes():
    """`scalpel demo --target T` times the model pruned in groups of T's fp32 lanes where one
    ships, else the x86-avx2 one (groups of 8)."""
    wide, avx2, old = (TargetSpec.preset("x86-avx512"), TargetSpec.preset("x86-avx2"),
                       TargetSpec.from_target({"kind": "llvm", "mcpu": "nehalem"}))
    for network in NETWORKS:
        assert pruned_model_path(network, wide) == demo_model_path(network, True, "x86-avx512")
        assert pruned_model_path(network, avx2) == pruned_model_path(network, old) == demo_model_path(network, True)
        assert pruned_model_path(network, wide).exists()


def test_a_model_compiles_for_its_recorded_target_only_where_this_cpu_runs_it():
    """`recorded_target` (`python/example_onnx.py`'s default): the frontend's
    target from the file's metadata; a microcontroller's model, or one the frontend did not make,
    gets this CPU."""
    pruned = onnx.load(demo_model_path("lenet_300_100", True))
    assert recorded_target(pruned) == "x86-avx2"
    wide = onnx.load(demo_model_path("lenet_300_100", True, "x86-avx512"))
    for mcpu, expected in (("skylake-avx512", "x86-avx512"), ("znver3", "host")):  # AVX-512 code on an AVX2 CPU: no
        cpu = TargetSpec.from_target({"kind": "llvm", "mcpu": mcpu})
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(TargetSpec, "host", classmethod(lambda cls: cpu))
            assert recorded_target(wide) == expected
    for_m4 = onnx.ModelProto()
    for_m4.CopyFrom(pruned)
    facts = dict(frontend_facts(pruned), target="cortex-m4")
    next(p for p in for_m4.metadata_props if p.key == "scalpel.frontend").value = json.dumps(facts)
    assert recorded_target(for_m4) == "host"
    assert recorded_target(NETWORKS["lenet_300_100"](pruned=True)) == "host"  # random weights: no facts


def test_accuracy_change_scores_both_models_and_counts_the_images_that_changed(tmp_path):
    """`python/accuracy_change.py DENSE PRUNED`: the accuracies the frontend recorded in the pruned
    file, and the change as fixed minus broken images of the 10,000."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "python" / "accuracy_change.py"
    dense, pruned = (demo_model_path("lenet_300_100", p) for p in (False, True))
    out = subprocess.run([sys.executable, str(script), str(dense), str(pruned)],
                         check=True, capture_output=True, text=True).stdout
    match = re.search(r" ([\d.]+)% -> .* ([\d.]+)%: ([+-][\d.]+) points \(95% interval ([+-][\d.]+) to ([+-][\d.]+); "
                      r"of 10,000 images (\d+) fixed, (\d+) broken\)", out)
    assert match, out
    before, after, change, low, high, fixed, broken = (float(v) for v in match.groups())
    facts = frontend_facts(onnx.load(pruned))
    assert before == pytest.approx(100 * facts["test_accuracy_dense"], abs=0.03)
    assert after == pytest.approx(100 * facts["test_accuracy_pruned"], abs=0.03)
    assert change == pytest.approx((fixed - broken) / 100) == pytest.approx(after - before, abs=0.011)
    assert low < change < high
    wrong = tmp_path / "convnet.onnx"
    onnx.save(paper_nets.network("convnet"), wrong)
    bad = subprocess.run([sys.executable, str(script), str(wrong), str(wrong)], capture_output=True, text=True)
    assert bad.returncode == 2 and "mnist images are (1, 28, 28), the model takes (3, 32, 32)" in bad.stderr


@pytest.mark.slow
def test_the_vm_call_benchmark_times_both_builds_of_each_demo_model(tmp_path):
    """`python/bench_vm_call.py`: every demo model and an empty function, built with
    `tvm.compile` and with `scalpel_tvm.compile` (their outputs checked equal before timing),
    timed side by side; the JSON holds each time and the pruned-over-dense speedup each way."""
    import math
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "python" / "bench_vm_call.py"
    subprocess.run([sys.executable, str(script), "--rounds", "2", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True)
    rows = json.loads((tmp_path / "bench_vm_call.json").read_text())["rows"]
    assert [(r["network"], r["batch"]) for r in rows] == [
        ("lenet_300_100", 1), ("lenet_300_100", 50), ("lenet5", 1), ("lenet5", 50)]
    for r in rows:
        assert set(r["us"]) == {f"{k} {b}" for k in ("empty", "dense", "pruned") for b in ("bytecode", "compiled")}
        assert all(us > 0 for us in r["us"].values())
        for build in ("bytecode", "compiled"):
            assert math.isclose(r["pruned_over_dense"][build], r["us"][f"dense {build}"] / r["us"][f"pruned {build}"])
