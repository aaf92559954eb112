"""scalpel-tvm: hardware-aware pruning as an Apache TVM plugin.

`Pass(target)` rewrites pruned layers of a Relax module into node-shrunk dense and grouped-sparse
kernels; `plan(mod, target)` shows what it will do per layer and why; `prune(model, target, ...)`
prunes a model for the target with retraining.
"""
from .errors import ScalpelError
from .onnx_import import bind_weights, import_onnx
from .pipeline import Pass
from .planner import LayerPlan, Plan, plan
from .target import TargetSpec



def prune(model, target, *args, **kwargs):
    """The pruning frontend: an ONNX model and a data set (`pruning.prune_onnx(model, target,
    data, ...)`), or a `torch.nn.Module` with the user's own loop (`pruning.prune_module(module,
    target, train, evaluate, example, ...)`)."""
    import onnx

    from . import pruning

    if isinstance(model, onnx.ModelProto):
        return pruning.prune_onnx(model, target, *args, **kwargs)
    return pruning.prune_module(model, target, *args, **kwargs)


__all__ = ["Pass", "plan", "prune", "bind_weights", "import_onnx", "Plan", "LayerPlan", "TargetSpec", "ScalpelError"]
