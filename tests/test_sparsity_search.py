"""Searching the gradual fraction (`sparsity_search`): the bisection on stand-in trials (what it
tries, what it picks, every outcome pattern), resuming an interrupted search, the refusals, and
the whole path through `scalpel prune --sparsity auto`."""
import json
import re
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalpel_tvm import ScalpelError, datasets, paper_nets, pruning, sparsity_search
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
        search_onnx(lenet5, "cortex-m4", data, kind="node_sparsity", low=0.0, high=0.9, train_epochs=100)
    with pytest.raises(ScalpelError, match="fc1 is pruned in groups: give --sparsity for them too"):
        search_onnx(lenet5, "x86-avx2", data, kind="node_sparsity", low=0.0, high=0.9, train_epochs=100)
    with pytest.raises(ScalpelError, match="name it, or search it, not both"):
        search_onnx(lenet5, "x86-avx2", data, kind="sparsity", low=0.0, high=0.9, sparsity=0.5)
    with pytest.raises(ScalpelError, match="this model is not one"):
        search_onnx(onnx.ModelProto(), "x86-avx2", data, kind="sparsity", low=0.0, high=0.9)
    with pytest.raises(ScalpelError, match="at least one trial"):  # train_epochs=100 would take minutes
        search_onnx(lenet5, "x86-avx2", data, kind="sparsity", low=0.0, high=0.9, trials=0, train_epochs=100)


def _search(high=0.9, **kwargs):
    data = datasets.load("mnist", limit=1500)
    return search_onnx(paper_nets.network("lenet_300_100"), "x86-avx2", data, kind="sparsity", low=0.5, high=high,
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
                                                                                            monkeypatch):
    monkeypatch.setattr(pruning, "prune_onnx", lambda model, *a, sparsity, **k: outcome(sparsity, 0.05))
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


@pytest.mark.parametrize("argv, message", [
    (["--sparsity", "auto", "--node-sparsity", "auto"], "search one fraction at a time"),
    (["--sparsity", "0.9", "--search-range", "0.5:0.9"], "--search-range is for a searched fraction"),
    (["--sparsity", "auto", "--search-range", "0.9:0.5"], "search range needs 0 <= LOW < HIGH < 1"),
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
