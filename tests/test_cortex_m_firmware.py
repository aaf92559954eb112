"""The int16 kernels, and a whole int16 network, on an emulated Cortex-M4 (QEMU mps2-an386,
semihosting) give exactly the numpy reference's integers."""
import numpy as np
import onnx
import pytest

from nets import run_ort
from scalpel_tvm import ScalpelError, TargetSpec, cortex_m, models
from scalpel_tvm import fixed_point as fp
from scalpel_tvm.cortex_m import Q15Layer, run_selftest
from scalpel_tvm.int16_net import quantize_net
from scalpel_tvm.schedules.csr import CSRWeight
from scalpel_tvm.schedules.grouped_sparse import GroupedSparseWeight


def random_layers(rng):
    """FC layers dense, as aligned pairs (16-bit indices and 8-bit steps) and as CSR; unaligned
    pairs (any start, one at the last input); a wide layer whose 8-bit steps need zero pairs; a
    strided, padded conv in the four formats; max and average pooling; and a layer whose
    accumulator saturates."""
    layers = []
    for k, n in [(9, 5), (16, 7), (31, 3)]:
        x = rng.integers(-2000, 2001, (3, k)).astype(np.int16)
        w = rng.integers(-2000, 2001, (n, k)).astype(np.int16)
        w[rng.random(w.shape) < 0.6] = 0
        bias = rng.integers(-2**24, 2**24, n).astype(np.int32)
        layers.append(Q15Layer("dense", x, n, w, bias=bias, shift=9, relu=False))
        pairs = GroupedSparseWeight.from_dense(w.T.astype(np.float32), 2, "1xg")
        indptr, indices, values = cortex_m.pairs(pairs.indptr, pairs.indices, pairs.values, k)
        layers.append(Q15Layer("gsparse2", x, n, values, indptr, indices, bias, shift=9, relu=True))
        indptr, steps, values = cortex_m.pair_steps(indptr, indices, values)
        layers.append(Q15Layer("gsparse2_delta", x, n, values, indptr, bias=bias, shift=9, relu=True, steps=steps))
        csr = CSRWeight.from_dense(w.T.astype(np.float32))
        layers.append(Q15Layer("csr", x, n, csr.values.astype(np.int16), csr.indptr, csr.indices,
                               None, shift=7, relu=False))
    x = rng.integers(-500, 501, (2, 7)).astype(np.int16)
    starts = np.array([1, 4, 6, 0, 3], np.int32)  # output 0: 1, 4, 6 (6 = the last input); output 1: 0, 3
    values = rng.integers(-500, 501, (5, 2)).astype(np.int16)
    values[2, 1] = 0
    indptr, indices, values = cortex_m.pairs(np.array([0, 3, 5], np.int32), starts, values, 7)
    layers.append(Q15Layer("gsparse2", x, 2, values, indptr, indices, shift=3))
    x = rng.integers(-500, 501, (2, 900)).astype(np.int16)
    starts = np.array([0, 300, 898, 600], np.int32)  # gaps of 300 and 598: zero pairs bridge them
    indptr, steps, values = cortex_m.pair_steps(*cortex_m.pairs(
        np.array([0, 3, 4], np.int32), starts, rng.integers(-500, 501, (4, 2)).astype(np.int16), 900))
    layers.append(Q15Layer("gsparse2_delta", x, 2, values, indptr, shift=3, steps=steps))
    window = fp.Window.over(3, 7, 6, 3, 2, strides=(2, 1), pads=(1, 0, 1, 1))  # K = 18
    images = rng.integers(-3000, 3001, (2, window.in_size)).astype(np.int16)
    w = rng.integers(-3000, 3001, (4, window.column)).astype(np.int16)
    w[rng.random(w.shape) < 0.5] = 0
    bias = rng.integers(-2**20, 2**20, 4).astype(np.int32)
    conv = dict(bias=bias, shift=11, relu=True, op="conv", window=window)
    layers.append(Q15Layer("dense", images, 4, w, **conv))
    pairs = GroupedSparseWeight.from_dense(w.T.astype(np.float32), 2, "1xg")
    indptr, indices, values = cortex_m.pairs(pairs.indptr, pairs.indices, pairs.values, window.column)
    layers.append(Q15Layer("gsparse2", images, 4, values, indptr, indices, **conv))
    indptr, steps, values = cortex_m.pair_steps(indptr, indices, values)
    layers.append(Q15Layer("gsparse2_delta", images, 4, values, indptr, **conv, steps=steps))
    csr = CSRWeight.from_dense(w.T.astype(np.float32))
    layers.append(Q15Layer("csr", images, 4, csr.values.astype(np.int16), csr.indptr, csr.indices, **conv))
    pool = fp.Window.over(3, 7, 6, 3, 3, strides=(2, 2), pads=(1, 1, 1, 1))
    layers.append(Q15Layer("-", images, 3, op="maxpool", window=pool))
    layers.append(Q15Layer("-", images, 3, op="avgpool", window=pool))
    full = np.full((1, 8), fp.Q15_MAX, np.int16)
    layers.append(Q15Layer("dense", full, 1, np.array([[fp.Q15_MAX] * 6 + [-fp.Q15_MAX] * 2], np.int16), shift=16))
    return layers


