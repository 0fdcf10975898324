"""One driver per sweep output directory: an OS file lock (``filelock``) on ``<out>/sweep.lock``.

The kernel releases the lock when its holder dies, so the lock of a killed driver is free at
once. The holder records itself in ``<out>/sweep.lock.json`` (pid, host, start time) right after
locking; a refused driver names it. This module imports nothing heavy, so the command line takes
the lock before it loads torch and Ray: of two drivers started at once, the second is refused in
the time it takes to read the sweep file. A process that holds the lock may take it again (the
command line holds it around :func:`scaling.tune.run_checked_sweep`, which takes it too).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
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
_HELD: dict[Path, int] = {}
"""Output directories whose lock this process holds, and how many times it took each."""


class SweepLockedError(ConfigError):
    """Another driver is running the sweep in this output directory."""


def writable_directory(path: Path, what: str) -> None:
    """Create ``path`` and write a temporary file in it; ConfigError naming ``what`` if either fails."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as err:
        raise ConfigError(f"{what} cannot be written ({type(err).__name__}: {err.strerror or err}); "
                          "choose a directory this user can write") from None


@contextmanager
def sweep_lock(out: Path) -> Iterator[None]:
    """Hold the driver lock of the output directory ``out`` for the block.

    Creates ``out`` if needed (ConfigError naming ``output_dir`` when it cannot be written). The
    lock is an OS file lock (``filelock``), released by the kernel when the holder dies, so the
    lock of a killed driver is free at once; its holder record (``sweep.lock.json``: pid, host,
    start time) is overwritten by the next holder. A directory this call created and leaves
    holding nothing but the lock is removed again, so that a sweep refused under the lock (a
    weights file that cannot be read, a trial too large) leaves nothing behind. Raises
    SweepLockedError, naming the running driver's PID and host, when another driver holds it.
    """
    out = Path(out).absolute()
    if out in _HELD:
        _HELD[out] += 1
        try:
            yield
        finally:
            _HELD[out] -= 1
        return
    created = not out.exists()
    writable_directory(out, f"output_dir: {out}")
    lock = FileLock(out / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise SweepLockedError(
            f"another driver is running this sweep ({_lock_holder(out)}; lock {out / LOCK_FILE}). "
            "One driver per output directory: wait for it to end, or stop it and run the same command "
            "again to resume") from None
    _HELD[out] = 1
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        atomic_write_bytes(out / HOLDER_FILE, json.dumps(holder).encode())
        yield
    finally:
        del _HELD[out]
        (out / HOLDER_FILE).unlink(missing_ok=True)
        lock.release()
        if created and {p.name for p in out.iterdir()} <= {LOCK_FILE}:
            with contextlib.suppress(OSError):  # another driver may have begun writing meanwhile
                (out / LOCK_FILE).unlink()
                out.rmdir()


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
