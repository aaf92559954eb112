"""`scalpel tune`: workloads, meta_schedule logs, resuming, damaged logs, applying logs."""
import json
import shutil

import numpy as np
import pytest
import tvm
from hypothesis import given, settings, strategies as st
from tvm.s_tir import meta_schedule as ms

import scalpel_tvm
from nets import TARGET, cnn, mlp, relax_module, run_relax
from scalpel_tvm.cli import main
from scalpel_tvm.logs import (RECORD_FILE, LogError, TuningLog, drop_records, scheduled_kernel,
                              tuned_kernel)
from scalpel_tvm.passes.lower_layers import fc_kernel
from scalpel_tvm.schedules.fc import dense_fc
from scalpel_tvm.target import TargetSpec
from scalpel_tvm.schedules.conv2d import pack_conv_weight
from scalpel_tvm.tuning import layer_workloads, model_workloads, parse_shapes, tune
from scalpel_tvm.workloads import (ConvWorkload, Workload, canonical_module, knob_space,
                                   measurement_arguments, template_kernel, template_knobs,
                                   template_record_trace, workload_of)

SPEC = TargetSpec.preset("x86-avx2")
SMALL = [Workload("dense", 1, 48, 20, 8), Workload("gsparse_gx1", 1, 48, 20, 8, groups=40),
         Workload("gsparse_1xg", 3, 48, 20, 8, groups=30, bias=False, activation=None)]


@pytest.fixture(scope="module")
def small_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("log")
    tune(SMALL, SPEC, path, progress=False)
    return path


def _run(prim, args):
    module = tvm.compile(tvm.IRModule({"main": prim}), target=TARGET)
    tensors = [tvm.runtime.tensor(a) for a in args]
    module(*tensors)
    return tensors[-1].numpy()


workloads = st.builds(
    lambda form, batch, k, n, density, bias, activation: Workload(
        form, batch, k, n, 8, 0 if form == "dense" else max(1, round(density * Workload(
            form, batch, k, n, 8, 1).max_groups)), bias, activation),
    st.sampled_from(["dense", "gsparse_gx1", "gsparse_1xg"]), st.integers(1, 12),
    st.integers(1, 40), st.integers(1, 40), st.floats(0.01, 1.0), st.booleans(),
    st.sampled_from([None, "relu", "gelu", "gelu_tanh"]))


