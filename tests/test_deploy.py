"""`scalpel deploy`: an int16 FC network as a Cortex-M firmware project that builds and runs."""
from pathlib import Path

import numpy as np
import pytest

from scalpel_tvm import ScalpelError
from scalpel_tvm.cli import main
from scalpel_tvm.deploy import deploy

DATA = Path(__file__).resolve().parents[1] / "scalpel_tvm" / "data"
PRUNED, DENSE = DATA / "lenet_300_100_scalpel.onnx", DATA / "lenet_300_100_dense.onnx"


@pytest.fixture
def calibration(tmp_path):
    path = tmp_path / "calibration.npy"
    np.save(path, np.random.default_rng(0).random((32, 1, 28, 28)))  # images: flattened to 784
    return path


def test_cli_writes_a_project_that_builds_and_runs_under_qemu(tmp_path, calibration, capsys):
    out = tmp_path / "lenet"
    assert main(["deploy", str(PRUNED), "--target", "cortex-m4", "--out", str(out),
                 "--calibration", str(calibration), "--run"]) == 0
    printed = capsys.readouterr().out
    assert "gsparse2" in printed and "outputs equal the numpy reference" in printed
    assert {p.name for p in out.iterdir()} >= {"CMakeLists.txt", "arm-none-eabi.cmake", "src", "report.json",
                                                "report.txt", "build"}
    assert (out / "build" / "network.elf").exists()
    assert "cortex-m4" in (out / "arm-none-eabi.cmake").read_text()


def test_the_report_has_every_layer_and_the_budget(tmp_path, calibration):
    report = deploy(PRUNED, "cortex-m4", tmp_path / "p", np.load(calibration).reshape(32, -1))
    assert [layer["format"] for layer in report["layers"]] == ["gsparse2", "gsparse2", "dense"]
    assert report["flash_bytes"] == sum(layer["bytes"] for layer in report["layers"])
    assert report["flash_bytes"] < report["board_memory"]["flash"]


def test_a_model_that_does_not_fit_is_refused_before_anything_is_written(tmp_path, calibration, capsys):
    out = tmp_path / "dense"
    assert main(["deploy", str(DENSE), "--out", str(out), "--calibration", str(calibration)]) == 2
    assert "needs 521.5 KB of flash, the board has 512 KB" in capsys.readouterr().err
    assert not out.exists()


def test_what_the_user_wrote_is_not_overwritten(tmp_path, calibration):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    data = np.load(calibration).reshape(32, -1)
    with pytest.raises(ScalpelError, match="not empty; choose another --out or pass --overwrite"):
        deploy(PRUNED, "cortex-m4", out, data)
    deploy(PRUNED, "cortex-m4", out, data, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_bad_arguments_are_clear_errors(tmp_path, calibration, capsys):
    (tmp_path / "bad.npy").write_text("not numpy")
    assert main(["deploy", str(PRUNED), "--out", str(tmp_path / "o"), "--calibration",
                 str(tmp_path / "bad.npy")]) == 2
    assert "cannot read calibration data" in capsys.readouterr().err
    with pytest.raises(ScalpelError, match="not a Cortex-M board target"):
        deploy(PRUNED, "x86-avx2", tmp_path / "o", np.zeros((2, 784)))
