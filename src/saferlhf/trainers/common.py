"""What every trainer shares: accelerate setup, optimiser/schedule, metrics, atomic checkpoints.

Checkpoints for ``--resume`` live in ``OUT/checkpoints/step-N``. Each is written under a
temporary name (``.tmp-step-N``) and renamed only when complete, and holds a ``COMPLETE``
marker written last, so a half-written checkpoint (a run killed mid-save) is never mistaken
for a complete one. Accelerate's ``save_state`` stores model, optimiser, scheduler and RNG
states (and shards them under FSDP / DeepSpeed); the trainer's own counters go to
``trainer_state.json``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from saferlhf.config import to_dict
from saferlhf.data.collate import pad_sequences  # noqa: F401  (re-exported)
from saferlhf.data.templates import encode_prompt_responses  # noqa: F401  (re-exported)
from saferlhf.distributed import make_accelerator, mixed_precision_of  # noqa: F401  (re-exported)
from saferlhf.errors import NonFiniteLossError  # noqa: F401  (re-exported)
from saferlhf.io import atomic_dir, atomic_files, is_complete  # noqa: F401  (re-exported)
from saferlhf.runtime import (  # noqa: F401  (re-exported: shared with the evaluators)
    SMALL_MODEL_PARAMS,
    THREADS_ENV,
    cpu_threads,
    progress_bar,
    threads_for,
)

CHECKPOINT_DIR = "checkpoints"



def seed_everything(seed: int) -> None:
    set_seed(seed)


def make_optimizer(params, *, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no decay on biases and norm weights.

    ``foreach=True``: the multi-tensor implementation, the same arithmetic as the per-parameter
    loop (bit-identical updates, checked in ``tests/test_bench_vs_trl.py``) with fewer kernel
    launches; torch picks it by default on CUDA only. The fused CPU kernel is faster still but
    rounds differently (~1e-7 after a few steps), so results would no longer reproduce bit for bit.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters (check LoRA targets / freeze settings)")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95), eps=1e-8, foreach=True)


def make_scheduler(optimizer, *, kind: str, total_steps: int, warmup_ratio: float):
    from transformers import get_scheduler

    return get_scheduler(
        kind,
        optimizer=optimizer,
        num_warmup_steps=round(warmup_ratio * total_steps),
        num_training_steps=max(total_steps, 1),
    )


def step_once_per_optimizer_step(scheduler):
    """Make a prepared scheduler advance exactly once per optimiser step on any number of processes.

    accelerate's prepared scheduler (``AcceleratedScheduler``) steps ``num_processes`` times
    per optimiser step unless ``split_batches`` is set: it assumes the schedule was planned in
    one process's batches. The trainers plan theirs in optimiser steps of the whole run
    (:func:`planned_steps` divides by the world size), so the extra steps would run the
    schedule ``num_processes`` times too fast. Gradient-accumulation and skipped-step handling
    stay accelerate's. Returns ``scheduler``."""
    if hasattr(scheduler, "split_batches"):
        scheduler.split_batches = True
    return scheduler


def planned_steps(n_examples: int, *, batch_size: int, grad_accum: int, epochs: float,
                  max_steps: int | None, world_size: int = 1) -> tuple[int, int]:
    """(optimiser steps, micro-batches per epoch) for a run: steps are the training budget."""
    per_epoch = max(1, math.ceil(n_examples / (batch_size * world_size)))
    steps = max(1, math.ceil(per_epoch * epochs / grad_accum))
    if max_steps is not None:
        steps = max_steps
    return steps, per_epoch


