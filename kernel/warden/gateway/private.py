"""Owner-only files and directories for state that holds personal data or secrets
(local mode's audit and approvals stores, the demo database, the policy, the token).

Files 0600 and directories 0700, applied to what exists already too (an upgrade from a
version that created them 0644/0755 is tightened on the next start)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Any

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """``path`` created if missing (parents too), then set to 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """``path`` (if it exists and is ours) set to 0600."""
    with contextlib.suppress(FileNotFoundError, PermissionError):
        os.chmod(path, FILE_MODE)
    return path


def tighten_tree(root: Path) -> None:
    """Every directory under ``root`` (itself included) 0700, every file 0600; symlinks
    are left alone (chmod would follow them out of the tree)."""
    if not root.is_dir() or root.is_symlink():
        return
    private_dir(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                with contextlib.suppress(PermissionError):  # not ours: leave it
                    os.chmod(p, DIR_MODE)
        for name in filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                private_file(p)


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, created (or truncated) with mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), FILE_MODE)  # an existing file keeps its mode on O_CREAT
        fh.write(text)
    return path


def open_private(path: Path, mode: str = "ab") -> IO[Any]:
    """``open(path, mode)`` for a file created 0600 (a log, a lock)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return os.fdopen(fd, mode)
