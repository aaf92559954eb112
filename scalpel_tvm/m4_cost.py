"""The Cortex-M cost model: estimated cycles of an int16 layer in each storage format.

The planner of the Cortex-M path (`choose_format`, `plan_rows`; `scalpel plan --target
cortex-m4`) asks it which format each layer gets. It is a linear model of the work the kernels in
`schedules/cortex_m` do — per stored pair / weight / dense pair step, per output, per kernel call,
per im2col value and row, per pooled value — whose coefficients are fitted (non-negative least
squares) to the cycle ESTIMATES of `scalpel_tvm.cycles` (executed instructions x the M4 timing
table) on random single-layer firmwares: `python python/bench_cortex_m.py calibrate` rewrites
`data/cost_cortex_m.json`. So it inherits what the cycle estimate is, and adds the fit's error,
which the calibration reports on held-out layers.

Each core has its own fit: `cortex-m4` (DSP extension: one SMUAD per pair, QADD) also stands for
the M7 and M55, `cortex-m3` (no DSP: scalar multiplies, saturation in C) also for the M0.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import ScalpelError

DATA = Path(__file__).parent / "data" / "cost_cortex_m.json"
FEATURES = ("dense_steps", "dense_outputs", "pairs_steps", "pairs_outputs", "csr_steps", "csr_outputs",
            "delta_steps", "delta_outputs", "calls", "im2col_values", "im2col_rows", "pool_values",
            "pool_outputs", "layer")
FIT_CORE = {"cortex-m4": "cortex-m4", "cortex-m7": "cortex-m4", "cortex-m55": "cortex-m4",
            "cortex-m3": "cortex-m3", "cortex-m0": "cortex-m3"}
PAIR_FORMATS, SCALAR_FORMATS = ("dense", "gsparse2", "csr", "gsparse2_delta"), ("dense", "csr")
PAIRS = ("gsparse2", "gsparse2_delta")  # the formats that store pairs (16-bit indices, 8-bit steps)
OBJECTIVES = ("latency", "size")


def formats_for(mcpu: str) -> tuple[str, ...]:
    """The storage formats a core can use: pairs need the 2x16-bit SIMD (DSP extension); without
    it groups fall back to G = 1, which is CSR."""
    return PAIR_FORMATS if FIT_CORE.get(mcpu) == "cortex-m4" else SCALAR_FORMATS


def pairs_held(w_nk: np.ndarray) -> int:
    """The pairs the pairs format stores: the fewest pairs of neighbouring inputs holding every
    nonzero weight, aligned or not (`unaligned_groups.cover`)."""
    from .unaligned_groups import cover_count

    return cover_count(w_nk, 2)


def pair_layout(w_nk: np.ndarray) -> tuple[int, int, int]:
    """(pairs the pairs format stores, those starting at an odd input, the zero pairs the 8-bit
    steps format adds to bridge gaps over 255 inputs), from one cover of the weight. An odd start
    makes the SMUAD kernel load its inputs as a halfword-aligned word, one cycle more (Cortex-M4
    TRM 3.3.2), which the fit does not see (its random layers are pruned in aligned pairs), so
    `CortexMCost.cycles` adds it."""
    from .cortex_m import pair_gaps
    from .unaligned_groups import cover

    indptr, starts = cover(w_nk, 2)
    starts = np.minimum(starts, max(w_nk.shape[1] - 2, 0))  # the last one pulled back
    return len(starts), int(np.count_nonzero(starts % 2)), int(pair_gaps(indptr, starts)[1].sum())


def unaligned_pairs(w_nk: np.ndarray) -> int:
    """Stored pairs starting at an odd input (`pair_layout`)."""
    return pair_layout(w_nk)[1]


def features(layer, form: str | None = None, layout: tuple | None = None) -> dict:
    """The work of one layer (an `int16_net` QuantizedLinear or Pool) in `form` (`layout`: its
    `pair_layout`, when the caller has it)."""
    f = dict.fromkeys(FEATURES, 0)
    f["layer"] = 1
    window = layer.window
    if layer.op in ("maxpool", "avgpool"):
        f["pool_outputs"] = layer.out_size
        f["pool_values"] = layer.out_size * window.kh * window.kw
        return f
    n, k = layer.w_nk.shape
    pixels = 1 if window is None else window.oh * window.ow
    if form in PAIRS:
        stored, _, bridges = layout or pair_layout(layer.w_nk)
        steps = stored + (bridges if form == "gsparse2_delta" else 0)
    else:
        steps = n * ((k + 1) // 2) if form == "dense" else int(np.count_nonzero(layer.w_nk))
    prefix = {"dense": "dense", "gsparse2": "pairs", "csr": "csr", "gsparse2_delta": "delta"}[form]
    f[f"{prefix}_steps"] = steps * pixels
    f[f"{prefix}_outputs"] = n * pixels
    f["calls"] = pixels
    if window is not None:
        f["im2col_values"] = pixels * window.column
        f["im2col_rows"] = pixels * window.c * window.kh
    return f


@dataclass
class CortexMCost:
    """Cycles = the fitted coefficients . the layer's features (see module doc)."""

    mcpu: str
    coefficients: dict

    @classmethod
    def for_core(cls, mcpu: str = "cortex-m4") -> "CortexMCost":
        if mcpu not in FIT_CORE:
            raise ScalpelError(f"no Cortex-M cost model for {mcpu!r}; known: {', '.join(FIT_CORE)}")
        fits = _fits()
        core = FIT_CORE[mcpu]
        if core not in fits:
            raise ScalpelError(f"{DATA} has no fit for {core}; run python python/bench_cortex_m.py calibrate")
        return cls(mcpu, fits[core]["coefficients"])

    def cycles(self, layer, form: str | None = None) -> float:
        form = form or getattr(layer, "format", None)
        layout = pair_layout(layer.w_nk) if form in PAIRS else None
        f = features(layer, form, layout)
        unaligned = layout[1] * f["calls"] if layout else 0
        return float(sum(self.coefficients[name] * value for name, value in f.items())) + unaligned

    def candidates(self, layer) -> dict[str, float]:
        """Estimated cycles of the layer in every format the core can use."""
        forms = formats_for(self.mcpu)
        if layer.w_nk.shape[1] < 2:
            forms = tuple(f for f in forms if f not in PAIRS)  # no pairs in a single input
        return {form: self.cycles(layer, form) for form in forms}


