"""Cortex-M4 cycle ESTIMATES of the paper's networks in int16: dense vs Scalpel vs traditional pruning.

    python python/bench_cortex_m.py nets --out out     # about 2 minutes; needs arm-none-eabi-gcc
    python python/bench_cortex_m.py nets --frontend lenet_300_100=pruned.onnx   # + a model scalpel prune made
    python python/bench_cortex_m.py calibrate          # refits data/cost_cortex_m.json (~10 min)

`nets` builds LeNet-300-100, LeNet-5 and ConvNet (scalpel_tvm/paper_nets.py: the authors'
architectures with random He-initialised weights; the pruning frontend will bring trained ones)
three ways, int16, from the same calibration data:

* dense;
* Scalpel for a microcontroller: SIMD-aware pruning of every layer in aligned pairs of inputs
  (conv weights as their im2col [N, C*KH*KW] rows), the pairs with the lowest root-mean-square
  removed, each layer stored in the format the Cortex-M planner (scalpel_tvm/m4_cost.py) picks;
* the same Scalpel pruning with each layer's format chosen for size, not cycles (`scalpel deploy
  --objective size`: pairs with 8-bit steps where they are the smallest);
* traditional pruning (Han et al.): their per-layer densities, by magnitude, stored as CSR.

Pruning rates (until the frontend prunes trained weights): LeNet-300-100 at the demo model's
keep rates (7/10/30%: 92.6% removed; the authors' code reports 92.0%); LeNet-5 at Han et al.'s
per-layer profile scaled to the 96.8% the authors' SIMD-aware pruning reaches; ConvNet at Han
et al.'s AlexNet rates by layer kind (no SIMD-aware rate is published for it). Traditional pruning
uses Han et al.'s own densities (scalpel_tvm.paper_nets.HAN_KEPT).

Every version runs on QEMU's mps2-an386 and must equal the numpy reference bit for bit; its
`scalpel_infer` (one input) is priced by `scalpel_tvm.cycles` — an estimate from executed
instructions and the M4's timing table, not a measurement. Flash counts weights, indices and
biases; SRAM counts the activation arena, the im2col column and the deepest stack of one
inference; code is the firmware's functions. It also says which of the paper's five networks fit
the M4 board (128 KB SRAM / 512 KB flash). Writes `bench_cortex_m.json` and `bench_cortex_m.png`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from scalpel_tvm import cortex_m, cycles, m4_cost, paper_nets
from scalpel_tvm.int16_net import QuantizedLinear, quantize_net, read_chain
from scalpel_tvm.models import LENET_300_100_KEEP
from scalpel_tvm.target import TargetSpec

PAPER = {"lenet_300_100": {"speedup": 9.17, "size": 0.0693},
         "lenet5": {"speedup": 3.51, "size": 0.0672},
         "convnet": {"speedup": 1.38, "size": 0.4095},
         "traditional_mean_speedup": 1.90}
AUTHORS_SIMD_REMOVED = {"lenet5": 0.968}  # github.com/jiecaoyu/scalpel-1, SIMD_Aware_MNIST
NETS = ("lenet_300_100", "lenet5", "convnet")


def scalpel_density(name: str) -> dict[str, float]:
    """Per-layer fraction of pairs kept by SIMD-aware pruning (see module doc)."""
    if name == "lenet_300_100":
        return dict(LENET_300_100_KEEP)
    han = paper_nets.han_density(name)
    if name not in AUTHORS_SIMD_REMOVED:
        return han
    _, layers = read_chain(paper_nets.network(name))
    sizes = {layer["name"]: layer["w_nk"].size for layer in layers if "w_nk" in layer}
    kept = sum(han[n] * sizes[n] for n in han) / sum(sizes.values())
    scale = (1 - AUTHORS_SIMD_REMOVED[name]) / kept
    return {n: min(1.0, d * scale) for n, d in han.items()}


VERSIONS = ("dense", "scalpel", "scalpel_size", "traditional_csr")


def versions(name: str) -> dict:
    """version -> (ONNX model, forced formats or None for the planner's, the planner's objective)."""
    dense = paper_nets.network(name)
    layers = list(paper_nets.layer_kinds(name))
    scalpel = paper_nets.group_pruned(dense, scalpel_density(name), 2, "1xg")
    return {
        "dense": (dense, dict.fromkeys(layers, "dense"), "latency"),
        "scalpel": (scalpel, None, "latency"),
        "scalpel_size": (scalpel, None, "size"),
        "traditional_csr": (paper_nets.magnitude_pruned(dense, paper_nets.han_density(name)),
                            dict.fromkeys(layers, "csr"), "latency"),
    }


def measure(name: str, model, formats, objective: str, tmp: Path, rng) -> dict:
    in_shape = read_chain(model)[0]  # the model's own input (the ConvNet on 28x28 Fashion-MNIST too)
    net = quantize_net(model, rng.random((32, *in_shape)), formats=formats, objective=objective)
    x_q = net.quantize_input(rng.random((2, *in_shape)))
    elf = cortex_m.build_network(net, x_q, tmp)
    if not np.array_equal(cortex_m.network_outputs(cortex_m.run_qemu(elf)), net.forward(x_q)):
        raise SystemExit(f"{name}: the emulated M4 differs from the numpy reference")
    count = cycles.count_cycles(elf)
    cost = m4_cost.CortexMCost.for_core("cortex-m4")
    linear = [layer for layer in net.layers if isinstance(layer, QuantizedLinear)]
    weights = sum(layer.w_nk.size for layer in linear)
    sram = net.activation_bytes() + count.stack_bytes
    return {"cycles": count.cycles, "instructions": count.instructions, "smuad": count.mnemonics.get("smuad", 0),
            "predicted_cycles": round(sum(cost.cycles(layer) for layer in net.layers)),
            "flash_bytes": net.flash_bytes(), "sram_bytes": sram, "stack_bytes": count.stack_bytes,
            "code_bytes": cortex_m.code_bytes(elf),
            "weights_removed": 1 - sum(int(np.count_nonzero(layer.w_nk)) for layer in linear) / weights,
            "formats": {layer.name: layer.format for layer in linear},
            "saturated_outputs": net.saturation}


def network_memory(name: str) -> dict:
    """Flash of the dense and pruned weights and the activation SRAM of a network, from its
    shapes (no build): dense int16, and Scalpel's pairs at its densities when smaller."""
    _, dense_layers = read_chain(paper_nets.network(name))
    _, pruned_layers = read_chain(paper_nets.group_pruned(paper_nets.network(name), scalpel_density(name), 2, "1xg"))
    dense = pruned = 0
    arena = column = 0
    for d, p in zip(dense_layers, pruned_layers):
        window = d["window"]
        in_size = window.in_size if window else d["w_nk"].shape[1] if "w_nk" in d else 0
        out_size = (d["w_nk"].shape[0] if "w_nk" in d else window.c) * (window.oh * window.ow if window else 1)
        arena = max(arena, in_size + out_size)
        if "w_nk" not in d:
            continue
        n = d["w_nk"].shape[0]
        column = max(column, window.column if window else 0)
        dense += 2 * d["w_nk"].size + 4 * n
        pruned += min(2 * d["w_nk"].size, 6 * m4_cost.pairs_held(p["w_nk"]) + 4 * (n + 1)) + 4 * n
    return {"dense_flash": dense, "scalpel_flash": pruned, "sram": 2 * (arena + column)}


