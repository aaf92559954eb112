"""Small ONNX networks with chosen dead neurons / filters / zero groups, and ways to run them."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from scalpel_tvm.onnx_import import import_onnx

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "core-avx2"})


def mlp(dims, *, dead=None, zero_groups=None, bias=None, seed=0, activation="Relu"):
    """An MLP of Gemm(transB=1) + activation layers.

    dead: {layer index: output neurons with all-zero weights}; zero_groups: {layer index:
    fraction of aligned G×1 groups (G = 8) zeroed}; bias: {layer index: constant bias value}.
    """
    nodes, inits, prev = [], [], "input"
    for i, (w_kn, b) in enumerate(_layers(dims, dead, zero_groups, bias, seed)):
        inits += [numpy_helper.from_array(np.ascontiguousarray(w_kn.T), f"w{i}"),
                  numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"fc{i}"], transB=1))
        prev = _activation(nodes, f"fc{i}", i, len(dims), activation)
    return model(nodes, inits, ["batch", dims[0]], prev, ["batch", dims[-1]])


def token_mlp(dims, seq=4, *, dead=None, zero_groups=None, bias=None, seed=0, activation="Relu"):
    """A transformer-style MLP on [batch, seq, features]: MatMul + Add (+ activation) per layer,
    as torch exports nn.Linear on a 3-D input. Same options as `mlp`."""
    nodes, inits, prev = [], [], "input"
    for i, (w_kn, b) in enumerate(_layers(dims, dead, zero_groups, bias, seed)):
        inits += [numpy_helper.from_array(w_kn, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"mm{i}"]),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"fc{i}"])]
        prev = _activation(nodes, f"fc{i}", i, len(dims), activation)
    opset = 20 if activation.startswith("Gelu") else 17  # ONNX has Gelu from opset 20
    return model(nodes, inits, ["batch", seq, dims[0]], prev, ["batch", seq, dims[-1]], opset)


def _layers(dims, dead, zero_groups, bias, seed):
    """([K, N] weight, bias) per layer of an MLP with the chosen dead neurons and zero groups."""
    rng = np.random.default_rng(seed)
    for i, (k, n) in enumerate(zip(dims[:-1], dims[1:])):
        w_kn = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        if zero_groups and i in zero_groups:
            w_kn = zero_aligned_groups(w_kn, zero_groups[i], rng)
            w_kn[0, :] = 1.0  # random groups never empty a layer (that is refused; tested apart)
        if dead and i in dead:
            w_kn[:, list(dead[i])] = 0
        b = rng.standard_normal(n).astype(np.float32) * 0.1
        if bias and i in bias:
            b[:] = bias[i]
        yield w_kn, b


def _activation(nodes, prev, i, depth, activation):
    """Append the activation after hidden layer `i` (none after the output layer)."""
    if i >= depth - 2:
        return prev
    if activation == "GeluTanh":  # ONNX Gelu's tanh approximation (GPT-2's)
        nodes.append(helper.make_node("Gelu", [prev], [f"act{i}"], approximate="tanh"))
    else:
        nodes.append(helper.make_node(activation, [prev], [f"act{i}"]))
    return f"act{i}"


def zero_aligned_groups(w_kn, fraction, rng, group=8):
    k, n = w_kn.shape
    blocks = -(-n // group)
    mask = rng.random((k, blocks)) < fraction
    full = np.repeat(mask, group, axis=1)[:, :n]
    return np.where(full, 0, w_kn).astype(np.float32)


def cnn(channels=(1, 6, 8), *, dead=None, hw=12, fc=10, bn=False, padding=0, seed=0,
        pool="MaxPool", bias=None):
    """conv(3x3) [+ BN] + ReLU + 2x2 pool per stage, then Flatten + Gemm.

    dead: {conv index: filters with all-zero weights}; bias: {conv index: constant bias}.
    """
    rng = np.random.default_rng(seed)
    nodes, inits, prev, size = [], [], "input", hw
    for i, (c, o) in enumerate(zip(channels[:-1], channels[1:])):
        w = (rng.standard_normal((o, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
        if dead and i in dead:
            w[list(dead[i])] = 0
        b = rng.standard_normal(o).astype(np.float32) * 0.1
        if bias and i in bias:
            b[:] = bias[i]
        inits += [numpy_helper.from_array(w, f"cw{i}"), numpy_helper.from_array(b, f"cb{i}")]
        nodes.append(helper.make_node("Conv", [prev, f"cw{i}", f"cb{i}"], [f"conv{i}"],
                                      kernel_shape=[3, 3], pads=[padding] * 4))
        prev, size = f"conv{i}", size - 2 + 2 * padding
        if bn:
            for name, value in [("g", rng.random(o) + 0.5), ("be", rng.standard_normal(o)),
                                ("m", rng.standard_normal(o)), ("v", rng.random(o) + 0.5)]:
                inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}{i}"))
            nodes.append(helper.make_node("BatchNormalization",
                                          [prev, f"g{i}", f"be{i}", f"m{i}", f"v{i}"], [f"bn{i}"]))
            prev = f"bn{i}"
        nodes.append(helper.make_node("Relu", [prev], [f"relu{i}"]))
        nodes.append(helper.make_node(pool, [f"relu{i}"], [f"pool{i}"], kernel_shape=[2, 2],
                                      strides=[2, 2]))
        prev, size = f"pool{i}", size // 2
    nodes.append(helper.make_node("Flatten", [prev], ["flat"]))
    k = channels[-1] * size * size
    inits += [numpy_helper.from_array((rng.standard_normal((fc, k)) / np.sqrt(k)).astype(np.float32), "fw"),
              numpy_helper.from_array(rng.standard_normal(fc).astype(np.float32), "fb")]
    nodes.append(helper.make_node("Gemm", ["flat", "fw", "fb"], ["out"], transB=1))
    return model(nodes, inits, ["batch", channels[0], hw, hw], "out", ["batch", fc])


def mobile_block(channels=8, *, multiplier=1, stride=1, dead=None, bn=True, hw=12, fc=10, seed=0):
    """A MobileNet-style stack: conv 3x3 + ReLU, depthwise conv 3x3 (padding 1, `stride`, channel
    `multiplier`) [+ BN] + ReLU, pointwise conv 1x1 + ReLU, Flatten, Gemm.

    dead: {"conv": filters of the first conv, "pointwise": filters of the 1x1 conv} with
    all-zero weights."""
    rng = np.random.default_rng(seed)
    dead = dead or {}
    wide, points = channels * multiplier, channels + 4
    w0 = (rng.standard_normal((channels, 1, 3, 3)) / 3).astype(np.float32)
    w0[list(dead.get("conv", []))] = 0
    wd = (rng.standard_normal((wide, 1, 3, 3)) / 3).astype(np.float32)
    wp = (rng.standard_normal((points, wide, 1, 1)) / np.sqrt(wide)).astype(np.float32)
    wp[list(dead.get("pointwise", []))] = 0
    out_hw = (hw - 2 + 2 - 3) // stride + 1
    k = points * out_hw * out_hw
    arrays = {"w0": w0, "b0": rng.standard_normal(channels) * 0.1, "wd": wd, "bd": rng.standard_normal(wide) * 0.1,
              "wp": wp, "bp": rng.standard_normal(points) * 0.1,
              "fw": rng.standard_normal((fc, k)) / np.sqrt(k), "fb": rng.standard_normal(fc) * 0.1}
    nodes = [helper.make_node("Conv", ["input", "w0", "b0"], ["c0"], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "wd", "bd"], ["dw"], kernel_shape=[3, 3], pads=[1] * 4,
                              strides=[stride] * 2, group=channels)]
    prev = "dw"
    if bn:
        for name, value in [("g", rng.random(wide) + 0.5), ("be", rng.standard_normal(wide)),
                            ("m", rng.standard_normal(wide)), ("v", rng.random(wide) + 0.5)]:
            arrays[name] = value
        nodes.append(helper.make_node("BatchNormalization", ["dw", "g", "be", "m", "v"], ["bn"]))
        prev = "bn"
    nodes += [helper.make_node("Relu", [prev], ["r1"]),
              helper.make_node("Conv", ["r1", "wp", "bp"], ["pw"], kernel_shape=[1, 1]),
              helper.make_node("Relu", ["pw"], ["r2"]),
              helper.make_node("Flatten", ["r2"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fw", "fb"], ["out"], transB=1)]
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), name) for name, v in arrays.items()]
    return model(nodes, inits, ["batch", 1, hw, hw], "out", ["batch", fc])


def dead_sets(data, widths):
    """Hypothesis draw: for each layer width, a set of dead nodes that never empties the layer."""
    from hypothesis import strategies as st

    return {i: data.draw(st.sets(st.integers(0, w - 1), max_size=w - 1)) for i, w in enumerate(widths)}


def random_cnn(data, max_channels):
    """Hypothesis draw: a small pruned CNN (random widths, dead filters, BN, padding) and a batch."""
    from hypothesis import strategies as st

    channels = tuple(data.draw(st.lists(st.integers(1, max_channels), min_size=3, max_size=3)))
    net = cnn(channels, dead=dead_sets(data, channels[1:]), bn=data.draw(st.booleans()),
              padding=data.draw(st.sampled_from([0, 1])), seed=data.draw(st.integers(0, 99)))
    return net, data.draw(st.sampled_from([1, 2]))


def model(nodes, inits, in_shape, out, out_shape, opset=17):
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9 if opset >= 20 else 8
    return m


def random_input(onnx_model, batch, seed=1):
    dims = [d.dim_value or batch for d in onnx_model.graph.input[0].type.tensor_type.shape.dim]
    dims[0] = batch
    return np.random.default_rng(seed).standard_normal(dims).astype(np.float32)


def run_relax(mod, x):
    ex = tvm.compile(mod, target=TARGET)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def run_ort(onnx_model, x):
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def relax_module(onnx_model, batch=1):
    return import_onnx(onnx_model, batch)


def assert_close(actual, expected, rtol=1e-4, atol=1e-4):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)
