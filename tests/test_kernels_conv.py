"""conv2d kernel template (schedules/conv2d.py) against numpy and onnxruntime references."""

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from scalpel_tvm.schedules.conv2d import (
    conv2d_nchw,
    conv2d_output_shape,
    default_oc_block,
    default_ow_tile,
    pack_conv_weight,
)

# Plain llvm: the schedule is the same on any x86 host; speed is python/bench_conv.py's job.
TARGET = tvm.target.Target({"kind": "llvm"})


def reference(x, w, b, strides, padding, dilation, relu):
    """float64 conv2d as a sum of shifted, strided views, one per kernel tap."""
    (batch, _, height, width), (out_channels, in_channels, kh, kw) = x.shape, w.shape
    top, left, bottom, right = padding
    xp = np.pad(x.astype("float64"), ((0, 0), (0, 0), (top, bottom), (left, right)))
    _, _, out_h, out_w = conv2d_output_shape(
        batch, in_channels, height, width, out_channels, (kh, kw),
        strides=strides, padding=padding, dilation=dilation,
    )  # fmt: skip
    y = np.zeros((batch, out_channels, out_h, out_w))
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation[0], j * dilation[1]
            patch = xp[:, :, r0 : r0 + (out_h - 1) * strides[0] + 1 : strides[0],
                       c0 : c0 + (out_w - 1) * strides[1] + 1 : strides[1]]  # fmt: skip
            y += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j])
    if b is not None:
        y += b[None, :, None, None]
    return np.maximum(y, 0) if relu else y


def run_kernel(x, w, b, *, strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), relu=False,
               **knobs):  # fmt: skip
    (batch, in_channels, height, width), (out_channels, _, kh, kw) = x.shape, w.shape
    prim = conv2d_nchw(
        batch, in_channels, height, width, out_channels, (kh, kw),
        strides=strides, padding=padding, dilation=dilation,
        bias=b is not None, activation="relu" if relu else None, name="conv_test", **knobs,
    )  # fmt: skip
    out_shape = conv2d_output_shape(
        batch, in_channels, height, width, out_channels, (kh, kw),
        strides=strides, padding=padding, dilation=dilation,
    )  # fmt: skip
    lib = tvm.compile(prim, target=TARGET)
    y = tvm.runtime.tensor(np.full(out_shape, np.nan, dtype="float32"))
    args = [x, pack_conv_weight(w, **knobs)] + ([b] if b is not None else [])
    lib.mod["conv_test"](*[tvm.runtime.tensor(a) for a in args], y)
    return y.numpy()


def random_case(rng, batch, in_channels, height, width, out_channels, kernel, bias=True):
    x = rng.standard_normal((batch, in_channels, height, width), dtype="float32")
    w = rng.standard_normal((out_channels, in_channels, *kernel), dtype="float32")
    b = rng.standard_normal(out_channels, dtype="float32") if bias else None
    return x, w, b


