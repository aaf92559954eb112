"""The LeNet / ConvNet family as a PyTorch module, for the pruning frontend's retraining.

`chain_net(model)` rebuilds an ONNX chain of Conv / Gemm (+ Relu), pooling and Flatten layers
(what `int16_net.read_chain` reads) as torch layers holding the model's weights;
`write_weights(model, net)` puts the trained weights back into a copy of the ONNX model, so the
pruned model keeps the user's graph and only its initializers change. Training is plain Adam on
cross-entropy with masks re-applied after every step (pruned weights stay zero); progress goes
to a tqdm bar. PyTorch is the optional `train` extra.
"""
from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ScalpelError
from .int16_net import read_chain


def _torch():
    try:
        import torch
    except ImportError:
        raise ScalpelError("retraining needs PyTorch: pip install 'scalpel-tvm[train]' (the CPU build)") from None
    return torch


def chain_net(model: onnx.ModelProto):
    """The torch module of `model`'s chain, holding its weights (torch is imported here, so
    importing this module needs none)."""
    torch = _torch()
    nn = torch.nn
    input_shape, layers = read_chain(model)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_shape = input_shape
            self.names = [layer["name"] for layer in layers if layer["op"] in ("fc", "conv")]
            self.layers = nn.ModuleDict()
            self.plan = []  # (op, module key, ReLU after, zero padding before a conv)
            for layer in layers:
                key = layer["name"].replace(".", "_")
                window = layer["window"]
                if layer["op"] == "fc":
                    n, k = layer["w_nk"].shape
                    module = nn.Linear(k, n, bias=layer["bias_name"] is not None)
                    module.weight.data = torch.tensor(layer["w_nk"], dtype=torch.float32)
                elif layer["op"] == "conv":
                    n = layer["w_nk"].shape[0]
                    module = nn.Conv2d(window.c, n, (window.kh, window.kw), (window.stride_h, window.stride_w),
                                       bias=layer["bias_name"] is not None)
                    module.weight.data = torch.tensor(layer["w_nk"].reshape(layer["weight_shape"]),
                                                      dtype=torch.float32)
                else:
                    module = _pool(nn, layer)
                if getattr(module, "bias", None) is not None:
                    module.bias.data = torch.tensor(layer["bias"], dtype=torch.float32)
                self.layers[key] = module
                self.plan.append((layer["op"], key, layer.get("relu", False), _pads(window) if layer["op"] == "conv" else None))

        def forward(self, x):
            x = x.reshape(len(x), *self.input_shape)
            for op, key, relu, pads in self.plan:
                if op == "fc" and x.dim() > 2:
                    x = x.flatten(1)
                if pads is not None and any(pads):
                    x = torch.nn.functional.pad(x, pads)
                x = self.layers[key](x)
                if relu:
                    x = x.relu()
            return x

        def weight(self, name):
            return self.layers[name.replace(".", "_")].weight

    return Net()


def _pads(window) -> tuple:
    """(left, right, top, bottom) zero padding in front of a conv (ONNX pads may be asymmetric)."""
    bottom = (window.oh - 1) * window.stride_h + window.kh - window.h - window.pad_top
    right = (window.ow - 1) * window.stride_w + window.kw - window.w - window.pad_left
    return (window.pad_left, max(right, 0), window.pad_top, max(bottom, 0))


def _pool(nn, layer):
    window = layer["window"]
    padding = (window.pad_top, window.pad_left)
    same = all((size + 2 * pad - k) // stride + 1 == out for size, pad, k, stride, out in (
        (window.h, window.pad_top, window.kh, window.stride_h, window.oh),
        (window.w, window.pad_left, window.kw, window.stride_w, window.ow)))
    if not same:
        raise ScalpelError(f"pooling '{layer['name']}' has asymmetric padding, which retraining cannot express")
    args = dict(kernel_size=(window.kh, window.kw), stride=(window.stride_h, window.stride_w), padding=padding)
    if layer["op"] == "maxpool":
        return nn.MaxPool2d(**args)
    return nn.AvgPool2d(**args, count_include_pad=layer["count_include_pad"])


def train(net, x: np.ndarray, y: np.ndarray, *, epochs: float, masks: dict | None = None, lr: float = 1e-3,
          batch: int = 128, seed: int = 0, desc: str = "train") -> None:
    """Adam on cross-entropy for `epochs` passes (fractions allowed); with `masks` (layer name ->
    0/1 array of the weight's shape) pruned weights are set back to zero after every step."""
    torch = _torch()
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.int64))
    masks = {name: torch.from_numpy(np.asarray(m, np.float32)).reshape(net.weight(name).shape)
             for name, m in (masks or {}).items()}
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    steps = max(1, int(round(epochs * len(xt) / batch)))
    order = torch.cat([torch.randperm(len(xt), generator=generator) for _ in range(int(np.ceil(epochs)) or 1)])
    from tqdm import tqdm

    net.train()
    with torch.no_grad():
        for name, mask in masks.items():
            net.weight(name).mul_(mask)
    for step in tqdm(range(steps), desc=desc, file=sys.stderr, leave=False):
        index = order[step * batch:(step + 1) * batch]
        loss = torch.nn.functional.cross_entropy(net(xt[index]), yt[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for name, mask in masks.items():
                net.weight(name).mul_(mask)


def accuracy(net, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    torch = _torch()
    net.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch):
            logits = net(torch.from_numpy(np.ascontiguousarray(x[start:start + batch], np.float32)))
            correct += int((logits.argmax(1).numpy() == y[start:start + batch]).sum())
    return correct / len(x)


def weights(net) -> dict[str, np.ndarray]:
    """Layer name -> its weight as [N, K] (conv: [N, C*KH*KW]), a numpy copy."""
    return {name: net.weight(name).detach().numpy().reshape(net.weight(name).shape[0], -1).copy()
            for name in net.names}


def write_weights(model: onnx.ModelProto, net) -> onnx.ModelProto:
    """A copy of `model` whose Conv / Gemm weights and biases are `net`'s."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _, layers = read_chain(model)
    inits = {init.name: init for init in out.graph.initializer}
    for layer in layers:
        if layer["op"] not in ("fc", "conv"):
            continue
        module = net.layers[layer["name"].replace(".", "_")]
        w = module.weight.detach().numpy()
        if layer.get("transposed"):
            w = w.T
        inits[layer["weight_name"]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w, np.float32),
                                                                     layer["weight_name"]))
        if layer["bias_name"]:
            inits[layer["bias_name"]].CopyFrom(numpy_helper.from_array(module.bias.detach().numpy().astype(np.float32),
                                                                       layer["bias_name"]))
    return out
