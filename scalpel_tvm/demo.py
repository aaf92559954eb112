"""`scalpel demo`: the whole user path on a built-in model, measured side by side in one run.

For each demo network and batch size: plan, pass and compile the Scalpel-pruned model and the same
network unpruned, check the outputs against the model compiled without the pass and against
onnxruntime, and time (a) the unpruned model through the pass (our dense baseline: every kernel
scheduled), (b) the pruned model through the pass, (c) onnxruntime on the unpruned and (d) on the
pruned model. All timings are single-threaded medians of interleaved rounds, in the same process.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from . import models
from .onnx_import import import_onnx
from .errors import ScalpelError
from .planner import as_spec, check_plan_target, plan as make_plan
from .target import TargetSpec
from .plots import plot_plan
from .timing import cpu_vm, median_us, ort_session, ort_timer, vm_timer

DATA = Path(__file__).parent / "data"
NETWORKS = {"lenet_300_100": models.lenet_300_100, "lenet5": models.lenet5}

# One AVX2 core's limits, as issue 2 gives them for the machine kind it was written on (not measured
# here; a CPU with AVX-512 and a larger L2 computes and streams faster, so the summary names them).
# AVX-512 code does twice the FMAs an instruction, so its FMA peak is scaled by the lanes.
DRAM_BYTES_PER_S = 18e9
L3_BYTES_PER_S = 55e9
FLOPS_PER_S = 100e9
AVX2_LANES = 8


# The pruned models shipped per target, widest target first. A model's groups are as wide as its
# target's fp32 lanes (8 for AVX2, 16 for AVX-512); all are pruned from the one dense model.
# LeNet-5's x86-avx512 model is pruned gradually (make_demo_models.TARGET_SETTINGS): its mask-layer
# rounds for groups of 16 were walked back to 19 / 20 and 33 / 50 filters (1.9x over dense).
PRUNED_MODELS = {"x86-avx512": ("lenet_300_100", "lenet5"), "x86-avx2": ("lenet_300_100", "lenet5")}
MODEL_TARGETS = tuple(PRUNED_MODELS)


def demo_model_path(network: str, pruned: bool, target: str = "x86-avx2") -> Path:
    """The dense model, or the model pruned for `target` (one of MODEL_TARGETS)."""
    return DATA / (f"{network}_scalpel_{target}.onnx" if pruned else f"{network}_dense.onnx")


def pruned_model_path(network: str, spec) -> Path:
    """The shipped pruned model the demo compiles for `spec`: the one whose groups are as wide
    as its fp32 lanes where one ships, else the x86-avx2 one."""
    for target, networks in PRUNED_MODELS.items():
        if network in networks and as_spec(target).lanes("float32") == spec.lanes("float32"):
            return demo_model_path(network, True, target)
    return demo_model_path(network, True)


def ensure_demo_models(overwrite: bool = False) -> list[Path]:
    """Write the demo ONNX files from the seeded builders where missing (or all, `overwrite`):
    the dense model and the one pruned for x86-avx2 (the paper's groups of 8)."""
    DATA.mkdir(parents=True, exist_ok=True)
    written = []
    for network, build in NETWORKS.items():
        for pruned in (False, True):
            path = demo_model_path(network, pruned)
            if overwrite or not path.exists():
                onnx.save(build(pruned=pruned), path)
                written.append(path)
    return written


def default_target() -> str:
    """The widest of MODEL_TARGETS this CPU runs (x86-avx512 on an AVX-512 CPU, else x86-avx2);
    "host" where it runs neither."""
    return next((target for target in MODEL_TARGETS if runs_here(as_spec(target))), "host")


def recorded_target(model: onnx.ModelProto) -> str:
    """The target the frontend pruned `model` for (`frontend_facts`), where this CPU runs its
    code; else "host".

    A model's groups are as wide as its target's lanes. Compiled for a wider host, an AVX-512
    CPU's 16 lanes, its groups of 8 often stop being whole empty groups (the demo's
    LeNet-300-100 fc2: 73% of its groups of 8 empty, 61% of its groups of 16) and more weight
    bytes stay; an AVX-512 CPU runs AVX2 code, so compiling for what the model was made for
    keeps its groups whole. A model the frontend did not make (random weights) gets "host"."""
    target = (frontend_facts(model) or {}).get("target")
    # "host" too for a model pruned for a microcontroller or a GPU, or a CPU with wider lanes than this one
    return target if target is not None and runs_here(as_spec(target)) else "host"


def run_demo(target: str | None = None, networks=("lenet_300_100", "lenet5"), batches=(1, 50),
             out_dir: str | os.PathLike = "out", rounds: int = 15) -> list[dict]:
    """`target` None: `default_target()`, said on stderr."""
    import tvm

    from .pipeline import Pass

    ensure_demo_models()
    if target is None:
        target = default_target()
        print(f"scalpel demo: compiling for {target}, "
              + ("the widest target the models were pruned for that this CPU runs"
                 if target != "host" else "this CPU"), file=sys.stderr)
    spec = as_spec(target)
    check_runs_here(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    steps = [(n, b) for n in networks for b in batches]
    for network, batch in tqdm(steps, desc="demo", unit="model"):
        pruned_path = pruned_model_path(network, spec)
        pruned_onnx = onnx.load(pruned_path)
        dense_onnx = onnx.load(demo_model_path(network, False))
        pruned_mod = import_onnx(pruned_onnx, batch)
        layer_plan = make_plan(pruned_mod, spec)
        dense_mod = import_onnx(dense_onnx, batch)
        dense_plan = make_plan(dense_mod, spec)
        tqdm.write(layer_plan.table())
        plot_plan(layer_plan, out / f"plan_{network}_b{batch}.png")
        x = np.random.default_rng(0).standard_normal(_input_shape(pruned_onnx, batch)).astype("float32")

        compiled = {
            "pruned": cpu_vm(Pass(spec, plan=layer_plan)(pruned_mod), spec),
            "dense": cpu_vm(Pass(spec, plan=dense_plan)(dense_mod), spec),
            "pruned_no_pass": cpu_vm(pruned_mod, spec),
        }
        arg = tvm.runtime.tensor(x)
        outputs = {name: vm["main"](arg).numpy() for name, vm in compiled.items()}
        ort = {name: ort_session(model.SerializeToString())
               for name, model in (("pruned", pruned_onnx), ("dense", dense_onnx))}
        ort_out = {name: sess.run(None, {"input": x})[0] for name, sess in ort.items()}
        timers = {
            "scalpel_dense": vm_timer(compiled["dense"], arg),
            "scalpel_pruned": vm_timer(compiled["pruned"], arg),
            "ort_dense": ort_timer(ort["dense"], {"input": x}),
            "ort_pruned": ort_timer(ort["pruned"], {"input": x}),
        }
        seconds = {k: us * 1e-6 for k, us in median_us(timers, budget_s=0.2 * rounds, rounds=rounds).items()}
        dense_bytes = _weight_bytes(dense_onnx)
        chosen = [lp.candidate(lp.chosen) for lp in layer_plan.layers]
        pruned_bytes = sum(c.weight_bytes for c in chosen) + _bias_bytes(dense_onnx)  # all biases
        macs = sum(c.macs for c in chosen)
        dense_macs = sum(lp.candidate("dense").macs for lp in dense_plan.layers)
        record = {
            "network": network, "batch": batch, "target": spec.name, "pruned_model": pruned_path.name,
            "weights_removed": models.weights_removed(pruned_onnx),
            "frontend": frontend_facts(pruned_onnx),
            "max_abs_diff_vs_no_pass": float(np.abs(outputs["pruned"] - outputs["pruned_no_pass"]).max()),
            "max_abs_diff_vs_onnxruntime": float(np.abs(outputs["pruned"] - ort_out["pruned"]).max()),
            "dense_max_abs_diff_vs_onnxruntime": float(np.abs(outputs["dense"] - ort_out["dense"]).max()),
            "model_bytes_dense": dense_bytes, "model_bytes_pruned": pruned_bytes,
            "seconds": seconds,
            "speedup_vs_scalpel_dense": seconds["scalpel_dense"] / seconds["scalpel_pruned"],
            "speedup_vs_ort_dense": seconds["ort_dense"] / seconds["scalpel_pruned"],
            "pruned_weight_stream_GBps": pruned_bytes / seconds["scalpel_pruned"] / 1e9,
            "dense_weight_stream_GBps": dense_bytes / seconds["scalpel_dense"] / 1e9,
            "pruned_GFLOPs": 2 * macs / seconds["scalpel_pruned"] / 1e9,
            "dense_GFLOPs": 2 * dense_macs / seconds["scalpel_dense"] / 1e9,
            "plan": json.loads(layer_plan.to_json()),
        }
        results.append(record)
        tqdm.write(_summary(record))
    (out / "demo.json").write_text(json.dumps(results, indent=2))
    _plot(results, out / "demo.png")
    print(f"wrote {out / 'demo.json'} and {out / 'demo.png'}")
    return results


def frontend_facts(model: onnx.ModelProto) -> dict | None:
    """What `python/make_demo_models.py` recorded when the pruning frontend made this model
    (test accuracies, weights removed, settings); None for a model it did not make."""
    props = {p.key: p.value for p in model.metadata_props}
    return json.loads(props["scalpel.frontend"]) if "scalpel.frontend" in props else None


def check_runs_here(spec) -> None:
    """The demo and `bench_pruning.py` execute what they compile, so the target must be one this CPU can run."""
    from tvm.target import codegen

    check_plan_target(spec)
    if spec.parallelism == "high":
        raise ScalpelError(
            "timing runs the compiled models on this machine's CPU; for CUDA, run "
            "`python python/bench_gpu.py nets` on a machine with an NVIDIA GPU (or `scalpel plan "
            "--target cuda` to only plan)")
    isa = {"sse4.1", "sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq",
           "avx512vl", "avx512vnni"}  # instruction sets, not LLVM's tuning flags
    missing = isa & set(codegen.llvm_get_cpu_features(spec.target)) - set(
        codegen.llvm_get_cpu_features(TargetSpec.host().target))
    if missing:
        raise ScalpelError(
            f"timing runs the compiled models on this machine, whose CPU lacks {', '.join(sorted(missing)[:4])} "
            f"that {spec.name} code uses; use --target host (or `scalpel plan` to only plan for {spec.name})")


def runs_here(spec) -> bool:
    """Whether `check_runs_here` accepts `spec`."""
    try:
        check_runs_here(spec)
    except ScalpelError:
        return False
    return True


def per_target(stem: str, target: str) -> str:
    """A benchmark's output name: `stem` for x86-avx2 (the figures the README first gave), else
    `stem_<target>`, so runs for the two targets do not overwrite each other."""
    return stem if target == "x86-avx2" else f"{stem}_{target}"


def runnable_target(name: str) -> str:
    """argparse `type` for a benchmark's `--target`: the preset's name, refused with
    check_runs_here's message where this CPU cannot run its code (so the script stops on a
    clear usage error, not an illegal instruction half way through)."""
    import argparse

    if name not in MODEL_TARGETS:
        return name  # argparse's `choices` names the known ones
    try:
        check_runs_here(as_spec(name))
    except ScalpelError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return name


def _input_shape(model, batch):
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.dim_value > 0 else batch for d in dims]


def _weight_bytes(model) -> int:
    return sum(int(np.prod(init.dims)) * 4 for init in model.graph.initializer)


def _bias_bytes(model) -> int:
    return sum(int(np.prod(init.dims)) * 4 for init in model.graph.initializer
               if not init.name.endswith(".weight"))


def _origin(r) -> str:
    f = r["frontend"]
    if f is None:
        return "  random weights in the paper's pruned structure (no accuracy to report)\n"
    return (f"  trained on {f['data']} and pruned for {f['target']} by the frontend: test accuracy "
            f"{f['test_accuracy_dense']:.2%} dense, {f['test_accuracy_pruned']:.2%} pruned\n")


def _summary(r) -> str:
    s = r["seconds"]
    return (
        f"{r['network']} batch {r['batch']}: {r['weights_removed']:.1%} of weights removed; "
        f"max |diff| vs no-pass {r['max_abs_diff_vs_no_pass']:.2e}, vs onnxruntime "
        f"{r['max_abs_diff_vs_onnxruntime']:.2e}\n"
        + _origin(r) +
        f"  model bytes {r['model_bytes_dense']:,} -> {r['model_bytes_pruned']:,} "
        f"({r['model_bytes_pruned'] / r['model_bytes_dense']:.1%})\n"
        f"  latency us: (a) dense via pass {s['scalpel_dense'] * 1e6:.1f}  (b) pruned via pass "
        f"{s['scalpel_pruned'] * 1e6:.1f}  (c) onnxruntime dense {s['ort_dense'] * 1e6:.1f}  "
        f"(d) onnxruntime pruned {s['ort_pruned'] * 1e6:.1f}\n"
        f"  speedup (b) vs (a): {r['speedup_vs_scalpel_dense']:.2f}x   (b) vs (c): "
        f"{r['speedup_vs_ort_dense']:.2f}x\n"
        f"  weights stream at {r['dense_weight_stream_GBps']:.1f} GB/s dense, "
        f"{r['pruned_weight_stream_GBps']:.1f} GB/s pruned (L3 ~{L3_BYTES_PER_S / 1e9:.0f}, "
        f"DRAM ~{DRAM_BYTES_PER_S / 1e9:.0f} GB/s); useful GFLOP/s {r['dense_GFLOPs']:.1f} dense, "
        f"{r['pruned_GFLOPs']:.1f} pruned (FMA peak ~{_flops_per_s(r['target']) / 1e9:.0f}: issue 2's limits for one "
        f"AVX2 core, the peak scaled to {r['target']}'s lanes)")


def _flops_per_s(target: str) -> float:
    return FLOPS_PER_S * as_spec(target).lanes("float32") / AVX2_LANES


def _plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['network']}\nbatch {r['batch']}" for r in results]
    keys = [("scalpel_dense", "dense via pass"), ("scalpel_pruned", "Scalpel-pruned via pass"),
            ("ort_dense", "onnxruntime dense"), ("ort_pruned", "onnxruntime pruned")]
    fig, ax = plt.subplots(figsize=(2.6 * len(results) + 2, 4))
    width = 0.2
    for i, (key, label) in enumerate(keys):
        ax.bar(np.arange(len(results)) + (i - 1.5) * width,
               [r["seconds"][key] * 1e6 for r in results], width, label=label)
    ax.set_xticks(np.arange(len(results)), labels)
    ax.set_yscale("log")
    ax.set_ylabel("latency per call (us, log)")
    ax.set_title("scalpel demo: same run, one thread")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
