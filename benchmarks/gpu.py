"""Benchmark: GAT-B/2 and GAT-XL/2 training-iteration throughput and peak memory on one GPU.

One iteration = one G forward, one D step (MNG, augmentation, RpGAN loss, R1 + R2) and one
G step (+ EMA): exactly the trainer's ``core.gan.step.GATStep.iteration``, on random latents
(32x32x4, 1000 classes: the paper's ImageNet-256 presets from ``core.presets``), at a per-GPU
batch size, without the presets' DINOv2 alignment of D (``repa``): its frozen encoder needs local
weights, and it is not training compute (D's projector is; it is left out with it). For each
preset and batch size it prints ms/iter, images/s, measured FLOPs per iteration (``core.gan.flops``;
the convention is printed: model FLOPs, so recomputation under --grad-checkpointing is not
counted), achieved TFLOP/s, model FLOPs utilisation (MFU) against the GPU's bf16 matmul rate
measured in the same process with a large ``torch.mm``, peak memory
(``torch.cuda.max_memory_allocated``: weights, gradients, AdamW states, EMA and activations), the
scaled-dot-product-attention kernel the step actually ran (flash / cuDNN / memory-efficient /
math), and the wall time of the warm-up iterations after the first (with --compile, mostly
compilation). The losses of every iteration must be finite. The last line of output is one JSON
object with every figure; the exit status is 1 if any row failed (non-finite loss, out of memory).

Examples:
  python benchmarks/gpu.py --smoke                      # B/2 and XL/2 at batch 32, a few iterations (< 1 min)
  python benchmarks/gpu.py --batch 32,64                # 5 warm-up + 20 timed iterations per row
  python benchmarks/gpu.py --sizes GAT-XL/2 --compile   # torch.compile G and D (first iterations compile)
  python benchmarks/gpu.py --sizes GAT-XL/2 --batch 64 --grad-checkpointing
  python benchmarks/gpu.py --device cpu --sizes tiny --batch 4 --smoke   # CI: does the script still run?
  python benchmarks/gpu.py --sizes GAT-B/2,GAT-XL/2 --batch 16,32 --compile --dry-run   # the rows; nothing runs

Sizes are preset names of ``core.presets.PRESETS`` (GAT-S/2 .. GAT-XL/8, tiny, digits). On CPU
the default size is 'tiny' and the precision fp32; peak memory is then not measured.
Run it as a script from the repository root (it imports its helpers from train_step.py beside it).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from core.config import TrainConfig
from core.gan.flops import FLOPS_CONVENTION, train_flops_per_iter
from core.gan.model import count_parameters
from core.presets import PRESETS
from core.records import LOSS_D, LOSS_G
from train_step import setup, sync, timed  # benchmarks/train_step.py (this script's directory)

MATMUL_SIZE = {"cuda": 8192, "cpu": 1024}
"""Side of the square matrices of the matmul reference: large enough to reach the GPU's peak
(8192^3 x 2 = 1.1 TFLOP per product), small enough for a CI run on CPU."""
GIB = 2**30


class AttentionKernels(TorchDispatchMode):
    """Records the scaled-dot-product-attention kernels (aten op name and dtype) that run inside it.

    ``F.scaled_dot_product_attention`` picks its kernel at run time from the inputs (dtype, head
    dim, device); the op that reaches the dispatcher names it, e.g.
    ``_scaled_dot_product_flash_attention[bfloat16]`` or ``..._cudnn_attention_backward[...]``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket.__name__
        if "scaled_dot_product" in name:
            self.seen.add(f"{name}[{str(args[0].dtype).removeprefix('torch.')}]")
        return func(*args, **(kwargs or {}))


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, reps: int = 10) -> float:
    """Rate of ``torch.mm`` on square ``dtype`` matrices (side :data:`MATMUL_SIZE`), FLOP/s.

    2 n^3 FLOPs per product (n^3 multiply-accumulates), median over ``reps`` synchronised calls.
    """
    n = MATMUL_SIZE[device.type]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: torch.mm(a, b), device, reps)


def sdpa_backends_enabled(device: torch.device) -> dict[str, bool]:
    """Which fused attention backends PyTorch may choose on CUDA (the global switches)."""
    if device.type != "cuda":
        return {}
    cuda = torch.backends.cuda
    return {"flash": cuda.flash_sdp_enabled(), "cudnn": cuda.cudnn_sdp_enabled(),
            "mem_efficient": cuda.mem_efficient_sdp_enabled(), "math": cuda.math_sdp_enabled()}


