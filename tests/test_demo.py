"""`scalpel demo` runs the whole user path and reports what it measured."""
import json

import onnx

from scalpel_tvm import models
from scalpel_tvm.cli import main
from scalpel_tvm.demo import NETWORKS, demo_model_path


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
