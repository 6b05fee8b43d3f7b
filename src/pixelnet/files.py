"""Files on disk: written so that nothing half-written ever looks complete, read and hashed with clear errors.

A file is written to a temporary sibling, synced and renamed over its path (`atomic_file`); a directory is filled
in a temporary sibling and renamed into place (`atomic_dir`).  An interrupted command leaves the old output or
none, never a torn one.  Every failure is one PixelNetError naming the path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pixelnet.errors import PixelNetError


def make_dir(path: Path) -> Path:
    """mkdir -p, or a PixelNetError naming the directory."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PixelNetError(f"cannot create output directory {path}: {e.strerror}; choose a writable location") from None
    return path


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it is synced and renamed over `path`."""
    path = Path(path)
    make_dir(path.parent)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise PixelNetError(f"cannot write {path}: {e.strerror}. Choose a writable location or fix its permissions.") from e
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())  # the rename below must not land before the bytes (a crash of the machine)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # the mode a plain open() gives, not mkstemp's owner-only 0600
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    """`obj` as sorted, indented JSON, atomically: the one JSON writer of every report."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as e:
        raise PixelNetError(f"cannot write output directory {path}: {e.strerror}. "
                            "Choose a writable location or fix its permissions.") from e
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_npy(path: Path, *, remedy: str) -> np.ndarray:
    """np.load without pickles; a missing or unreadable file is a PixelNetError naming it and ending with `remedy`."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise PixelNetError(f"{path} not found: {remedy}") from None
    except (ValueError, OSError, EOFError) as e:
        raise PixelNetError(f"cannot read {path} ({e}); {remedy}") from None


def sha256_file(path: Path) -> str:
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
