"""The user cache directory and crash-safe writes into it.

Everything gat-sweep prepares once and reuses (the embedded digits dataset, its VAE and
classifier, torch-fidelity reference statistics) lives under one directory:
``$GAT_SWEEP_CACHE`` if set, else ``~/.cache/gat-sweep``. Entries are keyed by a content hash,
so a changed input or preparation setting never reuses a stale entry.

Writes are atomic: a directory is built under a temporary name beside its final name and renamed
into place in one step (POSIX ``rename`` of a directory is atomic), so a killed preparation
leaves no half-written entry, and when two processes prepare the same entry at once the first
rename wins and the second discards its copy.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.config import ConfigError

CACHE_ENV = "GAT_SWEEP_CACHE"
"""Environment variable naming the cache directory (absolute path)."""
DEFAULT_CACHE = Path("~/.cache/gat-sweep")


def cache_root() -> Path:
    """Absolute cache directory: ``$GAT_SWEEP_CACHE`` or ``~/.cache/gat-sweep`` (not created here)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser().resolve()


def content_hash(*parts: bytes | str | dict[str, Any], length: int = 16) -> str:
    """Hex SHA-256 prefix (``length`` characters) over the parts, in order.

    Dicts are hashed as canonical JSON (sorted keys), strings as UTF-8, bytes as they are; each
    part is length-prefixed so ("ab", "c") and ("a", "bc") differ.
    """
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, dict):
            part = json.dumps(part, sort_keys=True, separators=(",", ":"))
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:length]


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Full hex SHA-256 of a file's bytes, read in ``chunk``-byte pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it to ``final`` on success.

    Yields the temporary directory (same parent, so the rename stays on one file system). On an
    exception the temporary directory is removed and ``final`` is untouched. If ``final`` appeared
    meanwhile (another process finished first), the copy built here is discarded and the existing
    one kept.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    """The process's umask (os.umask can only be read by setting it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    A process killed mid-write leaves the previous ``path`` intact and no temporary file behind
    once the call returns or raises. The file gets the permissions of an ordinary new file
    (0666 less the umask), not mkstemp's 0600. Returns ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def json_text(obj: Any, indent: int | None = None) -> str:
    """``json.dumps`` that writes valid JSON: a non-finite float (NaN, +-Infinity, which JSON has
    no literal for) becomes null, at any depth."""
    def finite(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(item) for item in value]
        return value

    return json.dumps(finite(obj), indent=indent, allow_nan=False)


class DiskFullError(ConfigError):
    """Too little free space on a device for what a run writes there: the user frees space and
    runs the same command again (a retry without that would fail the same way)."""


def size_text(n_bytes: float) -> str:
    """Bytes for people: ``512 B``, ``4.3 MiB``, ``1.2 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n_bytes) < 1024:
            return f"{n_bytes:.3g} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.3g} TiB"


def check_free_space(directory: Path, needed: int, what: str) -> None:
    """Raise DiskFullError naming ``directory`` and the space to free when its device has fewer
    than ``needed`` bytes free for ``what`` (e.g. "checkpoint iter_0000500.pt: the numbered file
    and latest.pt")."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise DiskFullError(f"no space for {what} in {directory}: its device has {size_text(free)} free and this "
                            f"needs {size_text(needed)}; free at least {size_text(needed - free)} there, then run "
                            "the same command again")
