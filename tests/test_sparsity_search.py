"""Searching the gradual fraction (`sparsity_search`): the bisection on stand-in trials (what it
tries, what it picks, every outcome pattern), resuming an interrupted search, the refusals, and
the whole path through `scalpel prune --sparsity auto`."""
import json
import re
import warnings
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalpel_tvm import ScalpelError, datasets, paper_nets, prune_report, pruning, sparsity_search
from scalpel_tvm.cli import main
from scalpel_tvm.int16_net import read_chain
from scalpel_tvm.sparsity_search import Search, search_fraction, search_onnx


def outcome(fraction, loss):
    """What `prune_onnx` returns, as far as a search reads it: validation accuracy `loss` below
    the unpruned model's, weights removed and a predicted speedup growing with the fraction."""
    result = SimpleNamespace(baseline_accuracy=0.98, final_accuracy=0.98 - loss, confirmed_baseline=0.97,
                             confirmed_accuracy=0.97 - loss, weights_removed=fraction,
                             layers={"fc1": {"predicted_dense": 1.0, "predicted": 1.0 - 0.9 * fraction}})
    return f"model at {fraction}", result, {"dense": 0.98, "pruned": 0.98 - loss}


@settings(max_examples=150, deadline=None)
@given(st.floats(0.0, 0.5), st.floats(0.1, 0.49), st.floats(0.0, 1.0), st.integers(1, 7))
def test_on_a_clean_edge_bisection_picks_the_largest_holding_fraction_to_its_resolution(low, width, where, trials):
    high = low + width
    edge = low + where * width  # fractions up to the edge hold, those above lose accuracy
    tried = []

    def run_trial(fraction):
        tried.append(fraction)
        return outcome(fraction, 0.0 if fraction <= edge else 0.05)

    search, best = search_fraction(run_trial, "sparsity", low=low, high=high, trials=trials, tolerance=0.001,
                                   progress=lambda _: None)
    assert len(tried) == len(set(tried)) and all(low < f < high for f in tried)
    assert len(tried) == trials or search.next_fraction() is None  # stopped early only at a thousandth
    resolution = width / 2 ** trials + 0.002  # fractions are rounded to three decimals
    if search.chosen is None:
        assert best is None and edge < low + resolution
    else:
        assert search.chosen.fraction <= edge < search.chosen.fraction + resolution
        assert best[0] == f"model at {search.chosen.fraction}"
        assert search.chosen.predicted_speedup == pytest.approx(1 / (1 - 0.9 * search.chosen.fraction))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=7))
def test_with_noisy_outcomes_no_fraction_above_a_failed_one_is_tried_and_the_largest_held_is_chosen(holds):
    """Accuracy against sparsity is not monotone: whatever each trial gives, the search never
    tries above a fraction that failed nor below one that held, and it picks the largest held."""
    answers = iter(holds)
    search, best = search_fraction(lambda f: outcome(f, 0.0 if next(answers) else 0.01), "node_sparsity", low=0.0,
                                   high=0.9, trials=len(holds), tolerance=0.001, progress=lambda _: None)
    for i, trial in enumerate(search.trials):
        before = search.trials[:i]
        assert all(trial.fraction > t.fraction for t in before if t.held)
        assert all(trial.fraction < t.fraction for t in before if not t.held)
    held = [t.fraction for t in search.trials if t.held]
    assert (search.chosen.fraction if search.chosen else None) == (max(held) if held else None)
    assert (best is None) == (not held)
    assert search.as_dict()["chosen"] == (max(held) if held else None)


def test_a_trial_holds_within_the_tolerance_on_both_halves_of_the_held_out_images():
    trial = sparsity_search.judge(0.5, outcome(0.5, 0.001)[1], {}, tolerance=0.001)
    assert trial.held and trial.weights_removed == 0.5 and trial.predicted_speedup == pytest.approx(1 / 0.55)
    assert not sparsity_search.judge(0.5, outcome(0.5, 0.0011)[1], {}, tolerance=0.001).held
    flattered = outcome(0.5, 0.0)[1]
    flattered.confirmed_accuracy = flattered.confirmed_baseline - 0.005  # the deciding images alone would keep it
    assert not sparsity_search.judge(0.5, flattered, {}, tolerance=0.001).held
    flattered.confirmed_accuracy = None  # a user's module with no confirm(): the deciding images decide
    assert sparsity_search.judge(0.5, flattered, {}, tolerance=0.001).held


