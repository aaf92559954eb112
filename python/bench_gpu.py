"""GPU benchmark: the Scalpel paper's networks at batch 50, dense vs node-shrunk vs CSR, on CUDA.

    python python/bench_gpu.py nets  --out out     # on a machine with an NVIDIA GPU
    python python/bench_gpu.py build --arch sm_90 --out gpu_build [--model NAME=DENSE.onnx,PRUNED.onnx]
    python python/bench_gpu.py time gpu_build --out out   # on the GPU machine: TVM's runtime alone
    python python/bench_gpu.py sweep --out out     # FC kernel sweep: dense / shrunk / warp-grouped / CSR
    python python/bench_gpu.py calibrate out/bench_gpu_sweep.json   # fit data/cost_cuda.json
    python python/bench_gpu.py report out/bench_gpu.json            # print a nets run again

`nets` builds each network three ways with `scalpel_tvm.Pass(cuda)`: dense (the baseline: conv
layers dlight's GEMM, FC layers the register-tiled kernel), node-pruned (the authors' reported
node counts, shrunk to smaller dense kernels) and traditionally pruned (Han et al.'s per-layer
densities, every layer a CSR kernel); where an FC layer is at most 10% dense under Han et al., a
fourth: conv nodes pruned and FC layers warp-group pruned (G = 32) to those densities, the
planner choosing each FC layer's form. It checks each output against onnxruntime on the CPU,
times the whole model (median of interleaved rounds) and every layer's kernel on its own, and
writes `bench_gpu.json` and `bench_gpu.png`. Shrunk layers are compared with their ideal speedup,
the ratio of MACs, where the dense layer is large enough to fill the GPU (>= 0.5 GMAC at the
batch, i.e. well over one wave of thread blocks on every multiprocessor).

`nets` is `build` and `time` in one go. Split, the compiling runs on any machine (nvcc builds for
the named arch without a GPU) and the GPU machine needs only TVM's runtime: the modules are
exported libraries, loaded with `tvm.runtime.load_module`, as a deployment would. `build --model`
adds pairs of ONNX files (the pruning frontend's output and its dense model), each compiled by
`Pass(cuda)` as it is, and timed whole.

`sweep` times the FC kernels the pass emits over shapes, batch 1 and 50, node-shrunk widths,
group sparsities and CSR densities, plus the warp-grouped kernel's knobs at 90% group sparsity,
checking every result against numpy; `calibrate` fits the
planner's GPU cost model to it (`scalpel_tvm/gpu_cost.py`) and prints how often it picks the
measured-fastest form.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

BATCH = 50
FILL_MACS = 0.5e9  # a layer at least this big (whole batch) fills the GPU


def gpu_device():
    import tvm

    dev = tvm.cuda(0)
    if not dev.exist:
        sys.exit("no CUDA GPU visible: this benchmark runs on a machine with an NVIDIA GPU")
    return dev


def gpu_target(dev):
    import tvm

    arch = "sm_" + dev.compute_version.replace(".", "")
    return tvm.target.Target({"kind": "cuda", "arch": arch})


# --- networks -------------------------------------------------------------------------------

def build_variant(model, target, *, csr: bool, logs=None):
    """(compiled module, Relax module after the pass, plan) of one network variant; `logs` as
    `Pass` takes it (None: the log shipped for the target's arch, if any)."""
    import tvm
    import scalpel_tvm
    from scalpel_tvm.cuda import compile_cuda_module

    mod = scalpel_tvm.import_onnx(model, batch=BATCH)
    plan = scalpel_tvm.plan(mod, target)
    if csr:
        for layer in plan.layers:
            layer.chosen, layer.kernel = "csr", f"{layer.name}_csr"
    lowered = tvm.transform.Sequential([scalpel_tvm.Pass(target, plan=plan, logs=logs)])(mod)
    return compile_cuda_module(lowered, target), lowered, plan


def layer_kernels(lowered):
    """(kernel name, PrimFunc, argument specs) of every call_tir in main: a spec is an array
    (a constant argument) or a shape (data, filled at random), the output last."""
    import tvm
    from tvm import relax

    calls = []
    for block in lowered["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not (isinstance(call, relax.Call) and call.op.name == "relax.call_tir"):
                continue
            gv, (args,) = call.args[0], call.args[1:2]
            specs = [arg.value.numpy() if isinstance(arg, tvm.ir.GenericConst)
                     else tuple(int(d) for d in arg.ty.shape) for arg in args.fields]
            specs.append(tuple(int(d) for d in call.ty.shape))
            calls.append((gv.name_hint, lowered[gv], specs))
    return calls


def layer_macs(plan):
    """MACs (whole batch) per layer at its shape in the plan (shrunk, if nodes were removed)."""
    macs = {}
    for layer in plan.layers:
        shape = layer.shrunk_shape
        if layer.kind == "fc":
            macs[layer.name] = layer.batch * shape[0] * shape[1]
        else:
            macs[layer.name] = layer.candidates[0].macs
    return macs


def nets_variants(name):
    """The variants of one of the paper's networks: {variant: (ONNX model, every layer in CSR?)}."""
    from scalpel_tvm import paper_nets

    dense = paper_nets.network(name)
    variants = {
        "dense": (dense, False),
        "node": (paper_nets.node_pruned(dense, paper_nets.NODES_KEPT[name]), False),
        "csr": (paper_nets.magnitude_pruned(dense, paper_nets.han_density(name)), True),
    }
    fc = {layer: d for layer, d in paper_nets.han_density(name).items()
          if paper_nets.layer_kinds(name)[layer] == "fc"}
    if any(d <= 0.1 for d in fc.values()):
        # Conv nodes pruned as above, FC layers warp-group pruned to Han's densities instead;
        # the planner picks each FC layer's form (dense or warp-grouped) from its GPU model.
        conv_nodes = {layer: kept for layer, kept in paper_nets.NODES_KEPT[name].items()
                      if paper_nets.layer_kinds(name)[layer] == "conv"}
        variants["warp"] = (paper_nets.group_pruned(paper_nets.node_pruned(dense, conv_nodes), fc, 32), False)
    return variants


def model_layer_names(model):
    """Names of a model's Conv/Gemm/MatMul weights' nodes, in order (the plan names layers by
    kind and position)."""
    return [node.name or node.output[0] for node in model.graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]


def build_network(name, variants, target, out: Path, kind: str, logs=None):
    """Compile every variant of one network for `target` and write what timing it needs into
    `out`: the whole model (`NAME.VARIANT.so`), its layers' kernels alone (`.kernels.so`, their
    constant arguments in `.kernels.npz`), an input and onnxruntime's output for each variant on
    this CPU (`NAME.io.npz`); returns the network's manifest entry."""
    import tvm
    from scalpel_tvm.cuda import compile_cuda_module
    from scalpel_tvm.timing import ort_session

    started = time.time()
    first = next(iter(variants.values()))[0]
    input_dims = [d.dim_value for d in first.graph.input[0].type.tensor_type.shape.dim][1:]
    x = np.random.default_rng(1).standard_normal((BATCH, *input_dims)).astype("float32")
    io = {"x": x}
    entry = {"network": name, "kind": kind, "layer_names": model_layer_names(first), "variants": {}}
    for variant, (model, csr) in variants.items():
        ex, lowered, plan = build_variant(model, target, csr=csr, logs=logs)
        stem = f"{name}.{variant}"
        ex.export_library(str(out / f"{stem}.so"))
        io[f"want_{variant}"] = ort_session(model.SerializeToString()).run(
            None, {first.graph.input[0].name: x})[0]
        calls = layer_kernels(lowered)
        kernels_ex = compile_cuda_module(tvm.IRModule({kernel: prim for kernel, prim, _ in calls}), target)
        kernels_ex.export_library(str(out / f"{stem}.kernels.so"))
        constants, kernels = {}, []
        for kernel, _, specs in calls:
            args = []
            for i, spec in enumerate(specs):
                if isinstance(spec, np.ndarray):
                    constants[f"{kernel}__{i}"] = spec
                    args.append({"constant": f"{kernel}__{i}"})
                else:
                    args.append({"shape": list(spec)})
            kernels.append({"name": kernel, "args": args})
        np.savez(out / f"{stem}.kernels.npz", **constants)
        entry["variants"][variant] = {
            "library": f"{stem}.so", "kernels_library": f"{stem}.kernels.so",
            "kernels_constants": f"{stem}.kernels.npz", "kernels": kernels,
            "layers": [{"name": lp.name, "kind": lp.kind, "shape": list(lp.shape),
                        "shrunk_shape": list(lp.shrunk_shape), "chosen": lp.chosen,
                        "kernel": lp.kernel, "density": lp.density} for lp in plan.layers],
            "macs": layer_macs(plan),
        }
    np.savez(out / f"{name}.io.npz", **io)
    entry["io"] = f"{name}.io.npz"
    print(f"built {name}: {', '.join(variants)}  [{time.time() - started:.0f} s]", flush=True)
    return entry


def run_build(args):
    """Compile the benchmark's modules (any machine: nvcc builds them without a GPU)."""
    import tvm
    from scalpel_tvm import paper_nets

    if args.arch:
        target = tvm.target.Target({"kind": "cuda", "arch": args.arch})
    else:
        target = gpu_target(gpu_device())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs, log_name = logs_choice(args.logs, target)
    entries = []
    for name in (args.networks if args.networks is not None else list(paper_nets.ARCHITECTURES)):
        variants = {v: built for v, built in nets_variants(name).items() if not args.variants or v in args.variants}
        entries.append(build_network(name, variants, target, out, "paper", logs))
    for spec in args.model or []:
        name, _, files = spec.partition("=")
        dense_file, _, pruned_file = files.partition(",")
        if not (name and dense_file and pruned_file):
            sys.exit(f"--model {spec!r}: expected NAME=DENSE.onnx,PRUNED.onnx")
        variants = {"dense": (onnx_model(dense_file), False), "pruned": (onnx_model(pruned_file), False)}
        entries.append(build_network(name, variants, target, out, "frontend", logs))
    manifest = {"target": str(target.attrs["arch"]), "batch": BATCH, "tuning_log": log_name, "networks": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"wrote {out}/manifest.json; time it on the GPU with: python python/bench_gpu.py time {out}")


def logs_choice(choice, target):
    """(`logs` for Pass, its name for the report) from --logs: "shipped" (the default: the log
    shipped for the arch, tuned conv tiles), "none" (dlight's default tiles), or a directory."""
    from scalpel_tvm.logs import TuningLog
    from scalpel_tvm.target import TargetSpec

    if choice == "none":
        return False, "none"
    if choice == "shipped":
        shipped = TuningLog.shipped(TargetSpec.from_target(target))
        return None, f"shipped ({shipped.path.name})" if shipped is not None else "none (none shipped for this arch)"
    return choice, choice


def onnx_model(path):
    import onnx

    if not Path(path).is_file():
        sys.exit(f"{path}: no such ONNX file")
    return onnx.load(path)


def time_network(entry, build: Path, dev, rounds):
    """Check one network's variants against onnxruntime's outputs and time them on the GPU
    (whole model and each layer's kernel alone): its report row."""
    import tvm
    from tvm.runtime.vm import VirtualMachine
    from scalpel_tvm.timing import device_timer, median_us

    io = np.load(build / entry["io"])
    x_dev = tvm.runtime.tensor(io["x"], dev)
    rng = np.random.default_rng(0)
    timers = {}
    row = {key: entry[key] for key in ("network", "kind", "layer_names")}
    row.update(batch=BATCH, variants={})
    for variant, built in entry["variants"].items():
        vm = VirtualMachine(tvm.runtime.load_module(str(build / built["library"])), dev)
        got, want = vm["main"](x_dev).numpy(), io[f"want_{variant}"]
        error = float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))
        if not error < 1e-3:
            sys.exit(f"{entry['network']}/{variant}: GPU output differs from onnxruntime (max rel. error {error:.2e})")
        timers[variant] = device_timer(vm, "main", dev, x_dev)
        kernels_module = tvm.runtime.load_module(str(build / built["kernels_library"]))
        constants = np.load(build / built["kernels_constants"])
        kernel_timers = {}
        for kernel in built["kernels"]:
            kernel_args = [tvm.runtime.tensor(constants[a["constant"]] if "constant" in a
                                              else rng.standard_normal(a["shape"]).astype("float32"), dev)
                           for a in kernel["args"]]
            kernel_timers[kernel["name"]] = device_timer(kernels_module, kernel["name"], dev, *kernel_args)
        row["variants"][variant] = {
            "max_rel_error_vs_onnxruntime": error,
            "kernels_us": median_us(kernel_timers, budget_s=0.5, rounds=rounds),
            **{key: built[key] for key in ("layers", "macs")},
        }
    whole = median_us(timers, budget_s=2.0, rounds=rounds)
    for variant, us in whole.items():
        row["variants"][variant]["model_us"] = us
        if variant != "dense":
            row[f"speedup_{variant}"] = whole["dense"] / us
    if "node" in whole:
        row["layer_efficiency"] = shrunk_layer_efficiency(row)
    print(f"{entry['network']:<14} dense {whole['dense']:9.1f} us  " + "  ".join(
        f"{variant} {us:9.1f} us ({whole['dense'] / us:.2f}x)" for variant, us in whole.items() if variant != "dense"),
        flush=True)
    return row