def epoch_batches(n: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1, shuffle: bool = True) -> list[list[int]]:
    """Deterministic micro-batches of example indices for one epoch on one process.

    The order depends only on (seed, epoch), so a resumed run sees exactly the batches an
    uninterrupted run would; processes take interleaved slices of each global batch.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    global_bs = batch_size * world_size
    batches = []
    for start in range(0, n, global_bs):
        chunk = order[start:start + global_bs]
        mine = chunk[rank::world_size]
        if len(mine):
            batches.append(mine.tolist())
    return batches


def micro_batch_stream(n: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                       start: int = 0) -> Iterator[tuple[int, list[int]]]:
    """Endless (epoch, indices) micro-batches, skipping the first ``start`` (for resume)."""
    epoch, done = 0, 0
    while True:
        for b in epoch_batches(n, batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world_size):
            if done >= start:
                yield epoch, b
            done += 1
        epoch += 1


def check_finite(step: int, metrics: dict[str, float]) -> None:
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not math.isfinite(v):
            raise NonFiniteLossError(
                f"step {step}: metric '{k}' is {v}; stopping. Lower the learning rate, enable "
                "gradient clipping (max_grad_norm) or check the data of this step."
            )


def _scalar(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().float().item() if v.numel() == 1 else v.detach().float().tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


class MetricsLogger:
    """Metrics to ``metrics.jsonl`` (always), the console, and TensorBoard / W&B when asked.

    Only the main process writes. Never logs environment variables.
    """

    def __init__(self, out_dir: str | Path, *, report_to: str = "none", is_main: bool = True,
                 run_name: str = "run", console_every: int = 10, resume: bool = False,
                 config: Any = None) -> None:
        self.out_dir = Path(out_dir)
        self.is_main = is_main
        self.console_every = max(1, console_every)
        self._tb = None
        self._wandb = None
        if not is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "metrics.jsonl"
        if not resume and self.path.exists():
            self.path.unlink()
        self._fh = self.path.open("a")
        if report_to == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # pragma: no cover - depends on the install
                raise RuntimeError("report_to=tensorboard needs `pip install tensorboard`") from e
            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
        elif report_to == "wandb":
            try:
                import wandb
            except ImportError as e:  # pragma: no cover
                raise RuntimeError("report_to=wandb needs `pip install wandb` and a login") from e
            self._wandb = wandb.init(project="saferlhf", name=run_name,
                                     config=to_dict(config) if config is not None else None)

    def log(self, step: int, metrics: dict[str, Any], *, console: bool | None = None,
            printer=None) -> None:
        if not self.is_main:
            return
        record = {"step": step, **{k: _scalar(v) for k, v in metrics.items()}}
        self._fh.write(json.dumps(record, sort_keys=False) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(record, step=step)
        show = console if console is not None else (step % self.console_every == 0)
        if show:
            text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in record.items() if not isinstance(v, (list, dict)))
            (printer or print)(text)

    def close(self) -> None:
        if not self.is_main:
            return
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def truncate_metrics(path: str | Path, last_step: int) -> None:
    """Drop the records of ``metrics.jsonl`` past ``last_step`` (a resumed run logs them again).

    A run killed after its last checkpoint has logged steps that the resumed run repeats; a
    torn last line (killed mid-write) goes too. Rewritten atomically (temporary file, rename).
    """
    path = Path(path)
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and int(rec.get("step", 0)) <= last_step:
            keep.append(line)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(k + "\n" for k in keep))
    os.replace(tmp, path)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoints/step-N`` in ``out_dir`` (half-written ones ignored)."""
    root = Path(out_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step-*") if p.is_dir() and is_complete(p)]
    if not done:
        return None
    return max(done, key=lambda p: int(p.name.split("-")[1]))


@dataclass
class TrainerState:
    """Counters saved with each checkpoint so a resumed run continues exactly."""

    step: int = 0  # optimiser steps done
    micro_step: int = 0  # micro-batches consumed
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"step": self.step, "micro_step": self.micro_step, "extra": self.extra}))

    @classmethod
    def load(cls, path: Path) -> TrainerState:
        d = json.loads(path.read_text())
        return cls(step=d["step"], micro_step=d["micro_step"], extra=d.get("extra", {}))


def _agree_on_error(accelerator: Accelerator, error: BaseException | None) -> BaseException | None:
    """Every process's view of whether any process failed (so all stop together, none waits
    forever at the next collective)."""
    if accelerator.num_processes <= 1:
        return error
    flag = torch.tensor([0.0 if error is None else 1.0], device=accelerator.device)
    if error is None and float(accelerator.gather(flag).max()) > 0:
        return OSError("another process could not write its part of the checkpoint")
    if error is not None:
        accelerator.gather(flag)
    return error


