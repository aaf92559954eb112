"""CUDA kernels: dense and node-shrunk FC / conv, warp-grouped sparse FC, and CSR for contrast.

On a GPU, Scalpel prunes whole nodes: a node-shrunk layer is the *same dense kernel at a smaller
shape*, so it keeps the dense format's coalesced loads and tiling. The dense kernels here are
TE computes scheduled by TVM's own GPU rules (dlight: ``Matmul`` tiles the conv, which it treats
as an implicit im2col GEMM; ``GEMV`` takes FC at batch 1), the same rules TVM's default CUDA
pipeline applies, except batched FC: there dlight's 32-row tiles leave an H100 mostly idle, and
``gpu_warp_dense_fc`` (register tiles per thread, K split over the warps of a block) is 2-4x
faster. Dense and shrunk use the same kernel, so they are compared schedule-for-schedule.

``gpu_grouped_sparse_fc`` is the G×1 grouped-sparse format with G = 32, a warp: a group is the 32
weights of one input ``k`` for 32 consecutive outputs, so a warp reads a group's values as one
coalesced 128-byte line, and ``x[b, k]`` is one broadcast load. One thread block per block of 32
outputs (times a tile of batch rows); its ``splits`` warps take every ``splits``-th group and
add their partial sums through shared memory at the end::

    block (r, batch tile), warp s, lane l:             # output n = 32 r + l
        acc[bi] = 0                                    # batch_tile registers
        for j in indptr[r] + s, + splits, ... < indptr[r + 1]:
            v = values[j, l]; k = indices[j]           # coalesced; one index per 32 weights
            acc[bi] += v * x[b0 + bi, k]               # broadcast
        partial[s, bi, l] = acc[bi]; sync
        warp 0: y[b0 + bi, n] = act(sum_s partial[s, bi, l] + bias[n])

``gpu_csr_fc`` and ``gpu_csr_conv2d`` are traditional (Han et al.) pruning's format, an index
per weight, scheduled as well as that format allows (a warp per output row walking its weights
with coalesced index/value reads; for conv, a thread per output pixel gathering its input).
"""
from __future__ import annotations

import dataclasses

import tvm
from tvm import te, tirx, topi
from tvm.script import tirx as T

from .conv2d import conv2d_output_shape
from .csr import CSRWeight
from .fc import check_activation, epilogue, resolve_knobs
from .grouped_sparse import GroupedSparseWeight

WARP = 32
OPAQUE = 8  # relax.OpPatternKind.kOpaque


# The tile settings of dlight's Matmul rule that CUDA tuning measures for a conv layer
# (`python/tune_cuda.py`), overrides of dlight's CUDA default (the first, empty). The default's
# tile is 32 output pixels x 64 output channels (block 8 x 16 threads, 4 x 4 each); these vary
# the channel tile from 32 to 128. Odd micro tiles are left out: with dlight's 2-wide vector
# loads, a 3-wide one computed wrong results on 44 of 50 conv shapes (H100, 2026-11-23; the
# tuning step checks every setting against the default's output, which is how it was caught).
CONV_TILE_SPACE = (
    {},
    {"block_size_y": 8},
    {"micro_size_y": 2},
    {"micro_size_y": 6},
    {"block_size_y": 32},
    # 16-pixel tiles: more thread blocks for layers with few output pixels, whose few blocks
    # fill the GPU's multiprocessors in uneven waves
    {"micro_size_x": 2},
    {"micro_size_x": 2, "block_size_y": 8},
)


def _matmul_rule(config: dict | None):
    """dlight's Matmul rule, with `config` overriding fields of its CUDA default config."""
    from tvm.s_tir import dlight as dl

    if not config:
        return dl.gpu.Matmul()

    class TunedMatmul(dl.gpu.Matmul):
        def get_configs(self, target):
            return dataclasses.replace(super().get_configs(target), **config)

    return TunedMatmul()


