"""The per-layer plan: which form each layer takes on a target, with the estimates behind it.

Node shrinking is exact and never slower, so every removable dead node is removed. Then each FC
layer, at its shrunk shape, is priced in every form the target's parallelism class allows (dense;
grouped-sparse G×1 and 1×G with G = the target's lanes; on GPUs dense and the warp-grouped G×1
kernel with G = 32) and takes the cheapest; conv layers stay dense (shrunk), as Scalpel
prescribes for moderate and high parallelism.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import tvm

from .cost import AnalyticalCost, KernelQuery
from .errors import ScalpelError
from .logs import resolve_log
from .passes.layer_graph import Layer, build_layer_graph, canonicalize, static_shape
from .passes.lower_layers import chained_runs
from .passes.shrink_nodes import analyze_shrink, shrunk_weights
from .schedules.grouped_sparse import group_sparsity
from .target import TargetSpec


@dataclass
class Candidate:
    form: str
    seconds: float
    source: str  # where the estimate came from: "log", "model", "analytical" or "measured"
    weight_bytes: int  # the layer's weight in this form (values, indices, pointers)
    macs: int  # multiply-accumulates actually executed, whole batch


@dataclass
class LayerPlan:
    name: str
    kind: str  # "fc" | "conv"
    shape: tuple  # weight shape as the model has it (FC: [K, N], conv: OIHW)
    shrunk_shape: tuple
    batch: int  # rows per kernel call: the batch, times the leading dims of a token-wise FC input
    density: float  # non-zero weights / weights, before shrinking
    dead_nodes: int
    removed_nodes: int
    shrink_reason: str
    group_sparsity: dict  # orientation -> fraction of all-zero aligned groups (shrunk weight)
    candidates: list[Candidate] = field(default_factory=list)
    chosen: str = "dense"
    reason: str = ""
    kernel: str = ""  # the kernel function's name in the compiled module

    def candidate(self, form: str) -> Candidate:
        return next(c for c in self.candidates if c.form == form)

    @property
    def chosen_seconds(self) -> float:
        """The chosen form's estimate; NaN for a form set by hand that the cost model has no price for."""
        priced = [c for c in self.candidates if c.form == self.chosen]
        return priced[0].seconds if priced else math.nan

    @property
    def dense_seconds(self) -> float:
        return self.candidate("dense").seconds


@dataclass
class Plan:
    target: str
    group: int
    layers: list[LayerPlan]
    untouched: list[dict]  # ops left as they are, with the reason
    chains: list[list[str]] = field(default_factory=list)  # layers that run as one kernel call

    def choices(self) -> dict[str, tuple[str, str]]:
        return {layer.name: (layer.chosen, layer.kernel) for layer in self.layers}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=_json_default)

    def with_forms(self, forms: dict[str, str]) -> Plan:
        """A copy of the plan with the layers named in `forms` compiled in the form given there
        rather than the one the cost model picked: to deploy a model as another tool would (a
        traditionally pruned model in CSR), or to time a form the model did not choose. FC layers
        take "dense", "gsparse_gx1", "gsparse_1xg" (not on CUDA) and "csr"; conv layers have
        only "dense" here (node shrinking is exact, so it stays)."""
        layers = {lp.name: lp for lp in self.layers}
        unknown = sorted(set(forms) - set(layers))
        if unknown:
            raise ScalpelError(f"the plan has no layer {', '.join(unknown)}; its layers: {', '.join(layers)}")
        fc_forms = FC_FORMS if as_spec(self.target).parallelism != "high" else ("dense", "gsparse_gx1", "csr")
        plan = copy.deepcopy(self)
        for lp in plan.layers:
            form = forms.get(lp.name, lp.chosen)
            allowed = fc_forms if lp.kind == "fc" else ("dense",)
            if form not in allowed:
                raise ScalpelError(f"layer {lp.name} ({lp.kind}) cannot be compiled as {form!r} for "
                                   f"{self.target}; its forms: {', '.join(allowed)}")
            if form != lp.chosen:
                lp.chosen, lp.reason = form, "form set by hand (Plan.with_forms)"
                lp.kernel = _kernel_name(lp, form, self.group)
        return plan

    def table(self) -> str:
        """The plan as a text table, one line per layer, then what was left untouched."""
        head = (f"{'layer':<7}{'weight':>14}{'batch':>6}{'density':>9}{'dead':>7}{'removed':>8}"
                f"{'grp-sp':>8}  {'chosen':<13}{'est us':>8}{'dense us':>9}  kernel / reason")
        lines = [f"plan for {self.target} (G = {self.group})", head, "-" * len(head)]
        for lp in self.layers:
            gsp = max(lp.group_sparsity.values()) if lp.group_sparsity else 0.0
            lines.append(
                f"{lp.name:<7}{'x'.join(map(str, lp.shape)):>14}{lp.batch:>6}{lp.density:>9.1%}"
                f"{lp.dead_nodes:>7}{lp.removed_nodes:>8}{gsp:>8.1%}  {lp.chosen:<13}"
                f"{lp.chosen_seconds * 1e6:>8.2f}{lp.dense_seconds * 1e6:>9.2f}  {lp.kernel}")
            lines.append(f"{'':<7}shrink: {lp.shrink_reason}; form: {lp.reason}")
            lines.append(f"{'':<7}candidates: " + ", ".join(
                f"{c.form} {c.seconds * 1e6:.2f} us ({c.source})" for c in lp.candidates))
        for chain in self.chains:
            lines.append(f"one kernel call: {' -> '.join(chain)}")
        for op in self.untouched:
            lines.append(f"untouched {op['var']} ({op['op']}): {op['reason']}")
        return "\n".join(lines)


