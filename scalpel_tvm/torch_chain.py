"""The LeNet / ConvNet family as a PyTorch module, for the pruning frontend's retraining.

`chain_net(model)` rebuilds an ONNX chain of Conv / Gemm (+ Relu), pooling and Flatten layers
(what `int16_net.read_chain` reads) as torch layers holding the model's weights;
`write_weights(model, net)` puts the trained weights back into a copy of the ONNX model, so the
pruned model keeps the user's graph and only its initializers change. Training is plain Adam on
cross-entropy with masks re-applied after every step (pruned weights stay zero); progress goes
to a tqdm bar. PyTorch is the optional `train` extra.

Node pruning's mask layers (Scalpel §3.3) live here too: `add_node_masks(net, names)` puts a
mask after each named layer (after its ReLU), output_i = α_i·β_i·x_i per neuron or feature map,
with α ∈ {0, 1} a buffer and β ∈ [0, 1] a parameter. β learns through a straight-through α (its
gradient is the one it would have with α = 1), so a node switched off can come back under the
hysteresis of equation (6) (`node_pruning.update_alpha`) instead of being pulled to zero by the
L1 penalty alone. `remove_masked_nodes(net)` folds β into the layer (β·relu(z) = relu(β·z) for
β ≥ 0, so the output is unchanged), zeroes the nodes with α = 0 (weights, bias, and the
consumer's inputs they fed), and from then on `train` holds them at zero.
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
            self.beta = nn.ParameterDict()  # node masks: key -> β; α is the buffer "alpha_<key>"
            self.removed = {}  # layer name -> 0/1 node mask held after remove_masked_nodes
            self.penalty_scale = {}  # key -> weight of the layer's masks in the L1 penalty
            self.dropout = {}  # key of an FC layer -> dropout ratio on its input (set_dropout)
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
                if key in self.dropout:
                    x = torch.nn.functional.dropout(x, self.dropout[key], self.training)
                if pads is not None and any(pads):
                    x = torch.nn.functional.pad(x, pads)
                x = self.layers[key](x)
                if relu:
                    x = x.relu()
                if key in self.beta:
                    beta = self.beta[key]
                    gate = beta + (getattr(self, f"alpha_{key}") * beta - beta).detach()  # straight-through α
                    x = x * gate.reshape(1, -1, *([1] * (x.dim() - 2)))
            return x

        def weight(self, name):
            return self.layers[name.replace(".", "_")].weight

        def module(self, name):
            return self.layers[name.replace(".", "_")]

        def consumer(self, name):
            """The next Conv / Gemm layer after `name` (the one its nodes feed), or None."""
            index = self.names.index(name)
            return self.names[index + 1] if index + 1 < len(self.names) else None

    return Net()


def set_dropout(net, ratio: float) -> None:
    """Dropout `ratio` on the input of every FC layer but the first layer of the network, scaled to
    what pruning left (Han et al.'s rule, Scalpel's equation (8)): D = ratio·sqrt(C_kept / C),
    C the layer's connections — weights, which removed nodes and their consumers' inputs count
    out too. Called before each retraining; the ONNX graph itself carries no dropout."""
    from .node_pruning import dropout_ratio

    net.dropout = {}
    if not ratio:
        return
    for name in net.names[1:]:
        module = net.module(name)
        if isinstance(module, _torch().nn.Linear):
            w = module.weight.detach()
            net.dropout[name.replace(".", "_")] = dropout_ratio(ratio, int(w.count_nonzero()), w.numel())


def add_node_masks(net, names, penalty_scale: dict | None = None) -> None:
    """A mask layer (α = β = 1: the output is unchanged) after each of `names`; `penalty_scale`
    (name -> factor, default 1) weighs each layer's share of the L1 penalty."""
    torch = _torch()
    for name in names:
        key = name.replace(".", "_")
        net.penalty_scale[key] = float((penalty_scale or {}).get(name, 1.0))
        nodes = net.weight(name).shape[0]
        net.beta[key] = torch.nn.Parameter(torch.ones(nodes))
        net.register_buffer(f"alpha_{key}", torch.ones(nodes))


