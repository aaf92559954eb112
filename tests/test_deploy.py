"""`scalpel deploy`: an int16 network as a Cortex-M firmware project that builds and runs."""
from pathlib import Path

import numpy as np
import onnx
import pytest

from scalpel_tvm import ScalpelError, paper_nets
from scalpel_tvm.cli import main
from scalpel_tvm.deploy import deploy
from scalpel_tvm.models import LENET_300_100_KEEP

DATA = Path(__file__).resolve().parents[1] / "scalpel_tvm" / "data"
DENSE = DATA / "lenet_300_100_dense.onnx"


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """LeNet-300-100 pruned for a Cortex-M4: aligned pairs of inputs, 92.6% of the weights gone."""
    path = tmp_path_factory.mktemp("model") / "lenet_300_100_pairs.onnx"
    onnx.save(paper_nets.group_pruned(paper_nets.network("lenet_300_100"), LENET_300_100_KEEP, 2, "1xg"), path)
    return path


@pytest.fixture
def calibration(tmp_path):
    path = tmp_path / "calibration.npy"
    np.save(path, np.random.default_rng(0).random((32, 1, 28, 28)))  # images: flattened to 784
    return path


def test_cli_writes_a_project_that_builds_and_runs_under_qemu(pruned, tmp_path, calibration, capsys):
    out = tmp_path / "lenet"
    assert main(["deploy", str(pruned), "--target", "cortex-m4", "--out", str(out),
                 "--calibration", str(calibration), "--run"]) == 0
    printed = capsys.readouterr().out
    assert "gsparse2" in printed and "outputs equal the numpy reference" in printed
    assert {p.name for p in out.iterdir()} >= {"CMakeLists.txt", "arm-none-eabi.cmake", "src", "report.json",
                                                "report.txt", "build"}
    assert (out / "build" / "network.elf").exists()
    assert "cortex-m4" in (out / "arm-none-eabi.cmake").read_text()
    # the network function is TVM's C, and the project needs nothing of the TVM it came from
    assert "__tvm_ffi_scalpel_network" in (out / "src" / "network_tvm.c").read_text()
    assert 'T.call_extern("void", "scalpel_fc_q15_gsparse2"' in (out / "src" / "network_tir.py").read_text()
    assert (out / "include" / "tvm" / "ffi" / "c_api.h").exists()
    project = "".join(path.read_text() for path in [out / "CMakeLists.txt", *(out / "src").iterdir()])
    assert "site-packages" not in project


def test_the_report_has_every_layer_and_the_budget(pruned, tmp_path, calibration):
    report = deploy(pruned, "cortex-m4", tmp_path / "p", np.load(calibration).reshape(32, -1))
    assert [layer["format"] for layer in report["layers"]][:2] == ["gsparse2", "gsparse2"]
    assert report["flash_bytes"] == sum(layer["bytes"] for layer in report["layers"])
    assert report["flash_bytes"] < report["board_memory"]["flash"]
    assert all(layer["estimated_cycles"] > 0 for layer in report["layers"])


def test_a_cnn_deploys_runs_and_counts_its_code_and_stack(tmp_path):
    """LeNet-5 pruned in pairs: conv, pooling and FC layers in the planner's formats; built and
    run under QEMU, the report adds the code and the stack of one inference."""
    model = paper_nets.group_pruned(paper_nets.network("lenet5"), paper_nets.han_density("lenet5"), 2, "1xg")
    data = np.random.default_rng(0).random((8, 1, 28, 28))
    report = deploy(model, "cortex-m4", tmp_path / "cnn", data, inputs=2, run=True)
    assert [layer["op"] for layer in report["layers"]] == ["conv", "maxpool", "conv", "maxpool", "fc", "fc"]
    assert report["qemu_matches_reference"]
    assert 1024 < report["code_bytes"] < 64 * 1024 and 0 < report["stack_bytes"] < 4096
    assert report["flash_bytes"] > report["weight_bytes"] + report["code_bytes"]  # the whole image
    assert report["sram_bytes"] > report["stack_bytes"]
    assert "stack" in (tmp_path / "cnn" / "report.txt").read_text()


def test_formats_chosen_by_size_store_pairs_with_8_bit_steps_and_compute_the_same(pruned, tmp_path, calibration):
    """`--objective size`: the pair layers keep an 8-bit step per pair in place of a 16-bit index
    (5 bytes a pair, not 6), cost a few more cycles, and the firmware still equals the reference."""
    data = np.load(calibration).reshape(32, -1)
    fast = deploy(pruned, "cortex-m4", tmp_path / "fast", data)
    small = deploy(pruned, "cortex-m4", tmp_path / "small", data, objective="size", run=True)
    assert [layer["format"] for layer in small["layers"]][:2] == ["gsparse2_delta"] * 2
    assert small["qemu_matches_reference"]
    pair_bytes = sum(layer["bytes"] for layer in fast["layers"][:2])
    assert sum(layer["bytes"] for layer in small["layers"][:2]) < 0.9 * pair_bytes
    assert sum(layer["estimated_cycles"] for layer in small["layers"]) >= sum(
        layer["estimated_cycles"] for layer in fast["layers"])
    assert "formats chosen by size" in (tmp_path / "small" / "report.txt").read_text()


def test_a_core_without_the_dual_mac_gets_scalar_groups_and_is_told(pruned, tmp_path, calibration):
    report = deploy(pruned, "cortex-m3", tmp_path / "m3", np.load(calibration), run=True)
    assert "gsparse2" not in [layer["format"] for layer in report["layers"]]
    assert "groups fall back to G = 1" in (tmp_path / "m3" / "report.txt").read_text()


def test_tvms_argument_checks_are_kept_only_when_asked(pruned, tmp_path, calibration):
    """Off, the network function calls nothing of TVM's runtime; --checks keeps TVM's checks, which
    report through the stub."""
    for flags, kept in [([], False), (["--checks"], True)]:
        out = tmp_path / str(kept)
        assert main(["deploy", str(pruned), "--out", str(out), "--calibration", str(calibration), *flags]) == 0
        source = (out / "src" / "network_tvm.c").read_text()
        assert ("TVMFFIErrorSetRaisedFromCStrParts" in source) is kept
        assert '"argument_checks": ' + str(kept).lower() in (out / "report.json").read_text()


def test_a_model_that_does_not_fit_is_refused_before_anything_is_written(tmp_path, calibration, capsys):
    out = tmp_path / "dense"
    assert main(["deploy", str(DENSE), "--out", str(out), "--calibration", str(calibration)]) == 2
    assert "needs 521.5 KB of flash, the board has 512 KB" in capsys.readouterr().err
    assert not out.exists()


def test_what_the_user_wrote_is_not_overwritten(pruned, tmp_path, calibration):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    data = np.load(calibration).reshape(32, -1)
    with pytest.raises(ScalpelError, match="not empty; choose another --out or pass --overwrite"):
        deploy(pruned, "cortex-m4", out, data)
    deploy(pruned, "cortex-m4", out, data, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_bad_arguments_are_clear_errors(pruned, tmp_path, calibration, capsys):
    (tmp_path / "bad.npy").write_text("not numpy")
    assert main(["deploy", str(pruned), "--out", str(tmp_path / "o"), "--calibration",
                 str(tmp_path / "bad.npy")]) == 2
    assert "cannot read calibration data" in capsys.readouterr().err
    with pytest.raises(ScalpelError, match="not a Cortex-M board target"):
        deploy(pruned, "x86-avx2", tmp_path / "o", np.zeros((2, 784)))
