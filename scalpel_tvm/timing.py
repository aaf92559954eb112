"""Side-by-side timing shared by the demo and the benchmarks.

The machines are shared and noisy, so every comparison times its candidates in interleaved
rounds (noise hits all of them alike) and reports medians; everything runs single-threaded.
"""
from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np


def interleaved_samples(timers: dict, budget_s: float, rounds: int) -> dict:
    """Seconds per call of each `timer(number) -> seconds per call`, one sample per interleaved
    round. A round of a timer lasts about budget_s / rounds; a timer whose single call is longer
    than that gets 3 rounds."""
    once = {}
    for key, timer in timers.items():
        timer(1)  # warm-up
        once[key] = timer(1)
    number = {key: max(1, int(budget_s / rounds / max(t, 1e-9))) for key, t in once.items()}
    samples = {key: [] for key in timers}
    for r in range(rounds):
        for key, timer in timers.items():
            if r < 3 or once[key] <= budget_s / rounds:
                samples[key].append(float(timer(number[key])))
    return samples


def median_us(timers: dict, budget_s: float, rounds: int) -> dict:
    """Median time per call (µs) of each timer, in interleaved rounds (`interleaved_samples`)."""
    return {key: float(np.median(v) * 1e6) for key, v in interleaved_samples(timers, budget_s, rounds).items()}


def device_timer(module, func: str, dev, *args):
    """Timer of `module[func](*args)` on `dev` by TVM's time_evaluator (a GPU's own clock)."""
    def timer(number):
        return module.time_evaluator(func, dev, number=number, repeat=1)(*args).mean

    return timer


def cpu_vm(mod, target):
    """A Relax VM on this CPU for `mod` compiled by `scalpel_tvm.compile` (the VM's own code
    compiled too), as every CPU timing here runs it."""
    import tvm

    from .pipeline import compile

    return tvm.relax.VirtualMachine(compile(mod, target), tvm.cpu())


def vm_timer(vm, *args, func: str = "main"):
    """Timer of a Relax VM function (or a compiled PrimFunc module) called with `args`."""
    import tvm

    def timer(number):
        if number == 1:  # slow candidates: skip time_evaluator's extra warm-up call
            start = time.perf_counter()
            vm[func](*args)
            return time.perf_counter() - start
        return vm.time_evaluator(func, tvm.cpu(), number=number, repeat=1)(*args).mean

    return timer


def ort_session(model_bytes: bytes):
    """An onnxruntime CPU session on one thread, like the TVM side."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def ort_timer(session, feed: dict):
    """Timer of `run_with_iobinding` with the inputs bound once: the closest to a VM call."""
    import onnxruntime as ort

    binding = session.io_binding()
    for name, value in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value))
    for output in session.get_outputs():
        binding.bind_output(output.name)

    return call_timer(lambda: session.run_with_iobinding(binding))


def call_timer(run):
    """Timer of a Python callable `run()` (a library call timed from Python, as users call it)."""
    def timer(number):
        start = time.perf_counter()
        for _ in range(number):
            run()
        return (time.perf_counter() - start) / number

    return timer


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
