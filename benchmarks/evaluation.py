"""Benchmark: evaluation cost on the embedded digits data, beside the training it interrupts.

Printed, all measured in this run:

1. Reference statistics: building the evaluator with an empty torch-fidelity cache (features of
   the 1,797 real digits computed) and again with the cache filled, as every trial of a sweep
   finds it (the sweep driver fills it once before any trial starts, ``scaling.tune``).
2. One evaluation (``--samples`` EMA samples, default: the default sweep's eval.samples) of the
   default sweep's widths: images/s, split into generating + decoding the samples and the
   metrics (feature extraction, FD, KID, precision/recall).
3. The share of evaluation in a default-sweep trial (sweeps/width_lr.yaml: 200 iterations,
   evaluated at 100 and 200), from one in-process run per width: the trainer's own
   ``time/eval_s`` over the run's wall time.

    python benchmarks/evaluation.py                     # widths 16 and 64 of sweeps/width_lr.yaml
    python benchmarks/evaluation.py --widths 16,32,64 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from core.cache import CACHE_ENV, cache_root
from core.evaluation.evaluate import make_evaluator
from core.data.latents import load_latents
from core.records import EVAL_SECONDS, STATS_FILE
from core.gan.model import build_generator
from core.gan.train import train
from scaling.grid import expand
from scaling.spec import load_spec

SWEEP = Path(__file__).resolve().parent.parent / "sweeps" / "width_lr.yaml"


def trial_config(width: int, samples: int = 0, iterations: int = 0):  # type: ignore[no-untyped-def]
    """The default sweep's first trial of ``width`` (its evaluation settings, 200 iterations);
    ``samples`` > 0 replaces its eval.samples, ``iterations`` > 0 its length (evaluated at the
    middle and the end, as the sweep's trials are)."""
    cfg = next(t.config for t in expand(load_spec(SWEEP)) if t.config.g.width == width)
    if samples:
        cfg = cfg.replace(eval_samples=samples)
    if iterations:
        cfg = cfg.replace(iterations=iterations, eval_every=max(1, iterations // 2))
    return cfg


def reference_cost(cfg) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Seconds to build the evaluator with an empty and with a filled reference cache."""
    data = load_latents(cfg)  # prepares the digits entry in the real cache if needed
    real_cache = cache_root()
    with tempfile.TemporaryDirectory(prefix="gat-sweep-evalbench-") as tmp:
        os.symlink(real_cache / "digits", Path(tmp) / "digits")  # the prepared data, no fidelity/
        with mock.patch.dict(os.environ, {CACHE_ENV: tmp}):
            start = time.perf_counter()
            make_evaluator(cfg, data, torch.device("cpu"))
            cold = time.perf_counter() - start
            start = time.perf_counter()
            make_evaluator(cfg, data, torch.device("cpu"))
            warm = time.perf_counter() - start
    return cold, warm


def evaluation_cost(cfg) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(seconds of one evaluation, seconds of rendering its samples) of an initial EMA G."""
    evaluator = make_evaluator(cfg, load_latents(cfg), torch.device("cpu"))
    torch.manual_seed(cfg.seed)
    generator = build_generator(cfg).eval().requires_grad_(False)
    evaluator.evaluate(generator)  # warm-up (extractor weights, kernels)
    start = time.perf_counter()
    evaluator.evaluate(generator)
    total = time.perf_counter() - start
    start = time.perf_counter()
    evaluator.sampler.render(generator, evaluator.z, evaluator.labels)
    return total, time.perf_counter() - start


def trial_share(cfg, root: Path) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    """Train the trial in-process: (wall seconds, seconds in evaluation, evaluations)."""
    run_dir = root / cfg.name
    start = time.perf_counter()
    train(cfg, run_dir, progress=False)
    wall = time.perf_counter() - start
    evals = [json.loads(line)[EVAL_SECONDS] for line in (run_dir / STATS_FILE).read_text().splitlines()
             if EVAL_SECONDS in line]
    return wall, sum(evals), len(evals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="16,64", help="widths of sweeps/width_lr.yaml to measure")
    parser.add_argument("--samples", type=int, default=0,
                        help="samples per evaluation, also in the trial (0: the sweep file's eval.samples)")
    parser.add_argument("--iterations", type=int, default=0, help="trial length (0: the sweep file's, 200)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (sweep trials use 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",")]

    cold, warm = reference_cost(trial_config(widths[0]))
    print(f"torch threads {args.threads}, {trial_config(widths[0], args.samples).eval_samples} samples per "
          f"evaluation; reference statistics of the 1,797 real digits: "
          f"{cold:.2f} s computed, {warm:.2f} s from the cache (once per sweep, in the driver)")
    print(f"\n{'width':>5} {'eval s':>7} {'img/s':>7} {'render s':>9} {'metrics s':>10} "
          f"{'trial s':>8} {'evals':>5} {'in eval':>8}")
    results = []
    with tempfile.TemporaryDirectory(prefix="gat-sweep-evalbench-runs-") as tmp:
        for width in widths:
            cfg = trial_config(width, args.samples, args.iterations)
            seconds, render = evaluation_cost(cfg)
            wall, in_eval, count = trial_share(cfg, Path(tmp))
            results.append({"width": width, "eval_s": round(seconds, 3), "images_per_s": round(cfg.eval_samples / seconds, 1),
                            "render_s": round(render, 3), "trial_s": round(wall, 2), "trial_eval_s": round(in_eval, 2),
                            "eval_share": round(in_eval / wall, 4)})
            print(f"{width:>5} {seconds:>7.2f} {cfg.eval_samples / seconds:>7.0f} {render:>9.2f} {seconds - render:>10.2f} "
                  f"{wall:>8.1f} {count:>5} {in_eval / wall:>8.1%}")
    print(json.dumps({"reference_cold_s": round(cold, 2), "reference_cached_s": round(warm, 2), "rows": results}))


if __name__ == "__main__":
    main()
