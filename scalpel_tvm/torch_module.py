"""A user's own `torch.nn.Module` for the pruning frontend, trained by the user's own loop.

`ModuleNet(module, example)` wraps a copy of the module (the user's object is never changed) and
gives it what `torch_chain`'s pruning helpers use: the prunable layers by name (every
`nn.Linear` and `nn.Conv2d` in call order, shapes read from one forward pass of `example`), their
weights, and node masks. A mask multiplies a layer's output before whatever follows it, so
folding β into the layer is exact for any activation; a removed node's weights and bias are
zeroed, and so are the consumer's inputs it fed where `module_graph` proves the consumer reads
it through ops that keep zero at zero (ReLU, GELU, pooling, a flatten, ...). Elsewhere they are
left alone and `consumers_unknown` says why: after a sigmoid or a BatchNorm a dead node feeds a
constant, which `scalpel_tvm.Pass` folds into the consumer's bias.

The user's `train(module, epochs)` runs each retraining, on the wrapper (it must build its
optimizer from the module it is handed, on every call). The frontend's part rides on a global
optimizer post-step hook (`torch.optim.optimizer.register_optimizer_step_post_hook`): after each
of the user's steps the masks' β take their own step (with the L1 penalty; β are hidden from
`parameters()`) and pruned weights are put back to zero, so the loop needs no changes.

A Linear may take inputs of any rank (`[batch, tokens, features]`, as in a transformer): its
nodes are its last axis, and the cost model prices it at `tokens` rows per item. Layers the
frontend cannot mask are left untouched and reported: grouped or dilated convolutions, non-zero
padding modes, a module called more than once.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from . import module_graph
from .errors import ScalpelError
from .fixed_point import Window


def _torch():
    from .torch_chain import _torch

    return _torch()


def read_module(module, example) -> tuple[list[dict], dict[str, str]]:
    """(layers as `int16_net.read_chain` gives them, {skipped module: why}) for the Linear and
    Conv2d modules `module` calls on `example`, in call order."""
    torch = _torch()
    nn = torch.nn
    calls, handles = [], []
    named = {m: name for name, m in module.named_modules()}
    for m in named:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            handles.append(m.register_forward_hook(lambda m, inputs, _out: calls.append((m, tuple(inputs[0].shape)))))
    try:
        with torch.no_grad():
            module.eval()
            module(example)
    finally:
        for handle in handles:
            handle.remove()
    layers, skipped, seen = [], {}, {}
    for m, shape in calls:
        seen[named[m]] = seen.get(named[m], 0) + 1
    for m, shape in calls:
        name = named[m]
        if name in skipped or any(layer["name"] == name for layer in layers):
            continue
        why = _unsupported(m, shape, seen[name])
        if why:
            skipped[name] = why
            continue
        w_nk = m.weight.detach().numpy().reshape(m.weight.shape[0], -1).astype(np.float32)
        window = None
        if isinstance(m, nn.Conv2d):
            (ph, pw), (sh, sw) = m.padding, m.stride
            window = Window.over(shape[1], shape[2], shape[3], *m.kernel_size, (sh, sw), (ph, pw, ph, pw))
        tokens = 1 if window else int(np.prod(shape[1:-1], dtype=np.int64))  # rows per item
        layers.append({"name": name, "op": "conv" if window else "fc", "w_nk": w_nk, "window": window,
                       "tokens": tokens})
    if not layers:
        raise ScalpelError("the module calls no nn.Linear or nn.Conv2d the frontend can prune"
                           + (f" (skipped: {', '.join(f'{n}: {w}' for n, w in skipped.items())})" if skipped else ""))
    return layers, skipped


def _unsupported(m, shape, calls: int) -> str:
    nn = _torch().nn
    if calls > 1:
        return "called more than once (shared weights)"
    if isinstance(m, nn.Linear):
        return "" if len(shape) >= 2 else "applied to a 1-D input (no batch dimension)"
    if m.groups != 1 or m.dilation != (1, 1):
        return "grouped or dilated convolution"
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        return f"padding {m.padding!r} / {m.padding_mode}: give explicit zero padding"
    return ""


def module_net(module, example):
    """A `ModuleNet` (module doc) around a copy of `module`, and the skipped layers."""
    import copy

    torch = _torch()
    own = copy.deepcopy(module)
    layers, skipped = read_module(own, example)
    found, unknown = module_graph.consumers(own, example, [layer["name"] for layer in layers])

    class ModuleNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = own
            self.names = [layer["name"] for layer in layers]
            self.beta = torch.nn.ParameterDict()
            self.removed, self.penalty_scale = {}, {}
            self.consumers_unknown = unknown  # layer -> why its consumer is not known (module doc)
            self._by_name = dict(own.named_modules())
            self._handles = [self._by_name[name].register_forward_hook(
                self._gate(name.replace(".", "_"), isinstance(self._by_name[name], torch.nn.Linear)))
                for name in self.names]

        def _gate(self, key, channels_last):
            def hook(_module, _inputs, out):
                if key not in self.beta:
                    return out
                beta = self.beta[key]
                gate = beta + (getattr(self, f"alpha_{key}") * beta - beta).detach()  # straight-through α
                # a Linear's nodes are its output's last axis (any rank), a conv's axis 1
                return out * (gate if channels_last else gate.reshape(1, -1, *([1] * (out.dim() - 2))))
            return hook

        def forward(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

        def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
            """The module's own parameters: the masks' β are trained by `constraints`."""
            hidden = f"{prefix}.beta." if prefix else "beta."
            for name, parameter in super().named_parameters(prefix, recurse, remove_duplicate):
                if not name.startswith(hidden):
                    yield name, parameter

        def module(self, name):
            return self._by_name[name]

        def weight(self, name):
            return self._by_name[name].weight

        def consumer(self, name):
            return found.get(name)

    return ModuleNet(), layers, skipped


@contextmanager
def constraints(net, masks: dict | None = None, penalty: float = 0.0, after_step=None, beta_lr: float = 1e-2):
    """While the user's loop trains `net`: after every step of its optimizer, the masks' β take
    a step of their own (Adam at `beta_lr` on their gradient plus the L1 `penalty`: β are hidden
    from `net.parameters()`, so the user's learning rate does not set how fast nodes go) and the
    pruning holds (`torch_chain.hold_masks`)."""
    torch = _torch()
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from .torch_chain import hold_masks

    tensors = {name: torch.from_numpy(np.asarray(m, np.float32)).reshape(net.weight(name).shape)
               for name, m in (masks or {}).items()}
    betas = {key: b for key, b in net.beta.items() if b.requires_grad}
    beta_optimizer = torch.optim.Adam(list(betas.values()), lr=beta_lr) if betas else None

    def after_users_step(optimizer, _args, _kwargs):
        if optimizer is beta_optimizer:
            return
        if beta_optimizer is not None:
            for key, beta in betas.items():
                if beta.grad is not None and penalty:
                    beta.grad += penalty * net.penalty_scale[key]
            beta_optimizer.step()
            beta_optimizer.zero_grad()
        hold_masks(net, tensors, after_step)

    hook = register_optimizer_step_post_hook(after_users_step)
    hold_masks(net, tensors)
    try:
        yield
    finally:
        hook.remove()


def unwrap(net):
    """The pruned module: the wrapper's copy with the masks folded (call after the masks are
    removed) and its hooks gone."""
    for handle in net._handles:
        handle.remove()
    return net.inner
