"""Tuning CUDA conv kernels: dlight's tile settings measured per layer shape, into a tuning log.

A conv layer on a GPU is dlight's Matmul rule (schedules/gpu.py), whose fixed CUDA tile suits
some shapes and not others; `gpu.CONV_TILE_SPACE` lists the settings worth trying. meta_schedule
would build and time them on one machine (or over RPC), but the GPU machines this project is lent
carry TVM's runtime only and reach no other machine, so CUDA tuning runs in three steps
(`python/tune_cuda.py`), the same split as the GPU benchmark:

* `build_candidates` (any machine, nvcc without a GPU): every (layer shape, tile setting) of the
  given models' conv layers, at the shapes `Pass(cuda)` gives them, as one exported library;
* `time_candidates` (the GPU machine, TVM's runtime alone): median seconds of each, checked
  against the default setting's output on the same inputs;
* `record_times`: the seconds as template records of TVM's meta_schedule database (the format of
  every scalpel log, `logs.py`), which `Pass(cuda, logs=DIR)` reads to give each conv its
  fastest setting.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CANDIDATES = "candidates.so"
MANIFEST = "candidates.json"


def model_conv_workloads(models, spec, batch: int) -> list:
    """The conv layers of ONNX `models` at batch `batch`, at the shapes `Pass(spec)` gives them
    (node-shrunk, inputs as the producer's shrinking leaves them)."""
    from .onnx_import import import_onnx
    from .tuning import model_workloads

    found = []
    for model in models:
        found += model_workloads(import_onnx(model, batch=batch), spec, kinds=("conv",), conv_fractions=())
    return list(dict.fromkeys(found))


def candidates(workloads, done=None) -> list[dict]:
    """Every (workload, tile setting) as the manifest lists it — kernel name, workload key, the
    setting, and the kernel's argument shapes (x, W, [b], y) — less those the log `done` holds
    (a search space grown since the log was made: only the new settings are measured). Every
    workload keeps its default setting, which the others are checked against."""
    from .schedules import gpu

    found = []
    for w, wl in enumerate(workloads):
        shapes = [[wl.batch, wl.channels, wl.height, wl.width], [wl.out_channels, wl.channels, *wl.kernel]]
        shapes += [[wl.out_channels]] if wl.bias else []
        for c, config in enumerate(gpu.CONV_TILE_SPACE):
            if config and done is not None and done.has_candidate(wl, config):
                continue
            found.append({"kernel": f"w{w}_c{c}", "workload": wl.key, "knobs": config,
                          "args": shapes + [list(wl.output_shape)]})
    return found


def build_candidates(workloads, spec, out_dir, done=None) -> int:
    """Compile every workload at every tile setting (but those the log `done` holds) into
    `out_dir` (a library and its manifest); returns the number of kernels."""
    import tvm

    from .cuda import compile_cuda_module
    from .schedules import gpu
    from .workloads import ConvWorkload

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = candidates(workloads, done)
    prims = {}
    for entry in manifest:
        wl = ConvWorkload.from_key(entry["workload"])
        prims[entry["kernel"]] = gpu.gpu_conv2d(
            wl.batch, wl.channels, wl.height, wl.width, wl.out_channels, wl.kernel, spec.target, **wl.geometry,
            bias=wl.bias, activation=wl.activation, name=entry["kernel"], config=entry["knobs"])
    compile_cuda_module(tvm.IRModule(prims), spec.target).export_library(str(out_dir / CANDIDATES))
    write_manifest(out_dir, spec, manifest)
    return len(manifest)


def write_manifest(out_dir, spec, manifest) -> None:
    Path(out_dir, MANIFEST).write_text(json.dumps({"arch": str(spec.target.attrs["arch"]), "kernels": manifest},
                                                  indent=1))


def time_candidates(build_dir, rounds: int = 5, progress=None) -> dict:
    """{kernel: [seconds of each round]} on this machine's GPU, with TVM's runtime alone; a
    kernel whose output differs from its workload's default setting's gets [1e10] (a failed
    measurement, as meta_schedule records one)."""
    import tvm

    from .cuda import load_cuda_runtime
    from .timing import device_timer, interleaved_samples

    load_cuda_runtime()
    dev = tvm.cuda(0)
    build_dir = Path(build_dir)
    manifest = json.loads((build_dir / MANIFEST).read_text())
    arch = "sm_" + dev.compute_version.replace(".", "")
    if manifest["arch"] != arch:
        raise SystemExit(f"{build_dir} was built for {manifest['arch']}, this GPU is {arch}")
    module = tvm.runtime.load_module(str(build_dir / CANDIDATES))
    rng = np.random.default_rng(0)
    inputs, reference, timers, failed = {}, {}, {}, set()
    for entry in manifest["kernels"]:
        wl = entry["workload"]
        if wl not in inputs:  # one set of inputs per workload: its settings compute the same
            inputs[wl] = [rng.standard_normal(shape).astype("float32") for shape in entry["args"][:-1]]
        args = [tvm.runtime.tensor(a, dev) for a in inputs[wl]] + [tvm.runtime.empty(entry["args"][-1], "float32", dev)]
        module[entry["kernel"]](*args)
        out = args[-1].numpy()
        want = reference.setdefault(wl, out)  # the default setting comes first
        if not np.max(np.abs(out - want)) <= 1e-4 * max(np.max(np.abs(want)), 1e-30):
            failed.add(entry["kernel"])
            continue
        timers[entry["kernel"]] = device_timer(module, entry["kernel"], dev, *args)
    samples = interleaved_samples(timers, budget_s=0.05 * rounds, rounds=rounds)
    if progress:
        progress(len(samples), len(failed))
    return {entry["kernel"]: [1e10] if entry["kernel"] in failed else samples[entry["kernel"]]
            for entry in manifest["kernels"]}


def record_times(build_dir, times: dict, log_dir, spec) -> int:
    """Commit the measured seconds to the log at `log_dir` as template records (created, or
    added to: settings already there are left as they are, and settings no longer in
    `gpu.CONV_TILE_SPACE` are not recorded); returns the records written."""
    from tvm.s_tir import meta_schedule as ms

    from .logs import TuningLog, is_log
    from .schedules.gpu import CONV_TILE_SPACE
    from .workloads import ConvWorkload, canonical_module, template_record_trace

    manifest = json.loads((Path(build_dir) / MANIFEST).read_text())
    if manifest["arch"] != str(spec.target.attrs["arch"]):
        raise SystemExit(f"{build_dir} was built for {manifest['arch']}, not {spec.target.attrs['arch']}")
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    done = TuningLog(log_dir) if is_log(log_dir) else None
    database = ms.database.JSONDatabase(work_dir=str(log_dir))
    written = 0
    for entry in manifest["kernels"]:
        wl = ConvWorkload.from_key(entry["workload"])
        if (entry["kernel"] not in times or entry["knobs"] not in CONV_TILE_SPACE
                or (done is not None and done.has_candidate(wl, entry["knobs"]))):
            continue
        canonical = canonical_module(wl)
        database.commit_tuning_record(ms.database.TuningRecord(
            template_record_trace(wl, entry["knobs"]), database.commit_workload(canonical),
            times[entry["kernel"]], spec.target, ms.arg_info.ArgInfo.from_prim_func(canonical["main"])))
        written += 1
    return written