def check(x, w, b, **kwargs):
    geometry = {k: kwargs[k] for k in ("strides", "padding", "dilation") if k in kwargs}
    full = {"strides": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1), **geometry}
    expected = reference(x, w, b, full["strides"], full["padding"], full["dilation"],
                         kwargs.get("relu", False))  # fmt: skip
    np.testing.assert_allclose(run_kernel(x, w, b, **kwargs), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("relu", [True, False])
def test_bias_and_relu(bias, relu):
    x, w, b = random_case(np.random.default_rng(0), 1, 4, 9, 10, 11, (3, 3), bias=bias)
    check(x, w, b, relu=relu)


@pytest.mark.parametrize(
    "case",
    [
        dict(batch=2, in_channels=3, size=(10, 9), out_channels=16, kernel=(3, 3)),
        dict(batch=1, in_channels=20, size=(12, 12), out_channels=50, kernel=(5, 5)),  # LeNet-5
        dict(batch=1, in_channels=1, size=(14, 14), out_channels=20, kernel=(5, 5)),
        dict(batch=2, in_channels=5, size=(7, 6), out_channels=13, kernel=(1, 1)),
        dict(batch=1, in_channels=6, size=(6, 8), out_channels=1, kernel=(3, 2)),
        dict(batch=1, in_channels=2, size=(5, 5), out_channels=9, kernel=(5, 5)),  # 1x1 output
    ],
    ids=["batch2", "lenet-conv2", "in1", "1x1-O13", "O1-rect", "full-window"],
)
def test_shapes(case):
    rng = np.random.default_rng(1)
    x, w, b = random_case(rng, case["batch"], case["in_channels"], *case["size"],
                          case["out_channels"], case["kernel"])  # fmt: skip
    check(x, w, b, relu=True)


@pytest.mark.parametrize(
    "geometry",
    [
        dict(padding=(1, 0, 2, 1)),
        dict(padding=(2, 2, 2, 2)),
        dict(strides=(2, 2)),
        dict(strides=(2, 1), padding=(0, 1, 1, 0)),
        dict(dilation=(2, 2)),
        dict(dilation=(1, 2), padding=(2, 2, 2, 2), strides=(2, 2)),
    ],
    ids=["pad-asym", "pad2", "stride2", "stride21-pad", "dil2", "dil-pad-stride"],
)
def test_geometry(geometry):
    x, w, b = random_case(np.random.default_rng(2), 2, 3, 11, 13, 20, (3, 3))
    check(x, w, b, relu=False, **geometry)


@pytest.mark.parametrize(
    "knobs",
    [
        dict(oc_block=16, ow_tile=3),
        dict(oc_block=8, ow_tile=5, unroll=False),
        dict(oc_block=24, ow_tile=2, parallel=False),
    ],
)
def test_knobs(knobs):
    """Non-default tiles, including ones that leave a partial last tile of columns."""
    x, w, b = random_case(np.random.default_rng(3), 2, 4, 9, 12, 20, (3, 3))
    check(x, w, b, padding=(1, 1, 1, 1), relu=True, **knobs)


def test_matches_onnxruntime():
    """Padding order and semantics agree with ONNX Conv (pads = top, left, bottom, right)."""
    x, w, b = random_case(np.random.default_rng(4), 2, 3, 12, 11, 10, (3, 5))
    pads, strides, dilations = [1, 2, 0, 1], [2, 1], [1, 2]
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=pads, strides=strides,
                            dilations=dilations)  # fmt: skip
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = sess.run(None, {"x": x})[0]
    got = run_kernel(x, w, b, strides=tuple(strides), padding=tuple(pads),
                     dilation=tuple(dilations))  # fmt: skip
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_call_tir_from_relax():
    """The way the pass uses it: bound packed weight, call_tir, same result as relax conv2d."""
    x, w, b = random_case(np.random.default_rng(5), 1, 3, 10, 10, 12, (3, 3))
    padding = (1, 1, 1, 1)
    prim = conv2d_nchw(1, 3, 10, 10, 12, (3, 3), padding=padding, bias=True, activation="relu")
    bb = relax.BlockBuilder()
    gv = bb.add_func(prim, "conv2d")
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [xv]):
        args = [xv, relax.const(pack_conv_weight(w)), relax.const(b)]
        out = relax.TensorType(conv2d_output_shape(1, 3, 10, 10, 12, (3, 3), padding=padding),
                               "float32")  # fmt: skip
        bb.emit_func_output(bb.emit(relax.call_tir(gv, args, out)))
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=TARGET), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    expected = reference(x, w, b, (1, 1), padding, (1, 1), relu=True)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_pack_conv_weight_layout():
    w = np.arange(20 * 3 * 2 * 2, dtype="float32").reshape(20, 3, 2, 2)
    packed = pack_conv_weight(w, lanes=8)  # default_oc_block(20) == 8: 24 channels, not 32
    assert packed.shape == (3, 3, 2, 2, 8)
    assert packed[2, 1, 0, 1, 3] == w[19, 1, 0, 1]
    assert not packed[2, :, :, :, 4:].any()  # padding filters are zero
    assert pack_conv_weight(w, oc_block=16).shape == (2, 3, 2, 2, 16)


def test_defaults():
    assert default_oc_block(20) == 8 and default_oc_block(32) == 16 and default_oc_block(10) == 16
    assert default_ow_tile(24, 8) == 8 and default_ow_tile(12, 8) == 6
    assert default_ow_tile(54, 16) == 4 and default_ow_tile(3, 16) == 3


def test_rejects_what_it_does_not_cover():
    shape = dict(batch=1, in_channels=4, height=8, width=8, out_channels=4, kernel=(3, 3))
    with pytest.raises(NotImplementedError, match="groups"):
        conv2d_nchw(**shape, groups=2, bias=False, activation=None)
    with pytest.raises(ValueError, match="activation"):
        conv2d_nchw(**shape, bias=False, activation="gelu")
    with pytest.raises(TypeError, match="knobs"):
        conv2d_nchw(**shape, bias=False, activation=None, tile=4)
    with pytest.raises(ValueError, match="multiple of lanes"):
        conv2d_nchw(**shape, bias=False, activation=None, oc_block=12)
    with pytest.raises(ValueError, match="no output"):
        conv2d_output_shape(1, 1, 2, 2, 1, (3, 3))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 2),
    in_channels=st.integers(1, 6),
    out_channels=st.integers(1, 20),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    strides=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.tuples(*[st.integers(0, 2)] * 4),
    extra=st.tuples(st.integers(0, 6), st.integers(0, 6)),
    bias=st.booleans(),
    relu=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_shapes(batch, in_channels, out_channels, kernel, strides, dilation, padding,
                       extra, bias, relu, seed):  # fmt: skip
    # The input is at least as large as the dilated window, so there is always an output.
    height = (kernel[0] - 1) * dilation[0] + 1 + extra[0]
    width = (kernel[1] - 1) * dilation[1] + 1 + extra[1]
    x, w, b = random_case(np.random.default_rng(seed), batch, in_channels, height, width,
                          out_channels, kernel, bias=bias)  # fmt: skip
    check(x, w, b, strides=strides, padding=padding, dilation=dilation, relu=relu)
