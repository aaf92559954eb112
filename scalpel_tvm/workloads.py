"""Tuning workloads: one kernel the planner could choose, as meta_schedule sees it.

A `Workload` (FC) or `ConvWorkload` names a kernel by what decides its speed — form, batch,
shape, group width, number of kept groups, conv geometry, epilogue — never by its weight values.
Each has a *canonical* PrimFunc: the plain computation with one named block (`fc` / `conv`),
which is what the tuning logs key records by (TVM's structural hash of the module) and what
meta_schedule searches for the dense FC forms and convs. Its function attribute `scalpel.workload` repeats
the key, so a log read back says which kernel each record is.

Grouped-sparse kernels have data-dependent loops that meta_schedule cannot search; their template
knobs (`schedules/`) are searched instead and stored as records whose trace is a single
`annotate(block, "scalpel.template", <knobs as JSON>)` on the canonical function (the conv
template's knobs too), so one log holds
every measured candidate in TVM's own format. A record without that annotation is a
meta_schedule schedule, applied by replaying its trace.
"""
from __future__ import annotations

import functools
import itertools
import json
import re
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te
from tvm.script import tirx as T

from .cost import KernelQuery
from .schedules.conv2d import (conv2d_nchw, conv2d_output_shape, default_conv2d_knobs,
                               pack_conv_weight)
from .schedules.fc import default_dense_knobs, dense_fc, epilogue
from .schedules.grouped_sparse import (GroupedSparseWeight, default_grouped_sparse_knobs,
                                       grouped_sparse_fc)

FORMS = ("dense", "gsparse_gx1", "gsparse_1xg")
BLOCK = "fc"  # the block of every canonical FC function that template records annotate
CONV_BLOCK = "conv"
TEMPLATE_KEY = "scalpel.template"
WORKLOAD_ATTR = "scalpel.workload"
_CONV_KEY = re.compile(r"conv:b(?P<batch>\d+):c(?P<c>\d+):h(?P<h>\d+):w(?P<w>\d+):o(?P<o>\d+)"
                       r":k(?P<kernel>\d+x\d+):s(?P<strides>\d+x\d+):p(?P<padding>\d+x\d+x\d+x\d+)"
                       r":d(?P<dilation>\d+x\d+):g(?P<lanes>\d+):(?P<bias>bias|nobias)"
                       r":(?P<activation>relu|none)$")
_KEY = re.compile(r"fc:(?P<form>\w+):b(?P<batch>\d+):k(?P<k>\d+):n(?P<n>\d+):g(?P<group>\d+)"
                  r":groups(?P<groups>\d+):(?P<bias>bias|nobias):(?P<activation>relu|gelu_tanh|gelu|none)$")


