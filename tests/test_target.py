"""TargetSpec: parallelism class, lanes and budgets read from the target's own attributes."""
import pytest
import tvm

from scalpel_tvm import ScalpelError, TargetSpec


@pytest.mark.parametrize("name,parallelism,fp32,int16", [
    ("x86-avx2", "moderate", 8, 16),
    ("x86-avx512", "moderate", 16, 32),
    ("cortex-m4", "low", 1, 2),
    ("cortex-m7", "low", 1, 2),
    ("cortex-m55", "low", 4, 8),
    ("cuda", "high", 32, 32),
])
def test_presets(name, parallelism, fp32, int16):
    spec = TargetSpec.preset(name)
    assert (spec.parallelism, spec.lanes("float32"), spec.lanes("int16")) == (parallelism, fp32, int16)
    assert isinstance(spec.target, tvm.target.Target)


def test_cortex_m4_has_the_papers_board_budget():
    assert TargetSpec.preset("cortex-m4").memory == {"sram": 128 * 1024, "flash": 512 * 1024}


def test_lanes_come_from_the_target_attributes():
    spec = TargetSpec.from_target({"kind": "llvm", "mcpu": "skylake-avx512"})
    assert spec.lanes("float32") == 16
    no_dsp = TargetSpec.from_target({"kind": "llvm", "mtriple": "thumbv7m-none-eabi", "mcpu": "cortex-m3"})
    assert no_dsp.lanes("int16") == 1
    disabled = TargetSpec.from_target({"kind": "llvm", "mtriple": "thumbv7em-none-eabi",
                                       "mcpu": "cortex-m4", "mattr": ["-dsp"]})
    assert disabled.lanes("int16") == 1


def test_override_lanes():
    spec = TargetSpec.from_target({"kind": "llvm", "mcpu": "core-avx2"}, lanes={"float32": 4})
    assert spec.lanes("float32") == 4


def test_host_is_this_machine():
    spec = TargetSpec.preset("host")
    assert spec.parallelism == "moderate"
    assert spec.lanes("float32") >= 4


def test_unknown_targets_are_clear_errors():
    with pytest.raises(ScalpelError, match="known: x86-avx2"):
        TargetSpec.preset("riscv")
    with pytest.raises(ScalpelError, match="names no CPU"):
        TargetSpec.from_target({"kind": "llvm"})
    with pytest.raises(ScalpelError, match="not supported"):
        TargetSpec.from_target({"kind": "hexagon"})
