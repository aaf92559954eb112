"""CUDA tuning: the tile settings of every conv layer measured on the GPU, into a tuning log.

    python python/tune_cuda.py build --arch sm_90 --out cuda_tune MODEL.onnx ... [--networks NAME ...]
    python python/tune_cuda.py time cuda_tune                   # on the GPU machine: TVM's runtime alone
    python python/tune_cuda.py record cuda_tune --logs LOGDIR   # times.json -> a meta_schedule log

`build` compiles each conv layer of the models (at batch 50, the GPU benchmark's, or `--batch`; as
`Pass(cuda)` shrinks them) with each of dlight's tile settings in `gpu.CONV_TILE_SPACE`; `--networks`
adds the paper's networks, dense and node-pruned with the authors' node counts; `--logs LOG`
leaves out the settings LOG already holds (after `CONV_TILE_SPACE` grew). `time` writes
`times.json` next to the build; `record` commits it to LOGDIR, which `Pass(cuda, logs=LOGDIR)`
applies. The log shipped for sm_90 (`scalpel_tvm/data/logs/cuda-sm_90`) was made this way on an
H100 for the paper's networks (see the README). See `scalpel_tvm/cuda_tuning.py` for why it is
three steps.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def run_build(args):
    import onnx
    import tvm

    from scalpel_tvm import paper_nets
    from scalpel_tvm.cuda_tuning import build_candidates, model_conv_workloads
    from scalpel_tvm.target import TargetSpec

    spec = TargetSpec.from_target(tvm.target.Target({"kind": "cuda", "arch": args.arch}))
    models = [onnx.load(path) for path in args.models]
    for name in args.networks or []:
        dense = paper_nets.network(name)
        models += [dense, paper_nets.node_pruned(dense, paper_nets.NODES_KEPT[name])]
    if not models:
        sys.exit("nothing to tune: name ONNX files or --networks")
    started = time.time()
    workloads = model_conv_workloads(models, spec, args.batch)
    done = None
    if args.logs:
        from scalpel_tvm.logs import TuningLog, resolve_log

        done = resolve_log(spec, None) if args.logs == "shipped" else TuningLog(args.logs)
    count = build_candidates(workloads, spec, args.out, done)
    print(f"built {count} kernels ({len(workloads)} conv shapes) in {time.time() - started:.0f} s; "
          f"time them on the GPU with: python python/tune_cuda.py time {args.out}")


def run_time(args):
    from scalpel_tvm.cuda_tuning import time_candidates

    started = time.time()
    times = time_candidates(args.build, rounds=args.rounds,
                            progress=lambda ok, bad: print(f"timed {ok} kernels, {bad} wrong (recorded as failed)"))
    (Path(args.build) / "times.json").write_text(json.dumps(times))
    print(f"wrote {args.build}/times.json in {time.time() - started:.0f} s")


def run_record(args):
    import tvm

    from scalpel_tvm.cuda_tuning import record_times
    from scalpel_tvm.target import TargetSpec

    build = Path(args.build)
    manifest = json.loads((build / "candidates.json").read_text())
    times = json.loads(Path(args.times or build / "times.json").read_text())
    spec = TargetSpec.from_target(tvm.target.Target({"kind": "cuda", "arch": manifest["arch"]}))
    written = record_times(build, times, args.logs, spec)
    print(f"{written} records added to {args.logs}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="compile the candidates (any machine)")
    build.add_argument("models", nargs="*", help="ONNX models whose conv layers to tune")
    build.add_argument("--networks", nargs="*", help="the paper's networks, dense and node-pruned")
    build.add_argument("--arch", required=True, help="the GPU's arch, e.g. sm_90")
    build.add_argument("--batch", type=int, default=50)
    build.add_argument("--logs", help="skip the settings this log (a directory, or `shipped`) already holds")
    build.add_argument("--out", default="cuda_tune")
    timing = sub.add_parser("time", help="time the candidates on this machine's GPU")
    timing.add_argument("build")
    timing.add_argument("--rounds", type=int, default=5)
    record = sub.add_parser("record", help="commit the times to a tuning log")
    record.add_argument("build")
    record.add_argument("--logs", required=True)
    record.add_argument("--times", help="default: BUILD/times.json")
    args = parser.parse_args()
    {"build": run_build, "time": run_time, "record": run_record}[args.command](args)


if __name__ == "__main__":
    main()
