"""`scalpel tune`: measure every kernel the planner could choose, into a meta_schedule log.

Two searches fill one log (see `workloads` for the record format):

* template knobs, for every workload: each setting of `workloads.knob_space` is built by
  meta_schedule's `LocalBuilder` and timed by its runner — `LocalRunner` here, `RPCRunner` through
  a TVM RPC tracker for another machine — with the workload's real argument shapes and a valid
  sparsity pattern (random index arrays would read out of bounds);
* meta_schedule's own evolutionary search (`tune_tir`), for the dense FC and conv workloads
  when `trials > 0`: their canonical functions are plain tensor computations it can schedule.

Measurements are appended to the log as each batch of builds is timed, so an interrupted run
loses at most the batch in flight; a re-run skips template settings already measured and tops
meta_schedule up to `trials`.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tvm
from tqdm.auto import tqdm
from tvm.s_tir import meta_schedule as ms

from .errors import ScalpelError
from .logs import WORKLOAD_FILE, TuningLog, is_log
from .target import TargetSpec
from .workloads import (ConvWorkload, Workload, canonical_module, knob_space, measurement_arguments,
                        template_kernel, template_record_trace)

BUILDER_TIMEOUT_S = 300  # meta_schedule's 30 s default fails 1 in 4 builds on a busy 2-core machine
KEEP_FRACTIONS = (0.9, 0.75, 0.5, 0.25)  # node-shrunk shapes the pruning frontend considers
GROUP_SPARSITIES = (0.1, 0.3, 0.5, 0.7, 0.9)  # grouped-sparse sparsities it considers, both orientations
RPC_RESULT_TIMEOUT_S = 600
MS_LOGGER = "tvm.s_tir.meta_schedule"


def tuning_target(spec: TargetSpec) -> tvm.target.Target:
    """The spec's target with `num-cores`, which meta_schedule requires of llvm targets: 1
    unless the target says otherwise, as the kernels run one thread per call (TVM_NUM_THREADS=1,
    see `scalpel_tvm.cli`) on a machine whose other core is rarely idle."""
    config = dict(spec.target.export())
    config.setdefault("num-cores", 1)
    return tvm.target.Target(config)


def layer_workloads(batch: int, k: int, n: int, lanes: int, *, bias: bool = True,
                    activation: str | None = "relu", kept: int | None = None,
                    groups: dict | None = None) -> list[Workload]:
    """The candidates for one FC layer [k, n]: dense at its shape and at the node-shrunk widths
    (`kept` nodes and the usual fractions), grouped-sparse G×1 and 1×G at the usual group
    sparsities plus the layer's own (`groups`: orientation -> kept groups)."""
    epilogue = dict(bias=bias, activation=activation)
    widths = {n, *(max(1, round(n * f)) for f in KEEP_FRACTIONS)} | ({kept} if kept else set())
    found = [Workload("dense", batch, k, width, lanes, **epilogue) for width in sorted(widths, reverse=True)]
    width = kept or n
    for orientation in ("gx1", "1xg"):
        shell = Workload(f"gsparse_{orientation}", batch, k, width, lanes, 1, **epilogue)
        counts = {max(1, round(shell.max_groups * (1 - s))) for s in GROUP_SPARSITIES}
        if groups and groups.get(orientation):
            counts.add(groups[orientation])
        found += [Workload(shell.form, batch, k, width, lanes, c, **epilogue)
                  for c in sorted(counts, reverse=True)]
    return found


def parse_shapes(spec: str) -> list[tuple[int, int]]:
    """`784x300,300x100` -> [(784, 300), (300, 100)] (FC weights as K x N)."""
    shapes = []
    for item in spec.split(","):
        try:
            k, n = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise ScalpelError(f"bad shape {item!r} in --shapes: write K x N pairs like 784x300,300x100")
        if k <= 0 or n <= 0:
            raise ScalpelError(f"bad shape {item!r} in --shapes: sizes must be positive")
        shapes.append((k, n))
    return shapes