def test_bad_ranges_kinds_and_trial_counts_are_clear_errors():
    assert sparsity_search.parse_range("0.8:0.97") == (0.8, 0.97)
    for text in ("0.8", "a:b", "0.9:0.8", "0:1", "-0.1:0.5", "0.5:0.501"):
        with pytest.raises(ScalpelError, match="search range"):
            sparsity_search.parse_range(text)
    with pytest.raises(ScalpelError, match="one of sparsity, node_sparsity"):
        search_fraction(lambda f: None, "groups", low=0, high=0.9, trials=2, tolerance=0.001)
    with pytest.raises(ScalpelError, match="at least one trial"):
        search_fraction(lambda f: None, "sparsity", low=0, high=0.9, trials=0, tolerance=0.001)
    assert Search("sparsity", 0.2, 0.8, 0.001).next_fraction() == 0.5


def test_a_search_gradual_pruning_cannot_run_is_refused_before_any_training():
    data = datasets.load("mnist", limit=500)
    lenet5 = paper_nets.network("lenet5")
    with pytest.raises(ScalpelError, match="found no node-pruned layer"):  # a Cortex-M prunes groups only
        search_onnx(lenet5, "cortex-m4", data, ranges={"node_sparsity": (0.0, 0.9)}, train_epochs=100)
    with pytest.raises(ScalpelError, match="fc1 is pruned in groups: give --sparsity for them too"):
        search_onnx(lenet5, "x86-avx2", data, ranges={"node_sparsity": (0.0, 0.9)}, train_epochs=100)
    with pytest.raises(ScalpelError, match="name it, or search it, not both"):
        search_onnx(lenet5, "x86-avx2", data, ranges={"sparsity": (0.0, 0.9)}, sparsity=0.5)
    with pytest.raises(ScalpelError, match="this model is not one"):
        search_onnx(onnx.ModelProto(), "x86-avx2", data, ranges={"sparsity": (0.0, 0.9)})
    with pytest.raises(ScalpelError, match="at least one trial"):  # train_epochs=100 would take minutes
        search_onnx(lenet5, "x86-avx2", data, ranges={"sparsity": (0.0, 0.9)}, trials=0, train_epochs=100)


def _search(high=0.9, **kwargs):
    data = datasets.load("mnist", limit=1500)
    return search_onnx(paper_nets.network("lenet_300_100"), "x86-avx2", data, ranges={"sparsity": (0.5, high)},
                       trials=2, train_epochs=0.2, epochs=0.1, steps=2, orientation="1xg", tolerance=1.0,
                       **kwargs)


