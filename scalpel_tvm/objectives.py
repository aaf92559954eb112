"""What the pruning frontend minimises: latency (the target's cost model), energy, or model size.

Energy follows Han et al. (2015, table 1, Horowitz's 45 nm figures): each multiply-accumulate
costs a multiply and an add (32-bit float: 3.7 + 0.9 pJ; on a Cortex-M, int16 in 32-bit integer
units: 3.1 + 0.1 pJ), and each 32-bit word moved costs 5 pJ from on-chip SRAM or 640 pJ from
DRAM. Weights and indices come from DRAM on CPUs and GPUs (Han et al.'s setting: a model
streamed once per inference) and from on-chip flash or SRAM on a Cortex-M; activations (a layer's
input and output) from SRAM. Size is the bytes a layer's form stores: values, indices, row
pointers. Both are counted per inference of one input for the form a layer is stored in, so a
pruned layer's form is chosen by the objective as well (`ObjectiveCost`).
"""
from __future__ import annotations

import numpy as np

from .errors import ScalpelError

OBJECTIVES = ("latency", "energy", "size")
PJ = {"float_mac": 3.7 + 0.9, "int_mac": 3.1 + 0.1, "sram_word": 5.0, "dram_word": 640.0}


def form_counts(w_nk: np.ndarray, form: str, *, group: int, pixels: int, value_bytes: int,
                index_bytes: int) -> dict:
    """MACs and stored bytes of a layer (weight `w_nk` [N, K]) in `form`."""
    from .pruning import groups_alive, nodes_alive
    from .unaligned_groups import cover_count

    n = w_nk.shape[0]
    if form == "dense":  # node-shrunk: dead rows and all-zero input columns are gone
        kept_k = int(np.count_nonzero(np.any(w_nk != 0, axis=0)))
        values = nodes_alive(w_nk) * kept_k
        return {"macs": values * pixels, "bytes": values * value_bytes}
    if form == "csr":
        nnz = int(np.count_nonzero(w_nk))
        return {"macs": nnz * pixels, "bytes": nnz * (value_bytes + index_bytes) + 4 * (n + 1)}
    if form == "gsparse2":
        pairs = cover_count(w_nk, 2)
        return {"macs": 2 * pairs * pixels, "bytes": pairs * (2 * value_bytes + index_bytes) + 4 * (n + 1)}
    if form == "gsparse2_delta":  # one byte a pair for its step, and the zero pairs bridging gaps
        from .m4_cost import pair_layout

        pairs, _, bridges = pair_layout(w_nk)
        return {"macs": 2 * (pairs + bridges) * pixels, "bytes": (pairs + bridges) * (2 * value_bytes + 1) + 4 * (n + 1)}
    if form in ("gsparse_gx1", "gsparse_1xg"):
        orientation = form.split("_")[1]
        groups = groups_alive(w_nk, group, orientation)
        blocks = -(-n // group) if orientation == "gx1" else n
        return {"macs": groups * group * pixels, "bytes": groups * (group * value_bytes + index_bytes) + 4 * (blocks + 1)}
    raise ScalpelError(f"no size or energy model for the form {form!r}")


class ObjectiveCost:
    """The `pruning.LayerCost` interface — `(value, form)` of a layer's weight — for an objective:
    latency asks the cost model; energy and size count the layer's form (see module doc) and
    choose, among the forms the target has, the one with the smallest value."""

    def __init__(self, latency, objective: str = "latency"):
        if objective not in OBJECTIVES:
            raise ScalpelError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
        self.latency, self.objective = latency, objective
        low = latency.spec.parallelism == "low"
        self.value_bytes = self.index_bytes = 2 if low else 4
        self.mac_pj = PJ["int_mac"] if low else PJ["float_mac"]
        self.weight_pj = PJ["sram_word"] if low else PJ["dram_word"]
        self.unit = {"latency": latency.unit, "energy": "pJ", "size": "bytes"}[objective]

    def measures(self, name: str, w_nk: np.ndarray, form: str, times: dict | None = None) -> dict:
        """Latency, energy and size of layer `name` in `form` (`times`: its `LayerCost.times`, when
        the caller has them)."""
        layer = self.latency.layers[name]
        window = layer["window"]
        pixels = layer.get("tokens", 1) if window is None else window.oh * window.ow
        group = self.latency.spec.lanes("float32") if self.value_bytes == 4 else 2
        counts = form_counts(w_nk, form, group=group, pixels=pixels, value_bytes=self.value_bytes,
                             index_bytes=self.index_bytes)
        n, k = w_nk.shape
        activations = (k * pixels if window is None else window.in_size) + n * pixels
        energy = (counts["macs"] * self.mac_pj + counts["bytes"] / 4 * self.weight_pj
                  + activations * self.value_bytes / 4 * PJ["sram_word"])
        latency = (times or self.latency.times(name, w_nk))[form]
        return {"latency": latency, "energy": energy, "size": counts["bytes"]}

    def __call__(self, name: str, w_nk: np.ndarray, form: str | None = None) -> tuple[float, str]:
        if self.objective == "latency":
            return self.latency(name, w_nk, form)
        times = self.latency.times(name, w_nk)
        if form not in times:
            form = min(self.latency.compiled_forms(times), key=lambda f: self.measures(name, w_nk, f, times)[self.objective])
        return self.measures(name, w_nk, form, times)[self.objective], form
