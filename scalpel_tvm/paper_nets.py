"""The five networks of the Scalpel paper as ONNX, with node pruning and traditional pruning.

Random (He-initialised) weights in the networks' shapes: the GPU benchmark measures how fast the
pruned *structure* runs, which the weights' values do not change. The architectures are those of
the authors' PyTorch code (github.com/jiecaoyu/scalpel-1, `*/models/*.py`), with two changes the
compiler needs and the timing hardly feels: ConvNet's LRN layers are left out, and AlexNet's
grouped convolutions (conv2, conv4, conv5 with groups=2) are plain ones (the node-shrinking pass
leaves grouped convolutions untouched).

`NODES_KEPT` are the node-pruning results the authors report in that repository's README
(nodes / feature maps kept per layer). `HAN_KEPT` are the per-layer weight densities of
traditional pruning (Han et al., NIPS 2015, table 4 for AlexNet, tables 1-2 for the LeNets); Han
et al. did not prune ConvNet or NIN, so those take AlexNet's rates by layer kind (conv 37%,
FC 9%), which the report says.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .schedules.conv2d import conv2d_output_shape

# (op, name, *args): conv (out, kernel, stride, pad), fc (out), maxpool/avgpool (kernel,
# stride, pad), gap (global average pool), flatten, relu.
ARCHITECTURES = {
    "lenet_300_100": ([1, 784], [
        ("fc", "fc1", 300), ("relu",), ("fc", "fc2", 100), ("relu",), ("fc", "fc3", 10)]),
    "lenet5": ([1, 1, 28, 28], [
        ("conv", "conv1", 20, 5, 1, 0), ("relu",), ("maxpool", 2, 2, 0),
        ("conv", "conv2", 50, 5, 1, 0), ("relu",), ("maxpool", 2, 2, 0), ("flatten",),
        ("fc", "fc1", 500), ("relu",), ("fc", "fc2", 10)]),
    "convnet": ([1, 3, 32, 32], [
        ("conv", "conv1", 32, 5, 1, 2), ("relu",), ("maxpool", 3, 2, 1),
        ("conv", "conv2", 32, 5, 1, 2), ("relu",), ("avgpool", 3, 2, 1),
        ("conv", "conv3", 64, 5, 1, 2), ("relu",), ("avgpool", 3, 2, 1), ("flatten",),
        ("fc", "fc1", 10)]),
    "nin": ([1, 3, 32, 32], [
        ("conv", "conv1", 192, 5, 1, 2), ("relu",), ("conv", "cccp1", 160, 1, 1, 0), ("relu",),
        ("conv", "cccp2", 96, 1, 1, 0), ("relu",), ("maxpool", 3, 2, 1),
        ("conv", "conv2", 192, 5, 1, 2), ("relu",), ("conv", "cccp3", 192, 1, 1, 0), ("relu",),
        ("conv", "cccp4", 192, 1, 1, 0), ("relu",), ("avgpool", 3, 2, 1),
        ("conv", "conv3", 192, 3, 1, 1), ("relu",), ("conv", "cccp5", 192, 1, 1, 0), ("relu",),
        ("conv", "cccp6", 10, 1, 1, 0), ("relu",), ("gap",), ("flatten",)]),
    "alexnet": ([1, 3, 227, 227], [
        ("conv", "conv1", 96, 11, 4, 0), ("relu",), ("maxpool", 3, 2, 0),
        ("conv", "conv2", 256, 5, 1, 2), ("relu",), ("maxpool", 3, 2, 0),
        ("conv", "conv3", 384, 3, 1, 1), ("relu",), ("conv", "conv4", 384, 3, 1, 1), ("relu",),
        ("conv", "conv5", 256, 3, 1, 1), ("relu",), ("maxpool", 3, 2, 0), ("flatten",),
        ("fc", "fc6", 4096), ("relu",), ("fc", "fc7", 4096), ("relu",), ("fc", "fc8", 1000)]),
}

NODES_KEPT = {
    "lenet_300_100": {"fc1": 161, "fc2": 64},
    "lenet5": {"conv1": 9, "conv2": 18, "fc1": 65},
    "convnet": {"conv1": 28, "conv2": 22, "conv3": 40},
    "nin": {"conv1": 117, "cccp1": 81, "cccp2": 62, "conv2": 183, "cccp3": 123, "cccp4": 148,
            "conv3": 91, "cccp5": 54},
    "alexnet": {"conv1": 83, "conv2": 225, "conv3": 233, "conv4": 238, "conv5": 253,
                "fc6": 3001, "fc7": 3029},
}

HAN_KEPT = {
    "lenet_300_100": {"fc1": 0.08, "fc2": 0.09, "fc3": 0.26},
    "lenet5": {"conv1": 0.66, "conv2": 0.12, "fc1": 0.08, "fc2": 0.19},
    "alexnet": {"conv1": 0.84, "conv2": 0.38, "conv3": 0.35, "conv4": 0.37, "conv5": 0.37,
                "fc6": 0.09, "fc7": 0.09, "fc8": 0.25},
}
HAN_BY_KIND = {"conv": 0.37, "fc": 0.09}  # ConvNet and NIN: AlexNet's rates by layer kind


def network(name: str, *, seed: int = 0, input_shape: tuple | None = None) -> onnx.ModelProto:
    """The dense network `name` (a key of ARCHITECTURES) with random weights; batch symbolic.
    `input_shape` (C, H, W) replaces the paper's input, e.g. the ConvNet on 1x28x28 Fashion-MNIST
    instead of 3x32x32 CIFAR-10 (the layers that follow take the shapes that result)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(ARCHITECTURES)}")
    in_shape, layers = ARCHITECTURES[name]
    if input_shape is not None:
        if len(in_shape) != 4 or len(input_shape) != 3:
            raise ValueError(f"{name} takes {'a flat input' if len(in_shape) != 4 else 'a C, H, W input'}; "
                             f"input_shape {tuple(input_shape)} does not fit it")
        in_shape = [1, *input_shape]
    rng = np.random.default_rng(seed)
    nodes, inits, prev, shape = [], [], "input", list(in_shape)
    for index, (op, *args) in enumerate(layers):
        out = f"{op}{index}" if op not in ("conv", "fc") else args[0]
        if op == "conv":
            _, o, k, s, p = args
            c = shape[1]
            inits += [numpy_helper.from_array(_he(rng, (o, c, k, k), c * k * k), f"{out}.weight"),
                      numpy_helper.from_array(_bias(rng, o), f"{out}.bias")]
            nodes.append(helper.make_node("Conv", [prev, f"{out}.weight", f"{out}.bias"], [out], name=out,
                                          kernel_shape=[k, k], strides=[s, s], pads=[p] * 4))
            shape = _window_output(shape, o, k, s, p)
        elif op == "fc":
            _, n = args
            k = shape[1]
            inits += [numpy_helper.from_array(_he(rng, (n, k), k), f"{out}.weight"),
                      numpy_helper.from_array(_bias(rng, n), f"{out}.bias")]
            nodes.append(helper.make_node("Gemm", [prev, f"{out}.weight", f"{out}.bias"], [out],
                                          name=out, transB=1))
            shape = [1, n]
        elif op in ("maxpool", "avgpool"):
            k, s, p = args
            onnx_op = "MaxPool" if op == "maxpool" else "AveragePool"
            nodes.append(helper.make_node(onnx_op, [prev], [out], name=out, kernel_shape=[k, k],
                                          strides=[s, s], pads=[p] * 4))
            shape = _window_output(shape, shape[1], k, s, p)
        elif op == "gap":
            nodes.append(helper.make_node("GlobalAveragePool", [prev], [out], name=out))
            shape = [1, shape[1], 1, 1]
        elif op == "flatten":
            nodes.append(helper.make_node("Flatten", [prev], [out], name=out))
            shape = [1, int(np.prod(shape[1:]))]
        else:
            nodes.append(helper.make_node("Relu", [prev], [out], name=out))
        prev = out
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *in_shape[1:]])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["batch", *shape[1:]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="scalpel-tvm")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def layer_kinds(name: str) -> dict[str, str]:
    """layer name -> "conv" | "fc", in order."""
    return {args[0]: op for op, *args in ARCHITECTURES[name][1] if op in ("conv", "fc")}


