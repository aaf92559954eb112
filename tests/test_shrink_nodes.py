"""ShrinkNodes: dead neurons and filters removed exactly, and kept wherever that is not provable."""
import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm import relax

from nets import (assert_close, cnn, dead_sets, mlp, random_cnn, random_input, relax_module,
                  run_ort, run_relax, token_mlp)
from scalpel_tvm import ScalpelError
from scalpel_tvm.onnx_import import bind_weights
from scalpel_tvm.passes.layer_graph import build_layer_graph, canonicalize, static_shape
from scalpel_tvm.passes.shrink_nodes import ShrinkNodes, analyze_shrink


def layer_shapes(mod):
    graph = build_layer_graph(canonicalize(mod)["main"])
    return {layer.name: layer.weight.shape for layer in graph.layers}


def check_same_outputs(onnx_model, batch=1, **pass_kwargs):
    mod = relax_module(onnx_model, batch)
    shrunk = ShrinkNodes(**pass_kwargs)(mod)
    x = random_input(onnx_model, batch)
    assert_close(run_relax(shrunk, x), run_relax(mod, x))
    assert_close(run_relax(shrunk, x), run_ort(onnx_model, x))
    return shrunk


def test_structure_matches_hand_shrunk_module():
    """Before/Expected: the pass output equals the module a person would write by hand."""
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((6, 4)).astype("float32"), rng.standard_normal(4).astype("float32")
    w2, b2 = rng.standard_normal((4, 3)).astype("float32"), rng.standard_normal(3).astype("float32")
    w1[:, [1, 3]] = 0
    b1[1], b1[3] = -1.0, 0.5  # relu(-1) = 0 disappears; relu(0.5) = 0.5 folds into b2

    def build(w1, b1, w2, b2):
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType((1, 6), "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                h = bb.emit(relax.op.nn.relu(relax.op.add(
                    bb.emit(relax.op.matmul(x, relax.const(w1))), relax.const(b1))))
                y = bb.emit(relax.op.add(bb.emit(relax.op.matmul(h, relax.const(w2))), relax.const(b2)))
                out = bb.emit_output(y)
            bb.emit_func_output(out)
        return bb.get()

    before = build(w1, b1, w2, b2)
    expected = build(w1[:, [0, 2]], b1[[0, 2]], w2[[0, 2]], b2 + 0.5 * w2[3])
    after = ShrinkNodes()(before)
    tvm.ir.assert_structural_equal(after, canonicalize(expected), map_free_vars=True)


def test_mlp_dead_neurons_are_removed_with_consumer_rows():
    net = mlp([20, 16, 12, 5], dead={0: range(0, 16, 2), 1: [1, 2, 3]})
    shrunk = check_same_outputs(net)
    assert layer_shapes(shrunk) == {"fc1": (20, 8), "fc2": (8, 9), "fc3": (9, 5)}


def test_nothing_pruned_keeps_module_semantics_and_shapes():
    net = mlp([20, 16, 5])
    shrunk = check_same_outputs(net)
    assert layer_shapes(shrunk) == layer_shapes(relax_module(net))


def test_dead_neurons_with_positive_bias_fold_into_consumer_bias():
    net = mlp([10, 8, 4], dead={0: [0, 1, 2]}, bias={0: 0.7})
    shrunk = check_same_outputs(net)
    assert layer_shapes(shrunk)["fc1"] == (10, 5)


def test_batch_greater_than_one():
    net = mlp([12, 10, 3], dead={0: [4, 5]})
    check_same_outputs(net, batch=7)


def test_output_layer_never_changes_shape():
    net = mlp([10, 6, 4], dead={1: [0, 1]})
    shrunk = check_same_outputs(net)
    assert layer_shapes(shrunk)["fc2"] == (6, 4)
    graph = build_layer_graph(canonicalize(relax_module(net))["main"])
    assert "model's output" in analyze_shrink(graph)["fc2"].reason


def test_whole_hidden_layer_pruned_is_a_clear_error_or_compiled_unshrunk():
    net = mlp([10, 6, 4], dead={0: range(6)})
    with pytest.raises(ScalpelError, match="fc1 has all 6 output channels pruned"):
        ShrinkNodes()(relax_module(net))
    shrunk = check_same_outputs(net, allow_dead_layers=True)
    assert layer_shapes(shrunk)["fc1"] == (10, 6)


def test_residual_add_keeps_the_channels():
    """y = fc2(relu(fc1(x))) + relu(fc1(x)): fc1's channels are read twice, so none go."""
    from onnx import helper
    net = mlp([8, 8, 8], dead={0: [0, 1, 2]})
    graph = net.graph
    out = graph.output[0].name
    graph.node.append(helper.make_node("Add", [out, "act0"], ["res"]))
    graph.output[0].name = "res"
    shrunk = check_same_outputs(net)
    assert layer_shapes(shrunk)["fc1"] == (8, 8)
    reason = analyze_shrink(build_layer_graph(canonicalize(relax_module(net))["main"]))["fc1"].reason
    assert "read by 2 ops" in reason


