"""Scalpel's grouped-sparse FC format and kernels (SIMD-aware weight pruning).

A group is ``G`` weights that are pruned or kept together, ``G`` being the target's vector lanes,
so a kept group is one vector load, and the format needs one index per group instead of one per
weight (Scalpel's modified CSR: values A', block pointers IA', one index per group JA').

Two orientations of a group in the [K, N] weight:

* ``"gx1"``: ``G`` consecutive outputs ``n`` sharing one input ``k``. A block is ``G`` outputs;
  a group contributes ``x[k] * values[j, :]`` to the block's ``G`` outputs — one broadcast and one
  FMA per group, and no horizontal reduction. It is the faster orientation on AVX2 (see
  ``python/bench_kernels.py``).
* ``"1xg"``: ``G`` consecutive inputs ``k`` of one output ``n``. A block is one output; a group
  contributes ``dot(x[k0:k0+G], values[j, :])``: a vector load of x (``k0`` is a multiple of
  ``G``), and a horizontal sum at the end of each output.

Groups align to multiples of ``G``. When ``N`` (gx1) or ``K`` (1xg) is not a multiple of ``G`` the
last group is padded with zero values; the gx1 kernel guards its final store and the 1xg kernel
reads a zero-padded copy of x, so nothing reads or writes out of bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from .fc import check_activation, epilogue, resolve_knobs

ORIENTATIONS = ("gx1", "1xg")


def _check_orientation(orientation):
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")


def _blocked_shape(shape: tuple[int, int], group: int, orientation: str) -> tuple[int, int, int]:
    """(blocks, group positions per block, G): gx1 (ceil(N/G), K, G); 1xg (N, ceil(K/G), G)."""
    _check_orientation(orientation)
    k, n = shape
    if orientation == "gx1":
        return -(-n // group), k, group
    return n, -(-k // group), group


def _blocked(w_kn: np.ndarray, group: int, orientation: str) -> np.ndarray:
    """The weight as aligned groups, shape ``_blocked_shape``, zero-padded."""
    k, n = w_kn.shape
    blocks, positions, _ = _blocked_shape(w_kn.shape, group, orientation)
    if orientation == "gx1":
        padded = np.zeros((k, blocks * group), dtype="float32")
        padded[:, :n] = w_kn
        return padded.reshape(k, blocks, group).transpose(1, 0, 2)
    padded = np.zeros((positions * group, n), dtype="float32")
    padded[:k] = w_kn
    return padded.T.reshape(n, positions, group)


def _unblocked(blocks: np.ndarray, shape: tuple[int, int], orientation: str) -> np.ndarray:
    """Inverse of ``_blocked``: drop the padding, back to [K, N]."""
    k, n = shape
    if orientation == "gx1":
        return np.ascontiguousarray(blocks.transpose(1, 0, 2).reshape(k, -1)[:, :n])
    return np.ascontiguousarray(blocks.reshape(n, -1).T[:k])


def group_sparsity(w_kn: np.ndarray, group: int, orientation: str) -> float:
    """Fraction of the aligned groups of ``w_kn`` that are all zero (no format is built)."""
    nonzero = np.any(_blocked(w_kn, group, orientation) != 0, axis=2)
    return 1.0 - float(nonzero.mean()) if nonzero.size else 0.0


@dataclass(frozen=True)
class GroupedSparseWeight:
    """A [K, N] weight in grouped-sparse format.

    ``indptr`` (int32, blocks + 1): block ``r``'s groups are ``indptr[r]:indptr[r+1]``; a block is
    ``G`` outputs (gx1) or one output (1xg). ``indices`` (int32, one per group): the input ``k``
    (gx1) or the first input of the group, a multiple of ``G`` (1xg); ascending within a block.
    ``values`` (float32, (groups, G)): the group's weights, zero where padded.
    """

    orientation: str
    group: int
    shape: tuple[int, int]
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @classmethod
    def from_dense(cls, w_kn: np.ndarray, group: int, orientation: str) -> GroupedSparseWeight:
        """Keep every aligned group with a nonzero weight; exact (``to_dense`` gives ``w_kn``)."""
        blocks = _blocked(np.asarray(w_kn, dtype="float32"), group, orientation)
        keep = np.any(blocks != 0, axis=2)
        block, pos = np.nonzero(keep)  # row-major: by block, then ascending position
        indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype("int32")
        indices = pos * group if orientation == "1xg" else pos
        return cls(
            orientation=orientation,
            group=group,
            shape=tuple(int(d) for d in w_kn.shape),
            indptr=indptr,
            indices=indices.astype("int32"),
            values=np.ascontiguousarray(blocks[block, pos]),
        )

    def to_dense(self) -> np.ndarray:
        blocks = np.zeros(_blocked_shape(self.shape, self.group, self.orientation), "float32")
        block = np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))
        pos = self.indices // self.group if self.orientation == "1xg" else self.indices
        blocks[block, pos] = self.values
        return _unblocked(blocks, self.shape, self.orientation)

    @property
    def n_groups(self) -> int:
        return len(self.indices)

    @property
    def nbytes(self) -> int:
        """Bytes of values + indices + indptr: the layer's size in the deployed model."""
        return self.values.nbytes + self.indices.nbytes + self.indptr.nbytes

    @property
    def group_sparsity(self) -> float:
        """Fraction of the aligned groups that are all zero (and so not stored)."""
        blocks, positions, _ = _blocked_shape(self.shape, self.group, self.orientation)
        total = blocks * positions
        return 1.0 - self.n_groups / total if total else 0.0