def node_pruned(model: onnx.ModelProto, kept: dict[str, int]) -> onnx.ModelProto:
    """Zero all but `kept[layer]` output nodes (FC neurons / conv filters, the lowest L2 norms
    go) of each named layer, bias included, so the nodes are dead and the pass removes them."""
    model = _copy(model)
    weights = _initializers(model)
    for layer, keep in kept.items():
        w, b = weights[f"{layer}.weight"], weights[f"{layer}.bias"]
        array, bias = numpy_helper.to_array(w).copy(), numpy_helper.to_array(b).copy()
        norms = np.linalg.norm(array.reshape(array.shape[0], -1), axis=1)
        drop = np.argsort(norms)[: array.shape[0] - keep]
        array[drop], bias[drop] = 0, 0
        w.CopyFrom(numpy_helper.from_array(array, w.name))
        b.CopyFrom(numpy_helper.from_array(bias, b.name))
    return model


def magnitude_pruned(model: onnx.ModelProto, density: dict[str, float]) -> onnx.ModelProto:
    """Traditional pruning: keep the `density[layer]` fraction of each named layer's weights
    with the largest magnitude, zero the rest (no structure)."""
    model = _copy(model)
    weights = _initializers(model)
    for layer, fraction in density.items():
        w = weights[f"{layer}.weight"]
        array = numpy_helper.to_array(w).copy()
        keep = max(1, int(round(fraction * array.size)))
        threshold = np.partition(np.abs(array).ravel(), array.size - keep)[array.size - keep]
        array[np.abs(array) < threshold] = 0
        w.CopyFrom(numpy_helper.from_array(array, w.name))
    return model


