"""Benchmark: GAT training-iteration throughput on this machine, beside its matmul rate.

For each configuration it prints images/s, ms per iteration, achieved model FLOP/s (measured
FLOPs per iteration / time, convention ``core.gan.flops.FLOPS_CONVENTION``) and model FLOPs
utilisation = achieved / the machine's fp32 matmul FLOP/s, measured in the same process with a
large ``torch.mm`` right before and right after each row (the faster of the two is used). A
second table splits one iteration into D step (with and without R1/R2), G step and EMA update.

    python benchmarks/train_step.py                 # CPU, widths 64..512 and the default-sweep scale
    python benchmarks/train_step.py --threads 2 --iters 5 --widths 64,256
    python benchmarks/train_step.py --device cuda --precision bf16 --widths 768 --depth 12 --latent 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from core.config import NetConfig, TrainConfig
from core.gan.flops import train_flops_per_iter
from core.gan.model import build_models
from core.gan.step import GATStep, update_ema


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops_per_s(device: torch.device, n: int = 2048, reps: int = 5) -> float:
    """fp32 (or TF32-off) ``torch.mm`` rate of n x n matrices: 2 n^3 FLOPs per product."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def timed(fn, device: torch.device, iters: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def setup(cfg: TrainConfig, device: torch.device):  # type: ignore[no-untyped-def]
    G, D = build_models(cfg, device)
    G_ema = build_models(cfg, device)[0].requires_grad_(False)
    step = GATStep(cfg, G, D, device, G_ema=G_ema)
    n = cfg.batch
    x = torch.randn(n, cfg.latent_channels, cfg.latent_size, cfg.latent_size, device=device)
    y = torch.randint(cfg.num_classes, (n,), device=device)
    z = torch.randn(n, cfg.z_dim, device=device)
    return step, G, G_ema, x, y, z


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="64,128,256,512")
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--latent", type=int, default=16, help="latent size; tokens = (latent/patch)^2")
    parser.add_argument("--patch", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64, help="heads = width / head-dim (sweeps/width_lr.yaml: 16)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--d-proj", type=int, default=2048)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--no-small", action="store_true", help="skip the default-sweep-scale row")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peak = matmul_flops_per_s(device)
    print(f"device {device}, {torch.get_num_threads()} threads, fp32 matmul {peak / 1e9:.1f} GFLOP/s")

    rows = []
    shapes = [(int(w), args.depth, args.latent, args.d_proj) for w in args.widths.split(",")]
    if not args.no_small:
        shapes.append((64, 4, 8, args.d_proj))  # the default sweep's scale: 16 tokens
        shapes.append((64, 4, 8, 256))          # ... with the small class projection of sweeps/width_lr.yaml
    header = (f"{'width':>5} {'depth':>5} {'heads':>5} {'tokens':>6} {'proj':>5} {'ms/it':>8} {'img/s':>7} {'GFLOP/it':>9} "
              f"{'GFLOP/s':>8} {'matmul':>7} {'MFU':>6}")
    print(header)
    for width, depth, latent, proj in shapes:
        heads = max(1, width // args.head_dim)
        cfg = TrainConfig(dataset="random", g=NetConfig(width, depth, heads), d=NetConfig(width, depth, heads),
                          latent_size=latent, patch=args.patch, batch=args.batch, d_proj_dim=proj,
                          precision=args.precision, grad_checkpointing=args.grad_checkpointing,
                          compile=args.compile)
        step, G, G_ema, x, y, z = setup(cfg, device)
        if args.compile:
            G.compile()
            step.D.compile()
        flops = train_flops_per_iter(cfg)
        # The reference right before and right after this row; the faster one is used, so that a
        # slow spell of a noisy machine during the reference cannot inflate the MFU.
        before = matmul_flops_per_s(device)
        sec = timed(lambda: step.iteration(x, y, z), device, args.iters)
        peak = max(before, matmul_flops_per_s(device))
        rate = flops / sec
        tokens = (latent // args.patch) ** 2
        print(f"{width:>5} {depth:>5} {heads:>5} {tokens:>6} {proj:>5} {sec * 1e3:>8.1f} {args.batch / sec:>7.1f} "
              f"{flops / 1e9:>9.2f} {rate / 1e9:>8.1f} {peak / 1e9:>7.1f} {rate / peak:>6.1%}")
        rows.append((cfg, step, G, G_ema, x, y, z))

    print("\nsplit of one iteration (ms): G forward, D step, D step without R1/R2, G step (backward "
          "through D and G, optimiser, EMA), EMA alone")
    for cfg, step, G, G_ema, x, y, z in rows:
        fake = step.generate(z, y).detach()
        gen_ms = timed(lambda: step.generate(z, y), device, args.iters) * 1e3
        d_ms = timed(lambda: step.d_step(x, y, fake), device, args.iters) * 1e3
        no_reg = GATStep(cfg.replace(gamma_r1=0.0, gamma_r2=0.0), step.G, step.D, device)
        d_noreg_ms = timed(lambda: no_reg.d_step(x, y, fake), device, args.iters) * 1e3
        g_ms = timed(lambda: step.g_step(x, y, step.generate(z, y)), device, args.iters) * 1e3 - gen_ms
        ema_ms = timed(lambda: update_ema(G_ema, G, 0.999), device, args.iters) * 1e3
        print(f"width {cfg.g.width:>4} depth {cfg.g.depth} tokens {cfg.tokens:>3} proj {cfg.d_proj_dim:>4}: "
              f"Gfwd {gen_ms:6.1f}  D {d_ms:7.1f}  D-noreg {d_noreg_ms:7.1f} (R1/R2 {d_ms - d_noreg_ms:6.1f})  "
              f"G {g_ms:7.1f}  EMA {ema_ms:5.2f}")


if __name__ == "__main__":
    main()
