"""A CNN or MLP (the LeNet / ConvNet family) in int16 for Cortex-M.

The ONNX model must be a chain of Conv / Gemm layers (each optionally followed by Relu), MaxPool,
AveragePool, GlobalAveragePool and Flatten (Dropout and Identity are skipped); anything else is
named in a clear error, never approximated.

Per-layer Q formats come from calibration data: the input's from the calibration inputs, each
weight's from its own values, each layer's output format from its float outputs on the
calibration set with a bit of headroom, so nothing saturates on data like the calibration data
(what does saturate is counted: `QuantizedNet.saturation`, `QuantizedNet.saturated(x)`).
`QuantizedNet.forward` is the numpy reference of what the firmware computes (`fixed_point`'s
kernels, layer by layer, in each layer's storage format); the firmware's outputs equal it bit
for bit.

Dead nodes (all-zero neurons or filters that output exactly 0) are removed first, with the
matching inputs of the next layer: node-shrunk dense layers (`shrink_dead_nodes`).

A conv layer is an im2col matrix multiply: its [N, C*KH*KW] weight is stored and pruned exactly
like an FC layer's [N, K] one — dense, as pairs (groups of 2 consecutive inputs, one index per
pair: Scalpel's SIMD-aware format for the M4's 2x16-bit SIMD), as the same pairs with an 8-bit
step from the previous pair in place of the 16-bit index (`gsparse2_delta`: smaller, one
instruction more a pair) or CSR. Which one each layer gets is the planner's choice
(`m4_cost.choose_format`: the fewest estimated cycles, or bytes), unless given.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import numpy_helper

from . import fixed_point as fp
from .cortex_m import index16, pair_steps, pairs, steps_to_starts
from .errors import ScalpelError
from .fixed_point import Window
from .schedules.csr import CSRWeight
from .unaligned_groups import cover

FORMATS = ("dense", "gsparse2", "csr", "gsparse2_delta")
SKIPPED = ("Dropout", "Identity")


@dataclass
class QuantizedLinear:
    """An FC layer (window None) or a conv layer (its window over the input)."""

    name: str
    w_nk: np.ndarray  # int16 [N, K] (conv: K = C*KH*KW), Q(w_bits)
    bias: np.ndarray  # int32, Q(in_bits + w_bits)
    shift: int  # in_bits + w_bits - out_bits
    relu: bool
    in_bits: int
    w_bits: int
    out_bits: int
    format: str = "dense"
    window: Window | None = None

    @property
    def op(self) -> str:
        return "fc" if self.window is None else "conv"

    @property
    def in_size(self) -> int:
        return self.w_nk.shape[1] if self.window is None else self.window.in_size

    @property
    def out_size(self) -> int:
        n = self.w_nk.shape[0]
        return n if self.window is None else n * self.window.oh * self.window.ow

    @property
    def pixels(self) -> int:
        return 1 if self.window is None else self.window.oh * self.window.ow

    def arrays(self) -> dict:
        """The arrays the layer's kernel takes, in its format: values [, indptr, indices or steps]."""
        if self.format == "dense":
            return {"values": self.w_nk}
        if self.format == "gsparse2_delta":  # the same pairs, 8-bit steps for 16-bit indices
            a = replace(self, format="gsparse2").arrays()
            indptr, steps, values = pair_steps(a["indptr"], a["indices"], a["values"])
            return {"values": values, "indptr": indptr, "steps": steps}
        if self.format == "gsparse2":  # pairs where the weights are: aligned or not (unaligned_groups.cover)
            indptr, starts = cover(self.w_nk, 2)
            padded = np.pad(self.w_nk, [(0, 0), (0, 1)])
            rows = np.repeat(np.arange(self.w_nk.shape[0]), np.diff(indptr))
            values = np.stack([padded[rows, starts], padded[rows, starts + 1]], axis=1)
            indptr, indices, values = pairs(indptr, starts, values, self.w_nk.shape[1])
            return {"values": values, "indptr": indptr, "indices": indices}
        weight = CSRWeight.from_dense(self.w_nk.T.astype(np.float32))
        return {"values": weight.values.astype(np.int16), "indptr": weight.indptr,
                "indices": index16(weight.indices)}

    def flash_bytes(self) -> int:
        return sum(a.nbytes for a in self.arrays().values()) + self.bias.nbytes

    def matmul(self, columns: np.ndarray) -> np.ndarray:
        """The FC kernel of this layer's format on rows of `columns` (rows, K) -> (rows, N)."""
        if self.format == "dense":
            return fp.fc_dense(columns, self.w_nk, self.bias, self.shift, self.relu)
        a = self.arrays()
        if self.format == "gsparse2_delta":  # each pair's start: the running sum of the steps
            a["indices"] = steps_to_starts(a["indptr"], a["steps"])
        kernel = fp.fc_csr if self.format == "csr" else fp.fc_gsparse2
        return kernel(columns, a["indptr"], a["indices"], a["values"], self.bias, self.shift, self.relu)

    def forward(self, x_q: np.ndarray) -> np.ndarray:
        if self.window is None:
            return self.matmul(x_q)
        return fp.conv(x_q, self.window, self.matmul, self.w_nk.shape[0])


