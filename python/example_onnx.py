"""The user path in a dozen lines: an ONNX model in, a fast pruned TVM module out.

    python python/example_onnx.py [MODEL.onnx [TARGET]]
    (default: the shipped Scalpel-pruned LeNet-300-100; TARGET defaults to the one the model was
    pruned for where this CPU runs it, else host: compile for the lanes its groups match, not a
    wider host's)
"""
import sys

import numpy as np
import tvm
from tvm import relax

import scalpel_tvm
from scalpel_tvm.demo import demo_model_path, recorded_target
from scalpel_tvm.onnx_import import load_onnx

model = load_onnx(sys.argv[1] if len(sys.argv) > 1 else demo_model_path("lenet_300_100", pruned=True))
target = scalpel_tvm.TargetSpec.preset(sys.argv[2] if len(sys.argv) > 2 else recorded_target(model))

mod = scalpel_tvm.import_onnx(model, batch=1)           # weights bound as constants, batch fixed
print(scalpel_tvm.plan(mod, target).table())             # what the pass will do, per layer
mod = tvm.transform.Sequential([scalpel_tvm.Pass(target)])(mod)
mod["main"].show()                                       # fc1 = R.call_tir(fc1_gsparse_g8x1, ...)

vm = relax.VirtualMachine(scalpel_tvm.compile(mod, target), tvm.cpu())  # tvm.compile, the VM compiled too
shape = [int(d) for d in mod["main"].params[0].ty.shape]
x = np.random.default_rng(0).standard_normal(shape).astype("float32")
print(vm["main"](tvm.runtime.tensor(x)).numpy())