FC_FORMS = ("dense", "gsparse_gx1", "gsparse_1xg", "csr")


def _kernel_name(lp: LayerPlan, form: str, group: int) -> str:
    """The name that says what a layer's kernel is: `fc1_shrunk_38of50_gsparse_g8x1`, `conv2_dense`."""
    out = 1 if lp.kind == "fc" else 0
    shrunk = f"_shrunk_{lp.shrunk_shape[out]}of{lp.shape[out]}" if lp.removed_nodes else ""
    if form == "dense":
        return f"{lp.name}{shrunk or '_dense'}"
    if form == "csr":
        return f"{lp.name}{shrunk}_csr"
    tag = f"g{group}x1" if form.endswith("gx1") else f"g1x{group}"
    return f"{lp.name}{shrunk}_gsparse_{tag}"


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value)}")


def plan(mod: tvm.IRModule, target, *, cost=None, logs=None,
         allow_dead_layers: bool = False) -> Plan:
    """Decide every layer's form for `target` (a TargetSpec, a preset name or a tvm Target).

    `cost` is a cost model with `estimate(KernelQuery, weights)`. By default it is the model of
    the tuning log `logs` (a directory, a TuningLog, or by default the log shipped for the
    target; `False` for none), else the analytical roofline.
    """
    spec = as_spec(target)
    if cost is None:
        cost = default_cost(spec, logs)
    graph = build_layer_graph(canonicalize(mod)["main"])
    decisions = analyze_shrink(graph, allow_dead_layers)
    weights = shrunk_weights(decisions)
    group = spec.lanes("float32")
    layers = []
    for layer in graph.layers:
        decision = decisions[layer.name]
        weight = weights[layer.name]
        lp = LayerPlan(
            name=layer.name, kind=layer.kind, shape=tuple(layer.weight.shape),
            shrunk_shape=tuple(weight.shape), batch=layer.rows,
            density=float(np.count_nonzero(layer.weight) / max(layer.weight.size, 1)),
            dead_nodes=int(decision.dead.size), removed_nodes=int(decision.removed.size),
            shrink_reason=decision.reason, group_sparsity={})
        _price(lp, layer, weight, spec, cost, group)
        layers.append(lp)
    untouched = [{"var": u.var_name, "op": u.op, "reason": u.reason} for u in graph.untouched]
    chains = [] if spec.parallelism == "high" else [
        [layer.name for layer in run] for run in chained_runs(graph.layers)]
    return Plan(spec.name, group, layers, untouched, chains)


def default_cost(spec: TargetSpec, logs=None):
    """The planner's cost model for `spec`: on CUDA the GPU roofline fitted to a GPU sweep;
    elsewhere the tuning log's model where a log exists, else the analytical roofline."""
    if spec.parallelism == "high":
        from .gpu_cost import GpuCost

        return GpuCost(spec)
    from .tuned_cost import log_cost  # late: the model pulls in xgboost

    log = resolve_log(spec, logs)
    return log_cost(spec, log) if log is not None else AnalyticalCost(spec)


def as_spec(target) -> TargetSpec:
    if isinstance(target, TargetSpec):
        return target
    if isinstance(target, str):
        return TargetSpec.preset(target)
    return TargetSpec.from_target(target)


def _price(lp: LayerPlan, layer: Layer, weight: np.ndarray, spec: TargetSpec, cost, group: int):
    """Fill in candidates, the chosen form, its reason and the kernel name."""
    if layer.kind == "conv":
        o, i, kh, kw = weight.shape
        out = static_shape(layer.var)
        query = KernelQuery("conv", "dense", lp.batch, i * kh * kw, o, pixels=out[2] * out[3])
        lp.candidates.append(_ask(cost, query, None))
        device = "GPUs" if spec.parallelism == "high" else "CPUs"
        lp.reason = f"conv layers stay dense on {device} (node pruning only)"
        lp.kernel = _kernel_name(lp, "dense", group)
        return
    k, n = weight.shape
    lp.candidates.append(_ask(cost, KernelQuery("fc", "dense", lp.batch, k, n), weight))
    orientations = ("gx1",) if spec.parallelism == "high" else ("gx1", "1xg")
    if group > 1:
        for orientation in orientations:
            sparsity = group_sparsity(weight, group, orientation)
            lp.group_sparsity[orientation] = sparsity
            if sparsity == 0:
                continue
            blocks, span = (n, k) if orientation == "1xg" else (k, n)
            groups = round(blocks * -(-span // group) * (1 - sparsity))
            query = KernelQuery("fc", f"gsparse_{orientation}", lp.batch, k, n, group=group, groups=groups)
            lp.candidates.append(_ask(cost, query, weight))
    best = min(lp.candidates, key=lambda c: c.seconds)
    lp.chosen = best.form
    dense = lp.dense_seconds
    if best.form == "dense":
        lp.reason = (f"no all-zero groups of {group}" if len(lp.candidates) == 1
                     else "dense is predicted fastest at this group sparsity")
    else:
        lp.reason = f"{best.form} predicted {dense / best.seconds:.1f}x faster than dense"
    lp.kernel = _kernel_name(lp, best.form, group)


def _ask(cost, query: KernelQuery, weight) -> Candidate:
    estimate = cost.estimate(query, weight)
    return Candidate(query.form, estimate.seconds, estimate.source, query.weight_bytes, query.macs)


def check_plan_target(spec: TargetSpec) -> None:
    if spec.parallelism == "low":
        raise ScalpelError(
            f"compiling for {spec.name} is not supported yet (x86: x86-avx2, x86-avx512, host; "
            "CUDA: cuda); Cortex-M deployment is a separate issue")
