"""FC kernel templates: dense, grouped-sparse (both orientations) and CSR against numpy."""

import math
import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scalpel_tvm.schedules.csr import CSRWeight, csr_fc
from scalpel_tvm.schedules.fc import dense_fc, pack_dense_weight
from scalpel_tvm.schedules.grouped_sparse import (
    GroupedSparseWeight,
    group_sparsity,
    grouped_sparse_fc,
)

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "core-avx2"})
G = 8


def run(prim, *inputs, batch, out_features):
    """Compile ``prim`` and call it on ``inputs``; y starts as NaN so unwritten outputs show."""
    name = prim.attrs["global_symbol"]
    ex = tvm.compile(tvm.IRModule({name: prim}), target=TARGET)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.asarray(a), dev) for a in inputs]
    y = tvm.runtime.tensor(np.full((batch, out_features), np.nan, dtype="float32"), dev)
    ex[name](*args, y)
    return y.numpy()


def reference(x, w, b, activation):
    y = x @ w + (0 if b is None else b)
    if activation == "gelu":
        return 0.5 * y * (1 + np.vectorize(math.erf)(y / math.sqrt(2)))
    if activation == "gelu_tanh":
        return 0.5 * y * (1 + np.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y ** 3)))
    return np.maximum(y, 0) if activation == "relu" else y