@settings(max_examples=12, deadline=None)
@given(workloads)
def test_every_template_setting_computes_the_canonical_function(wl):
    assert Workload.from_key(wl.key) == wl
    assert workload_of(canonical_module(wl)) == wl
    args = measurement_arguments(wl)
    expected = _run(canonical_module(wl)["main"], args)
    for knobs in knob_space(wl)[:6]:
        np.testing.assert_allclose(_run(template_kernel(wl, knobs), args), expected,
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("wl", [
    ConvWorkload(1, 1, 12, 12, 10, (5, 5)),
    ConvWorkload(2, 3, 9, 9, 20, (3, 3), (2, 2), (1, 1, 1, 1), bias=False, activation=None)])
def test_every_conv_template_setting_computes_the_canonical_conv(wl):
    assert Workload.from_key(wl.key) == wl and workload_of(canonical_module(wl)) == wl
    rng = np.random.default_rng(0)
    x = rng.standard_normal((wl.batch, wl.channels, wl.height, wl.width)).astype("float32")
    w = rng.standard_normal((wl.out_channels, wl.channels, *wl.kernel)).astype("float32")
    b = [rng.standard_normal(wl.out_channels).astype("float32")] if wl.bias else []
    y = np.zeros(wl.output_shape, "float32")
    expected = _run(canonical_module(wl)["main"], [x, w, *b, y])
    for knobs in knob_space(wl):
        packed = pack_conv_weight(w, wl.lanes, **knobs)
        np.testing.assert_allclose(_run(template_kernel(wl, knobs), [x, packed, *b, y]), expected,
                                   rtol=1e-4, atol=1e-4)


def test_conv_layers_are_tuned_and_lowered_with_their_best_knobs(tmp_path):
    from scalpel_tvm import models
    from scalpel_tvm.passes.layer_graph import build_layer_graph, canonicalize
    from scalpel_tvm.passes.lower_layers import conv_kernel

    mod = relax_module(models.lenet5())
    conv1 = [w for w in model_workloads(mod, SPEC) if isinstance(w, ConvWorkload) and w.channels == 1]
    assert sorted(w.out_channels for w in conv1) == [5, 10, 15, 18, 20]  # 10: its dead filters gone
    conv = next(w for w in conv1 if w.out_channels == 10)
    assert conv.label == "conv b1 1x28x28->10 5x5"
    log = tune([conv], SPEC, tmp_path, progress=False)
    best = log.best(conv)
    assert best.knobs in knob_space(conv)
    layer = build_layer_graph(canonicalize(mod)["main"]).layers[0]
    w = np.random.default_rng(0).standard_normal((10, 1, 5, 5)).astype("float32")
    prim, (packed,) = conv_kernel(w, (1, 1, 28, 28), layer.call.attrs, bias=True, activation=None,
                                  lanes=8, name="main", log=log)
    tvm.ir.assert_structural_equal(prim, template_kernel(conv, log.best_knobs(conv)))
    np.testing.assert_array_equal(packed, pack_conv_weight(w, 8, **log.best_knobs(conv)))


def test_template_records_carry_their_knobs_in_a_replayable_trace():
    wl = SMALL[1]
    knobs = knob_space(wl)[-1]
    trace = template_record_trace(wl, knobs)
    assert template_knobs(trace) == knobs
    sch = tvm.s_tir.Schedule(canonical_module(wl))
    trace.apply_to_schedule(sch, remove_postproc=False)  # valid on the canonical function


def test_tune_writes_a_meta_schedule_log_that_tvm_reads(small_log):
    database = ms.database.JSONDatabase(work_dir=str(small_log))  # TVM's own reader
    assert len(database.get_all_tuning_records()) == sum(len(knob_space(wl)) for wl in SMALL)
    log = TuningLog(small_log)
    for wl in SMALL:
        best = log.best(wl)
        assert best.knobs in knob_space(wl) and 0 < best.seconds < 1e-3
        assert database.has_workload(canonical_module(wl))


def test_tune_resumes_without_remeasuring(small_log, tmp_path):
    shutil.copytree(small_log, tmp_path / "log")
    before = (tmp_path / "log" / RECORD_FILE).read_text()
    more = SMALL + [Workload("dense", 2, 16, 8, 8)]
    log = tune(more, SPEC, tmp_path / "log", progress=False)
    after = (tmp_path / "log" / RECORD_FILE).read_text()
    assert after.startswith(before)  # appended, nothing rewritten
    assert len(after.splitlines()) - len(before.splitlines()) == len(knob_space(more[-1]))
    assert log.best(more[-1]) is not None


def test_a_forms_records_are_dropped_and_measured_again(small_log, tmp_path):
    """After a kernel template changes, its form's records go (`drop_records`) and `tune`
    measures exactly those workloads again; the other forms' records stay as they were."""
    shutil.copytree(small_log, tmp_path / "log")
    before = TuningLog(tmp_path / "log")
    dropped = drop_records(tmp_path / "log", ["gsparse_gx1"])
    assert dropped == [SMALL[1]]
    after = TuningLog(tmp_path / "log")
    assert after.best(SMALL[1]) is None
    for wl in (SMALL[0], SMALL[2]):
        assert [m.seconds for m in after.records[wl.key]] == [m.seconds for m in before.records[wl.key]]
    log = tune(dropped, SPEC, tmp_path / "log", progress=False)
    assert len(log.records[SMALL[1].key]) == len(knob_space(SMALL[1]))
    assert len(log) == len(before)
    with pytest.raises(ValueError, match="gsparse_g8x1"):  # a typo drops nothing silently
        drop_records(tmp_path / "log", ["gsparse_g8x1"])


def test_failed_measurements_are_kept_and_not_retried(tmp_path):
    wl = Workload("dense", 1, 16, 8, 8)
    database = ms.database.JSONDatabase(work_dir=str(tmp_path))
    failed = knob_space(wl)[0]
    database.commit_tuning_record(ms.database.TuningRecord(
        template_record_trace(wl, failed), database.commit_workload(canonical_module(wl)), [1e10],
        SPEC.target, ms.arg_info.ArgInfo.from_prim_func(canonical_module(wl)["main"])))
    log = tune([wl], SPEC, tmp_path, progress=False)
    assert len((tmp_path / RECORD_FILE).read_text().splitlines()) == len(knob_space(wl))
    assert all(m.knobs != failed for m in log.records[wl.key])  # a failure is never the best


def test_corrupt_log_line_is_named_and_can_be_skipped(small_log, tmp_path):
    shutil.copytree(small_log, tmp_path / "log")
    records = tmp_path / "log" / RECORD_FILE
    lines = records.read_text().splitlines()
    lines[2] = lines[2][: len(lines[2]) // 2]  # a write cut short
    records.write_text("\n".join(lines) + "\n")
    with pytest.raises(LogError, match=rf"{RECORD_FILE}:3: .*skip_corrupt"):
        TuningLog(tmp_path / "log")
    with pytest.warns(UserWarning, match=r"skipped 1 corrupt line"):
        log = TuningLog(tmp_path / "log", skip_corrupt=True)
    assert len(log) == len(lines) - 1
    with pytest.raises(LogError, match=f"{RECORD_FILE}:3"):  # tuning will not append to it
        tune(SMALL, SPEC, tmp_path / "log", progress=False)


def test_a_directory_without_a_log_is_a_clear_error(tmp_path):
    with pytest.raises(LogError, match="not a tuning log"):
        TuningLog(tmp_path)


def test_fc_kernel_takes_the_logged_knobs(tmp_path):
    """A log whose best record says vectors=1, k_streams=1 makes LowerLayers build exactly that."""
    wl = Workload("dense", 1, 48, 20, 8)
    database = ms.database.JSONDatabase(work_dir=str(tmp_path))
    workload = database.commit_workload(canonical_module(wl))
    info = ms.arg_info.ArgInfo.from_prim_func(canonical_module(wl)["main"])
    for knobs, seconds in (({"vectors": 1, "k_streams": 1}, 1e-7), ({"vectors": 2}, 2e-7)):
        database.commit_tuning_record(ms.database.TuningRecord(
            template_record_trace(wl, knobs), workload, [seconds], SPEC.target, info))
    log = TuningLog(tmp_path)
    w = np.random.default_rng(0).standard_normal((48, 20)).astype("float32")
    prim, _ = fc_kernel("dense", w, 1, 8, bias=True, activation="relu", name="main", log=log)
    expected = dense_fc(1, 48, 20, bias=True, activation="relu", name="main", vectors=1, k_streams=1)
    tvm.ir.assert_structural_equal(prim, expected)
    # The knobs do not depend on the epilogue: the same kernel without its ReLU takes them too.
    other, _ = fc_kernel("dense", w, 1, 8, bias=True, activation=None, name="main", log=log)
    tvm.ir.assert_structural_equal(other, dense_fc(1, 48, 20, bias=True, activation=None,
                                                   name="main", vectors=1, k_streams=1))
    untuned, _ = fc_kernel("dense", w[:, :16], 1, 8, bias=True, activation="relu", name="main", log=log)
    tvm.ir.assert_structural_equal(untuned, dense_fc(1, 48, 16, bias=True, activation="relu", name="main"))


def test_a_sparse_layer_with_no_groups_left_still_lowers_with_a_log(small_log):
    """Every input of the layer dead: zero groups, which is no tuning workload (found by
    hypothesis in test_pass)."""
    prim, (indptr, indices, values) = fc_kernel(
        "gsparse_gx1", np.zeros((2, 4), "float32"), 1, 8, bias=True, activation="relu",
        name="main", log=TuningLog(small_log))
    bias = np.arange(4, dtype="float32") - 1
    out = _run(prim, [np.ones((1, 2), "float32"), indptr, indices, values, bias,
                      np.zeros((1, 4), "float32")])
    np.testing.assert_array_equal(out, np.maximum(bias, 0)[None])


def test_meta_schedule_search_records_replay_and_compute_the_same(tmp_path):
    """meta_schedule's records replay on the canonical function, and a Pass that picks one —
    here inside a batch-1 chain of FC layers — keeps the model's results."""
    wl = Workload("dense", 1, 32, 16, 8, bias=True, activation=None)  # fc2 of mlp([24, 32, 16])
    log = tune([wl], SPEC, tmp_path, trials=2, progress=False)
    searched = [m for m in log.records[wl.key] if m.knobs is None]
    assert searched, "meta_schedule's search left no records"
    args = measurement_arguments(wl)
    expected = _run(canonical_module(wl)["main"], args)
    np.testing.assert_allclose(_run(scheduled_kernel(searched[0], wl, "main"), args), expected,
                               rtol=1e-4, atol=1e-4)
    log.records[wl.key] = searched  # make the searched schedule the fastest record
    assert tuned_kernel(log, wl, "main").attrs.get("scalpel.workload") == wl.key
    mod = relax_module(mlp([24, 32, 16]))
    x = np.random.default_rng(2).standard_normal((1, 24)).astype("float32")
    lowered = scalpel_tvm.Pass("x86-avx2", logs=log)(mod)
    assert "fc1_dense__fc2_dense" in lowered.script()
    np.testing.assert_allclose(run_relax(lowered, x), run_relax(mod, x), rtol=1e-4, atol=1e-5)


def test_meta_schedule_searches_convs_and_the_pass_applies_a_searched_conv(tmp_path):
    """Conv kernels are searched by meta_schedule too (over the OIHW weight), and a Pass whose
    log has a searched schedule as a conv's fastest record lowers with it, results kept."""
    from scalpel_tvm.tuning import searchable

    net = cnn((1, 4), hw=8)
    mod = relax_module(net)
    conv = next(w for w in model_workloads(mod, SPEC, kinds=("conv",)) if w.out_channels == 4)
    assert searchable(conv) and not searchable(SMALL[1])
    log = tune([conv], SPEC, tmp_path, trials=2, progress=False)
    searched = [m for m in log.records[conv.key] if m.knobs is None]
    assert searched, "meta_schedule's search left no conv records"
    args = measurement_arguments(conv)
    args[1] = np.random.default_rng(3).standard_normal((4, 1, 3, 3)).astype("float32")  # OIHW
    np.testing.assert_allclose(_run(scheduled_kernel(searched[0], conv, "main"), args),
                               _run(canonical_module(conv)["main"], args), rtol=1e-4, atol=1e-4)
    log.records[conv.key] = searched  # make the searched schedule the fastest record
    lowered = scalpel_tvm.Pass("x86-avx2", logs=log)(mod)
    assert any(f.attrs is not None and f.attrs.get("scalpel.workload") == conv.key
               for f in lowered.functions.values()), "the searched conv schedule was not used"
    x = np.random.default_rng(4).standard_normal((1, 1, 8, 8)).astype("float32")
    np.testing.assert_allclose(run_relax(lowered, x), run_relax(mod, x), rtol=1e-4, atol=1e-5)


def test_handlers_meta_schedule_did_not_make_are_set_aside_while_it_tunes():
    """meta_schedule's logging setup fails on a nameless handler on its logger (pytest's capture
    puts one there); the search takes such handlers off and puts them back afterwards."""
    import logging

    from scalpel_tvm.tuning import MS_LOGGER, _foreign_handlers_aside

    logger = logging.getLogger(MS_LOGGER)
    ours = logging.NullHandler()
    logger.addHandler(ours)
    try:
        with _foreign_handlers_aside():
            assert ours not in logger.handlers
        assert ours in logger.handlers
    finally:
        logger.removeHandler(ours)


def test_pass_with_a_log_keeps_results(small_log):
    net = mlp([48, 20, 8], zero_groups={0: 0.6})
    mod = relax_module(net)
    x = np.random.default_rng(1).standard_normal((1, 48)).astype("float32")
    expected = run_relax(mod, x)
    for logs in (str(small_log), False, None):
        out = run_relax(scalpel_tvm.Pass("x86-avx2", logs=logs)(mod), x)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_layer_workloads_cover_shrunk_and_sparse_candidates():
    found = layer_workloads(1, 784, 300, 8)
    assert {wl.n for wl in found if wl.form == "dense"} == {300, 270, 225, 150, 75}
    for form in ("gsparse_gx1", "gsparse_1xg"):
        densities = sorted(round(wl.density, 2) for wl in found if wl.form == form)
        assert densities == [0.1, 0.3, 0.5, 0.7, 0.9]


def test_shape_specs_parse_and_bad_ones_are_named(capsys, tmp_path):
    assert parse_shapes("784x300,300X100") == [(784, 300), (300, 100)]
    assert main(["tune", "--shapes", "784by300", "--logs", str(tmp_path)]) == 2
    assert "bad shape '784by300'" in capsys.readouterr().err


def test_cli_tune_on_a_model_then_plan_with_its_log(tmp_path, capsys):
    import onnx

    path = tmp_path / "net.onnx"
    onnx.save(mlp([24, 16, 8], zero_groups={0: 0.7}), path)
    assert main(["tune", "--model", str(path), "--target", "x86-avx2",
                 "--logs", str(tmp_path / "log")]) == 0
    assert "records for" in capsys.readouterr().out
    assert main(["plan", str(path), "--target", "x86-avx2", "--logs", str(tmp_path / "log"),
                 "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert {c["source"] for c in layers[0]["candidates"]} == {"log"}


@pytest.fixture
def rpc_tracker():
    """A TVM RPC tracker and one server registered under key "scalpel-test", on loopback."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    from tvm.s_tir.meta_schedule.runner import RPCConfig

    with socket.socket() as probe:  # a free port for the tracker
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def spawn(*args):  # own session, so the whole tree (server + its worker) can be stopped
        return subprocess.Popen([sys.executable, "-m", *args], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait(ready, what):
        deadline = time.time() + 60
        while True:
            try:
                if ready():
                    return
            except OSError:
                pass
            assert time.time() < deadline, f"{what} did not come up"
            time.sleep(0.1)

    procs = [spawn("tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                   "--port-end", str(port + 1), "--silent")]
    try:
        wait(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True,
             "the tracker")
        procs.append(spawn("tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port + 100),
                           "--port-end", str(port + 200), "--tracker", f"127.0.0.1:{port}",
                           "--key", "scalpel-test", "--silent"))
        config = RPCConfig("127.0.0.1", port, "scalpel-test", session_timeout_sec=60)
        wait(lambda: config.count_num_servers() >= 1, "the RPC server")
        yield f"127.0.0.1:{port}"
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=10)


def test_a_silent_rpc_device_is_an_error_not_a_hang():
    import concurrent.futures

    from scalpel_tvm.errors import ScalpelError
    from scalpel_tvm.tuning import runner_result

    never = ms.runner.rpc_runner.RPCRunnerFuture(concurrent.futures.Future(), timeout_sec=1)
    with pytest.raises(ScalpelError, match="server may have died"):
        runner_result(never, timeout_s=0.1)


def test_tune_measures_through_a_tvm_rpc_tracker(rpc_tracker, tmp_path, capsys):
    sparse = SMALL[1]  # data-dependent loops: the real pattern must reach the remote device
    log = tune([sparse], SPEC, tmp_path, rpc=rpc_tracker, device_key="scalpel-test", progress=False)
    assert len(log) == len(knob_space(sparse))
    assert all(0 < m.seconds < 1e-3 for m in log.records[sparse.key])
    assert main(["tune", "--shapes", "16x8", "--rpc", "nohost", "--logs", str(tmp_path / "x")]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["x86-avx2", "x86-avx512"])
def test_shipped_log_is_intact_current_and_learnt(target):
    """Each log in the package reads without damage, its workloads are the canonical functions
    this code builds (not stale), and its seconds model fits its own records."""
    from scalpel_tvm.logs import SHIPPED
    from scalpel_tvm.tuned_cost import SecondsModel

    log = TuningLog(SHIPPED / target)
    assert not log.skipped and len(log.records) > 100
    for records in list(log.records.values())[::29]:
        logged = records[0].record.workload.mod
        tvm.ir.assert_structural_equal(logged, canonical_module(workload_of(logged)))
    measured = log.seconds_by_query()
    queries = list(measured)
    predicted = SecondsModel(TargetSpec.preset(target)).fit(measured).predict(queries)
    errors = [abs(p - measured[q]) / measured[q] for p, q in zip(predicted, queries)]
    assert np.median(errors) < 0.15


@pytest.mark.parametrize("target", ["x86-avx2", "x86-avx512"])
def test_shipped_log_holds_every_kernel_the_demo_compiles_for_its_target(target):
    """`scalpel demo` on an AVX2 and an AVX-512 CPU: every candidate of every layer of the models
    it compiles (pruned and dense, batch 1 and 50) is priced from a tuning record."""
    from scalpel_tvm.demo import NETWORKS, demo_model_path, pruned_model_path

    spec = TargetSpec.preset(target)
    for network in NETWORKS:
        for path in (pruned_model_path(network, spec), demo_model_path(network, pruned=False)):
            for batch in (1, 50):
                layer_plan = scalpel_tvm.plan(scalpel_tvm.import_onnx(str(path), batch=batch), spec)
                assert {c.source for lp in layer_plan.layers for c in lp.candidates} == {"log"}, (path, batch)
