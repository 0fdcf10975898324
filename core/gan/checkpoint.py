"""Checkpoint files of a run directory: atomic writes, ``latest`` + numbered + ``best``.

A checkpoint is a dict of ``state_dict()``s, counters and the config as plain data (never
pickled modules), so it loads with ``torch.load(..., weights_only=True)``. It holds no RNG state:
every random draw of an iteration comes from generators seeded by (seed, iteration, rank)
(``core.gan.train``), so a resumed run needs none. Files:

    checkpoints/iter_0000500.pt   numbered, the newest ``keep`` of them are kept
    checkpoints/latest.pt         copy of the newest numbered checkpoint (what resume reads)
    checkpoints/best.pt           copy of the checkpoint at the best evaluation so far

Every file is written to a temporary name in the same directory and renamed into place, so a
run killed mid-write leaves the previous file intact (ARCHITECTURE.md, "atomic writes"). A file
damaged all the same (a copy cut short, a full or failing disk) is named in one message, and
resume falls back to the newest numbered checkpoint that can be read (:func:`resume_state`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from core.cache import atomic_write, check_free_space
from core.config import ConfigError

CHECKPOINTS = "checkpoints"
"""The checkpoint directory of a run directory."""
LATEST = "latest.pt"
BEST = "best.pt"


class CheckpointError(ConfigError):
    """A checkpoint file that cannot be read (empty, truncated, not written by gat-sweep): the
    user restores or deletes it, so a sweep does not retry a trial over it."""


def atomic_save(obj: Any, path: Path) -> Path:
    """``torch.save`` to a temp file beside ``path``, then rename over it. Returns ``path``."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_copy(src: Path, dst: Path) -> Path:
    """Copy ``src`` to ``dst`` through a temp file and rename. Returns ``dst``."""
    return atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def numbered(ckpt_dir: Path, iteration: int) -> Path:
    """Path of the numbered checkpoint for an iteration (zero-padded so names sort)."""
    return ckpt_dir / f"iter_{iteration:07d}.pt"


FILE_OVERHEAD = 1.25
"""A checkpoint file's size over its tensors' bytes, at most (the archive's records, alignment and
the pickled structure; 1.10 measured at width 32)."""


def save_checkpoint(state: dict[str, Any], ckpt_dir: Path, iteration: int, keep: int, best: bool) -> Path:
    """Write ``iter_N.pt``, refresh ``latest.pt`` (and ``best.pt`` if ``best``), prune old ones.

    Returns the numbered checkpoint's path. ``keep`` >= 1 numbered files survive pruning. Raises
    :class:`core.cache.DiskFullError` before writing anything when the device lacks the space of
    the files it writes (the numbered file and a copy for ``latest.pt``, and one for ``best.pt``),
    so that a full disk never leaves the run without an intact checkpoint.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    copies = 3 if best else 2
    name = numbered(ckpt_dir, iteration).name
    check_free_space(ckpt_dir, int(copies * FILE_OVERHEAD * _tensor_bytes(state)),
                     f"checkpoint {name} (the numbered file and latest.pt{' and best.pt' if best else ''})")
    path = atomic_save(state, numbered(ckpt_dir, iteration))
    atomic_copy(path, ckpt_dir / LATEST)
    if best:
        atomic_copy(path, ckpt_dir / BEST)
    for old in sorted(ckpt_dir.glob("iter_*.pt"))[: -max(keep, 1)]:
        old.unlink()
    return path


def checkpoint_bytes(g_params: int, d_params: int) -> int:
    """The tensor bytes of a checkpoint of G and D with these parameter counts: G, D and the EMA
    of G, and AdamW's two moments of G and D, all fp32 (what :func:`save_checkpoint` writes)."""
    return 4 * (2 * g_params + d_params) + 8 * (g_params + d_params)


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a checkpoint's state (nested dicts and lists)."""
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (weights_only, no pickled code).

    ``mmap``: map the tensors' storage instead of reading it (a quick check that the file can be
    read: its archive index and structure are read, its tensor data is not).
    Raises FileNotFoundError naming the path if it does not exist, CheckpointError naming it if
    it cannot be read.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises EOFError, RuntimeError, KeyError, UnpicklingError, ... for a bad file
        size = path.stat().st_size
        reason = "the file is empty" if size == 0 else (
            f"{size:,} bytes that are not a checkpoint ({type(err).__name__}: {_first_sentence(err)})")
        raise CheckpointError(f"checkpoint {path} cannot be read: {reason}; it is damaged "
                              "(cut short, or overwritten)") from None


def _first_sentence(error: Exception) -> str:
    """The start of an error's message, up to its first full stop (torch's go on with advice)."""
    text = " ".join(str(error).split())
    return text.split(". ")[0][:160] or "no message"


def resume_state(ckpt_dir: Path, map_location: torch.device | str = "cpu",
                 mmap: bool = False) -> tuple[dict[str, Any], Path, list[str]] | None:
    """The checkpoint a run resumes from: ``latest.pt``, or when that cannot be read (or is
    missing) the newest numbered checkpoint that can.

    Returns None when ``ckpt_dir`` holds no checkpoint, else (its state, its path, one line per
    damaged checkpoint passed over: :class:`CheckpointError` messages). ``map_location`` and
    ``mmap`` as for :func:`load_checkpoint`. Raises CheckpointError naming the checkpoints when
    none of them can be read, and how to start the run again from scratch.
    """
    candidates = [ckpt_dir / LATEST, *sorted(ckpt_dir.glob("iter_*.pt"), reverse=True)]
    damaged = []
    for path in (p for p in candidates if p.is_file()):
        try:
            return load_checkpoint(path, map_location, mmap), path, damaged
        except CheckpointError as err:
            damaged.append(str(err))
    if not damaged:
        return None
    raise CheckpointError(f"{'; '.join(damaged)}. No checkpoint in {ckpt_dir} can be read: restore one, or "
                          f"delete {ckpt_dir} to train this run again from iteration 0")
