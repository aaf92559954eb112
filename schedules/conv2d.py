"""Direct conv2d kernel template for SIMD CPUs: NCHW in, NCHW out, output channels vectorized.

TVM's default CPU pipeline lowers ``relax.op.nn.conv2d`` to naive loops. This template is what
scalpel-tvm's pass puts in their place, for dense convolutions and for node-shrunk ones (filters
removed, so fewer output channels; the previous layer's filters removed, so fewer input
channels). A shrunk conv is the same template at smaller channel counts, so its time follows the
MAC count, up to the padding of the output channels to whole vectors.

How it computes, per image and output row::

    for each block of `oc_block` output channels, for each tile of `ow_tile` output columns:
        acc[ow_tile][oc_block] = 0                       # ow_tile * oc_block / lanes registers
        for c, kh, kw:                                   # the reduction, weights read in order
            acc[i][:] += broadcast(x[c, row + kh, col_i + kw]) * w_packed[block, c, kh, kw, :]
                                                         # (x indices scaled by stride, dilation)
        y[block channels, row, tile columns] = act(acc + bias)   # transposed to NCHW, guarded

The weight is packed once, at compile time, to ``(ceil(O / oc_block), C, KH, KW, oc_block)`` with
zero filters padding the last block (:func:`pack_conv_weight`), so the inner loop is a vector FMA
over output channels with one broadcast input value. The input is copied into a zero-padded
scratch image only when the conv has padding or the last column tile runs past the output width;
that makes the padding exact and the inner loop branch-free. Stores of padded channels are
guarded, so any ``out_channels`` works.

Knobs (keyword arguments of :func:`conv2d_nchw`; :func:`pack_conv_weight` takes the same ones):

``oc_block``
    output channels per packed block, a multiple of ``lanes``. Default: ``2 * lanes`` when that
    pads ``out_channels`` no more than ``lanes`` does, else ``lanes``.
``ow_tile``
    output columns per tile. Default: the fewest tiles of at most ``8 * lanes // oc_block``
    columns, i.e. 8 accumulator vectors (two FMA pipes times four cycles of FMA latency; more
    spill the 16 AVX2 registers), then the least padding.
``unroll``
    unroll the kernel window (the kh and kw loops; default True), so LLVM schedules the
    window's loads and FMAs as one straight block.
``parallel``
    spread (image, channel block, row) over the TVM thread pool (default True); with
    ``TVM_NUM_THREADS=1`` it costs nothing measurable.
"""

from __future__ import annotations

import numpy as np
from tvm import s_tir, te, tirx

KNOBS = ("oc_block", "ow_tile", "unroll", "parallel")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _check_knobs(knobs: dict) -> None:
    unknown = sorted(set(knobs) - set(KNOBS))
    if unknown:
        raise TypeError(f"unknown conv2d knobs {unknown}; the template has {list(KNOBS)}")


def default_oc_block(out_channels: int, lanes: int = 8) -> int:
    """Two vectors of output channels per block, unless that adds padding over one vector."""
    if _ceil_div(out_channels, 2 * lanes) * 2 * lanes <= _ceil_div(out_channels, lanes) * lanes:
        return 2 * lanes
    return lanes


