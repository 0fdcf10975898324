"""Plain helpers shared by several test files (fixtures live in conftest.py)."""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from core.gan.checkpoint import load_checkpoint
from core.config import TrainConfig
from core.records import RunResult
from core.gan.train import Report, Reporter
from scaling.grid import ATTEMPTS_FILE, TRIALS_DIR

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports on 127.0.0.1 that nothing listens on right now: all n sockets stay
    bound until every port is picked, so two calls cannot return the same port. (Another process
    may still take one before the caller binds it; servers that need a port get one this way
    because they cannot be handed a bound socket.)"""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module, imported as it is when run as a script: with its own
    directory on ``sys.path`` (gpu.py imports train_step.py from beside it)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # where dataclasses look a class's module up
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def attempts(out: Path, trial: str) -> list[dict]:
    """The start records (``attempts.jsonl``) of a trial in the sweep output directory ``out``."""
    lines = (out / TRIALS_DIR / trial / ATTEMPTS_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines]


def logged(run_dir: Path) -> tuple[list[dict], dict]:
    """stats.jsonl lines and result.json of a run directory without the wall-clock ``time/*``
    metrics (the only thing a resumed run may log differently)."""
    def strip(record: dict) -> dict:
        return {k: v for k, v in record.items() if not k.startswith("time/")}
    lines = [strip(json.loads(line)) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    result = json.loads((run_dir / "result.json").read_text())
    return lines, {**result, "metrics": strip(result["metrics"])}


class Recorder(Reporter):
    """A reporter that records what :func:`core.gan.train.train` sends it and, with ``fail_at``, raises
    once at the first report of that step or later (a crash after the last checkpoint)."""

    def __init__(self, fail_at: int | None = None, tag: str = "run-1") -> None:
        self.reports: list[Report] = []
        self.started: list[tuple[dict[str, str], dict[str, Any] | None]] = []
        self.finished: list[RunResult] = []
        self.fail_at, self.tag = fail_at, tag

    def start(self, cfg: TrainConfig, info: dict[str, str], state: dict[str, Any] | None) -> None:
        self.started.append((info, state))

    def report(self, report: Report) -> None:
        self.reports.append(report)
        if self.fail_at is not None and report.step >= self.fail_at:
            self.fail_at = None
            raise RuntimeError("injected crash")

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.tag}

    def finish(self, result: RunResult) -> None:
        self.finished.append(result)


def checkpoint_states(run_dir: Path) -> tuple[dict, dict]:
    """(weights and optimiser states, the whole checkpoint) of a run directory's ``latest.pt``."""
    ckpt = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    return {k: ckpt[k] for k in ("G", "D", "G_ema", "opt_g", "opt_d")}, ckpt


def assert_same_states(a: dict, b: dict) -> None:
    """Bit-for-bit equal weights (G, D, EMA G) and optimiser moments of two checkpoints."""
    for key in ("G", "D", "G_ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    for key in ("opt_g", "opt_d"):
        for idx, s in a[key]["state"].items():
            for k, v in s.items():
                assert torch.equal(v, b[key]["state"][idx][k]), f"{key} state {idx}.{k} differs"