@T.jit
def _gx1_kernel(
    x: T.Buffer((B, K), "float32"),
    indptr: T.Buffer((NR + 1,), "int32"),
    indices: T.Buffer((NG,), "int32"),
    values: T.Buffer((NG, G), "float32"),
    b: T.Optional(T.Buffer((N,), "float32")),
    y: T.Buffer((B, N), "float32"),
    *,
    B: T.constexpr,
    K: T.constexpr,
    N: T.constexpr,
    NR: T.constexpr,
    NG: T.constexpr,
    G: T.constexpr,
    BT: T.constexpr,
    U: T.constexpr,
    BO: T.constexpr,
    act: T.constexpr,
    par: T.constexpr,
):
    T.func_attr({"tir.noalias": True})
    if B > 1:
        # A batch tile loads x[b0:b0+tb, k] from tb rows. When K is a multiple of 1024 those rows
        # are a multiple of 4 KiB apart, land in one L1 set and evict each other; a copy with a
        # row stride of K + 16 (one cache line more) staggers them. 4096x4096, batch 50, 30%
        # group sparsity: 26.7 -> 18.1 ms. The copy is B*K floats, small next to the B*K*N MACs.
        xs = T.alloc_buffer((B, K + 16), "float32")
        for bb, k in T.grid(B, K):
            xs[bb, k] = x[bb, k]
    else:
        xs = x

    @T.inline
    def tile(r, b0, tb):
        # U accumulators, each over its own contiguous part of the block's groups: independent
        # FMA chains and more reads in flight. Stack ("global") scope so they become registers,
        # see fc.py.
        acc = T.alloc_buffer((U, tb, G), "float32", scope="global")
        for u in T.unroll(U):
            for bi in T.unroll(tb):
                for l in T.vectorized(G):
                    acc[u, bi, l] = T.float32(0)
        # Group positions in int64: in int32 LLVM re-derives and sign-extends every stream's
        # position each step (two more instructions per group); in int64 they become pointer
        # increments and a group is an index load, a broadcast and an FMA. 784x300 at 95%,
        # batch 1: 1.06 -> 0.98 us (the CSR and 1xg kernels do the same).
        start: T.let[T.int64] = T.Cast("int64", indptr[r])
        part: T.let[T.int64] = (T.Cast("int64", indptr[r + 1]) - start) // U
        for jo in T.serial(part):
            for u in T.unroll(U):
                j: T.let[T.int64] = start + u * part + jo
                for bi in T.unroll(tb):
                    for l in T.vectorized(G):
                        acc[u, bi, l] += xs[b0 + bi, indices[j]] * values[j, l]
        for j in T.serial(start + U * part, T.Cast("int64", indptr[r + 1])):
            for bi in T.unroll(tb):
                for l in T.vectorized(G):
                    acc[0, bi, l] += xs[b0 + bi, indices[j]] * values[j, l]
        for u in T.unroll(1, U):
            for bi in T.unroll(tb):
                for l in T.vectorized(G):
                    acc[0, bi, l] += acc[u, bi, l]
        for bi in T.unroll(tb):
            if (r + 1) * G <= N:
                for l in T.vectorized(G):
                    y[b0 + bi, r * G + l] = epilogue(acc[0, bi, l], b, r * G + l, act)
            else:  # the last block of a padded N
                for l in T.unroll(G):
                    if r * G + l < N:
                        y[b0 + bi, r * G + l] = epilogue(acc[0, bi, l], b, r * G + l, act)

    @T.inline
    def block(r):
        for bo in range(B // BT):
            tile(r, bo * BT, BT)
        if B % BT != 0:
            tile(r, B - B % BT, B % BT)

    @T.inline
    def blocks(b0, tb):
        if par:
            for r in T.parallel(NR):
                tile(r, b0, tb)
        else:
            for r in range(NR):
                tile(r, b0, tb)

    if BO:
        # Batch tiles outermost: one tile of x stays cached while all the groups stream past.
        for bo in range(B // BT):
            blocks(bo * BT, BT)
        if B % BT != 0:
            blocks(B - B % BT, B % BT)
    elif par:
        for r in T.parallel(NR):
            block(r)
    else:
        for r in range(NR):
            block(r)


def _transpose_block(src, dst, tmp, r0, c0, lanes, bias=None, act=None):
    """``dst[c0 + i, r0 + j] = epilogue(src[r0 + j, c0 + i])`` for ``i, j < lanes``, in registers.

    The AVX transpose: one vector load per source row, unpcklps/unpckhps of row pairs, then
    swaps of the off-diagonal 2- and 4-lane blocks between vectors h = 2, 4 apart (shufps,
    perm2f128); one vector store per result. An element-wise transpose does one strided scalar
    store per element instead (784x50: ~25 us, more than the whole kernel). ``lanes`` is 4 or 8.
    """
    vec = f"float32x{lanes}"
    v = [src.vload([r0 + i, c0], vec) for i in range(lanes)]

    def shuffle(i, k, lo, hi_offset):
        hi = [j + hi_offset for j in lo]
        v[i], v[k] = tvm.tirx.Shuffle([v[i], v[k]], lo), tvm.tirx.Shuffle([v[i], v[k]], hi)

    unpack_lo = [j // 4 * 4 + j % 4 // 2 + (lanes if j % 2 else 0) for j in range(lanes)]
    for i in range(0, lanes, 2):
        shuffle(i, i + 1, unpack_lo, 2)
    h = 2
    while h < lanes:
        for i in range(lanes):
            if i & h == 0:
                shuffle(i, i + h, [j if j & h == 0 else lanes + j - h for j in range(lanes)], h)
        h *= 2
    # v[i] now holds column i with bits 0 and 1 swapped. Through ``tmp`` (a stack buffer LLVM
    # keeps in registers): a store straight to ``dst`` may alias ``src`` as far as LLVM knows,
    # and every result would reload all the rows.
    for i in range(lanes):
        T.buffer_store(tmp, v[i], [i ^ (i ^ i >> 1) % 2 * 3, T.Ramp(0, 1, lanes)])
    for i in range(lanes):
        value = epilogue(tmp.vload([i, 0], vec), bias, T.Ramp(r0, 1, lanes), act)
        T.buffer_store(dst, value, [c0 + i, T.Ramp(r0, 1, lanes)])


@T.jit
def _gx1_batch_kernel(
    x: T.Buffer((B, K), "float32"),
    indptr: T.Buffer((NR + 1,), "int32"),
    indices: T.Buffer((NG,), "int32"),
    values: T.Buffer((NG, G), "float32"),
    b: T.Optional(T.Buffer((N,), "float32")),
    y: T.Buffer((B, N), "float32"),
    *,
    B: T.constexpr,
    K: T.constexpr,
    N: T.constexpr,
    NR: T.constexpr,
    NG: T.constexpr,
    G: T.constexpr,
    V: T.constexpr,
    GO: T.constexpr,
    act: T.constexpr,
):
    # gx1 with the batch in the vector lanes (G lanes = G batch rows), for batch >= G.
    # x is transposed once into xt [K, BF] (BF = the whole batch vectors), so a group's x is
    # one vector load per batch vector and each of its G weights one broadcast: a GO x V tile
    # of accumulators costs V + GO loads for GO * V FMAs (4 x 3: 7 for 12) where the row
    # broadcasts of _gx1_kernel cost one load per FMA. Results go to yt [N, BF] and are
    # transposed back with the epilogue. The B - BF leftover rows use row broadcasts from x.
    T.func_attr({"tir.noalias": True})
    BF = T.meta_var(B // G * G)
    BV = T.meta_var(B // G)
    xt = T.alloc_buffer((K, BF), "float32")
    yt = T.alloc_buffer((NR * G, BF), "float32")
    tmp = T.alloc_buffer((G, G), "float32", scope="global")
    for ko, bo in T.grid(K // G, BV):
        _transpose_block(x, xt, tmp, bo * G, ko * G, G)
    for k, bb in T.grid(K % G, BF):
        xt[K - K % G + k, bb] = x[bb, K - K % G + k]

    @T.inline
    def tile(r, g0, go, b0, tv):
        acc = T.alloc_buffer((go, tv, G), "float32", scope="global")
        for g in T.unroll(go):
            for v in T.unroll(tv):
                for l in T.vectorized(G):
                    acc[g, v, l] = T.float32(0)
        for j in T.serial(indptr[r], indptr[r + 1]):
            for g in T.unroll(go):
                for v in T.unroll(tv):
                    for l in T.vectorized(G):
                        acc[g, v, l] += values[j, g0 + g] * xt[indices[j], b0 + v * G + l]
        for g in T.unroll(go):
            for v in T.unroll(tv):
                for l in T.vectorized(G):
                    yt[r * G + g0 + g, b0 + v * G + l] = acc[g, v, l]

    @T.inline
    def rows_tile(r, b0, tb):
        acc = T.alloc_buffer((tb, G), "float32", scope="global")
        for bi in T.unroll(tb):
            for l in T.vectorized(G):
                acc[bi, l] = T.float32(0)
        for j in T.serial(indptr[r], indptr[r + 1]):
            for bi in T.unroll(tb):
                for l in T.vectorized(G):
                    acc[bi, l] += x[b0 + bi, indices[j]] * values[j, l]
        for bi in T.unroll(tb):
            if (r + 1) * G <= N:
                for l in T.vectorized(G):
                    y[b0 + bi, r * G + l] = epilogue(acc[bi, l], b, r * G + l, act)
            else:
                for l in T.unroll(G):
                    if r * G + l < N:
                        y[b0 + bi, r * G + l] = epilogue(acc[bi, l], b, r * G + l, act)

    for r in range(NR):
        for bo in range(BV // V):
            for go in range(G // GO):
                tile(r, go * GO, GO, bo * V * G, V)
        if BV % V != 0:
            for go in range(G // GO):
                tile(r, go * GO, GO, (BV - BV % V) * G, BV % V)
        if BF < B:
            rows_tile(r, BF, B - BF)

    for no, bo in T.grid(N // G, BV):
        _transpose_block(yt, y, tmp, no * G, bo * G, G, bias=b, act=act)
    for bb, n in T.grid(BF, N % G):
        y[bb, N - N % G + n] = epilogue(yt[N - N % G + n, bb], b, N - N % G + n, act)


def _lane_sum(acc, bi, lanes):
    """Horizontal sum of accumulator lanes ``acc[0, bi, :]`` (once per output, outside the loop),
    as a tree of halves: LLVM makes it two vector adds and one scalar add, where a chain of
    lane-by-lane adds is seven dependent scalar adds (784x300 at 90%, batch 50: 122 -> 96 us)."""
    terms = [acc[0, bi, l] for l in range(lanes)]
    while len(terms) > 1:
        half = len(terms) // 2
        terms = [terms[i] + terms[i + half] for i in range(half)]
    return terms[0]


@T.jit
def _1xg_kernel(
    x: T.Buffer((B, K), "float32"),
    indptr: T.Buffer((N + 1,), "int32"),
    indices: T.Buffer((NG,), "int32"),
    values: T.Buffer((NG, G), "float32"),
    b: T.Optional(T.Buffer((N,), "float32")),
    y: T.Buffer((B, N), "float32"),
    *,
    B: T.constexpr,
    K: T.constexpr,
    N: T.constexpr,
    KP: T.constexpr,
    NG: T.constexpr,
    G: T.constexpr,
    BT: T.constexpr,
    U: T.constexpr,
    BO: T.constexpr,
    act: T.constexpr,
    par: T.constexpr,
):
    T.func_attr({"tir.noalias": True})
    if KP != K or B > 1:
        # The last group of a row may reach past K: read a zero-padded copy of x instead, with
        # rows one cache line apart more than needed at batch > 1 (see _gx1_kernel).
        xs = T.alloc_buffer((B, KP + (16 if B > 1 else 0)), "float32")
        for bb, k in T.grid(B, K):
            xs[bb, k] = x[bb, k]
        for bb, k in T.grid(B, KP - K):
            xs[bb, K + k] = T.float32(0)
    else:
        xs = x

    @T.inline
    def tile(n, b0, tb):
        acc = T.alloc_buffer((U, tb, G), "float32", scope="global")
        for u in T.unroll(U):
            for bi in T.unroll(tb):
                for l in T.vectorized(G):
                    acc[u, bi, l] = T.float32(0)
        start: T.let[T.int64] = T.Cast("int64", indptr[n])
        part: T.let[T.int64] = (T.Cast("int64", indptr[n + 1]) - start) // U
        for jo in T.serial(part):
            for u in T.unroll(U):
                j: T.let[T.int64] = start + u * part + jo
                for bi in T.unroll(tb):
                    for l in T.vectorized(G):
                        acc[u, bi, l] += xs[b0 + bi, indices[j] + l] * values[j, l]
        for j in T.serial(start + U * part, T.Cast("int64", indptr[n + 1])):
            for bi in T.unroll(tb):
                for l in T.vectorized(G):
                    acc[0, bi, l] += xs[b0 + bi, indices[j] + l] * values[j, l]
        for u in T.unroll(1, U):
            for bi in T.unroll(tb):
                for l in T.vectorized(G):
                    acc[0, bi, l] += acc[u, bi, l]
        for bi in T.unroll(tb):
            y[b0 + bi, n] = epilogue(_lane_sum(acc, bi, G), b, n, act)

    @T.inline
    def row(n):
        for bo in range(B // BT):
            tile(n, bo * BT, BT)
        if B % BT != 0:
            tile(n, B - B % BT, B % BT)

    @T.inline
    def rows(b0, tb):
        if par:
            for n in T.parallel(N):
                tile(n, b0, tb)
        else:
            for n in range(N):
                tile(n, b0, tb)

    if BO:
        for bo in range(B // BT):
            rows(bo * BT, BT)
        if B % BT != 0:
            rows(B - B % BT, B % BT)
    elif par:
        for n in T.parallel(N):
            row(n)
    else:
        for n in range(N):
            row(n)


def default_grouped_sparse_knobs(weight: GroupedSparseWeight, batch: int) -> dict:
    """Good knobs for AVX2, measured on a 2-core EPYC.

    Batch 1: 4 streams (independent accumulators) per block; for 1xg at 75% group sparsity or
    more one stream: a row then has a few groups, and setting up and summing four accumulators per
    row costs more than the FMAs (784x300 at 90%: 3.2 -> 2.2 us; consecutive rows' chains overlap
    anyway). Batch > 1: a 10-row batch tile; each values vector feeds 10 FMAs, which are also
    enough independent chains. gx1 puts the batch tiles outermost once most groups are gone: then
    a block's few groups touch scattered lines of x, and re-streaming the small group data per
    batch tile is cheaper than re-reading x per block (4096x4096, batch 50, 90%: 6.5 -> 4.4 ms;
    at 30% it costs 18.2 -> 20.1 ms). 1xg always does: its blocks are single outputs, so with
    the batch tiles inside every output re-reads all of x (784x300, batch 50: 396 -> 204 us at
    50%, 96 -> 49 us at 90%).

    ``batch_lanes`` (gx1, batch >= G) where it measured faster, large and sparse layers: batch
    50, 90% group sparsity, 4096x4096 4.5 -> 3.2 ms, 1024x1024 258 -> 181 us. Not on small
    layers, where transposing x and y costs more than it saves (784x300 at 93%: 31 -> 34 us;
    300x100 at 90%: 6.0 -> 6.8 us), nor on denser ones, where a block's groups touch more
    lines of the transposed x than L1 holds (4096x4096 at 50%: 13.9 -> 17.6 ms).
    ``parallel`` is off for the reasons given in ``fc.default_dense_knobs``.
    """
    knobs = {"streams": 1, "batch_outer": False, "parallel": False, "batch_lanes": False,
             "tile_outputs": 4}
    gx1 = weight.orientation == "gx1"
    sparse = weight.group_sparsity >= 0.75
    if batch == 1:
        return {**knobs, "batch_tile": 1, "streams": 4 if gx1 or not sparse else 1}
    if gx1 and sparse and batch >= weight.group and weight.shape[0] >= 1024:
        return {**knobs, "batch_tile": 3 * weight.group, "batch_lanes": True}
    return {**knobs, "batch_tile": 10, "batch_outer": sparse or not gx1}


def grouped_sparse_fc(
    weight: GroupedSparseWeight,
    batch: int,
    *,
    bias: bool,
    activation: str | None,
    name: str = "gsparse_fc",
    **knobs,
) -> tvm.tirx.PrimFunc:
    """Grouped-sparse FC PrimFunc ``y = act(x @ W [+ b])`` for ``weight``'s sparsity pattern.

    Arguments of the PrimFunc, in order: ``x`` (batch, K) f32, ``weight.indptr``,
    ``weight.indices``, ``weight.values``, ``b`` (N,) f32 when ``bias``, ``y`` (batch, N) f32.
    The kernel depends on the pattern only through the array sizes (and its default knobs on
    the group sparsity), so any weight with the same shape, group, orientation and number of
    groups can be passed at run time.

    Knobs (defaults from :func:`default_grouped_sparse_knobs`):
      batch_tile: rows of x per register tile (each group's values are loaded once per tile);
      streams: independent accumulators per block, each over its own contiguous part of the
        block's groups (FMA latency hiding, more reads in flight);
      batch_outer: loop over batch tiles outside the blocks instead of inside;
      parallel: ``T.parallel`` over blocks (a thread-pool launch per call, or per batch tile);
      batch_lanes: gx1 and batch >= G only; vectorize over batch rows instead of outputs
        (x and y transposed per call, see ``_gx1_batch_kernel``); then ``batch_tile`` is
        rounded down to a multiple of G (at least G), ``streams``, ``batch_outer`` and
        ``parallel`` do not apply;
      tile_outputs: with batch_lanes, outputs of a block per register tile (a divisor of G);
        a block's groups are read G / tile_outputs times, each pass feeding a
        tile_outputs x batch_tile tile of accumulators (4 x 24 = 12 ymm registers).
    """
    check_activation(activation)
    cfg = resolve_knobs(default_grouped_sparse_knobs(weight, batch), knobs, "grouped_sparse_fc")
    k, n = weight.shape
    g = weight.group
    sizes = dict(B=batch, K=k, N=n, NG=weight.n_groups, G=g, act=activation,
                 **({} if bias else {"b": None}))
    common = dict(
        BT=min(cfg["batch_tile"], batch),
        U=max(1, cfg["streams"]),
        par=bool(cfg["parallel"]),
        **sizes,
    )
    if weight.orientation == "gx1" and cfg["batch_lanes"] and batch >= g:
        if g % cfg["tile_outputs"] != 0:
            raise ValueError(f"tile_outputs must divide G = {g}, got {cfg['tile_outputs']}")
        func = _gx1_batch_kernel.specialize(
            NR=-(-n // g), V=max(1, cfg["batch_tile"] // g), GO=cfg["tile_outputs"], **sizes
        )
    elif weight.orientation == "gx1":
        func = _gx1_kernel.specialize(NR=-(-n // g), BO=bool(cfg["batch_outer"]), **common)
    else:
        func = _1xg_kernel.specialize(KP=-(-k // g) * g, BO=bool(cfg["batch_outer"]), **common)
    return func.with_attr("global_symbol", name)
