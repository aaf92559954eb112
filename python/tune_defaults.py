"""Produce a tuning log shipped in the package: `scalpel_tvm/data/logs/<target>/`.

Measures, on this machine, every template setting of the candidate kernels of

* the demo models' FC and conv layers (LeNet-300-100 and LeNet-5 as the demo compiles them for
  `--target`, pruned, batch 1 and 50, and
  the convs of the unpruned models the demo compares with), so
  `scalpel demo`, `scalpel plan` and `Pass(target)` find exact records for them, and
* a sweep of FC shapes (below) at batch 1 and 50, each dense, node-shrunk to 90/75/50/25% and
  grouped-sparse G×1 / 1×G at 10/30/50/70/90% group sparsity: the training data of the seconds model
  that prices everything not tuned;

then runs meta_schedule's search (`--trials`, default 32) on the demo models' dense FC kernels
at their pruned shapes and on their conv kernels as the Pass lowers them, whose records compete
with the templates'.

Resumable: re-running tops the log up. After a kernel template changes, `--remeasure FORM ...`
drops every record of those forms (`gsparse_gx1`, `gsparse_1xg`, `dense`, `conv`) and measures
their template settings again, the earlier demo models' workloads included, so no record
describes code the Pass no longer generates (interrupted, the same command starts those forms
over). meta_schedule's searched records of a dropped dense or conv workload come back only for
the current demo models (the last step). The log is shipped xz-compressed (`xz -dk` its files
to open it with meta_schedule's JSONDatabase). Run on an otherwise idle machine:
    python python/tune_defaults.py [--target x86-avx2|x86-avx512] [--out DIR] [--trials N] [--remeasure FORM ...]
"""
from __future__ import annotations

import argparse
import lzma
import os
import time
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")

from scalpel_tvm.logs import SHIPPED, drop_records, is_log  # noqa: E402
from scalpel_tvm.demo import MODEL_TARGETS, NETWORKS, demo_model_path, pruned_model_path  # noqa: E402
from scalpel_tvm.onnx_import import import_onnx, load_onnx  # noqa: E402
from scalpel_tvm.target import TargetSpec  # noqa: E402
from scalpel_tvm.tuning import layer_workloads, model_workloads, tune  # noqa: E402
from scalpel_tvm.workloads import FORMS, Workload  # noqa: E402

SWEEP = [(784, 300), (300, 100), (100, 10), (800, 500), (500, 10), (1024, 1024), (2048, 512),
         (4096, 1024), (256, 64), (120, 84), (640, 640), (200, 400), (1600, 128), (3072, 256)]
BATCHES = (1, 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="x86-avx2", choices=MODEL_TARGETS)
    parser.add_argument("--out", type=Path, help="default: the shipped log of --target")
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--remeasure", nargs="+", default=[], choices=[*FORMS, "conv"], metavar="FORM",
                        help=f"drop the records of these forms ({', '.join(FORMS)}, conv) and measure them again")
    args = parser.parse_args()
    spec = TargetSpec.preset(args.target)
    args.out = args.out or SHIPPED / args.target
    lanes = spec.lanes("float32")
    started = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    _decompress(args.out)
    remeasured = drop_records(args.out, args.remeasure) if args.remeasure and is_log(args.out) else []
    if remeasured:
        print(f"measuring the {len(remeasured)} workloads of {', '.join(args.remeasure)} again")
        tune(remeasured, spec, args.out)
    demo, searched = [], []
    for name in NETWORKS:
        for batch in BATCHES:
            pruned, dense = (import_onnx(load_onnx(path), batch)
                             for path in (pruned_model_path(name, spec), demo_model_path(name, pruned=False)))
            found = model_workloads(pruned, spec)
            fc = [wl for wl in found if isinstance(wl, Workload)]
            # The convs as the Pass lowers them, pruned and in the dense baseline.
            convs = [wl for mod in (pruned, dense)
                     for wl in model_workloads(mod, spec, kinds=("conv",), conv_fractions=())]
            demo += found + convs
            searched += [wl for wl in fc if wl.form == "dense" and wl.n in _kept_widths(fc)] + convs
    tune(demo, spec, args.out)
    sweep = [wl for k, n in SWEEP for batch in BATCHES for wl in layer_workloads(batch, k, n, lanes)]
    tune(sweep, spec, args.out)
    log = tune(list(dict.fromkeys(searched)), spec, args.out, trials=args.trials)
    print(f"{len(log)} records for {len(log.records)} workloads in {args.out} "
          f"({(time.time() - started) / 60:.1f} min)")
    _compress(args.out)


def _decompress(directory: Path) -> None:
    """Resume from a shipped (compressed) log."""
    for packed in directory.glob("*.json.xz"):
        plain = packed.with_suffix("")
        if not plain.exists():
            plain.write_bytes(lzma.decompress(packed.read_bytes()))


def _compress(directory: Path) -> None:
    """Ship xz files: the workload file is 16 MB of base64 IR that compresses 300-fold."""
    for plain in directory.glob("*.json"):
        plain.with_name(plain.name + ".xz").write_bytes(lzma.compress(plain.read_bytes()))
        plain.unlink()


def _kept_widths(workloads) -> set[int]:
    """The widths the sparse candidates were made at: the layers' node-shrunk widths."""
    return {wl.n for wl in workloads if wl.form != "dense"}


if __name__ == "__main__":
    main()
