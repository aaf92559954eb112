"""The Cortex-M int16 FC micro-kernels, built for this machine with CMake, equal the numpy
reference (scalpel_tvm.fixed_point) bit for bit — saturation and rounding included."""
import ctypes
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from scalpel_tvm import cortex_m
from scalpel_tvm import fixed_point as fp
from scalpel_tvm.schedules.csr import CSRWeight
from scalpel_tvm.schedules.grouped_sparse import GroupedSparseWeight

ROOT = Path(__file__).resolve().parents[1]
I16, U16, I32, U8 = (ctypes.POINTER(t) for t in (ctypes.c_int16, ctypes.c_uint16, ctypes.c_int32, ctypes.c_uint8))
KINDS = {np.dtype(np.int16): I16, np.dtype(np.uint16): U16, np.dtype(np.int32): I32, np.dtype(np.uint8): U8}


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    build = tmp_path_factory.mktemp("native")
    for command in (["cmake", "-S", str(ROOT), "-B", str(build)], ["cmake", "--build", str(build)]):
        subprocess.run(command, check=True, capture_output=True)
    library = ctypes.CDLL(str(build / "libscalpel_q15.so"))
    library.scalpel_fc_q15_dense.argtypes = [I16, I16, I32, I16] + [ctypes.c_int] * 5
    for name in ("scalpel_fc_q15_gsparse2", "scalpel_fc_q15_csr"):
        getattr(library, name).argtypes = [I16, I32, U16, I16, I32, I16] + [ctypes.c_int] * 5
    library.scalpel_fc_q15_gsparse2_delta.argtypes = [I16, I32, U8, I16, I32, I16] + [ctypes.c_int] * 5
    window = ctypes.POINTER(Window)
    library.scalpel_conv_q15_dense.argtypes = [I16, window, I16, I32, I16, I16] + [ctypes.c_int] * 3
    for name in ("scalpel_conv_q15_gsparse2", "scalpel_conv_q15_csr"):
        getattr(library, name).argtypes = [I16, window, I32, U16, I16, I32, I16, I16] + [ctypes.c_int] * 3
    library.scalpel_conv_q15_gsparse2_delta.argtypes = [I16, window, I32, U8, I16, I32, I16, I16] + [ctypes.c_int] * 3
    library.scalpel_maxpool_q15.argtypes = [I16, window, I16]
    library.scalpel_avgpool_q15.argtypes = [I16, window, ctypes.c_int, I16]
    return library


class Window(ctypes.Structure):
    """struct scalpel_window (schedules/cortex_m/q15_conv.h)."""
    _fields_ = [(name, ctypes.c_int) for name in
                ("c", "h", "w", "kh", "kw", "stride_h", "stride_w", "pad_top", "pad_left", "oh", "ow")]


def ptr(array, kind):
    return None if array is None else array.ctypes.data_as(kind)


def run_c(lib, name, x, arrays, bias, n, shift, relu):
    """The C kernel on each row of x; `arrays` are its weight arrays (int16, uint16, uint8 or int32)."""
    out = np.zeros((x.shape[0], n), np.int16)
    bias = None if bias is None else np.ascontiguousarray(bias, np.int32)
    arrays = [np.ascontiguousarray(a) for a in arrays]
    kinds = [KINDS[a.dtype] for a in arrays]
    for row, x_row in enumerate(np.ascontiguousarray(x, np.int16)):
        y = np.zeros(n, np.int16)
        getattr(lib, name)(ptr(x_row, I16), *[ptr(a, kind) for a, kind in zip(arrays, kinds)],
                           ptr(bias, I32), ptr(y, I16), 1, x.shape[1], n, shift, int(relu))
        out[row] = y
    return out


def int16s(rng, shape, scale=fp.Q15_MAX):
    return rng.integers(-scale, scale + 1, size=shape).astype(np.int16)


cases = st.fixed_dictionaries({
    "k": st.integers(1, 41), "n": st.integers(1, 17), "batch": st.integers(1, 3),
    "shift": st.integers(0, 40), "relu": st.booleans(), "bias": st.booleans(),
    "scale": st.sampled_from([7, 300, fp.Q15_MAX]), "seed": st.integers(0, 2**16),
})


def draw_layer(case, density):
    rng = np.random.default_rng(case["seed"])
    x = int16s(rng, (case["batch"], case["k"]), case["scale"])
    w_nk = int16s(rng, (case["n"], case["k"]), case["scale"])
    w_nk[rng.random(w_nk.shape) > density] = 0
    bias = rng.integers(-2**31, 2**31, size=case["n"]).astype(np.int32) if case["bias"] else None
    return x, w_nk, bias