def pruned_weight(rng, k, n, sparsity=0.5, orientation="gx1", dead_outputs=0.25):
    """A random [K, N] weight with aligned zero groups, some dead outputs and loose zeros."""
    w = rng.standard_normal((k, n)).astype("float32")
    if orientation == "gx1":
        mask = np.repeat(rng.random((k, -(-n // G))) < sparsity, G, axis=1)[:, :n]
    else:
        mask = np.repeat(rng.random((-(-k // G), n)) < sparsity, G, axis=0)[:k]
    w[mask] = 0
    w[:, rng.random(n) < dead_outputs] = 0  # empty blocks (gx1: when a whole block dies)
    w[:, :G] = 0  # always at least one empty gx1 block / 1xg row
    w[rng.random((k, n)) < 0.1] = 0
    return w


def kernel_and_args(kind, w, batch, bias, activation, **knobs):
    """The PrimFunc for ``kind`` and its weight arguments (those between x and the bias)."""
    k, n = w.shape
    if kind == "dense":
        prim = dense_fc(batch, k, n, bias=bias, activation=activation, **knobs)
        return prim, [pack_dense_weight(w)]
    if kind == "csr":
        cw = CSRWeight.from_dense(w)
        return csr_fc(cw, batch, bias=bias, activation=activation, **knobs), [
            cw.indptr, cw.indices, cw.values]
    gw = GroupedSparseWeight.from_dense(w, G, kind)
    return grouped_sparse_fc(gw, batch, bias=bias, activation=activation, **knobs), [
        gw.indptr, gw.indices, gw.values]


def check(kind, w, batch, bias, activation, seed=0, **knobs):
    rng = np.random.default_rng(seed)
    k, n = w.shape
    x = rng.standard_normal((batch, k)).astype("float32")
    b = rng.standard_normal(n).astype("float32") if bias else None
    prim, weight_args = kernel_and_args(kind, w, batch, bias, activation, **knobs)
    y = run(prim, x, *weight_args, *([b] if bias else []), batch=batch, out_features=n)
    np.testing.assert_allclose(y, reference(x, w, b, activation), rtol=1e-4, atol=1e-4)


KINDS = ["dense", "gx1", "1xg", "csr"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh"])
def test_kernel_matches_numpy(kind, batch, bias, activation):
    # N = 10 and K = 300 are not multiples of G: padded groups, guarded stores, padded x copy.
    rng = np.random.default_rng(1)
    check(kind, pruned_weight(rng, 300, 10, orientation="1xg" if kind == "1xg" else "gx1"),
          batch, bias, activation)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(784, 100), (100, 300), (37, 21)])
def test_kernel_shapes(kind, shape):
    rng = np.random.default_rng(2)
    check(kind, pruned_weight(rng, *shape, orientation="1xg" if kind == "1xg" else "gx1"),
          batch=3, bias=True, activation="relu")


@pytest.mark.parametrize("kind", KINDS)
def test_zero_weight_gives_bias(kind):
    check(kind, np.zeros((100, 10), "float32"), batch=3, bias=True, activation="relu")


@pytest.mark.parametrize(
    "kind, batch, knobs",
    [
        # tail tiles: batch % batch_tile, blocks % vectors, K % k_streams
        ("dense", 7, dict(batch_tile=3, vectors=3, k_streams=3)),
        ("dense", 1, dict(vectors=5, k_streams=7, parallel=True)),
        ("gx1", 7, dict(batch_tile=3, streams=3, parallel=True)),
        ("gx1", 7, dict(batch_tile=2, batch_outer=True, parallel=True)),
        ("gx1", 1, dict(streams=5)),
        # batch in lanes: whole tiles + a tail tile of batch vectors + leftover rows
        ("gx1", 45, dict(batch_lanes=True, batch_tile=16, tile_outputs=4)),
        ("gx1", 21, dict(batch_lanes=True, batch_tile=24, tile_outputs=8)),  # tail tile only
        ("gx1", 8, dict(batch_lanes=True, batch_tile=8, tile_outputs=2)),
        ("gx1", 3, dict(batch_lanes=True)),  # batch < G: the row-broadcast kernel
        ("1xg", 7, dict(batch_tile=4, streams=2, batch_outer=False, parallel=True)),
        ("1xg", 7, dict(batch_tile=3, batch_outer=True, parallel=True)),  # batch tiles outermost
        ("1xg", 7, dict(batch_tile=2, batch_outer=True)),
        ("1xg", 1, dict(streams=1)),
        ("csr", 21, dict(batch_tile=2, streams=3, parallel=True)),  # 3 batch vectors, 1 tail
        ("csr", 1, dict(streams=1)),
    ],
)
def test_kernel_knobs(kind, batch, knobs):
    rng = np.random.default_rng(3)
    w = pruned_weight(rng, 101, 45, orientation="1xg" if kind == "1xg" else "gx1")
    check(kind, w, batch, bias=True, activation=None, **knobs)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh"])
def test_gx1_batch_lanes_epilogue(bias, activation):
    # K = 300, N = 10: a partial transpose block on both sides and a padded last block.
    rng = np.random.default_rng(5)
    check("gx1", pruned_weight(rng, 300, 10), 50, bias, activation, batch_lanes=True)


def test_unknown_knob_and_bad_arguments_raise():
    w = np.ones((16, 8), "float32")
    with pytest.raises(TypeError, match="k_strems"):
        dense_fc(1, 16, 8, bias=False, activation=None, k_strems=2)
    with pytest.raises(ValueError, match="activation"):
        csr_fc(CSRWeight.from_dense(w), 1, bias=False, activation="swish")
    with pytest.raises(ValueError, match="orientation"):
        GroupedSparseWeight.from_dense(w, G, "8x8")


def test_pack_dense_weight_layout():
    w = np.arange(3 * 10, dtype="float32").reshape(3, 10)
    packed = pack_dense_weight(w, lanes=4)
    assert packed.shape == (3, 3, 4)
    np.testing.assert_array_equal(packed[1, 2], w[2, 4:8])
    np.testing.assert_array_equal(packed[2, :, :2], w[:, 8:])
    assert not packed[2, :, 2:].any()


def test_grouped_format_by_hand():
    # K = 3, N = 10, G = 8: gx1 block 0 = outputs 0-7, block 1 = outputs 8-9 (+6 padding).
    w = np.zeros((3, 10), "float32")
    w[0, 2] = 1.0  # group (block 0, k 0)
    w[2, 9] = 2.0  # group (block 1, k 2)
    gw = GroupedSparseWeight.from_dense(w, G, "gx1")
    np.testing.assert_array_equal(gw.indptr, [0, 1, 2])
    np.testing.assert_array_equal(gw.indices, [0, 2])
    assert gw.values.shape == (2, G) and gw.values[0, 2] == 1.0 and gw.values[1, 1] == 2.0
    assert gw.group_sparsity == pytest.approx(1 - 2 / 6)
    # 1xg: one block per output; a group = 8 inputs; K = 3 pads to one group per output.
    gw = GroupedSparseWeight.from_dense(w, G, "1xg")
    np.testing.assert_array_equal(gw.indptr, [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 2])
    np.testing.assert_array_equal(gw.indices, [0, 0])
    assert gw.values[0, 0] == 1.0 and gw.values[1, 2] == 2.0
    assert gw.group_sparsity == pytest.approx(1 - 2 / 10)


@pytest.mark.parametrize("orientation", ["gx1", "1xg"])
def test_nbytes_formula(orientation):
    w = pruned_weight(np.random.default_rng(4), 300, 100, orientation=orientation)
    gw = GroupedSparseWeight.from_dense(w, G, orientation)
    blocks = -(-100 // G) if orientation == "gx1" else 100
    assert gw.nbytes == gw.n_groups * G * 4 + gw.n_groups * 4 + (blocks + 1) * 4
    cw = CSRWeight.from_dense(w)
    assert cw.nbytes == np.count_nonzero(w) * (4 + 4) + (100 + 1) * 4


weights = st.tuples(
    st.integers(1, 40),  # K
    st.integers(1, 40),  # N
    st.floats(0.0, 1.0),  # group sparsity
    st.sampled_from(["gx1", "1xg"]),
    st.integers(0, 2**32 - 1),
).map(lambda t: (pruned_weight(np.random.default_rng(t[4]), t[0], t[1], t[2], t[3], 0.2), t[3]))


@settings(max_examples=60, deadline=None)
@given(weights, st.sampled_from([1, 2, 4, 8]))
def test_formats_round_trip(weight, group):
    w, orientation = weight
    gw = GroupedSparseWeight.from_dense(w, group, orientation)
    np.testing.assert_array_equal(gw.to_dense(), w)
    assert gw.group_sparsity == pytest.approx(group_sparsity(w, group, orientation))
    assert gw.indptr[0] == 0 and gw.indptr[-1] == gw.n_groups
    assert np.all(np.diff(gw.indptr) >= 0)
    assert np.all(np.any(gw.values != 0, axis=1))  # only groups with a nonzero are stored
    np.testing.assert_array_equal(CSRWeight.from_dense(w).to_dense(), w)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(weights, st.integers(1, 12))
def test_grouped_sparse_kernel_property(weight, batch):
    w, orientation = weight
    check(orientation, w, batch, bias=True, activation="relu")


@pytest.mark.slow
def test_the_knob_sweep_times_every_setting_of_both_sides_checked_against_numpy():
    """`python/sweep_fc_knobs.py` on a small layer: every dense and grouped-sparse setting is
    checked against numpy, timed and listed, fastest first, against the best dense."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "python" / "sweep_fc_knobs.py"
    out = subprocess.run([sys.executable, str(script), "--shape", "24x40", "--sparsity", "0.5"],
                         check=True, capture_output=True, text=True).stdout
    rows = [line.split() for line in out.splitlines()[1:]]
    assert len(rows) == 8 + 8  # dense: 8 (vectors, k_streams) pairs; gx1 and 1xg: 4 streams each
    times = [float(row[-3]) for row in rows]
    assert times == sorted(times)
    assert {row[0] for row in rows} == {"dense", "gx1", "1xg"}
    assert max(float(row[-1].rstrip("x")) for row in rows if row[0] == "dense") == 1.0


@pytest.mark.slow
def test_the_kernel_benchmark_checks_and_times_our_kernels_beside_mkl_and_scipy_csr(tmp_path):
    """`python/bench_kernels.py` on one small shape: every kernel, ours and the CSR libraries', is
    checked against numpy before it is timed, and the JSON holds each one's time and ratio."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "python" / "bench_kernels.py"
    subprocess.run([sys.executable, str(script), "--quick", "--shape", "24x40", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True)
    report = json.loads((tmp_path / "bench_kernels.json").read_text())
    assert [(r["shape"], r["batch"]) for r in report["results"]] == [([24, 40], 1), ([24, 40], 50)]
    for result in report["results"]:
        assert [row["sparsity"] for row in result["sparse"]] == [0.0, 0.3, 0.9]
        for row in result["sparse"]:
            for kind in ("gx1", "1xg", "csr", "mkl_csr", "scipy_csr"):
                assert row[f"{kind}_us"] > 0
                assert math.isclose(row[f"{kind}_speedup"], row["dense_us"] / row[f"{kind}_us"])
    goals = report["goals"]["grouped 24x40 b50"]
    assert set(goals["x_faster_than_mkl_csr"]) == {"0.0", "0.3", "0.9"}
    assert (tmp_path / "bench_kernels.png").stat().st_size > 0
    bad = subprocess.run([sys.executable, str(script), "--shape", "24by40"], capture_output=True, text=True)
    assert bad.returncode == 2 and "'24by40' is not NxK" in bad.stderr


@pytest.mark.slow
def test_the_kernel_benchmark_measures_groups_as_wide_as_avx512s_lanes_where_the_cpu_runs_it(tmp_path):
    """`--target x86-avx512`: groups of 16 and dense weights packed to 16 lanes, in their own files;
    a CPU without AVX-512 is told so instead of meeting an illegal instruction."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from scalpel_tvm.demo import check_runs_here
    from scalpel_tvm.errors import ScalpelError
    from scalpel_tvm.target import TargetSpec

    script = Path(__file__).parents[1] / "python" / "bench_kernels.py"
    run = subprocess.run([sys.executable, str(script), "--quick", "--shape", "40x48", "--target", "x86-avx512",
                          "--out", str(tmp_path)], capture_output=True, text=True)
    try:
        check_runs_here(TargetSpec.preset("x86-avx512"))
    except ScalpelError:
        assert run.returncode == 2 and "lacks avx512" in run.stderr
        return
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "bench_kernels_x86-avx512.json").read_text())
    assert report["group"] == 16 and "avx512" in report["target"]
    row = report["results"][0]["sparse"][-1]
    assert row["sparsity"] == 0.9 and row["gx1_bytes"] < row["dense_bytes"] / 3
    assert (tmp_path / "bench_kernels_x86-avx512.png").stat().st_size > 0
