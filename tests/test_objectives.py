"""The frontend's objectives: latency from the cost model, energy and size counted per form."""
import numpy as np
import pytest

from scalpel_tvm import ScalpelError, TargetSpec, paper_nets, pruning
from scalpel_tvm.int16_net import read_chain
from scalpel_tvm.objectives import PJ, ObjectiveCost, form_counts


def test_sizes_and_work_of_each_form_count_values_indices_and_row_pointers():
    w = np.zeros((4, 8))
    w[0, [0, 1, 5]] = 1.0  # pairs (0,1) and (5,6): 2 pairs; 3 non-zeros
    w[2, 7] = 2.0  # one more pair; row 2's last input
    common = dict(group=2, pixels=3, value_bytes=2, index_bytes=2)
    assert form_counts(w, "dense", **common) == {"macs": 2 * 4 * 3, "bytes": 2 * 4 * 2}  # rows 0, 2; columns 0, 1, 5, 7
    assert form_counts(w, "csr", **common) == {"macs": 4 * 3, "bytes": 4 * 4 + 4 * 5}
    assert form_counts(w, "gsparse2", **common) == {"macs": 2 * 3 * 3, "bytes": 3 * 6 + 4 * 5}
    assert form_counts(w, "gsparse2_delta", **common) == {"macs": 2 * 3 * 3, "bytes": 3 * 5 + 4 * 5}  # 8-bit steps
    wide = np.zeros((1, 700))
    wide[0, [0, 600]] = 1.0  # a gap of 600 inputs: 2 zero pairs bridge it (255 + 255 + 90)
    assert form_counts(wide, "gsparse2_delta", **common) == {"macs": 2 * 4 * 3, "bytes": 4 * 5 + 4 * 2}
    x86 = dict(group=4, pixels=1, value_bytes=4, index_bytes=4)
    assert form_counts(w, "gsparse_gx1", **x86) == {"macs": 4 * 4, "bytes": 4 * (16 + 4) + 4 * 2}  # 4 groups of 4 outputs
    with pytest.raises(ScalpelError, match="no size or energy model for the form 'bsr'"):
        form_counts(w, "bsr", **common)


def test_energy_weighs_dram_words_far_above_arithmetic_and_each_objective_picks_its_own_best_form():
    _, layers = read_chain(paper_nets.network("lenet_300_100"))
    spec = TargetSpec.preset("x86-avx2")
    latency = pruning.LayerCost(spec, layers)
    w = np.random.default_rng(0).standard_normal((300, 784))
    w[:, 8:] *= np.random.default_rng(1).random((300, 776)) < 0.05  # sparse but not in G x 1 groups
    energy, size = ObjectiveCost(latency, "energy"), ObjectiveCost(latency, "size")
    dense = energy.measures("fc1", w, "dense")
    assert dense["energy"] == pytest.approx(300 * 784 * PJ["float_mac"] + 300 * 784 * PJ["dram_word"]
                                            + (784 + 300) * PJ["sram_word"])
    assert dense["size"] == 4 * 300 * 784 and dense["latency"] == latency.times("fc1", w)["dense"]
    value, form = size("fc1", w)
    assert value == min(size.measures("fc1", w, f)["size"] for f in latency.times("fc1", w))
    assert energy("fc1", w, "dense") == (dense["energy"], "dense")  # a given form is kept
    m4 = ObjectiveCost(pruning.LayerCost(TargetSpec.preset("cortex-m4"), layers), "energy")
    assert m4.measures("fc1", w, "dense")["energy"] < dense["energy"] / 50  # on-chip int16 weights
    with pytest.raises(ScalpelError, match="unknown objective 'carbon'"):
        ObjectiveCost(latency, "carbon")
