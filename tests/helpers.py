"""Plain helpers shared by several test files (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from scaling.grid import ATTEMPTS_FILE, TRIALS_DIR


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
