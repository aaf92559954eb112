"""CUDA targets: the pass's kernels compile to a cubin with nvcc and have the intended structure.

CI has no GPU, so these tests build and inspect; the kernels' results are checked on a GPU by the
`gpu`-marked tests at the end (run them with `pytest -m gpu` where a GPU is present) and by
`python/bench_gpu.py`, which compares every model with onnxruntime.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scalpel_tvm
from nets import dead_sets, mlp, random_cnn, token_mlp
from scalpel_tvm import ScalpelError, models, paper_nets
from scalpel_tvm.cuda import compile_cuda_module, cubin, cuda_source
from scalpel_tvm.schedules import gpu
from scalpel_tvm.schedules.csr import CSRWeight
from scalpel_tvm.schedules.grouped_sparse import GroupedSparseWeight

ARCH = "sm_80"
TARGET = tvm.target.Target({"kind": "cuda", "arch": ARCH})


def lower(onnx_model, batch, **kwargs):
    mod = scalpel_tvm.import_onnx(onnx_model, batch=batch)
    return tvm.transform.Sequential([scalpel_tvm.Pass(TARGET, **kwargs)])(mod)


def kernels(source):
    """{kernel name: launch bound} of the CUDA source."""
    return {name: int(bound) for bound, name in
            re.findall(r"__global__ void __launch_bounds__\((\d+)\) (\w+)\(", source)}


def call_tir_shapes(mod):
    """{kernel function: the shapes of its constant arguments} in main."""
    shapes = {}
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if isinstance(call, tvm.relax.Call) and call.op.name == "relax.call_tir":
                shapes[call.args[0].name_hint] = [
                    tuple(arg.value.shape) for arg in call.args[1].fields
                    if isinstance(arg, tvm.ir.GenericConst)]
    return shapes


def test_user_path_compiles_a_node_pruned_net_to_a_loadable_cuda_module(tmp_path):
    """Pass(cuda) then plain tvm.compile: the exported library holds a GPU binary (a fatbin
    for the target's arch), not CUDA source, so a GPU machine runs it with TVM's runtime."""
    dense = paper_nets.network("convnet")
    pruned = paper_nets.node_pruned(dense, paper_nets.NODES_KEPT["convnet"])
    out = lower(pruned, 50)
    shapes = call_tir_shapes(out)
    assert shapes["conv1_shrunk_28of32"][0] == (28, 3, 5, 5)
    assert shapes["conv2_shrunk_22of32"][0] == (22, 28, 5, 5)  # its inputs shrunk with conv1
    assert shapes["conv3_shrunk_40of64"][0] == (40, 22, 5, 5)
    assert shapes["fc1_dense"][0] == (1, 40 * 16, 128)  # packed [N / 128, K, 128]; a channel is 16 features
    ex = tvm.compile(out, target=TARGET)
    library = tmp_path / "convnet.so"
    ex.export_library(str(library))
    blob = library.read_bytes()
    assert b"\x50\xed\x55\xba" in blob  # the fatbin magic: compiled device code is inside
    assert b"__global__" not in blob  # ... and no CUDA source in its place
    source = cuda_source(ex)
    names = kernels(source)
    assert {"conv1_shrunk_28of32_kernel", "conv3_shrunk_40of64_kernel", "fc1_dense_kernel"} <= set(names)
    assert cubin(source, ARCH, tmp_path).stat().st_size > 0


RUNTIME_ONLY_LOAD = """
import json, sys
from pathlib import Path
import tvm
from tvm.runtime.vm import VirtualMachine
from scalpel_tvm.cuda import load_cuda_runtime
assert tvm.base._RUNTIME_ONLY and "tvm.relax" not in sys.modules
load_cuda_runtime()
build = Path(sys.argv[1])
for network in json.loads((build / "manifest.json").read_text())["networks"]:
    for variant in network["variants"].values():
        VirtualMachine(tvm.runtime.load_module(str(build / variant["library"])), tvm.cpu())
        kernels = tvm.runtime.load_module(str(build / variant["kernels_library"]))
        for kernel in variant["kernels"]:
            assert kernels.implements_function(kernel["name"]), kernel["name"]
print("loaded", sys.argv[1])
"""


def test_the_gpu_benchmark_builds_here_and_its_modules_load_with_tvms_runtime_alone(tmp_path):
    """`bench_gpu.py build` compiles on a machine without a GPU; what it writes loads where only
    TVM's runtime is (no compiler library), which is all the GPU machine has to carry."""
    dense = paper_nets.network("lenet_300_100")
    pruned = paper_nets.node_pruned(dense, paper_nets.NODES_KEPT["lenet_300_100"])
    for name, model in {"dense.onnx": dense, "pruned.onnx": pruned}.items():
        (tmp_path / name).write_bytes(model.SerializeToString())
    root = Path(__file__).resolve().parents[1]
    build = tmp_path / "build"
    subprocess.run([sys.executable, str(root / "python" / "bench_gpu.py"), "build", "--arch", ARCH, "--out",
                    str(build), "--networks", "--model", f"mlp={tmp_path / 'dense.onnx'},{tmp_path / 'pruned.onnx'}"],
                   check=True, capture_output=True, text=True)
    manifest = json.loads((build / "manifest.json").read_text())
    (network,) = manifest["networks"]
    assert manifest["target"] == ARCH and network["kind"] == "frontend" and set(network["variants"]) == {"dense", "pruned"}
    shrunk = [layer["shrunk_shape"] for layer in network["variants"]["pruned"]["layers"]]
    assert shrunk[0] == [784, paper_nets.NODES_KEPT["lenet_300_100"]["fc1"]]
    io = np.load(build / network["io"])
    assert io["x"].shape == (50, 784) and io["want_pruned"].shape == (50, 10)
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "PYTHONPATH": str(root)}
    loaded = subprocess.run([sys.executable, "-c", RUNTIME_ONLY_LOAD, str(build)], env=env, capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    timed = subprocess.run([sys.executable, str(root / "python" / "bench_gpu.py"), "time", str(build)], env=env,
                           capture_output=True, text=True)
    assert timed.returncode != 0 and "no CUDA GPU visible" in timed.stderr


def test_scalpel_tune_for_cuda_names_the_three_step_route(capsys):
    from scalpel_tvm.cli import main

    assert main(["tune", "--target", "cuda", "--shapes", "784x300"]) == 2
    assert "python/tune_cuda.py build" in capsys.readouterr().err


def test_very_sparse_fc_layers_become_warp_grouped_kernels(tmp_path):
    """LeNet-300-100 pruned in aligned groups of 32 at batch 50: the planner picks the
    warp-grouped kernel for the 92%-group-sparse first layer; it compiles and reads its values
    as whole warps with one index per 32 weights."""
    model = models.lenet_300_100(group=32)
    plan = scalpel_tvm.plan(scalpel_tvm.import_onnx(model, batch=50), TARGET)
    assert plan.group == 32
    chosen = {lp.name: lp.chosen for lp in plan.layers}
    assert chosen["fc1"] == "gsparse_gx1"
    assert all(c.source == "analytical" for lp in plan.layers for c in lp.candidates)
    assert not plan.chains  # one kernel per layer on GPUs
    out = lower(model, 50)
    source = cuda_source(compile_cuda_module(out, TARGET))
    names = kernels(source)
    fc1 = next(name for name in names if name.startswith("fc1_") and "gsparse_g32x1" in name)
    assert names[fc1] % 32 == 0  # whole warps
    definition = source.index(f"{fc1}(", source.index(f"{fc1}(") + 1)  # after the declaration
    body = source[definition: source.index("\n}\n", definition)]
    assert "threadIdx.x" in body and "__syncthreads()" in body
    assert re.search(r"values_ptr\[[^\]]*threadIdx\.x[^\]]*\]", body)  # lane-contiguous loads
    cubin(source, ARCH, tmp_path)


def test_traditional_pruning_compiles_as_csr_kernels(tmp_path):
    """A plan edited to CSR everywhere (traditional pruning's format) lowers FC and conv layers to
    the CSR kernels, whose index arrays hold one entry per kept weight."""
    dense = paper_nets.network("lenet5")
    pruned = paper_nets.magnitude_pruned(dense, paper_nets.han_density("lenet5"))
    mod = scalpel_tvm.import_onnx(pruned, batch=50)
    plan = scalpel_tvm.plan(mod, TARGET)
    for layer in plan.layers:
        layer.chosen, layer.kernel = "csr", f"{layer.name}_csr"
    out = tvm.transform.Sequential([scalpel_tvm.Pass(TARGET, plan=plan)])(mod)
    shapes = call_tir_shapes(out)
    assert set(shapes) == {"conv1_csr", "conv2_csr", "fc1_csr", "fc2_csr"}
    indptr, indices, values = shapes["conv2_csr"][:3]
    assert indptr == (51,) and indices == values
    assert abs(indices[0] / (50 * 20 * 25) - 0.12) < 0.01
    source = cuda_source(compile_cuda_module(out, TARGET))
    assert {"conv1_csr_kernel", "fc1_csr_kernel"} <= set(kernels(source))
    cubin(source, ARCH, tmp_path)


def relax_ops(mod):
    return {binding.value.op.name for block in mod["main"].body.blocks for binding in block.bindings
            if isinstance(binding.value, tvm.relax.Call) and isinstance(binding.value.op, tvm.ir.Op)}


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_pruned_networks_lower_every_layer_to_cuda_kernels(data):
    """Random pruned MLPs and CNNs (dead nodes, zero groups, batch-norm, padding): every layer
    becomes a CUDA kernel call, the model's output type is unchanged, and the module builds."""
    kind = data.draw(st.sampled_from(["mlp", "token-wise mlp", "cnn"]))
    if kind != "cnn":
        dims = data.draw(st.lists(st.integers(3, 70), min_size=3, max_size=4))
        groups = {i: data.draw(st.sampled_from([0.0, 0.9])) for i in range(len(dims) - 1)}
        dead = dead_sets(data, dims[1:-1])
        net = mlp(dims, dead=dead, zero_groups=groups) if kind == "mlp" else token_mlp(
            dims, seq=data.draw(st.integers(1, 4)), dead=dead, zero_groups=groups,
            activation=data.draw(st.sampled_from(["Relu", "Gelu", "GeluTanh"])))
        batch = data.draw(st.sampled_from([1, 5]))
    else:
        net, batch = random_cnn(data, max_channels=9)
    mod = scalpel_tvm.import_onnx(net, batch=batch)
    out = tvm.transform.Sequential([scalpel_tvm.Pass(TARGET)])(mod)
    assert not relax_ops(out) & {"relax.matmul", "relax.nn.conv2d", "relax.linear"}
    tvm.ir.assert_structural_equal(out["main"].ret_ty, mod["main"].ret_ty)
    compile_cuda_module(out, TARGET)


def test_every_gpu_kernel_template_compiles(tmp_path):
    """Each template at awkward sizes (N not a multiple of 32, batch not of the tile, strided and
    padded conv, an empty sparse layer) gives code nvcc accepts."""
    rng = np.random.default_rng(0)
    w = models.prune_groups(rng.standard_normal((70, 45)).astype("float32"), 0.3, 32)
    empty = GroupedSparseWeight.from_dense(np.zeros((70, 45), "float32"), 32, "gx1")
    funcs = {
        "dense_b1": gpu.gpu_dense_fc(1, 70, 45, TARGET, bias=True, activation="relu", name="dense_b1"),
        "dense_b13": gpu.gpu_dense_fc(13, 70, 45, TARGET, bias=False, activation=None, name="dense_b13"),
        "conv": gpu.gpu_conv2d(3, 5, 17, 19, 7, (3, 3), TARGET, strides=(2, 2), padding=(1, 1, 1, 1),
                               dilation=(1, 1), bias=True, activation="relu", name="conv"),
        "gsparse": gpu.gpu_grouped_sparse_fc(GroupedSparseWeight.from_dense(w, 32, "gx1"), 13, bias=True,
                                             activation="relu", name="gsparse", splits=3, batch_tile=4),
        "gsparse_empty": gpu.gpu_grouped_sparse_fc(empty, 2, bias=True, activation=None, name="gsparse_empty"),
        "csr": gpu.gpu_csr_fc(CSRWeight.from_dense(w), 13, bias=False, activation="relu", name="csr"),
        "csr_conv": gpu.gpu_csr_conv2d(rng.standard_normal((7, 5, 3, 3)).astype("float32"), (3, 5, 17, 19),
                                       strides=(2, 2), padding=(1, 1, 1, 1), dilation=(1, 1), bias=True,
                                       activation=None, name="csr_conv")[0],
    }
    source = cuda_source(compile_cuda_module(tvm.IRModule(funcs), TARGET))
    assert {f"{name}_kernel" for name in funcs} <= set(kernels(source))
    cubin(source, ARCH, tmp_path)


@pytest.mark.parametrize("activation, marker", [("gelu", "2.72614"), ("gelu_tanh", "2.760768e-16")])
def test_gpu_fc_kernels_keep_their_gelu_epilogue(activation, marker, tmp_path):
    """Each GPU FC form computes the fused GELU: the leading coefficient of the erf (or tanh)
    polynomial appears in the body of every kernel (a dropped epilogue would give x + b)."""
    w = models.prune_groups(np.random.default_rng(1).standard_normal((70, 45)).astype("float32"), 0.3, 32)
    funcs = {
        "dense_b1": gpu.gpu_dense_fc(1, 70, 45, TARGET, bias=True, activation=activation, name="dense_b1"),
        "dense_b13": gpu.gpu_warp_dense_fc(13, 70, 45, bias=True, activation=activation, name="dense_b13"),
        "gsparse": gpu.gpu_grouped_sparse_fc(GroupedSparseWeight.from_dense(w, 32, "gx1"), 13, bias=True,
                                             activation=activation, name="gsparse"),
        "csr": gpu.gpu_csr_fc(CSRWeight.from_dense(w), 13, bias=True, activation=activation, name="csr"),
    }
    source = cuda_source(compile_cuda_module(tvm.IRModule(funcs), TARGET))
    bodies = re.split(r"__global__ void __launch_bounds__\(\d+\) ", source)[1:]
    assert sorted(body.split("(")[0] for body in bodies if marker in body) == sorted(kernels(source))
    cubin(source, ARCH, tmp_path)


def test_grouped_sparse_gpu_kernel_refuses_groups_that_are_not_a_warp():
    weight = GroupedSparseWeight.from_dense(np.ones((16, 16), "float32"), 8, "gx1")
    with pytest.raises(ValueError, match="groups of 32"):
        gpu.gpu_grouped_sparse_fc(weight, 1, bias=False, activation=None, name="k")


def test_cuda_target_without_arch_is_a_clear_error():
    with pytest.raises(ScalpelError, match="arch"):
        scalpel_tvm.Pass({"kind": "cuda"})


def test_a_cuda_tuning_log_gives_each_conv_layer_its_fastest_tile_setting(tmp_path):
    """Times recorded for the candidates of LeNet-5's conv layers make a meta_schedule log;
    Pass(cuda, logs=) then schedules each conv with its fastest setting (here the 32 x 4-channel
    tile: 8 x 32 = 256 threads a block instead of the default 128), and without the log keeps
    dlight's default."""
    from scalpel_tvm.cuda_tuning import candidates, model_conv_workloads, record_times, write_manifest
    from scalpel_tvm.logs import TuningLog
    from scalpel_tvm.target import TargetSpec

    spec = TargetSpec.from_target(TARGET)
    model = paper_nets.network("lenet5")
    workloads = model_conv_workloads([model], spec, 50)
    assert [(wl.channels, wl.out_channels) for wl in workloads] == [(1, 20), (20, 50)]
    manifest = candidates(workloads)
    assert len(manifest) == 2 * len(gpu.CONV_TILE_SPACE)
    write_manifest(tmp_path, spec, manifest)
    fastest = {"block_size_y": 32}
    times = {e["kernel"]: [1e-5 if e["knobs"] == fastest else 2e-5] * 3 for e in manifest}
    assert record_times(tmp_path, times, tmp_path / "log", spec) == len(manifest)
    assert record_times(tmp_path, times, tmp_path / "log", spec) == 0  # measured settings are kept, not doubled
    assert all(TuningLog(tmp_path / "log").best_knobs(wl) == fastest for wl in workloads)
    # a later run measures only settings the log lacks (and each shape's default, to check them against)
    assert [e["knobs"] for e in candidates(workloads, TuningLog(tmp_path / "log"))] == [{}, {}]

    def conv_threads(logs):
        mod = scalpel_tvm.import_onnx(model, batch=50)
        out = tvm.transform.Sequential([scalpel_tvm.Pass(TARGET, logs=logs)])(mod)
        source = cuda_source(compile_cuda_module(out, TARGET))
        return {name: bound for name, bound in kernels(source).items() if name.startswith("conv")}

    assert conv_threads(tmp_path / "log") == {"conv1_dense_kernel": 256, "conv2_dense_kernel": 256}
    assert conv_threads(False) == {"conv1_dense_kernel": 128, "conv2_dense_kernel": 128}


def test_gpu_cost_model_prefers_the_warp_kernel_only_where_it_pays():
    """From the fitted H100 rates: a 95%-group-sparse 9216x4096 layer is cheaper warp-grouped;
    a 50%-sparse small layer at batch 1 stays dense (the GEMV streams it in one pass)."""
    from scalpel_tvm.cost import KernelQuery
    from scalpel_tvm.gpu_cost import GpuCost

    cost = GpuCost(scalpel_tvm.TargetSpec.preset("cuda"))

    def pick(batch, k, n, sparsity):
        groups = round(k * (n // 32) * (1 - sparsity))
        dense = cost.estimate(KernelQuery("fc", "dense", batch, k, n)).seconds
        sparse = cost.estimate(KernelQuery("fc", "gsparse_gx1", batch, k, n, group=32, groups=groups)).seconds
        return "gsparse_gx1" if sparse < dense else "dense"

    assert pick(50, 9216, 4096, 0.95) == "gsparse_gx1"
    assert pick(1, 800, 512, 0.5) == "dense"


# --- on a GPU (`pytest -m gpu`) ------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 50])
def test_gpu_results_match_onnxruntime(batch):
    """Every form the pass emits for CUDA, run on the GPU, equals onnxruntime on the CPU."""
    import onnxruntime as ort
    from tvm import relax

    dev = tvm.cuda(0)
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_" + dev.compute_version.replace(".", "")})
    cases = {"warp-grouped": models.lenet_300_100(group=32), "shrunk conv": models.lenet5(group=32),
             "mlp": mlp([64, 40, 33, 5], dead={0: [1, 7]}, zero_groups={1: 0.7}),
             "token-wise": token_mlp([64, 96, 40], seq=3, dead={0: [2, 5]}, activation="Gelu"),
             "token-wise, one row": token_mlp([64, 96, 40], seq=1, dead={0: [2, 5]}, activation="GeluTanh")}
    for name, model in cases.items():
        mod = scalpel_tvm.import_onnx(model, batch=batch)
        out = tvm.transform.Sequential([scalpel_tvm.Pass(target)])(mod)
        vm = relax.VirtualMachine(tvm.compile(out, target=target), dev)
        x = np.random.default_rng(0).standard_normal(
            [batch, *[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]]
        ).astype("float32")
        got = vm["main"](tvm.runtime.tensor(x, dev)).numpy()
        want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"input": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)
