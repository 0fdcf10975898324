"""Benchmark: the finite-difference R1/R2 penalty under bf16 autocast, against fp32.

The reference's R1/R2 estimate ``((D(x) - D(x + 0.01 eps)) / 0.01)^2`` takes the difference of two
nearly equal logits; under bf16 autocast (8 mantissa bits) most of that difference is rounding.
Printed, all measured in this run on one model and one batch:

1. Fixed weights and draws, at initialisation: R1 and R2 of the finite-difference estimator in
   fp32, under bf16 autocast (``reg_fd_precision: autocast``, the reference) and under bf16 with
   the D step's forward in fp32 (``reg_fd_precision: fp32``); and the exact double-backprop
   penalty in fp32 and under bf16. Each bf16 row's ratio is to the fp32 row of its estimator.
2. The same every ``--every`` iterations of a ``--steps``-iteration fp32 training run (the
   weights change; the draws of each comparison are shared by all rows), and the range of the
   ratios over the run.

bf16 autocast runs on the CPU too (slowly), so this needs no GPU; the last line is JSON.

    python benchmarks/fd_precision.py                      # width 64, depth 4, batch 32
    python benchmarks/fd_precision.py --width 128 --steps 200 --every 20
"""

from __future__ import annotations

import argparse
import json

import torch

from core.config import NetConfig, TrainConfig
from core.gan.model import build_models
from core.records import REG_R1, REG_R2
from core.gan.step import GATStep


def penalties(cfg: TrainConfig, state: dict, x: torch.Tensor, y: torch.Tensor, fake: torch.Tensor,
              seed: int) -> dict[str, float]:
    """R1 and R2 of one D step on the weights ``state`` with the draws of ``seed``, nothing kept."""
    G, D = build_models(cfg)
    D.load_state_dict(state)
    step = GATStep(cfg, G, D, torch.device("cpu"))
    torch.manual_seed(seed)
    stats = step.d_step(x, y, fake)
    return {"r1": stats[REG_R1].item(), "r2": stats[REG_R2].item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100, help="fp32 training iterations for part 2")
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    net = NetConfig(width=args.width, depth=args.depth, heads=max(1, args.width // 16))
    base = TrainConfig(dataset="random", g=net, d=net, d_proj_dim=256, batch=args.batch, lr_g=2e-3, lr_d=2e-3)
    exact = base.replace(reg_mode="exact")
    references = {"fp32": base, "fp32, exact": exact}
    variants = {  # name: (config, the fp32 row it is compared with)
        "bf16 autocast (reference)": (base.replace(precision="bf16", reg_fd_precision="autocast"), "fp32"),
        "bf16, D step fp32": (base.replace(precision="bf16", reg_fd_precision="fp32"), "fp32"),
        "bf16, exact": (exact.replace(precision="bf16"), "fp32, exact"),
    }
    torch.manual_seed(0)
    G, D = build_models(base)
    trainer = GATStep(base, G, D, torch.device("cpu"))
    x, y = torch.randn(args.batch, 4, 8, 8), torch.randint(10, (args.batch,))
    z = torch.randn(args.batch, base.z_dim)

    def compare(label: str, seed: int) -> dict[str, dict[str, float]]:
        with torch.no_grad():
            fake = trainer.generate(z, y)
        state = {k: v.clone() for k, v in D.state_dict().items()}
        rows = {name: penalties(cfg, state, x, y, fake, seed) for name, cfg in references.items()}
        for name, (cfg, ref) in variants.items():
            row = penalties(cfg, state, x, y, fake, seed)
            rows[name] = {**row, "r1_ratio": row["r1"] / rows[ref]["r1"], "r2_ratio": row["r2"] / rows[ref]["r2"]}
        print(f"\n{label}")
        print(f"  {'setting':<28}{'R1':>12}{'R2':>12}{'R1 ratio':>10}{'R2 ratio':>10}")
        for name, row in rows.items():
            ratios = f"{row['r1_ratio']:>10.3f}{row['r2_ratio']:>10.3f}" if "r1_ratio" in row else ""
            print(f"  {name:<28}{row['r1']:>12.4g}{row['r2']:>12.4g}{ratios}")
        return rows

    results = {"init": compare("1. fixed weights and draws, at initialisation", seed=1)}
    ratios: dict[str, list[list[float]]] = {name: [] for name in variants}
    for it in range(1, args.steps + 1):
        torch.manual_seed(1000 + it)
        trainer.iteration(x, y, z)
        if it % args.every == 0:
            rows = compare(f"2. after {it} fp32 iterations", seed=it)
            for name in variants:
                ratios[name].append([rows[name]["r1_ratio"], rows[name]["r2_ratio"]])
    print("\nratio to fp32 of the same estimator over the run (min..max)")
    for name, values in ratios.items():
        r1, r2 = [v[0] for v in values], [v[1] for v in values]
        print(f"  {name:<28} R1 {min(r1):.3f}..{max(r1):.3f}   R2 {min(r2):.3f}..{max(r2):.3f}")
    results["ratios"] = ratios
    print(json.dumps(results))


if __name__ == "__main__":
    main()
