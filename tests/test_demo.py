"""`scalpel demo` runs the whole user path and reports what it measured."""
import json

import onnx

from scalpel_tvm import TargetSpec, models
from scalpel_tvm.cli import main
from scalpel_tvm.demo import NETWORKS, check_runs_here, demo_model_path


def test_shipped_demo_models_are_the_ones_the_builders_make():
    for network, build in NETWORKS.items():
        for pruned in (False, True):
            shipped = onnx.load(demo_model_path(network, pruned))
            assert shipped.SerializeToString() == build(pruned=pruned).SerializeToString()


def test_demo_models_carry_the_papers_pruning():
    assert models.weights_removed(onnx.load(demo_model_path("lenet_300_100", True))) >= 0.92


def test_demo_reports_equal_outputs_latencies_and_sizes(tmp_path):
    assert main(["demo", "--network", "lenet_300_100", "--batch", "1", "--rounds", "3",
                 "--out", str(tmp_path)]) == 0
    (record,) = json.loads((tmp_path / "demo.json").read_text())
    assert record["max_abs_diff_vs_no_pass"] < 1e-4
    assert record["max_abs_diff_vs_onnxruntime"] < 1e-4
    assert record["model_bytes_pruned"] < record["model_bytes_dense"] * 0.2
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
