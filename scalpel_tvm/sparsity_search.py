"""Searching the fraction gradual pruning reaches: the largest that keeps the accuracy.

Gradual pruning (`gradual_pruning`) cuts to a fraction the user names, because from a converged
model Scalpel's keep/undo loop stops early. Which fraction keeps the accuracy then had to be
found by hand: the ConvNet's 30%, 40% and 50% of its filters were three runs side by side
(README). Here the tool finds it, as the loop would have: bisection over the fraction, each trial
a whole gradual run from the same trained model, kept when its accuracy ends within the
tolerance of the unpruned model's on both halves of the held-out images: the deciding half, the
loop's own test for a round, and the confirmation half, the loop's test for its end result
(kept rounds it rejects are walked back). Both, because either half alone is a few thousand
images: on the ConvNet a trial at 57.5% of the filters gained 0.20 points on the deciding images
and lost 0.50 on the confirmation ones (and 0.13 on the test set), where the 50% trial held on
both (README).

Why whole runs, not one long ramp stopped where accuracy falls: the cubic ramp's steps depend on
where it ends, and a model part way along a ramp has not had the final steps' retraining nor
the final fine-tuning, so it would be judged worse than the same fraction reached properly.
Trials therefore cost a full run each, and their number is small (`trials`, default 4: the
fraction to a sixteenth of the range). Accuracy against sparsity is noisy, not monotone, so
bisection finds a fraction at the edge — one that held with a failing one above it — not
necessarily the largest that could hold; the report shows every trial. `high` is taken to fail
and is never tried. Every trial is judged on the same held-out images, so the one chosen is a
little flattered by them; the test set, which decides nothing, reports it.

Per layer (`search_layers`, `scalpel prune ... auto --search-per-layer`), in the paper's order:
the layer the cost model prices slowest is searched first, with the layers not reached yet left
whole, so it takes as much of the accuracy's slack as it can hold; then the others are priced
again on the model as pruned so far (a neuron fc1 loses is an input fc2 no longer reads) and the
slowest of them goes next, with the layers before it at their fractions. One fraction for every
layer spends the slack evenly; a layer of a few thousand weights (a first conv, a last hidden
layer) may cost more accuracy per group than the large one that decides the time. The price is
a search per layer: `trials` whole runs for each. A per-layer search may search both kinds at
once (`--sparsity auto --node-sparsity auto`): each layer its own fraction of what the target
prunes it in (a CONV's filters and an FC layer's groups on x86), all in one slowest-first order,
so nothing is left for the user to name.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import asdict, dataclass, field

from .errors import ScalpelError
from .prune_report import trial_line

# what `search_fraction` searches: prune_onnx's keyword, and what the fraction is of
KINDS = {"sparsity": "groups", "node_sparsity": "nodes"}
# searched when no range is given: from nothing to nearly every group (one is always kept), or to
# 90% of the nodes (a layer of 10 keeps one)
DEFAULT_RANGE = {"sparsity": (0.0, 0.97), "node_sparsity": (0.0, 0.9)}


@dataclass
class Trial:
    fraction: float
    held: bool  # accuracy within the tolerance of the unpruned model's, on the deciding and confirmation images
    baseline: float  # the unpruned model's validation accuracy
    accuracy: float  # the pruned model's
    confirmed_baseline: float | None
    confirmed: float | None
    weights_removed: float
    predicted_speedup: float  # by the objective's cost model, dense over pruned
    test: dict | None  # {"dense", "pruned"[, "paired"]}; None where nothing was tested


@dataclass
class Search:
    kind: str  # a key of KINDS
    low: float
    high: float
    tolerance: float
    trials: list[Trial] = field(default_factory=list)
    layer: str | None = None  # in a per-layer search, the layer whose fraction this is

    @property
    def chosen(self) -> Trial | None:
        """The largest fraction that held, or None when none did."""
        return max((t for t in self.trials if t.held), key=lambda t: t.fraction, default=None)

    def next_fraction(self) -> float | None:
        """Halfway between the largest fraction that held (or `low`) and the smallest above it
        that failed (or `high`), to three decimals; None once they are a thousandth apart."""
        held = max((t.fraction for t in self.trials if t.held), default=self.low)
        failed = min((t.fraction for t in self.trials if not t.held and t.fraction > held), default=self.high)
        middle = round((held + failed) / 2, 3)
        return middle if held < middle < failed else None

    def as_dict(self) -> dict:
        chosen = self.chosen
        return {"kind": self.kind, "of": KINDS[self.kind], "range": [self.low, self.high],
                "tolerance": self.tolerance, "trials": [asdict(t) for t in self.trials],
                "chosen": None if chosen is None else chosen.fraction, "layer": self.layer}


@dataclass
class LayerSearch:
    """A per-layer search (`search_layers`): one bisection per layer, in the order they ran,
    each of its layer's kind."""
    kinds: tuple  # the kinds searched, keys of KINDS
    stages: list[Search] = field(default_factory=list)

    @property
    def fractions(self) -> dict:
        """{layer: the largest fraction that held} of the layers where one did; the rest stay whole."""
        return {s.layer: s.chosen.fraction for s in self.stages if s.chosen is not None}

    @property
    def chosen(self) -> dict | None:
        return self.fractions or None

    def as_dict(self) -> dict:
        return {"kinds": list(self.kinds), "of": " or ".join(KINDS[kind] for kind in self.kinds),
                "per_layer": [s.as_dict() for s in self.stages], "chosen": self.chosen}


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def parse_range(text: str) -> tuple[float, float]:
    """'LOW:HIGH' fractions, 0 <= LOW < HIGH < 1."""
    try:
        low, high = (float(part) for part in text.split(":"))
    except ValueError:
        raise ScalpelError(f"a search range is LOW:HIGH, fractions such as 0.8:0.97; got {text!r}") from None
    check_range(low, high)
    return low, high