def run_time(args):
    """Time a build on this machine's GPU; needs only TVM's runtime (no compiler, no nvcc)."""
    from scalpel_tvm.cuda import load_cuda_runtime

    load_cuda_runtime()
    dev = gpu_device()
    build = Path(args.build)
    manifest = json.loads((build / "manifest.json").read_text())
    arch = "sm_" + dev.compute_version.replace(".", "")
    if manifest["target"] != arch:
        sys.exit(f"{build} was built for {manifest['target']}, this GPU is {arch}: build it with --arch {arch}")
    rows = [time_network(entry, build, dev, args.rounds) for entry in manifest["networks"]]
    write_report(rows, dev, manifest["target"], Path(args.out), manifest.get("tuning_log", "none"))


def run_nets(args):
    """Build and time in one go, on a GPU machine with the whole of TVM."""
    import tempfile

    with tempfile.TemporaryDirectory() as build:
        args.build, args.arch, args.model, args.logs, args.variants = build, None, None, "shipped", None
        build_args = argparse.Namespace(**{**vars(args), "out": build})
        run_build(build_args)
        run_time(args)


def geomean(values):
    return float(np.exp(np.mean(np.log(values)))) if values else None


def write_report(rows, dev, arch, out: Path, tuning_log: str):
    paper = [r for r in rows if r["kind"] == "paper"]
    report = {"gpu": dev.device_name, "date": datetime.date.today().isoformat(), "target": arch,
              "tuning_log": tuning_log, "batch": BATCH, "results": paper, "frontend": [r for r in rows if r["kind"] == "frontend"],
              "other": [r for r in rows if r["kind"] not in ("paper", "frontend")],
              "mean_speedup_node": geomean([r["speedup_node"] for r in paper]),
              "mean_speedup_csr": geomean([r["speedup_csr"] for r in paper if "speedup_csr" in r])}
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_gpu.json").write_text(json.dumps(report, indent=2))
    print_nets(report)
    if paper:
        plot_nets(report, out / "bench_gpu.png")


