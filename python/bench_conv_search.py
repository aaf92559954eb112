"""meta_schedule's searched conv schedules against the conv template, timed side by side.

The Pass compiles whichever record of a conv measured fastest in the tuning log, but the
template's and the search's records may come from different days. This times, for every conv
the log holds both kinds of record for, the template with its best knobs and the fastest
searched schedule in interleaved rounds (medians, one thread), and says which one the log's
records pick. Prints a table and writes out/bench_conv_search.json.

    python python/bench_conv_search.py [--logs DIR] [--out out]
"""
from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import tvm  # noqa: E402

from scalpel_tvm.logs import SHIPPED, TuningLog, scheduled_kernel  # noqa: E402
from scalpel_tvm.schedules.conv2d import pack_conv_weight  # noqa: E402
from scalpel_tvm.target import TargetSpec  # noqa: E402
from scalpel_tvm.timing import median_us, vm_timer  # noqa: E402
from scalpel_tvm.tuning import tuning_target  # noqa: E402
from scalpel_tvm.workloads import ConvWorkload, Workload, template_kernel  # noqa: E402


def timers(log: TuningLog, workload: ConvWorkload, target) -> tuple[dict, float]:
    """Timers of the template (best knobs) and of the fastest searched schedule of `workload`,
    on the same input and weight, and the largest difference of their outputs relative to the
    largest output."""
    records = log.records[workload.key]
    knobs = min((m for m in records if m.knobs is not None), key=lambda m: m.seconds).knobs
    searched = min((m for m in records if m.knobs is None), key=lambda m: m.seconds)
    rng = np.random.default_rng(0)
    kh, kw = workload.kernel
    x = rng.standard_normal((workload.batch, workload.channels, workload.height, workload.width))
    w = rng.standard_normal((workload.out_channels, workload.channels, kh, kw))
    bias = [rng.standard_normal(workload.out_channels)] if workload.bias else []
    out = np.zeros(workload.output_shape)
    kernels = {"template": (template_kernel(workload, knobs), pack_conv_weight(w.astype("float32"), workload.lanes, **knobs)),
               "searched": (scheduled_kernel(searched, workload, "main"), w)}
    found, outputs = {}, []
    for name, (prim, weight) in kernels.items():
        module = tvm.compile(tvm.IRModule({"main": prim}), target=target).jit()
        args = [tvm.runtime.tensor(np.asarray(a, "float32")) for a in (x, weight, *bias, out)]
        module["main"](*args)
        outputs.append(args[-1].numpy())
        found[name] = vm_timer(module, *args)
    if not np.abs(outputs[0]).max() > 0:
        raise RuntimeError(f"{workload.label}: the template wrote no output")
    return found, float(np.abs(outputs[0] - outputs[1]).max() / np.abs(outputs[0]).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=Path, default=SHIPPED / "x86-avx2")
    parser.add_argument("--target", default="x86-avx2")
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    log = TuningLog(args.logs)
    target = tuning_target(TargetSpec.preset(args.target))
    rows = []
    for key, records in log.records.items():
        workload = Workload.from_key(key)
        if not isinstance(workload, ConvWorkload) or all(m.knobs is not None for m in records):
            continue
        pair, diff = timers(log, workload, target)
        us = median_us(pair, budget_s=0.1 * args.rounds, rounds=args.rounds)
        best = {kind: min(m.seconds for m in records if (m.knobs is None) == (kind == "searched"))
                for kind in ("template", "searched")}
        rows.append({"kernel": workload.label, "key": key, "template_us": us["template"],
                     "searched_us": us["searched"], "ratio": us["searched"] / us["template"],
                     "log_picks": min(best, key=best.get), "max_relative_diff": diff,
                     "records_us": {k: v * 1e6 for k, v in best.items()}})
        r = rows[-1]
        print(f"{r['kernel']:<32} template {r['template_us']:8.1f} us  searched {r['searched_us']:8.1f} us"
              f"  searched/template {r['ratio']:.2f}  log picks {r['log_picks']}  max diff {diff:.1e}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_conv_search.json").write_text(json.dumps({"log": str(args.logs), "rows": rows}, indent=2))
    print(f"wrote {args.out / 'bench_conv_search.json'}")


if __name__ == "__main__":
    main()