def dlight_schedule(func: tirx.PrimFunc, target: tvm.target.Target,
                    matmul_config: dict | None = None) -> tirx.PrimFunc:
    """`func` scheduled by TVM's default GPU rules for `target` (as its CUDA pipeline does);
    `matmul_config` overrides the Matmul rule's tile settings (a tuned conv's, see
    `CONV_TILE_SPACE`)."""
    from tvm.s_tir import dlight as dl  # late: dlight pulls in the schedule machinery

    mod = tvm.IRModule({"main": func})
    with target:
        mod = dl.ApplyDefaultSchedule(_matmul_rule(matmul_config), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                      dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)
    # Opaque to Relax's FuseOps: the kernel is final (its epilogue already fused), and a
    # degenerate one (a K = 1 matmul looks elementwise) would otherwise be fused with its
    # neighbours after scheduling, which FuseTIR rejects.
    return mod["main"].with_attr("op_pattern", OPAQUE)


def _apply_epilogue(value, bias, activation, channel_axis: int):
    """The FC templates' epilogue (bias, ReLU or GELU) on a te tensor, channel along `channel_axis`."""
    return te.compute(value.shape, lambda *index: epilogue(value(*index), bias, index[channel_axis], activation),
                      name="epilogue")


def gpu_dense_fc(batch: int, k: int, n: int, target, *, bias: bool, activation: str | None,
                 name: str) -> tirx.PrimFunc:
    """``y = act(x @ W^T [+ b])`` with W as [N, K] (a PyTorch Linear / ONNX Gemm transB weight:
    the reduction runs along a row, which is what dlight's GEMV reads coalesced at batch 1).
    Arguments: x (batch, K), W (N, K), [b (N,)], y (batch, N)."""
    check_activation(activation)
    x = te.placeholder((batch, k), "float32", name="x")
    w = te.placeholder((n, k), "float32", name="w")
    b = te.placeholder((n,), "float32", name="b") if bias else None
    r = te.reduce_axis((0, k), name="r")
    y = te.compute((batch, n), lambda i, j: te.sum(x[i, r] * w[j, r], axis=r), name="matmul")
    if bias or activation:
        y = _apply_epilogue(y, b, activation, 1)
    args = [x, w] + ([b] if bias else []) + [y]
    return dlight_schedule(te.create_prim_func(args), target).with_attr("global_symbol", name)


def gpu_conv2d(batch: int, channels: int, height: int, width: int, out_channels: int,
               kernel: tuple[int, int], target, *, strides, padding, dilation, bias: bool,
               activation: str | None, name: str, config: dict | None = None) -> tirx.PrimFunc:
    """NCHW conv2d with an OIHW weight, bias and ReLU fused; dlight's Matmul rule tiles it as an
    implicit GEMM (no im2col buffer in global memory), with its tile settings overridden by
    `config` (one of `CONV_TILE_SPACE`, from a tuning log). ``padding`` is (top, left, bottom,
    right). Arguments: x, W (O, C, KH, KW), [b (O,)], y."""
    check_activation(activation)
    x = te.placeholder((batch, channels, height, width), "float32", name="x")
    w = te.placeholder((out_channels, channels, *kernel), "float32", name="w")
    b = te.placeholder((out_channels,), "float32", name="b") if bias else None
    y = topi.nn.conv2d_nchw(x, w, list(strides), list(padding), list(dilation))
    if bias or activation:
        y = _apply_epilogue(y, b, activation, 1)
    args = [x, w] + ([b] if bias else []) + [y]
    return dlight_schedule(te.create_prim_func(args), target, config).with_attr("global_symbol", name)


