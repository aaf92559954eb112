"""scalpel-tvm: hardware-aware pruning as an Apache TVM plugin.

`Pass(target)` rewrites pruned layers of a Relax module into node-shrunk dense and grouped-sparse
kernels; `compile(mod, target)` builds the result with the Relax VM compiled too; `plan(mod,
target)` shows what the pass will do per layer and why; `prune(model, target, ...)` prunes a
model for the target with retraining.

The public names load on first use (PEP 562), so the submodules that need only TVM's runtime
(`scalpel_tvm.timing`, used to time a model built elsewhere on a GPU machine that has TVM's
runtime alone) import without TVM's compiler.
"""
from importlib import import_module

from .errors import ScalpelError

_LAZY = {
    "bind_weights": ".onnx_import", "import_onnx": ".onnx_import", "Pass": ".pipeline", "compile": ".pipeline",
    "LayerPlan": ".planner", "Plan": ".planner", "plan": ".planner", "TargetSpec": ".target",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def prune(model, target, *args, **kwargs):
    """The pruning frontend: an ONNX model and a data set (`pruning.prune_onnx(model, target,
    data, ...)`), or a `torch.nn.Module` with the user's own loop (`pruning.prune_module(module,
    target, train, evaluate, example, ...)`)."""
    import onnx

    from . import pruning

    if isinstance(model, onnx.ModelProto):
        return pruning.prune_onnx(model, target, *args, **kwargs)
    return pruning.prune_module(model, target, *args, **kwargs)


__all__ = ["Pass", "compile", "plan", "prune", "bind_weights", "import_onnx", "Plan", "LayerPlan", "TargetSpec", "ScalpelError"]
