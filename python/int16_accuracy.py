"""MNIST test-set accuracy of the int16 Cortex-M networks against their float models.

    bash scripts/int16_accuracy.sh --out out        # installs torch (CPU) and MNIST; ~4 min

For LeNet-300-100 and LeNet-5 (scalpel_tvm/paper_nets.py's architectures): train the float
network with PyTorch (scalpel_tvm.torch_chain: Adam), prune it the way the Cortex-M benchmark does
(aligned pairs of inputs by root-mean-square, bench_cortex_m.scalpel_density's rates, at once)
and fine-tune with the pruned weights held at zero, then put the weights into the ONNX model and
quantize it to int16 from 256 training images (scalpel_tvm.int16_net, formats from the Cortex-M planner). Accuracy on the 10,000 test
images: float (onnxruntime) and int16 (the numpy reference, which the firmware equals bit for bit;
the first test images are also run on QEMU's mps2-an386 to show it). This is not the pruning
frontend (no per-layer search, a fixed schedule): it gives the int16 path trained weights to be
judged on. Writes `int16_accuracy.json`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_cortex_m import scalpel_density  # noqa: E402

from scalpel_tvm import cortex_m, datasets, paper_nets, pruning, torch_chain  # noqa: E402
from scalpel_tvm.int16_net import quantize_net  # noqa: E402


def pair_masks(net, density: dict) -> dict:
    """SIMD-aware pruning at fixed rates: per layer, keep `density` of the aligned pairs of
    inputs (of the [N, C*KH*KW] weight) with the largest RMS (pruning.group_mask)."""
    masks = {}
    for layer, w_nk in torch_chain.weights(net).items():
        alive = pruning.groups_alive(w_nk, 2, "1xg")
        masks[layer] = pruning.group_mask(w_nk, int(round(density[layer] * alive)), 2, "1xg")
    return masks


def evaluate(name: str, onnx_model, train_x, test, qemu_images: int, tmp: Path) -> dict:
    import onnxruntime as ort

    shape = paper_nets.ARCHITECTURES[name][0][1:]
    x_test = test[0].reshape(-1, *shape)
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    float_logits = session.run(None, {"input": x_test.astype(np.float32)})[0]
    net = quantize_net(onnx_model, train_x[:256].reshape(-1, *shape))
    int16_logits = net.forward(net.quantize_input(x_test))
    x_q = net.quantize_input(x_test[:qemu_images])
    elf = cortex_m.build_network(net, x_q, tmp / name)
    on_m4 = cortex_m.network_outputs(cortex_m.run_qemu(elf, timeout_s=300))
    return {"float_accuracy": float(np.mean(float_logits.argmax(1) == test[1])),
            "int16_accuracy": float(np.mean(int16_logits.argmax(1) == test[1])),
            "same_prediction": float(np.mean(float_logits.argmax(1) == int16_logits.argmax(1))),
            "qemu_images": qemu_images, "qemu_equals_reference": bool(np.array_equal(on_m4, int16_logits[:qemu_images])),
            "formats": {layer.name: layer.format for layer in net.layers if hasattr(layer, "w_nk")},
            "saturated_outputs_on_calibration": net.saturation,
            "saturated_outputs_on_test_set": net.saturated(net.quantize_input(x_test))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (and as many to fine-tune)")
    parser.add_argument("--qemu-images", type=int, default=20, help="test images also run on the emulated M4")
    args = parser.parse_args()
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(2)
    data = datasets.load("mnist")
    train_data, test = (data.train_x, data.train_y), (data.test_x.reshape(len(data.test_x), -1), data.test_y)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("lenet_300_100", "lenet5"):
            model = paper_nets.network(name)
            net = torch_chain.chain_net(model)
            torch_chain.train(net, *train_data, epochs=args.epochs, desc=f"{name} dense")
            dense = evaluate(name, torch_chain.write_weights(model, net), train_data[0], test, args.qemu_images, Path(tmp))
            masks = pair_masks(net, scalpel_density(name))
            torch_chain.train(net, *train_data, epochs=args.epochs, masks=masks, lr=3e-4,
                              desc=f"{name} pruned, fine-tune")
            pruned = evaluate(name, torch_chain.write_weights(model, net), train_data[0], test, args.qemu_images, Path(tmp))
            kept = sum(float(m.sum()) for m in masks.values()) / sum(m.size for m in masks.values())
            results[name] = {"dense": dense, "scalpel_pairs": {**pruned, "weights_removed": 1 - kept}}
    report = {"date": datetime.date.today().isoformat(), "epochs": args.epochs, "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "int16_accuracy.json").write_text(json.dumps(report, indent=2))
    print(f"MNIST test set (10,000 images), {report['date']}: float vs int16 (the firmware's integers)")
    print(f"{'network':<15}{'version':<15}{'float':>8}{'int16':>8}{'same pick':>11}  QEMU = reference      "
          "saturated outputs (test set)")
    for name, rows in results.items():
        for version, row in rows.items():
            print(f"{name:<15}{version:<15}{row['float_accuracy']:>8.2%}{row['int16_accuracy']:>8.2%}"
                  f"{row['same_prediction']:>11.2%}  {row['qemu_equals_reference']} ({row['qemu_images']} images)"
                  f"  {row['saturated_outputs_on_test_set'] or 'none'}")


if __name__ == "__main__":
    main()
