"""The data directory is private: 0700, and the files the worker writes into it 0600.

It holds rendered exports (users' menus and documents), mails with download links,
the link-signing secret and possibly an embedded database: nothing another local
user should read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def make_private_dir(path: Path) -> Path:
    """Create `path` (and any missing parents) 0700, or tighten it to 0700 if it exists looser.

    A directory we do not own (a volume mounted root-owned, writable through its
    group) cannot be chmod-ed: that is logged, not fatal.
    """
    try:
        if stat.S_IMODE(path.stat().st_mode) == PRIVATE_DIR_MODE:
            return path  # the common case (every upload asks): one stat, not one per parent
    except FileNotFoundError:
        pass
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):  # Path.mkdir(parents=True) would make the parents 0777 & ~umask
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=PRIVATE_DIR_MODE)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode != PRIVATE_DIR_MODE:
        try:
            os.chmod(path, PRIVATE_DIR_MODE)
        except PermissionError as exc:
            log.warning(
                "data directory is not private and cannot be made so",
                extra={"path": str(path), "mode": oct(mode), "error": str(exc)},
            )
    return path


def write_private_file(
    target: Path, write: Callable[[BinaryIO], object], *, temp_dir: Path | None = None, exclusive: bool = False
) -> bool:
    """Write `target` whole or not at all, created 0600 (the rename keeps the mode).

    `write` fills a temporary file in `temp_dir` (default: the target's folder; it
    must be on the same file system), which is fsync-ed and renamed over `target`;
    with `exclusive`, hard-linked instead, so an existing target wins (returns False).
    A failure leaves no temporary file behind and raises the OSError.
    """
    tmp = (temp_dir or target.parent) / f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if not exclusive:
            os.replace(tmp, target)
            return True
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
