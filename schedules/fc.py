"""Dense fully-connected kernel template (also the node-shrunk dense kernel).

``y = act(x @ w [+ b])`` with ``x`` [batch, K] and ``w`` [K, N] (Relax ``matmul`` layout).

The weight is a compile-time constant in every use (the Relax passes bind it), so the template
takes it pre-packed by :func:`pack_dense_weight` as ``[ceil(N / lanes), K, lanes]``: each
``lanes``-wide block of output columns becomes one contiguous stream over K. That turns the
strided column walk of the [K, N] layout into sequential reads the hardware prefetcher follows,
and zero-pads N to a multiple of ``lanes`` so every weight load is a full, in-bounds vector.

Schedule (hand-written TIR, one register tile at a time):

* a tile is ``batch_tile`` rows of x times ``vectors`` lane-blocks of outputs; its accumulators
  live in registers (the tile loops are unrolled, the lane loop is ``T.vectorized``), so the inner
  loop is one weight load and one ``x`` broadcast feeding ``batch_tile * vectors`` FMAs;
* each lane-block of a tile is its own contiguous stream, and ``k_streams`` splits K into that
  many more independent partial sums. At batch 1 the kernel is memory bound (each weight is used
  once) and needs many reads in flight: 4096x4096 batch 1 takes 3.6 ms with 8 lane-blocks in one
  stream and 2.3 ms with 4 lane-blocks x 2 K streams (same 8 accumulators);
* tail tiles (batch % batch_tile rows, blocks % vectors lane-blocks, K % k_streams) are separate
  smaller tiles, not guards inside the hot loop; only the final store of the last, partial
  lane-block is guarded.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

ACTIVATIONS = (None, "relu", "gelu", "gelu_tanh")  # FC epilogues; conv kernels fuse ReLU only

# erf as TVM's topi.fast_erf computes it (Eigen's rational approximation on [-4, 4], within
# 4e-7 of erf in float32), spelt out in TIR: T.erf lowers to a scalar libm call per element on
# LLVM targets, and a GELU of that kind costs more than a small layer's matmul.
_ERF_NUMERATOR = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
                  -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
                  -1.60960333262415e-02)  # odd powers x^13 .. x^1, highest first
_ERF_DENOMINATOR = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
                    -7.37332916720468e-03, -1.42647390514189e-02)  # even powers x^8 .. x^0


def fast_erf(x):
    """erf(x) in float32 TIR arithmetic that vectorizes (see _ERF_NUMERATOR)."""
    return _rational(x, 4, _ERF_NUMERATOR, _ERF_DENOMINATOR)


# tanh as TVM's topi.fast_tanh computes it (Eigen's rational approximation on [-9, 9]): one
# division, where TVM's LLVM lowering of T.tanh takes two.
_TANH_NUMERATOR = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                   5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
                   4.89352455891786e-03)  # odd powers x^13 .. x^1, highest first
_TANH_DENOMINATOR = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                     4.89352518554385e-03)  # even powers x^6 .. x^0


def _rational(x, limit, numerator, denominator):
    """x * P(x^2) / Q(x^2) on x clamped to [-limit, limit], Horner's rule in float32."""
    x = T.max(T.min(x, T.float32(limit)), T.float32(-limit))
    x2 = x * x
    p, q = T.float32(numerator[0]), T.float32(denominator[0])
    for c in numerator[1:]:
        p = p * x2 + T.float32(c)
    for c in denominator[1:]:
        q = q * x2 + T.float32(c)
    return x * p / q


def fast_tanh(x):
    """tanh(x) in float32 TIR arithmetic that vectorizes (see _TANH_NUMERATOR)."""
    return _rational(x, 9, _TANH_NUMERATOR, _TANH_DENOMINATOR)


