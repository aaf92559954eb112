"""The Cortex-M cost model: fitted to the cycle estimate, it must predict layers it never saw and
pick their fastest format; cores without the DSP extension never get pairs."""
from dataclasses import replace

import numpy as np
import pytest

from scalpel_tvm import ScalpelError, m4_cost, paper_nets
from scalpel_tvm.cli import main
from scalpel_tvm.int16_net import quantize_net


@pytest.fixture(scope="module")
def fresh_layers(tmp_path_factory):
    """Random layers from a seed the shipped fit never saw, each priced by the cycle estimate."""
    layers = m4_cost.random_layers(np.random.default_rng(12345), 15)
    return layers, m4_cost.measure_layers(layers, tmp_path_factory.mktemp("fw"))


def test_the_model_predicts_unseen_layers(fresh_layers):
    layers, measured = fresh_layers
    model = m4_cost.CortexMCost.for_core("cortex-m4")
    errors = [abs(model.cycles(layer) - cycles) / cycles for layer, cycles in zip(layers, measured)]
    assert np.median(errors) < 0.05 and max(errors) < 0.25, errors


def test_the_planner_picks_the_fastest_format_or_one_close_to_it(fresh_layers):
    layers, measured = fresh_layers
    by_weight = {}
    for layer, cycles in zip(layers, measured):
        if layer.op in ("fc", "conv"):
            by_weight.setdefault(id(layer.w_nk), {})[layer.format] = (layer, cycles)
    assert by_weight
    for forms in by_weight.values():
        chosen = m4_cost.choose_format(next(iter(forms.values()))[0])
        best = min(cycles for _, cycles in forms.values())
        assert forms[chosen][1] <= 1.1 * best, {f: c for f, (_, c) in forms.items()}


def test_pairs_only_where_the_core_has_the_dual_mac():
    model = paper_nets.group_pruned(paper_nets.network("lenet_300_100"), {"fc1": 0.05, "fc2": 0.05}, 2, "1xg")
    calibration = np.random.default_rng(0).random((4, 784))
    assert quantize_net(model, calibration, mcpu="cortex-m4").layers[0].format == "gsparse2"
    for mcpu in ("cortex-m3", "cortex-m0"):
        formats = [layer.format for layer in quantize_net(model, calibration, mcpu=mcpu).layers]
        assert "gsparse2" not in formats and formats[0] == "csr"
    with pytest.raises(ScalpelError, match="no Cortex-M cost model for 'cortex-a53'"):
        m4_cost.CortexMCost.for_core("cortex-a53")


def test_the_size_objective_picks_the_fewest_bytes():
    """By size, a sparse layer's pairs take 8-bit steps (the smallest form); by latency, the
    16-bit indices that cost fewer cycles; a dense layer stays dense either way."""
    model = paper_nets.group_pruned(paper_nets.network("lenet_300_100"), {"fc1": 0.05, "fc2": 0.05}, 2, "1xg")
    calibration = np.random.default_rng(0).random((4, 784))
    by_size = quantize_net(model, calibration, objective="size").layers
    by_cycles = quantize_net(model, calibration).layers
    for small, fast in zip(by_size, by_cycles):
        sizes = {form: replace(small, format=form).flash_bytes() for form in m4_cost.PAIR_FORMATS}
        assert small.flash_bytes() == min(sizes.values())
        cycles = m4_cost.CortexMCost.for_core("cortex-m4").candidates(fast)
        assert round(cycles[fast.format]) == round(min(cycles.values()))
    assert [layer.format for layer in by_size][:2] == ["gsparse2_delta"] * 2
    assert by_size[2].format == by_cycles[2].format == "dense"  # fc3 is not pruned
    with pytest.raises(ScalpelError, match="unknown Cortex-M objective 'energy'"):
        m4_cost.choose_format(by_size[0], objective="energy")


def test_plan_prints_every_layer_with_its_estimated_cycles(tmp_path, capsys):
    path = tmp_path / "lenet5.onnx"
    import onnx

    onnx.save(paper_nets.group_pruned(paper_nets.network("lenet5"), paper_nets.han_density("lenet5"), 2, "1xg"), path)
    assert main(["plan", str(path), "--target", "cortex-m4"]) == 0
    table = capsys.readouterr().out
    for layer in ("conv1", "conv2", "fc1", "fc2", "maxpool"):
        assert layer in table
    assert "gsparse2 kcyc" in table and "gsparse2" in table.split("fc1")[1].splitlines()[0]
    assert main(["plan", str(path), "--target", "cortex-m3"]) == 0
    assert "groups fall back to G = 1" in capsys.readouterr().out