def shrunk_layer_efficiency(row):
    """Per shrunk layer: MAC ratio (ideal speedup), measured kernel speedup, their quotient.
    Layers are named as in the ONNX model (the plan names them by kind and position)."""
    dense, node = row["variants"]["dense"], row["variants"]["node"]
    dense_kernels = {k.split("_")[0]: v for k, v in dense["kernels_us"].items()}
    model_names = row["layer_names"]
    out = []
    for index, layer in enumerate(node["layers"]):
        if list(layer["shrunk_shape"]) == list(layer["shape"]):
            continue
        name = layer["name"]
        ideal = dense["macs"][name] / node["macs"][name]
        measured = dense_kernels[name] / node["kernels_us"][layer["kernel"]]
        out.append({"layer": model_names[index], "dense_macs": dense["macs"][name], "ideal": ideal,
                    "measured": measured, "efficiency": measured / ideal,
                    "fills_gpu": dense["macs"][name] >= FILL_MACS})
    return out


def print_nets(report):
    print(f"\n{report['gpu']} ({report['target']}), batch {report['batch']}, {report['date']}, "
          f"conv tiles from tuning log: {report.get('tuning_log', 'none')}")
    for r in report.get("frontend", []):
        v = r["variants"]
        print(f"{r['network']:<16}dense {v['dense']['model_us']:9.1f} us, pruned {v['pruned']['model_us']:9.1f} us: "
              f"{r['speedup_pruned']:.2f}x  (pruned layers: " + ", ".join(
                  f"{name} {'x'.join(map(str, layer['shrunk_shape']))} {layer['chosen']}"
                  for name, layer in zip(r["layer_names"], v["pruned"]["layers"])) + ")")
    if not report["results"]:
        return
    print(f"{'network':<14}{'dense us':>10}{'node us':>10}{'node x':>8}{'CSR us':>10}{'CSR x':>8}")
    for r in report["results"]:
        v = r["variants"]
        csr = f"{v['csr']['model_us']:>10.1f}{r['speedup_csr']:>8.2f}" if "csr" in v else f"{'-':>10}{'-':>8}"
        print(f"{r['network']:<14}{v['dense']['model_us']:>10.1f}{v['node']['model_us']:>10.1f}"
              f"{r['speedup_node']:>8.2f}" + csr)
    csr_mean = report["mean_speedup_csr"]
    print(f"{'geomean':<14}{'':>20}{report['mean_speedup_node']:>8.2f}{'':>10}"
          + (f"{csr_mean:>8.2f}" if csr_mean is not None else f"{'-':>8}"))
    warp = [r for r in report["results"] if "speedup_warp" in r]
    if warp:
        print("\nconv nodes pruned + FC layers warp-group pruned (G = 32) to Han et al.'s densities:")
        for r in warp:
            v = r["variants"]["warp"]
            forms = ", ".join(f"{layer['name']} {layer['chosen']}" for layer in v["layers"] if layer["kind"] == "fc")
            print(f"  {r['network']:<14}{v['model_us']:>10.1f} us  {r['speedup_warp']:.2f}x over dense  ({forms})")
    print("\nnode-shrunk layers that fill the GPU: measured kernel speedup / ideal (MAC ratio)")
    for r in report["results"]:
        for e in r["layer_efficiency"]:
            if e["fills_gpu"]:
                print(f"  {r['network']:<14}{e['layer']:<8} ideal {e['ideal']:5.2f}x  measured "
                      f"{e['measured']:5.2f}x  = {e['efficiency']:.2f} of ideal")