def default_ow_tile(out_width: int, oc_block: int, lanes: int = 8) -> int:
    """Fewest column tiles of at most 8 accumulator vectors, then the least padded width.

    Up to 8 accumulators a tile is FMA-latency bound, so it costs about the same whatever its
    width: the count of tiles is the cost.
    """
    most = max(1, 8 * lanes // oc_block)
    return _ceil_div(out_width, _ceil_div(out_width, most))


def default_conv2d_knobs(out_channels: int, out_width: int, lanes: int = 8) -> dict:
    """Every knob's default, as :func:`conv2d_nchw` applies them."""
    oc_block = default_oc_block(out_channels, lanes)
    return {"oc_block": oc_block, "ow_tile": default_ow_tile(out_width, oc_block, lanes),
            "unroll": True, "parallel": True}


def conv2d_output_shape(
    batch: int,
    in_channels: int,
    height: int,
    width: int,
    out_channels: int,
    kernel: tuple[int, int],
    *,
    strides: tuple[int, int] = (1, 1),
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
    dilation: tuple[int, int] = (1, 1),
) -> tuple[int, int, int, int]:
    """(B, O, OH, OW) of a conv2d; ``padding`` is (top, left, bottom, right) as in Relax."""
    pad_t, pad_l, pad_b, pad_r = padding
    out_h = (height + pad_t + pad_b - (kernel[0] - 1) * dilation[0] - 1) // strides[0] + 1
    out_w = (width + pad_l + pad_r - (kernel[1] - 1) * dilation[1] - 1) // strides[1] + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"conv2d of a {height}x{width} input with kernel {kernel} has no output")
    return batch, out_channels, out_h, out_w


def pack_conv_weight(w_oihw: np.ndarray, lanes: int = 8, **knobs) -> np.ndarray:
    """OIHW weight -> (ceil(O / oc_block), I, KH, KW, oc_block), the last block zero-padded.

    Takes the knobs of :func:`conv2d_nchw` so one dict serves both; only ``oc_block`` matters here.
    """
    _check_knobs(knobs)
    out_channels, in_channels, kh, kw = w_oihw.shape
    oc_block = knobs.get("oc_block") or default_oc_block(out_channels, lanes)
    blocks = _ceil_div(out_channels, oc_block)
    padded = np.zeros((blocks * oc_block, in_channels, kh, kw), dtype="float32")
    padded[:out_channels] = w_oihw
    packed = padded.reshape(blocks, oc_block, in_channels, kh, kw).transpose(0, 2, 3, 4, 1)
    return np.ascontiguousarray(packed)


def conv2d_nchw(
    batch: int,
    in_channels: int,
    height: int,
    width: int,
    out_channels: int,
    kernel: tuple[int, int],
    *,
    strides: tuple[int, int] = (1, 1),
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    bias: bool,
    activation: str | None,
    lanes: int = 8,
    name: str = "conv2d",
    **knobs,
) -> tirx.PrimFunc:
    """Scheduled float32 conv2d; PrimFunc arguments: x, w_packed[, b], y.

    ``x`` is (B, C, H, W), ``w_packed`` comes from :func:`pack_conv_weight` with the same
    ``lanes`` and knobs, ``b`` is (O,), ``y`` is (B, O, OH, OW) (:func:`conv2d_output_shape`).
    ``activation`` is None or "relu", fused after the bias. ``name`` is the PrimFunc's global
    symbol: kernels added to one IRModule need distinct names. The knobs are listed in the
    module docstring.
    """
    if groups != 1:
        raise NotImplementedError(
            f"conv2d template supports groups=1 only, got groups={groups} "
            "(grouped and depthwise convs are left to TVM's default lowering)"
        )
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    _check_knobs(knobs)
    oc_block = knobs.get("oc_block") or default_oc_block(out_channels, lanes)
    if oc_block % lanes:
        raise ValueError(f"oc_block={oc_block} is not a multiple of lanes={lanes}")
    _, _, out_h, out_w = conv2d_output_shape(
        batch, in_channels, height, width, out_channels, kernel,
        strides=strides, padding=padding, dilation=dilation,
    )  # fmt: skip
    ow_tile = knobs.get("ow_tile") or default_ow_tile(out_w, oc_block, lanes)
    kh_size, kw_size = kernel
    (stride_h, stride_w), (dil_h, dil_w) = strides, dilation
    pad_t, pad_l = padding[0], padding[1]
    blocks = _ceil_div(out_channels, oc_block)
    tiled_w = _ceil_div(out_w, ow_tile) * ow_tile  # the last tile may compute spare columns

    x = te.placeholder((batch, in_channels, height, width), "float32", name="x")
    w_shape = (blocks, in_channels, kh_size, kw_size, oc_block)
    w = te.placeholder(w_shape, "float32", name="w_packed")
    b = te.placeholder((out_channels,), "float32", name="b") if bias else None

    # Zero-padded copy of the input, wide enough for the spare columns of the last tile.
    need_h = (out_h - 1) * stride_h + (kh_size - 1) * dil_h + 1
    need_w = (tiled_w - 1) * stride_w + (kw_size - 1) * dil_w + 1
    needs_pad = bool(pad_t or pad_l or need_h > height or need_w > width)
    if needs_pad:
        src = te.compute(
            (batch, in_channels, need_h, need_w),
            lambda n, c, i, j: te.if_then_else(
                tirx.all(i >= pad_t, i < height + pad_t, j >= pad_l, j < width + pad_l),
                x[n, c, i - pad_t, j - pad_l],
                tirx.const(0.0, "float32"),
            ),
            name="x_pad",
        )
    else:
        src = x

    rc = te.reduce_axis((0, in_channels), "rc")
    rh = te.reduce_axis((0, kh_size), "rh")
    rw = te.reduce_axis((0, kw_size), "rw")
    acc = te.compute(
        (batch, blocks, out_h, tiled_w, oc_block),
        lambda n, ob, i, j, oi: te.sum(
            src[n, rc, i * stride_h + rh * dil_h, j * stride_w + rw * dil_w]
            * w[ob, rc, rh, rw, oi],
            axis=[rc, rh, rw],
        ),
        name="acc",
    )

    def epilogue(n, o, i, j):
        v = acc[n, o // oc_block, i, j, o % oc_block]
        if b is not None:
            v = v + b[o]
        if activation == "relu":
            v = te.max(v, tirx.const(0.0, "float32"))
        return v

    y = te.compute((batch, out_channels, out_h, out_w), epilogue, name="y")
    args = [x, w] + ([b] if b is not None else []) + [y]
    sch = s_tir.Schedule(te.create_prim_func(args))
    _schedule(
        sch, ow_tile, oc_block, needs_pad,
        unroll=knobs.get("unroll", True), parallel=knobs.get("parallel", True),
    )  # fmt: skip
    return sch.mod["main"].with_attrs({"global_symbol": name, "tirx.is_scheduled": True})


def _schedule(sch, ow_tile, oc_block, needs_pad, *, unroll, parallel):
    """Register-tile the accumulation under each (image, block, row, column tile) of ``y``."""
    y_blk, acc_blk = sch.get_sblock("y"), sch.get_sblock("acc")
    n, o, i, j = sch.get_loops(y_blk)
    ob, oi = sch.split(o, [None, oc_block])  # guarded when O % oc_block != 0
    jo, ji = sch.split(j, [None, ow_tile])  # guarded when OW % ow_tile != 0
    sch.reorder(n, ob, i, jo, oi, ji)
    # The accumulator tile lives in registers: every loop touching it is unrolled or vectorized.
    # It stays in "global" scope: TVM 0.27 puts global allocations under 1 KiB on the stack,
    # where LLVM promotes them to registers, but "local" ones in a heap workspace.
    sch.compute_at(acc_blk, jo, preserve_unit_loops=True)
    *_, aj, aoi, rc, rh, rw = sch.get_loops(acc_blk)
    sch.reorder(rc, rh, rw, aj, aoi)
    sch.vectorize(aoi)
    sch.unroll(aj)
    if unroll:
        sch.unroll(rh)
        sch.unroll(rw)
    # Epilogue: per output channel, a contiguous vector of columns (the tile, transposed).
    sch.unroll(oi)
    sch.vectorize(ji)
    if parallel:
        sch.parallel(sch.fuse(n, ob, i))
        if needs_pad:
            pn, pc, *_ = sch.get_loops(sch.get_sblock("x_pad"))
            sch.parallel(sch.fuse(pn, pc))
    init = sch.decompose_reduction(acc_blk, rc)
    *_, ij, ioi = sch.get_loops(init)
    sch.unroll(ij)
    sch.vectorize(ioi)
