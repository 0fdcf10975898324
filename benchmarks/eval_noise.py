"""Benchmark: how much of a sweep's seed-to-seed noise is evaluation noise?

For trained run directories (a sweep's ``trials/<trial>``), the EMA generator of
``checkpoints/latest.pt`` is evaluated ``--repeats`` times with different evaluation seeds (other
z draws; torch-fidelity's KID subsets follow the seed too) at the trial's own ``eval_samples`` and
at ``--samples`` more. Printed per run: the FD of each repeat and the SD of log FD across repeats;
last the pooled SD per sample count, to set beside the sweep report's seed-to-seed SD of the score
(docs/ANALYSIS.md). One torch thread; each evaluation also decodes through the VAE.

    python benchmarks/eval_noise.py outputs/width_lr_full/trials/w32-d4-p2_gat_lr0.008_s{0,1}
    python benchmarks/eval_noise.py --repeats 5 --samples 2000 RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from pathlib import Path

import torch

from core.gan.checkpoint import load_checkpoint
from core.config import TrainConfig
from core.evaluation.evaluate import make_evaluator
from core.data.latents import load_latents
from core.gan.model import build_models


def log_fd_sd(values: list[float]) -> float:
    """SD (n-1) of log FD over repeats."""
    return statistics.stdev(math.log(v) for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=4, help="evaluation seeds per run and sample count")
    parser.add_argument("--samples", type=int, default=2000, help="the larger sample count")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pooled: dict[int, list[float]] = {}
    for run_dir in args.run_dirs:
        cfg = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
        state = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
        G, _ = build_models(cfg, torch.device("cpu"))
        G.load_state_dict(state["G_ema"])
        G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        data = load_latents(cfg)
        for samples in (cfg.eval_samples, args.samples):
            values, started = [], time.perf_counter()
            for r in range(args.repeats):
                evaluator = make_evaluator(cfg.replace(eval_samples=samples, seed=1000 + r), data, torch.device("cpu"))
                values.append(evaluator.evaluate(G_ema)[evaluator.metric_key])
            sd = log_fd_sd(values)
            pooled.setdefault(samples, []).append(sd)
            print(f"{run_dir.name}  iter {state['iteration']}  {samples} samples: FD "
                  f"{' '.join(f'{v:.0f}' for v in values)}  SD(log FD) {sd:.3f}  ({time.perf_counter() - started:.0f} s)")
    for samples, sds in pooled.items():
        print(f"pooled SD(log FD) of one evaluation, {samples} samples: {math.sqrt(statistics.mean(s * s for s in sds)):.3f}")


if __name__ == "__main__":
    main()
