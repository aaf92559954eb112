"""`scalpel demo` runs the whole user path and reports what it measured."""
import json

import onnx
import pytest

from nets import run_ort
from scalpel_tvm import TargetSpec, datasets, models, paper_nets
from scalpel_tvm.cli import main
from scalpel_tvm.demo import (NETWORKS, _input_shape, check_runs_here, default_target, demo_model_path, frontend_facts,
                              recorded_target)


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_shipped_demo_models_are_trained_and_pruned_without_loss(network):
    """`python/make_demo_models.py`: the network trained on MNIST, and that network pruned for
    x86 by the frontend. Run here with onnxruntime, both score on MNIST's test set what the
    frontend recorded, and the pruned one is within the frontend's 0.1-point tolerance."""
    dense, pruned = (onnx.load(demo_model_path(network, p)) for p in (False, True))
    facts = frontend_facts(pruned)
    assert facts["data"] == "mnist" and facts["target"] == "x86-avx2"
    assert [n.op_type for n in dense.graph.node] == [n.op_type for n in pruned.graph.node]
    assert models.weights_removed(dense) < 0.01 < models.weights_removed(pruned)
    mnist = datasets.load("mnist")
    x = mnist.test_x.reshape(len(mnist.test_x), *_input_shape(dense, 1)[1:])
    scores = {name: float((run_ort(model, x).argmax(1) == mnist.test_y).mean())
              for name, model in (("dense", dense), ("pruned", pruned))}
    assert scores["dense"] == pytest.approx(facts["test_accuracy_dense"], abs=3e-4)  # float order: a few images
    assert scores["pruned"] == pytest.approx(facts["test_accuracy_pruned"], abs=3e-4)
    assert scores["pruned"] >= scores["dense"] - 0.001


def test_demo_models_carry_the_papers_pruning():
    assert models.weights_removed(onnx.load(demo_model_path("lenet_300_100", True))) >= 0.92


def test_demo_reports_equal_outputs_latencies_and_sizes(tmp_path):
    assert main(["demo", "--network", "lenet_300_100", "--batch", "1", "--rounds", "3",
                 "--out", str(tmp_path)]) == 0
    (record,) = json.loads((tmp_path / "demo.json").read_text())
    assert record["target"] == "x86-avx2"  # what the model was pruned for (default_target)
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


def test_demo_compiles_for_the_target_its_models_were_pruned_for(monkeypatch):
    """Their groups are 8 wide: a CPU with wider lanes that runs AVX2 code gets x86-avx2, not
    its own lanes; a CPU without AVX2 gets its own."""
    assert default_target() == "x86-avx2"
    old_cpu = TargetSpec.from_target({"kind": "llvm", "mcpu": "nehalem"})
    monkeypatch.setattr(TargetSpec, "host", classmethod(lambda cls: old_cpu))
    assert default_target() == "host"


def test_a_model_compiles_for_its_recorded_target_only_where_this_cpu_runs_it():
    """`recorded_target` (the demo's and `python/example_onnx.py`'s default): the frontend's
    target from the file's metadata; a microcontroller's model, or one the frontend did not make,
    gets this CPU."""
    pruned = onnx.load(demo_model_path("lenet_300_100", True))
    assert recorded_target(pruned) == "x86-avx2"
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