@settings(max_examples=60, deadline=None)
@given(cases)
def test_dense_kernel_equals_the_reference(lib, case):
    x, w_nk, bias = draw_layer(case, 1.0)
    want = fp.fc_dense(x, w_nk, bias, case["shift"], case["relu"])
    got = run_c(lib, "scalpel_fc_q15_dense", x, [w_nk], bias, case["n"], case["shift"], case["relu"])
    np.testing.assert_array_equal(got, want)


@settings(max_examples=60, deadline=None)
@given(cases, st.sampled_from([0.2, 0.6]))
def test_aligned_pair_kernel_equals_the_reference_and_the_dense_kernel(lib, case, density):
    """Scalpel's 1x2 groups from a pruned weight: the same integers as the dense kernel on the
    pruned weight (zeros add nothing), one index per pair."""
    assume(case["k"] >= 2)  # no pairs in a single input
    x, w_nk, bias = draw_layer(case, density)
    weight = GroupedSparseWeight.from_dense(w_nk.T.astype(np.float32), 2, "1xg")
    args = cortex_m.pairs(weight.indptr, weight.indices, weight.values, case["k"])
    want = fp.fc_gsparse2(x, *args, bias, case["shift"], case["relu"])
    got = run_c(lib, "scalpel_fc_q15_gsparse2", x, list(args), bias, case["n"], case["shift"], case["relu"])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, fp.fc_dense(x, w_nk, bias, case["shift"], case["relu"]))


@settings(max_examples=60, deadline=None)
@given(cases, st.data())
def test_unaligned_pair_kernel_equals_the_reference(lib, case, data):
    """Groups may start at any input (Lee et al.'s unaligned groups), including the last one."""
    rng = np.random.default_rng(case["seed"])
    k, n = case["k"], case["n"]
    x = int16s(rng, (case["batch"], k), case["scale"])
    indptr, indices = [0], []
    for _ in range(n):
        starts, position = [], data.draw(st.integers(0, 2))
        while position < k:
            starts.append(position)
            position += 2 + data.draw(st.integers(0, 3))
        indices += starts
        indptr.append(len(indices))
    values = int16s(rng, (len(indices), 2), case["scale"])
    values[np.array(indices, dtype=int) == k - 1, 1] = 0  # a group at the last input is half empty
    bias = rng.integers(-2**20, 2**20, size=n).astype(np.int32) if case["bias"] else None
    want = fp.fc_gsparse2(x, indptr, indices, values, bias, case["shift"], case["relu"])
    assume(k >= 2)  # no pairs in a single input
    args = cortex_m.pairs(indptr, indices, values, k)  # a group at k - 1 moves to k - 2 as (0, w)
    np.testing.assert_array_equal(fp.fc_gsparse2(x, *args, bias, case["shift"], case["relu"]), want)
    got = run_c(lib, "scalpel_fc_q15_gsparse2", x, list(args), bias, n, case["shift"], case["relu"])
    np.testing.assert_array_equal(got, want)


@settings(max_examples=40, deadline=None)
@given(cases, st.integers(2, 1300), st.sampled_from([0.002, 0.05, 0.5]))
def test_pair_kernel_with_8_bit_steps_equals_the_pair_kernel(lib, case, k, density):
    """The pairs with an 8-bit step from the previous pair in place of a 16-bit index: wide
    layers with long runs of pruned inputs need zero pairs to bridge gaps over 255 inputs; the
    integers are those of the 16-bit-index kernel and of the reference."""
    x, w_nk, bias = draw_layer({**case, "k": k}, density)
    weight = GroupedSparseWeight.from_dense(w_nk.T.astype(np.float32), 2, "1xg")
    indptr, indices, values = cortex_m.pairs(weight.indptr, weight.indices, weight.values, k)
    compact = cortex_m.pair_steps(indptr, indices, values)
    starts = cortex_m.steps_to_starts(compact[0], compact[1])
    assert compact[1].dtype == np.uint8 and len(compact[1]) >= len(indices)
    assert set(zip(starts.tolist(), map(tuple, compact[2].tolist()))) - {(s, (0, 0)) for s in starts.tolist()} \
        == set(zip(indices.tolist(), map(tuple, values.tolist()))) - {(s, (0, 0)) for s in indices.tolist()}
    want = fp.fc_gsparse2(x, indptr, indices, values, bias, case["shift"], case["relu"])
    args = (case["n"], case["shift"], case["relu"])
    np.testing.assert_array_equal(run_c(lib, "scalpel_fc_q15_gsparse2_delta", x, list(compact), bias, *args), want)
    np.testing.assert_array_equal(run_c(lib, "scalpel_fc_q15_gsparse2", x, [indptr, indices, values], bias, *args),
                                  want)