def reference(layer):
    if layer.op == "maxpool":
        return fp.maxpool(layer.x, layer.window)
    if layer.op == "avgpool":
        return fp.avgpool(layer.x, layer.window, layer.relu)
    if layer.kind == "dense":
        def matmul(x):
            return fp.fc_dense(x, layer.values, layer.bias, layer.shift, layer.relu)
    else:
        def matmul(x):
            kernel = fp.fc_csr if layer.kind == "csr" else fp.fc_gsparse2
            indices = (cortex_m.steps_to_starts(layer.indptr, layer.steps) if layer.kind == "gsparse2_delta"
                       else layer.indices)
            return kernel(x, layer.indptr, indices, layer.values, layer.bias, layer.shift, layer.relu)
    return fp.conv(layer.x, layer.window, matmul, layer.n) if layer.op == "conv" else matmul(layer.x)


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
    """Random He weights pruned to the paper's structure (`models.lenet_300_100`, what the demo
    shipped before the frontend trained its models)."""
    return models.lenet_300_100(pruned=pruned)


def test_int16_lenet_300_100_on_the_emulated_m4_equals_the_reference_and_tracks_float(tmp_path):
    """LeNet-300-100 pruned for x86 (8x1 groups: 8 outputs sharing an input), quantized
    per layer from calibration data: its pairs of inputs mostly hold one weight, so the planner
    stores fc1 and fc2 as CSR. The emulated M4's outputs are the reference's, and they track the
    float model within a fraction of a percent."""
    model = lenet_300_100()
    rng = np.random.default_rng(0)
    net = quantize_net(model, rng.random((64, 784)))
    assert [layer.format for layer in net.layers][:2] == ["csr", "csr"]
    x = rng.random((4, 784))
    got = cortex_m.run_network(net, net.quantize_input(x), tmp_path, M4_MEMORY)
    np.testing.assert_array_equal(got, net.forward(net.quantize_input(x)))
    want = run_ort(model, x.astype(np.float32))
    assert np.max(np.abs(net.predict(x) - want)) < 0.005 * np.max(np.abs(want))


def test_a_network_that_does_not_fit_the_board_is_refused_with_the_numbers():
    """Dense LeNet-300-100 in int16 is 521.5 KB of weights: over the M4 board's 512 KB of flash
    (the pruned one, stored as pairs, is 116 KB)."""
    net = quantize_net(lenet_300_100(pruned=False), np.random.default_rng(0).random((8, 784)))
    assert [layer.format for layer in net.layers] == ["dense"] * 3
    with pytest.raises(ScalpelError, match=r"needs 521\.5 KB of flash, the board has 512 KB"):
        cortex_m.check_fits(net, M4_MEMORY)
    pruned = quantize_net(lenet_300_100(), np.random.default_rng(0).random((8, 784)))
    assert cortex_m.check_fits(pruned, M4_MEMORY)["flash"] < 120 * 1024


def tiny_cnn(after_conv=None, group=1, input_dims=(1, 2, 6, 6), weight=None):
    """Conv(2->4, 3x3) [-> after_conv] -> Flatten -> Gemm(.., 3): a model to break on purpose."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 2 // group, 3, 3)).astype(np.float32) if weight is None else weight
    nodes = [onnx.helper.make_node("Conv", ["input", "w"], ["c"], name="conv", group=group)]
    last = "c"
    if after_conv:
        nodes.append(onnx.helper.make_node(after_conv, ["c"], ["a"], name="odd"))
        last = "a"
    nodes += [onnx.helper.make_node("Flatten", [last], ["f"], name="flat"),
              onnx.helper.make_node("Gemm", ["f", "g"], ["y"], name="fc", transB=1)]
    inits = [onnx.numpy_helper.from_array(w, "w"),
             onnx.numpy_helper.from_array(rng.standard_normal((3, 64)).astype(np.float32), "g")]
    graph = onnx.helper.make_graph(
        nodes, "tiny", [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, list(input_dims))],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [input_dims[0], 3])], inits)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_what_the_int16_path_cannot_take_is_named_with_the_way_out():
    calibration = np.zeros((2, 2, 6, 6))
    assert [layer.op for layer in quantize_net(tiny_cnn(), calibration + 0.5).layers] == ["conv", "fc"]
    cases = [
        (tiny_cnn("LRN"), "LRN node 'odd' is not supported by the int16 Cortex-M path"),
        (tiny_cnn(group=2), "Conv 'conv' is grouped"),
        (tiny_cnn(input_dims=(1, 2, "h", 6)), "dynamic shape besides the batch"),
        (tiny_cnn(weight=np.full((4, 2, 3, 3), np.nan, np.float32)), "NaN or infinite weights"),
        (tiny_cnn(weight=np.full((4, 2, 3, 3), 1e-9, np.float32)), "pruned to nothing"),
    ]
    for model, message in cases:
        with pytest.raises(ScalpelError, match=message):
            quantize_net(model, calibration)
    with pytest.raises(ScalpelError, match=r"calibration data must be \(samples, 784\)"):
        quantize_net(lenet_300_100(), np.zeros((4, 28, 29)))


def test_int16_lenet5_on_the_emulated_m4_equals_the_reference_and_tracks_float(tmp_path):
    """A CNN: im2col convolutions, max pooling and FC layers, the weights pruned as pairs (conv
    weights grouped along their im2col rows): bit-exact on the emulated M4, and close to
    onnxruntime's float outputs."""
    from scalpel_tvm import paper_nets

    model = paper_nets.group_pruned(paper_nets.network("lenet5"), paper_nets.han_density("lenet5"), 2, "1xg")
    rng = np.random.default_rng(1)
    net = quantize_net(model, rng.random((16, 1, 28, 28)))
    assert [layer.op for layer in net.layers] == ["conv", "maxpool", "conv", "maxpool", "fc", "fc"]
    x = rng.random((3, 1, 28, 28))
    got = cortex_m.run_network(net, net.quantize_input(x), tmp_path, M4_MEMORY)
    np.testing.assert_array_equal(got, net.forward(net.quantize_input(x)))
    want = run_ort(model, x.astype(np.float32))
    assert np.max(np.abs(net.predict(x) - want)) < 0.01 * np.max(np.abs(want))


