"""scalpel_tvm.Pass end to end: every layer becomes a scheduled kernel and results stay the same."""
import numpy as np
import pytest
from onnx import numpy_helper as onnx_numpy
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scalpel_tvm
from nets import (assert_close, cnn, dead_sets, mlp, mobile_block, random_cnn, random_input,
                  relax_module, run_ort, run_relax, token_mlp)
from scalpel_tvm import ScalpelError, models


def apply(mod, target="x86-avx2", **kwargs):
    return tvm.transform.Sequential([scalpel_tvm.Pass(target, **kwargs)])(mod)


def relax_ops(mod):
    ops = set()
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            if isinstance(binding.value, tvm.relax.Call) and isinstance(binding.value.op, tvm.ir.Op):
                ops.add(binding.value.op.name)
    return ops


def kernel_names(mod):
    return sorted(gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc))


def check(onnx_model, batch=1, **kwargs):
    mod = relax_module(onnx_model, batch)
    out = apply(mod, **kwargs)
    x = random_input(onnx_model, batch)
    assert_close(run_relax(out, x), run_relax(mod, x))
    assert_close(run_relax(out, x), run_ort(onnx_model, x))
    return out


def planned_kernels(onnx_model, batch):
    """The kernel functions the plan says the module will have (chains as one function)."""
    layer_plan = scalpel_tvm.plan(relax_module(onnx_model, batch), "x86-avx2")
    by_name = {lp.name: lp.kernel for lp in layer_plan.layers}
    chained = {name for chain in layer_plan.chains for name in chain}
    names = [kernel for name, kernel in by_name.items() if name not in chained]
    names += ["__".join(by_name[name] for name in chain) for chain in layer_plan.chains]
    return sorted(names)


def test_lenet_300_100_at_batch_1_is_one_grouped_sparse_chain():
    out = check(models.lenet_300_100(), 1)
    assert "relax.matmul" not in relax_ops(out)
    (name,) = kernel_names(out)
    assert [name] == planned_kernels(models.lenet_300_100(), 1)
    # The big layers are >90% group-sparse; the 100x10 output layer is a near tie either way.
    assert name.startswith("fc1_gsparse_g8x1__fc2_gsparse_g8x1__fc3_")


@pytest.mark.parametrize("batch,chain", [(1, False), (5, True)])
def test_each_layer_its_own_kernel_when_batched_or_asked(batch, chain):
    out = check(models.lenet_300_100(), batch, chain=chain)
    names = kernel_names(out)
    assert names[:2] == ["fc1_gsparse_g8x1", "fc2_gsparse_g8x1"] and len(names) == 3
    if chain:
        assert names == planned_kernels(models.lenet_300_100(), batch)


@pytest.mark.parametrize("batch", [1, 3])
def test_compile_builds_the_vm_as_code_with_the_same_results(batch):
    """`scalpel_tvm.compile`: `tvm.compile` with the Relax VM's bytecode compiled to code
    (`exec_mode="compiled"`); a pruned CNN (shrunk convs, pools, a flatten, an FC layer) gives
    exactly the outputs of the bytecode build."""
    onnx_model = cnn((1, 6, 8), dead={0: [0, 2], 1: [1]}, fc=10)
    mod = apply(relax_module(onnx_model, batch))
    x = tvm.runtime.tensor(random_input(onnx_model, batch))
    compiled, bytecode = (scalpel_tvm.compile(mod, "x86-avx2"),
                          tvm.compile(mod, target=scalpel_tvm.TargetSpec.preset("x86-avx2").target))
    assert "vm_tir_func" in compiled.as_text() and "vm_tir_func" not in bytecode.as_text()
    outputs = [tvm.relax.VirtualMachine(ex, tvm.cpu())["main"](x).numpy() for ex in (compiled, bytecode)]
    np.testing.assert_array_equal(*outputs)