def nets(args) -> None:
    memory = TargetSpec.preset("cortex-m4").memory
    rng = np.random.default_rng(0)
    results = {}
    frontend = dict(item.split("=", 1) for item in args.frontend or [])
    unknown = set(frontend) - set(NETS)
    if unknown:
        raise SystemExit(f"--frontend takes NET=PRUNED.onnx with NET one of {', '.join(NETS)}; got {', '.join(unknown)}")
    jobs = [(name, version) for name in NETS for version in VERSIONS]
    jobs += [(name, version) for name in frontend for version in ("frontend", "frontend_size")]
    with tempfile.TemporaryDirectory() as tmp:
        for name, version in tqdm(jobs, desc="build, run on QEMU, count cycles", file=sys.stderr):
            if version.startswith("frontend"):
                model, formats, objective = onnx.load(frontend[name]), None, "size" if version.endswith("size") else "latency"
            else:
                model, formats, objective = versions(name)[version]
            results.setdefault(name, {})[version] = measure(name, model, formats, objective,
                                                            Path(tmp) / f"{name}_{version}", rng)
    for rows in results.values():
        base = rows["dense"]
        for row in rows.values():
            row["speedup"] = base["cycles"] / row["cycles"]
            row["size_vs_dense"] = row["flash_bytes"] / base["flash_bytes"]
            row["fits_m4"] = row["flash_bytes"] + row["code_bytes"] <= memory["flash"] and row["sram_bytes"] <= memory["sram"]
    fits = {}
    for name in paper_nets.ARCHITECTURES:
        use = network_memory(name)
        fits[name] = {**use, "dense_fits": use["dense_flash"] <= memory["flash"] and use["sram"] <= memory["sram"],
                      "scalpel_fits": use["scalpel_flash"] <= memory["flash"] and use["sram"] <= memory["sram"]}
    report = {"date": datetime.date.today().isoformat(), "board": memory, "paper": PAPER,
              "estimate": "scalpel_tvm.cycles: executed instructions x Cortex-M4 TRM timing table (not a measurement)",
              "densities": {name: scalpel_density(name) for name in NETS}, "results": results, "fits": fits}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_cortex_m.json").write_text(json.dumps(report, indent=2))
    print_report(report)
    plot(report, out / "bench_cortex_m.png")


