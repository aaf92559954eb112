"""Write the demo's ONNX models (LeNet-300-100 and LeNet-5, each dense and Scalpel-pruned) into the
package: trained on MNIST and pruned for x86-avx2 and x86-avx512 by the pruning frontend.

    python python/make_demo_models.py [--nets lenet_300_100,lenet5]     # 2.4 + 13.0 min, needs the train extra
    python python/make_demo_models.py --target x86-avx512 --keep-dense  # 6 min: both in groups of 16
    python python/make_demo_models.py --random                          # seconds: scalpel_tvm/models.py

Each network is trained with the frontend's recipe (`--train-epochs` 3, seed 0, the last tenth of
MNIST's training images held out) and written as `<net>_dense.onnx`; that same model pruned by
`pruning.prune_onnx` for `--target` is `<net>_scalpel_<target>.onnx`. `--keep-dense` prunes the
shipped dense model instead of training one, so the models for both targets come from the same
dense model (training is repeatable on one machine, not across CPUs); a run without it writes a
new dense model, after which the other target's pruned models must be made again. The pruned file's metadata
holds the MNIST test accuracy of both, the weights removed and the settings, and `scalpel demo`
prints them. `--random` writes the seeded builders' models instead (random He weights pruned to
the paper's structure for x86-avx2: what the demo used before the frontend existed; the tests
still build those).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).parent))

from scalpel_tvm import models  # noqa: E402
from scalpel_tvm.demo import MODEL_TARGETS, PRUNED_MODELS, demo_model_path, ensure_demo_models  # noqa: E402

# Per network: the frontend's settings (README, "Pruning frontend"): LeNet-300-100 as the CLI run
# that reached 92.7% at no test loss; LeNet-5 with one retraining epoch a round, a final
# four-epoch fine-tune and recovery rounds in node pruning (10 / 20 and 21 / 50 filters kept;
# without the recovery rounds 12 / 20 and 23 / 50; with two epochs a round and no fine-tune
# 17 / 20 and 33 / 50; with one and neither 12 / 20 and 24 / 50, but 0.20 test points lost).
SETTINGS = {
    "lenet_300_100": {"epochs": 2.0, "order_neurons": True},
    "lenet5": {"epochs": 1.0, "order_neurons": True, "finetune": 4.0, "recover": True},
}
# Where a target needs other settings, they replace the network's. Groups of 16 are coarser:
# LeNet-300-100 for x86-avx512 with the settings above ended 0.10 test points down (at the
# tolerance; the x86-avx2 model +0.12), with a four-epoch fine-tune 0.01 down. LeNet-5's mask-layer
# rounds for x86-avx512 were walked back to 19 / 20 and 33 / 50 filters (1.9x), so its model is
# pruned gradually instead, with the fractions that keep the accuracy for x86-avx2 (README,
# "Gradual node pruning meets them"): half of conv1's filters, 70% of conv2's, 93% of fc1's groups.
TARGET_SETTINGS = {
    ("lenet_300_100", "x86-avx512"): {**SETTINGS["lenet_300_100"], "finetune": 4.0},
    ("lenet5", "x86-avx512"): {"order_neurons": True, "sparsity": 0.93, "node_sparsity": 0.7,
                               "layer_sparsity": {"conv1": 0.5}, "steps": 20, "epochs": 1.0,
                               "finetune": 10.0, "orientation": "1xg", "distill": True},
}
TRAIN_EPOCHS = 3.0


def trained_and_pruned(net: str, target: str, keep_dense: bool) -> tuple[onnx.ModelProto, onnx.ModelProto, dict]:
    from bench_pruning import trained

    from scalpel_tvm import datasets, pruning

    data = datasets.load("mnist")
    validation = pruning.validation_images(data)
    started = time.time()
    dense = onnx.load(demo_model_path(net, pruned=False)) if keep_dense else trained(
        net, data, TRAIN_EPOCHS, validation)
    settings = TARGET_SETTINGS.get((net, target), SETTINGS[net])
    pruned, result, test = pruning.prune_onnx(dense, target, data, validation=validation, **settings)
    facts = {"data": "mnist", "target": target, "train_epochs": TRAIN_EPOCHS, "seed": 0, **settings,
             "test_accuracy_dense": test["dense"], "test_accuracy_pruned": test["pruned"],
             "weights_removed": round(result.weights_removed, 4),
             "nodes_kept": {name: v["nodes"] for name, v in result.layers.items()},
             "minutes": round((time.time() - started) / 60, 1)}
    return dense, pruned, facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", help="default: the networks shipped for --target (demo.PRUNED_MODELS)")
    parser.add_argument("--target", default="x86-avx2", choices=MODEL_TARGETS)
    parser.add_argument("--keep-dense", action="store_true", help="prune the shipped dense models, do not train")
    parser.add_argument("--random", action="store_true", help="the seeded random builders (no training)")
    args = parser.parse_args()
    if args.random:
        for path in ensure_demo_models(overwrite=True):
            print(f"{path}: {models.weights_removed(onnx.load(path)):.1%} of weights zero")
        return
    for net in args.nets.split(",") if args.nets else PRUNED_MODELS[args.target]:
        dense, pruned, facts = trained_and_pruned(net, args.target, args.keep_dense)
        onnx.helper.set_model_props(pruned, {"scalpel.frontend": json.dumps(facts)})
        if not args.keep_dense:
            onnx.save(dense, demo_model_path(net, pruned=False))
        onnx.save(pruned, demo_model_path(net, pruned=True, target=args.target))
        print(f"{net}: {json.dumps(facts)}")


if __name__ == "__main__":
    main()