def save_training_checkpoint(accelerator: Accelerator, out_dir: str | Path, state: TrainerState,
                             *, keep: int = 2) -> Path | None:
    """Atomic ``checkpoints/step-N`` with accelerate state + trainer counters; keeps the last ``keep``.

    Collective: every process calls ``accelerator.save_state`` into the same temporary folder,
    so each one's RNG state is saved (``random_states_<rank>.pkl``, which ``load_state``
    restores on the same rank) and sharded model / optimiser states (FSDP, DeepSpeed) are
    complete; accelerate writes unsharded model and optimiser files on the main process only.
    The main process then adds the trainer counters and the ``COMPLETE`` marker and renames
    the folder into place. The optimiser state is stored as safetensors
    (:mod:`saferlhf.trainers.resume`). A failed write (disk full, permissions) on any process
    removes the half-written folder, keeps the previous checkpoints and stops every process
    with a :class:`~saferlhf.errors.CheckpointError`.
    """
    from saferlhf.errors import CheckpointError
    from saferlhf.io import publish_dir
    from saferlhf.trainers.resume import save_optimizer_safetensors

    final = Path(out_dir) / CHECKPOINT_DIR / f"step-{state.step}"
    accelerator.wait_for_everyone()
    main = accelerator.is_main_process
    error: BaseException | None = None
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if accelerator.num_processes > 1:  # every process writes into the main process's folder
        from accelerate.utils import broadcast_object_list

        tmp = Path(broadcast_object_list([str(tmp)], from_process=0)[0])
    if main:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        except OSError as e:
            error = e
    error = _agree_on_error(accelerator, error)
    if error is None:
        try:
            accelerator.save_state(str(tmp), safe_serialization=True)
        except OSError as e:
            error = e
        error = _agree_on_error(accelerator, error)
    if error is None and main:
        try:
            save_optimizer_safetensors(tmp)
            state.save(tmp / "trainer_state.json")
            publish_dir(tmp, final)
        except OSError as e:
            error = e
    error = _agree_on_error(accelerator, error)
    if error is not None:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        prev = latest_checkpoint(out_dir)
        kept = (f"the previous checkpoint {prev} is intact and --resume continues from it" if prev
                else "no earlier checkpoint exists")
        where = f": {error.filename}" if getattr(error, "filename", None) else ""
        raise CheckpointError(
            f"could not write checkpoint {final} ({getattr(error, 'strerror', None) or error}{where}); nothing of it "
            f"was kept, {kept}. Free disk space / fix the permissions of --out, then rerun with --resume") from error
    if main:
        done = sorted((p for p in final.parent.glob("step-*") if is_complete(p)),
                      key=lambda p: int(p.name.split("-")[1]))
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def complete_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete ``checkpoints/step-N`` folders, newest first."""
    root = Path(out_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if p.is_dir() and is_complete(p)]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def load_training_checkpoint(accelerator: Accelerator, out_dir: str | Path) -> TrainerState | None:
    """Load the newest complete checkpoint that reads; a corrupt one (even with its COMPLETE
    marker) is skipped with a warning and the previous complete one is used."""
    import warnings

    from saferlhf.errors import CheckpointError
    from saferlhf.trainers.resume import check_random_states, optimizer_load_dir, verify_checkpoint

    root = Path(out_dir) / CHECKPOINT_DIR
    if accelerator.is_main_process and root.is_dir():
        for leftover in root.glob(".tmp-step-*"):  # a save killed before its rename
            shutil.rmtree(leftover, ignore_errors=True)
    failures = []
    for ckpt in complete_checkpoints(out_dir):
        try:
            verify_checkpoint(ckpt)
            state = TrainerState.load(ckpt / "trainer_state.json")
            check_random_states(ckpt)
            with optimizer_load_dir(ckpt) as readable:
                accelerator.load_state(str(readable))
        except Exception as e:  # noqa: BLE001 - any unreadable part: fall back to the previous checkpoint
            first = str(e).splitlines()[0][:200] if str(e) else ""
            failures.append(f"{ckpt.name}: {type(e).__name__}: {first}")
            msg = f"checkpoint {ckpt} is corrupt ({failures[-1]}); falling back to the previous complete one"
            warnings.warn(msg, stacklevel=2)
            print(f"saferlhf: warning: {msg}", file=sys.stderr)
            continue
        return state
    if failures:
        raise CheckpointError(f"--resume: no checkpoint in {root} could be read ({'; '.join(failures)}). "
                              "Start again with --overwrite, or restore the checkpoints")
    return None


def save_run_config(out_dir: str | Path, config: Any, name: str = "run_config.json") -> None:
    """Record the config a run applies (written atomically). On a resumed run (a checkpoint in
    ``out_dir``) the new config is first checked against the saved one: a changed fixed key is
    a ConfigError (:func:`saferlhf.trainers.resume.check_resume_config`), so nothing that was
    not applied is recorded."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if getattr(config, "resume", False) and name == "run_config.json" and latest_checkpoint(out) is not None:
        from saferlhf.trainers.resume import check_resume_config

        check_resume_config(out, config, quiet=True)
    tmp = out / f".{name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(to_dict(config), indent=2, sort_keys=True))
    os.replace(tmp, out / name)