def test_8_bit_steps_bridge_long_gaps_with_zero_pairs():
    """Pairs at inputs 600 and 1000 of one output: 600 = 255 + 255 + 90 and 400 = 255 + 145."""
    indptr, steps, values = cortex_m.pair_steps([0, 2, 2], [600, 1000], [[1, 2], [3, 4]])
    assert indptr.tolist() == [0, 5, 5] and steps.tolist() == [255, 255, 90, 255, 145]
    assert values.tolist() == [[0, 0], [0, 0], [1, 2], [0, 0], [3, 4]]
    assert cortex_m.steps_to_starts(indptr, steps).tolist() == [255, 510, 600, 855, 1000]


@settings(max_examples=40, deadline=None)
@given(cases)
def test_csr_kernel_equals_the_reference(lib, case):
    x, w_nk, bias = draw_layer(case, 0.3)
    weight = CSRWeight.from_dense(w_nk.T.astype(np.float32))
    args = (weight.indptr, weight.indices.astype(np.uint16), weight.values.astype(np.int16))
    want = fp.fc_csr(x, *args, bias, case["shift"], case["relu"])
    got = run_c(lib, "scalpel_fc_q15_csr", x, list(args), bias, case["n"], case["shift"], case["relu"])
    np.testing.assert_array_equal(got, want)


def test_accumulator_saturates_instead_of_wrapping(lib):
    """3 pairs of 32767^2 products exceed int32: the sum stays at INT32_MAX (QADD), and a later
    negative term then comes off the saturated value, as on the device."""
    x = np.full((1, 8), fp.Q15_MAX, np.int16)
    w_nk = np.array([[fp.Q15_MAX] * 6 + [-fp.Q15_MAX, -fp.Q15_MAX]], np.int16)
    want = fp.fc_dense(x, w_nk, None, 16, False)
    exact = (6 - 2) * fp.Q15_MAX**2
    assert want[0, 0] == (fp.INT32_MAX - 2 * fp.Q15_MAX**2 + 2**15) >> 16 != (exact + 2**15) >> 16
    np.testing.assert_array_equal(run_c(lib, "scalpel_fc_q15_dense", x, [w_nk], None, 1, 16, False), want)


@pytest.mark.parametrize("cpu,dual_mac", [("cortex-m4", True), ("cortex-m7", True), ("cortex-m3", False)])
def test_cortex_m_build_uses_the_dual_mac_where_the_core_has_it(tmp_path, cpu, dual_mac):
    """Cross-compiled for the core, the kernels use SMUAD (two 16-bit MACs) and QADD where the
    DSP extension exists, and the portable C (same results, tested above) where it does not."""
    obj = tmp_path / "q15_fc.o"
    subprocess.run(["arm-none-eabi-gcc", f"-mcpu={cpu}", "-mthumb", "-O2", "-Wall", "-Wextra", "-Werror",
                    "-c", str(ROOT / "schedules/cortex_m/q15_fc.c"), "-o", str(obj)], check=True)
    disassembly = subprocess.run(["arm-none-eabi-objdump", "-d", str(obj)], check=True,
                                 capture_output=True, text=True).stdout
    assert ("smuad" in disassembly and "qadd" in disassembly) == dual_mac


def test_output_rounds_half_up_and_saturates_symmetrically():
    acc = np.array([[3, -3, 2**40, -(2**40), 5]], np.int64)
    np.testing.assert_array_equal(fp._finish(acc, 1, False), [[2, -1, 32767, -32767, 3]])
    np.testing.assert_array_equal(fp._finish(acc, 1, True), [[2, 0, 32767, 0, 3]])


def test_q_format_keeps_values_in_range_and_rounds_to_nearest():
    values = np.array([0.5, -1.75, 3.2])
    bits = fp.frac_bits_for(values)
    assert bits == 13  # 3.2 * 2^13 = 26214 fits; 2^14 would not
    q = fp.quantize(values, bits)
    assert np.max(np.abs(fp.dequantize(q, bits) - values)) <= 2.0 ** -(bits + 1)
    assert fp.quantize(np.array([1e9, -1e9]), 0).tolist() == [32767, -32767]
    with pytest.raises(ValueError, match="NaN"):
        fp.frac_bits_for(np.array([1.0, np.nan]))


