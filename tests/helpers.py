"""Plain helpers shared by several test files (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from scaling.tune import ATTEMPTS_FILE, TRIALS_DIR


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def attempts(out: Path, trial: str) -> list[dict]:
    """The start records (``attempts.jsonl``) of a trial in the sweep output directory ``out``."""
    lines = (out / TRIALS_DIR / trial / ATTEMPTS_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines]