def parse_ranges(texts: list[str], kinds: list[str]) -> dict:
    """The command line's ranges as {kind: (low, high)} for the searched `kinds`: 'LOW:HIGH' for
    every one of them, or 'groups=LOW:HIGH' / 'nodes=LOW:HIGH' for one; a kind not named keeps
    its DEFAULT_RANGE."""
    ranges = {kind: DEFAULT_RANGE[kind] for kind in kinds}
    by_name = {of: kind for kind, of in KINDS.items()}
    for text in texts or []:
        name, _, span = text.rpartition("=")
        if name and by_name.get(name) not in kinds:
            raise ScalpelError(f"a search range names {name!r}; the fractions searched are of the "
                               f"{' and '.join(KINDS[kind] for kind in kinds)}: give "
                               + " ".join(f"{KINDS[kind]}=LOW:HIGH" for kind in kinds) + ", or LOW:HIGH for all")
        for kind in [by_name[name]] if name else kinds:
            ranges[kind] = parse_range(span)
    return ranges


def check_range(low: float, high: float) -> None:
    if not 0 <= low < high < 1 or high - low < 0.002:  # fractions are searched to a thousandth
        raise ScalpelError(f"a search range needs 0 <= LOW < HIGH < 1, at least 0.002 apart (HIGH is taken as too "
                           f"far and never tried); got {low}:{high}")


def check_search(kind: str, low: float, high: float, trials: int) -> None:
    """What a search needs, checked before anything is trained."""
    if kind not in KINDS:
        raise ScalpelError(f"the fraction searched is one of {', '.join(KINDS)}; got {kind!r}")
    check_range(low, high)
    if trials < 1:
        raise ScalpelError(f"a search needs at least one trial; got {trials}")


