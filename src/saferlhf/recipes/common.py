"""What the text and image demos share: stage timing, parallel stages, the score-model, RL and
evaluation jobs, and the summary keys of the report."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saferlhf.config.stages import CostModelConfig, EvalScoreModelConfig, RewardModelConfig, RLConfig
from saferlhf.jobs import Job, run_jobs


@dataclass(frozen=True)
class Sizes:
    """What every demo sizes: its world, training epochs, RL run and bootstrap."""

    n_sft: int
    n_pairs_train: int
    n_pairs_eval: int
    n_prompts_train: int
    n_eval_benign: int
    n_eval_harmful: int
    sft_epochs: float
    score_epochs: float
    rl_iterations: int
    rollout_batch_size: int
    mini_batch_size: int
    n_boot: int


class StageTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextmanager
    def __call__(self, name: str):
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        print(f"=== {name}: {self.seconds[name]:.1f} s ===", flush=True)


def run_stage_jobs(timer: StageTimer, title: str, jobs: list[Job], *, workers: int, progress: bool,
                   log_dir: Path) -> dict[str, Any]:
    """Run independent stages (``workers`` processes, :func:`saferlhf.jobs.run_jobs`) under one
    timer entry ``title``; each stage's own seconds go to the timings too. Returns {name: value}."""
    with timer(title):
        done = run_jobs(jobs, workers=workers, progress=progress, log_dir=log_dir, title=title)
    for name, r in done.items():
        timer.seconds[name] = round(r.seconds, 2)
    return {name: r.value for name, r in done.items()}


@dataclass
class DemoRun:
    """One demo run's output folder, worker count, progress setting and stage timings."""

    out: Path
    workers: int
    progress: bool
    timer: StageTimer = field(default_factory=StageTimer)

    def parallel(self, title: str, jobs: list[Job]) -> dict[str, Any]:
        return run_stage_jobs(self.timer, title, jobs, workers=self.workers, progress=self.progress,
                              log_dir=self.out / "logs")


def train_rl(rl_cfg: RLConfig) -> dict[str, Any]:
    from saferlhf.trainers.rl import SafeRLTrainer

    result = SafeRLTrainer(rl_cfg).train()
    return {"history": result["history"], "final_lambda": result["lambda"], "at_cap": result["at_cap"],
            "constraint": result.get("constraint")}


def rl_job(name: str, rl_cfg: RLConfig) -> Job:
    return Job(f"rl_{name}", train_rl, dict(rl_cfg=rl_cfg), total=rl_cfg.iterations,
               metrics=Path(rl_cfg.out) / "metrics.jsonl")


def train_and_eval_score_model(kind: str, train_cfg: RewardModelConfig | CostModelConfig,
                               eval_cfg: EvalScoreModelConfig) -> dict[str, Any]:
    from saferlhf.eval.score_eval import run_eval_score_model
    from saferlhf.trainers.score import train_score_model

    trained = train_score_model(train_cfg, kind)
    summary = run_eval_score_model(eval_cfg)
    if trained.get("calibration") is not None:  # the cost model's P(unsafe) fit (calibration.json)
        summary["calibration"] = trained["calibration"]
    return summary


def eval_policy(path: Path, world_dir: Path, cm: Path, budget: float, n_boot: int, seed: int,
                out: Path, *, max_new_tokens: int, modality: str = "auto",
                cost_transform: str = "identity") -> dict[str, Any]:
    from saferlhf.eval.world_cli import evaluate_policy_dir, write_world_eval

    result = evaluate_policy_dir(path, world_dir, cost_model=cm, budget=budget, max_new_tokens=max_new_tokens,
                                 n_boot=n_boot, seed=seed, modality=modality, cost_transform=cost_transform)
    return write_world_eval(result, out)


def rm_keys(s: dict[str, Any]) -> dict[str, Any]:
    return {k: s.get(k) for k in ("accuracy", "oracle_agreement", "n")}


def cm_keys(s: dict[str, Any]) -> dict[str, Any]:
    return {k: s.get(k) for k in ("accuracy", "sign_accuracy", "auroc", "oracle_agreement",
                                  "oracle_sign_accuracy", "oracle_auroc", "n", "calibration")}