def test_indices_are_16_bit_and_a_layer_too_wide_for_them_is_refused():
    assert cortex_m.index16(np.array([0, 65535])).dtype == np.uint16
    with pytest.raises(ScalpelError, match="70000 does not fit the kernels' 16-bit indices"):
        cortex_m.index16(np.array([3, 70000]))


def test_a_bit_of_headroom_and_saturation_is_counted_not_hidden():
    """Activations keep one bit of headroom over the calibration peak: inputs 1.5x larger do not
    saturate; inputs 8x larger do, and the layers where they do are named with counts."""
    model = lenet_300_100(pruned=False)
    rng = np.random.default_rng(0)
    calibration = rng.random((64, 784))
    net = quantize_net(model, calibration)
    assert net.saturation == {} and net.saturated(net.quantize_input(1.5 * calibration)) == {}
    loud = net.saturated(net.quantize_input(8 * calibration))
    assert loud and set(loud) <= {"fc1", "fc2", "fc3"} and all(count > 0 for count in loud.values())


def test_node_pruned_layers_shrink_and_compute_the_same(tmp_path):
    """LeNet-5 with the authors' node pruning (9/20, 18/50, 65/500 kept): the int16 network drops
    the dead filters and neurons and the matching inputs downstream (through ReLU, max pooling
    and Flatten), and computes what the unshrunk network computes, on the emulated M4 too."""
    from scalpel_tvm import paper_nets

    model = paper_nets.node_pruned(paper_nets.network("lenet5"), paper_nets.NODES_KEPT["lenet5"])
    rng = np.random.default_rng(2)
    calibration, x = rng.random((16, 1, 28, 28)), rng.random((3, 1, 28, 28))
    shrunk = quantize_net(model, calibration, formats=dict.fromkeys(["conv1", "conv2", "fc1", "fc2"], "dense"))
    full = quantize_net(model, calibration, formats=dict.fromkeys(["conv1", "conv2", "fc1", "fc2"], "dense"),
                        shrink=False)
    assert shrunk.shrunk == {"conv1": 11, "conv2": 32, "fc1": 435}
    assert [layer.w_nk.shape for layer in shrunk.layers if hasattr(layer, "w_nk")] == [
        (9, 25), (18, 9 * 25), (65, 18 * 16), (10, 65)]
    assert shrunk.flash_bytes() < 0.06 * full.flash_bytes()
    x_q = shrunk.quantize_input(x)
    np.testing.assert_array_equal(shrunk.forward(x_q), full.forward(x_q))
    np.testing.assert_array_equal(cortex_m.run_network(shrunk, x_q, tmp_path, M4_MEMORY), shrunk.forward(x_q))
    want = run_ort(model, x.astype(np.float32))
    assert np.max(np.abs(shrunk.predict(x) - want)) < 0.01 * np.max(np.abs(want))


def test_a_dead_node_with_a_live_bias_is_kept():
    """A neuron with zero weights but a positive bias outputs a constant, not 0: removing it
    would change the result, so it stays."""
    model = lenet_300_100(pruned=False)
    weights = {init.name: init for init in model.graph.initializer}
    w = onnx.numpy_helper.to_array(weights["fc2.weight"]).copy()
    b = onnx.numpy_helper.to_array(weights["fc2.bias"]).copy()
    w[:5], b[:3], b[3:5] = 0, 0.5, 0
    weights["fc2.weight"].CopyFrom(onnx.numpy_helper.from_array(w, "fc2.weight"))
    weights["fc2.bias"].CopyFrom(onnx.numpy_helper.from_array(b, "fc2.bias"))
    net = quantize_net(model, np.random.default_rng(0).random((8, 784)))
    assert net.shrunk == {"fc2": 2} and net.layers[1].w_nk.shape[0] == 98
