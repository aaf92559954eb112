"""int16 fixed point for Cortex-M: Q formats, and the numpy reference of the int16 kernels.

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

from dataclasses import dataclass

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


# --- convolution and pooling (schedules/cortex_m/q15_conv.c) ------------------------------------

@dataclass(frozen=True)
class Window:
    """A sliding window over a (c, h, w) input, as `struct scalpel_window` holds it."""

    c: int
    h: int
    w: int
    kh: int
    kw: int
    stride_h: int = 1
    stride_w: int = 1
    pad_top: int = 0
    pad_left: int = 0
    oh: int = 0
    ow: int = 0

    @classmethod
    def over(cls, c, h, w, kh, kw, strides=(1, 1), pads=(0, 0, 0, 0)) -> "Window":
        """The window with ONNX's pads (top, left, bottom, right); the output size follows."""
        oh = (h + pads[0] + pads[2] - kh) // strides[0] + 1
        ow = (w + pads[1] + pads[3] - kw) // strides[1] + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"a {kh}x{kw} window does not fit a {h}x{w} input with pads {pads}")
        return cls(c, h, w, kh, kw, strides[0], strides[1], pads[0], pads[1], oh, ow)

    @property
    def in_size(self) -> int:
        return self.c * self.h * self.w

    @property
    def column(self) -> int:
        """K of the im2col column: the receptive field's size."""
        return self.c * self.kh * self.kw

    def fields(self) -> tuple:
        return (self.c, self.h, self.w, self.kh, self.kw, self.stride_h, self.stride_w,
                self.pad_top, self.pad_left, self.oh, self.ow)

    def _rows_cols(self):
        """Input row and column of every (output pixel, window offset); out-of-image ones too."""
        oy, ox = np.meshgrid(np.arange(self.oh), np.arange(self.ow), indexing="ij")
        ky, kx = np.meshgrid(np.arange(self.kh), np.arange(self.kw), indexing="ij")
        rows = (oy.reshape(-1, 1) * self.stride_h - self.pad_top) + ky.reshape(1, -1)
        cols = (ox.reshape(-1, 1) * self.stride_w - self.pad_left) + kx.reshape(1, -1)
        return rows, cols  # (pixels, kh * kw)

    def windows(self, x: np.ndarray, fill) -> np.ndarray:
        """(pixels, c, kh * kw) values of one (c, h, w) image under each window, `fill` outside."""
        rows, cols = self._rows_cols()
        inside = (rows >= 0) & (rows < self.h) & (cols >= 0) & (cols < self.w)
        image = np.asarray(x).reshape(self.c, self.h, self.w)
        values = image[:, np.clip(rows, 0, self.h - 1), np.clip(cols, 0, self.w - 1)]  # (c, pixels, kk)
        values = np.where(inside[None], values, fill)
        return values.transpose(1, 0, 2), inside

    def im2col(self, x: np.ndarray) -> np.ndarray:
        """`scalpel_im2col_q15` for every output pixel: (pixels, K) in (c, ky, kx) order."""
        values, _ = self.windows(x, 0)
        return values.reshape(values.shape[0], -1)


def conv(x: np.ndarray, window: Window, kernel, n: int) -> np.ndarray:
    """A conv layer on a batch of images (batch, c * h * w) -> (batch, n * oh * ow), CHW: `kernel`
    maps a (pixels, K) column matrix to (pixels, n), i.e. one of the FC references with the
    layer's weight bound — the C code runs the same FC kernel on each pixel's column."""
    x = np.asarray(x)
    pixels = window.oh * window.ow
    chunk = max(1, (1 << 22) // (pixels * window.column))  # images per call: ~32 MB of columns
    out = []
    for start in range(0, len(x), chunk):
        columns = np.concatenate([window.im2col(image) for image in x[start:start + chunk]])
        y = kernel(columns).reshape(-1, pixels, n)
        out.append(y.transpose(0, 2, 1).reshape(len(y), -1))
    return np.concatenate(out).astype(np.int16)


def maxpool(x: np.ndarray, window: Window) -> np.ndarray:
    """`scalpel_maxpool_q15` on a batch of images."""
    out = []
    for image in np.asarray(x, np.int64):
        values, _ = window.windows(image, -Q15_MAX)
        out.append(values.max(axis=2).T.reshape(-1))
    return np.stack(out).astype(np.int16)


def avgpool(x: np.ndarray, window: Window, count_include_pad: bool = False) -> np.ndarray:
    """`scalpel_avgpool_q15` on a batch of images: the mean rounded half up."""
    out = []
    for image in np.asarray(x, np.int64):
        values, inside = window.windows(image, 0)
        total = values.sum(axis=2)  # (pixels, c)
        count = np.full(inside.shape[0], window.kh * window.kw) if count_include_pad else inside.sum(axis=1)
        count = np.maximum(count, 1)[:, None]  # a window wholly over the padding: sum 0, mean 0
        out.append(((2 * total + count) // (2 * count)).T.reshape(-1))
    return np.stack(out).astype(np.int16)
