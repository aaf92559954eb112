"""The `scalpel` command: `scalpel demo`, `scalpel plan MODEL.onnx --target NAME`,
`scalpel tune --target NAME --model MODEL.onnx | --shapes KxN,...`,
`scalpel deploy MODEL.onnx --target cortex-m4 --out DIR --calibration X.npy`,
`scalpel prune MODEL.onnx --target NAME --data mnist --out PRUNED.onnx [--report DIR]`,
`scalpel net NAME --out MODEL.onnx [--input-shape 1x28x28]`."""
from __future__ import annotations

import argparse
import os
import sys

from .errors import ScalpelError
from .target import preset_names

CORTEX_M = ["cortex-m4", "cortex-m7", "cortex-m55", "cortex-m3", "cortex-m0"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scalpel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="prune, plan, pass, compile and time the built-in models")
    demo.add_argument("--target", choices=preset_names(),
                      help="default: the widest target the demo's models were pruned for (x86-avx512, "
                           "x86-avx2) that this CPU runs, else host")
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
    plan.add_argument("--cost", choices=["log", "analytical", "measure"], default="log",
                      help="price candidates with the tuning log's model (default; the analytical "
                           "roofline where no log exists), the roofline, or by timing each one")
    _log_options(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--plot", metavar="PNG", help="also draw the per-layer candidates")

    tune = sub.add_parser("tune", help="measure every candidate kernel into a meta_schedule log")
    tune.add_argument("--target", default="host", choices=preset_names())
    what = tune.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="an ONNX file: tune the candidates of its FC layers")
    what.add_argument("--shapes", help="FC weight shapes K x N, e.g. 784x300,300x100")
    tune.add_argument("--batch", type=int, action="append", help="batch size(s); default 1")
    tune.add_argument("--trials", type=int, default=0,
                      help="meta_schedule search trials per dense FC or conv kernel, every candidate width "
                           "(about 35 s each for FC, 30 s to 2 min for a conv at 32 trials; template "
                           "knobs are always searched); 0 skips the search")
    tune.add_argument("--logs", default="scalpel-logs",
                      help="log directory; an existing log is resumed, never overwritten")
    tune.add_argument("--rpc", metavar="HOST:PORT", help="measure through a TVM RPC tracker")
    tune.add_argument("--device-key", help="the tracker key of the devices to measure on")
    tune.add_argument("--builder-timeout", type=float, default=300,
                      help="seconds per kernel build (meta_schedule's 30 s fails on 2 cores)")

    deploy = sub.add_parser("deploy", help="write an int16 network as a Cortex-M firmware project")
    deploy.add_argument("model", help="an ONNX file: a chain of Conv / Gemm (+ Relu), MaxPool, AveragePool "
                                      "and Flatten layers (the LeNet / ConvNet family)")
    deploy.add_argument("--target", default="cortex-m4", choices=CORTEX_M)
    deploy.add_argument("--out", required=True, help="the project directory to write")
    deploy.add_argument("--calibration", required=True, metavar="NPY",
                        help="inputs like those the device will see, (samples, ...): they set "
                             "each layer's Q format; the first --inputs are built in as test inputs")
    deploy.add_argument("--inputs", type=int, default=4, help="test inputs built into the firmware")
    deploy.add_argument("--run", action="store_true",
                        help="build and run it under QEMU and check it against the numpy reference")
    deploy.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    deploy.add_argument("--objective", choices=["latency", "size"], default="latency",
                        help="each layer's format: the fewest estimated cycles, or the fewest flash "
                             "bytes (pairs with 8-bit steps: 5 bytes a pair, not 6)")
    deploy.add_argument("--checks", action="store_true",
                        help="keep TVM's argument checks in the network function: a mismatched "
                             "tensor is reported on the device, for some 12 KB of flash")

    prune = sub.add_parser("prune", help="prune a model for a target with retraining (node and SIMD-aware pruning)")
    prune.add_argument("model", help="an ONNX file of the LeNet / ConvNet family (trained, or see --train-epochs)")
    prune.add_argument("--target", required=True, choices=preset_names())
    prune.add_argument("--data", default="mnist", choices=["mnist", "fashion-mnist"], help="the data set (installed)")
    prune.add_argument("--out", required=True, help="the pruned ONNX model to write")
    prune.add_argument("--report", help="a folder for prune.json, prune.txt and prune.png")
    prune.add_argument("--tolerance", type=float, default=0.1,
                       help="accuracy points the pruned model may lose on the validation images (default 0.1)")
    prune.add_argument("--validation", type=int, metavar="IMAGES",
                       help="training images held out, half to judge each round or trial, half to confirm the "
                            "result (default a tenth, at most 10,000): more resolve a finer --tolerance")
    prune.add_argument("--epochs", type=float, default=1.0,
                       help="retraining epochs per round (more take longer and usually prune further: "
                            "LeNet-300-100 for a Cortex-M4 93.4%% removed with 1, 96.7%% with 2)")
    prune.add_argument("--train-epochs", type=float, default=0.0, help="train the model first (untrained input)")
    prune.add_argument("--step", type=float, default=0.3, help="fraction of a layer's groups a round removes")
    prune.add_argument("--rounds", type=int, default=80, help="at most this many rounds")
    prune.add_argument("--importance", choices=["rms", "max", "mean"], default="rms")
    prune.add_argument("--penalty", type=float, default=1e-4,
                       help="node pruning: the starting L1 penalty λ on the mask layers (it grows each round)")
    prune.add_argument("--method", choices=["scalpel", "traditional", "optimized"], default="scalpel",
                       help="scalpel (default), or a baseline: traditional magnitude pruning (CSR) or optimized "
                            "pruning (traditional, with layers keeping > 50%% of their weights dense)")
    prune.add_argument("--groups", choices=["aligned", "dp", "greedy"], default="aligned",
                       help="Cortex-M: groups aligned to the SIMD lanes (Scalpel), or starting anywhere in a row "
                            "(Lee et al.), chosen by their dynamic program (dp) or greedily")
    prune.add_argument("--objective", choices=["latency", "energy", "size"], default="latency",
                       help="what the layer order, node penalty and each layer's form minimise (default: the "
                            "target's predicted latency); the report shows all three")
    prune.add_argument("--dropout", type=float, default=0.0,
                       help="train and retrain with this dropout ratio before every FC layer but the first, "
                            "scaled to the connections pruning leaves (Scalpel eq. 8); default none")
    prune.add_argument("--node-penalty", choices=["cost", "uniform"], default="cost",
                       help="node pruning: weigh each layer's λ by what its nodes cost on the target (default) "
                            "or the same for all, as the paper")
    prune.add_argument("--recover", action="store_true",
                       help="node pruning: give a round that loses accuracy one recovery round at the last kept λ "
                            "with its switched-off nodes held off before undoing it (more nodes removed on the "
                            "ConvNet, fewer on LeNet-5: see the README)")
    prune.add_argument("--order-neurons", action="store_true",
                       help="SIMD-aware pruning: first reorder each hidden FC layer's neurons so alike ones share "
                            "groups (exact; more accuracy kept at the same groups cut, see the README)")
    prune.add_argument("--anneal", action="store_true",
                       help="bring the training rate down to zero along a cosine in every training call, so the "
                            "first training and each round end on a settled model (see the README)")
    prune.add_argument("--finetune", type=float, default=0.0, metavar="EPOCHS",
                       help="end with EPOCHS of retraining annealed from 1e-3, pruned weights held at zero; kept "
                            "unless the confirmation images score it lower")
    prune.add_argument("--distill", action="store_true",
                       help="retrain against the unpruned model's softened outputs as well as the labels "
                            "(knowledge distillation, half of the loss)")
    prune.add_argument("--sparsity", type=_fraction_or_auto, metavar="FRACTION|auto",
                       help="prune the grouped layers gradually to this fraction of their groups instead of "
                            "Scalpel's keep/undo rounds (the output layer left whole; accuracy reported, not kept: "
                            "see the README, 'Which groups keep accuracy'); auto: search the largest fraction "
                            "that keeps the accuracy (--search-range, --search-trials)")
    prune.add_argument("--node-sparsity", type=_fraction_or_auto, metavar="FRACTION|auto",
                       help="prune the node-pruned layers (a CPU's convs, a GPU's layers) gradually to this fraction "
                            "of their filters / neurons, in the same steps as --sparsity's groups, instead of the "
                            "mask layers' rounds; auto: search it")
    prune.add_argument("--search-range", metavar="[groups=|nodes=]LOW:HIGH", nargs="+",
                       help="with auto: the fractions searched, HIGH taken as too far (default 0:0.97 for groups, "
                            "0:0.9 for nodes); with both auto, groups=LOW:HIGH and nodes=LOW:HIGH set one each")
    prune.add_argument("--search-trials", type=int, default=4,
                       help="with auto: gradual runs bisecting the range (default 4: a sixteenth of it)")
    prune.add_argument("--search-per-layer", action="store_true",
                       help="with auto: search each layer's own fraction, the one the cost model prices slowest "
                            "first with the others whole, then the slowest left (--search-trials runs per layer); "
                            "with --sparsity auto --node-sparsity auto each layer's of the kind it is pruned in")
    prune.add_argument("--steps", type=int, default=10,
                       help="with --sparsity / --node-sparsity: the gradual steps, each retrained")
    prune.add_argument("--layer-sparsity", action="append", metavar="LAYER=FRACTION", default=[],
                       help="with --sparsity / --node-sparsity: this layer's own fraction of its groups or nodes "
                            "(repeatable), e.g. conv1=0.5")
    prune.add_argument("--orientation", choices=["1xg", "gx1"],
                       help="x86 FC groups: G inputs of one output (1xg) or G outputs of one input (gx1, default)")
    prune.add_argument("--limit", type=int, help="train on the first N training images only (quick runs)")
    prune.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    prune.add_argument("--checkpoint", help="where the run's state is kept after every round (default: OUT.checkpoint); "
                                            "the same command run again resumes from it")
    prune.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")

    net = sub.add_parser("net", help="write one of the paper's networks as an ONNX file (untrained: He-initialised)")
    net.add_argument("name", help="lenet_300_100, lenet5, convnet, nin or alexnet")
    net.add_argument("--out", required=True, help="the ONNX file to write")
    net.add_argument("--input-shape", help="CxHxW replacing the paper's input, e.g. 1x28x28 for the ConvNet on "
                                           "Fashion-MNIST (the stand-in for CIFAR-10)")
    net.add_argument("--seed", type=int, default=0, help="the weights' random seed")
    net.add_argument("--overwrite", action="store_true", help="replace an existing --out")

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
        elif args.command == "tune":
            _tune(args)
        elif args.command == "prune":
            _prune(args)
        elif args.command == "net":
            _net(args)
        elif args.command == "deploy":
            from .deploy import deploy as deploy_project, load_calibration, report_text

            report = deploy_project(args.model, args.target, args.out, load_calibration(args.calibration),
                                    inputs=args.inputs, run=args.run, overwrite=args.overwrite,
                                    objective=args.objective, checks=args.checks)
            print(report_text(report), end="")
    except ScalpelError as err:
        print(f"scalpel: error: {err}", file=sys.stderr)
        return 2
    return 0