def benchmark(cfg: TrainConfig, device: torch.device, warmup: int, iters: int, peak: float) -> dict[str, Any]:
    """Time ``iters`` training iterations after ``warmup`` (>= 1) at ``cfg`` on one device.

    Returns the row of figures (see the module docstring); ``finite`` is False if any loss of any
    iteration was NaN/inf. Raises ``torch.OutOfMemoryError`` if the batch does not fit.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step, G, G_ema, x, y, z = setup(cfg, device)
    losses: list[torch.Tensor] = []

    def iteration() -> None:
        stats = step.iteration(x, y, z)
        losses.append(torch.stack([stats[LOSS_D], stats[LOSS_G]]))

    kernels = AttentionKernels()
    with kernels:  # the first warm-up iteration, eager, reports the attention kernels
        iteration()
    start = time.perf_counter()
    if cfg.compile:
        G.compile()
        step.D.compile()
    for _ in range(warmup - 1):
        iteration()
    sync(device)
    warmup_s = time.perf_counter() - start
    sec = timed(iteration, device, iters)  # one more warm-up, then the median of iters
    sync(device)
    flops = train_flops_per_iter(cfg)
    last = losses[-1].tolist()
    return {
        "size": cfg.name, "batch": cfg.batch, "precision": cfg.precision, "compile": cfg.compile,
        "reg_fd_precision": cfg.reg_fd_precision,
        "grad_checkpointing": cfg.grad_checkpointing,
        "g_params": count_parameters(G), "d_params": count_parameters(step.D),
        "ms_per_iter": sec * 1e3, "images_per_s": cfg.batch / sec,
        "tflop_per_iter": flops / 1e12, "achieved_tflops": flops / sec / 1e12, "mfu": flops / sec / peak,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None,
        "attention_kernels": sorted(kernels.seen), "warmup_s": warmup_s,
        "loss_D": last[0], "loss_G": last[1], "finite": bool(torch.stack(losses).isfinite().all()),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=None,
                        help="comma-separated preset names (default: GAT-B/2,GAT-XL/2 on CUDA, tiny on CPU)")
    parser.add_argument("--batch", default="32",
                        help="comma-separated batch sizes per GPU (default 32; the paper uses 512 in total)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cuda, cuda:N or cpu")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                        help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile G and D (after one eager iteration)")
    parser.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations in backward")
    parser.add_argument("--reg-fd-precision", default="autocast", choices=["autocast", "fp32"],
                        help="finite-difference R1/R2 under bf16: the reference's autocast, or the D step in fp32")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up iterations per row (default 5; smoke 2)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations per row (default 20; smoke 3)")
    parser.add_argument("--smoke", action="store_true", help="a few iterations per row: a quick does-it-run check")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the rows (size, batch) with their settings as JSON; build and run nothing")
    args = parser.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.smoke else 5)
    args.iters = args.iters if args.iters is not None else (3 if args.smoke else 20)
    if args.warmup < 1 or args.iters < 1:
        parser.error("--warmup and --iters must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {name}: CUDA is not available here; use --device cpu --sizes tiny")
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    sizes = (args.sizes or ("GAT-B/2,GAT-XL/2" if device.type == "cuda" else "tiny")).split(",")
    unknown = [s for s in sizes if s not in PRESETS]
    if unknown:
        sys.exit(f"--sizes: unknown preset(s) {', '.join(unknown)}; choose from {', '.join(PRESETS)}")
    batches = [int(b) for b in args.batch.split(",")]
    configs = [PRESETS[size].replace(batch=batch, precision=precision, compile=args.compile, repa=False,
                                     grad_checkpointing=args.grad_checkpointing, device=str(device),
                                     reg_fd_precision=args.reg_fd_precision)
               for size in sizes for batch in batches]
    settings = {"precision": precision, "compile": args.compile, "grad_checkpointing": args.grad_checkpointing,
                "reg_fd_precision": args.reg_fd_precision, "warmup": args.warmup, "iters": args.iters}
    if args.dry_run:
        print(json.dumps({"device": str(device), **settings, "dry_run": True,
                          "rows": [{"size": cfg.name, "batch": cfg.batch} for cfg in configs]}))
        return 0

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peak = matmul_flops_per_s(device, dtype)
    header: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "cuda": torch.version.cuda,
        f"matmul_{precision}_tflops": peak / 1e12, "sdpa_enabled": sdpa_backends_enabled(device),
        "flops_convention": FLOPS_CONVENTION,
    }
    print(f"device {header['device']}, torch {torch.__version__}, {precision} matmul {peak / 1e12:.2f} TFLOP/s "
          f"(n = {MATMUL_SIZE[device.type]}), SDPA enabled: {header['sdpa_enabled'] or 'n/a (CPU)'}")
    print(f"FLOPs: {FLOPS_CONVENTION}")
    print(f"{'size':>9} {'batch':>5} {'ms/it':>9} {'img/s':>8} {'TFLOP/it':>9} {'TFLOP/s':>8} {'MFU':>6} "
          f"{'peak GiB':>8}  {'loss D':>7} {'loss G':>7}  attention kernels")

    rows = []
    for cfg in configs:
        try:
            row = benchmark(cfg, device, args.warmup, args.iters, peak)
        except torch.OutOfMemoryError:
            row = {"size": cfg.name, "batch": cfg.batch, "error": "out of memory"}
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if args.compile:
            torch._dynamo.reset()
        rows.append(row)
        if "error" in row:
            print(f"{cfg.name:>9} {cfg.batch:>5}  {row['error']}")
            continue
        mem = f"{row['peak_mem_gib']:8.2f}" if row["peak_mem_gib"] is not None else f"{'n/a':>8}"
        print(f"{cfg.name:>9} {cfg.batch:>5} {row['ms_per_iter']:9.2f} {row['images_per_s']:8.1f} "
              f"{row['tflop_per_iter']:9.4f} {row['achieved_tflops']:8.3f} {row['mfu']:6.1%} {mem}  "
              f"{row['loss_D']:7.3f} {row['loss_G']:7.3f}  {', '.join(row['attention_kernels'])}"
              + ("" if row["finite"] else "  NON-FINITE LOSS"))
    print(json.dumps({**header, **settings, "rows": rows}))
    failed = [r for r in rows if "error" in r or not r["finite"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