@pytest.mark.parametrize("batch", [1, 2])
def test_lenet5_shrinks_convs_and_sparsifies_fc(batch):
    out = check(models.lenet5(), batch)
    assert {"relax.matmul", "relax.nn.conv2d"}.isdisjoint(relax_ops(out))
    names = kernel_names(out)
    assert names == planned_kernels(models.lenet5(), batch)
    assert names[:2] == ["conv1_shrunk_10of20", "conv2_shrunk_16of50"]
    assert names[2].startswith("fc1_gsparse_g8x1__fc2_" if batch == 1 else "fc1_gsparse_g8x1")


def test_dense_model_gets_scheduled_dense_kernels():
    out = check(models.lenet_300_100(pruned=False))
    assert kernel_names(out) == ["fc1_dense__fc2_dense__fc3_dense"]


def test_chain_of_identical_layers():
    """Equal layers may share one specialized kernel; the chain must still be well formed."""
    net = mlp([16, 16, 16, 16])
    for i in range(3):
        net.graph.initializer[2 * i].CopyFrom(onnx_numpy.from_array(np.eye(16, dtype="float32"), f"w{i}"))
    check(net, batch=2)


def test_batch_norm_folds_into_the_conv_kernel():
    out = check(cnn((1, 6, 8), dead={0: [1, 2]}, bn=True, hw=14))
    assert {"relax.subtract", "relax.divide", "relax.multiply", "relax.nn.relu"}.isdisjoint(relax_ops(out))
    assert kernel_names(out) == ["conv1_shrunk_4of6", "conv2_dense", "fc1_dense"]


def test_sigmoid_mlp_with_dead_neurons_and_groups():
    check(mlp([40, 32, 24, 6], dead={0: [0, 5, 9], 1: [3]}, zero_groups={0: 0.8, 1: 0.6},
              activation="Sigmoid"), batch=3)


@pytest.mark.parametrize("activation,batch", [("Gelu", 1), ("GeluTanh", 1), ("Relu", 2)])
def test_token_wise_layers_become_scheduled_kernels(activation, batch):
    """A transformer-style MLP on [batch, seq, features]: every MatMul runs as one of our kernels
    over batch*seq rows, shrunk and grouped-sparse like a 2-D layer, with its bias and GELU/ReLU
    fused, and the output keeps its shape."""
    net = token_mlp([64, 96, 48], seq=6, dead={0: [2, 7, 50]}, zero_groups={0: 0.9}, bias={0: 0.2},
                    activation=activation)
    out = check(net, batch)
    assert {"relax.matmul", "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.relu"}.isdisjoint(relax_ops(out))  # fused
    names = kernel_names(out)
    assert names == planned_kernels(net, batch)
    assert names[0].startswith("fc1_shrunk_93of96_gsparse") and names[1] == "fc2_dense"
    layer_plan = scalpel_tvm.plan(relax_module(net, batch), "x86-avx2")
    assert [lp.batch for lp in layer_plan.layers] == [6 * batch] * 2


@pytest.mark.parametrize("stride,multiplier,batch", [(1, 1, 1), (2, 2, 2)])
def test_depthwise_convs_are_left_to_tvm_and_stop_node_shrinking(stride, multiplier, batch):
    """A MobileNet-style block: TVM's own lowering of a depthwise conv measured on par with
    onnxruntime (README), so it stays; node shrinking stops in front of it (the first conv keeps
    its dead filters, the plan says why) and works after it (the pointwise conv loses its own)."""
    net = mobile_block(8, multiplier=multiplier, stride=stride, dead={"conv": [0, 3], "pointwise": [1, 2, 5]})
    with pytest.warns(UserWarning, match="left relax.nn.conv2d .* untouched: grouped convolution \\(groups=8\\)"):
        out = check(net, batch)
    assert kernel_names(out)[:2] == ["conv1_dense", "conv2_shrunk_9of12"]
    layer_plan = scalpel_tvm.plan(relax_module(net, batch), "x86-avx2")
    assert "depthwise conv reads it" in layer_plan.layers[0].shrink_reason


