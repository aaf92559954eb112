"""`scalpel_tvm.Pass(target)`: the whole rewrite as one TVM pass.

Phases, in the style of MLC-LLM's pipeline: canonicalize (fold weight transposes, decompose
batch-norm), plan, shrink dead nodes, lower every layer to a scheduled kernel, clean up.
"""
from __future__ import annotations

import warnings

import tvm
from tvm import relax

from .passes.layer_graph import canonicalize
from .passes.lower_layers import LowerLayers
from .passes.shrink_nodes import ShrinkNodes
from .logs import resolve_log
from .planner import Plan, as_spec, check_plan_target, plan as make_plan


def Pass(target, *, plan: Plan | None = None, cost=None, logs=None,
         allow_dead_layers: bool = False, chain: bool = True):
    """The scalpel-tvm rewrite for `target` as a `tvm.transform.Pass`.

    `logs` is a tuning log directory written by `scalpel tune` (or a `TuningLog`); by default
    the log shipped for the target, `False` for none. Its records give each kernel its tuned
    schedule, and its cost model prices the candidates. Applies `plan` if given (e.g. one a user
    inspected or edited), else plans on the spot with `cost` (default: the log's model, or the
    analytical one). `chain` runs consecutive FC layers as one kernel call. The module's `main`
    must have its weights bound as constants and fixed input shapes.

    For a CUDA target (its `arch` named) every layer becomes a CUDA kernel (schedules/gpu.py),
    and `tvm.compile` is set up to build them with nvcc for that arch (scalpel_tvm/cuda.py),
    also on a machine with no GPU. A CUDA log (`python/tune_cuda.py`; shipped for sm_90, the
    H100) gives conv layers their measured-fastest tile settings; the plan's GPU cost model does
    not read it (a conv has one form on a GPU).
    """
    spec = as_spec(target)
    check_plan_target(spec)
    gpu_target = None
    if spec.parallelism == "high":
        from .cuda import enable_cuda_codegen

        gpu_target = spec.target
        enable_cuda_codegen(gpu_target)
    log = resolve_log(spec, logs)

    @tvm.transform.module_pass(opt_level=0, name="scalpel.Pass")
    def scalpel_pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod = canonicalize(mod)  # once: planning and shrinking then find it already canonical
        layer_plan = plan or make_plan(
            mod, spec, cost=cost, logs=log if log is not None else False,
            allow_dead_layers=allow_dead_layers)
        for op in layer_plan.untouched:
            warnings.warn(f"scalpel: left {op['op']} '{op['var']}' untouched: {op['reason']}",
                          stacklevel=2)
        shrunk = {lp.name for lp in layer_plan.layers if lp.removed_nodes}
        seq = tvm.transform.Sequential([
            ShrinkNodes(only=shrunk, allow_dead_layers=allow_dead_layers),
            LowerLayers(layer_plan.choices(), layer_plan.group, spec.lanes("float32"), chain, log,
                        gpu_target=gpu_target),
            relax.transform.DeadCodeElimination(),
        ])
        return seq(mod)

    return scalpel_pass


def compile(mod: tvm.IRModule, target) -> tvm.runtime.Executable:  # noqa: A001 (tvm.compile's name, on purpose)
    """`tvm.compile(mod, target)` for a module after `Pass`, with the Relax VM's own code
    compiled as well on a CPU: `relax.build(..., exec_mode="compiled")` turns each Relax
    function's bytecode into TIR compiled with the kernels, so a call skips the bytecode
    interpreter.

    The results are the same; what changes is the call around the kernels, which is a fair
    part of a µs-sized pruned model: on a 2-core znver5 the demo's pruned LeNet-300-100 at
    batch 1 takes 1.36 µs instead of 1.57 and its dense model 8.78 instead of 8.87
    (`python/bench_vm_call.py`). For a CUDA target (a kernel launch dwarfs the call) this is
    `tvm.compile`.
    """
    spec = as_spec(target)
    if spec.parallelism == "high":
        return tvm.compile(mod, target=spec.target)
    return relax.build(mod, target=spec.target, exec_mode="compiled")
