"""Property: removing dead nodes from an int16-path network (int16_net.shrink_dead_nodes) never
changes what it computes, whatever the layers, windows and dead nodes."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from nets import run_ort
from scalpel_tvm.int16_net import float_forward, read_chain, shrink_dead_nodes


def chain_model(seed, c0, size, convs, pool, fcs, dead_fraction):
    """input (c0, size, size) -> [Conv k3 pad1 -> Relu -> pool?] * convs -> Flatten ->
    [Gemm -> Relu] * fcs -> Gemm(3), with a fraction of each hidden layer's nodes dead: zero
    weights, and a zero or negative bias (so ReLU gives exactly 0)."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev, channels, hw = [], [], "input", c0, size

    def dead(w, b):
        rows = rng.random(w.shape[0]) < dead_fraction
        w[rows] = 0
        b[rows] = np.where(rng.random(rows.sum()) < 0.5, 0.0, -abs(b[rows]) - 0.1)

    for i, out in enumerate(convs):
        w = rng.standard_normal((out, channels, 3, 3)).astype(np.float32)
        b = rng.standard_normal(out).astype(np.float32)
        dead(w, b)
        inits += [numpy_helper.from_array(w, f"c{i}.w"), numpy_helper.from_array(b, f"c{i}.b")]
        nodes += [helper.make_node("Conv", [prev, f"c{i}.w", f"c{i}.b"], [f"c{i}"], name=f"c{i}", pads=[1] * 4),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"r{i}")]
        prev, channels = f"r{i}", out
        if pool and hw >= 2:
            op = "MaxPool" if pool == "max" else "AveragePool"
            nodes.append(helper.make_node(op, [prev], [f"p{i}"], name=f"p{i}", kernel_shape=[2, 2], strides=[2, 2]))
            prev, hw = f"p{i}", hw // 2
    nodes.append(helper.make_node("Flatten", [prev], ["flat"], name="flat"))
    prev, features = "flat", channels * hw * hw
    for i, out in enumerate([*fcs, 3]):
        w = rng.standard_normal((out, features)).astype(np.float32)
        b = rng.standard_normal(out).astype(np.float32)
        last = i == len(fcs)
        if not last:
            dead(w, b)
        inits += [numpy_helper.from_array(w, f"f{i}.w"), numpy_helper.from_array(b, f"f{i}.b")]
        nodes.append(helper.make_node("Gemm", [prev, f"f{i}.w", f"f{i}.b"], [f"f{i}"], name=f"f{i}", transB=1))
        prev, features = f"f{i}", out
        if not last:
            nodes.append(helper.make_node("Relu", [prev], [f"fr{i}"], name=f"fr{i}"))
            prev = f"fr{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", c0, size, size])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["batch", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 3), st.integers(2, 7), st.lists(st.integers(1, 6), max_size=2),
       st.sampled_from([None, "max", "avg"]), st.lists(st.integers(1, 8), max_size=2), st.sampled_from([0.0, 0.3, 0.7]))
def test_shrinking_dead_nodes_keeps_the_result(seed, c0, size, convs, pool, fcs, dead_fraction):
    model = chain_model(seed, c0, size, convs, pool, fcs, dead_fraction)
    _, layers = read_chain(model)
    sizes = [layer["w_nk"].shape for layer in layers if "w_nk" in layer]
    removed = shrink_dead_nodes(layers)
    x = np.random.default_rng(seed).random((2, c0 * size * size))
    y = x
    for layer in layers:
        y = float_forward(layer, y)
    want = run_ort(model, x.reshape(2, c0, size, size).astype(np.float32))
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    after = [layer["w_nk"].shape for layer in layers if "w_nk" in layer]
    assert after[-1][0] == sizes[-1][0]  # the model's outputs never change
    assert sum(removed.values()) == sum(b[0] - a[0] for a, b in zip(after, sizes))
