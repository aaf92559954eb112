"""LowerLayers: a layer with its bias and ReLU becomes one call_tir to the chosen kernel."""
import numpy as np
import tvm
from tvm import relax

from scalpel_tvm.passes.layer_graph import canonicalize
from scalpel_tvm.passes.lower_layers import LowerLayers, fc_kernel


def one_layer(body):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def test_fc_bias_relu_becomes_one_grouped_sparse_call():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 24)).astype("float32")
    w[:, :8] = 0  # one all-zero G x 1 block column
    b = rng.standard_normal(24).astype("float32")

    before = one_layer(lambda bb, x: relax.op.nn.relu(relax.op.add(
        bb.emit(relax.op.matmul(x, relax.const(w))), relax.const(b))))

    bb = relax.BlockBuilder()
    prim, consts = fc_kernel("gsparse_gx1", w, 1, 8, bias=True, activation="relu", name="fc1_k")
    x = relax.Var("x", relax.TensorType((1, 16), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            gv = bb.add_func(prim.with_attr("global_symbol", "fc1_k"), "fc1_k")
            out = bb.emit_output(relax.call_tir(gv, [x, *[relax.const(c) for c in consts], relax.const(b)],
                                                relax.TensorType((1, 24), "float32")), name_hint="fc1")
        bb.emit_func_output(out)
    expected = bb.get()

    after = LowerLayers({"fc1": ("gsparse_gx1", "fc1_k")}, group=8, lanes=8)(canonicalize(before))
    tvm.ir.assert_structural_equal(after, expected, map_free_vars=True)


def test_layers_the_plan_does_not_name_are_lowered_dense():
    w = np.ones((16, 4), "float32")
    before = one_layer(lambda bb, x: relax.op.matmul(x, relax.const(w)))
    after = LowerLayers({}, group=8, lanes=8)(canonicalize(before))
    names = [gv.name_hint for gv, f in after.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert names == ["fc1_dense"]