def group_pruned(model: onnx.ModelProto, density: dict[str, float], group: int,
                 orientation: str = "gx1") -> onnx.ModelProto:
    """SIMD-aware (on a GPU: warp-aware) pruning of the named layers: keep the `density[layer]`
    fraction of aligned groups of `group` weights — G×1 (outputs sharing one input, the GPU's
    warp groups) or 1×G (consecutive inputs of one output, the Cortex-M's pairs) — those with the
    largest root-mean-square (models.prune_groups), zero the rest. A conv weight [N, C, KH, KW]
    is grouped as the [N, C*KH*KW] matrix its im2col kernel multiplies."""
    from .models import prune_groups

    model = _copy(model)
    weights = _initializers(model)
    for layer, fraction in density.items():
        w = weights[f"{layer}.weight"]
        array = numpy_helper.to_array(w)
        w_nk = array.reshape(array.shape[0], -1)  # Gemm transB / conv: [N, K]
        pruned = prune_groups(np.ascontiguousarray(w_nk.T), fraction, group, orientation).T
        w.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(pruned).reshape(array.shape), w.name))
    return model


def han_density(name: str) -> dict[str, float]:
    """Traditional pruning's per-layer weight density for network `name` (see module doc)."""
    if name in HAN_KEPT:
        return dict(HAN_KEPT[name])
    return {layer: HAN_BY_KIND[kind] for layer, kind in layer_kinds(name).items()}


def _window_output(shape, channels, kernel, stride, pad) -> list[int]:
    """The output shape of a square conv / pooling window over an NCHW `shape`."""
    return list(conv2d_output_shape(1, shape[1], shape[2], shape[3], channels, (kernel, kernel),
                                    strides=(stride, stride), padding=(pad,) * 4))


def _he(rng, shape, fan_in):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _bias(rng, n):
    return (rng.standard_normal(n) * 0.01).astype(np.float32)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _initializers(model: onnx.ModelProto) -> dict:
    return {init.name: init for init in model.graph.initializer}
