"""Files only their owner may read (keys, broker credentials, broker configs that hold a
password): 0600 from the first byte, never chmod-ed after, so there is no moment at which
another user of the machine could open one."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_private"]


def write_private(path: Path, text: str, *, exclusive: bool = False) -> None:
    """Write `text` to `path`, readable by its owner only, and durably (fsync).

    `exclusive`: create the file, FileExistsError if it is there (two writers racing cannot
    each keep a different secret). Otherwise the file is replaced atomically through a
    temporary beside it, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path if exclusive else path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if not exclusive:
        target.unlink(missing_ok=True)  # left by a crash, maybe with another mode
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # O_CREAT's mode is filtered by the umask
        os.write(descriptor, text.encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    if not exclusive:
        os.replace(target, path)
