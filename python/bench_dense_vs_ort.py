"""Is the project's dense baseline strong? Tuned dense layers against onnxruntime, same run.

Every layer of the dense LeNet-300-100 and LeNet-5 (a Gemm or Conv with the ReLU that follows
it) is cut out of the demo model as its own ONNX graph and run, one thread each, by

* `Pass(target)` with the shipped tuning log (each layer's kernel from the log's best record),
* `Pass(target, logs=False)` (the templates' default knobs, before tuning),
* onnxruntime,

timed in interleaved rounds (medians), at batch 1 and 50. Both sides pay one runtime call per
layer. `--target` is x86-avx2 (default) or x86-avx512 (on a CPU that runs it). Prints a table
and writes out/bench_dense_vs_ort.json (out/bench_dense_vs_ort_x86-avx512.json).

    python python/bench_dense_vs_ort.py [--target x86-avx2] [--rounds 15] [--out out]
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
from onnx import helper  # noqa: E402

import scalpel_tvm  # noqa: E402
from scalpel_tvm.demo import MODEL_TARGETS, demo_model_path, per_target, runnable_target  # noqa: E402
from scalpel_tvm.onnx_import import import_onnx  # noqa: E402
from scalpel_tvm.timing import cpu_name, cpu_vm, median_us, ort_session, ort_timer, vm_timer  # noqa: E402

ACTIVATIONS = ("Relu",)


def layers(model: onnx.ModelProto):
    """(name, sub-model) for each Gemm/Conv with its following ReLU, inputs as the model has them."""
    shapes = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
    shapes.update({vi.name: vi for vi in [*model.graph.input, *model.graph.output]})
    inits = {i.name: i for i in model.graph.initializer}
    nodes = list(model.graph.node)
    for i, node in enumerate(nodes):
        if node.op_type not in ("Gemm", "Conv"):
            continue
        body = [node]
        if i + 1 < len(nodes) and nodes[i + 1].op_type in ACTIVATIONS and nodes[i + 1].input[0] == node.output[0]:
            body.append(nodes[i + 1])
        source = shapes[node.input[0]]
        x = helper.make_tensor_value_info("input", source.type.tensor_type.elem_type, None)
        x.type.CopyFrom(source.type)
        renamed = [helper.make_node(n.op_type, ["input" if v == node.input[0] else v for v in n.input],
                                    list(n.output), **{a.name: helper.get_attribute_value(a) for a in n.attribute})
                   for n in body]
        out = onnx.ValueInfoProto()
        out.CopyFrom(shapes[body[-1].output[0]])
        graph = helper.make_graph(renamed, node.output[0], [x], [out],
                                  [inits[v] for n in body for v in n.input if v in inits])
        sub = helper.make_model(graph, opset_imports=model.opset_import)
        sub.ir_version = model.ir_version
        yield node.output[0], sub


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--target", default="x86-avx2", choices=MODEL_TARGETS, type=runnable_target)
    args = parser.parse_args()
    target = scalpel_tvm.TargetSpec.preset(args.target)
    rows = []
    for network in ("lenet_300_100", "lenet5"):
        model = onnx.load(demo_model_path(network, pruned=False))
        for name, sub in layers(model):
            for batch in (1, 50):
                rows.append(_measure(network, name, sub, batch, target, args.rounds))
                r = rows[-1]
                print(f"{network:>14} {name:>6} b{batch:<3} tuned {r['us']['tuned']:8.1f}  "
                      f"untuned {r['us']['untuned']:8.1f}  onnxruntime {r['us']['onnxruntime']:8.1f} us"
                      f"   ort/tuned {r['ort_over_tuned']:.2f}x")
    report = {"cpu": cpu_name(), "target": args.target, "threads": 1, "layers": rows,
              "geomean_ort_over_tuned": {b: float(np.exp(np.mean([np.log(r["ort_over_tuned"])
                                                                   for r in rows if r["batch"] == b])))
                                         for b in (1, 50)}}
    print("geomean onnxruntime / tuned:", {b: round(v, 2) for b, v in report["geomean_ort_over_tuned"].items()})
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{per_target('bench_dense_vs_ort', args.target)}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


def _measure(network, name, sub, batch, target, rounds) -> dict:
    mod = import_onnx(sub, batch)
    shape = [d.dim_value or batch for d in sub.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    vms = {label: cpu_vm(scalpel_tvm.Pass(target, logs=logs)(mod), target)
           for label, logs in (("tuned", None), ("untuned", False))}
    session = ort_session(sub.SerializeToString())
    arg = tvm.runtime.tensor(x)
    expected = session.run(None, {"input": x})[0]
    for vm in vms.values():
        np.testing.assert_allclose(vm["main"](arg).numpy(), expected, rtol=1e-4, atol=1e-4)
    timers = {label: vm_timer(vm, arg) for label, vm in vms.items()}
    timers["onnxruntime"] = ort_timer(session, {"input": x})
    us = median_us(timers, budget_s=0.1 * rounds, rounds=rounds)
    return {"network": network, "layer": name, "batch": batch, "us": us,
            "ort_over_tuned": us["onnxruntime"] / us["tuned"]}


if __name__ == "__main__":
    main()