def test_cnn_dead_filters_through_bn_pool_and_flatten():
    net = cnn((1, 6, 8), dead={0: [0, 3], 1: [2, 5, 7]}, bn=True, hw=14)
    shrunk = check_same_outputs(net, batch=2)
    shapes = layer_shapes(shrunk)
    assert shapes["conv1"] == (4, 1, 3, 3)
    assert shapes["conv2"] == (5, 4, 3, 3)
    assert shapes["fc1"] == (5 * 2 * 2, 10)


def test_constant_channel_into_padded_conv_is_kept():
    """relu(0.5) reaches a zero-padded conv: not a bias at the borders, so the filter stays."""
    net = cnn((1, 4, 4), dead={0: [1]}, bias={0: 0.5}, padding=1)
    shrunk = check_same_outputs(net)
    assert layer_shapes(shrunk)["conv1"] == (4, 1, 3, 3)


def test_avg_pool_and_zero_bias_into_padded_conv_is_removed():
    net = cnn((1, 4, 4), dead={0: [1]}, bias={0: -0.5}, padding=1, pool="AveragePool")
    shrunk = check_same_outputs(net)
    assert layer_shapes(shrunk)["conv1"] == (3, 1, 3, 3)


def test_nan_weights_are_a_clear_error():
    from onnx import numpy_helper
    net = mlp([6, 4, 2])
    w = numpy_helper.to_array(net.graph.initializer[0]).copy()
    w[0, 0] = np.nan
    net.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w0"))
    with pytest.raises(ScalpelError, match="NaN/Inf"):
        ShrinkNodes()(relax_module(net))


def test_weights_as_parameters_ask_to_bind_them():
    from tvm.relax.frontend import onnx as relax_onnx
    net = mlp([6, 4, 2])
    mod = relax_onnx.from_onnx(net, shape_dict={"input": [1, 6]}, keep_params_in_input=True)
    with pytest.raises(ScalpelError, match="BindParams"):
        ShrinkNodes()(mod)
    # The way out the message gives works.
    bound = bind_weights(mod)
    x = random_input(net, 1)
    assert_close(run_relax(ShrinkNodes()(bound), x), run_ort(net, x))


def test_dynamic_shapes_are_a_clear_error():
    from tvm.relax.frontend import onnx as relax_onnx
    mod = relax_onnx.from_onnx(mlp([6, 4, 2]))
    assert static_shape(mod["main"].params[0]) is None
    with pytest.raises(ScalpelError, match="dynamic shape"):
        ShrinkNodes()(mod)


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_mlps_keep_their_outputs(data):
    """Random MLPs on [batch, features], or token-wise on [batch, seq, features]."""
    depth = data.draw(st.integers(2, 4))
    dims = data.draw(st.lists(st.integers(2, 24), min_size=depth + 1, max_size=depth + 1))
    dead = dead_sets(data, dims[1:-1])
    bias = {i: data.draw(st.sampled_from([None, 0.3, -0.3]))
            for i in range(depth)}
    bias = {i: v for i, v in bias.items() if v is not None}
    activation = data.draw(st.sampled_from(["Relu", "Sigmoid", "Tanh", "Gelu", "GeluTanh"]))
    seed = data.draw(st.integers(0, 1000))
    if activation.startswith("Gelu") or data.draw(st.booleans()):
        net = token_mlp(dims, seq=data.draw(st.integers(1, 5)), dead=dead, bias=bias, seed=seed,
                        activation=activation)
    else:
        net = mlp(dims, dead=dead, bias=bias, seed=seed, activation=activation)
    shrunk = check_same_outputs(net, batch=data.draw(st.sampled_from([1, 3])))
    for i, removed in dead.items():
        assert layer_shapes(shrunk)[f"fc{i + 1}"][1] == dims[i + 1] - len(removed)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_cnns_keep_their_outputs(data):
    net, batch = random_cnn(data, max_channels=6)
    check_same_outputs(net, batch)


def test_concat_keeps_the_channels():
    """relu(fc1) is concatenated with itself before fc2: the analysis does not follow a concat."""
    from onnx import helper, numpy_helper
    net = mlp([8, 6, 4], dead={0: [0, 1]})
    graph = net.graph
    gemm2 = next(node for node in graph.node if node.output[0] == "fc1")
    graph.node.insert(list(graph.node).index(gemm2), helper.make_node("Concat", ["act0", "act0"], ["cat"], axis=1))
    gemm2.input[0] = "cat"
    w1 = numpy_helper.to_array(graph.initializer[2])
    graph.initializer[2].CopyFrom(numpy_helper.from_array(np.concatenate([w1, w1], axis=1), "w1"))
    shrunk = check_same_outputs(net)
    assert layer_shapes(shrunk)["fc1"] == (8, 6)
    reason = analyze_shrink(build_layer_graph(canonicalize(relax_module(net))["main"]))["fc1"].reason
    assert "relax.concat" in reason


