"""Unaligned group pruning (Lee et al.): the dynamic program is optimal, the cover is the fewest
windows, and at the same number of groups unaligned groups keep at least the magnitude aligned
ones do; the Cortex-M pairs format stores them and the emulated firmware computes them."""
import itertools

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from scalpel_tvm import ScalpelError, TargetSpec, pruning
from scalpel_tvm.unaligned_groups import (best_windows, cover, cover_count, greedy_windows, unaligned_mask,
                                          windows_mask)


def brute_force(row, group, penalty):
    """The best Σ score − penalty·windows over every set of non-overlapping windows of a row."""
    k, best = len(row), 0.0
    starts = range(k - group + 1)
    for count in range(1, k // group + 1):
        for chosen in itertools.combinations(starts, count):
            if all(b - a >= group for a, b in zip(chosen, chosen[1:])):
                best = max(best, sum(row[s:s + group].sum() for s in chosen) - penalty * count)
    return best


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.sampled_from([2, 3]), st.floats(0.0, 2.0), st.integers(0, 2**16))
def test_the_dynamic_program_finds_the_best_windows_of_a_row(k, group, penalty, seed):
    row = np.random.default_rng(seed).random(k) ** 2
    starts = best_windows(row[None], group, penalty)[0]
    chosen = np.flatnonzero(starts)
    assert all(b - a >= group for a, b in zip(chosen, chosen[1:]))  # no overlap, inside the row
    value = sum(row[s:s + group].sum() for s in chosen) - penalty * len(chosen)
    assert value == pytest.approx(brute_force(row, group, penalty), abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 12), st.sampled_from([2, 3, 4]), st.integers(0, 2**16))
def test_the_cover_holds_every_weight_in_the_fewest_windows_never_more_than_aligned(n, k, group, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)) * (rng.random((n, k)) < 0.4)
    indptr, starts = cover(w, group)
    for r in range(n):
        held = np.zeros(k, bool)
        for s in starts[indptr[r]:indptr[r + 1]]:
            held[s:s + group] = True
        assert held[w[r] != 0].all()
        fewest = next(c for c in range(k + 1) if any(  # brute force: the fewest windows holding the row
            np.all(np.isin(np.flatnonzero(w[r]), [s + i for s in chosen for i in range(group)]))
            for chosen in itertools.combinations(range(k), c)))
        assert indptr[r + 1] - indptr[r] == fewest
    assert cover_count(w, group) <= pruning.groups_alive(w, group, "1xg")


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(2, 30), st.sampled_from([2, 4]), st.integers(0, 2**16), st.floats(0.1, 0.9))
@example(n=3, k=3, group=2, seed=0, keep=0.5)  # rows of 3: the aligned groups' last one is 1 wide
def test_unaligned_groups_keep_at_least_the_magnitude_aligned_groups_keep_at_the_same_count(n, k, group, seed, keep):
    if k < group:
        return
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k))
    budget = max(1, int(keep * n * k / group))
    dp = unaligned_mask(w, budget, group)
    count = cover_count(w * dp, group)
    assert 1 <= count <= budget
    assert set(np.unique(dp)) <= {0.0, 1.0}
    aligned = pruning.group_mask(w, count, group, "1xg")
    kept = lambda mask: float(np.sum((w * mask) ** 2))  # noqa: E731
    assert kept(dp) >= kept(aligned) - 1e-9
    greedy = unaligned_mask(w, count, group, "greedy")
    assert cover_count(w * greedy, group) <= count and kept(dp) >= kept(greedy) - 1e-9


def test_greedy_takes_the_heaviest_window_first_and_can_lose_to_the_program():
    row = np.array([[1.0, 3.0, 3.0, 1.0]])  # windows (0,1)=4, (1,2)=6, (2,3)=4
    assert np.flatnonzero(greedy_windows(row, 2, 2)[0]).tolist() == [1]  # (1,2) blocks both others
    assert windows_mask(best_windows(row, 2, 0.1), 2, 4).tolist() == [[1, 1, 1, 1]]  # two windows: 8 > 6


