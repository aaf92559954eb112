"""Which prunable layer of a user's `torch.nn.Module` reads which one's nodes, from its torch.fx graph.

A removed node (neuron or filter) of a layer is all zeros out of it; its consumer's inputs that
it fed can then be zeroed too, and the layer's neurons can be put in another order if the
consumer's inputs move with them (`neuron_order`). Both are exact only when every value between
the two layers keeps zero at zero and keeps the node axis where it was. `consumers` proves that
on the module's `torch.fx.symbolic_trace` graph, with the shapes of one forward pass
(`ShapeProp`), and says why where it cannot: a sigmoid or a BatchNorm turns a dead node into a
constant (which `scalpel_tvm.Pass` folds into the consumer's bias instead), a residual Add or a
second reader uses the node elsewhere, a module with data-dependent control flow cannot be traced.
Everything not in the tables below stops the walk; nothing is guessed.
"""
from __future__ import annotations

# Element-wise modules and functions that map 0 to 0 (an activation of a dead node stays 0).
ZERO_MODULES = ("ReLU", "ReLU6", "LeakyReLU", "GELU", "SiLU", "Tanh", "Hardtanh", "Hardswish", "ELU", "Mish",
                "Dropout", "Dropout1d", "Dropout2d", "Identity", "Softshrink", "Hardshrink", "Tanhshrink")
ZERO_FUNCTIONS = ("relu", "relu6", "leaky_relu", "gelu", "silu", "tanh", "hardtanh", "hardswish", "elu", "mish",
                  "dropout", "contiguous")
# Windows over the spatial axes of a conv's output: a dead channel stays a dead channel.
POOL_MODULES = ("MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d")
POOL_FUNCTIONS = ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d")
RESHAPES = ("flatten", "view", "reshape")
REDUCTIONS = ("mean", "sum", "amax")