def judge(fraction: float, result, test: dict, tolerance: float) -> Trial:
    """A finished gradual run (`pruning.PruneResult`) as a trial: held when its accuracy ended
    within `tolerance` of the unpruned model's on the deciding images and, where there are
    some, on the confirmation images."""
    layers = result.layers.values()
    held = result.final_accuracy >= result.baseline_accuracy - tolerance and (
        result.confirmed_accuracy is None or result.confirmed_accuracy >= result.confirmed_baseline - tolerance)
    return Trial(fraction, bool(held), result.baseline_accuracy, result.final_accuracy, result.confirmed_baseline,
                 result.confirmed_accuracy, result.weights_removed,
                 sum(v["predicted_dense"] for v in layers) / sum(v["predicted"] for v in layers), test)


def search_fraction(run_trial, kind: str, *, low: float, high: float, trials: int, tolerance: float,
                    done: list | None = None, best=None, on_trial=None, progress=None):
    """Bisect `kind`'s fraction in (low, high): `run_trial(fraction)` prunes gradually to it and
    returns (pruned model, PruneResult, test accuracies). Returns (Search, the chosen trial's
    (model, result, test), or None when no trial held); it stops early once the bracket is a
    thousandth wide. A resumed search hands in the trials
    already `done` and the chosen one's outcome as `best`; `on_trial(search, trial, best)` is
    called after every trial (to save them)."""
    check_search(kind, low, high, trials)
    progress = progress or _to_stderr
    search = Search(kind, low, high, tolerance, list(done or []))
    while len(search.trials) < trials and (fraction := search.next_fraction()) is not None:
        progress(f"search {len(search.trials) + 1}/{trials}: pruning gradually to {fraction:.1%} of the {KINDS[kind]}")
        outcome = run_trial(fraction)
        trial = judge(fraction, outcome[1], outcome[2], tolerance)
        search.trials.append(trial)
        if trial is search.chosen:
            best = outcome
        progress(f"search {len(search.trials)}/{trials}, {KINDS[kind]}: {trial_line(asdict(trial)).strip()}")
        if on_trial:
            on_trial(search, trial, best)
    return search, best


def search_layers(run_trial, layers: dict, prices, *, ranges: dict, trials: int, tolerance: float,
                  done: list | None = None, best=None, on_trial=None, progress=None):
    """Bisect each of `layers`' own fraction, slowest first (module doc); `layers` is {layer: the
    kind its fraction is of}, `ranges` {kind: (low, high)}. `run_trial({layer: fraction})` prunes
    gradually with those fractions, every other layer of `layers` whole, and returns (model,
    PruneResult, test); `prices(outcome)` gives {layer: predicted time} of a trial's outcome, or
    of the unpruned model for None. Each layer gets `search_fraction`'s `trials` in its kind's
    range with the layers before it at what they reached (a layer where no trial held stays
    whole). Returns (LayerSearch, the best outcome: that of the last layer where a trial held,
    or None). A resumed search hands in the stages `done` (their
    layers, in order, and trials; the last may be unfinished) and the best outcome so far;
    `on_trial(layer_search, best)` is called after every trial."""
    for kind, (low, high) in ranges.items():
        check_search(kind, low, high, trials)
    progress = progress or _to_stderr
    found = LayerSearch(tuple(ranges))
    saved = list(done or [])
    while len(found.stages) < len(layers):
        searched = {stage.layer for stage in found.stages}
        if saved:
            layer, previous = saved[0].layer, saved.pop(0).trials
        else:
            price = prices(best)
            layer, previous = max((name for name in layers if name not in searched), key=price.get), []
            progress(f"per-layer search: {layer} next, the slowest left ("
                     + ", ".join(f"{name} {price[name]:.3g}" for name in layers if name not in searched) + ")")
        fractions = dict(found.fractions)

        def layer_trial(fraction, layer=layer, fractions=fractions):
            return run_trial({**fractions, layer: fraction})

        def saved_trial(search, _trial, stage_best, layer=layer, stages=list(found.stages), before=best):
            search.layer = layer
            if on_trial:
                on_trial(LayerSearch(found.kinds, stages + [search]), stage_best or before)

        kind = layers[layer]
        stage, stage_best = search_fraction(
            layer_trial, kind, low=ranges[kind][0], high=ranges[kind][1], trials=trials, tolerance=tolerance,
            done=previous, best=best if any(t.held for t in previous) else None, on_trial=saved_trial,
            progress=lambda message, layer=layer: progress(f"{layer}: {message}"))
        stage.layer = layer
        found.stages.append(stage)
        best = stage_best or best
    return found, best