def print_report(report: dict) -> None:
    print(f"int16, one input, Cortex-M4 cycle ESTIMATES ({report['date']}); speedup and size vs dense int16")
    print(f"{'network':<15}{'version':<17}{'cycles':>11}{'model':>11}{'speedup':>9}{'paper':>7}"
          f"{'flash KB':>10}{'size':>7}{'paper':>7}{'SRAM KB':>9}{'code KB':>9}{'removed':>9}  fits M4")
    speedups = []
    for name, rows in report["results"].items():
        for version, row in rows.items():
            paper = PAPER[name] if version.startswith(("scalpel", "frontend")) else {}
            if version == "traditional_csr":
                speedups.append(row["speedup"])
            print(f"{name:<15}{version:<17}{row['cycles']:>11}{row['predicted_cycles']:>11}{row['speedup']:>8.2f}x"
                  f"{paper.get('speedup', ''):>7}{row['flash_bytes'] / 1024:>10.1f}{row['size_vs_dense']:>7.1%}"
                  f"{format(paper['size'], '.2%') if paper else '':>7}{row['sram_bytes'] / 1024:>9.1f}"
                  f"{row['code_bytes'] / 1024:>9.1f}{row['weights_removed']:>9.1%}  {row['fits_m4']}")
        print(f"{'':<15}scalpel formats: {rows['scalpel']['formats']}; by size: {rows['scalpel_size']['formats']}")
    print(f"traditional pruning (CSR): mean speedup {np.mean(speedups):.2f}x (paper {PAPER['traditional_mean_speedup']}x)")
    print("\nthe paper's networks on the M4 board (128 KB SRAM / 512 KB flash), from their shapes:")
    for name, use in report["fits"].items():
        print(f"  {name:<15} dense flash {use['dense_flash'] / 1024:>9.1f} KB, Scalpel flash "
              f"{use['scalpel_flash'] / 1024:>9.1f} KB, activations {use['sram'] / 1024:>8.1f} KB: "
              f"{'fits' if use['scalpel_fits'] else 'does not fit'}{' (dense fits too)' if use['dense_fits'] else ''}")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(names))
    width = 0.2
    for offset, (version, label) in enumerate([("scalpel", "Scalpel (pairs, formats by cycles)"),
                                               ("scalpel_size", "Scalpel (formats by size)"),
                                               ("traditional_csr", "traditional (CSR)")]):
        left.bar(x + width * offset, [report["results"][n][version]["speedup"] for n in names], width, label=label)
        right.bar(x + width * offset, [report["results"][n][version]["size_vs_dense"] for n in names], width, label=label)
    left.bar(x + 3 * width, [PAPER[n]["speedup"] for n in names], width, label="paper (Scalpel, M4)", color="grey")
    right.bar(x + 3 * width, [PAPER[n]["size"] for n in names], width, label="paper (Scalpel, M4)", color="grey")
    for axis, title in ((left, "speedup over dense int16 (cycle estimate)"), (right, "model size vs dense")):
        axis.set_xticks(x + 1.5 * width, names)
        axis.set_title(title)
    left.axhline(1, color="black", linewidth=0.8)
    left.legend(fontsize=8)
    fig.suptitle(f"Cortex-M4, int16, one input ({report['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def calibrate(args) -> None:
    """Refit the Cortex-M cost model (scalpel_tvm/m4_cost.py) for the M4 and the M3 builds."""
    fits = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mcpu in ("cortex-m4", "cortex-m3"):
            bar = tqdm(total=args.firmwares, desc=f"calibrating {mcpu}", file=sys.stderr)
            fits[mcpu] = m4_cost.calibrate(mcpu, firmwares=args.firmwares, seed=args.seed,
                                           build_dir=Path(tmp) / mcpu,
                                           progress=lambda done, total: bar.update(1))
            bar.close()
            fit = fits[mcpu]
            print(f"{mcpu}: {fit['samples']} layers fitted, {fit['held_out']} held out: mean abs error "
                  f"{fit['held_out_mape']:.1%}, worst {fit['held_out_worst']:.1%}; fastest format picked "
                  f"{fit['decision_accuracy']:.0%} of the time, worst pick {fit['worst_choice_vs_best']:.2f}x the best")
    data = {"date": datetime.date.today().isoformat(), "features": m4_cost.FEATURES,
            "made_by": "python python/bench_cortex_m.py calibrate", "fits": fits}
    m4_cost.DATA.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {m4_cost.DATA}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("nets", help="the three networks, three ways (default)")
    run.add_argument("--out", default="out")
    run.add_argument("--frontend", action="append", metavar="NET=PRUNED.onnx",
                     help="also price a model `scalpel prune --target cortex-m4` pruned (e.g. "
                          "lenet_300_100=pruned.onnx); formats from the planner")
    fit = sub.add_parser("calibrate", help="refit data/cost_cortex_m.json")
    fit.add_argument("--firmwares", type=int, default=12, help="random firmwares of 24 layers per core")
    fit.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(sys.argv[1:] or ["nets"])
    if args.command == "calibrate":
        calibrate(args)
    else:
        nets(args)


if __name__ == "__main__":
    main()