def test_token_wise_layers_shrink_along_their_last_axis():
    """[batch, seq, K] inputs (a transformer's MLP): channels are the last axis; a dead neuron's
    GELU of its bias is a per-channel constant folded into the next layer's bias."""
    net = token_mlp([12, 16, 10, 6], seq=3, dead={0: [0, 3, 9], 1: [2, 4]}, bias={0: 0.4},
                    activation="Gelu")
    shrunk = check_same_outputs(net, batch=2)
    assert layer_shapes(shrunk) == {"fc1": (12, 13), "fc2": (13, 8), "fc3": (8, 6)}


def test_token_wise_layer_followed_by_a_reshape_keeps_its_nodes():
    """A reshape after a [batch, seq, N] layer (splitting heads, say) moves the channels: stop."""
    from onnx import helper, numpy_helper
    net = token_mlp([8, 8, 4], seq=4, dead={0: [0, 1]})
    graph = net.graph
    reader = next(node for node in graph.node if node.input[0] == "act0")
    graph.initializer.append(numpy_helper.from_array(np.array([0, 4, 8], np.int64), "same"))
    graph.node.insert(list(graph.node).index(reader), helper.make_node("Reshape", ["act0", "same"], ["resh"]))
    reader.input[0] = "resh"
    shrunk = check_same_outputs(net, batch=2)
    assert layer_shapes(shrunk)["fc1"] == (8, 8)
    reason = analyze_shrink(build_layer_graph(canonicalize(relax_module(net, 2))["main"]))["fc1"].reason
    assert "only channel-wise ops" in reason


def reduced_head(kind, reduce, *, dead, bias=0.3, seed=0):
    """conv 3x3 (or a token-wise layer) + ReLU, a reduction over the positions (a global average
    pool, a sum, a max, a mean over tokens), then the classifier: the heads of ResNets and
    transformers."""
    from onnx import helper, numpy_helper
    from nets import model
    rng = np.random.default_rng(seed)
    channels, positions = 10, 6
    if kind == "conv":
        w = rng.standard_normal((channels, 3, 3, 3)).astype(np.float32) / 5
        w[list(dead)] = 0
        layer = helper.make_node("Conv", ["input", "w", "b"], ["h"], kernel_shape=[3, 3])
        in_shape, axes = ["batch", 3, positions + 2, positions + 2], [2, 3]
    else:
        w = rng.standard_normal((5, channels)).astype(np.float32) / 2
        w[:, list(dead)] = 0
        layer = helper.make_node("MatMul", ["input", "w"], ["h0"])
        in_shape, axes = ["batch", positions, 5], [1]
    b = np.full(channels, bias, np.float32)
    nodes = [layer] + ([helper.make_node("Add", ["h0", "b"], ["h"])] if kind != "conv" else [])
    nodes.append(helper.make_node("Relu", ["h"], ["r"]))
    keep = int(kind == "conv")
    if reduce == "GlobalAveragePool":
        nodes.append(helper.make_node(reduce, ["r"], ["g"]))
    elif reduce == "ReduceSum":  # its axes are an input since opset 13
        nodes.append(helper.make_node(reduce, ["r", "axes"], ["g"], keepdims=keep))
    else:
        nodes.append(helper.make_node(reduce, ["r"], ["g"], axes=axes, keepdims=keep))
    nodes += [helper.make_node("Flatten", ["g"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fw", "fb"], ["out"], transB=1)]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(rng.standard_normal((4, channels)).astype(np.float32), "fw"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "fb"),
             numpy_helper.from_array(np.array(axes, np.int64), "axes")]
    return model(nodes, inits, in_shape, "out", ["batch", 4])


@pytest.mark.parametrize("kind,reduce", [("conv", "GlobalAveragePool"), ("conv", "ReduceSum"),
                                         ("conv", "ReduceMax"), ("fc", "ReduceMean"), ("fc", "ReduceSum")])
def test_dead_channels_pass_reductions_over_positions(kind, reduce):
    """A dead channel's constant (ReLU of a positive bias) passes a global pool or a mean over
    tokens as itself, a sum as itself times the count, and folds into the classifier's bias."""
    net = reduced_head(kind, reduce, dead=[1, 4, 7])
    shrunk = check_same_outputs(net, batch=2)
    assert layer_shapes(shrunk)[f"{kind}1"] == ((7, 3, 3, 3) if kind == "conv" else (5, 7))
    assert layer_shapes(shrunk)["fc1" if kind == "conv" else "fc2"] == (7, 4)


def test_a_reduction_over_the_channels_keeps_them():
    from onnx import numpy_helper
    net = reduced_head("fc", "ReduceMean", dead=[1, 4])
    reduce = next(node for node in net.graph.node if node.op_type == "ReduceMean")
    reduce.attribute[0].ints[:] = [2]  # the features, not the tokens: [batch, 6 tokens]
    fw = next(init for init in net.graph.initializer if init.name == "fw")
    fw.CopyFrom(numpy_helper.from_array(np.ones((4, 6), np.float32), "fw"))
    graph = build_layer_graph(canonicalize(relax_module(net, 2))["main"])
    assert graph.layers[0].consumer is None and "the channels' among them" in graph.layers[0].stop_reason