def search_onnx(model, target, data, *, ranges: dict, trials: int = 4, train_epochs: float = 0.0,
                per_layer: bool = False, checkpoint=None, restart: bool = False, progress=None, **options):
    """`pruning.prune_onnx` with a fraction searched, `ranges` {kind: (low, high)} naming which
    (`search_fraction`; with `per_layer` each layer's own, `search_layers`, which may search both
    kinds, each layer in its kind's range): the model is trained once (`train_epochs`, as prune_onnx
    would) and every trial prunes that trained model with the other `options` unchanged. Returns
    (pruned ONNX model or, when no trial held, the trained unpruned one, the chosen trial's
    PruneResult or None, its test accuracies or None, Search or LayerSearch). With `checkpoint`
    the trained model and every finished trial are saved, and the same call resumes after an
    interruption (an unfinished trial from its own checkpoint, `checkpoint`.trial). The
    checkpoint is removed when the search ends."""
    import onnx

    from .prune_checkpoint import Checkpoint, NoCheckpoint, model_digest
    from .pruning import BelowTolerance, prune_onnx, train_onnx

    for kind, (low, high) in ranges.items():
        check_search(kind, low, high, trials)
        if options.get(kind) is not None:
            raise ScalpelError(f"{kind} is the fraction searched: name it, or search it, not both")
    if not ranges or (len(ranges) > 1 and not per_layer):
        raise ScalpelError("search one fraction at a time (groups or nodes), or each layer's own fraction of "
                           "either (per_layer, --search-per-layer)")
    layers = _check_applies(model, target, ranges, options)
    if per_layer:
        named = sorted(set(options.get("layer_sparsity") or {}) & set(layers))
        if named:
            raise ScalpelError(f"a per-layer search finds {', '.join(named)}'s fraction: leave it out of the layer "
                               "sparsities, or search one fraction for every layer")
    tolerance = options.get("tolerance", 0.001)
    settings = {"search": "+".join(ranges), "range": list(ranges.values()), "trials": trials,
                "train_epochs": train_epochs,
                "model": model_digest(model),
                "data": (data.name, len(data.train_x)), "target": getattr(target, "name", target),
                **({"per_layer": True} if per_layer else {}),
                **{key: value for key, value in options.items() if key not in ("keep_checkpoint",)}}
    ck = Checkpoint(checkpoint, settings, restart=restart) if checkpoint else NoCheckpoint()
    progress = progress or _to_stderr
    if ck.resuming:
        progress(f"scalpel prune: resuming the search from {checkpoint} ({len(ck.get('trials', []))} trials done)")
        trained = onnx.load_from_string(ck.get("trained"))
    else:
        trained = model
        if train_epochs:
            trained = train_onnx(model, data, train_epochs, validation=options.get("validation"),
                                 seed=options.get("seed", 0), anneal=options.get("anneal", False),
                                 dropout=options.get("dropout", 0.0))
        ck.save(trained=trained.SerializeToString(), trials=[], stages=[], best=None)
    saved_best = ck.get("best")
    best = None if saved_best is None else (onnx.load_from_string(saved_best[0]), *saved_best[1:])

    def run(**fractions):  # one gradual run from the trained model, the other options as given
        with warnings.catch_warnings():  # a trial below the tolerance is the search's to report
            warnings.simplefilter("ignore", BelowTolerance)
            return prune_onnx(trained, target, data, **{**options, **fractions},
                              checkpoint=f"{checkpoint}.trial" if checkpoint else None, restart=restart)

    def saved(chosen):
        return None if chosen is None else (chosen[0].SerializeToString(), *chosen[1:])

    if per_layer:
        def run_layers(fractions):  # the layers of `layers` not in `fractions` whole
            return run(**{kind: max((f for name, f in fractions.items() if layers[name] == kind), default=0.0)
                          for kind in ranges},
                       layer_sparsity={**(options.get("layer_sparsity") or {}),
                                       **{name: fractions.get(name, 0.0) for name in layers}})

        def save_stages(found, chosen):
            ck.save(stages=[{"layer": stage.layer, "trials": [asdict(t) for t in stage.trials]}
                            for stage in found.stages],
                    trials=[asdict(t) for stage in found.stages for t in stage.trials], best=saved(chosen))

        done = [Search(layers[stage["layer"]], *ranges[layers[stage["layer"]]], tolerance,
                       [Trial(**t) for t in stage["trials"]], stage["layer"]) for stage in ck.get("stages", [])]
        search, best = search_layers(run_layers, layers, _pricer(trained, target, options, layers),
                                     ranges=ranges, trials=trials, tolerance=tolerance, done=done, best=best,
                                     on_trial=save_stages, progress=progress)
    else:
        def save(search, _trial, chosen):
            ck.save(trials=[asdict(t) for t in search.trials], best=saved(chosen))

        (kind, (low, high)), = ranges.items()
        search, best = search_fraction(lambda fraction: run(**{kind: fraction}), kind, low=low, high=high,
                                       trials=trials, tolerance=tolerance,
                                       done=[Trial(**t) for t in ck.get("trials", [])], best=best, on_trial=save,
                                       progress=progress)
    ck.finish()
    if best is None:
        return trained, None, None, search
    return (*best, search)


