"""The int16 kernels, and a whole int16 network, on an emulated Cortex-M4 (QEMU mps2-an386,
semihosting) give exactly the numpy reference's integers."""
from pathlib import Path

import numpy as np
import onnx
import pytest

from nets import run_ort
from scalpel_tvm import ScalpelError, TargetSpec, cortex_m
from scalpel_tvm import fixed_point as fp
from scalpel_tvm.cortex_m import Q15Layer, run_selftest
from scalpel_tvm.int16_mlp import quantize_mlp
from scalpel_tvm.schedules.csr import CSRWeight
from scalpel_tvm.schedules.grouped_sparse import GroupedSparseWeight

DATA = Path(cortex_m.__file__).parent / "data"


def random_layers(rng):
    """Dense, aligned pairs, unaligned pairs (any start, one at the last input), CSR, and a
    layer whose accumulator saturates."""
    layers = []
    for k, n in [(9, 5), (16, 7), (31, 3)]:
        x = rng.integers(-2000, 2001, (3, k)).astype(np.int16)
        w = rng.integers(-2000, 2001, (n, k)).astype(np.int16)
        w[rng.random(w.shape) < 0.6] = 0
        bias = rng.integers(-2**24, 2**24, n).astype(np.int32)
        layers.append(Q15Layer("dense", x, n, w, bias=bias, shift=9, relu=False))
        pairs = GroupedSparseWeight.from_dense(w.T.astype(np.float32), 2, "1xg")
        layers.append(Q15Layer("gsparse2", x, n, pairs.values.astype(np.int16), pairs.indptr,
                               pairs.indices, bias, shift=9, relu=True))
        csr = CSRWeight.from_dense(w.T.astype(np.float32))
        layers.append(Q15Layer("csr", x, n, csr.values.astype(np.int16), csr.indptr, csr.indices,
                               None, shift=7, relu=False))
    x = rng.integers(-500, 501, (2, 7)).astype(np.int16)
    starts = np.array([1, 4, 6, 0, 3], np.int32)  # output 0: 1, 4, 6 (6 = the last input); output 1: 0, 3
    values = rng.integers(-500, 501, (5, 2)).astype(np.int16)
    values[2, 1] = 0
    layers.append(Q15Layer("gsparse2", x, 2, values, np.array([0, 3, 5], np.int32), starts, shift=3))
    full = np.full((1, 8), fp.Q15_MAX, np.int16)
    layers.append(Q15Layer("dense", full, 1, np.array([[fp.Q15_MAX] * 6 + [-fp.Q15_MAX] * 2], np.int16), shift=16))
    return layers


def reference(layer):
    if layer.kind == "dense":
        return fp.fc_dense(layer.x, layer.values, layer.bias, layer.shift, layer.relu)
    kernel = fp.fc_gsparse2 if layer.kind == "gsparse2" else fp.fc_csr
    return kernel(layer.x, layer.indptr, layer.indices, layer.values, layer.bias, layer.shift, layer.relu)


@pytest.mark.parametrize("mcpu", ["cortex-m4", "cortex-m3"])
def test_emulated_cortex_m_equals_the_numpy_reference(tmp_path, mcpu):
    """cortex-m4: the SMUAD/QADD path; cortex-m3 code (no DSP extension) runs on the same
    emulated M4 and must give the same integers through the portable path."""
    layers = random_layers(np.random.default_rng(7))
    for layer, got in zip(layers, run_selftest(layers, tmp_path, mcpu)):
        np.testing.assert_array_equal(got, reference(layer), err_msg=f"{layer.kind} on {mcpu}")


def test_missing_toolchain_names_the_apt_line(monkeypatch):
    monkeypatch.setattr(cortex_m.shutil, "which", lambda tool: None)
    with pytest.raises(ScalpelError, match="apt-get install gcc-arm-none-eabi"):
        cortex_m.check_toolchain()


def test_firmware_that_does_not_finish_is_a_timeout_error(tmp_path):
    layers = random_layers(np.random.default_rng(0))[:1]
    elf = cortex_m.build_selftest(layers, tmp_path)
    with pytest.raises(ScalpelError, match="did not finish within"):
        cortex_m.run_qemu(elf, timeout_s=0.01)


# --- a whole int16 network ------------------------------------------------------------------------

M4_MEMORY = TargetSpec.preset("cortex-m4").memory


def lenet_300_100(pruned=True):
    return onnx.load(str(DATA / ("lenet_300_100_scalpel.onnx" if pruned else "lenet_300_100_dense.onnx")))


def test_int16_lenet_300_100_on_the_emulated_m4_equals_the_reference_and_tracks_float(tmp_path):
    """The pruned LeNet-300-100, quantized per layer from calibration data and stored as pairs
    where that is smaller: the emulated M4's outputs are the reference's, and they track the
    float model within a fraction of a percent."""
    model = lenet_300_100()
    rng = np.random.default_rng(0)
    net = quantize_mlp(model, rng.random((64, 784)))
    assert [layer.format for layer in net.layers] == ["gsparse2", "gsparse2", "dense"]
    x = rng.random((4, 784))
    got = cortex_m.run_network(net, net.quantize_input(x), tmp_path, M4_MEMORY)
    np.testing.assert_array_equal(got, net.forward(net.quantize_input(x)))
    want = run_ort(model, x.astype(np.float32))
    assert np.max(np.abs(net.predict(x) - want)) < 0.005 * np.max(np.abs(want))


def test_a_network_that_does_not_fit_the_board_is_refused_with_the_numbers():
    """Dense LeNet-300-100 in int16 is 521.5 KB of weights: over the M4 board's 512 KB of flash
    (the pruned one, stored as pairs, is 116 KB)."""
    net = quantize_mlp(lenet_300_100(pruned=False), np.random.default_rng(0).random((8, 784)))
    assert [layer.format for layer in net.layers] == ["dense"] * 3
    with pytest.raises(ScalpelError, match=r"needs 521\.5 KB of flash, the board has 512 KB"):
        cortex_m.check_fits(net, M4_MEMORY)
    pruned = quantize_mlp(lenet_300_100(), np.random.default_rng(0).random((8, 784)))
    assert cortex_m.check_fits(pruned, M4_MEMORY)["flash"] < 120 * 1024


def test_layers_the_int16_path_cannot_take_are_named():
    conv = onnx.load(str(DATA / "lenet5_scalpel.onnx"))
    with pytest.raises(ScalpelError, match="Conv node .* not supported yet"):
        quantize_mlp(conv, np.zeros((1, 784)))
    with pytest.raises(ScalpelError, match=r"calibration data must be \(samples, 784\)"):
        quantize_mlp(lenet_300_100(), np.zeros((4, 28, 28)))


def test_indices_are_16_bit_and_a_layer_too_wide_for_them_is_refused():
    assert cortex_m.index16(np.array([0, 65535])).dtype == np.uint16
    with pytest.raises(ScalpelError, match="70000 does not fit the kernels' 16-bit indices"):
        cortex_m.index16(np.array([3, 70000]))
