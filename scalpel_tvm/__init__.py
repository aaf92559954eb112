"""scalpel-tvm: hardware-aware pruning as an Apache TVM plugin.

`Pass(target)` rewrites pruned layers of a Relax module into node-shrunk dense and grouped-sparse
kernels; `plan(mod, target)` shows what it will do per layer and why.
"""
from .errors import ScalpelError
from .onnx_import import bind_weights, import_onnx
from .pipeline import Pass
from .planner import LayerPlan, Plan, plan
from .target import TargetSpec

__all__ = ["Pass", "plan", "bind_weights", "import_onnx", "Plan", "LayerPlan", "TargetSpec", "ScalpelError"]
