"""Checkpoint files of a run directory: atomic writes, ``latest`` + numbered + ``best``.

A checkpoint is a dict of ``state_dict()``s, counters and the config as plain data (never
pickled modules), so it loads with ``torch.load(..., weights_only=True)``. It holds no RNG state:
every random draw of an iteration comes from generators seeded by (seed, iteration, rank)
(``core.train``), so a resumed run needs none. Files:

    checkpoints/iter_0000500.pt   numbered, the newest ``keep`` of them are kept
    checkpoints/latest.pt         copy of the newest numbered checkpoint (what resume reads)
    checkpoints/best.pt           copy of the checkpoint at the best evaluation so far

Every file is written to a temporary name in the same directory and renamed into place, so a
run killed mid-write leaves the previous file intact (ARCHITECTURE.md, "atomic writes").
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from core.cache import atomic_write

LATEST = "latest.pt"
BEST = "best.pt"


def atomic_save(obj: Any, path: Path) -> Path:
    """``torch.save`` to a temp file beside ``path``, then rename over it. Returns ``path``."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_copy(src: Path, dst: Path) -> Path:
    """Copy ``src`` to ``dst`` through a temp file and rename. Returns ``dst``."""
    return atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def numbered(ckpt_dir: Path, iteration: int) -> Path:
    """Path of the numbered checkpoint for an iteration (zero-padded so names sort)."""
    return ckpt_dir / f"iter_{iteration:07d}.pt"


def save_checkpoint(state: dict[str, Any], ckpt_dir: Path, iteration: int, keep: int, best: bool) -> Path:
    """Write ``iter_N.pt``, refresh ``latest.pt`` (and ``best.pt`` if ``best``), prune old ones.

    Returns the numbered checkpoint's path. ``keep`` >= 1 numbered files survive pruning.
    """
    path = atomic_save(state, numbered(ckpt_dir, iteration))
    atomic_copy(path, ckpt_dir / LATEST)
    if best:
        atomic_copy(path, ckpt_dir / BEST)
    for old in sorted(ckpt_dir.glob("iter_*.pt"))[: -max(keep, 1)]:
        old.unlink()
    return path


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (weights_only, no pickled code).

    Raises FileNotFoundError naming the path if it does not exist.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=True)
