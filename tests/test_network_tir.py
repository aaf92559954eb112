"""The int16 network as TVM TIR (`network_tir`): TVM's C code generator emits the function that runs
the layers, it calls each layer's micro-kernel in order, and the firmware built around it computes
exactly the numpy reference on the emulated Cortex-M4."""
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nets import mlp
from scalpel_tvm import ScalpelError, TargetSpec, cortex_m, network_tir, paper_nets
from scalpel_tvm.int16_net import quantize_net

M4_MEMORY = TargetSpec.preset("cortex-m4").memory


def extern_calls(func) -> list[str]:
    """The functions `func` calls with call_extern, in order (from its TVMScript)."""
    return re.findall(r'T\.call_extern\("void", "(\w+)"', func.script())


@pytest.fixture(scope="module")
def lenet5():
    """LeNet-5 pruned as pairs, its layers in every weight format the kernels have."""
    model = paper_nets.group_pruned(paper_nets.network("lenet5"), paper_nets.han_density("lenet5"), 2, "1xg")
    rng = np.random.default_rng(2)
    formats = {"conv1": "csr", "conv2": "gsparse2_delta", "fc1": "gsparse2", "fc2": "dense"}
    return quantize_net(model, rng.random((16, 1, 28, 28)), formats=formats), rng


def test_each_layer_is_a_call_to_its_formats_kernel_in_order(lenet5):
    net, _ = lenet5
    func = network_tir.network_primfunc(net)
    assert extern_calls(func) == ["scalpel_conv_q15_csr", "scalpel_maxpool_q15", "scalpel_conv_q15_gsparse2_delta",
                                  "scalpel_maxpool_q15", "scalpel_fc_q15_gsparse2", "scalpel_fc_q15_dense"]
    # the arena, the im2col column, then each weighted layer's arrays and bias
    assert len(func.params) == 2 + 4 + 4 + 4 + 2
    source = network_tir.c_source(net)
    assert "__tvm_ffi_scalpel_network" in source
    assert source.index("scalpel_conv_q15_csr(") < source.index("scalpel_fc_q15_dense(")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 40), min_size=2, max_size=6), st.data())
def test_no_layer_reads_what_it_writes_and_the_arena_holds_every_layer(dims, data):
    """Any chain of widths and formats: each layer's input and output are disjoint slices of the
    arena, the network's outputs are where the last layer wrote, and each call has its arrays."""
    fc_formats = [fmt for kind, fmt in network_tir.KERNELS if kind == "fc"]
    single = ["dense", "csr"]  # a layer with one input has no pairs (`int16_net.pairs` refuses them)
    formats = {f"gemm{i + 1}": data.draw(st.sampled_from(fc_formats if dims[i] > 1 else single))
               for i in range(len(dims) - 1)}
    net = quantize_net(mlp(dims), np.random.default_rng(0).random((4, dims[0])), formats=formats)
    arena, offsets = net.arena_values(), network_tir.output_offsets(net)
    source = 0
    for layer, target in zip(net.layers, offsets):
        assert 0 <= target and target + layer.out_size <= arena and source + layer.in_size <= arena
        assert source + layer.in_size <= target or target + layer.out_size <= source
        source = target
    assert network_tir.output_offset(net) == offsets[-1]
    calls = extern_calls(network_tir.network_primfunc(net))
    assert calls == [network_tir.KERNELS[("fc", layer.format)][0] for layer in net.layers]


def test_tvms_network_function_on_the_emulated_m4_equals_the_reference(lenet5, tmp_path):
    net, rng = lenet5
    x_q = net.quantize_input(rng.random((3, 1, 28, 28)))
    np.testing.assert_array_equal(cortex_m.run_network(net, x_q, tmp_path, M4_MEMORY), net.forward(x_q))


def test_with_checks_arguments_that_do_not_match_are_refused_on_the_device(tmp_path, monkeypatch):
    """With `checks`, TVM's C checks every tensor it is given; on the board the stub prints the
    check's message and the firmware stops, instead of running a network on the wrong arrays."""
    calibration = np.random.default_rng(0).random((8, 8))
    dense = {"gemm1": "dense", "gemm2": "dense"}
    net = quantize_net(mlp([8, 6, 4]), calibration, formats=dense)
    other = quantize_net(mlp([8, 5, 4]), calibration, formats=dense)  # a smaller arena
    x_q = net.quantize_input(calibration[:2])
    assert "TVMFFIErrorSetRaisedFromCStrParts" in network_tir.c_source(net, checks=True)
    np.testing.assert_array_equal(cortex_m.run_network(net, x_q, tmp_path / "same", M4_MEMORY, checks=True),
                                  net.forward(x_q))  # the checks pass what the build gives them
    real_source = network_tir.c_source
    monkeypatch.setattr(network_tir, "c_source", lambda _net, mcpu, checks: real_source(other, mcpu, checks))
    with pytest.raises(ScalpelError, match=r"(?s)Invalid arena\.shape\[0\].*scalpel_network\(.*refused its arguments"):
        cortex_m.run_network(net, x_q, tmp_path / "other", M4_MEMORY, checks=True)