@lru_cache(maxsize=1)
def _fits() -> dict:
    try:
        return json.loads(DATA.read_text())["fits"]
    except (OSError, ValueError, KeyError) as err:
        raise ScalpelError(f"cannot read the Cortex-M cost model {DATA}: {err}; run "
                           "python python/bench_cortex_m.py calibrate") from None


def choose_format(layer, mcpu: str = "cortex-m4", objective: str = "latency") -> str:
    """The format with the fewest estimated cycles, ties to the fewest flash bytes
    (`objective="latency"`), or the fewest bytes, ties to the fewest cycles ("size": pairs with
    8-bit steps, 5 bytes a pair where 16-bit indices take 6, for a board whose flash is short)."""
    if objective not in OBJECTIVES:
        raise ScalpelError(f"unknown Cortex-M objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    costs = CortexMCost.for_core(mcpu).candidates(layer)

    def flash_bytes(form):  # builds the form's arrays: only for the forms that need comparing
        return replace(layer, format=form).flash_bytes()

    if objective == "size":
        sizes = {form: flash_bytes(form) for form in costs}
        return min(costs, key=lambda form: (sizes[form], round(costs[form])))
    fewest = min(round(cycles) for cycles in costs.values())
    return min((form for form in costs if round(costs[form]) == fewest), key=flash_bytes)


def plan_rows(net, mcpu: str = "cortex-m4") -> list[dict]:
    """Per layer of an int16 network: every candidate's estimated cycles and the choice."""
    cost = CortexMCost.for_core(mcpu)
    rows = []
    for layer in net.layers:
        if layer.op in ("maxpool", "avgpool"):
            rows.append({"name": layer.name, "op": layer.op, "chosen": "-", "candidates": {"-": cost.cycles(layer)}})
            continue
        candidates = cost.candidates(layer)
        rows.append({"name": layer.name, "op": layer.op, "shape_nk": list(layer.w_nk.shape),
                     "pixels": layer.pixels, "density": float(np.count_nonzero(layer.w_nk) / layer.w_nk.size),
                     "candidates": candidates, "chosen": layer.format, "bytes": layer.flash_bytes()})
    return rows


def plan_table(rows: list[dict], mcpu: str) -> str:
    """`scalpel plan --target cortex-m4`: per layer the estimated cycles of each format."""
    forms = formats_for(mcpu)
    head = f"{'layer':<10}{'op':<9}{'N x K':>10}{'pixels':>7}{'density':>8}" + "".join(
        f"{form + ' kcyc':>20}" for form in forms) + f"{'chosen':>16}{'bytes':>9}"
    lines = [f"Cortex-M plan for {mcpu} (cycle ESTIMATES, thousands; scalpel_tvm/m4_cost.py)", head]
    for row in rows:
        if row["op"] in ("maxpool", "avgpool"):
            lines.append(f"{row['name']:<10}{row['op']:<9}{'':>25}{row['candidates']['-'] / 1e3:>20.1f}")
            continue
        cells = "".join(f"{row['candidates'][f] / 1e3:>20.1f}" if f in row["candidates"] else f"{'-':>20}"
                        for f in forms)
        lines.append(f"{row['name']:<10}{row['op']:<9}{'x'.join(map(str, row['shape_nk'])):>10}{row['pixels']:>7}"
                     f"{row['density']:>8.1%}{cells}{row['chosen']:>16}{row['bytes']:>9}")
    if formats_for(mcpu) == SCALAR_FORMATS:
        lines.append(f"{mcpu} has no 2x16-bit SIMD (no DSP extension): groups fall back to G = 1 (CSR); "
                     "no pairs format")
    return "\n".join(lines)


# --- calibration: fit the coefficients to the cycle estimate ---------------------------------------

def random_layers(rng, count: int) -> list:
    """Random int16 layers the calibration prices: FC and conv layers, each weight in all three
    formats (pair-pruned or unstructured, densities from 2% to dense), and pooling layers."""
    from . import fixed_point as fp
    from .int16_net import Pool, QuantizedLinear

    layers = []
    while len(layers) < count:
        if rng.random() < 0.15:
            c, h = int(rng.integers(1, 33)), int(rng.integers(4, 25))
            k, s = int(rng.integers(2, 4)), int(rng.integers(1, 3))
            window = fp.Window.over(c, h, h, k, k, (s, s), (int(rng.integers(0, k)),) * 4)
            layers.append(Pool(f"pool{len(layers)}", "max" if rng.random() < 0.5 else "avg", window))
            continue
        if rng.random() < 0.5:
            window, k, n = None, int(rng.integers(2, 801)), int(rng.integers(2, 301))
        else:
            c, h, kh = int(rng.integers(1, 33)), int(rng.integers(3, 17)), int(rng.choice([1, 3, 5]))
            kh = min(kh, h)
            window = fp.Window.over(c, h, h, kh, kh, (int(rng.integers(1, 3)),) * 2, (int(rng.integers(0, kh)),) * 4)
            k, n = window.column, int(rng.integers(2, 65))
            if k < 2:
                continue
        density = float(np.exp(rng.uniform(np.log(0.02), 0)))
        w = rng.integers(-3000, 3001, (n, k)).astype(np.int16)
        if rng.random() < 0.5:  # pair-pruned (Scalpel's structure)
            keep = np.repeat(rng.random((n, (k + 1) // 2)) < density, 2, axis=1)[:, :k]
        else:  # unstructured (traditional pruning)
            keep = rng.random((n, k)) < density
        w[~keep] = 0
        w[0, 0] = w[0, 0] or 1  # never pruned to nothing
        for form in PAIR_FORMATS:
            layers.append(QuantizedLinear(f"l{len(layers)}", w, np.zeros(n, np.int32), 12, True, 8, 12, 8,
                                          form, window))
    return layers


def measure_layers(layers, build_dir: Path, mcpu: str = "cortex-m4") -> list[int]:
    """The cycle estimate of each layer alone (`scalpel_layer_step` in firmware/q15_network.c)."""
    from . import cortex_m, cycles
    from .int16_net import QuantizedNet

    net = QuantizedNet(layers, 8, (layers[0].in_size,))
    x_q = np.zeros((1, net.input_size), np.int16)
    elf = cortex_m.build_network(net, x_q, build_dir, mcpu)
    return [cycles.count_cycles(elf, "scalpel_layer_step", index).cycles for index in range(len(layers))]


def fit(rows: list[tuple[dict, int]]) -> dict:
    """Non-negative least squares of cycles on the features, relative error weighted (so small
    layers count as much as large ones)."""
    from scipy.optimize import nnls

    a = np.array([[f[name] for name in FEATURES] for f, _ in rows], np.float64)
    b = np.array([cycles for _, cycles in rows], np.float64)
    coefficients, _ = nnls(a / b[:, None], np.ones_like(b))
    return dict(zip(FEATURES, map(float, coefficients)))


def calibrate(mcpu: str = "cortex-m4", *, firmwares: int = 12, layers_per_firmware: int = 24, seed: int = 0,
              build_dir: Path, progress=None) -> dict:
    """Measure random layers on `mcpu`'s build, fit on 3/4 of the firmwares, and report the
    error on the rest: mean absolute percentage error, and how often the format the model picks
    (among the three a weight was measured in) is the measured-fastest one."""
    rng = np.random.default_rng(seed)
    measured = []  # (firmware, layer, cycles)
    for index in range(firmwares):
        layers = random_layers(rng, layers_per_firmware)
        for layer, cycles in zip(layers, measure_layers(layers, Path(build_dir) / f"fw{index}", mcpu)):
            measured.append((index, layer, cycles))
        if progress:
            progress(index + 1, firmwares)
    held_out = {index for index in range(firmwares) if index % 4 == 3}
    train = [(features(layer, layer.format), cycles) for index, layer, cycles in measured if index not in held_out]
    coefficients = fit(train)
    model = CortexMCost(mcpu, coefficients)
    test = [(layer, cycles) for index, layer, cycles in measured if index in held_out]
    errors = [abs(model.cycles(layer) - cycles) / cycles for layer, cycles in test]
    triples = {}
    for layer, cycles in test:
        if layer.op in ("fc", "conv"):
            triples.setdefault(id(layer.w_nk), {})[layer.format] = (model.cycles(layer), cycles)
    decisions = [min(t, key=lambda f: t[f][0]) == min(t, key=lambda f: t[f][1]) for t in triples.values() if len(t) == len(PAIR_FORMATS)]
    regret = [t[min(t, key=lambda f: t[f][0])][1] / min(c for _, c in t.values()) for t in triples.values() if len(t) == len(PAIR_FORMATS)]
    return {"coefficients": coefficients, "samples": len(train), "held_out": len(test),
            "held_out_mape": float(np.mean(errors)), "held_out_worst": float(np.max(errors)),
            "decision_accuracy": float(np.mean(decisions)), "worst_choice_vs_best": float(np.max(regret))}
