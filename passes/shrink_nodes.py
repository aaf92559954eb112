"""ShrinkNodes: remove dead neurons / filters together with the consumer's matching inputs.

A neuron (FC output column, conv filter) whose weights are all zero outputs 0 before its bias;
the chain after it (bias add, batch-norm arithmetic, activation, pooling) turns that into a
constant c. Removing it is exact when the consumer sees c as a constant: for an FC consumer, c times
the consumer's weight rows is added to the consumer's bias; for a conv consumer the same holds only
without zero padding (at padded borders the window sees fewer copies of c), so a non-zero c in
front of a padded conv keeps the neuron. Model inputs and outputs never change shape: a layer whose
output is the model's output, or feeds more than one op, is not shrunk.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from scalpel_tvm.errors import ScalpelError

from .layer_graph import (BINARY_OPS, UNARY_OPS, Layer, LayerGraph, build_layer_graph,
                          canonicalize, constant_operand, op_name, reduced_axes, static_shape)


@dataclass
class ShrinkDecision:
    """What node shrinking does to one layer's outputs."""

    layer: Layer
    dead: np.ndarray  # output channels with all-zero weights
    removed: np.ndarray  # the dead channels actually removed
    keep: np.ndarray  # output channels kept, ascending
    reason: str  # why dead channels are kept, or what was done
    fold: np.ndarray | None = None  # added to the consumer's output (per consumer channel)


def analyze_shrink(graph: LayerGraph, allow_dead_layers: bool = False,
                   only: set[str] | None = None) -> dict[str, ShrinkDecision]:
    """Decide, per layer, which dead output channels can be removed exactly."""
    decisions = {}
    for layer in graph.layers:
        dead = layer.dead_channels()
        if dead.size == layer.out_channels and not allow_dead_layers:
            raise ScalpelError(
                f"layer {layer.name} has all {layer.out_channels} output channels pruned "
                "(all weights zero): the model's output no longer depends on its input "
                "through it. Keep at least one neuron per layer, or pass "
                "allow_dead_layers=True to compile it unshrunk.")
        decisions[layer.name] = _decide(layer, dead, only)
    return decisions


def _decide(layer: Layer, dead: np.ndarray, only) -> ShrinkDecision:
    all_channels = np.arange(layer.out_channels)
    keep_all = ShrinkDecision(layer, dead, np.array([], dtype=np.int64), all_channels, "")
    if dead.size == 0:
        keep_all.reason = "no dead nodes"
        return keep_all
    if only is not None and layer.name not in only:
        keep_all.reason = "not selected for node shrinking by the plan"
        return keep_all
    if dead.size == layer.out_channels:
        keep_all.reason = "every node is dead; kept so the consumer's shapes stay valid"
        return keep_all
    if layer.consumer is None:
        keep_all.reason = f"dead nodes kept: {layer.stop_reason}"
        return keep_all

    values = dead_values(layer)
    removable = dead[np.isfinite(values[dead])]
    consumer = layer.consumer
    kept = []
    if removable.size < dead.size:
        kept.append(f"{dead.size - removable.size} dead nodes kept: what they pass on is not "
                    "one finite constant")
    if consumer.kind == "conv" and any(int(p) for p in consumer.call.attrs.padding):
        zero = removable[values[removable] == 0]
        if zero.size < removable.size:
            kept.append(f"{removable.size - zero.size} dead nodes kept: their constant output "
                        f"reaches the zero-padded {consumer.name}, where it is not a bias")
        removable = zero
    reason = "; ".join([f"{removable.size} dead nodes removed", *kept])
    if removable.size == 0:
        keep_all.reason = reason
        return keep_all
    keep = np.setdiff1d(all_channels, removable)
    fold = _fold_into_consumer(layer, values, removable)
    return ShrinkDecision(layer, dead, removable, keep, reason, fold)


