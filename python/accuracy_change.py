"""Score two ONNX models on a data set's test images and say how far apart they really are.

A pruned model "within 0.1 points" of its dense model is ten MNIST test images away; whether
that is a loss or luck depends on how many images changed. This runs both models with
onnxruntime and prints each one's accuracy and the paired change with its 95% interval
(`scalpel_tvm.paired_accuracy`). With no models given, it scores the demo's shipped pairs.

    python python/accuracy_change.py [DENSE.onnx PRUNED.onnx] [--data mnist]
"""
import argparse
import sys

import onnx

from scalpel_tvm import ScalpelError, datasets
from scalpel_tvm.demo import NETWORKS, demo_model_path
from scalpel_tvm.paired_accuracy import describe, onnx_correct, paired_difference


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="DENSE.onnx PRUNED.onnx (default: the demo's shipped pairs)")
    parser.add_argument("--data", default="mnist", choices=datasets.NAMES)
    args = parser.parse_args(argv)
    if len(args.models) not in (0, 2):
        parser.error("give two models (dense, then pruned) or none")
    pairs = ([tuple(args.models)] if args.models else
             [(demo_model_path(net, False), demo_model_path(net, True)) for net in sorted(NETWORKS)])
    data = datasets.load(args.data)
    try:
        for dense_path, pruned_path in pairs:
            dense, pruned = (onnx_correct(onnx.load(str(path)), data) for path in (dense_path, pruned_path))
            print(f"{dense_path} {dense.mean():.2%} -> {pruned_path} {pruned.mean():.2%}: "
                  f"{describe(paired_difference(dense, pruned))}")
    except ScalpelError as error:
        print(f"accuracy_change: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
