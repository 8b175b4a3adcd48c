"""Ownership of ``--out``: one run at a time, and a run in it is never replaced by accident.

``claim_output(stage, cfg)`` holds ``OUT/.saferlhf.lock`` for the run. The lock file names
the process (pid, host, stage, start time); a second run on the same ``--out`` fails at once
naming it. A lock left by a process that no longer runs (killed) is stale and taken over.

For the training stages (configs with ``resume``) a directory that already holds a run (a
``COMPLETE`` marker, ``checkpoints/``, ``run_config.json`` or ``metrics.jsonl``) or other
files is refused unless ``--resume`` (continue it: the new config is compared with the saved
one, :func:`saferlhf.config.resume.check_resume_config`) or ``--overwrite`` (its
checkpoints, marker and logs are removed first) is given.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from saferlhf.errors import OutputInUseError
from saferlhf.io import COMPLETE_MARKER

LOCK_FILE = ".saferlhf.lock"
RUN_FILES = ("run_config.json", "metrics.jsonl", "samples.jsonl", "eval_samples.jsonl", "lagrange.json",
             COMPLETE_MARKER)
CHECKPOINTS = "checkpoints"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock file in a directory (created with O_EXCL; stale when its pid is gone)."""

    def __init__(self, folder: str | os.PathLike, stage: str) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.stage = stage
        self.held = False

    def holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def acquire(self) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "stage": self.stage,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = self.holder()
                if held is None:  # being written right now, or garbage: look again
                    time.sleep(0.05)
                    held = self.holder()
                if held is not None and held.get("pid") == os.getpid() and held.get("host") == info["host"]:
                    raise OutputInUseError(f"--out {self.path.parent} is already in use by this process "
                                           f"(saferlhf {held.get('stage')}); give each run its own --out")
                stale = held is None or (held.get("host") == info["host"] and not _alive(int(held.get("pid", -1))))
                if not stale:
                    raise OutputInUseError(
                        f"--out {self.path.parent} is in use by another run: saferlhf {held.get('stage')} "
                        f"(pid {held.get('pid')} on {held.get('host')}, started {held.get('started')}). Wait for it "
                        f"to finish or choose another --out (if that process is gone, delete {self.path})")
                print(f"saferlhf: taking over a stale lock in {self.path.parent} (pid {held and held.get('pid')} "
                      "no longer runs)", file=sys.stderr)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(info, fh)
            self.held = True
            return
        raise OutputInUseError(f"--out {self.path.parent}: could not take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            held = self.holder()
            if held is None or held.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False


def existing_run(out: Path) -> list[str]:
    """What in ``out`` belongs to an earlier run (or anything else), in words; [] when empty."""
    if not out.is_dir():
        return []
    found = []
    if (out / COMPLETE_MARKER).is_file():
        found.append("a finished run (COMPLETE)")
    ckpt = out / CHECKPOINTS
    if ckpt.is_dir():
        steps = sorted(p.name for p in ckpt.iterdir() if p.name.startswith("step-"))
        if steps:
            found.append(f"checkpoints {', '.join(steps)}")
    for name in RUN_FILES[:-1]:
        if (out / name).is_file():
            found.append(name)
    others = sorted(p.name for p in out.iterdir()
                    if p.name not in {LOCK_FILE, CHECKPOINTS, *RUN_FILES} and not p.name.startswith(".saferlhf-"))
    if others:
        found.append(f"{len(others)} other entries ({', '.join(others[:4])}{', ...' if len(others) > 4 else ''})")
    return found


def clear_run(out: Path) -> None:
    """Remove an earlier run's checkpoints, COMPLETE marker and logs (``--overwrite``)."""
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for p in out.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def prepare_training_output(out: Path, cfg: Any, stage: str) -> None:
    """Refuse to replace a run in ``out`` without --resume / --overwrite; apply them."""
    found = existing_run(out)
    if not found:
        return
    if getattr(cfg, "overwrite", False):
        print(f"saferlhf {stage}: --overwrite: removing the earlier run's checkpoints and logs in {out}",
              file=sys.stderr)
        clear_run(out)
        return
    if getattr(cfg, "resume", False):
        from saferlhf.config.resume import check_resume_config

        check_resume_config(out, cfg, stage=stage)
        return
    raise OutputInUseError(
        f"--out {out} already holds {'; '.join(found)}. Give --resume to continue that run, --overwrite to "
        "replace it (its checkpoints are removed), or choose another --out")


@contextmanager
def claim_output(stage: str, cfg: Any) -> Iterator[None]:
    """Hold ``cfg.out`` for the run (lock file) and check what is already in it."""
    from saferlhf.preflight import FILE_OUTPUT_STAGES, check_output_dir

    out = getattr(cfg, "out", None)
    # Under a multi-process launch (accelerate/torchrun set RANK) the run is one run: its first
    # process owns --out, the others write into it under that claim.
    if not isinstance(out, str) or stage in FILE_OUTPUT_STAGES or int(os.environ.get("RANK", "0")) != 0:
        yield
        return

    path = Path(out)
    created = not path.exists()
    check_output_dir(path)
    lock = RunLock(path, stage)
    try:
        lock.acquire()
        if hasattr(cfg, "resume"):
            prepare_training_output(path, cfg, stage)
        yield
    except BaseException:
        lock.release()
        if created:  # a run that failed before writing anything leaves no empty folder behind
            try:
                path.rmdir()
            except OSError:
                pass
        raise
    else:
        lock.release()
