"""Find the prunable layers of a Relax function and what lies between each layer and its consumer.

A *layer* is a `matmul(x, W)` (FC) or `conv2d(x, W)` binding whose weight is a bound constant.
An FC layer's input may have any rank: `[..., K] x [K, N]` (a transformer's token-wise Linear)
is one `[rows, K] x [K, N]` product over the leading dimensions, and its channels are the last
axis; a conv layer's channels are axis 1 (NCHW). Between a layer and the next layer that reads
its output lies a *chain* of channel-wise ops (bias add, batch-norm arithmetic, elementwise
activations, pooling, reductions over positions, the flatten reshape). If every
op in the chain is understood and used once, a dead output channel of the layer is a constant by
the time it reaches the consumer, so it can be removed from the layer and folded into the
consumer. Anything else stops the chain and records why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from scalpel_tvm.errors import ScalpelError

UNARY_OPS = {
    "relax.nn.relu": lambda v: np.maximum(v, 0),
    "relax.sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    "relax.tanh": np.tanh,
    "relax.nn.silu": lambda v: v / (1 + np.exp(-v)),
    "relax.nn.gelu": lambda v: 0.5 * v * (1 + np.vectorize(math.erf, otypes=[float])(v / math.sqrt(2))),
    "relax.nn.gelu_tanh": lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3))),
}
BINARY_OPS = {
    "relax.add": np.add,
    "relax.subtract": np.subtract,
    "relax.multiply": np.multiply,
    "relax.divide": np.divide,
}
POOL_OPS = ("relax.nn.max_pool2d", "relax.nn.avg_pool2d")
# Reductions over axes other than the channels (global average pooling, a mean over tokens): a
# dead channel's constant c stays c (mean, max, min) or becomes c times the count (sum).
REDUCE_OPS = ("relax.mean", "relax.sum", "relax.max", "relax.min")


def canonicalize(mod: tvm.IRModule) -> tvm.IRModule:
    """Bring a frontend's module to the form the analysis reads.

    Folds weight transposes into constants (ONNX Gemm's transB), decomposes inference batch-norm
    into channel-wise arithmetic and drops the tuples it leaves behind.
    """
    seq = tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        relax.transform.FoldConstant(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.DeadCodeElimination(),
    ])
    return seq(mod)


def const_array(expr) -> np.ndarray | None:
    """The numpy value of a bound constant, None for anything else."""
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


def constant_operand(call: relax.Call) -> tuple[int, np.ndarray | None]:
    """(position, value) of a binary op's constant operand; the data operand is the other one.
    Position 1 (data first, `x - c`) when neither is constant."""
    first = const_array(call.args[0])
    return (0, first) if first is not None else (1, const_array(call.args[1]))


def op_name(expr) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def static_shape(expr) -> tuple[int, ...] | None:
    """The static shape of a tensor expression, None when any dimension is symbolic."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    dims = []
    for dim in ty.shape.values:
        if not isinstance(dim, tvm.tirx.IntImm):
            return None
        dims.append(int(dim))
    return tuple(dims)


@dataclass
class ChainOp:
    """One channel-wise op between a layer and its consumer."""

    var: relax.Var
    call: relax.Call
    multiplicity: int  # features per channel at this point (H*W after a flatten, else 1)


@dataclass
class Layer:
    name: str  # "fc1", "conv2": kind and position, stable across the pass's phases
    kind: str  # "fc" | "conv"
    var: relax.Var
    call: relax.Call
    weight: np.ndarray  # FC: [K, N] as Relax's matmul reads it; conv: OIHW
    chain: list[ChainOp] = field(default_factory=list)
    consumer: "Layer | None" = None
    stop_reason: str | None = None  # why the chain does not reach a consumer

    @property
    def rows(self) -> int:
        """The rows one kernel call computes: the batch, and for an FC layer every leading
        dimension of its input (`[B, S, K]` is B*S rows of K features)."""
        x_shape = static_shape(self.call.args[0])
        return int(np.prod(x_shape[:-1])) if self.kind == "fc" else x_shape[0]

    @property
    def out_channels(self) -> int:
        return self.weight.shape[1] if self.kind == "fc" else self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[0] if self.kind == "fc" else self.weight.shape[1]

    def dead_channels(self) -> np.ndarray:
        """Output channels whose weights are all zero."""
        axis = (0,) if self.kind == "fc" else (1, 2, 3)
        return np.flatnonzero(~np.any(self.weight != 0, axis=axis))

    @property
    def macs_per_item(self) -> int:
        """Multiply-accumulates per batch item (conv: per output pixel times pixels)."""
        if self.kind == "fc":
            return int(self.weight.size)
        out_shape = static_shape(self.var)
        return int(self.weight.size * out_shape[2] * out_shape[3])


@dataclass
class Untouched:
    """An op that looks like a layer but that the pass leaves as it is, and why."""

    var_name: str
    op: str
    reason: str


@dataclass
class LayerGraph:
    layers: list[Layer]
    untouched: list[Untouched]


def build_layer_graph(func: relax.Function) -> LayerGraph:
    """Index `func`'s layers and chains. `func` should be canonicalized first."""
    _check_weights_bound(func)
    _check_static_inputs(func)
    bindings, users = {}, {}
    for block in func.body.blocks:
        for binding in block.bindings:
            if not isinstance(binding, relax.VarBinding):
                continue
            bindings[binding.var] = binding.value
            for var in relax.analysis.free_vars(binding.value):
                users.setdefault(var, []).append(binding.var)
    for var in relax.analysis.free_vars(func.body.body):
        users.setdefault(var, []).append("output")

    layers, untouched, counts = [], [], {"fc": 0, "conv": 0}
    for var, value in bindings.items():
        kind = {"relax.matmul": "fc", "relax.nn.conv2d": "conv"}.get(op_name(value))
        if kind is None:
            continue
        reason = _why_not_a_layer(kind, var, value)
        if reason:
            untouched.append(Untouched(var.name, op_name(value), reason))
            continue
        weight = const_array(value.args[1])
        counts[kind] += 1
        name = f"{kind}{counts[kind]}"
        if not np.all(np.isfinite(weight)):
            bad = int(np.size(weight) - np.count_nonzero(np.isfinite(weight)))
            raise ScalpelError(
                f"layer {name} ('{var.name}') has {bad} NaN/Inf weight values; the pass will "
                "not rewrite a layer whose results are undefined. Fix the model's weights first.")
        layers.append(Layer(name, kind, var, value, weight))

    by_var = {layer.var: layer for layer in layers}
    for layer in layers:
        _trace_chain(layer, bindings, users, by_var)
    return LayerGraph(layers, untouched)


def _check_static_inputs(func: relax.Function) -> None:
    for param in func.params:
        if isinstance(param.ty, relax.TensorType) and static_shape(param) is None:
            raise ScalpelError(
                f"input '{param.name}' has a dynamic shape {param.ty.shape}; "
                "scalpel-tvm compiles kernels for fixed shapes. Fix the shape when importing, "
                "e.g. scalpel_tvm.import_onnx(model, batch=1) or from_onnx(model, "
                "shape_dict={'input': [1, 784]}); on the command line, --batch N")


def _check_weights_bound(func: relax.Function) -> None:
    """Weights passed as parameters (from_onnx(keep_params_in_input=True)) can't be pruned."""
    num_input = func.attrs.get("num_input") if func.attrs is not None else None
    if num_input is None or len(func.params) <= int(num_input):
        return
    names = ", ".join(p.name for p in func.params[int(num_input):][:4])
    raise ScalpelError(
        f"main takes its weights as parameters ({names}, ...), not as constants; bind them "
        "first with mod = scalpel_tvm.bind_weights(mod) (relax.transform.BindParams with the "
        "values), or import the ONNX model without keep_params_in_input=True")


def _why_not_a_layer(kind: str, var, call) -> str | None:
    """The reason an FC/conv op is left untouched, None if the pass can rewrite it."""
    if const_array(call.args[1]) is None:
        return "weight is not a constant (an activation-by-activation product)"
    x_shape, w_shape = static_shape(call.args[0]), static_shape(call.args[1])
    if x_shape is None:
        return "dynamic input shape"
    if call.args[0].ty.dtype != "float32" or call.args[1].ty.dtype != "float32":
        return f"dtype {call.args[1].ty.dtype}: only float32 layers are rewritten"
    if kind == "fc" and (len(x_shape) < 2 or len(w_shape) != 2):
        return f"matmul {x_shape} x {w_shape}: FC layers multiply [..., K] by a [K, N] weight"
    if kind == "conv":
        attrs = call.attrs
        if int(attrs.groups) != 1:
            return f"grouped convolution (groups={int(attrs.groups)})"
        if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
            return f"layout {attrs.data_layout}/{attrs.kernel_layout}: only NCHW/OIHW"
        if attrs.out_dtype and str(attrs.out_dtype) not in ("float32", "void"):
            return f"out_dtype {attrs.out_dtype}"
    return None


def _trace_chain(layer: Layer, bindings, users, by_var) -> None:
    """Follow `layer`'s output through channel-wise ops to the layer that consumes it."""
    var, multiplicity = layer.var, 1  # channels: the last axis of an FC output, axis 1 of NCHW
    while True:
        readers = users.get(var, [])
        if "output" in readers:
            layer.stop_reason = "its output is the model's output (shapes of outputs never change)"
            return
        if len(readers) != 1:
            layer.stop_reason = (f"'{var.name}' is read by {len(readers)} ops "
                                 "(a residual or concat branch may still use the channel)")
            return
        reader = readers[0]
        value = bindings[reader]
        name = op_name(value)
        consumer = by_var.get(reader)
        if consumer is not None:
            if value.args[0].same_as(var):
                layer.consumer = consumer
            else:
                layer.stop_reason = f"{consumer.name} reads it as a weight"
            return
        step = _chain_step(value, var, multiplicity, layer.kind)
        if isinstance(step, str):
            layer.stop_reason = f"'{reader.name}' ({name}): {step}"
            return
        multiplicity = step
        layer.chain.append(ChainOp(reader, value, multiplicity))
        var = reader


def _chain_step(call, var, multiplicity, kind):
    """The multiplicity after `call` if it maps channels to channels, else a reason string.
    `kind` is the layer's: an FC output's channels are its last axis, a conv's axis 1 (and
    axis 1 again after the flatten)."""
    name = op_name(call)
    shape = static_shape(call)
    channel_axis = 1 if kind == "conv" or shape is None else len(shape) - 1
    if name in UNARY_OPS:
        return multiplicity
    if name in BINARY_OPS:
        _, k = constant_operand(call)
        if k is None:
            return "the other operand is not a constant (e.g. a residual add)"
        if shape != static_shape(var):
            return f"the constant broadcasts the shape {static_shape(var)} to {shape}"
        if not _is_per_channel(k, shape, channel_axis):
            return f"constant of shape {k.shape} is not per-channel"
        return multiplicity
    if name in REDUCE_OPS:
        rank = len(static_shape(var))
        axes = reduced_axes(call, rank)
        if (rank - 1 if kind == "fc" else 1) in axes or (kind != "fc" and 0 in axes):
            return f"reduces over axes {sorted(axes)}, the channels' among them"
        return multiplicity
    if channel_axis != 1:
        return "only channel-wise ops may follow an FC layer whose input has more than 2 dimensions"
    if name in POOL_OPS:
        attrs = call.attrs
        if attrs.layout != "NCHW":
            return f"pool layout {attrs.layout}"
        padded = any(int(p) for p in attrs.padding)
        if name == "relax.nn.avg_pool2d" and padded and attrs.count_include_pad:
            return "avg pooling counts zero padding, so a constant channel is not constant"
        return multiplicity
    if name == "relax.reshape":
        src, dst = static_shape(call.args[0]), static_shape(call)
        if src is not None and len(src) == 4 and dst == (src[0], src[1] * src[2] * src[3]):
            return multiplicity * src[2] * src[3]
        if src is not None and len(src) == 2 and dst == src:  # a Flatten of what is flat already
            return multiplicity
        return f"reshape {src} -> {dst} is not a flatten of NCHW"
    if name == "relax.nn.conv2d":
        return "a grouped or depthwise conv reads it (node shrinking does not pass through one)"
    return "op not understood by the node-shrinking analysis"


def reduced_axes(call: relax.Call, rank: int) -> set[int]:
    """The axes a reduction (`REDUCE_OPS`) folds, as non-negative indices of its input."""
    if call.attrs.axis is None:
        return set(range(rank))
    return {int(a) % rank for a in call.attrs.axis}


def _is_per_channel(k: np.ndarray, out_shape, channel_axis: int = 1) -> bool:
    if k.ndim == 0:
        return True
    if out_shape is None or k.ndim > len(out_shape):
        return False
    padded = (1,) * (len(out_shape) - k.ndim) + k.shape
    return all(d == 1 for i, d in enumerate(padded) if i != channel_axis)