def test_an_interrupted_search_resumes_and_ends_with_the_model_an_uninterrupted_one_gives(tmp_path):
    """Reduced (1,500 images, tenths of epochs) with every trial held (tolerance 100 points): the
    search goes up, 70% then 80%; stopped before its second trial, the same call finishes it from
    the checkpoint, with the trained model and the first trial read back, not redone."""
    straight, result, _, search = _search()
    assert [t.fraction for t in search.trials] == [0.7, 0.8] and search.chosen.fraction == 0.8
    assert result.layers["fc1"]["group_sparsity"] == pytest.approx(0.8, abs=1e-3)

    checkpoint = tmp_path / "search.checkpoint"

    def stop_before_the_second(message):
        if message.startswith("search 2/2: pruning"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _search(checkpoint=checkpoint, progress=stop_before_the_second)
    assert checkpoint.exists()
    said = []
    resumed, _, _, again = _search(checkpoint=checkpoint, progress=said.append)
    assert said[0].startswith("scalpel prune: resuming the search") and "(1 trials done)" in said[0]
    assert not any(m.startswith("search 1/2") for m in said)
    assert [t.fraction for t in again.trials] == [0.7, 0.8] and not checkpoint.exists()
    for a, b in zip(read_chain(straight)[1], read_chain(resumed)[1]):
        np.testing.assert_array_equal(a.get("w_nk"), b.get("w_nk"))
    with pytest.raises(KeyboardInterrupt):
        _search(checkpoint=checkpoint, progress=stop_before_the_second)
    with pytest.raises(ScalpelError, match=r"checkpoint of a different run \(range differ\)"):
        _search(checkpoint=checkpoint, high=0.95)


def test_scalpel_prune_sparsity_auto_writes_the_chosen_model_and_reports_every_trial(tmp_path, capsys):
    model_path, out, report_dir = tmp_path / "lenet.onnx", tmp_path / "pruned.onnx", tmp_path / "r"
    onnx.save(paper_nets.network("lenet_300_100"), model_path)
    assert main(["prune", str(model_path), "--target", "x86-avx2", "--out", str(out), "--report", str(report_dir),
                 "--limit", "1500", "--train-epochs", "0.2", "--epochs", "0.1", "--steps", "2", "--orientation", "1xg",
                 "--sparsity", "auto", "--search-range", "0.5:0.9", "--search-trials", "2", "--tolerance", "100"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"searched the fraction of the groups in \(50%, 90%\) by bisection, 2 gradual runs", printed)
    assert re.search(r"70\.0%: validation .* held\n +80\.0%: validation .* held\nchosen: 80\.0% of the groups", printed)
    assert "in 2 gradual steps to 80% of the groups" in printed
    report = json.loads((report_dir / "prune.json").read_text())
    assert report["settings"]["sparsity"] == 0.8 and report["search"]["chosen"] == 0.8
    assert [t["fraction"] for t in report["search"]["trials"]] == [0.7, 0.8]
    assert (report_dir / "search.png").stat().st_size > 0 and (report_dir / "prune.png").exists()
    fc1 = read_chain(onnx.load(str(out)))[1][0]["w_nk"].reshape(300, 98, 8)
    assert 1 - np.count_nonzero(fc1.any(axis=2)) / (300 * 98) == pytest.approx(0.8, abs=1e-3)


def test_when_no_fraction_holds_the_trained_model_is_written_unpruned_and_the_way_out_named(tmp_path, capsys,
                                                                                            monkeypatch, recwarn):
    def lost(model, *args, sparsity, **kwargs):  # as prune_onnx ends a gradual run below the tolerance
        warnings.warn("pruned gradually ... points below the unpruned model's", pruning.BelowTolerance)
        return outcome(sparsity, 0.05)

    monkeypatch.setattr(pruning, "prune_onnx", lost)
    model_path, out = tmp_path / "lenet.onnx", tmp_path / "pruned.onnx"
    onnx.save(paper_nets.network("lenet_300_100"), model_path)
    assert main(["prune", str(model_path), "--target", "x86-avx2", "--out", str(out), "--report", str(tmp_path / "r"),
                 "--limit", "500", "--sparsity", "auto", "--search-trials", "3"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"no fraction held: the model is returned trained and unpruned; lower the range "
                     r"\(--search-range 0\.0:0\.121\)", printed)
    assert [t["fraction"] for t in json.loads((tmp_path / "r" / "prune.json").read_text())["search"]["trials"]] == [
        0.485, 0.242, 0.121]
    assert onnx.load(str(out)) == onnx.load(str(model_path))  # --train-epochs 0: the model as given
    assert (tmp_path / "r" / "search.png").exists() and not (tmp_path / "r" / "prune.png").exists()
    assert not recwarn.list  # each lost trial is the search's to report, not a warning to lower the sparsity


def test_a_gradual_run_ending_below_the_tolerance_warns_and_names_the_way_out(tmp_path):
    model_path, out = tmp_path / "lenet.onnx", tmp_path / "pruned.onnx"
    onnx.save(paper_nets.network("lenet_300_100"), model_path)
    with pytest.warns(pruning.BelowTolerance, match=r"points below the unpruned model's \(tolerance 0\); choose a "
                                                    "lower sparsity, more steps or a longer final retraining"):
        assert main(["prune", str(model_path), "--target", "x86-avx2", "--out", str(out), "--limit", "1500",
                     "--train-epochs", "0.2", "--epochs", "0.05", "--steps", "1", "--sparsity", "0.99",
                     "--tolerance", "0"]) == 0
    assert out.exists()  # reported, not undone


@pytest.mark.parametrize("argv, message", [
    (["--sparsity", "auto", "--node-sparsity", "auto"], "search one fraction at a time"),
    (["--sparsity", "0.9", "--search-range", "0.5:0.9"], "--search-range is for a searched fraction"),
    (["--sparsity", "auto", "--search-range", "0.9:0.5"], "search range needs 0 <= LOW < HIGH < 1"),
    (["--sparsity", "0.9", "--search-per-layer"], "--search-per-layer is for a searched fraction"),
    (["--sparsity", "auto", "--search-per-layer", "--layer-sparsity", "fc2=0.5"],
     "a per-layer search finds fc2's fraction: leave it out of the layer sparsities"),
])
def test_scalpel_prune_refuses_a_search_it_cannot_run(tmp_path, capsys, argv, message):
    model_path = tmp_path / "lenet.onnx"
    onnx.save(paper_nets.network("lenet_300_100"), model_path)
    assert main(["prune", str(model_path), "--target", "x86-avx2", "--out", str(tmp_path / "p.onnx"),
                 "--limit", "500", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_the_pruning_benchmark_searches_scalpels_fraction_and_keeps_the_baselines_at_theirs(tmp_path):
    """`python/bench_pruning.py --search sparsity`, reduced: Scalpel's run is a search (every trial
    held at a 100-point tolerance, so it goes up), the traditional baseline is pruned to the named
    --sparsity, and Scalpel's saved model is the chosen trial's."""
    import subprocess
    import sys
    from pathlib import Path

    from scalpel_tvm import models

    bench = Path(__file__).parents[1] / "python" / "bench_pruning.py"
    subprocess.run([sys.executable, str(bench), "--net", "lenet_300_100", "--target", "x86-avx2", "--limit", "1500",
                    "--train-epochs", "0.2", "--epochs", "0.1", "--steps", "2", "--sparsity", "0.6", "--orientation",
                    "1xg", "--tolerance", "100", "--search", "sparsity", "--search-range", "0.5:0.9",
                    "--search-trials", "2", "--methods", "scalpel,traditional", "--batches", "1", "--out",
                    str(tmp_path)], check=True, capture_output=True)
    report = json.loads((tmp_path / "bench_pruning_lenet_300_100_x86-avx2.json").read_text())
    search = report["methods"]["scalpel"]["search"]
    assert [t["fraction"] for t in search["trials"]] == [0.7, 0.8] and search["chosen"] == 0.8
    assert report["methods"]["traditional"]["weights_removed"] == pytest.approx(0.6, abs=0.01)
    saved = onnx.load(tmp_path / "bench_pruning_lenet_300_100_x86-avx2_scalpel.onnx")
    assert models.weights_removed(saved) == pytest.approx(report["methods"]["scalpel"]["weights_removed"], abs=0.01)
    assert report["methods"]["scalpel"]["weights_removed"] == pytest.approx(0.8, abs=0.01)


# Per-layer search: stand-in layers priced 5, 3 and 4 unpruned; c reads a's outputs, so pruning a
# makes c cheaper (as node shrinking does), and each layer holds up to its own limit.
PRICES = {"a": 5.0, "b": 3.0, "c": 4.0}
LIMITS = {"a": 0.6, "b": 0.8, "c": 0.3}
ABC = dict.fromkeys("abc", "sparsity")  # each layer's kind
GROUPS = {"sparsity": (0.0, 0.97)}


def layer_outcome(fractions, limits=LIMITS):
    loss = 0.0 if all(f <= limits[name] for name, f in fractions.items()) else 0.05
    predicted = {name: price * (1 - 0.9 * fractions.get(name, 0.0)) for name, price in PRICES.items()}
    predicted["c"] *= 1 - 0.5 * fractions.get("a", 0.0)
    result = SimpleNamespace(baseline_accuracy=0.98, final_accuracy=0.98 - loss, confirmed_baseline=0.97,
                             confirmed_accuracy=0.97 - loss, weights_removed=sum(fractions.values()) / 3,
                             layers={name: {"predicted_dense": PRICES[name], "predicted": predicted[name]}
                                     for name in PRICES})
    return dict(fractions), result, {"dense": 0.98, "pruned": 0.98 - loss}


def layer_prices(outcome):
    return PRICES if outcome is None else {name: v["predicted"] for name, v in outcome[1].layers.items()}


def test_a_per_layer_search_goes_slowest_first_reranks_and_holds_the_searched_layers_at_their_fractions():
    """a (priced 5) first with b and c whole; then c (4 unpruned) has become cheaper than b (3)
    because a's pruning shrank its inputs, so b goes second; every trial runs with the layers
    already searched at what they reached and the rest whole."""
    calls = []

    def run_trial(fractions):
        calls.append(fractions)
        return layer_outcome(fractions)

    said = []
    found, best = sparsity_search.search_layers(run_trial, ABC, layer_prices, ranges=GROUPS, trials=5,
                                                tolerance=0.001, progress=said.append)
    assert [stage.layer for stage in found.stages] == ["a", "b", "c"]
    assert said[0].startswith("per-layer search: a next, the slowest left (a 5, b 3, c 4)")
    resolution = 0.97 / 2 ** 5 + 0.002
    for name in "abc":
        assert found.fractions[name] <= LIMITS[name] < found.fractions[name] + resolution
    assert all(set(c) == {"a"} for c in calls[:5])
    assert all(c["a"] == found.fractions["a"] and set(c) == {"a", "b"} for c in calls[5:10])
    assert all(c["b"] == found.fractions["b"] and set(c) == {"a", "b", "c"} for c in calls[10:])
    assert best[0] == found.fractions  # the last layer's chosen trial: every layer at its fraction
    report = found.as_dict()
    assert [s["layer"] for s in report["per_layer"]] == ["a", "b", "c"] and report["chosen"] == found.fractions


def test_a_layer_no_fraction_holds_for_stays_whole_and_the_search_goes_on():
    def run_trial(fractions):
        return layer_outcome(fractions, dict(LIMITS, b=0.0))  # any cut of b loses accuracy

    found, best = sparsity_search.search_layers(run_trial, ABC, layer_prices, ranges=GROUPS, trials=3,
                                                tolerance=0.001, progress=lambda _: None)
    assert set(found.fractions) == {"a", "c"}
    assert next(stage for stage in found.stages if stage.layer == "b").chosen is None
    assert "b" not in best[0]  # c's trials ran with b whole
    assert "b whole" in "\n".join(prune_report.search_lines(found.as_dict()))


def test_an_interrupted_per_layer_search_resumes_where_it_stopped():
    """Stopped in b's search, the same search handed the stages saved so far goes on from that
    trial: no trial is run twice, and it ends where an uninterrupted one does."""
    straight, _ = sparsity_search.search_layers(layer_outcome, ABC, layer_prices, ranges=GROUPS, trials=3,
                                                tolerance=0.001, progress=lambda _: None)
    saved, calls = [], []

    def stop_at_the_fifth(fractions):
        calls.append(fractions)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return layer_outcome(fractions)

    with pytest.raises(KeyboardInterrupt):
        sparsity_search.search_layers(stop_at_the_fifth, ABC, layer_prices, ranges=GROUPS, trials=3,
                                      tolerance=0.001, progress=lambda _: None,
                                      on_trial=lambda found, best: saved.append((found, best)))
    found, best = saved[-1]
    assert [(s.layer, len(s.trials)) for s in found.stages] == [(straight.stages[0].layer, 3),
                                                                (straight.stages[1].layer, 1)]
    again = []
    resumed, best = sparsity_search.search_layers(
        lambda f: again.append(f) or layer_outcome(f), ABC, layer_prices, ranges=GROUPS, trials=3, tolerance=0.001,
        done=found.stages, best=best, progress=lambda _: None)
    assert len(again) == 9 - 4 and again[0] == calls[4]
    assert resumed.as_dict() == straight.as_dict() and best[0] == straight.fractions


def test_scalpel_prune_searches_each_layers_fraction_and_resumes_a_per_layer_search(tmp_path, capsys, monkeypatch):
    """Reduced, every trial held (tolerance 100 points), one trial a layer at the middle of
    50:90%: fc1 (the slowest) first, with fc2 whole, then fc2 with fc1 at its 70%. Stopped in
    fc2's search, the same command goes on from the checkpoint without redoing fc1's trial and
    writes the same model."""
    model_path, report_dir = tmp_path / "lenet.onnx", tmp_path / "r"
    onnx.save(paper_nets.network("lenet_300_100"), model_path)

    def prune(out, *extra):
        return main(["prune", str(model_path), "--target", "x86-avx2", "--out", str(out), "--limit", "1500",
                     "--train-epochs", "0.2", "--epochs", "0.1", "--steps", "2", "--orientation", "1xg",
                     "--sparsity", "auto", "--search-per-layer", "--search-range", "0.5:0.9", "--search-trials", "1",
                     "--tolerance", "100", *extra])

    assert prune(tmp_path / "straight.onnx", "--report", str(report_dir)) == 0
    captured = capsys.readouterr()
    assert re.search(r"per-layer search: fc1 next, the slowest left \(fc1 [0-9.e-]+, fc2 [0-9.e-]+\)", captured.err)
    assert re.search(r"fc1: searched .*\n +70\.0%: .* held\n +chosen: 70\.0% .*\nfc2: searched .*\n +70\.0%: .* held\n"
                     r".*\nchosen: fc1 70\.0%, fc2 70\.0%", captured.out)
    report = json.loads((report_dir / "prune.json").read_text())
    assert report["settings"]["layer_sparsity"] == {"fc1": 0.7, "fc2": 0.7}
    assert [s["layer"] for s in report["search"]["per_layer"]] == ["fc1", "fc2"]
    assert [report["layers"][name]["group_sparsity"] for name in ("fc1", "fc2")] == pytest.approx([0.7, 0.7], abs=0.01)
    assert report["layers"]["fc3"]["weights_kept"] == 1.0
    assert (report_dir / "search.png").stat().st_size > 0

    real, calls = pruning.prune_onnx, []

    def stop_in_fc2(*args, **kwargs):  # the second gradual run: fc2's search
        calls.append(kwargs["layer_sparsity"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pruning, "prune_onnx", stop_in_fc2)
    assert prune(tmp_path / "resumed.onnx") == 2
    assert calls == [{"fc1": 0.7, "fc2": 0.0}, {"fc1": 0.7, "fc2": 0.7}]
    monkeypatch.undo()
    assert "the same command resumes" in capsys.readouterr().err
    assert prune(tmp_path / "resumed.onnx") == 0
    err = capsys.readouterr().err
    assert "resuming the search" in err and "(1 trials done)" in err and "fc1: search 1/1" not in err
    for a, b in zip(read_chain(onnx.load(str(tmp_path / "straight.onnx")))[1],
                    read_chain(onnx.load(str(tmp_path / "resumed.onnx")))[1]):
        np.testing.assert_array_equal(a.get("w_nk"), b.get("w_nk"))


def test_a_per_layer_search_of_both_kinds_searches_each_layer_in_its_kinds_range():
    """Filters (node_sparsity) and groups (sparsity) in one slowest-first order: each stage
    bisects its layer's own kind within that kind's range, and the report names both kinds."""
    kinds = {"a": "node_sparsity", "b": "sparsity", "c": "sparsity"}
    ranges = {"node_sparsity": (0.0, 0.9), "sparsity": (0.5, 0.97)}
    calls = []

    def run_trial(fractions):
        calls.append(fractions)
        return layer_outcome(fractions)

    found, _ = sparsity_search.search_layers(run_trial, kinds, layer_prices, ranges=ranges, trials=3, tolerance=0.001,
                                             progress=lambda _: None)
    assert [(s.layer, s.kind, (s.low, s.high)) for s in found.stages] == [
        ("a", "node_sparsity", (0.0, 0.9)), ("b", "sparsity", (0.5, 0.97)), ("c", "sparsity", (0.5, 0.97))]
    assert [c["a"] for c in calls[:3]] == [0.45, 0.675, 0.562]  # a's bisection of (0, 90%): its limit is 60%
    assert all(0.5 < t.fraction < 0.97 for stage in found.stages[1:] for t in stage.trials)
    assert found.fractions["b"] <= LIMITS["b"] and "c" not in found.fractions  # c's limit, 30%, is below its range
    report = found.as_dict()
    assert report["kinds"] == ["node_sparsity", "sparsity"] and report["of"] == "nodes or groups"
    assert "of the nodes in (0%, 90%)" in "\n".join(prune_report.search_lines(report))


def test_scalpel_prune_searches_lenet5s_filters_and_groups_each_layer_its_own(tmp_path, capsys):
    """`--sparsity auto --node-sparsity auto --search-per-layer` on LeNet-5 for x86 (reduced, every
    trial held, one trial a layer): conv1's and conv2's filters and fc1's groups, each at the
    middle of its kind's range, slowest first as the cost model prices them; the written model
    has each layer cut to its fraction, and nothing was named but the ranges."""
    model_path, out, report_dir = tmp_path / "lenet5.onnx", tmp_path / "pruned.onnx", tmp_path / "r"
    onnx.save(paper_nets.network("lenet5"), model_path)
    assert main(["prune", str(model_path), "--target", "x86-avx2", "--out", str(out), "--report", str(report_dir),
                 "--limit", "1500", "--train-epochs", "0.2", "--epochs", "0.1", "--steps", "2", "--orientation", "1xg",
                 "--sparsity", "auto", "--node-sparsity", "auto", "--search-per-layer", "--search-range",
                 "groups=0.5:0.9", "nodes=0.2:0.8", "--search-trials", "1", "--tolerance", "100"]) == 0
    err = capsys.readouterr().err
    first = re.search(r"per-layer search: (\w+) next, the slowest left \((conv1 .*, conv2 .*, fc1 .*)\)", err)
    prices = {name: float(price) for name, price in (pair.split() for pair in first[2].split(", "))}
    assert first[1] == max(prices, key=prices.get)
    report = json.loads((report_dir / "prune.json").read_text())
    assert report["settings"]["sparsity"] is None and report["settings"]["node_sparsity"] is None
    assert report["settings"]["layer_sparsity"] == {"conv1": 0.5, "conv2": 0.5, "fc1": 0.7}
    assert report["search"]["per_layer"][0]["layer"] == first[1]
    assert {s["layer"]: s["kind"] for s in report["search"]["per_layer"]} == {
        "conv1": "node_sparsity", "conv2": "node_sparsity", "fc1": "sparsity"}
    layers = read_chain(onnx.load(str(out)))[1]
    dead = {layer["name"]: int((~layer["w_nk"].any(axis=1)).sum()) for layer in layers if layer["op"] == "conv"}
    assert dead == {"conv1": 10, "conv2": 25}  # half of 20 and of 50 filters
    # conv2's dead filters empty half of fc1's groups (their inputs); the 70% asked for cuts more
    assert report["layers"]["fc1"]["group_sparsity"] >= 0.7 - 0.01


def test_a_search_range_names_a_searched_kind():
    assert sparsity_search.parse_ranges(["0.3:0.9", "groups=0.8:0.97"], ["sparsity", "node_sparsity"]) == {
        "sparsity": (0.8, 0.97), "node_sparsity": (0.3, 0.9)}
    assert sparsity_search.parse_ranges([], ["node_sparsity"]) == {"node_sparsity": (0.0, 0.9)}
    with pytest.raises(ScalpelError, match="a search range names 'nodes'; the fractions searched are of the groups: "
                                           "give groups=LOW:HIGH, or LOW:HIGH for all"):
        sparsity_search.parse_ranges(["nodes=0.3:0.9"], ["sparsity"])