def pack_dense_weight(w_kn: np.ndarray, lanes: int = 8) -> np.ndarray:
    """Pack a [K, N] weight as [ceil(N / lanes), K, lanes], zero-padding N.

    ``dense_fc(..., lanes=L)`` takes ``pack_dense_weight(w, lanes=L)``; no other knob changes
    the layout.
    """
    k, n = w_kn.shape
    blocks = -(-n // lanes)
    padded = np.zeros((k, blocks * lanes), dtype="float32")
    padded[:, :n] = w_kn
    return np.ascontiguousarray(padded.reshape(k, blocks, lanes).transpose(1, 0, 2))


def epilogue(value, bias, n, activation):
    """The fused epilogue ``act(value + bias[n])``; shared by all FC templates, CPU and GPU.
    "gelu" is the exact (erf) GELU of ONNX's Gelu and ``relax.nn.gelu``; "gelu_tanh" its tanh
    approximation (ONNX ``Gelu(approximate="tanh")``, ``relax.nn.gelu_tanh``, GPT-2's)."""
    if bias is not None:
        value = value + bias[n]
    if activation == "relu":
        value = T.max(value, T.float32(0))
    elif activation == "gelu":
        value = value * T.float32(0.5) * (T.float32(1) + fast_erf(value * T.float32(0.7071067811865476)))
    elif activation == "gelu_tanh":
        inner = T.float32(0.7978845608028654) * (value + T.float32(0.044715) * value * value * value)
        value = value * T.float32(0.5) * (T.float32(1) + fast_tanh(inner))
    return value


def check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def resolve_knobs(defaults: dict, knobs: dict, template: str) -> dict:
    """``defaults`` overridden by ``knobs``; a misspelt knob is an error, not a silent no-op."""
    unknown = knobs.keys() - defaults.keys()
    if unknown:
        raise TypeError(f"unknown {template} knobs: {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **knobs}


@T.jit
def _dense_kernel(
    x: T.Buffer((B, K), "float32"),
    w: T.Buffer((NB, K, L), "float32"),
    b: T.Optional(T.Buffer((N,), "float32")),
    y: T.Buffer((B, N), "float32"),
    *,
    B: T.constexpr,
    K: T.constexpr,
    N: T.constexpr,
    NB: T.constexpr,
    L: T.constexpr,
    BT: T.constexpr,
    NV: T.constexpr,
    KS: T.constexpr,
    KC: T.constexpr,
    act: T.constexpr,
    par: T.constexpr,
):
    # KC = K // KS rows per K stream; the K % KS trailing rows go to stream 0.
    T.func_attr({"tir.noalias": True})

    @T.inline
    def tile(j0, b0, tv, tb):
        # Accumulators (stream, batch row, lane-block, lane). "global" scope on purpose: 0.27's
        # LowerTVMBuiltin keeps only small *global* allocations on the stack (where LLVM
        # promotes them to registers); "local" ones become heap workspace.
        acc = T.alloc_buffer((KS, tb, tv, L), "float32", scope="global")
        for s in T.unroll(KS):
            for bi in T.unroll(tb):
                for v in T.unroll(tv):
                    for l in T.vectorized(L):
                        acc[s, bi, v, l] = T.float32(0)
        for ko in range(KC):
            for s in T.unroll(KS):
                for bi in T.unroll(tb):
                    for v in T.unroll(tv):
                        for l in T.vectorized(L):
                            acc[s, bi, v, l] += x[b0 + bi, s * KC + ko] * w[j0 + v, s * KC + ko, l]
        for k in range(KS * KC, K):
            for bi in T.unroll(tb):
                for v in T.unroll(tv):
                    for l in T.vectorized(L):
                        acc[0, bi, v, l] += x[b0 + bi, k] * w[j0 + v, k, l]
        for s in T.unroll(1, KS):
            for bi in T.unroll(tb):
                for v in T.unroll(tv):
                    for l in T.vectorized(L):
                        acc[0, bi, v, l] += acc[s, bi, v, l]
        # The output index is spelt out, not bound to a name: a let inside a T.vectorized loop
        # miscompiles in 0.27 (wrong results).
        for bi in T.unroll(tb):
            for v in T.unroll(tv):
                if (j0 + v + 1) * L <= N:
                    for l in T.vectorized(L):
                        y[b0 + bi, (j0 + v) * L + l] = epilogue(
                            acc[0, bi, v, l], b, (j0 + v) * L + l, act
                        )
                else:
                    for l in T.unroll(L):
                        if (j0 + v) * L + l < N:
                            y[b0 + bi, (j0 + v) * L + l] = epilogue(
                                acc[0, bi, v, l], b, (j0 + v) * L + l, act
                            )

    @T.inline
    def column(j0, tv):
        for bo in range(B // BT):
            tile(j0, bo * BT, tv, BT)
        if B % BT != 0:
            tile(j0, B - B % BT, tv, B % BT)

    if par:
        for jo in T.parallel(NB // NV):
            column(jo * NV, NV)
    else:
        for jo in range(NB // NV):
            column(jo * NV, NV)
    if NB % NV != 0:
        column(NB - NB % NV, NB % NV)


def default_dense_knobs(batch: int, in_features: int, out_features: int) -> dict:
    """Good knobs for AVX2 (16 ymm registers), measured on a 2-core EPYC.

    Batch 1 is memory bound: 4 lane-blocks x 2 K streams = 8 accumulators and 8 read streams
    (16 accumulators spill). Batch > 1 is FMA bound: a 6x2 register tile (12 accumulators)
    reuses each weight vector 6 times and each broadcast of x twice; it runs at ~90 GFLOP/s,
    faster than OpenBLAS sgemm here.

    ``parallel`` is off: with 2 threads it halves compute-bound or cache-resident cases
    (784x300 batch 1: 12.7 -> 6.9 us; 4096x4096 batch 50: 20 -> 10 ms) but not DRAM-bound ones
    (4096x4096 batch 1), and on a shared 2-core machine the second core is rarely idle. Turn it
    on where cores are free.
    """
    if batch == 1:
        return {"batch_tile": 1, "vectors": 4, "k_streams": 2, "parallel": False}
    return {"batch_tile": 6, "vectors": 2, "k_streams": 1, "parallel": False}


def dense_fc(
    batch: int,
    in_features: int,
    out_features: int,
    *,
    bias: bool,
    activation: str | None,
    lanes: int = 8,
    name: str = "dense_fc",
    **knobs,
) -> tvm.tirx.PrimFunc:
    """Dense FC PrimFunc ``y = act(x @ w [+ b])``.

    Arguments of the PrimFunc, in order: ``x`` (batch, K) f32, ``w`` packed by
    :func:`pack_dense_weight` with the same ``lanes`` — (ceil(N / lanes), K, lanes) f32 —,
    ``b`` (N,) f32 when ``bias``, ``y`` (batch, N) f32.

    Knobs (defaults from :func:`default_dense_knobs`):
      batch_tile: rows of x per register tile;
      vectors: lane-blocks of outputs per register tile (tile width = vectors * lanes);
      k_streams: independent partial sums over K (memory-level and FMA parallelism at batch 1);
      parallel: ``T.parallel`` over output tiles (a thread-pool launch per call).
    """
    check_activation(activation)
    cfg = resolve_knobs(default_dense_knobs(batch, in_features, out_features), knobs, "dense_fc")
    blocks = -(-out_features // lanes)
    streams = max(1, min(cfg["k_streams"], in_features))
    func = _dense_kernel.specialize(
        B=batch,
        K=in_features,
        N=out_features,
        NB=blocks,
        L=lanes,
        BT=min(cfg["batch_tile"], batch),
        NV=min(cfg["vectors"], blocks),
        KS=streams,
        KC=in_features // streams,
        act=activation,
        par=bool(cfg["parallel"]),
        **({} if bias else {"b": None}),
    )
    return func.with_attr("global_symbol", name)
