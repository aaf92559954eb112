"""LowerLayers: replace every FC / conv layer with a `call_tir` to a scheduled kernel.

TVM's default CPU pipeline leaves `matmul` and `conv2d` as naive loops, so every layer with a
constant weight becomes a call to one of scalpel-tvm's kernel templates — dense (which is also the
node-shrunk form: the same template at the smaller shape) or grouped-sparse — with the layer's bias
add and ReLU fused into the kernel's epilogue. The form per layer comes from the plan; the kernel
function is named after the layer and its form (`fc1_gsparse_g8x1`, `conv2_shrunk_38of50`).
Consecutive FC layers with nothing but their epilogues between them run as one kernel call
(`fc1_gsparse_g8x1__fc2_gsparse_g8x1__fc3_gsparse_g8x1`), since at batch 1 the VM's per-call cost is
comparable to a pruned layer's work. An FC layer whose input has more than two dimensions
(`[B, S, K]`) runs as the kernel of its `[B*S, K]` rows between two reshapes, which are free.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from scalpel_tvm.schedules.chain import chain_kernels
from scalpel_tvm.schedules.conv2d import conv2d_nchw, pack_conv_weight
from scalpel_tvm.schedules.csr import CSRWeight, csr_fc
from scalpel_tvm.schedules.fc import dense_fc, pack_dense_weight
from scalpel_tvm.schedules.grouped_sparse import GroupedSparseWeight, grouped_sparse_fc
from scalpel_tvm.schedules import gpu

from .layer_graph import Layer, build_layer_graph, constant_operand, op_name, static_shape
from .shrink_nodes import channel_vector


def fc_kernel(form: str, w_kn: np.ndarray, batch: int, group: int, *, bias: bool,
              activation: str | None, name: str, lanes: int = 8, log=None):
    """The PrimFunc for an FC layer in `form`, and the constant arguments it takes before
    the bias (dense: the weight packed to `lanes`; sparse: indptr, indices, values).

    With a tuning `log`, the kernel is the fastest one logged for this workload (a
    meta_schedule schedule or the template's best knobs); otherwise the template's defaults.
    """
    from scalpel_tvm.logs import tuned_kernel  # late: logs pull in meta_schedule
    from scalpel_tvm.workloads import Workload

    k, n = w_kn.shape
    if form == "dense":
        workload = Workload("dense", batch, k, n, lanes, 0, bias, activation)
        prim = tuned_kernel(log, workload, name) or dense_fc(
            batch, k, n, bias=bias, activation=activation, lanes=lanes, name=name)
        return prim, [pack_dense_weight(w_kn, lanes)]
    if form in ("gsparse_gx1", "gsparse_1xg"):
        weight = GroupedSparseWeight.from_dense(w_kn, group, form.split("_")[1])
        # A weight with no groups left (every input dead) is no tuning workload; its kernel
        # only writes the epilogue.
        tuned = weight.n_groups and tuned_kernel(
            log, Workload(form, batch, k, n, group, weight.n_groups, bias, activation), name)
        prim = tuned or grouped_sparse_fc(weight, batch, bias=bias, activation=activation, name=name)
    elif form == "csr":
        weight = CSRWeight.from_dense(w_kn)
        prim = csr_fc(weight, batch, bias=bias, activation=activation, name=name)
    else:
        raise ValueError(f"unknown FC form {form!r}")
    return prim, [weight.indptr, weight.indices, weight.values]


def conv_kernel(w_oihw: np.ndarray, x_shape, attrs, *, bias: bool, activation: str | None,
                lanes: int, name: str, log=None):
    """The PrimFunc for a conv layer (dense or shrunk) and its weight: the template with the
    best logged knobs of this conv when a tuning `log` has them (weight packed for them), or a
    meta_schedule schedule when one of those measured fastest (weight as OIHW)."""
    from scalpel_tvm.logs import scheduled_kernel  # late: logs pull in meta_schedule
    from scalpel_tvm.workloads import ConvWorkload  # late: workloads pull in the cost models

    batch, channels, height, width = x_shape
    geometry = dict(strides=tuple(int(s) for s in attrs.strides),
                    padding=tuple(int(p) for p in attrs.padding),
                    dilation=tuple(int(d) for d in attrs.dilation))
    workload = ConvWorkload(batch, channels, height, width, w_oihw.shape[0],
                            tuple(w_oihw.shape[2:]), **geometry, lanes=lanes, bias=bias,
                            activation=activation)
    best = log.best(workload) if log is not None else None
    if best is not None and best.knobs is None:
        return scheduled_kernel(best, workload, name), [w_oihw]
    knobs = (log.best_knobs(workload) if log is not None else None) or {}
    prim = conv2d_nchw(
        batch, channels, height, width, w_oihw.shape[0], tuple(w_oihw.shape[2:]), **geometry,
        bias=bias, activation=activation, lanes=lanes, name=name, **knobs)
    return prim, [pack_conv_weight(w_oihw, lanes=lanes, **knobs)]


def _nonempty(array: np.ndarray) -> np.ndarray:
    """A weight with nothing left still passes one (unread) element: TIR buffers are never empty."""
    return array if array.size else np.zeros(1, array.dtype)


def gpu_fc_kernel(form: str, w_kn: np.ndarray, batch: int, target, *, bias: bool,
                  activation: str | None, name: str):
    """The CUDA PrimFunc for an FC layer in `form` and its constant arguments before the bias:
    dense (node-shrunk or not) takes the weight as [N, K] at batch 1 (dlight's GEMV) and packed
    for the register-tiled kernel above; grouped-sparse (G×1, a warp of 32) and CSR take
    indptr, indices and values."""
    k, n = w_kn.shape
    if form == "dense" and batch == 1:
        prim = gpu.gpu_dense_fc(batch, k, n, target, bias=bias, activation=activation, name=name)
        return prim, [np.ascontiguousarray(w_kn.T)]
    if form == "dense":
        prim = gpu.gpu_warp_dense_fc(batch, k, n, bias=bias, activation=activation, name=name)
        return prim, [gpu.pack_warp_dense_weight(w_kn)]
    if form == "gsparse_gx1":
        weight = GroupedSparseWeight.from_dense(w_kn, gpu.WARP, "gx1")
        prim = gpu.gpu_grouped_sparse_fc(weight, batch, bias=bias, activation=activation, name=name)
    elif form == "csr":
        weight = CSRWeight.from_dense(w_kn)
        prim = gpu.gpu_csr_fc(weight, batch, bias=bias, activation=activation, name=name)
    else:
        raise ValueError(f"FC form {form!r} has no CUDA kernel (dense, gsparse_gx1, csr)")
    return prim, [weight.indptr, _nonempty(weight.indices), _nonempty(weight.values)]


def gpu_conv_kernel(form: str, w_oihw: np.ndarray, x_shape, attrs, target, *, bias: bool,
                    activation: str | None, name: str, log=None, lanes: int = 32):
    """The CUDA PrimFunc for a conv layer (dense or shrunk; CSR for traditional pruning), with
    the fastest tile settings a tuning `log` holds for its shape (`python/tune_cuda.py`)."""
    geometry = dict(strides=tuple(int(s) for s in attrs.strides),
                    padding=tuple(int(p) for p in attrs.padding),
                    dilation=tuple(int(d) for d in attrs.dilation))
    if form == "csr":
        prim, (indptr, indices, values) = gpu.gpu_csr_conv2d(
            w_oihw, x_shape, **geometry, bias=bias, activation=activation, name=name)
        return prim, [indptr, _nonempty(indices), _nonempty(values)]
    if form != "dense":
        raise ValueError(f"conv form {form!r} has no CUDA kernel (dense, csr)")
    config = None
    if log is not None:
        from scalpel_tvm.workloads import ConvWorkload  # late: workloads pull in the cost models

        config = log.best_knobs(ConvWorkload(*x_shape, w_oihw.shape[0], tuple(w_oihw.shape[2:]), **geometry,
                                             lanes=lanes, bias=bias, activation=activation))
    prim = gpu.gpu_conv2d(*x_shape, w_oihw.shape[0], tuple(w_oihw.shape[2:]), target, **geometry,
                          bias=bias, activation=activation, name=name, config=config)
    return prim, [np.ascontiguousarray(w_oihw, dtype="float32")]


def fused_epilogue(layer: Layer):
    """The per-channel affine ops and ReLU (an FC layer's GELU too) that directly follow `layer`,
    as one epilogue.

    Bias adds and inference batch-norm (decomposed into subtract/divide/multiply/add by
    constants) compose into `scale * z + shift`; the scale is folded into the layer's weight (the
    layer is linear in it) and the shift becomes the kernel's bias. Returns (scale or None,
    shift or None, "relu" / "gelu" / "gelu_tanh" or None, the chain bindings the kernel replaces).
    """
    n = layer.out_channels
    scale, shift, fused = np.ones(n), np.zeros(n), []
    for op in layer.chain:
        name = op_name(op.call)
        if op.multiplicity != 1 or name not in ("relax.add", "relax.subtract", "relax.multiply", "relax.divide"):
            break
        position, k = constant_operand(op.call)
        data_first = position == 1
        k = channel_vector(k, n, 1)
        if name == "relax.add":
            shift = shift + k
        elif name == "relax.subtract":
            scale, shift = (scale, shift - k) if data_first else (-scale, k - shift)
        elif name == "relax.multiply":
            scale, shift = scale * k, shift * k
        elif data_first:  # divide by a constant; a constant divided by the data is not affine
            scale, shift = scale / k, shift / k
        else:
            break
        fused.append(op.var)
    activation = None
    fusable = {"relax.nn.relu": "relu"}
    if layer.kind == "fc":
        fusable.update({"relax.nn.gelu": "gelu", "relax.nn.gelu_tanh": "gelu_tanh"})
    if len(layer.chain) > len(fused) and op_name(layer.chain[len(fused)].call) in fusable:
        activation = fusable[op_name(layer.chain[len(fused)].call)]
        fused.append(layer.chain[len(fused)].var)
    if not np.all(np.isfinite(scale)) or not np.all(np.isfinite(shift)):
        return None, None, None, []  # e.g. a zero batch-norm variance: leave it to TVM's ops
    affine_ops = len(fused) - (activation is not None)
    return (None if np.all(scale == 1) else scale.astype("float32"),
            shift.astype("float32") if affine_ops else None, activation, fused)


def chained_runs(layers: list[Layer]) -> list[list[Layer]]:
    """Runs of two or more FC layers that can execute as one kernel call: each layer's output,
    after its fused epilogue, is exactly the next layer's input.

    Only at batch 1, where the per-call cost is comparable to a pruned layer's work; at batch 50
    chained LeNet-300-100 measured slower (54 vs 43 µs), the calls being a small share there.
    """
    runs, current = [], []
    for layer in layers:
        if current and _feeds_directly(current[-1], layer):
            current.append(layer)
            continue
        if len(current) > 1:
            runs.append(current)
        current = [layer] if layer.kind == "fc" and static_shape(layer.var)[:-1] == (1,) else []
    if len(current) > 1:
        runs.append(current)
    return runs


def _feeds_directly(producer: Layer, consumer: Layer) -> bool:
    fused = fused_epilogue(producer)[3]
    return (consumer.kind == "fc" and producer.consumer is consumer
            and len(fused) == len(producer.chain))


@tvm.transform.module_pass(opt_level=0, name="scalpel.LowerLayers")
class LowerLayers:
    """Lower each layer to a scheduled kernel.

    `choices` maps a layer name to (form, kernel name); layers it does not name are lowered dense.
    `group` is the group width G of the grouped-sparse forms and `lanes` the vector width
    the dense FC and conv weights are packed to.
    With `chain`, consecutive FC layers run as one kernel call (see schedules/chain.py). With a
    tuning `log` (scalpel_tvm.logs.TuningLog), kernels take the fastest logged schedule.
    With a CUDA `gpu_target`, the kernels are the CUDA ones of schedules/gpu.py (one call per
    layer: a GPU's launch cost is small next to a layer's work at the batch sizes it serves).
    The module must already be canonical (the ShrinkNodes pass leaves it so).
    """

    def __init__(self, choices: dict[str, tuple[str, str]], group: int, lanes: int,
                 chain: bool = True, log=None, gpu_target=None):
        self.choices = choices
        self.gpu_target = gpu_target
        self.group = group
        self.lanes = lanes
        self.chain = chain
        self.log = log

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        graph = build_layer_graph(mod["main"])
        runs = chained_runs(graph.layers) if self.chain and self.gpu_target is None else []
        lowered = _Lowerer(mod, graph.layers, runs, self)
        lowered.builder_.update_func(mod.get_global_var("main"), lowered.visit_expr(mod["main"]))
        return relax.transform.DeadCodeElimination()(lowered.builder_.get())


@relax.expr_functor.mutator
class _Lowerer(relax.PyExprMutator):
    def __init__(self, mod, layers: list[Layer], runs: list[list[Layer]], options: LowerLayers):
        super().__init__(mod)
        self.layers = {layer.var: layer for layer in layers}
        self.runs = {run[0].var: run for run in runs}  # keyed by the run's first layer
        self.options = options
        self.skipped = set()

    def visit_var_binding_(self, binding):
        if binding.var in self.skipped:
            return None
        layer = self.layers.get(binding.var)
        if layer is None:
            return super().visit_var_binding_(binding)
        run = self.runs.get(binding.var, [layer])
        kernels = [self._kernel(member) for member in run]
        if len(run) == 1:
            (prim, consts, fused, name), = kernels
        else:
            prim = chain_kernels([k[0] for k in kernels], "__".join(k[3] for k in kernels))
            consts = [c for k in kernels for c in k[1]]
            fused = [v for member, k in zip(run, kernels) for v in (member.var, *k[2])][1:]
            name = prim.attrs["global_symbol"]
        gv = self.builder_.add_func(prim.with_attr("global_symbol", name), name)
        out_shape = static_shape(run[-1].var)
        x = self.visit_expr(layer.call.args[0])
        rows = layer.rows if layer.kind == "fc" and len(out_shape) > 2 else None
        if rows is not None:  # [..., K] -> [rows, K]: the kernels take 2-D inputs
            x = self.builder_.emit(relax.op.reshape(x, (rows, static_shape(layer.call.args[0])[-1])))
        out_ty = relax.TensorType((rows, out_shape[-1]) if rows is not None else out_shape, "float32")
        call = relax.call_tir(gv, [x, *[relax.const(c) for c in consts]], out_ty)
        if rows is not None:
            call = relax.op.reshape(self.builder_.emit(call, name_hint=f"{layer.name}_rows"), out_shape)
        last = fused[-1] if fused else binding.var
        emit = self.builder_.emit if isinstance(last, relax.DataflowVar) else self.builder_.emit_output
        new_var = emit(call, name_hint="_".join(member.name for member in run))
        self.set_var_remap(last, new_var)
        self.skipped.update(fused)
        return None

    def _kernel(self, layer: Layer):
        """(PrimFunc, constant arguments, fused chain bindings, kernel name) of one layer."""
        scale, bias, activation, fused = fused_epilogue(layer)
        form, name = self.options.choices.get(layer.name, ("dense", f"{layer.name}_dense"))
        x_shape = static_shape(layer.call.args[0])
        weight = layer.weight
        if scale is not None:
            weight = weight * (scale if layer.kind == "fc" else scale[:, None, None, None])
        gpu_target = self.options.gpu_target
        if gpu_target is not None and layer.kind == "fc":
            prim, consts = gpu_fc_kernel(form, weight, layer.rows, gpu_target, bias=bias is not None,
                                         activation=activation, name=name)
        elif gpu_target is not None:
            prim, consts = gpu_conv_kernel(form, weight, x_shape, layer.call.attrs, gpu_target,
                                           bias=bias is not None, activation=activation, name=name,
                                           log=self.options.log, lanes=self.options.lanes)
        elif layer.kind == "fc":
            prim, consts = fc_kernel(form, weight, layer.rows, self.options.group,
                                     bias=bias is not None, activation=activation, name=name,
                                     lanes=self.options.lanes, log=self.options.log)
        else:
            prim, consts = conv_kernel(weight, x_shape, layer.call.attrs, bias=bias is not None,
                                       activation=activation, lanes=self.options.lanes, name=name,
                                       log=self.options.log)
        if bias is not None:
            consts.append(bias)
        return prim, consts, fused, name