def test_unaligned_groups_are_for_kernels_that_index_every_group():
    from scalpel_tvm import paper_nets
    from scalpel_tvm.int16_net import read_chain

    _, layers = read_chain(paper_nets.network("lenet_300_100"))
    m4 = pruning.layer_strategy(TargetSpec.preset("cortex-m4"), layers, "dp")
    assert {s.grouping for s in m4.values()} == {"dp"}
    assert {s.grouping for s in pruning.layer_strategy(TargetSpec.preset("cortex-m3"), layers, "dp").values()} == {"aligned"}
    with pytest.raises(ScalpelError, match="unaligned groups need a kernel that stores an index per group"):
        pruning.layer_strategy(TargetSpec.preset("x86-avx2"), layers, "dp")
    with pytest.raises(ScalpelError, match="unknown grouping 'random'"):
        pruning.layer_strategy(TargetSpec.preset("cortex-m4"), layers, "random")


def test_the_emulated_m4_computes_unaligned_pairs_bit_for_bit_and_pays_for_the_unaligned_loads(tmp_path):
    """A layer whose pairs all start at odd inputs: the firmware on QEMU equals the numpy
    reference, stores one pair per group, and the cycle estimate charges the unaligned loads
    the cost model predicts."""
    from scalpel_tvm import cortex_m, cycles, m4_cost
    from scalpel_tvm.int16_net import quantize_net
    from nets import mlp

    rng = np.random.default_rng(0)
    model = mlp([64, 32, 10])
    w = {init.name: init for init in model.graph.initializer}
    from onnx import numpy_helper

    w0 = numpy_helper.to_array(w["w0"]).copy()  # [N, K] (transB)
    keep = np.zeros_like(w0)
    for row in range(w0.shape[0]):
        for start in rng.choice(np.arange(1, 62, 2), 6, replace=False):
            keep[row, start:start + 2] = 1
    w["w0"].CopyFrom(numpy_helper.from_array((w0 * keep).astype(np.float32), "w0"))
    net = quantize_net(model, rng.random((16, 64)), formats={"fc0": "gsparse2", "fc1": "dense"})
    layer = net.layers[0]
    assert len(layer.arrays()["indices"]) == cover_count(layer.w_nk, 2) <= 6 * 32
    assert m4_cost.unaligned_pairs(layer.w_nk) > 0.9 * cover_count(layer.w_nk, 2)
    x = net.quantize_input(rng.random((2, 64)))
    elf = cortex_m.build_network(net, x, tmp_path)
    assert np.array_equal(cortex_m.network_outputs(cortex_m.run_qemu(elf)), net.forward(x))
    assert cycles.count_cycles(elf).by_class["unaligned"] >= m4_cost.unaligned_pairs(layer.w_nk)


def test_the_pruning_loop_cuts_unaligned_groups_to_each_rounds_target():
    from scalpel_tvm import paper_nets
    from scalpel_tvm.int16_net import read_chain

    rng = np.random.default_rng(0)
    _, layers = read_chain(paper_nets.network("lenet_300_100"))
    state = {layer["name"]: rng.standard_normal(layer["w_nk"].shape) for layer in layers}
    spec = TargetSpec.preset("cortex-m4")
    strategy = pruning.layer_strategy(spec, layers, "dp")

    def set_mask(name, mask):
        state[name] = state[name] * mask

    result = pruning.prune_simd(
        lambda: {k: v.copy() for k, v in state.items()}, set_mask, lambda masks: None, lambda: 0.99,
        lambda: {k: v.copy() for k, v in state.items()}, lambda saved: state.update(saved),
        strategy, pruning.LayerCost(spec, layers), tolerance=0.01, step=0.5, max_rounds=3)
    assert [r.layer for r in result.rounds] == ["fc1", "fc1", "fc1"]
    assert [r.groups_after for r in result.rounds] == [58800, 29400, 14700]  # 300 x 392 pairs, halved
    assert cover_count(state["fc1"], 2) == 14700
    assert np.count_nonzero(cover(state["fc1"], 2)[1] % 2) > 1000  # groups start where the weights are, odd inputs too