@dataclass(frozen=True)
class Workload:
    """An FC kernel: `y = act(x @ w [+ b])`, x [batch, k], w [k, n].

    `group` is G for the grouped-sparse forms and the lane width the dense weight is packed to
    for the dense form; `groups` counts the kept groups (sparse forms only).
    """

    form: str
    batch: int
    k: int
    n: int
    group: int
    groups: int = 0
    bias: bool = True
    activation: str | None = "relu"

    block = BLOCK  # a class attribute, not a field

    def __post_init__(self):
        if self.form not in FORMS:
            raise ValueError(f"unknown form {self.form!r}; known: {FORMS}")
        if self.form == "dense" and self.groups:
            raise ValueError("a dense workload has no groups")
        if self.form != "dense" and not 0 < self.groups <= self.max_groups:
            raise ValueError(f"{self.form} {self.k}x{self.n} G={self.group} keeps 1..{self.max_groups} "
                             f"groups, got {self.groups}")

    @property
    def key(self) -> str:
        return (f"fc:{self.form}:b{self.batch}:k{self.k}:n{self.n}:g{self.group}:groups{self.groups}:"
                f"{'bias' if self.bias else 'nobias'}:{self.activation or 'none'}")

    @property
    def label(self) -> str:
        return f"{self.form} b{self.batch} {self.k}x{self.n}"

    @classmethod
    def from_key(cls, key: str) -> Workload | ConvWorkload:
        if key.startswith("conv:"):
            return ConvWorkload.from_key(key)
        match = _KEY.match(key)
        if not match:
            raise ValueError(f"not a scalpel workload key: {key!r}")
        f = match.groupdict()
        return cls(f["form"], int(f["batch"]), int(f["k"]), int(f["n"]), int(f["group"]),
                   int(f["groups"]), f["bias"] == "bias",
                   None if f["activation"] == "none" else f["activation"])

    @property
    def max_groups(self) -> int:
        """Aligned groups in the full weight (blocks x positions)."""
        if self.form == "gsparse_gx1":
            return -(-self.n // self.group) * self.k
        return -(-self.k // self.group) * self.n

    @property
    def density(self) -> float:
        return 1.0 if self.form == "dense" else self.groups / self.max_groups

    @property
    def query(self) -> KernelQuery:
        """The planner's view of this kernel (it prices forms, not epilogues)."""
        if self.form == "dense":
            return KernelQuery("fc", "dense", self.batch, self.k, self.n)
        return KernelQuery("fc", self.form, self.batch, self.k, self.n, group=self.group,
                           groups=self.groups)


@dataclass(frozen=True)
class ConvWorkload:
    """An NCHW conv2d kernel (dense, or node-shrunk: the same at fewer channels), `act(conv(x, w)
    [+ b])`; `lanes` is the vector width its template packs the weight to. Conv layers have one
    form on CPUs; the template's knobs and meta_schedule's search (over the OIHW weight) are
    tuned."""

    batch: int
    channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    lanes: int = 8
    bias: bool = True
    activation: str | None = "relu"

    form = "dense"
    block = CONV_BLOCK

    @property
    def label(self) -> str:
        return (f"conv b{self.batch} {self.channels}x{self.height}x{self.width}"
                f"->{self.out_channels} {self.kernel[0]}x{self.kernel[1]}")

    @property
    def key(self) -> str:
        def dims(values):
            return "x".join(str(v) for v in values)

        return (f"conv:b{self.batch}:c{self.channels}:h{self.height}:w{self.width}:"
                f"o{self.out_channels}:k{dims(self.kernel)}:s{dims(self.strides)}:"
                f"p{dims(self.padding)}:d{dims(self.dilation)}:g{self.lanes}:"
                f"{'bias' if self.bias else 'nobias'}:{self.activation or 'none'}")

    @classmethod
    def from_key(cls, key: str) -> ConvWorkload:
        match = _CONV_KEY.match(key)
        if not match:
            raise ValueError(f"not a scalpel workload key: {key!r}")
        f = match.groupdict()

        def dims(text):
            return tuple(int(v) for v in text.split("x"))

        return cls(int(f["batch"]), int(f["c"]), int(f["h"]), int(f["w"]), int(f["o"]),
                   dims(f["kernel"]), dims(f["strides"]), dims(f["padding"]), dims(f["dilation"]),
                   int(f["lanes"]), f["bias"] == "bias",
                   None if f["activation"] == "none" else f["activation"])

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return conv2d_output_shape(self.batch, self.channels, self.height, self.width,
                                   self.out_channels, self.kernel, strides=self.strides,
                                   padding=self.padding, dilation=self.dilation)

    @property
    def query(self) -> KernelQuery:
        _, _, out_h, out_w = self.output_shape
        return KernelQuery("conv", "dense", self.batch, self.channels * self.kernel[0] * self.kernel[1],
                           self.out_channels, pixels=out_h * out_w)

    @property
    def geometry(self) -> dict:
        return dict(strides=self.strides, padding=self.padding, dilation=self.dilation)


@functools.lru_cache(maxsize=512)
def canonical_module(workload: Workload | ConvWorkload) -> tvm.IRModule:
    """The workload's plain computation, the key its log records are stored under (cached:
    tuning asks for it per record, and the sparse ones are parsed from TVMScript)."""
    if isinstance(workload, ConvWorkload):
        make = _canonical_conv
    else:
        make = _canonical_dense if workload.form == "dense" else _canonical_sparse
    prim = make(workload).with_attr(WORKLOAD_ATTR, workload.key)
    return tvm.IRModule({"main": prim.with_attr("global_symbol", "main")})


def workload_of(module: tvm.IRModule) -> Workload | None:
    """The workload a logged module stands for, or None for one scalpel-tvm did not write."""
    attrs = module["main"].attrs if "main" in [gv.name_hint for gv in module.get_global_vars()] else None
    key = attrs.get(WORKLOAD_ATTR) if attrs is not None else None
    return Workload.from_key(str(key)) if key is not None else None


def _canonical_dense(wl: Workload) -> tvm.tirx.PrimFunc:
    """te compute over the packed weight layout the template takes, so a meta_schedule schedule
    and a template record are interchangeable for the same constant argument."""
    lanes, blocks = wl.group, -(-wl.n // wl.group)
    x = te.placeholder((wl.batch, wl.k), "float32", name="x")
    w = te.placeholder((blocks, wl.k, lanes), "float32", name="w")
    r = te.reduce_axis((0, wl.k), "r")
    y = te.compute((wl.batch, wl.n), lambda i, j: te.sum(x[i, r] * w[j // lanes, r, j % lanes], axis=r),
                   name=BLOCK)
    args = [x, w]
    if wl.bias:
        b = te.placeholder((wl.n,), "float32", name="b")
        y = te.compute((wl.batch, wl.n), lambda i, j: y[i, j] + b[j], name="bias")
        args.append(b)
    if wl.activation is not None:  # the templates' own epilogue: the same arithmetic
        y = te.compute((wl.batch, wl.n), lambda i, j: epilogue(y[i, j], None, j, wl.activation),
                       name=wl.activation)
    return te.create_prim_func([*args, y])


def _canonical_conv(wl: ConvWorkload) -> tvm.tirx.PrimFunc:
    """te conv2d over the OIHW weight (the template packs it per its `oc_block` knob)."""
    _, _, out_h, out_w = wl.output_shape
    (kh, kw), (sh, sw), (dh, dw) = wl.kernel, wl.strides, wl.dilation
    pad_t, pad_l, pad_b, pad_r = wl.padding
    x = te.placeholder((wl.batch, wl.channels, wl.height, wl.width), "float32", name="x")
    w = te.placeholder((wl.out_channels, wl.channels, kh, kw), "float32", name="w")
    padded = te.compute(
        (wl.batch, wl.channels, wl.height + pad_t + pad_b, wl.width + pad_l + pad_r),
        lambda n, c, i, j: te.if_then_else(
            tvm.tirx.all(i >= pad_t, i < wl.height + pad_t, j >= pad_l, j < wl.width + pad_l),
            x[n, c, i - pad_t, j - pad_l], te.const(0, "float32")), name="pad")
    rc, rh, rw = (te.reduce_axis((0, wl.channels), "rc"), te.reduce_axis((0, kh), "rh"),
                  te.reduce_axis((0, kw), "rw"))
    y = te.compute((wl.batch, wl.out_channels, out_h, out_w), lambda n, o, i, j: te.sum(
        padded[n, rc, i * sh + rh * dh, j * sw + rw * dw] * w[o, rc, rh, rw], axis=[rc, rh, rw]),
        name=CONV_BLOCK)
    args = [x, w]
    if wl.bias:
        b = te.placeholder((wl.out_channels,), "float32", name="b")
        y = te.compute(y.shape, lambda n, o, i, j: y[n, o, i, j] + b[o], name="bias")
        args.append(b)
    if wl.activation == "relu":
        y = te.compute(y.shape, lambda *i: te.max(y(*i), te.const(0, "float32")), name="relu")
    return te.create_prim_func([*args, y])


def _canonical_sparse(wl: Workload) -> tvm.tirx.PrimFunc:
    """The data-dependent loop nest in one opaque block; a key and a reference, never compiled
    for speed."""
    B, K, N, G, NG = wl.batch, wl.k, wl.n, wl.group, wl.groups
    gx1 = wl.form == "gsparse_gx1"
    NB = -(-N // G) if gx1 else N
    bias, activation = wl.bias, wl.activation

    @T.prim_func(s_tir=True)
    def func(x: T.Buffer((B, K), "float32"), indptr: T.Buffer((NB + 1,), "int32"),
             indices: T.Buffer((NG,), "int32"), values: T.Buffer((NG, G), "float32"),
             b: T.Buffer((N,), "float32"), y: T.Buffer((B, N), "float32")):
        with T.sblock(BLOCK):
            for i, o in T.grid(B, N):
                y[i, o] = T.float32(0)
                if gx1:
                    for j in range(indptr[o // G], indptr[o // G + 1]):
                        y[i, o] = y[i, o] + x[i, indices[j]] * values[j, o % G]
                else:
                    for j, l in T.grid(indptr[o + 1] - indptr[o], G):
                        if indices[indptr[o] + j] + l < K:
                            y[i, o] = y[i, o] + x[i, indices[indptr[o] + j] + l] * values[indptr[o] + j, l]
                if bias:
                    y[i, o] = y[i, o] + b[o]
                if activation is not None:
                    y[i, o] = epilogue(y[i, o], None, o, activation)

    if not bias:  # drop the unused parameter so the signature matches the template's
        params = [p for p in func.params if p.name != "b"]
        func = tvm.tirx.PrimFunc(params, func.body, func.ret_type, attrs=func.attrs)
    return func


def template_kernel(wl: Workload | ConvWorkload, knobs: dict, name: str = "main") -> tvm.tirx.PrimFunc:
    """The hand-scheduled kernel for `wl` with `knobs` (its parameters match the canonical's,
    but for a conv, whose weight comes packed by `pack_conv_weight` with the same knobs)."""
    if isinstance(wl, ConvWorkload):
        return conv2d_nchw(wl.batch, wl.channels, wl.height, wl.width, wl.out_channels, wl.kernel,
                           **wl.geometry, bias=wl.bias, activation=wl.activation, lanes=wl.lanes,
                           name=name, **knobs)
    if wl.form == "dense":
        return dense_fc(wl.batch, wl.k, wl.n, bias=wl.bias, activation=wl.activation,
                        lanes=wl.group, name=name, **knobs)
    return grouped_sparse_fc(_pattern_shell(wl), wl.batch, bias=wl.bias, activation=wl.activation,
                             name=name, **knobs)


def default_knobs(wl: Workload | ConvWorkload) -> dict:
    if isinstance(wl, ConvWorkload):
        return default_conv2d_knobs(wl.out_channels, wl.output_shape[3], wl.lanes)
    if wl.form == "dense":
        return default_dense_knobs(wl.batch, wl.k, wl.n)
    return default_grouped_sparse_knobs(_pattern_shell(wl), wl.batch)


def knob_space(wl: Workload) -> list[dict]:
    """The template settings worth measuring for `wl`, defaults first.

    Kept small (4 to 12 per workload) and bounded by the 16 vector registers of AVX2: a register
    tile larger than that spills, which the benchmark showed is never faster.
    """
    if isinstance(wl, ConvWorkload):
        out_w, lanes = wl.output_shape[3], wl.lanes
        blocks = [b for b in (lanes, 2 * lanes, 3 * lanes) if b <= -(-wl.out_channels // lanes) * lanes]
        grid = [{"oc_block": b, "ow_tile": t, "unroll": u}
                for b in blocks for u in (True, False)
                for t in sorted({min(out_w, max(1, 8 * lanes // b // 2)), min(out_w, 8 * lanes // b)})]
    elif wl.form == "dense":
        if wl.batch == 1:
            grid = [{"batch_tile": 1, "vectors": v, "k_streams": s}
                    for v, s in itertools.product((1, 2, 4, 8), (1, 2, 4)) if 2 <= v * s <= 12]
        else:
            grid = [{"batch_tile": t, "vectors": v, "k_streams": 1}
                    for t, v in itertools.product((2, 4, 6, 8), (1, 2, 3)) if 4 <= t * v <= 14]
    elif wl.batch == 1:
        grid = [{"batch_tile": 1, "streams": s} for s in (1, 2, 4, 8)]
    else:
        grid = [{"batch_tile": t, "streams": 1} for t in (4, 8, 10, 16)]
        grid += [{**g, "batch_outer": outer} for g in grid for outer in (True, False)]
        if wl.form == "gsparse_gx1":
            if wl.batch >= wl.group:
                grid += [{"batch_lanes": True, "batch_tile": t * wl.group, "tile_outputs": o}
                         for t, o in itertools.product((1, 2, 3), (4, wl.group))]
    defaults = default_knobs(wl)
    settings = [defaults] + [{**defaults, **g} for g in grid]
    unique = {json.dumps(s, sort_keys=True): s for s in settings}
    return list(unique.values())


def _pattern_shell(wl: Workload, rng: np.random.Generator | None = None) -> GroupedSparseWeight:
    """A grouped-sparse weight with `wl.groups` groups spread evenly over the blocks (random
    positions when `rng` is given); the templates depend on the pattern only through its size."""
    orientation = wl.form.split("_")[1]
    blocks = -(-wl.n // wl.group) if orientation == "gx1" else wl.n
    positions = wl.k if orientation == "gx1" else -(-wl.k // wl.group)
    per_block = np.full(blocks, wl.groups // blocks)
    per_block[: wl.groups % blocks] += 1
    rng = rng or np.random.default_rng(0)
    indices = [np.sort(rng.choice(positions, size=count, replace=False)) for count in per_block]
    indices = np.concatenate(indices).astype("int32")
    if orientation == "1xg":
        indices = indices * wl.group
    values = rng.standard_normal((wl.groups, wl.group)).astype("float32")
    if orientation == "1xg" and wl.k % wl.group:  # the last group of a row overhangs K
        values[indices + wl.group > wl.k, wl.k % wl.group:] = 0
    if orientation == "gx1" and wl.n % wl.group:
        last = np.repeat(np.arange(blocks), per_block) == blocks - 1
        values[np.ix_(last, np.arange(wl.n % wl.group, wl.group))] = 0
    indptr = np.concatenate([[0], np.cumsum(per_block)]).astype("int32")
    return GroupedSparseWeight(orientation, wl.group, (wl.k, wl.n), indptr, indices, values)


def measurement_arguments(wl: Workload | ConvWorkload, knobs: dict | None = None,
                          seed: int = 0) -> list[np.ndarray]:
    """Arguments to time the template with: random data and, for sparse forms, a random pattern
    of the right size (the index arrays must be valid, so they cannot be random numbers); a
    conv's weight comes packed for `knobs`."""
    rng = np.random.default_rng(seed)
    if isinstance(wl, ConvWorkload):
        kh, kw = wl.kernel
        x = rng.standard_normal((wl.batch, wl.channels, wl.height, wl.width)).astype("float32")
        w = rng.standard_normal((wl.out_channels, wl.channels, kh, kw)).astype("float32")
        bias = [rng.standard_normal(wl.out_channels).astype("float32")] if wl.bias else []
        return [x, pack_conv_weight(w, wl.lanes, **(knobs or {})), *bias,
                np.zeros(wl.output_shape, "float32")]
    x = rng.standard_normal((wl.batch, wl.k)).astype("float32")
    if wl.form == "dense":
        constants = [rng.standard_normal((-(-wl.n // wl.group), wl.k, wl.group)).astype("float32")]
    else:
        pattern = _pattern_shell(wl, rng)
        constants = [pattern.indptr, pattern.indices, pattern.values]
    bias = [rng.standard_normal(wl.n).astype("float32")] if wl.bias else []
    return [x, *constants, *bias, np.zeros((wl.batch, wl.n), "float32")]


def template_record_trace(wl: Workload, knobs: dict) -> "tvm.s_tir.Trace":
    """The trace a template record stores: the knobs annotated on the canonical block."""
    from tvm import s_tir

    sch = s_tir.Schedule(canonical_module(wl))
    sch.annotate(sch.get_sblock(wl.block), TEMPLATE_KEY, json.dumps(knobs, sort_keys=True))
    return sch.trace


def template_knobs(trace) -> dict | None:
    """The knobs of a template record's trace; None for a meta_schedule schedule."""
    for inst in trace.insts:
        if inst.kind.name == "Annotate" and str(inst.attrs[0]) == TEMPLATE_KEY:
            return json.loads(str(inst.inputs[1]))
    return None