def test_user_edited_plan_is_applied():
    mod = relax_module(models.lenet_300_100())
    layer_plan = scalpel_tvm.plan(mod, "x86-avx2")
    for lp in layer_plan.layers:
        lp.chosen, lp.kernel = "gsparse_1xg", f"{lp.name}_mine"
    out = apply(mod, plan=layer_plan)
    assert kernel_names(out) == ["fc1_mine__fc2_mine__fc3_mine"]
    x = random_input(models.lenet_300_100(), 1)
    assert_close(run_relax(out, x), run_relax(mod, x))


@pytest.mark.parametrize("batch", [1, 3])
def test_forms_set_by_hand_compile_as_asked_and_keep_results(batch):
    """`Plan.with_forms` deploys a layer as another tool would (here CSR) and leaves the plan it
    came from as it was; a form a layer cannot take, or a layer the plan lacks, is named."""
    net = models.lenet5()
    mod = relax_module(net, batch)
    layer_plan = scalpel_tvm.plan(mod, "x86-avx2")
    chosen = {lp.name: lp.chosen for lp in layer_plan.layers}
    forced = layer_plan.with_forms({"fc1": "csr", "fc2": "gsparse_1xg", "conv2": "dense"})
    assert {lp.name: lp.chosen for lp in layer_plan.layers} == chosen
    by_name = {lp.name: lp for lp in forced.layers}
    assert (by_name["fc1"].chosen, by_name["fc1"].kernel) == ("csr", "fc1_csr")
    assert "by hand" in by_name["fc2"].reason and by_name["fc2"].kernel == "fc2_gsparse_g1x8"
    assert "fc1" in forced.table() and np.isnan(by_name["fc1"].chosen_seconds)  # CSR has no price here
    out = apply(mod, plan=forced)
    assert any("fc1_csr" in name for name in kernel_names(out))
    x = random_input(net, batch)
    assert_close(run_relax(out, x), run_relax(mod, x))
    with pytest.raises(ScalpelError, match="conv1 .conv. cannot be compiled as 'csr'"):
        layer_plan.with_forms({"conv1": "csr"})
    with pytest.raises(ScalpelError, match="no layer fc9"):
        layer_plan.with_forms({"fc9": "dense"})


def test_non_constant_matmul_is_left_untouched_and_reported():
    from onnx import helper
    net = mlp([8, 8, 4])
    net.graph.node.append(helper.make_node("MatMul", ["act0", "act0_t"], ["sq"]))
    net.graph.node.insert(2, helper.make_node("Transpose", ["act0"], ["act0_t"]))
    net.graph.output.append(helper.make_tensor_value_info("sq", 1, ["batch", "batch"]))
    mod = relax_module(net)
    layer_plan = scalpel_tvm.plan(mod, "x86-avx2")
    assert any("not a constant" in u["reason"] for u in layer_plan.untouched)
    with pytest.warns(UserWarning, match="left relax.matmul .* untouched: weight is not a constant"):
        out = apply(mod)
    assert "relax.matmul" in relax_ops(out)
    x = random_input(net, 1)
    ref = run_ort(net, x)
    got = tvm.compile(out, target=tvm.target.Target({"kind": "llvm", "mcpu": "core-avx2"}))
    vm = tvm.relax.VirtualMachine(got, tvm.cpu())
    result = vm["main"](tvm.runtime.tensor(x))
    assert_close(result[0].numpy(), ref)


def test_cortex_m_targets_are_refused_clearly():
    with pytest.raises(ScalpelError, match="not supported yet"):
        scalpel_tvm.Pass("cortex-m4")


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_pruned_mlps_compile_to_the_same_outputs(data):
    dims = data.draw(st.lists(st.integers(3, 40), min_size=3, max_size=4))
    dead = dead_sets(data, dims[1:-1])
    groups = {i: data.draw(st.sampled_from([0.0, 0.5, 0.9])) for i in range(len(dims) - 1)}
    check(mlp(dims, dead=dead, zero_groups=groups, seed=data.draw(st.integers(0, 99))),
          batch=data.draw(st.sampled_from([1, 4])))


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_pruned_cnns_compile_to_the_same_outputs(data):
    net, batch = random_cnn(data, max_channels=9)
    check(net, batch)
