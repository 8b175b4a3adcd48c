"""The supervised training loop shared by SFT and the score-model trainers.

A trainer supplies the model, the number of examples, a ``collate(indices)`` function and a
``loss_fn(model, batch) -> (loss, metrics)``; the loop owns the budget (optimiser steps),
gradient accumulation, clipping, the schedule, logging, NaN/inf checks, periodic
evaluation, atomic checkpoints and exact resume.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saferlhf.config.stages import TrainConfig
from saferlhf.trainers.common import (
    MetricsLogger,
    NonFiniteLossError,
    TrainerState,
    check_finite,
    cpu_threads,
    load_training_checkpoint,
    make_optimizer,
    make_scheduler,
    micro_batch_stream,
    planned_steps,
    progress_bar,
    save_run_config,
    save_training_checkpoint,
    step_once_per_optimizer_step,
    truncate_metrics,
)


@dataclass
class LoopResult:
    steps: int
    final_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    seconds: float


def _mean_metrics(acc: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in acc[0]:
        vals = [float(m[k]) for m in acc if k in m]
        out[k] = sum(vals) / len(vals)
    return out


def start_state(cfg: TrainConfig, accelerator, out: Path, name: str, *,
                fresh: TrainerState | None = None) -> TrainerState:
    """A fresh state (``fresh``, default empty), or the last complete checkpoint's with
    ``--resume``; records the run's config and drops metrics logged after the checkpoint."""
    state = fresh if fresh is not None else TrainerState()
    if cfg.resume:
        loaded = load_training_checkpoint(accelerator, out)
        if loaded is not None:
            state = loaded
            accelerator.print(f"[{name}] resumed from step {state.step}")
        else:
            accelerator.print(f"[{name}] --resume: no complete checkpoint in {out}; starting fresh")
    if accelerator.is_main_process:
        save_run_config(out, cfg)
        if state.step > 0:
            truncate_metrics(out / "metrics.jsonl", state.step)
    return state


def micro_step(accelerator, model, batch, loss_fn, optimizer, scheduler, *, params, max_grad_norm: float,
                state: TrainerState, epoch: int) -> dict[str, float]:
    """Forward, backward and (at the end of an accumulation) the clipped optimiser step of one
    micro-batch. A non-finite loss or gradient norm stops the run before the optimiser applies it."""
    with accelerator.accumulate(model):
        with accelerator.autocast():
            loss, metrics = loss_fn(model, batch)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"step {state.step + 1}: metric 'loss' is {loss_value} (before the optimiser "
                f"step; micro-batch {state.micro_step}, epoch {epoch}); stopping. Lower the "
                "learning rate, keep gradient clipping (max_grad_norm) on, or check the data "
                "of this step.")
        accelerator.backward(loss)
        if accelerator.sync_gradients and max_grad_norm > 0:
            metrics["grad_norm"] = float(accelerator.clip_grad_norm_(params, max_grad_norm))
            if not math.isfinite(metrics["grad_norm"]):
                raise NonFiniteLossError(
                    f"step {state.step + 1}: metric 'grad_norm' is {metrics['grad_norm']} "
                    f"(loss {loss_value:.4g}; before the optimiser step); stopping. Lower the "
                    "learning rate or check the data of this step.")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    metrics["loss"] = loss_value
    return metrics


def run_supervised_loop(
    cfg: TrainConfig,
    accelerator,
    model: torch.nn.Module,
    *,
    n_examples: int,
    collate: Callable[[list[int]], dict[str, Any]],
    loss_fn: Callable[[torch.nn.Module, dict[str, Any]], tuple[torch.Tensor, dict[str, float]]],
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    on_step_end: Callable[[torch.nn.Module, dict[str, Any]], None] | None = None,
    name: str = "train",
) -> LoopResult:
    """Train ``model`` for the configured number of optimiser steps; return the last metrics.

    A NaN/inf loss stops the run before the optimiser applies it (:class:`NonFiniteLossError`
    names the step and the metric); so does a non-finite metric after the step. Small models
    on the CPU train on one intra-op thread (:func:`~saferlhf.trainers.common.cpu_threads`).
    """
    out = Path(cfg.out)
    steps, per_epoch = planned_steps(
        n_examples, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, epochs=cfg.epochs,
        max_steps=cfg.max_steps, world_size=accelerator.num_processes)
    optimizer = make_optimizer(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, kind=cfg.lr_scheduler, total_steps=steps,
                               warmup_ratio=cfg.warmup_ratio)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    step_once_per_optimizer_step(scheduler)

    state = start_state(cfg, accelerator, out, name)
    logger = MetricsLogger(out, report_to=cfg.report_to, is_main=accelerator.is_main_process,
                           run_name=name, console_every=cfg.log_every, resume=state.step > 0, config=cfg)
    stream = micro_batch_stream(n_examples, cfg.batch_size, seed=cfg.seed,
                                rank=accelerator.process_index, world_size=accelerator.num_processes,
                                start=state.micro_step)
    progress, task = progress_bar(steps, name, enabled=cfg.progress and accelerator.is_main_process)
    progress.update(task, completed=state.step)
    t0 = time.perf_counter()
    last: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    with contextlib.ExitStack() as stack:
        stack.enter_context(cpu_threads(model, accelerator.device))
        stack.callback(logger.close)
        stack.enter_context(progress)
        while state.step < steps:
            acc: list[dict[str, float]] = []
            for _ in range(cfg.grad_accum):
                epoch, indices = next(stream)
                batch = collate(indices)
                metrics = micro_step(accelerator, model, batch, loss_fn, optimizer, scheduler,
                                      params=params, max_grad_norm=cfg.max_grad_norm, state=state, epoch=epoch)
                acc.append(metrics)
                state.micro_step += 1
                if on_step_end is not None:
                    on_step_end(model, batch)
            state.step += 1
            last = _mean_metrics(acc)
            last["lr"] = scheduler.get_last_lr()[0]
            last["epoch"] = state.micro_step / per_epoch
            check_finite(state.step, last)
            logger.log(state.step, {f"train/{k}": v for k, v in last.items()},
                       printer=progress.console.print)
            progress.update(task, advance=1, info=f"loss {last['loss']:.4f}")
            if evaluate is not None and cfg.eval_every and state.step % cfg.eval_every == 0 \
                    and state.step < steps:
                eval_metrics = evaluate(model)
                model.train()
                logger.log(state.step, {f"eval/{k}": v for k, v in eval_metrics.items()}, console=True,
                           printer=progress.console.print)
            if cfg.save_every and state.step % cfg.save_every == 0 and state.step < steps:
                save_training_checkpoint(accelerator, out, state)
        if evaluate is not None:
            eval_metrics = evaluate(model)
            logger.log(state.step, {f"eval/{k}": v for k, v in eval_metrics.items()}, console=True,
                       printer=progress.console.print)
    return LoopResult(steps=state.step, final_metrics=last, eval_metrics=eval_metrics,
                      seconds=time.perf_counter() - t0)