def _plan(args) -> None:
    from .cost import MeasuredCost
    from .onnx_import import import_onnx
    from .planner import as_spec, plan

    from .cost import AnalyticalCost
    from .logs import TuningLog

    spec = as_spec(args.target)
    if spec.parallelism == "low":
        _plan_cortex_m(args, spec)
        return
    model = {"measure": MeasuredCost, "analytical": AnalyticalCost}.get(args.cost)
    if spec.parallelism == "high" and args.cost == "analytical":
        model = None  # the GPU's cost model is its roofline (gpu_cost.GpuCost), the default
    logs = TuningLog(args.logs, skip_corrupt=args.skip_corrupt) if args.logs else None
    result = plan(import_onnx(args.model, args.batch), spec, cost=model(spec) if model else None,
                  logs=logs)
    print(result.to_json() if args.json else result.table())
    if args.plot:
        from .plots import plot_plan

        plot_plan(result, args.plot)


def _prune(args) -> None:
    from pathlib import Path

    import onnx

    from . import datasets, prune_report
    from .gradual_pruning import parse_layer_sparsity
    from .onnx_import import load_onnx
    from .pruning import prune_onnx

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ScalpelError(f"{out} exists; choose another --out or pass --overwrite")
    searched = [kind for kind in ("sparsity", "node_sparsity") if getattr(args, kind) == "auto"]
    if len(searched) > 1 and not args.search_per_layer:
        raise ScalpelError("search one fraction at a time: give --sparsity or --node-sparsity a number, the other "
                           "auto; or search each layer's own fraction of either with --search-per-layer")
    for option, given in (("--search-range", args.search_range), ("--search-per-layer", args.search_per_layer)):
        if given and not searched:
            raise ScalpelError(f"{option} is for a searched fraction: --sparsity auto or --node-sparsity auto")
    if searched:
        from .sparsity_search import parse_ranges, search_onnx

        ranges = parse_ranges(args.search_range, searched)  # before the model and data load
    model = load_onnx(args.model)
    data = datasets.load(args.data, limit=args.limit)
    checkpoint = args.checkpoint or f"{out}.checkpoint"
    layer_sparsity = parse_layer_sparsity(args.layer_sparsity)
    options = dict(tolerance=args.tolerance / 100, validation=args.validation, epochs=args.epochs, step=args.step,
                   how=args.importance, max_rounds=args.rounds, penalty=args.penalty, node_penalty=args.node_penalty,
                   method=args.method, grouping=args.groups, objective=args.objective, dropout=args.dropout, recover=args.recover,
                   order_neurons=args.order_neurons, anneal=args.anneal, finetune=args.finetune, distill=args.distill,
                   orientation=args.orientation, steps=args.steps, layer_sparsity=layer_sparsity)
    fractions = {kind: getattr(args, kind) for kind in ("sparsity", "node_sparsity") if kind not in searched}
    search = None
    try:
        if searched:
            pruned, result, test, search = search_onnx(model, args.target, data, ranges=ranges,
                                                       trials=args.search_trials, train_epochs=args.train_epochs,
                                                       per_layer=args.search_per_layer, checkpoint=checkpoint,
                                                       restart=args.restart,
                                                       **options, **fractions)
        else:
            pruned, result, test = prune_onnx(model, args.target, data, train_epochs=args.train_epochs,
                                              checkpoint=checkpoint, restart=args.restart, **options, **fractions)
    except KeyboardInterrupt:
        raise ScalpelError(f"interrupted; the same command resumes from {checkpoint} (its last finished round)") from None
    onnx.save(pruned, out)
    if search is not None and result is None:
        report = {"target": args.target, "settings": {"tolerance": args.tolerance / 100}, "search": search.as_dict()}
        if args.report:
            prune_report.write(report, Path(args.report))
        print(prune_report.table(report))
        print(f"wrote {out}: the trained model, unpruned")
        return
    report = prune_report.as_dict(result, test, args.target, {
        "method": args.method, "data": args.data, "tolerance": args.tolerance / 100, "epochs": args.epochs, "step": args.step,
        "importance": args.importance, "penalty": args.penalty, "node_penalty": args.node_penalty, "groups": args.groups,
        "objective": args.objective, "dropout": args.dropout, "recover": args.recover, "train_epochs": args.train_epochs,
        "order_neurons": args.order_neurons, "anneal": args.anneal, "finetune": args.finetune, "distill": args.distill,
        "limit": args.limit, "validation": args.validation, "orientation": args.orientation, "sparsity": args.sparsity,
        "node_sparsity": args.node_sparsity, "steps": args.steps if args.sparsity or args.node_sparsity else None,
        "layer_sparsity": layer_sparsity})
    if search is not None:
        if args.search_per_layer:  # each layer its own fraction; those no trial held for stayed whole
            layers = {stage.layer: search.fractions.get(stage.layer, 0.0) for stage in search.stages}
            report["settings"].update({**dict.fromkeys(search.kinds), "layer_sparsity": {**(layer_sparsity or {}),
                                                                                       **layers}})
        else:
            report["settings"][search.kind] = search.chosen.fraction
        report["settings"]["search_trials"] = args.search_trials
        report["search"] = search.as_dict()
    if args.report:
        prune_report.write(report, Path(args.report))
    print(prune_report.table(report))
    print(f"wrote {out}")


