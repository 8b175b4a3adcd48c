"""Crash-safe writing of folders (temporary name first, ``COMPLETE`` marker last) and JSON-safe values."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

COMPLETE_MARKER = "COMPLETE"


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Write a directory under a temporary name; rename it into place only on success.

    A ``COMPLETE`` marker is written last, so readers can tell a finished directory from
    one that a crash left behind. An existing ``final`` is replaced.
    """
    final = Path(final)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_dir(tmp: Path, final: Path) -> None:
    """Mark the finished folder ``tmp`` ``COMPLETE`` and rename it to ``final``, replacing an
    existing ``final`` only once the new one is in place."""
    (tmp / COMPLETE_MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    if final.exists():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)


@contextmanager
def atomic_files(target: str | Path) -> Iterator[Path]:
    """Write files into an existing folder (that also holds logs) as one step.

    The files are written to a temporary folder first and moved in only on success; the
    folder's ``COMPLETE`` marker is removed before and written after the move, so a crash at
    any point leaves a folder that is recognisably incomplete.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f".tmp-files-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        (target / COMPLETE_MARKER).unlink(missing_ok=True)
        for item in sorted(tmp.iterdir()):
            dest = target / item.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(item, dest)
        (target / COMPLETE_MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_complete(path: str | Path) -> bool:
    return (Path(path) / COMPLETE_MARKER).is_file()




def jsonable(x: Any) -> Any:
    """``x`` with numpy scalars as Python numbers, tuples as lists, keys as strings and
    non-finite floats as ``None`` (JSON has no NaN), for ``json.dumps`` of summaries."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


@contextmanager
def atomic_file(final: str | Path) -> Iterator[Path]:
    """Write one file under a temporary name in its folder; rename it into place only on success
    (readers never see a half-written file, and a failed write leaves any old file untouched)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def describe_source(source: Any) -> str:
    """How an error message names a model or data source: its path, or its type for an
    in-memory object (a ``datasets.Dataset``, a model, a list of dicts)."""
    return str(source) if isinstance(source, (str, os.PathLike)) else f"<{type(source).__name__}>"