def consumers(module, example, names: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """({layer: its consumer}, {layer: why it has none}) for the prunable layers `names`
    (qualified module names, each called once). A consumer is the one prunable Linear or Conv2d
    that is the only reader of the layer's output through zero-keeping element-wise ops,
    pooling, the flatten from a conv's channels to a Linear's features, or a mean / sum over
    axes other than the node axis."""
    try:
        graph = _traced(module, example)
    except Exception as err:  # noqa: BLE001 - torch.fx raises many kinds; the reason is reported
        why = f"torch.fx cannot trace the module ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
        return {}, dict.fromkeys(names, why)
    modules = dict(graph.named_modules())
    calls = {n.target: n for n in graph.graph.nodes if n.op == "call_module" and n.target in names}
    found, why = {}, {}
    for name in names:
        if name not in calls:
            why[name] = "not called as a module in the traced graph"
            continue
        consumer, reason = _walk(calls[name], modules, set(names))
        if consumer:
            found[name] = consumer
        else:
            why[name] = reason
    return found, why


def _traced(module, example):
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    graph = torch.fx.symbolic_trace(module)
    graph.eval()  # as `torch_module.read_module` leaves it; retraining sets its own mode
    with torch.no_grad():
        ShapeProp(graph).propagate(example)
    return graph


def _shape(node):
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _walk(start, modules, prunable: set):
    """(consumer, None) or (None, why not), from layer node `start` forward."""
    import torch

    layer = modules[start.target]
    conv = isinstance(layer, torch.nn.Conv2d)
    nodes = layer.out_channels if conv else layer.out_features
    node = start
    while True:
        users = [u for u in node.users if not _reads_shape_only(u)]
        if any(u.op == "output" for u in users):
            return None, "its output is the module's output"
        if not users:
            return None, "its output is not used"
        if len(users) > 1:
            return None, f"its output is read by {len(users)} operations ({', '.join(u.name for u in users)})"
        user = users[0]
        shape_in, shape_out = _shape(node), _shape(user)
        step = _step(node, user, modules, conv, shape_in, shape_out, nodes, prunable)
        if step == "consumer":
            return user.target, None
        if step == "flattened":
            conv = False  # the conv's channels are now ranges of a Linear's features
        elif step != "through":
            return None, step
        node = user


def _step(node, user, modules, conv: bool, shape_in, shape_out, nodes: int, prunable: set) -> str:
    """What `user` does to the node axis of `node`'s value: "consumer", "through",
    "flattened", or why the walk stops."""
    import torch

    if _known(user, modules) and _first_arg(user) is not node:
        return f"{user.name} does not take the nodes as its first input"

    if user.op == "call_module":
        target = modules[user.target]
        kind = type(target).__name__
        if isinstance(target, (torch.nn.Linear, torch.nn.Conv2d)):
            if user.target not in prunable:
                return f"its consumer {user.target} is not pruned (see skipped)"
            if isinstance(target, torch.nn.Conv2d) != conv:
                return f"{user.target} does not read the nodes on its input axis"
            return "consumer"
        if kind in ZERO_MODULES:
            return "through"
        if kind in POOL_MODULES and conv:
            return "through"
        if kind == "Flatten" and conv and (target.start_dim, target.end_dim) == (1, -1):
            return "flattened"
        return f"{kind} ({user.target}) does not keep a dead node at zero on its axis"
    if user.op in ("call_function", "call_method"):
        name = _name(user)
        if not _known(user, modules):
            return f"{name} ({user.name}) is not known to keep a dead node at zero on its axis"
        if name in ZERO_FUNCTIONS:
            return "through"
        if name in POOL_FUNCTIONS:
            return "through" if conv else f"{name} over a Linear's features"
        if shape_in is None or shape_out is None:
            return f"{name} ({user.name}): no shapes from the forward pass"
        if name in RESHAPES:
            if conv and len(shape_in) == 4 and shape_out == (shape_in[0], shape_in[1] * shape_in[2] * shape_in[3]):
                return "flattened"
            if not conv and shape_out[-1] == shape_in[-1] == nodes:
                return "through"  # leading axes merged or split; the features stay last
            return f"{name} ({user.name}) reshapes {list(shape_in)} to {list(shape_out)} across the node axis"
        rank = len(shape_in)
        here = 1 if conv else rank - 1
        dims = _dims(user, rank)
        if here in dims:
            return f"{name} ({user.name}) reduces over the node axis"
        after = here if _keepdim(user) else here - sum(d < here for d in dims)
        if conv and after == 1:
            return "through" if len(shape_out) == 4 else "flattened"  # [B, C]: one feature per channel
        if not conv and after == len(shape_out) - 1:
            return "through"
        return f"{name} ({user.name}) moves the node axis"
    return f"{user.op} {user.name} is not known to keep a dead node at zero on its axis"


def _known(user, modules) -> bool:
    import torch

    if user.op == "call_module":
        target = modules[user.target]
        return isinstance(target, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Flatten)) or \
            type(target).__name__ in ZERO_MODULES + POOL_MODULES
    if user.op in ("call_function", "call_method"):
        return _name(user) in ZERO_FUNCTIONS + POOL_FUNCTIONS + RESHAPES + REDUCTIONS
    return False


def _name(user) -> str:
    return getattr(user.target, "__name__", str(user.target)) if user.op == "call_function" else str(user.target)


def _reads_shape_only(user) -> bool:
    """`x.shape`, `x.size()`, `x.dim()`: reads of the value's shape, not of its numbers."""
    if user.op == "call_function" and user.target is getattr:
        return len(user.args) > 1 and user.args[1] in ("shape", "ndim", "dtype", "device")
    return user.op == "call_method" and user.target in ("size", "dim")


def _first_arg(user):
    return user.args[0] if user.args else user.kwargs.get("input")


def _dims(user, rank: int) -> set:
    dims = user.args[1] if len(user.args) > 1 else user.kwargs.get("dim")
    if dims is None:
        return set(range(rank))
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    return {d % rank for d in dims}


def _keepdim(user) -> bool:
    return bool(user.args[2] if len(user.args) > 2 else user.kwargs.get("keepdim", False))

