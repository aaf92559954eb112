"""Tuning workloads: one FC kernel the planner could choose, as meta_schedule sees it.

A `Workload` names a kernel by what decides its speed — form, batch, shape, group width, number
of kept groups, epilogue — never by its weight values. Each has a *canonical* PrimFunc: the plain
computation in one named block (`fc`), which is what the tuning logs key records by (TVM's
structural hash of the module) and what meta_schedule searches for the dense forms. Its function
attribute `scalpel.workload` repeats the key, so a log read back says which kernel each record is.

Grouped-sparse kernels have data-dependent loops that meta_schedule cannot search; their template
knobs (`schedules/`) are searched instead and stored as records whose trace is a single
`annotate(fc, "scalpel.template", <knobs as JSON>)` on the canonical function, so one log holds
every measured candidate in TVM's own format. A record without that annotation is a
meta_schedule schedule, applied by replaying its trace.
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, replace

import numpy as np
import tvm
from tvm import te
from tvm.script import tirx as T

from .cost import KernelQuery
from .schedules.fc import default_dense_knobs, dense_fc
from .schedules.grouped_sparse import (GroupedSparseWeight, default_grouped_sparse_knobs,
                                       grouped_sparse_fc)

FORMS = ("dense", "gsparse_gx1", "gsparse_1xg")
BLOCK = "fc"  # the block of every canonical function that template records annotate
TEMPLATE_KEY = "scalpel.template"
WORKLOAD_ATTR = "scalpel.workload"
_KEY = re.compile(r"fc:(?P<form>\w+):b(?P<batch>\d+):k(?P<k>\d+):n(?P<n>\d+):g(?P<group>\d+)"
                  r":groups(?P<groups>\d+):(?P<bias>bias|nobias):(?P<activation>relu|none)$")


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

    @classmethod
    def from_key(cls, key: str) -> Workload:
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

    @classmethod
    def from_query(cls, query: KernelQuery, lanes: int, *, bias: bool = True,
                   activation: str | None = "relu") -> Workload:
        group = lanes if query.form == "dense" else query.group
        return cls(query.form, query.batch, query.k, query.n, group, query.groups, bias, activation)

    def with_epilogue(self, bias: bool, activation: str | None) -> Workload:
        return replace(self, bias=bias, activation=activation)


def canonical_module(workload: Workload) -> tvm.IRModule:
    """The workload's plain computation, the key its log records are stored under."""
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
    if wl.activation == "relu":
        y = te.compute((wl.batch, wl.n), lambda i, j: te.max(y[i, j], te.const(0, "float32")),
                       name="relu")
    return te.create_prim_func([*args, y])


def _canonical_sparse(wl: Workload) -> tvm.tirx.PrimFunc:
    """The data-dependent loop nest in one opaque block; a key and a reference, never compiled
    for speed."""
    B, K, N, G, NG = wl.batch, wl.k, wl.n, wl.group, wl.groups
    gx1 = wl.form == "gsparse_gx1"
    NB = -(-N // G) if gx1 else N
    relu, bias = wl.activation == "relu", wl.bias

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
                if relu:
                    y[i, o] = T.max(y[i, o], T.float32(0))

    if not bias:  # drop the unused parameter so the signature matches the template's
        params = [p for p in func.params if p.name != "b"]
        func = tvm.tirx.PrimFunc(params, func.body, func.ret_type, attrs=func.attrs)
    return func


def template_kernel(wl: Workload, knobs: dict, name: str = "main") -> tvm.tirx.PrimFunc:
    """The hand-scheduled kernel for `wl` with `knobs` (its parameters match the canonical's)."""
    if wl.form == "dense":
        return dense_fc(wl.batch, wl.k, wl.n, bias=wl.bias, activation=wl.activation,
                        lanes=wl.group, name=name, **knobs)
    return grouped_sparse_fc(_pattern_shell(wl), wl.batch, bias=wl.bias, activation=wl.activation,
                             name=name, **knobs)


def default_knobs(wl: Workload) -> dict:
    if wl.form == "dense":
        return default_dense_knobs(wl.batch, wl.k, wl.n)
    return default_grouped_sparse_knobs(_pattern_shell(wl), wl.batch)


def knob_space(wl: Workload) -> list[dict]:
    """The template settings worth measuring for `wl`, defaults first.

    Kept small (4 to 12 per workload) and bounded by the 16 vector registers of AVX2: a register
    tile larger than that spills, which the benchmark showed is never faster.
    """
    if wl.form == "dense":
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
        if wl.form == "gsparse_gx1":
            grid += [{**g, "batch_outer": True} for g in grid]
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


def measurement_arguments(wl: Workload, seed: int = 0) -> list[np.ndarray]:
    """Arguments to time the workload with: random data and, for sparse forms, a random pattern
    of the right size (the index arrays must be valid, so they cannot be random numbers)."""
    rng = np.random.default_rng(seed)
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
    sch.annotate(sch.get_sblock(BLOCK), TEMPLATE_KEY, json.dumps(knobs, sort_keys=True))
    return sch.trace


def template_knobs(trace) -> dict | None:
    """The knobs of a template record's trace; None for a meta_schedule schedule."""
    for inst in trace.insts:
        if inst.kind.name == "Annotate" and str(inst.attrs[0]) == TEMPLATE_KEY:
            return json.loads(str(inst.inputs[1]))
    return None
