"""An FC network (Gemm + ReLU chains, the LeNet-300-100 family) in int16 for Cortex-M.

Per-layer Q formats come from calibration data: the input's from the calibration inputs, each
weight's from its own values, each layer's output format from its float outputs on the
calibration set, so nothing saturates on data like the calibration data. `QuantizedMLP.forward`
is the numpy reference of what the firmware computes (`fixed_point`'s kernels, layer by layer,
in each layer's storage format); the firmware's outputs equal it bit for bit.

Each layer is stored dense, as pairs (groups of 2 inputs, one index per pair: Scalpel's
SIMD-aware format for the M4's 2x16-bit SIMD) or CSR. Until the Cortex-M cycle model exists,
`choose_format` keeps a layer dense unless at most half of its aligned pairs hold a weight.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from . import fixed_point as fp
from .cortex_m import index16
from .errors import ScalpelError
from .schedules.csr import CSRWeight
from .schedules.grouped_sparse import GroupedSparseWeight

FORMATS = ("dense", "gsparse2", "csr")


@dataclass
class QuantizedFC:
    name: str
    w_nk: np.ndarray  # int16 [N, K], Q(w_bits)
    bias: np.ndarray  # int32, Q(in_bits + w_bits)
    shift: int  # in_bits + w_bits - out_bits
    relu: bool
    in_bits: int
    w_bits: int
    out_bits: int
    format: str = "dense"

    def arrays(self) -> dict:
        """The arrays the layer's kernel takes, in its format: values [, indptr, indices]."""
        if self.format == "dense":
            return {"values": self.w_nk}
        if self.format == "gsparse2":
            weight = GroupedSparseWeight.from_dense(self.w_nk.T.astype(np.float32), 2, "1xg")
        else:
            weight = CSRWeight.from_dense(self.w_nk.T.astype(np.float32))
        return {"values": weight.values.astype(np.int16), "indptr": weight.indptr,
                "indices": index16(weight.indices)}

    def flash_bytes(self) -> int:
        return sum(a.nbytes for a in self.arrays().values()) + self.bias.nbytes

    def forward(self, x_q: np.ndarray) -> np.ndarray:
        if self.format == "dense":
            return fp.fc_dense(x_q, self.w_nk, self.bias, self.shift, self.relu)
        a = self.arrays()
        kernel = fp.fc_gsparse2 if self.format == "gsparse2" else fp.fc_csr
        return kernel(x_q, a["indptr"], a["indices"], a["values"], self.bias, self.shift, self.relu)


@dataclass
class QuantizedMLP:
    layers: list[QuantizedFC]
    input_bits: int

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        return fp.quantize(x, self.input_bits)

    def forward(self, x_q: np.ndarray) -> np.ndarray:
        """int16 outputs in Q(layers[-1].out_bits), exactly as the firmware computes them."""
        for layer in self.layers:
            x_q = layer.forward(x_q)
        return x_q

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float in, float out: quantize, run the int16 network, dequantize."""
        return fp.dequantize(self.forward(self.quantize_input(x)), self.layers[-1].out_bits)

    def flash_bytes(self) -> int:
        return sum(layer.flash_bytes() for layer in self.layers)

    def activation_bytes(self) -> int:
        """SRAM for activations: two int16 buffers of the widest layer (ping-pong)."""
        widest = max([self.layers[0].w_nk.shape[1]] + [layer.w_nk.shape[0] for layer in self.layers])
        return 2 * 2 * widest


def mlp_layers(model: onnx.ModelProto) -> list[tuple[str, np.ndarray, np.ndarray, bool]]:
    """(name, W as [N, K], bias, ReLU follows) per Gemm of a Gemm [+ Relu] chain."""
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type == "Relu" and layers and not layers[-1][3]:
            layers[-1] = (*layers[-1][:3], True)
            continue
        if node.op_type != "Gemm":
            raise ScalpelError(
                f"the int16 Cortex-M path takes Gemm [+ Relu] chains (the LeNet-300-100 family) so "
                f"far; {node.op_type} node '{node.name}' is not supported yet")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
            raise ScalpelError(f"Gemm '{node.name}' has alpha/beta/transA; export it as a plain linear layer")
        if node.input[1] not in weights:
            raise ScalpelError(f"Gemm '{node.name}' takes its weight as an input, not a constant; "
                               "export the model with its weights as initializers")
        w = weights[node.input[1]]
        w_nk = w if attrs.get("transB", 0) else w.T
        bias = weights[node.input[2]] if len(node.input) > 2 else np.zeros(w_nk.shape[0], np.float32)
        layers.append((node.name or f"fc{len(layers) + 1}", w_nk.astype(np.float64), bias.astype(np.float64), False))
    if not layers:
        raise ScalpelError("the model has no Gemm layer")
    return layers


def choose_format(w_nk: np.ndarray) -> str:
    """Pairs when at most half of the aligned pairs of inputs hold a weight, else dense."""
    k = w_nk.shape[1]
    padded = np.pad(w_nk, [(0, 0), (0, k % 2)])
    pairs = np.any(padded.reshape(w_nk.shape[0], -1, 2) != 0, axis=2)
    return "gsparse2" if pairs.mean() <= 0.5 else "dense"


def quantize_mlp(model: onnx.ModelProto, calibration: np.ndarray, formats: dict | None = None) -> QuantizedMLP:
    """The int16 network for `model`, Q formats from `calibration` inputs (batch, K)."""
    layers = mlp_layers(model)
    x = np.asarray(calibration, np.float64)
    if x.ndim != 2 or x.shape[1] != layers[0][1].shape[1]:
        raise ScalpelError(f"calibration data must be (samples, {layers[0][1].shape[1]}), got {x.shape}")
    input_bits = in_bits = fp.frac_bits_for(x)
    quantized = []
    for name, w_nk, bias, relu in layers:
        if not np.all(np.isfinite(w_nk)) or not np.all(np.isfinite(bias)):
            raise ScalpelError(f"layer '{name}' has NaN or infinite weights")
        x = x @ w_nk.T + bias
        if relu:
            x = np.maximum(x, 0)
        w_bits, out_bits = fp.frac_bits_for(w_nk), fp.frac_bits_for(x)
        out_bits = min(out_bits, in_bits + w_bits)  # the shift is never negative
        bias_q = np.clip(np.rint(bias * 2.0 ** (in_bits + w_bits)), fp.INT32_MIN, fp.INT32_MAX)
        w_q = fp.quantize(w_nk, w_bits)
        form = (formats or {}).get(name) or choose_format(w_q)
        if form not in FORMATS:
            raise ScalpelError(f"unknown format {form!r} for layer '{name}'; known: {FORMATS}")
        quantized.append(QuantizedFC(name, w_q, bias_q.astype(np.int32), in_bits + w_bits - out_bits,
                                     relu, in_bits, w_bits, out_bits, form))
        in_bits = out_bits
    return QuantizedMLP(quantized, input_bits)
