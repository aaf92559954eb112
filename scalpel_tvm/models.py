"""The demo networks as ONNX, with weights pruned to the structure Scalpel gives them on a CPU,
and a transformer feed-forward block for the token-wise (3-D input) layers.

Until the pruning frontend brings trained weights, the demo uses random (He-initialised) weights
pruned the Scalpel way for a moderate-parallelism target: FC layers lose aligned groups of G
weights (the groups with the lowest root-mean-square are removed), conv layers lose whole filters.
The per-layer keep rates are those the Scalpel / Han et al. papers report for these networks, so
the shapes of the work match the paper's even though the numbers are not trained.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Fraction of weights (FC) or filters (conv) kept per layer.
LENET_300_100_KEEP = {"fc1": 0.07, "fc2": 0.10, "fc3": 0.30}
LENET5_KEEP = {"conv1": 0.50, "conv2": 0.32, "fc1": 0.08, "fc2": 0.20}


def prune_groups(w_kn: np.ndarray, keep: float, group: int, orientation: str = "gx1") -> np.ndarray:
    """Zero the aligned groups of `group` weights with the lowest RMS, keeping `keep` of groups.

    gx1: a group is `group` consecutive outputs of one input row of the [K, N] weight; 1xg: `group`
    consecutive inputs of one output column.
    """
    w = w_kn if orientation == "gx1" else w_kn.T
    rows, cols = w.shape
    pad = (-cols) % group
    padded = np.pad(w, [(0, 0), (0, pad)])
    rms = np.sqrt(np.mean(padded.reshape(rows, -1, group) ** 2, axis=2))
    n_keep = max(1, int(round(keep * rms.size)))
    threshold = np.sort(rms, axis=None)[::-1][n_keep - 1]
    mask = np.repeat(rms >= threshold, group, axis=1)[:, :cols]
    pruned = np.where(mask, w, 0).astype(w.dtype)
    return pruned if orientation == "gx1" else pruned.T


def prune_filters(w_oihw: np.ndarray, keep: float) -> np.ndarray:
    """Zero whole filters with the lowest L2 norm, keeping `keep` of them."""
    norms = np.linalg.norm(w_oihw.reshape(w_oihw.shape[0], -1), axis=1)
    n_keep = max(1, int(round(keep * len(norms))))
    pruned = w_oihw.copy()
    pruned[np.argsort(norms)[: len(norms) - n_keep]] = 0
    return pruned


def _he(rng, shape, fan_in):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _bias(rng, n):
    # Small negative-leaning biases, as trained ReLU nets have: most dead neurons then stay 0.
    return (rng.standard_normal(n) * 0.01 - 0.005).astype(np.float32)


def lenet_300_100(*, pruned: bool = True, group: int = 8, seed: int = 0) -> onnx.ModelProto:
    """LeNet-300-100 (784-300-100-10, ReLU), Gemm nodes with transB=1 as PyTorch exports them."""
    rng = np.random.default_rng(seed)
    dims = [784, 300, 100, 10]
    nodes, inits, prev = [], [], "input"
    for i, (k, n) in enumerate(zip(dims[:-1], dims[1:]), start=1):
        name = f"fc{i}"
        w_kn = _he(rng, (k, n), k)
        if pruned:
            w_kn = prune_groups(w_kn, LENET_300_100_KEEP[name], group)
        inits += [numpy_helper.from_array(np.ascontiguousarray(w_kn.T), f"{name}.weight"),
                  numpy_helper.from_array(_bias(rng, n), f"{name}.bias")]
        nodes.append(helper.make_node("Gemm", [prev, f"{name}.weight", f"{name}.bias"], [name],
                                      transB=1, name=name))
        prev = name
        if i < len(dims) - 1:
            nodes.append(helper.make_node("Relu", [prev], [f"{name}_relu"], name=f"relu{i}"))
            prev = f"{name}_relu"
    return _model("lenet_300_100", nodes, inits, ["batch", 784], prev, ["batch", 10])


def lenet5(*, pruned: bool = True, group: int = 8, seed: int = 0) -> onnx.ModelProto:
    """Caffe's LeNet-5 (conv 20@5x5, pool, conv 50@5x5, pool, fc 500, ReLU, fc 10), 1x28x28 in."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def add(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))

    for name, (o, i) in {"conv1": (20, 1), "conv2": (50, 20)}.items():
        w = _he(rng, (o, i, 5, 5), i * 25)
        add(f"{name}.weight", prune_filters(w, LENET5_KEEP[name]) if pruned else w)
        add(f"{name}.bias", _bias(rng, o))
    for name, (k, n) in {"fc1": (800, 500), "fc2": (500, 10)}.items():
        w_kn = _he(rng, (k, n), k)
        add(f"{name}.weight", (prune_groups(w_kn, LENET5_KEEP[name], group) if pruned else w_kn).T)
        add(f"{name}.bias", _bias(rng, n))
    graph = [
        ("Conv", ["input", "conv1.weight", "conv1.bias"], "conv1", {"kernel_shape": [5, 5]}),
        ("MaxPool", ["conv1"], "pool1", {"kernel_shape": [2, 2], "strides": [2, 2]}),
        ("Conv", ["pool1", "conv2.weight", "conv2.bias"], "conv2", {"kernel_shape": [5, 5]}),
        ("MaxPool", ["conv2"], "pool2", {"kernel_shape": [2, 2], "strides": [2, 2]}),
        ("Flatten", ["pool2"], "flatten", {}),
        ("Gemm", ["flatten", "fc1.weight", "fc1.bias"], "fc1", {"transB": 1}),
        ("Relu", ["fc1"], "relu3", {}),
        ("Gemm", ["relu3", "fc2.weight", "fc2.bias"], "fc2", {"transB": 1}),
    ]
    for op, inputs, out, attrs in graph:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
    return _model("lenet5", nodes, inits, ["batch", 1, 28, 28], "fc2", ["batch", 10])