def dead_values(layer: Layer) -> np.ndarray:
    """Per output channel: the value a dead channel has when it reaches the consumer."""
    values = np.zeros(layer.out_channels, dtype=np.float64)
    with np.errstate(all="ignore"):
        for op in layer.chain:
            name = op_name(op.call)
            if name in UNARY_OPS:
                values = UNARY_OPS[name](values)
            elif name in BINARY_OPS:
                position, k = constant_operand(op.call)
                k = channel_vector(k, layer.out_channels, op.multiplicity)
                args = (values, k) if position == 1 else (k, values)
                values = BINARY_OPS[name](*args)
            elif name == "relax.sum":  # mean, max and min of a constant are the constant
                shape = static_shape(op.call.args[0])
                values = values * np.prod([shape[a] for a in reduced_axes(op.call, len(shape))])
    return values


def channel_vector(k: np.ndarray, channels: int, multiplicity: int) -> np.ndarray:
    """A per-channel (or per-feature after a flatten) constant as one value per layer channel.

    After a flatten, a channel spans `multiplicity` features, which may carry different constants;
    a dead channel is then constant only if they agree, so NaN marks the ones that do not.
    """
    flat = np.asarray(k, dtype=np.float64).reshape(-1)
    if flat.size == 1:
        return np.full(channels, flat[0])
    per_channel = flat.reshape(channels, multiplicity)
    uniform = np.all(per_channel == per_channel[:, :1], axis=1)
    return np.where(uniform, per_channel[:, 0], np.nan)


def _fold_into_consumer(layer: Layer, values: np.ndarray, removed: np.ndarray) -> np.ndarray | None:
    if not np.any(values[removed]):
        return None
    consumer = layer.consumer
    w = consumer.weight
    if consumer.kind == "fc":
        m = w.shape[0] // layer.out_channels
        rows = w.reshape(layer.out_channels, m, w.shape[1])[removed]  # [dead, m, N]
        return np.einsum("d,dmn->n", values[removed], rows.astype(np.float64))
    window_sums = w[:, removed].astype(np.float64).sum(axis=(2, 3))  # [O, dead]
    return window_sums @ values[removed]