def conv_workloads(layer, weight, lanes: int, *, bias: bool, activation: str | None,
                   fractions=(1.0, *KEEP_FRACTIONS)) -> list[ConvWorkload]:
    """A conv layer at its shrunk shape and with its filters node-pruned to the usual fractions
    (inputs as shrinking leaves them: the producer's dead filters are gone)."""
    from .passes.layer_graph import static_shape

    batch, _, height, width = static_shape(layer.call.args[0])
    attrs = layer.call.attrs
    widths = {weight.shape[0], *(max(1, round(layer.out_channels * f)) for f in fractions)}
    return [ConvWorkload(batch, weight.shape[1], height, width, o, tuple(weight.shape[2:]),
                         tuple(int(v) for v in attrs.strides), tuple(int(v) for v in attrs.padding),
                         tuple(int(v) for v in attrs.dilation), lanes, bias, activation)
            for o in sorted(widths, reverse=True)]


def model_workloads(mod: tvm.IRModule, spec: TargetSpec, *, kinds=("fc", "conv"),
                    conv_fractions=(1.0, *KEEP_FRACTIONS)) -> list:
    """Every candidate kernel of a model's layers of `kinds` (after node shrinking), at its
    batch; conv layers also with their filters node-pruned to `conv_fractions` (none: only the
    shape the pass gives them, as CUDA tuning measures)."""
    from .passes.layer_graph import build_layer_graph, canonicalize
    from .passes.lower_layers import fused_epilogue
    from .passes.shrink_nodes import analyze_shrink, shrunk_weights
    from .schedules.grouped_sparse import GroupedSparseWeight

    mod = canonicalize(mod)
    graph = build_layer_graph(mod["main"])
    weights = shrunk_weights(analyze_shrink(graph, allow_dead_layers=True))
    lanes = spec.lanes("float32")
    found = []
    for layer in graph.layers:
        if layer.kind not in kinds:
            continue
        _scale, bias, activation, _ = fused_epilogue(layer)
        weight = weights[layer.name]
        if layer.kind == "conv":
            found += conv_workloads(layer, weight, lanes, bias=bias is not None, activation=activation,
                                    fractions=conv_fractions)
            continue
        groups = {o: GroupedSparseWeight.from_dense(weight, lanes, o).n_groups or None
                  for o in ("gx1", "1xg")}
        # Inputs as shrinking leaves them (the producer's dead nodes are gone); outputs at the
        # layer's own width and the widths node pruning could leave.
        found += layer_workloads(layer.rows, weight.shape[0],
                                 layer.weight.shape[1], lanes, bias=bias is not None,
                                 activation=activation, kept=weight.shape[1], groups=groups)
    return list(dict.fromkeys(found))


class MeasurementArguments:
    """The inputs each kernel is timed with, handed to meta_schedule's runners as
    `f_alloc_argument` (pickled into their worker processes).

    Kernels are told apart by their argument shapes, which pin the workload down (the index
    arrays' sizes differ between G×1 and 1×G); a kernel not in the table, such as a dense
    meta_schedule candidate, gets meta_schedule's random inputs.
    """

    def __init__(self):
        self.table: dict = {}

    @staticmethod
    def signature(shapes_and_dtypes) -> tuple:
        return tuple((str(dtype), tuple(int(d) for d in shape)) for dtype, shape in shapes_and_dtypes)

    def add(self, wl, knobs: dict) -> None:
        arrays = measurement_arguments(wl, knobs)
        self.table[self.signature((a.dtype, a.shape) for a in arrays)] = arrays

    def __call__(self, *args):
        # LocalRunner calls (device, args_info, repeat); RPCRunner (session, device, args_info,
        # repeat), creating the arrays on the remote device through the session.
        device, args_info, repeat = args[-3:]
        # The workers get each ArgInfo as its JSON form, ["TENSOR", dtype, shape].
        key = self.signature((info[1], info[2]) for info in args_info)
        arrays = self.table.get(key)
        if arrays is None:
            from tvm.s_tir.meta_schedule.runner import local_runner, rpc_runner

            if len(args) == 4:
                return rpc_runner.default_alloc_argument(*args)
            return local_runner.default_alloc_argument(*args)
        return [[tvm.runtime.tensor(a, device=device) for a in arrays] for _ in range(repeat)]


