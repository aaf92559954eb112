"""int16 fixed point for Cortex-M: Q formats, and the numpy reference of the int16 FC kernels.

The micro-kernels in `schedules/cortex_m/q15_fc.c` and these functions compute the same integers,
bit for bit (tests/test_q15_kernels.py checks it):

* values are int16 in [-32767, 32767] — symmetric, so the sum of a pair of products fits in
  int32 and the dual multiply (SMUAD) never overflows;
* the accumulator is int32, starts at the bias (in the product's Q format) and adds each pair of
  products (or single product) with saturation (QADD), in the kernel's order;
* the result is shifted right by `shift` with rounding half up, ReLU'd if asked, and saturated
  to [-32767, 32767].

A real number v in Q format with `f` fractional bits is round(v * 2**f). A layer with input
Q(fx) and weight Q(fw) accumulates in Q(fx + fw); `shift = fx + fw - fy` brings it to the output's
Q(fy).
"""
from __future__ import annotations

import numpy as np

Q15_MAX = 32767
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def frac_bits_for(values: np.ndarray, limit: int = 15) -> int:
    """The most fractional bits (at most `limit`) that keep every value within int16's symmetric
    range: the per-tensor Q format of calibration data or weights."""
    peak = float(np.max(np.abs(values))) if np.size(values) else 0.0
    if not np.isfinite(peak):
        raise ValueError("cannot choose a Q format for values with NaN or infinity")
    bits = limit
    while bits > -16 and peak * 2.0**bits > Q15_MAX:
        bits -= 1
    return bits


def quantize(values: np.ndarray, frac_bits: int) -> np.ndarray:
    """Real values -> int16 in Q(frac_bits), rounded to nearest, saturated symmetrically."""
    scaled = np.rint(np.asarray(values, dtype=np.float64) * 2.0**frac_bits)
    return np.clip(scaled, -Q15_MAX, Q15_MAX).astype(np.int16)


def dequantize(values: np.ndarray, frac_bits: int) -> np.ndarray:
    return np.asarray(values, dtype=np.float64) / 2.0**frac_bits


def _accumulate(acc: np.ndarray, term: np.ndarray) -> np.ndarray:
    return np.clip(acc + term, INT32_MIN, INT32_MAX)


def _finish(acc: np.ndarray, shift: int, relu: bool) -> np.ndarray:
    value = acc.astype(np.int64)
    if shift > 0:
        value = (value + (1 << (shift - 1))) >> shift
    if relu:
        value = np.maximum(value, 0)
    return np.clip(value, -Q15_MAX, Q15_MAX).astype(np.int16)


def _start(bias, batch: int, n: int) -> np.ndarray:
    if bias is None:
        return np.zeros((batch, n), np.int64)
    return np.broadcast_to(np.asarray(bias, np.int64), (batch, n)).copy()


def fc_dense(x: np.ndarray, w_nk: np.ndarray, bias, shift: int, relu: bool) -> np.ndarray:
    """`scalpel_fc_q15_dense` for each row of x (batch, K); w_nk is [N, K] int16."""
    x64, w64 = np.asarray(x, np.int64), np.asarray(w_nk, np.int64)
    batch, k = x64.shape
    acc = _start(bias, batch, w64.shape[0])
    for i in range(0, k - 1, 2):
        acc = _accumulate(acc, x64[:, i, None] * w64[None, :, i] + x64[:, i + 1, None] * w64[None, :, i + 1])
    if k % 2:
        acc = _accumulate(acc, x64[:, k - 1, None] * w64[None, :, k - 1])
    return _finish(acc, shift, relu)


def fc_gsparse2(x: np.ndarray, indptr, indices, values, bias, shift: int, relu: bool) -> np.ndarray:
    """`scalpel_fc_q15_gsparse2`: groups of 2 consecutive inputs of one output, in order;
    values is (groups, 2) int16; a group starting at the last input uses only its first value."""
    x64 = np.asarray(x, np.int64)
    batch, k = x64.shape
    n = len(indptr) - 1
    acc = _start(bias, batch, n)
    values = np.asarray(values, np.int64)
    for o in range(n):
        for j in range(indptr[o], indptr[o + 1]):
            start = int(indices[j])
            term = x64[:, start] * values[j, 0]
            if start + 1 < k:
                term = term + x64[:, start + 1] * values[j, 1]
            acc[:, o] = _accumulate(acc[:, o], term)
    return _finish(acc, shift, relu)


def fc_csr(x: np.ndarray, indptr, indices, values, bias, shift: int, relu: bool) -> np.ndarray:
    """`scalpel_fc_q15_csr`: one product per stored weight, in order."""
    x64 = np.asarray(x, np.int64)
    batch = x64.shape[0]
    n = len(indptr) - 1
    acc = _start(bias, batch, n)
    for o in range(n):
        for j in range(indptr[o], indptr[o + 1]):
            acc[:, o] = _accumulate(acc[:, o], x64[:, int(indices[j])] * int(values[j]))
    return _finish(acc, shift, relu)