def _pricer(model, target, options, layers):
    """`search_layers`' prices: each layer's predicted time (by the run's objective) in the
    best outcome so far, or, before one, unpruned."""
    import numpy as np

    from .objectives import ObjectiveCost
    from .pruning import LayerCost, chain_layers
    from .target import TargetSpec

    spec = TargetSpec.preset(target) if isinstance(target, str) else target
    _, chain = chain_layers(model)
    cost = ObjectiveCost(LayerCost(spec, chain), options.get("objective", "latency"))
    shapes = {layer["name"]: layer["w_nk"].shape for layer in chain if "w_nk" in layer}
    unpruned = {name: cost(name, np.ones(shapes[name], dtype="float32"), "dense")[0] for name in layers}

    def prices(outcome):
        if outcome is None:
            return unpruned
        return {name: outcome[1].layers[name]["predicted"] for name in layers}

    return prices


def _check_applies(model, target, ranges, options) -> dict:
    """Refuse, before any training, a search gradual pruning could not run (a fraction of nodes
    where the target prunes in groups, a layer sparsity naming a layer not cut, ...); returns
    {layer: kind} of the layers whose fraction is searched, in the model's order."""
    from .gradual_pruning import gradual_layers, layer_schedules
    from .pruning import chain_layers, pruning_strategy
    from .target import TargetSpec

    spec = TargetSpec.preset(target) if isinstance(target, str) else target
    _, layers = chain_layers(model)
    strategy = pruning_strategy(spec, layers, options.get("method", "scalpel"), options.get("grouping", "aligned"),
                                options.get("orientation"), gradual=True)
    fractions = {"sparsity": options.get("sparsity"), "node_sparsity": options.get("node_sparsity"),
                 **{kind: (low + high) / 2 for kind, (low, high) in ranges.items()}}
    layer_schedules(strategy, fractions["sparsity"], options.get("steps", 10), options.get("layer_sparsity"),
                    fractions["node_sparsity"])
    kind_of = {name: "node_sparsity" if strategy[name].method == "node" else "sparsity"
               for name in gradual_layers(strategy, fractions["sparsity"], fractions["node_sparsity"])}
    return {name: kind for name, kind in kind_of.items() if kind in ranges}
