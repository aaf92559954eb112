"""The `scalpel` command: `scalpel demo`, `scalpel plan MODEL.onnx --target NAME`."""
from __future__ import annotations

import argparse
import os
import sys

from .errors import ScalpelError
from .target import preset_names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scalpel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="prune, plan, pass, compile and time the built-in models")
    demo.add_argument("--target", default="host", choices=preset_names())
    demo.add_argument("--network", action="append", choices=["lenet_300_100", "lenet5"],
                      help="which demo network(s); default both")
    demo.add_argument("--batch", type=int, action="append", help="batch size(s); default 1 and 50")
    demo.add_argument("--out", default="out", help="folder for demo.json and demo.png")
    demo.add_argument("--rounds", type=int, default=15,
                      help="interleaved timing rounds (the median is shown)")

    plan = sub.add_parser("plan", help="print the per-layer plan for an ONNX model")
    plan.add_argument("model", help="an ONNX file")
    plan.add_argument("--target", default="host", choices=preset_names())
    plan.add_argument("--batch", type=int, default=1, help="batch size the model is compiled for")
    plan.add_argument("--cost", choices=["analytical", "measure"], default="analytical",
                      help="estimate with the calibrated model, or compile and time each candidate")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--plot", metavar="PNG", help="also draw the per-layer candidates")

    args = parser.parse_args(argv)
    # Single-threaded by default so timings compare like with like (onnxruntime too).
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    try:
        if args.command == "demo":
            from .demo import run_demo

            run_demo(args.target, tuple(args.network or ("lenet_300_100", "lenet5")),
                     tuple(args.batch or (1, 50)), args.out, args.rounds)
        elif args.command == "plan":
            _plan(args)
    except ScalpelError as err:
        print(f"scalpel: error: {err}", file=sys.stderr)
        return 2
    return 0


def _plan(args) -> None:
    from .cost import MeasuredCost
    from .onnx_import import import_onnx
    from .planner import as_spec, plan

    spec = as_spec(args.target)
    cost = MeasuredCost(spec) if args.cost == "measure" else None
    result = plan(import_onnx(args.model, args.batch), spec, cost=cost)
    print(result.to_json() if args.json else result.table())
    if args.plot:
        from .plots import plot_plan

        plot_plan(result, args.plot)


if __name__ == "__main__":
    sys.exit(main())
