"""What the Relax VM's call costs a µs-sized model: `tvm.compile` (bytecode) against
`scalpel_tvm.compile` (the VM's code compiled too, `exec_mode="compiled"`), same run.

The demo's dense and pruned models, through `Pass(x86-avx2)`, each built both ways, timed in
interleaved rounds (medians) at batch 1 and 50, with an empty Relax function (it returns its
input: the call alone) built both ways for scale. The outputs of the two builds must be equal.
Prints the table and the pruned-over-dense speedup each way; writes out/bench_vm_call.json.

    python python/bench_vm_call.py [--rounds 15] [--out out]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import tvm  # noqa: E402
from tvm import relax  # noqa: E402

import scalpel_tvm  # noqa: E402
from scalpel_tvm.demo import demo_model_path  # noqa: E402
from scalpel_tvm.onnx_import import input_shapes  # noqa: E402
from scalpel_tvm.timing import cpu_name, median_us, vm_timer  # noqa: E402

BUILDS = {"bytecode": tvm.compile, "compiled": scalpel_tvm.compile}


def empty_function(shape) -> tvm.IRModule:
    """`main(x) = x`: what a call costs with no kernel in it."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        bb.emit_func_output(x)
    return bb.get()


def measure(network: str, batch: int, target, rounds: int) -> dict:
    onnx_models = {kind: onnx.load(demo_model_path(network, pruned=kind == "pruned")) for kind in ("dense", "pruned")}
    modules = {kind: scalpel_tvm.Pass(target)(scalpel_tvm.import_onnx(model, batch))
               for kind, model in onnx_models.items()}
    (shape,) = input_shapes(onnx_models["dense"], batch).values()
    modules["empty"] = empty_function(shape)
    arg = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(shape).astype("float32"))
    timers = {}
    for kind, mod in modules.items():
        outputs = {}
        for build_name, build in BUILDS.items():
            vm = relax.VirtualMachine(build(mod, target=target.target), tvm.cpu())
            outputs[build_name] = vm["main"](arg).numpy()
            timers[f"{kind} {build_name}"] = vm_timer(vm, arg)
        np.testing.assert_array_equal(outputs["bytecode"], outputs["compiled"])
    us = median_us(timers, budget_s=0.2 * rounds, rounds=rounds)
    return {"network": network, "batch": batch, "us": us,
            "pruned_over_dense": {b: us[f"dense {b}"] / us[f"pruned {b}"] for b in BUILDS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("out"))
    args = parser.parse_args()
    target = scalpel_tvm.TargetSpec.preset("x86-avx2")
    rows = [measure(n, b, target, args.rounds) for n in ("lenet_300_100", "lenet5") for b in (1, 50)]
    print(f"{'µs per call':<20} {'build':<9} {'empty':>7} {'dense':>9} {'pruned':>9} {'pruned vs dense':>16}")
    for r in rows:
        for b in BUILDS:
            print(f"{r['network'] + ' b' + str(r['batch']):<20} {b:<9} {r['us'][f'empty {b}']:7.2f} "
                  f"{r['us'][f'dense {b}']:9.2f} {r['us'][f'pruned {b}']:9.2f} {r['pruned_over_dense'][b]:15.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench_vm_call.json"
    path.write_text(json.dumps({"cpu": cpu_name(), "threads": 1, "target": target.name, "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
