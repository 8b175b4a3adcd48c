"""Independent stages in parallel worker processes (the demo's RL runs, score models, evals).

The tiny models of the verifiable world use one intra-op thread best (a second thread adds
synchronisation and little compute), so a machine with k cores runs k independent stages at
once faster than one stage on k threads: the demo trains ``ppo``, ``ppo_lag`` and the
``reward_shaping`` runs side by side, each in its own process with one thread.

``run_jobs(jobs, workers=k)``: with ``workers == 1`` the jobs run one after another in this
process, with their own progress bars (what a debugger wants); with ``k > 1`` they run in
``spawn``-ed worker processes (fresh interpreters: no inherited torch thread pools or CUDA
state), each worker's console output goes to ``log_dir/<job>.log``, and one progress bar per
job here follows the lines its trainer appends to its ``metrics.jsonl``. A failing job stops
the batch and its exception (``ConfigError``, ``NonFiniteLossError`` …) is raised here with
the job's name and log file added to the message.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Job:
    """One stage: ``fn(**kwargs)`` (``fn`` must be a module-level function: it is pickled)."""

    name: str
    fn: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    total: int | None = None  # steps, for the progress bar
    metrics: str | Path | None = None  # a metrics.jsonl whose lines count the steps done


@dataclass
class JobResult:
    name: str
    value: Any
    seconds: float


class JobError(RuntimeError):
    """A job failed in a worker process; the original exception is ``__cause__``."""


def _count_lines(path: Path | None) -> int:
    if path is None:
        return 0
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)
    except OSError:
        return 0


def _worker_init() -> None:
    # one intra-op thread per worker: k workers on k cores, no oversubscription
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import torch

    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _run_in_worker(fn: Callable[..., Any], kwargs: dict[str, Any], log_path: str | None) -> tuple[Any, float]:
    import contextlib
    import sys

    t0 = time.perf_counter()
    if log_path is None:
        return fn(**kwargs), time.perf_counter() - t0
    with open(log_path, "w", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        # rich consoles created after this point write to the redirected streams
        value = fn(**kwargs)
        sys.stdout.flush()
    return value, time.perf_counter() - t0


def run_jobs(jobs: list[Job], *, workers: int = 1, progress: bool = True,
             log_dir: str | Path | None = None, title: str = "") -> dict[str, JobResult]:
    """Run ``jobs`` (independent of each other) and return ``{name: JobResult}`` in job order."""
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique, got {names}")
    if workers <= 1 or len(jobs) <= 1:
        results = {}
        for job in jobs:
            t0 = time.perf_counter()
            value = job.fn(**job.kwargs)
            results[job.name] = JobResult(job.name, value, time.perf_counter() - t0)
        return results
    return _run_parallel(jobs, workers=min(workers, len(jobs)), progress=progress,
                         log_dir=Path(log_dir) if log_dir is not None else None, title=title)


def _run_parallel(jobs: list[Job], *, workers: int, progress: bool, log_dir: Path | None,
                  title: str) -> dict[str, JobResult]:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from saferlhf.runtime import progress_bar

    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    logs = {j.name: str(log_dir / f"{j.name}.log") if log_dir is not None else None for j in jobs}
    bar, _ = progress_bar(0, title or "jobs", enabled=progress)
    bar.remove_task(bar.task_ids[0])
    tasks = {j.name: bar.add_task(j.name, total=j.total, info="queued") for j in jobs}
    results: dict[str, JobResult] = {}
    with bar, ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                  initializer=_worker_init) as pool:
        futures = {pool.submit(_run_in_worker, j.fn, j.kwargs, logs[j.name]): j for j in jobs}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for fut in done:
                job = futures[fut]
                try:
                    value, seconds = fut.result()
                except BaseException as e:
                    for other in pending:
                        other.cancel()
                    where = f" (its output: {logs[job.name]})" if logs[job.name] else ""
                    message = f"stage {job.name!r} failed{where}: {e}"
                    error = type(e)(message) if _reraisable(e) else JobError(message)
                    raise error from e
                results[job.name] = JobResult(job.name, value, seconds)
                bar.update(tasks[job.name], completed=job.total or 1, total=job.total or 1,
                           info=f"done in {seconds:.0f} s")
            for fut in pending:
                job = futures[fut]
                done_steps = _count_lines(Path(job.metrics)) if job.metrics is not None else 0
                bar.update(tasks[job.name], completed=min(done_steps, job.total or done_steps),
                           info="running" if fut.running() else "queued")
    return {j.name: results[j.name] for j in jobs}


def _reraisable(e: BaseException) -> bool:
    """Exceptions of our own error types keep their type (the CLI maps them to exit codes)."""
    try:
        type(e)("probe")
    except Exception:
        return False
    return type(e).__module__.startswith("saferlhf") or isinstance(e, (FileNotFoundError, ValueError))


__all__ = ["Job", "JobError", "JobResult", "run_jobs"]