def pack_warp_dense_weight(w_kn, outputs_per_lane: int = 4):
    """[K, N] -> [ceil(N / (32 * outputs_per_lane)), K, 32 * outputs_per_lane], zero-padded: a
    block's outputs for one k are contiguous, so a warp loads them as one vector per lane."""
    import numpy as np

    k, n = w_kn.shape
    width = WARP * outputs_per_lane
    blocks = -(-n // width)
    padded = np.zeros((k, blocks * width), "float32")
    padded[:, :n] = w_kn
    return np.ascontiguousarray(padded.reshape(k, blocks, width).transpose(1, 0, 2))


@T.jit
def _warp_dense_kernel(
    x: T.Buffer((B, K), "float32"),
    w: T.Buffer((NR, K, G * V), "float32"),
    b: T.Optional(T.Buffer((N,), "float32")),
    y: T.Buffer((B, N), "float32"),
    *,
    B: T.constexpr,
    K: T.constexpr,
    N: T.constexpr,
    NR: T.constexpr,
    G: T.constexpr,
    V: T.constexpr,
    BT: T.constexpr,
    NBT: T.constexpr,
    S: T.constexpr,
    KC: T.constexpr,
    act: T.constexpr,
):
    T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})
    for r in T.thread_binding(NR, thread="blockIdx.x"):
        for bt in T.thread_binding(NBT, thread="blockIdx.y"):
            partial = T.alloc_buffer((S, BT, G * V), "float32", scope="shared")
            for s in T.thread_binding(S, thread="threadIdx.y"):
                for lane in T.thread_binding(G, thread="threadIdx.x"):
                    acc = T.alloc_buffer((BT, V), "float32", scope="local")
                    wv = T.alloc_buffer((V,), "float32", scope="local")
                    for bi in T.unroll(BT):
                        for j in T.vectorized(V):
                            acc[bi, j] = T.float32(0)
                    for kk in T.serial(KC):
                        if s * KC + kk < K:
                            for j in T.vectorized(V):
                                wv[j] = w[r, s * KC + kk, lane * V + j]
                            for bi in T.unroll(BT):
                                if bt * BT + bi < B:
                                    for j in T.vectorized(V):
                                        acc[bi, j] = acc[bi, j] + wv[j] * x[bt * BT + bi, s * KC + kk]
                    for bi in T.unroll(BT):
                        for j in T.vectorized(V):
                            partial[s, bi, lane * V + j] = acc[bi, j]
            for s in T.thread_binding(S, thread="threadIdx.y"):
                for lane in T.thread_binding(G, thread="threadIdx.x"):
                    # warp s finishes batch rows s, s + S, ... of the tile, all G * V outputs
                    for bo in T.serial((BT + S - 1) // S):
                        for j in T.serial(V):
                            if s + bo * S < BT and bt * BT + s + bo * S < B and r * G * V + j * G + lane < N:
                                total = T.alloc_buffer((1,), "float32", scope="local")
                                total[0] = partial[0, s + bo * S, j * G + lane]
                                for t in T.serial(1, S):
                                    total[0] = total[0] + partial[t, s + bo * S, j * G + lane]
                                y[bt * BT + s + bo * S, r * G * V + j * G + lane] = epilogue(
                                    total[0], b, r * G * V + j * G + lane, act)


SHARED_BYTES = 48 * 1024  # what a block may use without opting in to more


def gpu_warp_dense_fc(batch: int, k: int, n: int, *, bias: bool, activation: str | None, name: str,
                      outputs_per_lane: int = 4, batch_tile: int = 4, splits: int = 16) -> tirx.PrimFunc:
    """Dense FC for batch > 1 with a register tile per thread: each lane keeps
    `outputs_per_lane` outputs x `batch_tile` rows of accumulators, so a k-step is one vector
    weight load (the warp's 32 x `outputs_per_lane` weights, coalesced) and `batch_tile` input
    broadcasts for `outputs_per_lane * batch_tile` FMAs; `splits` warps take consecutive parts
    of K and add up through shared memory. Arguments: x (batch, K), W packed by
    :func:`pack_warp_dense_weight`, [b (N,)], y (batch, N).

    The defaults (4 outputs x 4 rows per lane, 16 warps) were the fastest of a grid measured on
    an H100 at batch 50 (`python/bench_gpu.py`'s history in the README): 2-4x faster than
    dlight's Matmul rule on every FC shape of the paper's networks, whose 32-row tiles leave
    most of a batch-50 GEMM's multiprocessors idle."""
    check_activation(activation)
    tile = max(1, min(batch_tile, batch))
    shared = splits * tile * WARP * outputs_per_lane * 4
    if shared > SHARED_BYTES:
        raise ValueError(f"splits x batch_tile x {WARP * outputs_per_lane} partial sums need {shared} "
                         f"bytes of shared memory, over {SHARED_BYTES}; lower splits or batch_tile")
    func = _warp_dense_kernel.specialize(
        B=batch, K=k, N=n, NR=-(-n // (WARP * outputs_per_lane)), G=WARP, V=outputs_per_lane,
        BT=tile, NBT=-(-batch // tile), S=splits, KC=-(-k // splits), act=activation,
        **({} if bias else {"b": None}))
    return func.with_attr("global_symbol", name)


@T.jit
def _warp_gx1_kernel(
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
    NBT: T.constexpr,
    S: T.constexpr,
    act: T.constexpr,
):
    T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})
    for r in T.thread_binding(NR, thread="blockIdx.x"):
        for bt in T.thread_binding(NBT, thread="blockIdx.y"):
            partial = T.alloc_buffer((S, BT, G), "float32", scope="shared")
            for s in T.thread_binding(S, thread="threadIdx.y"):
                for lane in T.thread_binding(G, thread="threadIdx.x"):
                    acc = T.alloc_buffer((BT,), "float32", scope="local")
                    for bi in T.unroll(BT):
                        acc[bi] = T.float32(0)
                    start: T.let[T.int32] = indptr[r] + s
                    count: T.let[T.int32] = (indptr[r + 1] - start + S - 1) // S
                    for jo in T.serial(count):
                        j: T.let[T.int32] = start + jo * S
                        v: T.let[T.float32] = values[j, lane]
                        col: T.let[T.int32] = indices[j]
                        for bi in T.unroll(BT):
                            if bt * BT + bi < B:
                                acc[bi] = acc[bi] + v * x[bt * BT + bi, col]
                    for bi in T.unroll(BT):
                        partial[s, bi, lane] = acc[bi]
            for s in T.thread_binding(S, thread="threadIdx.y"):
                for lane in T.thread_binding(G, thread="threadIdx.x"):
                    if s == 0:
                        for bi in T.unroll(BT):
                            if bt * BT + bi < B and r * G + lane < N:
                                total = T.alloc_buffer((1,), "float32", scope="local")
                                total[0] = partial[0, bi, lane]
                                for t in T.serial(1, S):
                                    total[0] = total[0] + partial[t, bi, lane]
                                y[bt * BT + bi, r * G + lane] = epilogue(total[0], b, r * G + lane, act)


def default_warp_gsparse_knobs(weight: GroupedSparseWeight, batch: int) -> dict:
    """Batch rows per block: up to 8 registers; warps per block: enough that each walks a
    block's groups in about 8 steps (latency hiding by more warps in flight), at most 8 (the
    best of 1/2/4/8 on every shape of the H100 sweep at 90% group sparsity)."""
    blocks = len(weight.indptr) - 1
    per_block = weight.n_groups / max(blocks, 1)
    return {"batch_tile": min(batch, 8), "splits": int(min(8, max(1, -(-per_block // 8))))}


def gpu_grouped_sparse_fc(weight: GroupedSparseWeight, batch: int, *, bias: bool,
                          activation: str | None, name: str, **knobs) -> tirx.PrimFunc:
    """The warp-grouped sparse FC kernel (G×1, G = 32) for `weight`'s pattern; knobs
    ``batch_tile`` and ``splits`` (see :func:`default_warp_gsparse_knobs`). Arguments: x
    (batch, K), indptr, indices, values, [b], y (batch, N)."""
    check_activation(activation)
    if weight.orientation != "gx1" or weight.group != WARP:
        raise ValueError(f"the GPU kernel takes G×1 groups of {WARP} (a warp), got "
                         f"{weight.orientation} groups of {weight.group}")
    cfg = resolve_knobs(default_warp_gsparse_knobs(weight, batch), knobs, "gpu_grouped_sparse_fc")
    k, n = weight.shape
    tile = max(1, min(cfg["batch_tile"], batch))
    func = _warp_gx1_kernel.specialize(
        B=batch, K=k, N=n, NR=-(-n // WARP), NG=max(weight.n_groups, 1), G=WARP, BT=tile,
        NBT=-(-batch // tile), S=max(1, cfg["splits"]), act=activation,
        **({} if bias else {"b": None}))
    return func.with_attr("global_symbol", name)


@T.jit
def _warp_csr_kernel(
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
    BT: T.constexpr,
    NBT: T.constexpr,
    RPB: T.constexpr,
    act: T.constexpr,
):
    T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})
    for ro in T.thread_binding((N + RPB - 1) // RPB, thread="blockIdx.x"):
        for bt in T.thread_binding(NBT, thread="blockIdx.y"):
            partial = T.alloc_buffer((RPB, BT, 32), "float32", scope="shared")
            for ri in T.thread_binding(RPB, thread="threadIdx.y"):
                for lane in T.thread_binding(32, thread="threadIdx.x"):
                    acc = T.alloc_buffer((BT,), "float32", scope="local")
                    for bi in T.unroll(BT):
                        acc[bi] = T.float32(0)
                    if ro * RPB + ri < N:
                        row: T.let[T.int32] = ro * RPB + ri
                        start: T.let[T.int32] = indptr[row] + lane
                        count: T.let[T.int32] = (indptr[row + 1] - start + 31) // 32
                        for jo in T.serial(count):
                            j: T.let[T.int32] = start + jo * 32
                            v: T.let[T.float32] = values[j]
                            col: T.let[T.int32] = indices[j]
                            for bi in T.unroll(BT):
                                if bt * BT + bi < B:
                                    acc[bi] = acc[bi] + v * x[bt * BT + bi, col]
                    for bi in T.unroll(BT):
                        partial[ri, bi, lane] = acc[bi]
            for ri in T.thread_binding(RPB, thread="threadIdx.y"):
                for lane in T.thread_binding(32, thread="threadIdx.x"):
                    # lane bi sums batch row bi of this warp's row
                    if lane < BT and bt * BT + lane < B and ro * RPB + ri < N:
                        total = T.alloc_buffer((1,), "float32", scope="local")
                        total[0] = T.float32(0)
                        for t in T.serial(32):
                            total[0] = total[0] + partial[ri, lane, t]
                        y[bt * BT + lane, ro * RPB + ri] = epilogue(total[0], b, ro * RPB + ri, act)


def gpu_csr_fc(weight: CSRWeight, batch: int, *, bias: bool, activation: str | None, name: str,
               batch_tile: int = 8, rows_per_block: int = 4) -> tirx.PrimFunc:
    """CSR FC (one warp per output row, lanes striding over its weights; batch tiles on
    blockIdx.y). Arguments: x (batch, K), indptr, indices, values, [b], y (batch, N)."""
    check_activation(activation)
    k, n = weight.shape
    tile = max(1, min(batch_tile, batch, 32))
    func = _warp_csr_kernel.specialize(
        B=batch, K=k, N=n, NNZ=max(weight.nnz, 1), BT=tile, NBT=-(-batch // tile),
        RPB=rows_per_block, act=activation, **({} if bias else {"b": None}))
    return func.with_attr("global_symbol", name)


@T.jit
def _csr_conv_kernel(
    x: T.Buffer((B, C, H, W), "float32"),
    indptr: T.Buffer((O + 1,), "int32"),
    indices: T.Buffer((NNZ,), "int32"),
    values: T.Buffer((NNZ,), "float32"),
    b: T.Optional(T.Buffer((O,), "float32")),
    y: T.Buffer((B, O, OH, OW), "float32"),
    *,
    B: T.constexpr,
    C: T.constexpr,
    H: T.constexpr,
    W: T.constexpr,
    O: T.constexpr,
    OH: T.constexpr,
    OW: T.constexpr,
    KH: T.constexpr,
    KW: T.constexpr,
    SH: T.constexpr,
    SW: T.constexpr,
    PT: T.constexpr,
    PL: T.constexpr,
    DH: T.constexpr,
    DW: T.constexpr,
    NNZ: T.constexpr,
    TPB: T.constexpr,
    act: T.constexpr,
):
    T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})
    for o in T.thread_binding(O, thread="blockIdx.x"):
        for tile in T.thread_binding(B * ((OH * OW + TPB - 1) // TPB), thread="blockIdx.y"):
            for t in T.thread_binding(TPB, thread="threadIdx.x"):
                bb: T.let[T.int32] = tile // ((OH * OW + TPB - 1) // TPB)
                p: T.let[T.int32] = tile % ((OH * OW + TPB - 1) // TPB) * TPB + t
                if p < OH * OW:
                    acc = T.alloc_buffer((1,), "float32", scope="local")
                    acc[0] = T.float32(0)
                    for j in T.serial(indptr[o], indptr[o + 1]):
                        # indices[j] = (c * KH + kh) * KW + kw, the OIHW flattening
                        c: T.let[T.int32] = indices[j] // (KH * KW)
                        iy: T.let[T.int32] = p // OW * SH - PT + indices[j] // KW % KH * DH
                        ix: T.let[T.int32] = p % OW * SW - PL + indices[j] % KW * DW
                        if 0 <= iy and iy < H and 0 <= ix and ix < W:
                            acc[0] = acc[0] + values[j] * x[bb, c, iy, ix]
                    y[bb, o, p // OW, p % OW] = epilogue(acc[0], b, o, act)


def gpu_csr_conv2d(weight_oihw, x_shape, *, strides, padding, dilation, bias: bool,
                   activation: str | None, name: str, threads: int = 128):
    """Direct sparse conv for a CSR weight (rows = filters, columns = (c, kh, kw)): a thread per
    output pixel gathers the inputs of its filter's nonzero weights. Returns the PrimFunc and
    the CSR arrays (indptr, indices, values). Arguments: x, indptr, indices, values, [b], y."""
    import numpy as np

    check_activation(activation)
    o, c, kh, kw = weight_oihw.shape
    batch, _, height, width = x_shape
    csr = CSRWeight.from_dense(np.asarray(weight_oihw, "float32").reshape(o, -1).T)
    _, _, out_h, out_w = conv2d_output_shape(batch, c, height, width, o, (kh, kw), strides=strides,
                                             padding=padding, dilation=dilation)
    if batch * -(-out_h * out_w // threads) > 65535:  # CUDA's limit on gridDim.y
        raise ValueError(f"batch {batch} of {out_h}x{out_w} outputs needs more than 65535 blocks "
                         f"of {threads} pixels; raise threads= or split the batch")
    func = _csr_conv_kernel.specialize(
        B=batch, C=c, H=height, W=width, O=o, OH=out_h, OW=out_w, KH=kh, KW=kw,
        SH=strides[0], SW=strides[1], PT=padding[0], PL=padding[1], DH=dilation[0],
        DW=dilation[1], NNZ=max(csr.nnz, 1), TPB=threads, act=activation,
        **({} if bias else {"b": None}))
    return func.with_attr("global_symbol", name), [csr.indptr, csr.indices, csr.values]
