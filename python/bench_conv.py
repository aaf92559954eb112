"""Benchmark the conv2d template against TVM's default lowering and onnxruntime, one thread.

Each layer is conv2d + bias + relu, run three ways from NCHW input to NCHW output:
  * kernel      -- ``schedules/conv2d.py`` called from a Relax VM with ``call_tir``, as the pass
                   emits it;
  * onnxruntime -- a Conv + Relu graph (ORT fuses them), ``intra_op_num_threads=1``;
  * TVM default -- ``relax.op.nn.conv2d`` + add + relu through ``tvm.compile``'s default pipeline.
The shrunk columns rerun the kernel with half the filters and, past the image layer, half the
input channels (what node pruning of this layer and the one before leaves), against the ideal
speedup, the MAC ratio. Times are in microseconds: the median of repeats taken in interleaved
rounds (kernel, onnxruntime, default, shrunk, again), so host noise hits all four alike.

    python python/bench_conv.py [--out DIR] [--quick]
"""

import os

os.environ["TVM_NUM_THREADS"] = "1"  # read when TVM starts its thread pool

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tvm
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm
from tvm import relax

from scalpel_tvm.timing import cpu_name, median_us, ort_session, ort_timer, vm_timer
from scalpel_tvm.schedules.conv2d import (
    conv2d_nchw,
    conv2d_output_shape,
    default_oc_block,
    default_ow_tile,
    pack_conv_weight,
)

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "core-avx2"})
LANES = 8

# name, in_channels, height, width, out_channels, kernel size, padding on every side
LAYERS = [
    ("lenet5.conv1", 1, 28, 28, 20, 5, 0),
    ("lenet5.conv2", 20, 12, 12, 50, 5, 0),
    ("convnet.conv1", 3, 32, 32, 32, 5, 2),
    ("convnet.conv2", 32, 16, 16, 32, 5, 2),
    ("convnet.conv3", 32, 8, 8, 64, 5, 2),
    ("resnet.3x3", 64, 56, 56, 64, 3, 1),
]
BATCHES = (1, 50)


def compile_vm(mod):
    return relax.VirtualMachine(tvm.compile(mod, target=TARGET), tvm.cpu())


def kernel_module(x_shape, w, b, padding):
    """A Relax module calling the template through call_tir, weights bound as constants."""
    (batch, in_channels, height, width), (out_channels, _, kh, kw) = x_shape, w.shape
    pads = (padding,) * 4
    prim = conv2d_nchw(
        batch, in_channels, height, width, out_channels, (kh, kw),
        padding=pads, bias=True, activation="relu", lanes=LANES,
    )  # fmt: skip
    out_shape = conv2d_output_shape(
        batch, in_channels, height, width, out_channels, (kh, kw), padding=pads
    )
    bb = relax.BlockBuilder()
    gv = bb.add_func(prim, "conv2d")
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    with bb.function("main", [x]):
        args = [x, relax.const(pack_conv_weight(w, LANES)), relax.const(b)]
        y = bb.emit(relax.call_tir(gv, args, relax.TensorType(out_shape, "float32")))
        bb.emit_func_output(y)
    return bb.get()


def default_module(x_shape, w, b, padding):
    """The same layer as Relax ops, left to TVM's default lowering."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), padding=(padding,) * 4))
            y = bb.emit(relax.op.add(y, relax.const(b.reshape(1, -1, 1, 1))))
            y = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(y)
    return bb.get()


def conv_onnx(x_shape, w, b, padding):
    """The same layer as an ONNX Conv + Relu, for onnxruntime."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[padding] * 4),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def measure(layer, batch, budget_s, rounds, rng):
    name, in_channels, height, width, out_channels, k, padding = layer
    x = rng.standard_normal((batch, in_channels, height, width), dtype="float32")
    w = rng.standard_normal((out_channels, in_channels, k, k), dtype="float32") * 0.1
    b = rng.standard_normal(out_channels, dtype="float32")
    # Node-shrunk: half the filters; half the input channels unless they are the image's.
    keep_in = in_channels if in_channels <= 3 else in_channels // 2
    keep_out = out_channels // 2
    x_tvm, xs_tvm = tvm.runtime.tensor(x), tvm.runtime.tensor(x[:, :keep_in].copy())

    kernel_vm = compile_vm(kernel_module(x.shape, w, b, padding))
    sess = ort_session(conv_onnx(x.shape, w, b, padding))
    expected = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(kernel_vm["main"](x_tvm).numpy(), expected, rtol=1e-4, atol=1e-4)
    shrunk_mod = kernel_module(xs_tvm.shape, w[:keep_out, :keep_in].copy(), b[:keep_out], padding)
    timers = {
        "kernel_us": vm_timer(kernel_vm, x_tvm),
        "ort_us": ort_timer(sess, {"x": x}),
        "tvm_default_us": vm_timer(compile_vm(default_module(x.shape, w, b, padding)), x_tvm),
        "shrunk_us": vm_timer(compile_vm(shrunk_mod), xs_tvm),
    }
    oc_block = default_oc_block(out_channels, LANES)
    ow_tile = default_ow_tile(expected.shape[3], oc_block, LANES)
    row = {
        "layer": name,
        "batch": batch,
        "macs": int(expected.size * in_channels * k * k),
        "knobs": {"oc_block": oc_block, "ow_tile": ow_tile},
    }
    row.update(median_us(timers, budget_s, rounds))
    row["shrunk_channels"] = [keep_in, keep_out]
    row["shrunk_ideal"] = in_channels * out_channels / (keep_in * keep_out)
    row["shrunk_speedup"] = row["kernel_us"] / row["shrunk_us"]
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out", help="folder for bench_conv.json")
    parser.add_argument("--quick", action="store_true", help="batch 1 only, short budgets")
    args = parser.parse_args()

    batches = (1,) if args.quick else BATCHES
    budget_s, rounds = (0.1, 5) if args.quick else (0.5, 9)
    rng = np.random.default_rng(0)
    cases = [(layer, batch) for batch in batches for layer in LAYERS]
    rows = [
        measure(layer, batch, budget_s, rounds, rng)
        for layer, batch in tqdm(cases, desc="conv2d")
    ]

    head = (
        f"{'layer':14} {'B':>3} {'kernel':>9} {'onnxrt':>9} {'tvm-def':>10} {'ort/ker':>7} "
        f"{'def/ker':>7} | {'shrunk':>9} {'speedup':>7} {'ideal':>5} {'of ideal':>8}"
    )
    print("\nmicroseconds, median, 1 thread;  conv2d + bias + relu, NCHW in and out")
    print("ort/ker, def/ker: times faster than onnxruntime, than TVM's default lowering")
    print(head)
    for r in rows:
        print(
            f"{r['layer']:14} {r['batch']:>3} {r['kernel_us']:9.1f} {r['ort_us']:9.1f} "
            f"{r['tvm_default_us']:10.1f} {r['ort_us'] / r['kernel_us']:7.2f} "
            f"{r['tvm_default_us'] / r['kernel_us']:7.1f} | {r['shrunk_us']:9.1f} "
            f"{r['shrunk_speedup']:7.2f} {r['shrunk_ideal']:5.1f} "
            f"{r['shrunk_speedup'] / r['shrunk_ideal']:8.2f}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "threads": 1,
        "target": str(TARGET),
        "lanes": LANES,
        "timing": {"budget_s": budget_s, "rounds": rounds},
        "versions": {"tvm": tvm.__version__, "onnxruntime": ort.__version__},
        "rows": rows,
    }
    (out / "bench_conv.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out / 'bench_conv.json'}")


if __name__ == "__main__":
    main()