# --- convolution (im2col + the FC kernels) and pooling --------------------------------------------

windows = st.builds(
    lambda c, h, w, kh, kw, sh, sw, pads: (c, h, w, min(kh, h + pads[0] + pads[2]), min(kw, w + pads[1] + pads[3]),
                                           (sh, sw), pads),
    st.integers(1, 4), st.integers(1, 9), st.integers(1, 9), st.integers(1, 5), st.integers(1, 5),
    st.integers(1, 3), st.integers(1, 3), st.tuples(*[st.integers(0, 2)] * 4))


def make_window(spec):
    c, h, w, kh, kw, strides, pads = spec
    return fp.Window.over(c, h, w, kh, kw, strides, pads)


@settings(max_examples=60, deadline=None)
@given(windows, st.integers(1, 6), st.sampled_from(["dense", "gsparse2", "gsparse2_delta", "csr"]), st.booleans(),
       st.integers(0, 2**16))
def test_conv_kernels_equal_the_reference(lib, spec, n, form, relu, seed):
    """im2col over every padding/stride case, then the FC kernel of the format per pixel; the
    output comes out channel-major like ONNX's."""
    g = make_window(spec)
    rng = np.random.default_rng(seed)
    x = int16s(rng, (2, g.in_size), 3000)
    w_nk = int16s(rng, (n, g.column), 3000)
    w_nk[rng.random(w_nk.shape) < 0.5] = 0
    bias = rng.integers(-2**20, 2**20, size=n).astype(np.int32)
    if form == "dense":
        arrays = [w_nk]
        ref = lambda cols: fp.fc_dense(cols, w_nk, bias, 10, relu)  # noqa: E731
    else:
        if form.startswith("gsparse2"):
            assume(g.column >= 2)  # no pairs in a single input
            weight = GroupedSparseWeight.from_dense(w_nk.T.astype(np.float32), 2, "1xg")
            arrays = list(cortex_m.pairs(weight.indptr, weight.indices, weight.values, g.column))
        else:
            weight = CSRWeight.from_dense(w_nk.T.astype(np.float32))
            arrays = [weight.indptr, weight.indices.astype(np.uint16), weight.values.astype(np.int16)]
        kernel = fp.fc_csr if form == "csr" else fp.fc_gsparse2
        ref = lambda cols, arrays=list(arrays): kernel(cols, *arrays, bias, 10, relu)  # noqa: E731
        if form == "gsparse2_delta":
            arrays = list(cortex_m.pair_steps(*arrays))
    want = fp.conv(x, g, ref, n)
    col = np.zeros(g.column, np.int16)
    for image, expected in zip(x, want):
        y = np.zeros(n * g.oh * g.ow, np.int16)
        getattr(lib, f"scalpel_conv_q15_{form}")(
            ptr(np.ascontiguousarray(image), I16), ctypes.byref(Window(*g.fields())),
            *[ptr(a, KINDS[a.dtype]) for a in arrays], ptr(bias, I32), ptr(col, I16), ptr(y, I16), n, 10, int(relu))
        np.testing.assert_array_equal(y, expected)
    # zeros add nothing: the dense kernel on the pruned weight gives the same integers
    np.testing.assert_array_equal(want, fp.conv(x, g, lambda cols: fp.fc_dense(cols, w_nk, bias, 10, relu), n))


@settings(max_examples=60, deadline=None)
@given(windows, st.booleans(), st.integers(0, 2**16))
def test_pooling_kernels_equal_the_reference(lib, spec, count_include_pad, seed):
    g = make_window(spec)
    x = int16s(np.random.default_rng(seed), (1, g.in_size))
    out = {}
    for name, args in (("maxpool", ()), ("avgpool", (int(count_include_pad),))):
        y = np.zeros(g.c * g.oh * g.ow, np.int16)
        getattr(lib, f"scalpel_{name}_q15")(ptr(x[0], I16), ctypes.byref(Window(*g.fields())), *args, ptr(y, I16))
        out[name] = y
    np.testing.assert_array_equal(out["maxpool"], fp.maxpool(x, g)[0])
    np.testing.assert_array_equal(out["avgpool"], fp.avgpool(x, g, count_include_pad)[0])


def test_avgpool_rounds_half_up_also_below_zero():
    """Means of -1.5 and 2.5 round to -1 and 3: floor(mean + 1/2), the C code's integer form."""
    g = fp.Window.over(2, 1, 2, 1, 2)
    np.testing.assert_array_equal(fp.avgpool(np.array([[-1, -2, 2, 3]]), g), [[-1, 3]])
