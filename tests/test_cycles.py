"""The Cortex-M4 cycle estimate: executed instructions, weighted by the M4's timing table."""
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from nets import mlp
from scalpel_tvm import ScalpelError, cortex_m, cycles, models
from scalpel_tvm.int16_net import quantize_net


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """A pruned LeNet-300-100 (`models`, random weights) as int16 firmware: fc1 and fc2 as pairs, fc3 dense."""
    model = models.lenet_300_100(pruned=True)
    rng = np.random.default_rng(0)
    net = quantize_net(model, rng.random((32, 784)), formats={"fc1": "gsparse2", "fc2": "gsparse2", "fc3": "dense"})
    x_q = net.quantize_input(rng.random((1, 784)))
    elf = cortex_m.build_network(net, x_q, tmp_path_factory.mktemp("fw"))
    return net, elf


def test_every_stored_pair_is_one_executed_smuad(lenet):
    """The emulation runs exactly the work the format holds: one SMUAD per stored pair, one per
    pair of inputs of the dense layer, and no more."""
    net, elf = lenet
    count = cycles.count_cycles(elf)
    pairs = sum(len(layer.arrays()["indices"]) for layer in net.layers if layer.format == "gsparse2")
    dense = sum(layer.w_nk.shape[0] * (layer.w_nk.shape[1] // 2) for layer in net.layers if layer.format == "dense")
    assert count.mnemonics["smuad"] == pairs + dense
    assert count.mnemonics["qadd"] >= count.mnemonics["smuad"]
    assert count.cycles == sum(count.by_class.values()) > count.instructions


def test_pairs_with_8_bit_steps_run_one_smuad_per_stored_pair(tmp_path):
    """fc1 with 8-bit steps: one SMUAD per stored pair, the zero pairs that bridge long gaps
    included, and the same outputs as with 16-bit indices."""
    model = models.lenet_300_100(pruned=True)
    rng = np.random.default_rng(0)
    net = quantize_net(model, rng.random((32, 784)), formats={"fc1": "gsparse2_delta", "fc2": "dense", "fc3": "dense"})
    x_q = net.quantize_input(rng.random((1, 784)))
    count = cycles.count_cycles(cortex_m.build_network(net, x_q, tmp_path))
    stored = len(net.layers[0].arrays()["steps"])
    dense = sum(layer.w_nk.shape[0] * (layer.w_nk.shape[1] // 2) for layer in net.layers[1:])
    assert count.mnemonics["smuad"] == stored + dense


def test_the_estimate_is_deterministic_and_prices_denser_weights_higher(lenet, tmp_path):
    net, elf = lenet
    assert cycles.count_cycles(elf).cycles == cycles.count_cycles(elf).cycles
    for layer in net.layers:
        layer.format = "dense"
    x_q = net.quantize_input(np.random.default_rng(0).random((1, 784)))
    dense_elf = cortex_m.build_network(net, x_q, tmp_path)
    assert cycles.count_cycles(dense_elf).cycles > 4 * cycles.count_cycles(elf).cycles


def test_the_estimate_does_not_depend_on_where_the_linker_puts_the_code(tmp_path, monkeypatch):
    """The emulator also ends a block at a page boundary, where no branch is; the kernel's loop
    split there is priced as if whole. Padding moves the dense kernel so that a boundary falls at
    every 8th byte of it: the estimate stays the same."""
    rng = np.random.default_rng(0)
    net = quantize_net(mlp([64, 16, 4]), rng.random((8, 64)), formats={"gemm1": "dense", "gemm2": "dense"})
    x_q = net.quantize_input(rng.random((1, 64)))
    header = cortex_m.network_header
    padding = {"bytes": 0}
    monkeypatch.setattr(cortex_m, "network_header", lambda *args: header(*args) + (
        f'__attribute__((used)) void scalpel_padding(void) {{ __asm__(".space {padding["bytes"]}"); }}\n'))
    elf = cortex_m.build_network(net, x_q, tmp_path)
    start, size = kernel_extent(elf, "scalpel_fc_q15_dense")
    estimates = set()
    for offset in range(0, size, 8):  # a page boundary (1 KB) at start + offset
        padding["bytes"] = (1024 - (start + offset) % 1024) % 1024
        elf = cortex_m.build_network(net, x_q, tmp_path)
        assert (kernel_extent(elf, "scalpel_fc_q15_dense")[0] + offset) % 1024 == 0
        estimates.add(cycles.count_cycles(elf).cycles)
    assert len(estimates) == 1


def kernel_extent(elf, name: str) -> tuple[int, int]:
    """Address and size of function `name` in the firmware."""
    listing = subprocess.run(["arm-none-eabi-nm", "-S", str(elf)], capture_output=True, text=True, check=True)
    for address, size, _, symbol in (line.split() for line in listing.stdout.splitlines() if len(line.split()) == 4):
        if symbol == name:
            return int(address, 16) & ~1, int(size, 16)
    raise AssertionError(f"{name} not in {elf}")


@pytest.mark.parametrize("mnemonic,op_str,operands,expected", [
    ("smuad", "r8, r8, r9", 3, ("multiply", 1)),
    ("qadd", "r2, r2, r8", 3, ("alu", 1)),
    ("ldr.w", "r2, [r3, fp, lsl #2]", 2, ("load", 2)),
    ("ldrd", "r0, r6, [sp, #84]", 3, ("load", 3)),
    ("str", "r1, [sp, #28]", 2, ("store", 2)),
    ("stmdb", "sp!, {r4, r5, r6}", 4, ("store", 4)),
    ("pop", "{r4, r5, pc}", 3, ("load", 4)),
    ("bne.n", "#0x1a6", 1, ("branch", 1)),
    ("sdiv", "r0, r1, r2", 3, ("divide", 7)),
])
def test_timing_table(mnemonic, op_str, operands, expected):
    insn = SimpleNamespace(mnemonic=mnemonic, op_str=op_str, operands=[None] * operands)
    assert cycles.classify(insn) == expected


def test_a_function_that_does_not_return_is_an_error(lenet):
    _, elf = lenet
    with pytest.raises(ScalpelError, match="did not return within 1000 instructions"):
        cycles.count_cycles(elf, max_instructions=1000)
