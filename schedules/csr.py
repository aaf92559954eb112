"""Plain CSR FC kernel: the baseline for traditional (Han et al.) unstructured pruning.

One column index per kept weight. Rows are outputs (the CSR of W^T), so each output is a sparse
dot product ``sum_j values[j] * x[indices[j]]``: a gather per weight, which no SIMD lane layout of
the weights fits, so at batch 1 the kernel is scalar; at batch > 1 it vectorizes over the batch.
It is scheduled as well as that allows — several independent accumulators per row, batch tiles
reusing each (index, value) load — so that comparing it with the grouped-sparse kernels measures
the format, not a strawman.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from .fc import check_activation, epilogue, resolve_knobs


@dataclass(frozen=True)
class CSRWeight:
    """A [K, N] weight as CSR over outputs: output ``n`` has weights
    ``values[indptr[n]:indptr[n+1]]`` at inputs ``indices[...]`` (int32, ascending)."""

    shape: tuple[int, int]
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @classmethod
    def from_dense(cls, w_kn: np.ndarray) -> CSRWeight:
        """Keep every nonzero weight; exact."""
        w_nk = np.asarray(w_kn, dtype="float32").T
        keep = w_nk != 0
        row, col = np.nonzero(keep)
        return cls(
            shape=tuple(int(d) for d in w_kn.shape),
            indptr=np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype("int32"),
            indices=col.astype("int32"),
            values=np.ascontiguousarray(w_nk[row, col]),
        )

    def to_dense(self) -> np.ndarray:
        k, n = self.shape
        w_nk = np.zeros((n, k), dtype="float32")
        w_nk[np.repeat(np.arange(n), np.diff(self.indptr)), self.indices] = self.values
        return np.ascontiguousarray(w_nk.T)

    @property
    def nnz(self) -> int:
        return len(self.values)

    @property
    def nbytes(self) -> int:
        """Bytes of values + indices + indptr."""
        return self.values.nbytes + self.indices.nbytes + self.indptr.nbytes


def _x_at(xs, batch, k, row):
    """x[row, k]: read from x itself at batch 1, else from the transposed copy."""
    return xs[0, k] if batch == 1 else xs[k, row]


@T.jit
def _csr_kernel(
    x: T.Buffer((B, K), "float32"),
    indptr: T.Buffer((N + 1,), "int32"),
    indices: T.Buffer((NNZ,), "int32"),
    values: T.Buffer((NNZ,), "float32"),
    b: T.Optional(T.Buffer((N,), "float32")),
    y: T.Buffer((B, N), "float32"),
    *,
    B: T.constexpr,
    K: T.constexpr,
    N: T.constexpr,
    NNZ: T.constexpr,
    V: T.constexpr,
    BV: T.constexpr,
    BT: T.constexpr,
    U: T.constexpr,
    act: T.constexpr,
    par: T.constexpr,
):
    # Rows of x go in vectors of V lanes: V = 1 at batch 1, else the target lanes. BV vectors.
    T.func_attr({"tir.noalias": True})
    if B > 1:
        # x transposed (and zero-padded to BV * V rows): one weight's gather is a vector load.
        xs = T.alloc_buffer((K, BV * V), "float32")
        for k, bb in T.grid(K, B):
            xs[k, bb] = x[bb, k]
        for k, bb in T.grid(K, BV * V - B):
            xs[k, B + bb] = T.float32(0)
    else:
        xs = x

    @T.inline
    def tile(n, v0, tv):
        # U accumulators (x tv batch vectors), each over its own contiguous part of the row.
        # Stack ("global") scope so they become registers, see fc.py.
        acc = T.alloc_buffer((U, tv, V), "float32", scope="global")
        for u in T.unroll(U):
            for v in T.unroll(tv):
                for l in T.vectorized(V):
                    acc[u, v, l] = T.float32(0)
        start: T.let[T.int64] = T.Cast("int64", indptr[n])
        part: T.let[T.int64] = (T.Cast("int64", indptr[n + 1]) - start) // U
        for jo in T.serial(part):
            for u in T.unroll(U):
                j: T.let[T.int64] = start + u * part + jo
                for v in T.unroll(tv):
                    for l in T.vectorized(V):
                        acc[u, v, l] += values[j] * _x_at(xs, B, indices[j], (v0 + v) * V + l)
        for j in T.serial(start + U * part, T.Cast("int64", indptr[n + 1])):
            for v in T.unroll(tv):
                for l in T.vectorized(V):
                    acc[0, v, l] += values[j] * _x_at(xs, B, indices[j], (v0 + v) * V + l)
        for u in T.unroll(1, U):
            for v in T.unroll(tv):
                for l in T.vectorized(V):
                    acc[0, v, l] += acc[u, v, l]
        for v in T.unroll(tv):
            for l in T.unroll(V):
                if (v0 + v) * V + l < B:
                    y[(v0 + v) * V + l, n] = epilogue(acc[0, v, l], b, n, act)

    @T.inline
    def row(n):
        for bo in range(BV // BT):
            tile(n, bo * BT, BT)
        if BV % BT != 0:
            tile(n, BV - BV % BT, BV % BT)

    if par:
        for n in T.parallel(N):
            row(n)
    else:
        for n in range(N):
            row(n)


def default_csr_knobs(weight: CSRWeight, batch: int) -> dict:
    """Batch 1: 4 streams per row (scalar). Batch > 1: 2 batch vectors (16 rows) x 2 streams."""
    if batch == 1:
        return {"batch_tile": 1, "streams": 4, "lanes": 8, "parallel": False}
    return {"batch_tile": 2, "streams": 2, "lanes": 8, "parallel": False}


def csr_fc(
    weight: CSRWeight,
    batch: int,
    *,
    bias: bool,
    activation: str | None,
    name: str = "csr_fc",
    **knobs,
) -> tvm.tirx.PrimFunc:
    """CSR FC PrimFunc ``y = act(x @ W [+ b])``.

    Arguments of the PrimFunc, in order: ``x`` (batch, K) f32, ``weight.indptr``,
    ``weight.indices``, ``weight.values``, ``b`` (N,) f32 when ``bias``, ``y`` (batch, N) f32.

    At batch 1 each weight is a scalar FMA with a gathered x. At batch > 1 the kernel vectorizes
    over the batch instead (the usual CSR x dense-matrix schedule): x is transposed once per call
    and each weight is one broadcast times a vector of x rows.

    Knobs (defaults from :func:`default_csr_knobs`):
      batch_tile: vectors of ``lanes`` batch rows per tile (each index/value load is reused);
      streams: independent accumulators per row, each over its own contiguous part of the row;
      lanes: vector width along the batch (batch > 1);
      parallel: ``T.parallel`` over output rows.
    """
    check_activation(activation)
    cfg = resolve_knobs(default_csr_knobs(weight, batch), knobs, "csr_fc")
    k, n = weight.shape
    lanes = 1 if batch == 1 else cfg["lanes"]
    vectors = -(-batch // lanes)
    func = _csr_kernel.specialize(
        B=batch,
        K=k,
        N=n,
        NNZ=weight.nnz,
        V=lanes,
        BV=vectors,
        BT=min(cfg["batch_tile"], vectors),
        U=max(1, cfg["streams"]),
        act=activation,
        par=bool(cfg["parallel"]),
        **({} if bias else {"b": None}),
    )
    return func.with_attr("global_symbol", name)