def transformer_ffn(*, hidden: int = 768, ffn: int = 3072, seq: int = 128, keep_nodes: float = 1.0,
                    keep_groups: float = 1.0, group: int = 8, seed: int = 0) -> onnx.ModelProto:
    """A transformer's feed-forward block (BERT-base's sizes by default): MatMul + Add, GELU,
    MatMul + Add on [batch, seq, hidden], as PyTorch exports nn.Linear on a 3-D input.

    `keep_nodes` keeps that fraction of the `ffn` intermediate neurons (the rest lose their
    fc1 column: structured FFN pruning; their fc2 rows go with them in `Pass`); `keep_groups`
    keeps that fraction of each layer's aligned G×1 groups, by RMS as `prune_groups` does."""
    rng = np.random.default_rng(seed)
    w1, w2 = _he(rng, (hidden, ffn), hidden), _he(rng, (ffn, hidden), ffn)
    if keep_nodes < 1:  # fc1's columns are its neurons: the lowest-norm ones go, as filters do
        w1 = prune_filters(w1.T, keep_nodes).T
    if keep_groups < 1:
        w1, w2 = prune_groups(w1, keep_groups, group), prune_groups(w2, keep_groups, group)
    inits = [numpy_helper.from_array(w.astype(np.float32), f"{name}.weight") for name, w in (("fc1", w1), ("fc2", w2))]
    inits += [numpy_helper.from_array(_bias(rng, n), f"{name}.bias") for name, n in (("fc1", ffn), ("fc2", hidden))]
    nodes = [helper.make_node("MatMul", ["input", "fc1.weight"], ["fc1_mm"], name="fc1"),
             helper.make_node("Add", ["fc1_mm", "fc1.bias"], ["fc1"], name="fc1_bias"),
             helper.make_node("Gelu", ["fc1"], ["gelu"], name="gelu"),
             helper.make_node("MatMul", ["gelu", "fc2.weight"], ["fc2_mm"], name="fc2"),
             helper.make_node("Add", ["fc2_mm", "fc2.bias"], ["fc2"], name="fc2_bias")]
    return _model("transformer_ffn", nodes, inits, ["batch", seq, hidden], "fc2", ["batch", seq, hidden], opset=20)


def _model(name, nodes, inits, in_shape, out_name, out_shape, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="scalpel-tvm")
    model.ir_version = 8 if opset < 20 else 9  # readable by every onnxruntime this project pins
    onnx.checker.check_model(model)
    return model


def weights_removed(model: onnx.ModelProto) -> float:
    """Fraction of weight values (initializers named *.weight) that are zero."""
    total = zeros = 0
    for init in model.graph.initializer:
        if init.name.endswith(".weight"):
            array = numpy_helper.to_array(init)
            total += array.size
            zeros += array.size - np.count_nonzero(array)
    return zeros / total