def _fraction_or_auto(text: str):
    """A gradual fraction, or "auto" to have it searched."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a fraction such as 0.9, or auto; got {text!r}") from None


def _net(args) -> None:
    from pathlib import Path

    import onnx

    from . import paper_nets

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ScalpelError(f"{out} exists; choose another --out or pass --overwrite")
    shape = None
    if args.input_shape:
        try:
            shape = tuple(int(d) for d in args.input_shape.lower().split("x"))
        except ValueError:
            shape = ()
        if len(shape) != 3 or min(shape) < 1:
            raise ScalpelError(f"--input-shape {args.input_shape!r} is not CxHxW, e.g. 1x28x28")
    try:  # an unknown name, or an input shape on a flat-input network
        model = paper_nets.network(args.name, seed=args.seed, input_shape=shape)
    except ValueError as err:
        raise ScalpelError(str(err)) from None
    onnx.save(model, out)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    print(f"wrote {out} ({args.name}, input {'x'.join(map(str, dims))}, untrained: "
          "scalpel prune --train-epochs N trains it first)")


def _plan_cortex_m(args, spec) -> None:
    """The int16 plan: each layer's estimated cycles in every format the core can use. The
    formats do not depend on the Q formats, so any inputs of the right shape calibrate it."""
    import json

    import numpy as np

    from .int16_net import quantize_net, read_chain
    from .m4_cost import plan_rows, plan_table
    from .onnx_import import load_onnx

    if args.plot:
        raise ScalpelError("--plot draws CPU and GPU plans; for Cortex-M use --json or "
                           "python/bench_cortex_m.py's plot")
    model = load_onnx(args.model)
    shape, _ = read_chain(model)
    mcpu = spec.target.attrs["mcpu"]
    net = quantize_net(model, np.random.default_rng(0).random((4, *shape)), mcpu=mcpu)
    rows = plan_rows(net, mcpu)
    print(json.dumps(rows, indent=2) if args.json else plan_table(rows, mcpu))


def _log_options(parser) -> None:
    parser.add_argument("--logs", help="a tuning log directory (default: the one shipped for the "
                                       "target, if any)")
    parser.add_argument("--skip-corrupt", action="store_true",
                        help="leave out corrupt log lines (each is reported) instead of failing")


def _tune(args) -> None:
    from .onnx_import import import_onnx
    from .planner import as_spec
    from .tuning import layer_workloads, model_workloads, parse_shapes, tune

    spec = as_spec(args.target)
    if spec.parallelism == "high":
        raise ScalpelError("CUDA kernels are tuned in three steps, building here and timing on the GPU "
                           "machine with TVM's runtime alone: python python/tune_cuda.py build --arch sm_XX "
                           "--out DIR MODEL.onnx, then `time DIR` on the GPU machine, then `record DIR --logs LOGS`")
    batches = tuple(args.batch or (1,))
    if args.model:
        workloads = [wl for batch in batches
                     for wl in model_workloads(import_onnx(args.model, batch), spec)]
    else:
        workloads = [wl for k, n in parse_shapes(args.shapes) for batch in batches
                     for wl in layer_workloads(batch, k, n, spec.lanes("float32"))]
    log = tune(workloads, spec, args.logs, trials=args.trials, rpc=args.rpc,
               device_key=args.device_key, builder_timeout=args.builder_timeout)
    print(f"{len(log)} records for {len(log.records)} kernels in {args.logs}")
    print(f"use it: scalpel plan MODEL --target {args.target} --logs {args.logs}, "
          f"or scalpel_tvm.Pass(target, logs={str(args.logs)!r})")


if __name__ == "__main__":
    sys.exit(main())