def node_masks(net) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Layer name -> (α, β) as numpy arrays."""
    return {name: (getattr(net, f"alpha_{name.replace('.', '_')}").numpy().copy(),
                   net.beta[name.replace(".", "_")].detach().numpy().copy())
            for name in net.names if name.replace(".", "_") in net.beta}


def set_alpha(net, name: str, alpha: np.ndarray) -> None:
    torch = _torch()
    getattr(net, f"alpha_{name.replace('.', '_')}").copy_(torch.from_numpy(np.asarray(alpha, np.float32)))


def remove_masked_nodes(net) -> dict[str, int]:
    """Fold β into each masked layer, zero its α = 0 nodes and the consumer inputs they fed, and
    set the masks to α·1 so the module computes what the written ONNX model will. Returns layer
    name -> nodes kept."""
    torch = _torch()
    kept = {}
    with torch.no_grad():
        for name, (alpha, beta) in node_masks(net).items():
            key = name.replace(".", "_")
            scale = torch.from_numpy(alpha * beta)
            module = net.module(name)
            module.weight.mul_(scale.reshape(-1, *([1] * (module.weight.dim() - 1))))
            if module.bias is not None:
                module.bias.mul_(scale)
            net.beta[key].fill_(1.0)
            net.beta[key].requires_grad_(False)
            net.removed[name] = alpha.copy()
            kept[name] = int(alpha.sum())
    hold_removed_nodes(net)
    return kept


def snapshot(net):
    """Everything a pruning round may change: the weights, the masks, the removed nodes."""
    import copy

    return copy.deepcopy(net.state_dict()), copy.deepcopy(net.removed), {k: b.requires_grad for k, b in net.beta.items()}


def restore(net, saved) -> None:
    import copy

    state, removed, trainable = saved
    net.load_state_dict(state)
    net.removed = copy.deepcopy(removed)
    for key, flag in trainable.items():
        net.beta[key].requires_grad_(flag)


def hold_removed_nodes(net) -> None:
    """Zero the removed nodes' weights and biases and the consumer weights they fed."""
    torch = _torch()
    with torch.no_grad():
        for name, alive in net.removed.items():
            dead = torch.from_numpy(alive == 0)
            module = net.module(name)
            module.weight[dead] = 0
            if module.bias is not None:
                module.bias[dead] = 0
            consumer = net.consumer(name)
            if consumer is not None:
                w = net.weight(consumer)
                per_node = w.shape[1] // len(alive)  # a conv channel feeds a range of flattened features
                columns = w.view(w.shape[0], len(alive), per_node, *w.shape[2:])
                columns[:, dead] = 0


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
          batch: int = 128, seed: int = 0, desc: str = "train", penalty: float = 0.0, beta_lr: float = 1e-2,
          after_step=None, anneal: bool = False, teacher=None, temperature: float = 4.0) -> None:
    """Adam on cross-entropy for `epochs` passes (fractions allowed), with `anneal` its rate
    brought down to zero along a cosine over the steps; with `masks` (layer name ->
    0/1 array of the weight's shape) pruned weights are set back to zero after every step, and so
    are removed nodes (`remove_masked_nodes`). Node masks' β learn at `beta_lr` with an L1
    `penalty` on them and are clipped to [0, 1]; `after_step(net)` runs after every step (the α
    update of node pruning). With `teacher` (a module, usually the unpruned model) half the loss
    is the KL divergence from its softened outputs at `temperature` (Hinton et al.'s
    distillation, scaled by T²): retraining learns what the unpruned model knew, not only the labels."""
    torch = _torch()
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.int64))
    masks = {name: torch.from_numpy(np.asarray(m, np.float32)).reshape(net.weight(name).shape)
             for name, m in (masks or {}).items()}
    betas = {key: b for key, b in net.beta.items() if b.requires_grad}
    weights = [p for p in net.layers.parameters()]
    optimizer = torch.optim.Adam([{"params": weights}] + ([{"params": list(betas.values()), "lr": beta_lr}]
                                                         if betas else []), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    steps = max(1, int(round(epochs * len(xt) / batch)))
    order = torch.cat([torch.randperm(len(xt), generator=generator) for _ in range(int(np.ceil(epochs)) or 1)])
    from tqdm import tqdm

    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if anneal else None
    net.train()
    hold_masks(net, masks)
    for step in tqdm(range(steps), desc=desc, file=sys.stderr, leave=False):
        index = order[step * batch:(step + 1) * batch]
        logits = net(xt[index])
        if teacher is None:
            loss = torch.nn.functional.cross_entropy(logits, yt[index])
        else:
            with torch.no_grad():
                taught = teacher(xt[index])
            loss = distillation_loss(logits, yt[index], taught, temperature)
        if penalty and betas:
            loss = loss + penalty * sum(net.penalty_scale[key] * b.sum() for key, b in betas.items())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if schedule:
            schedule.step()
        hold_masks(net, masks, after_step)


def distillation_loss(logits, labels, teacher_logits, temperature: float):
    """Half cross-entropy on the labels, half T² · KL(teacher ‖ student) on outputs softened at
    T (Hinton et al.; T² keeps the soft part's gradients on the scale of the hard part's)."""
    torch = _torch()
    soft = torch.nn.functional.log_softmax(teacher_logits / temperature, dim=1)
    kl = torch.nn.functional.kl_div(torch.nn.functional.log_softmax(logits / temperature, dim=1), soft,
                                    reduction="batchmean", log_target=True)
    return 0.5 * torch.nn.functional.cross_entropy(logits, labels) + 0.5 * temperature ** 2 * kl


def hold_masks(net, masks: dict, after_step=None) -> None:
    """What must hold after every training step: pruned weights zero (`masks`: name -> 0/1
    tensor of the weight's shape), removed nodes zero, β within [0, 1]; then `after_step(net)`."""
    torch = _torch()
    with torch.no_grad():
        for name, mask in masks.items():
            net.weight(name).mul_(mask)
        for b in net.beta.values():
            b.clamp_(0.0, 1.0)
    if net.removed:
        hold_removed_nodes(net)
    if after_step:
        after_step(net)


def accuracy(net, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    return float(correct(net, x, y, batch).mean())


def correct(net, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> np.ndarray:
    """Per image, whether `net`'s top-1 class is the label (what a paired comparison needs)."""
    torch = _torch()
    net.eval()
    hits = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            logits = net(torch.from_numpy(np.ascontiguousarray(x[start:start + batch], np.float32)))
            hits.append(logits.argmax(1).numpy() == y[start:start + batch])
    return np.concatenate(hits)


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
