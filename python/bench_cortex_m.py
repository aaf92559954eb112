"""Cortex-M4 cycle ESTIMATES of LeNet-300-100 in int16: dense vs Scalpel (pairs) vs traditional (CSR).

    python python/bench_cortex_m.py --out out      # about 30 s; needs arm-none-eabi-gcc

Three versions of the network (random He-initialised weights in LeNet-300-100's shapes; the
pruning frontend will bring trained ones):

* dense, int16;
* Scalpel's SIMD-aware pruning for the M4's 2x16-bit SIMD: aligned pairs of inputs pruned by
  root-mean-square to the per-layer keep rates of the demo model (7% / 10% / 30% of pairs:
  92.6% of weights removed, the authors report 92.0% for LeNet-300-100), stored as pairs;
* traditional pruning: Han et al.'s per-layer densities (8% / 9% / 26%) by magnitude, stored as
  CSR.

Each is quantized per layer from the same calibration data, built into `firmware/q15_network.c`
with arm-none-eabi-gcc, checked bit for bit against the numpy reference on QEMU's mps2-an386,
and its `scalpel_infer` (one input) is priced by `scalpel_tvm.cycles` — an estimate from executed
instructions and the M4's timing table, not a measurement. Flash is the weights, indices and
biases. Writes `bench_cortex_m.json`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import tempfile
from pathlib import Path

import numpy as np
from scalpel_tvm import cortex_m, cycles, paper_nets
from scalpel_tvm.int16_mlp import quantize_mlp
from scalpel_tvm.models import LENET_300_100_KEEP
from scalpel_tvm.target import TargetSpec

PAPER = {"speedup": 9.17, "size": 0.0693, "csr_speedup_mean_all_nets": 1.90}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out")
    args = parser.parse_args()
    dense = paper_nets.network("lenet_300_100")
    models = {
        "dense": (dense, "dense"),
        "scalpel_pairs": (paper_nets.group_pruned(dense, LENET_300_100_KEEP, 2, "1xg"), "gsparse2"),
        "traditional_csr": (paper_nets.magnitude_pruned(dense, paper_nets.han_density("lenet_300_100")), "csr"),
    }
    rng = np.random.default_rng(0)
    calibration, inputs = rng.random((256, 784)), rng.random((4, 784))
    memory = TargetSpec.preset("cortex-m4").memory
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, form) in models.items():
            net = quantize_mlp(model, calibration, formats={f"fc{i}": form for i in (1, 2, 3)})
            x_q = net.quantize_input(inputs)
            elf = cortex_m.build_firmware("q15_network", cortex_m.network_header(net, x_q), Path(tmp) / name)
            got = cortex_m.network_outputs(cortex_m.run_qemu(elf))
            if not np.array_equal(got, net.forward(x_q)):
                raise SystemExit(f"{name}: the emulated M4 differs from the numpy reference")
            count = cycles.count_cycles(elf)
            weights = sum(layer.w_nk.size for layer in net.layers)
            kept = sum(int(np.count_nonzero(layer.w_nk)) for layer in net.layers)
            rows[name] = {"cycles": count.cycles, "instructions": count.instructions,
                          "cycles_by_class": count.by_class, "smuad": count.mnemonics.get("smuad", 0),
                          "flash_bytes": net.flash_bytes(), "weights_removed": 1 - kept / weights,
                          "fits_m4_flash": net.flash_bytes() <= memory["flash"],
                          "formats": [layer.format for layer in net.layers]}
    base = rows["dense"]
    for row in rows.values():
        row["speedup"] = base["cycles"] / row["cycles"]
        row["size_vs_dense"] = row["flash_bytes"] / base["flash_bytes"]
    report = {"date": datetime.date.today().isoformat(), "network": "lenet_300_100", "paper": PAPER,
              "estimate": "scalpel_tvm.cycles: executed instructions x Cortex-M4 TRM timing table",
              "results": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_cortex_m.json").write_text(json.dumps(report, indent=2))
    print(f"LeNet-300-100, int16, one input, Cortex-M4 cycle estimate ({report['date']})")
    print(f"{'version':<17}{'cycles':>10}{'speedup':>9}{'flash KB':>10}{'size':>8}{'removed':>9}  fits 512 KB")
    for name, row in rows.items():
        print(f"{name:<17}{row['cycles']:>10}{row['speedup']:>8.2f}x{row['flash_bytes'] / 1024:>10.1f}"
              f"{row['size_vs_dense']:>8.1%}{row['weights_removed']:>9.1%}  {row['fits_m4_flash']}")
    print(f"paper (Scalpel, microcontroller): {PAPER['speedup']}x, size {PAPER['size']:.2%}; "
          f"traditional pruning {PAPER['csr_speedup_mean_all_nets']}x (mean of its networks)")


if __name__ == "__main__":
    main()