def plot_nets(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["network"] for r in report["results"]]
    xs = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(xs - 0.27, [r["speedup_node"] for r in report["results"]], 0.27, label="node-shrunk (Scalpel)")
    ax.bar(xs, [r.get("speedup_warp", 0) for r in report["results"]], 0.27,
           label="conv nodes + warp-grouped FC")
    ax.bar(xs + 0.27, [r.get("speedup_csr", 0) for r in report["results"]], 0.27, label="traditional (CSR)")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(xs, names)
    ax.set_ylabel("speedup over dense (same GPU, same run)")
    ax.set_title(f"{report['gpu']}, batch {report['batch']}")
    ax.set_ylim(0, 1.35 * max(max(r["speedup_node"], r.get("speedup_csr", 0), r.get("speedup_warp", 0))
                              for r in report["results"]))
    ax.legend(loc="upper left", fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# --- FC kernel sweep and calibration ------------------------------------------------------------

SWEEP_SHAPES = [(784, 300), (300, 100), (800, 500), (1024, 1024), (4096, 1000), (4096, 4096), (9216, 4096)]
SWEEP_BATCHES = [1, BATCH]
SHRINK = [1.0, 0.75, 0.5, 0.25]
GROUP_SPARSITY = [0.5, 0.75, 0.9, 0.95]
CSR_DENSITY = [0.25, 0.1]
KNOB_GRID = [{"splits": s, "batch_tile": t} for s in (1, 2, 4, 8) for t in (4, 8, 16)]


def sweep_kernels(k, n, batch, target, rng):
    """{(form, parameter, knobs): (PrimFunc, arguments, expected output)} for one shape and
    batch; the default-knob kernels are the ones the pass emits (`gpu_fc_kernel`)."""
    from scalpel_tvm.models import prune_groups
    from scalpel_tvm.passes.lower_layers import gpu_fc_kernel
    from scalpel_tvm.schedules import gpu
    from scalpel_tvm.schedules.grouped_sparse import GroupedSparseWeight

    w = rng.standard_normal((k, n)).astype("float32")
    x = rng.standard_normal((batch, k)).astype("float32")
    kernels = {}

    def add(key, form, w_kn):
        prim, consts = gpu_fc_kernel(form, w_kn, batch, target, bias=False, activation=None, name="f")
        kernels[key] = (prim, [x, *consts, (batch, w_kn.shape[1])], x @ w_kn)

    for keep in SHRINK:
        add(("dense", keep, None), "dense", np.ascontiguousarray(w[:, :max(1, int(round(n * keep)))]))
    for sparsity in GROUP_SPARSITY:
        pruned = prune_groups(w, 1 - sparsity, gpu.WARP)
        add(("gsparse_gx1", sparsity, None), "gsparse_gx1", pruned)
        if sparsity == 0.9:
            weight = GroupedSparseWeight.from_dense(pruned, gpu.WARP, "gx1")
            for knobs in KNOB_GRID:
                prim = gpu.gpu_grouped_sparse_fc(weight, batch, bias=False, activation=None, name="f", **knobs)
                kernels[("gsparse_gx1", sparsity, json.dumps(knobs, sort_keys=True))] = (
                    prim, [x, weight.indptr, weight.indices, weight.values, (batch, n)], x @ pruned)
    for density in CSR_DENSITY:
        add(("csr", density, None), "csr", np.where(rng.random((k, n)) < density, w, 0).astype("float32"))
    return kernels


def run_sweep(args):
    import tvm
    from scalpel_tvm.cuda import compile_cuda_module
    from scalpel_tvm.timing import device_timer, median_us

    dev = gpu_device()
    target = gpu_target(dev)
    rng = np.random.default_rng(0)
    rows = []
    for k, n in SWEEP_SHAPES:
        for batch in SWEEP_BATCHES:
            kernels = sweep_kernels(k, n, batch, target, rng)
            names = {key: f"k{i}" for i, key in enumerate(kernels)}
            module = compile_cuda_module(tvm.IRModule(
                {names[key]: prim.with_attr("global_symbol", names[key]) for key, (prim, _, _) in kernels.items()}),
                target).mod
            timers = {}
            for key, (_, arrays, want) in kernels.items():
                tensors = [tvm.runtime.tensor(a if isinstance(a, np.ndarray) else np.zeros(a, "float32"), dev)
                           for a in arrays]
                module[names[key]](*tensors)
                error = np.max(np.abs(tensors[-1].numpy() - want)) / max(np.max(np.abs(want)), 1e-30)
                if not error < 1e-4:
                    sys.exit(f"{key} at {k}x{n} batch {batch}: wrong result (max rel. error {error:.1e})")
                timers[key] = device_timer(module, names[key], dev, *tensors)
            times = median_us(timers, budget_s=0.2, rounds=args.rounds)
            for (form, parameter, knobs), us in times.items():
                prim_args = kernels[(form, parameter, knobs)][1]
                entry = {"k": k, "n": n, "batch": batch, "form": form, "parameter": parameter,
                         "knobs": json.loads(knobs) if knobs else None, "us": us}
                if form != "dense":
                    entry["stored"] = int(len(prim_args[2]))  # groups (gsparse) or nonzeros (csr)
                rows.append(entry)
            dense_us = times[("dense", 1.0, None)]
            best_sparse = {s: times[("gsparse_gx1", s, None)] for s in GROUP_SPARSITY}
            print(f"{k}x{n} b{batch}: dense {dense_us:8.1f} us; warp-grouped at "
                  + ", ".join(f"{s:.0%} {dense_us / t:.2f}x" for s, t in best_sparse.items()), flush=True)
    report = {"gpu": dev.device_name, "date": datetime.date.today().isoformat(),
              "target": str(target.attrs["arch"]), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_gpu_sweep.json").write_text(json.dumps(report, indent=2))
    print_knobs(report)


def print_knobs(report):
    """How the default knobs of the warp-grouped kernel do against the best of the grid."""
    rows = report["rows"]
    print("\nwarp-grouped kernel at 90% group sparsity: default knobs vs the best of the grid")
    for k, n in SWEEP_SHAPES:
        for batch in SWEEP_BATCHES:
            here = [r for r in rows if (r["k"], r["n"], r["batch"]) == (k, n, batch)
                    and r["form"] == "gsparse_gx1" and r["parameter"] == 0.9]
            default = next(r["us"] for r in here if r["knobs"] is None)
            best = min((r for r in here if r["knobs"]), key=lambda r: r["us"])
            print(f"  {k}x{n} b{batch}: default {default:8.1f} us, best {best['us']:8.1f} us {best['knobs']}")


def query_of(row):
    from scalpel_tvm.cost import KernelQuery

    if row["form"] == "dense":
        n = max(1, int(round(row["n"] * row["parameter"])))
        return KernelQuery("fc", "dense", row["batch"], row["k"], n)
    group = 32 if row["form"] == "gsparse_gx1" else 1
    return KernelQuery("fc", row["form"], row["batch"], row["k"], row["n"], group=group, groups=row["stored"])


def fit_rates(samples):
    """Least-squares fit on log time of one form-and-regime's rates; (rates, relative errors)."""
    from scipy.optimize import least_squares

    from scalpel_tvm.gpu_cost import RATE_NAMES, gpu_seconds

    queries, measured = [q for q, _ in samples], np.array([t for _, t in samples])

    def residuals(log_rates):
        rates = dict(zip(RATE_NAMES, np.exp(log_rates)))
        return np.log([gpu_seconds(q, rates) for q in queries]) - np.log(measured)

    fit = least_squares(residuals, np.log([3e-6, 1e10, 1e12, 1e12]), method="trf",
                        bounds=(np.log([1e-7, 1e7, 1e9, 1e10]), np.log([1e-3, 1e13, 1e14, 1e13])))
    return dict(zip(RATE_NAMES, (float(v) for v in np.exp(fit.x)))), np.exp(np.abs(residuals(fit.x))) - 1


def fit_calibration(rows, *, verbose=False) -> dict:
    """The GPU cost model's rates (data/cost_cuda.json's "rates") fitted to sweep rows."""
    from scalpel_tvm.cost import rate_key

    by_key = {}
    for row in rows:
        query = query_of(row)
        by_key.setdefault(rate_key(query), []).append((query, row["us"] * 1e-6))
    calibration = {}
    for key, samples in sorted(by_key.items()):
        rates, error = fit_rates(samples)
        calibration[key] = {**rates, "points": len(samples), "median_rel_error": float(np.median(error)),
                            "max_rel_error": float(np.max(error))}
        if verbose:
            print(f"{key:<22}{len(samples):>4} points  overhead {rates['overhead'] * 1e6:6.2f} us  block "
                  f"{rates['block_macs_per_s'] / 1e9:6.1f} GMAC/s  GPU {rates['macs_per_s'] / 1e9:7.0f} GMAC/s  "
                  f"{rates['bytes_per_s'] / 1e9:6.0f} GB/s  "
                  f"error median {np.median(error):.0%} max {np.max(error):.0%}")
    # Conv layers have one form on GPUs, so no decision rests on their rates; dense FC's price them.
    for regime in ("batch1", "batched"):
        calibration[f"conv@{regime}"] = calibration[f"dense@{regime}"]
    return calibration


def run_calibrate(args):
    from scalpel_tvm.gpu_cost import COST_FILE

    sweep = json.loads(Path(args.sweep_json).read_text())
    rows = [r for r in sweep["rows"] if r["knobs"] is None]
    rates = fit_calibration(rows, verbose=True)
    COST_FILE.write_text(json.dumps({"gpu": sweep["gpu"], "source": f"python/bench_gpu.py sweep on "
                                     f"{sweep['gpu']}, {sweep['date']}", "rates": rates}, indent=2) + "\n")
    print(f"wrote {COST_FILE}")
    print("decision quality, in-sample: " + decision_quality(rows, rates))
    # Held out: each FC shape's decisions by a model fitted to the other shapes only.
    shapes = sorted({(r["k"], r["n"]) for r in rows})
    verdicts = [decision_verdicts([r for r in rows if (r["k"], r["n"]) == shape],
                                  fit_calibration([r for r in rows if (r["k"], r["n"]) != shape]))
                for shape in shapes]
    print("decision quality, each shape held out of the fit: "
          + summary([v for shape_verdicts in verdicts for v in shape_verdicts]))


def decision_verdicts(rows, rates):
    """(right?, slowdown of the pick vs the measured best) for every choice between dense and the
    warp-grouped kernel at one group sparsity among `rows`, priced with `rates`."""
    from scalpel_tvm.gpu_cost import GpuCost
    from scalpel_tvm.target import TargetSpec

    cost = GpuCost(TargetSpec.preset("cuda"), {"rates": rates})
    verdicts = []
    for row in rows:
        if row["form"] != "gsparse_gx1":
            continue
        dense = next(r for r in rows if (r["k"], r["n"], r["batch"]) == (row["k"], row["n"], row["batch"])
                     and r["form"] == "dense" and r["parameter"] == 1.0)
        pair = {"dense": dense, "gsparse_gx1": row}
        chosen = min(pair, key=lambda f: cost.estimate(query_of(pair[f])).seconds)
        best = min(pair, key=lambda f: pair[f]["us"])
        verdicts.append((chosen == best, pair[chosen]["us"] / pair[best]["us"]))
    return verdicts


def summary(verdicts) -> str:
    right = sum(ok for ok, _ in verdicts)
    wrong = sorted(slowdown for ok, slowdown in verdicts if not ok)
    return (f"{right}/{len(verdicts)} picks are the measured-fastest ({right / len(verdicts):.0%})"
            + (f"; the wrong ones are {', '.join(f'{w:.2f}x' for w in wrong)} slower than the best" if wrong else ""))


def decision_quality(rows, rates) -> str:
    return summary(decision_verdicts(rows, rates))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    nets = sub.add_parser("nets", help="the paper's networks at batch 50 (needs a GPU)")
    nets.add_argument("--out", default="out")
    nets.add_argument("--rounds", type=int, default=7)
    nets.add_argument("--networks", nargs="*", help="a subset of the networks")
    sweep = sub.add_parser("sweep", help="FC kernel sweep (needs a GPU)")
    sweep.add_argument("--out", default="out")
    sweep.add_argument("--rounds", type=int, default=5)
    calibrate = sub.add_parser("calibrate", help="fit the GPU cost model to a sweep")
    calibrate.add_argument("sweep_json")
    report = sub.add_parser("report", help="print the tables of a nets run again and redraw its "
                                           "plot next to it (no GPU needed)")
    report.add_argument("nets_json")
    build = sub.add_parser("build", help="compile the nets benchmark's modules for a GPU arch, on any "
                                         "machine (then `time` them on the GPU machine)")
    build.add_argument("--arch", help="the GPU's arch, e.g. sm_90 (default: this machine's GPU)")
    build.add_argument("--out", default="gpu_build")
    build.add_argument("--networks", nargs="*", help="a subset of the paper's networks (none: only --model)")
    build.add_argument("--model", action="append", metavar="NAME=DENSE.onnx,PRUNED.onnx",
                       help="also a pair of ONNX files, e.g. the frontend's pruned model and its dense one")
    build.add_argument("--variants", nargs="*", help="a subset of the paper networks' variants "
                                                     "(dense node csr warp; default all)")
    build.add_argument("--logs", default="shipped",
                       help="CUDA tuning log: shipped (default, the arch's shipped log), none, or a directory")
    timing = sub.add_parser("time", help="time a build on this machine's GPU (TVM's runtime alone)")
    timing.add_argument("build")
    timing.add_argument("--out", default="out")
    timing.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    {"nets": run_nets, "sweep": run_sweep, "calibrate": run_calibrate, "report": run_report,
     "build": run_build, "time": run_time}[args.command](args)


def run_report(args):
    from scalpel_tvm.paper_nets import layer_kinds

    report = json.loads(Path(args.nets_json).read_text())
    for row in report["results"]:
        row.setdefault("layer_names", list(layer_kinds(row["network"])))  # reports before "build"
        row["layer_efficiency"] = shrunk_layer_efficiency(row)
    print_nets(report)
    plot_nets(report, Path(args.nets_json).with_suffix(".png"))


if __name__ == "__main__":
    main()
