"""One driver per sweep output directory: an OS file lock (``filelock``) on ``<out>/sweep.lock``.

The kernel releases the lock when its holder dies, so the lock of a killed driver is free at
once. The holder records itself in ``<out>/sweep.lock.json`` (pid, host, start time) right after
locking; a refused driver names it. This module imports nothing heavy, so the command line can
refuse a second driver before it loads torch and Ray (:func:`refuse_if_running`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from core.cache import atomic_write_bytes
from core.config import ConfigError

LOCK_FILE, HOLDER_FILE = "sweep.lock", "sweep.lock.json"
"""The driver lock of an output directory, and who holds it (pid, host, started)."""
HOLDER_WAIT_S = 3.0
"""How long a refused driver waits for the holder to record itself (it does so right after locking)."""


class SweepLockedError(ConfigError):
    """Another driver is running the sweep in this output directory."""


@contextmanager
def sweep_lock(out: Path) -> Iterator[None]:
    """Hold the driver lock of the output directory ``out`` (which must exist) for the block.

    The lock is an OS file lock (``filelock``), released by the kernel when the holder dies, so
    the lock of a killed driver is free at once; its holder record (``sweep.lock.json``: pid, host,
    start time) is overwritten by the next holder. Raises SweepLockedError, naming the running
    driver's PID and host, when another driver holds it.
    """
    lock = FileLock(out / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise SweepLockedError(
            f"another driver is running this sweep ({_lock_holder(out)}; lock {out / LOCK_FILE}). "
            "One driver per output directory: wait for it to end, or stop it and run the same command "
            "again to resume") from None
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        atomic_write_bytes(out / HOLDER_FILE, json.dumps(holder).encode())
        yield
    finally:
        (out / HOLDER_FILE).unlink(missing_ok=True)
        lock.release()


def _lock_holder(out: Path) -> str:
    """Who holds the lock of ``out``, from its holder record (written right after locking, so
    waited for up to HOLDER_WAIT_S)."""
    deadline = time.monotonic() + HOLDER_WAIT_S
    while not (out / HOLDER_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        holder = json.loads((out / HOLDER_FILE).read_text())
    except FileNotFoundError:
        return "its PID and host are not recorded"
    return f"PID {holder['pid']} on host {holder['host']}, started {holder['started']}"


def refuse_if_running(out: Path) -> None:
    """Raise SweepLockedError now if a driver holds the lock of ``out`` (a quick answer before the
    slow imports; :func:`sweep_lock` is what keeps a second driver out). Creates nothing."""
    if (out / LOCK_FILE).exists():
        with sweep_lock(out):
            pass