@dataclass
class Pool:
    name: str
    kind: str  # "max" | "avg"
    window: Window
    count_include_pad: bool = False
    format: str = "-"

    @property
    def op(self) -> str:
        return f"{self.kind}pool"

    @property
    def in_size(self) -> int:
        return self.window.in_size

    @property
    def out_size(self) -> int:
        return self.window.c * self.window.oh * self.window.ow

    def flash_bytes(self) -> int:
        return 0

    def forward(self, x_q: np.ndarray) -> np.ndarray:
        if self.kind == "max":
            return fp.maxpool(x_q, self.window)
        return fp.avgpool(x_q, self.window, self.count_include_pad)


@dataclass
class QuantizedNet:
    layers: list
    input_bits: int
    input_shape: tuple  # without the batch
    saturation: dict = field(default_factory=dict)  # layer -> outputs at ±32767 on calibration data
    shrunk: dict = field(default_factory=dict)  # layer -> dead nodes removed (node-shrunk dense)

    @property
    def input_size(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def out_bits(self) -> int:
        return [layer for layer in self.layers if isinstance(layer, QuantizedLinear)][-1].out_bits

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        return fp.quantize(x.reshape(x.shape[0], -1), self.input_bits)

    def forward(self, x_q: np.ndarray, trace: list | None = None) -> np.ndarray:
        """int16 outputs in Q(out_bits), exactly as the firmware computes them; `trace`, when
        given, receives every layer's output."""
        for layer in self.layers:
            x_q = layer.forward(x_q)
            if trace is not None:
                trace.append(x_q)
        return x_q

    def saturated(self, x_q: np.ndarray) -> dict[str, int]:
        """Per layer, how many of its outputs on inputs `x_q` sit at the int16 limit (±32767):
        saturated, or about to be; only layers where any do."""
        trace = []
        self.forward(x_q, trace)
        counts = {layer.name: int(np.sum(np.abs(out) == fp.Q15_MAX)) for layer, out in zip(self.layers, trace)}
        return {name: count for name, count in counts.items() if count}

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float in, float out: quantize, run the int16 network, dequantize."""
        return fp.dequantize(self.forward(self.quantize_input(x)), self.out_bits)

    def flash_bytes(self) -> int:
        return sum(layer.flash_bytes() for layer in self.layers)

    def arena_values(self) -> int:
        """int16 values of the activation arena (firmware/q15_network.c): its input and output
        at opposite ends, so the largest input + output of any layer."""
        return max(layer.in_size + layer.out_size for layer in self.layers)

    def column_values(self) -> int:
        """int16 values of the im2col scratch: the largest conv column (at least 1)."""
        return max([1] + [layer.window.column for layer in self.layers
                          if isinstance(layer, QuantizedLinear) and layer.window is not None])

    def activation_bytes(self) -> int:
        """SRAM for activations: the arena and the im2col column."""
        return 2 * (self.arena_values() + self.column_values())


# --- reading the ONNX chain ------------------------------------------------------------------------

def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pads(node, attrs) -> list[int]:
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ScalpelError(f"{node.op_type} '{node.name}' uses auto_pad; export with explicit pads")
    if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise ScalpelError(f"{node.op_type} '{node.name}' is dilated; the int16 kernels take dilation 1")
    if attrs.get("ceil_mode", 0):
        raise ScalpelError(f"{node.op_type} '{node.name}' uses ceil_mode; the int16 kernels take floor")
    return list(attrs.get("pads", [0, 0, 0, 0]))


def _input_shape(model) -> tuple:
    if not model.graph.input:
        raise ScalpelError("the model's graph has no input (an empty or truncated ONNX file?)")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value for d in dims[1:])
    if not shape or any(d <= 0 for d in shape):
        raise ScalpelError(f"the model's input '{model.graph.input[0].name}' has a dynamic shape "
                           f"besides the batch; export it with fixed sizes")
    return shape


def _weight(node, index, weights) -> np.ndarray:
    if len(node.input) <= index or not node.input[index]:
        return None
    if node.input[index] not in weights:
        raise ScalpelError(f"{node.op_type} '{node.name}' takes '{node.input[index]}' as an input, "
                           "not a constant; export the model with its weights as initializers")
    value = weights[node.input[index]].astype(np.float64)
    if not np.all(np.isfinite(value)):
        raise ScalpelError(f"{node.op_type} '{node.name}' has NaN or infinite weights")
    return value


def read_chain(model: onnx.ModelProto) -> tuple[tuple, list[dict]]:
    """The input shape and the float layers: dicts with op, name, window, weights (and, for
    Conv / Gemm, the names of their initializers, so trained weights can be written back)."""
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    input_shape = shape = _input_shape(model)
    layers, current = [], model.graph.input[0].name
    for node in model.graph.node:
        name = node.name or f"{node.op_type.lower()}{len(layers) + 1}"
        if node.input[0] != current:
            raise ScalpelError(f"the int16 Cortex-M path takes a chain of layers; {node.op_type} "
                               f"'{name}' does not take the previous layer's output (branches, "
                               "Add and Concat are not supported)")
        current = node.output[0]
        attrs = _attrs(node)
        if node.op_type in SKIPPED:
            continue
        if node.op_type == "Relu":
            if not layers or layers[-1]["op"] not in ("fc", "conv") or layers[-1]["relu"]:
                raise ScalpelError(f"Relu '{name}' must follow a Conv or Gemm layer")
            layers[-1]["relu"] = True
        elif node.op_type == "Gemm":
            if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
                raise ScalpelError(f"Gemm '{name}' has alpha/beta/transA; export it as a plain linear layer")
            if len(shape) != 1:
                raise ScalpelError(f"Gemm '{name}' takes a {shape} tensor; Flatten it first")
            w = _weight(node, 1, weights)
            w_nk = w if attrs.get("transB", 0) else w.T
            bias = _weight(node, 2, weights)
            layers.append({"op": "fc", "name": name, "w_nk": w_nk, "window": None, "relu": False,
                           "bias": np.zeros(w_nk.shape[0]) if bias is None else bias,
                           "weight_name": node.input[1], "transposed": not attrs.get("transB", 0),
                           "bias_name": node.input[2] if bias is not None else None})
            shape = (w_nk.shape[0],)
        elif node.op_type == "Conv":
            w = _weight(node, 1, weights)
            if attrs.get("group", 1) != 1 or len(shape) != 3 or w.shape[1] != shape[0]:
                raise ScalpelError(f"Conv '{name}' is grouped or not 2-D; the int16 kernels take "
                                   "plain 2-D convolutions")
            window = Window.over(*shape, w.shape[2], w.shape[3], attrs.get("strides", [1, 1]), _pads(node, attrs))
            bias = _weight(node, 2, weights)
            layers.append({"op": "conv", "name": name, "w_nk": w.reshape(w.shape[0], -1), "window": window,
                           "relu": False, "bias": np.zeros(w.shape[0]) if bias is None else bias,
                           "weight_name": node.input[1], "weight_shape": w.shape,
                           "bias_name": node.input[2] if bias is not None else None})
            shape = (w.shape[0], window.oh, window.ow)
        elif node.op_type in ("MaxPool", "AveragePool", "GlobalAveragePool"):
            if len(shape) != 3:
                raise ScalpelError(f"{node.op_type} '{name}' takes a {shape} tensor; it needs C x H x W")
            if node.op_type == "GlobalAveragePool":
                window = Window.over(*shape, shape[1], shape[2])
            else:
                kh, kw = attrs["kernel_shape"]
                window = Window.over(*shape, kh, kw, attrs.get("strides", [1, 1]), _pads(node, attrs))
            layers.append({"op": "maxpool" if node.op_type == "MaxPool" else "avgpool", "name": name,
                           "window": window, "count_include_pad": bool(attrs.get("count_include_pad", 0))})
            shape = (shape[0], window.oh, window.ow)
        elif node.op_type == "Flatten" and attrs.get("axis", 1) == 1:
            shape = (int(np.prod(shape)),)  # CHW is already the flattened order
        else:
            raise ScalpelError(f"{node.op_type} node '{name}' is not supported by the int16 Cortex-M path "
                               "(it takes Conv, Gemm, Relu, MaxPool, AveragePool, GlobalAveragePool, "
                               "Flatten)")
    if not any(layer["op"] in ("fc", "conv") for layer in layers):
        raise ScalpelError("the model has no Conv or Gemm layer")
    return input_shape, layers


def shrink_dead_nodes(layers: list[dict]) -> dict[str, int]:
    """Node-shrunk dense: remove the neurons / filters of a Conv or Gemm layer whose weights are
    all zero and whose output is therefore exactly 0 (bias 0, or ReLU of a negative bias), with
    the matching inputs of the next Conv or Gemm — through ReLU, pooling (0 pools to 0) and
    Flatten (channel c is a run of features). A dead node with a non-zero output is kept (folding
    it into the next bias is not exact across a padded conv), and so are the model's outputs.
    Changes `layers` in place; returns how many nodes each layer lost."""
    linear = [i for i, layer in enumerate(layers) if layer["op"] in ("fc", "conv")]
    removed = {}
    for here, after in zip(linear, linear[1:]):
        layer, consumer = layers[here], layers[after]
        silent = ~np.any(layer["w_nk"] != 0, axis=1) & ((layer["bias"] == 0) | (layer["relu"] & (layer["bias"] <= 0)))
        if not np.any(silent) or np.all(silent):
            continue  # nothing to remove; or everything, which the int16 path refuses by name
        keep = np.flatnonzero(~silent)
        layer["w_nk"], layer["bias"] = layer["w_nk"][keep], layer["bias"][keep]
        channels = len(silent)
        for between in layers[here + 1:after]:  # pooling over the layer's channels
            between["window"] = replace(between["window"], c=len(keep))
        per_channel = consumer["w_nk"].shape[1] // channels  # KH*KW of a conv, H*W after Flatten
        columns = (keep[:, None] * per_channel + np.arange(per_channel)).ravel()
        consumer["w_nk"] = consumer["w_nk"][:, columns]
        if consumer["window"] is not None:
            consumer["window"] = replace(consumer["window"], c=len(keep))
        removed[layer["name"]] = channels - len(keep)
    return removed


def float_forward(layer: dict, x: np.ndarray) -> np.ndarray:
    """One float layer on a batch (batch, input size), the same windows as the int16 kernels."""
    if layer["op"] == "fc":
        y = x @ layer["w_nk"].T + layer["bias"]
    elif layer["op"] == "conv":
        window = layer["window"]
        y = np.stack([(window.im2col(image) @ layer["w_nk"].T + layer["bias"]).T.reshape(-1) for image in x])
    else:
        window = layer["window"]
        out = []
        for image in x:
            values, inside = window.windows(image, -np.inf if layer["op"] == "maxpool" else 0.0)
            if layer["op"] == "maxpool":
                out.append(values.max(axis=2).T.reshape(-1))
            else:
                count = np.full(inside.shape[0], window.kh * window.kw) if layer["count_include_pad"] else inside.sum(1)
                out.append((values.sum(axis=2) / count[:, None]).T.reshape(-1))
        return np.stack(out)
    return np.maximum(y, 0) if layer.get("relu") else y


def quantize_net(model: onnx.ModelProto, calibration: np.ndarray, formats: dict | None = None,
                 mcpu: str = "cortex-m4", headroom_bits: int = 1, shrink: bool = True,
                 objective: str = "latency") -> QuantizedNet:
    """The int16 network for `model`, Q formats from `calibration` inputs (samples, ...).

    Activations (the input and every layer's output) get `headroom_bits` fewer fractional bits
    than the calibration data's peak needs: with 1, data up to twice as large as anything in the
    calibration set still does not saturate, for one bit of the int16's 15 (on MNIST, without
    it, test images beyond the calibration peak saturated logits and changed 1% of the picks).
    `formats` maps layer names to one of `FORMATS`; the others get the format with the fewest
    estimated cycles on `mcpu`, or with `objective="size"` the fewest flash bytes
    (`m4_cost.choose_format`). With `shrink`, dead nodes are removed first (`shrink_dead_nodes`)."""
    from .m4_cost import choose_format
    input_shape, layers = read_chain(model)
    shrunk = shrink_dead_nodes(layers) if shrink else {}
    size = int(np.prod(input_shape))
    x = np.asarray(calibration, np.float64)
    if x.ndim < 2 or x[0].size != size:
        raise ScalpelError(f"calibration data must be (samples, {', '.join(map(str, input_shape))}) "
                           f"or (samples, {size}), got {x.shape}")
    x = x.reshape(x.shape[0], size)
    input_bits = in_bits = fp.frac_bits_for(x) - headroom_bits
    quantized = []
    for layer in layers:
        x = float_forward(layer, x)
        if layer["op"] in ("maxpool", "avgpool"):
            quantized.append(Pool(layer["name"], layer["op"][:3], layer["window"], layer["count_include_pad"]))
            continue
        w_nk, bias = layer["w_nk"], layer["bias"]
        w_bits, out_bits = fp.frac_bits_for(w_nk), fp.frac_bits_for(x) - headroom_bits
        out_bits = min(out_bits, in_bits + w_bits)  # the shift is never negative
        bias_q = np.clip(np.rint(bias * 2.0 ** (in_bits + w_bits)), fp.INT32_MIN, fp.INT32_MAX)
        q = QuantizedLinear(layer["name"], fp.quantize(w_nk, w_bits), bias_q.astype(np.int32),
                            in_bits + w_bits - out_bits, layer["relu"], in_bits, w_bits, out_bits,
                            window=layer["window"])
        if not np.any(q.w_nk):
            raise ScalpelError(f"layer '{q.name}' is pruned to nothing (every weight is zero in int16); "
                               "keep some of its weights or remove the layer")
        q.format = (formats or {}).get(q.name) or choose_format(q, mcpu, objective)
        if q.format not in FORMATS:
            raise ScalpelError(f"unknown format {q.format!r} for layer '{q.name}'; known: {FORMATS}")
        quantized.append(q)
        in_bits = out_bits
    net = QuantizedNet(quantized, input_bits, input_shape, shrunk=shrunk)
    net.saturation = net.saturated(net.quantize_input(np.asarray(calibration).reshape(len(x), size)))
    return net
