"""Token-wise layers: a transformer's feed-forward block through the pass, side by side.

BERT-base's FFN (768 -> 3072, GELU, 3072 -> 768 on [1, 128, 768]; MatMul + Add on a 3-D input,
as PyTorch exports nn.Linear) with random weights, timed in interleaved rounds (medians, one
thread) as

* TVM without the pass (TVM's default lowering of `matmul`: what the pass left before it took
  3-D inputs),
* `Pass(x86-avx2)` on the dense block (the dense baseline), and with ReLU in place of GELU (what
  GELU costs: TVM lowers it as its own op),
* `Pass` on the block with half its 3072 intermediate neurons pruned (node shrinking removes
  them from fc1 and their rows from fc2),
* `Pass` on the block with 90% of its aligned groups of 8 pruned (grouped-sparse kernels),
* onnxruntime on the dense block.

Every output is checked against onnxruntime. Prints a table and writes
out/bench_transformer_ffn.json.

    python python/bench_transformer_ffn.py [--seq 128] [--hidden 768] [--ffn 3072] [--rounds 7] [--out out]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import tvm  # noqa: E402
from tqdm import tqdm  # noqa: E402
from tvm import relax  # noqa: E402

import scalpel_tvm  # noqa: E402
from scalpel_tvm import models  # noqa: E402
from scalpel_tvm.onnx_import import import_onnx  # noqa: E402
from scalpel_tvm.timing import cpu_name, median_us, ort_session, ort_timer, vm_timer  # noqa: E402

TARGET = "x86-avx2"


def compiled(model, use_pass: bool):
    mod = import_onnx(model, batch=1)
    if use_pass:
        mod = tvm.transform.Sequential([scalpel_tvm.Pass(TARGET)])(mod)
    spec = scalpel_tvm.TargetSpec.preset(TARGET)
    return relax.VirtualMachine(tvm.compile(mod, target=spec.target), tvm.cpu()), mod


def with_activation(model, op_type: str, **attributes):
    """The block with another activation in place of exact GELU: ReLU shows what the fused GELU
    epilogue costs, GELU's tanh approximation (GPT-2's) that its epilogue costs the same."""
    other = type(model)()
    other.CopyFrom(model)
    for node in other.graph.node:
        if node.op_type == "Gelu":
            node.op_type = op_type
            node.attribute.extend(onnx.helper.make_attribute(k, v) for k, v in attributes.items())
    return other


def kernels(mod) -> list[str]:
    return sorted(gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--ffn", type=int, default=3072)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--budget", type=float, default=10.0, help="seconds of timing per candidate")
    parser.add_argument("--out", type=Path, default=Path("out"))
    args = parser.parse_args()
    started = time.time()
    size = dict(hidden=args.hidden, ffn=args.ffn, seq=args.seq)
    dense = models.transformer_ffn(**size)
    variants = {  # name -> (model, through the pass)
        "TVM without the pass": (dense, False),
        "Pass, dense": (dense, True),
        "Pass, dense, ReLU for GELU": (with_activation(dense, "Relu"), True),
        "Pass, dense, GELU (tanh)": (with_activation(dense, "Gelu", approximate="tanh"), True),
        "Pass, 50% of neurons pruned": (models.transformer_ffn(**size, keep_nodes=0.5), True),
        "Pass, 90% of groups pruned": (models.transformer_ffn(**size, keep_groups=0.1), True),
    }
    x = np.random.default_rng(1).standard_normal((1, args.seq, args.hidden)).astype(np.float32)
    timers, rows = {}, {}
    for name, (model, use_pass) in tqdm(variants.items(), desc="compile"):
        vm, mod = compiled(model, use_pass)
        reference = ort_session(model.SerializeToString()).run(None, {"input": x})[0]
        out = vm["main"](tvm.runtime.tensor(x)).numpy()
        rows[name] = {"max_abs_diff_vs_onnxruntime": float(np.abs(out - reference).max()),
                      "kernels": kernels(mod) if use_pass else [],
                      "weights_removed": models.weights_removed(model)}
        timers[name] = vm_timer(vm, tvm.runtime.tensor(x))
    timers["onnxruntime, dense"] = ort_timer(ort_session(dense.SerializeToString()), {"input": x})
    rows["onnxruntime, dense"] = {"weights_removed": 0.0}
    print(f"timing {len(timers)} candidates, {args.rounds} interleaved rounds ...")
    us = median_us(timers, args.budget, args.rounds)
    base = us["Pass, dense"]
    print(f"{'':32}{'µs':>12}{'vs Pass dense':>15}{'weights removed':>17}  kernels")
    for name, t in us.items():
        rows[name].update(us=t, speedup_vs_pass_dense=base / t)
        print(f"{name:32}{t:12.1f}{base / t:14.2f}x{rows[name]['weights_removed']:16.1%}  "
              f"{', '.join(rows[name].get('kernels', []))}")
    report = {"cpu": cpu_name(), "target": TARGET, "shape": {"batch": 1, **size},
              "rounds": args.rounds, "variants": rows, "seconds": round(time.time() - started, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_transformer_ffn.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'bench_transformer_ffn.json'} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