def make_runner(rpc: str | None, device_key: str | None, arguments: MeasurementArguments):
    """meta_schedule's runner: local, or RPC through a tracker at `rpc` = HOST:PORT."""
    evaluator = ms.runner.EvaluatorConfig(number=20, repeat=5, min_repeat_ms=20,
                                          enable_cpu_cache_flush=False)
    if rpc is None:
        return ms.runner.LocalRunner(evaluator_config=evaluator, f_alloc_argument=arguments)
    host, _, port = rpc.rpartition(":")
    if not host or not port.isdigit() or not device_key:
        raise ScalpelError(f"--rpc wants HOST:PORT of a TVM RPC tracker and --device-key, got "
                           f"{rpc!r} / {device_key!r}")
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=device_key,
                                 session_timeout_sec=120)
    return ms.runner.RPCRunner(config, evaluator_config=evaluator, f_alloc_argument=arguments)


def build_kernel(mod: tvm.IRModule, target, _params) -> tvm.runtime.Module:
    """meta_schedule's build step without its `import tvm.s_tir.tensor_intrin`, which takes 20 s
    in every fresh builder process and which none of these kernels use."""
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def tune(workloads: list[Workload], spec: TargetSpec, log_dir, *, trials: int = 0,
         rpc: str | None = None, device_key: str | None = None,
         builder_timeout: float = BUILDER_TIMEOUT_S, progress: bool = True,
         batch_size: int = 48) -> TuningLog:
    """Measure `workloads` into the log at `log_dir` (created, or resumed) and return it.

    Template settings are built `batch_size` at a time (meta_schedule restarts its builder
    processes per call, a second or two each) and timed one after another.
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    if is_log(log_dir) and not (log_dir / WORKLOAD_FILE).is_file():
        raise ScalpelError(f"{log_dir} holds a compressed log; decompress it (`xz -dk "
                           f"{log_dir}/*.xz`) to add to it, or tune into another directory")
    done = TuningLog(log_dir) if is_log(log_dir) else None  # names a bad line
    database = ms.database.JSONDatabase(work_dir=str(log_dir))
    target = tuning_target(spec)
    builder = ms.builder.LocalBuilder(timeout_sec=builder_timeout, f_build=build_kernel,
                                      max_workers=max(1, os.cpu_count() or 1))
    arguments = MeasurementArguments()
    runner = make_runner(rpc, device_key, arguments)
    try:
        _tune_templates(workloads, done, target, builder, runner, arguments, database, progress,
                        batch_size)
        if trials > 0:
            arguments.table.clear()
            for wl in tqdm([wl for wl in dict.fromkeys(workloads) if searchable(wl)],
                           desc="meta_schedule", unit="workload", disable=not progress):
                remaining = trials - (done.search_trials(wl) if done else 0)
                if remaining > 0:
                    _search(wl, target, remaining, builder, runner, database)
    finally:
        runner.pool.shutdown()  # the runner's worker processes (RPC ones hold a session)
    return TuningLog(log_dir)


def _tune_templates(workloads, done, target, builder, runner, arguments, database, progress,
                    batch_size) -> None:
    pending = [(wl, knobs) for wl in dict.fromkeys(workloads) for knobs in knob_space(wl)
               if done is None or not done.has_candidate(wl, knobs)]
    total = sum(len(knob_space(wl)) for wl in dict.fromkeys(workloads))
    best: dict = {}
    with tqdm(total=total, initial=total - len(pending), desc="template knobs", unit="kernel",
              disable=not progress) as bar:
        while pending:
            # One workload per argument signature each round: the runner tells kernels apart
            # by their arguments' shapes only.
            owners: dict = {}
            chunk, deferred = [], []
            for wl, knobs in pending[:batch_size]:
                kernel = template_kernel(wl, knobs)
                args_info = ms.arg_info.ArgInfo.from_prim_func(kernel)
                signature = MeasurementArguments.signature((a.dtype, a.shape) for a in args_info)
                if owners.setdefault(signature, (wl, knobs))[0] == wl:
                    chunk.append((wl, knobs, kernel, args_info))
                else:
                    deferred.append((wl, knobs))
            pending = deferred + pending[batch_size:]
            arguments.table.clear()
            for wl, knobs in owners.values():
                arguments.add(wl, knobs)
            for wl, seconds in _measure_templates(chunk, target, builder, runner, database):
                best[wl] = min(seconds, best.get(wl, float("inf")))
                bar.update(1)
                bar.set_postfix_str(f"{wl.label}: best {best[wl] * 1e6:.1f} us")


def _measure_templates(chunk, target, builder, runner, database):
    """Build and time each (workload, knobs, kernel, its ArgInfo); commit one record per setting
    (failures too, with meta_schedule's 1e10 s, so a resumed run does not retry them). Yields
    (workload, seconds)."""
    built = builder.build([ms.builder.BuilderInput(tvm.IRModule({"main": kernel}), target)
                           for _, _, kernel, _ in chunk])
    ok = [i for i, b in enumerate(built) if b.error_msg is None]
    # The runner is told the template's own arguments (a conv's packed weight differs from the
    # canonical function's); the record keeps the canonical ones.
    futures = dict(zip(ok, runner.run([ms.runner.RunnerInput(built[i].artifact_path, "cpu", chunk[i][3])
                                       for i in ok])))
    for i, (wl, knobs, _, _) in enumerate(chunk):
        seconds = [1e10]
        if i in futures:
            result = runner_result(futures[i])
            if result.error_msg is None:
                seconds = [float(s) for s in result.run_secs]
        canonical = canonical_module(wl)
        database.commit_tuning_record(ms.database.TuningRecord(
            template_record_trace(wl, knobs), database.commit_workload(canonical), seconds, target,
            ms.arg_info.ArgInfo.from_prim_func(canonical["main"])))
        if built[i].artifact_path:
            shutil.rmtree(Path(built[i].artifact_path).parent, ignore_errors=True)
        yield wl, float(np.median(seconds))


def runner_result(future, timeout_s: float = RPC_RESULT_TIMEOUT_S):
    """A runner's result, bounded in time for RPC: a kernel that crashes a TVM RPC server ends
    the server, and meta_schedule's RPCRunner would then wait for its result forever."""
    if not isinstance(future, ms.runner.rpc_runner.RPCRunnerFuture):
        return future.result()  # LocalRunner bounds each run itself
    try:
        future.future.result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        raise ScalpelError(
            f"no result from the RPC device in {timeout_s:.0f} s; its server may have died (a "
            "crashing kernel ends a TVM RPC server). Restart the server and rerun `scalpel tune`: "
            "the measurements already in the log are kept") from None
    except Exception:  # noqa: BLE001 - reported by RPCRunnerFuture.result() below
        pass
    return future.result()


def searchable(wl: Workload | ConvWorkload) -> bool:
    """Kernels meta_schedule can search: dense FC and conv (dense or node-shrunk). The
    grouped-sparse loops depend on the pattern's data, so only their template knobs are tuned."""
    return isinstance(wl, ConvWorkload) or wl.form == "dense"


def _search(wl: Workload | ConvWorkload, target, trials: int, builder, runner, database) -> None:
    """meta_schedule's evolutionary search on the canonical function (FC over the packed
    weight, conv over the OIHW one)."""
    with tempfile.TemporaryDirectory(prefix="scalpel-ms-") as work_dir, _foreign_handlers_aside():
        ms.tir_integration.tune_tir(
            canonical_module(wl), target, work_dir, max_trials_global=trials,
            num_trials_per_iter=min(trials, 16), builder=builder, runner=runner,
            database=database, cost_model=ms.cost_model.XGBModel(num_warmup_samples=8),
            num_tuning_cores=max(1, (os.cpu_count() or 2) // 2), seed=0)


@contextlib.contextmanager
def _foreign_handlers_aside():
    """Takes handlers meta_schedule did not make (pytest's log capture, an application's own)
    off its logger while it tunes: its logging setup names every handler already there and
    fails on one without a name, or with a name its own configuration does not define."""
    logger = logging.getLogger(MS_LOGGER)
    foreign = [h for h in logger.handlers if not (h.get_name() or "").startswith(MS_LOGGER)]
    for handler in foreign:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in foreign:
            logger.addHandler(handler)