def shrunk_weights(decisions: dict[str, ShrinkDecision]) -> dict[str, np.ndarray]:
    """Each layer's weight after shrinking: its kept outputs, and the inputs its producer kept."""
    kept_rows = {}
    for decision in decisions.values():
        if decision.removed.size:
            producer, consumer = decision.layer, decision.layer.consumer
            kept_rows[consumer.name] = feature_index(
                decision.keep, consumer.in_channels // producer.out_channels)
    weights = {}
    for name, decision in decisions.items():
        layer = decision.layer
        out_axis, in_axis = (1, 0) if layer.kind == "fc" else (0, 1)
        weight = np.take(layer.weight, decision.keep, axis=out_axis)
        if name in kept_rows:
            weight = np.take(weight, kept_rows[name], axis=in_axis)
        weights[name] = np.ascontiguousarray(weight)
    return weights


def feature_index(channels: np.ndarray, multiplicity: int) -> np.ndarray:
    """Feature indices of `channels` after a flatten that gives each channel `multiplicity`."""
    return (channels[:, None] * multiplicity + np.arange(multiplicity)).reshape(-1)


@tvm.transform.module_pass(opt_level=0, name="scalpel.ShrinkNodes")
class ShrinkNodes:
    """Remove dead neurons and filters (see the module docstring for when that is exact).

    `only` restricts shrinking to the named layers (a plan's choice); `allow_dead_layers` compiles
    a layer whose every node is dead unshrunk instead of refusing it.
    """

    def __init__(self, only: set[str] | None = None, allow_dead_layers: bool = False):
        self.only = only
        self.allow_dead_layers = allow_dead_layers

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod = canonicalize(mod)
        graph = build_layer_graph(mod["main"])
        decisions = analyze_shrink(graph, self.allow_dead_layers, self.only)
        edits, folds = _edits(decisions)
        if not edits:
            return mod
        rewriter = _Rewriter(mod, edits, folds)
        rewriter.builder_.update_func(mod.get_global_var("main"), rewriter.visit_expr(mod["main"]))
        return relax.transform.DeadCodeElimination()(rewriter.builder_.get())


def _edits(decisions: dict[str, ShrinkDecision]):
    """Per binding var, the edits node shrinking makes, each `(new_call, original_call) -> call`;
    and per consumer var, a constant to add after it when it has no bias add to fold into."""
    edits, folds = {}, {}

    def edit(var, fn):
        edits.setdefault(var, []).append(fn)

    for decision, weight in zip(decisions.values(), shrunk_weights(decisions).values()):
        if weight.shape != decision.layer.weight.shape:
            edit(decision.layer.var, lambda call, _, w=weight: _with_weight(call, w))
    for decision in decisions.values():
        if decision.removed.size == 0:
            continue
        layer, keep = decision.layer, decision.keep
        for op in layer.chain:
            index = feature_index(keep, op.multiplicity)
            if op_name(op.call) in BINARY_OPS:
                edit(op.var, lambda call, orig, i=index, kind=layer.kind:
                     _slice_constant_operand(call, orig, i, kind))
            elif op_name(op.call) == "relax.reshape":
                edit(op.var, lambda call, orig, n=index.size:
                     relax.op.reshape(call.args[0], (int(orig.ty.shape[0]), n)))
        consumer = layer.consumer
        if decision.fold is None:
            continue
        first = consumer.chain[0] if consumer.chain else None
        if first is not None and op_name(first.call) == "relax.add" and first.multiplicity == 1:
            # Registered after the consumer's own weight edit but before the slicing of its bias
            # (layers are visited in order), so the fold is added at full width, then sliced.
            edit(first.var, lambda call, orig, f=decision.fold, kind=consumer.kind:
                 _add_to_constant(call, orig, f, kind))
        else:
            kept_by_consumer = decisions[consumer.name].keep
            fold = decision.fold[kept_by_consumer]
            shape = (fold.size,) if consumer.kind == "fc" else (1, fold.size, 1, 1)
            folds[consumer.var] = relax.const(fold.reshape(shape).astype(np.float32))
    return edits, folds


def _with_weight(call: relax.Call, weight: np.ndarray) -> relax.Call:
    return relax.Call(call.op, [call.args[0], relax.const(weight)], call.attrs)


def _slice_constant_operand(call: relax.Call, orig: relax.Call, index: np.ndarray, kind: str) -> relax.Call:
    """Keep the `index` channels of a per-channel constant: along the last axis after an FC
    layer, axis 1 after a conv (k broadcasts from the right, so that is k's own axis below)."""
    args = list(call.args)
    pos, k = constant_operand(call)
    axis = k.ndim - 1 if kind == "fc" else k.ndim - (len(orig.ty.shape) - 1)
    if k.ndim > 0 and 0 <= axis < k.ndim and k.shape[axis] > 1:
        args[pos] = relax.const(np.ascontiguousarray(np.take(k, index, axis=axis)))
    return relax.Call(call.op, args, call.attrs)


def _add_to_constant(call: relax.Call, orig: relax.Call, fold: np.ndarray, kind: str) -> relax.Call:
    args = list(call.args)
    pos, k = constant_operand(call)
    shape = (fold.size,) if kind == "fc" else (fold.size, 1, 1)
    merged = np.broadcast_to(k, np.broadcast_shapes(k.shape, shape)) + fold.reshape(shape)
    args[pos] = relax.const(merged.astype(k.dtype))
    return relax.Call(call.op, args, call.attrs)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    """Re-emit the main function with the edited bindings; shapes are re-inferred on emit."""

    def __init__(self, mod, edits, folds):
        super().__init__(mod)
        self.edits = edits
        self.folds = folds

    def visit_var_binding_(self, binding):
        fns = self.edits.get(binding.var)
        if fns is None:
            return super().visit_var_binding_(binding)
        orig = binding.value
        # Arguments are remapped but the call is not normalized yet: its old shape may no longer
        # be consistent with the shrunk inputs until the edits are applied.
        value = relax.Call(orig.op, [self.visit_expr(a) for a in orig.args], orig.attrs,
                           orig.ty_args)
        for fn in fns:
            value = fn(value, orig)
        name = binding.var.name
        if binding.var in self.folds:
            value = relax.op.add(self.builder_.emit(value, name_hint=name), self.folds[binding.var])
        if isinstance(binding.var, relax.DataflowVar):
            new_var = self.builder_.emit(value, name_hint=name)
        else:
            new_var = self.builder_.emit_output(value, name_hint=name)
        self.set_var_remap(binding.var, new_var)
