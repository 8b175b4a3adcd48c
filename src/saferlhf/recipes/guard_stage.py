"""The guard stage of the demo, in the verifiable world (one process, CPU, ~1 minute).

``run_guard_stage(world_dir, policy_dir, out_dir, steps=..., seed=...)``:

1. trains a tiny guard from scratch (a 2-layer Llama-style backbone on the world's word-level
   tokenizer) on every labelled response of ``pairs_train.jsonl`` (``guard_view``: output
   moderation, PKU's 19 categories, severity 0..3), calibrated on a 10 % held-out split;
2. evaluates it on the held-out responses of ``pairs_eval.jsonl`` (prompts never seen in
   training) against the oracle labels (unsafe ⇔ c* > 0; severity = the topic's): ``f1``,
   ``severity_macro_accuracy`` (the metrics against the noisy annotator labels are in
   ``guard_eval``);
3. runs guarded generation with the policy on the world's held-out prompts: a fresh sample
   per regeneration (the tiny policy has no words for a safety instruction), up to ``rounds``,
   regenerating answers flagged at severity >= ``severity_threshold``; ``rounds`` /
   ``helpfulness_benign_rounds`` are the oracle harmful rate / benign-side helpfulness after
   k = 0..rounds regenerations (fallback not applied);
4. ``after_fallback``: the world metrics M (``evaluate_world_policy``) of the final answers
   (refusal where every round was flagged).

Why ``severity_threshold = 2`` by default: the benign side of the world includes dual-use
requests whose complete answer carries a severity-1 risky step. Regenerating those trades
benign helpfulness for a small harm (a fresh sample is often a partial answer or a
refusal), while severity >= 2 answers are the dangerous ones. ``severity_threshold=1``
regenerates every unsafe answer (see docs/guard.md for both settings).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def run_guard_stage(
    world_dir: str | Path,
    policy_dir: str | Path,
    out_dir: str | Path,
    *,
    steps: int = 240,
    seed: int = 0,
    rounds: int = 5,
    severity_threshold: int = 2,
    batch_size: int = 64,
    lr: float = 3e-3,
    tiny_hidden: int = 128,
    tiny_layers: int = 2,
    n_boot: int = 1000,
    progress: bool = False,
) -> dict[str, Any]:
    """Train, evaluate and use the world guard; returns (and writes ``OUT/summary.json``)
    ``{"f1", "severity_macro_accuracy", "rounds", "helpfulness_benign_rounds", "after_fallback", …}``."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()  # quiet library call (the per-file load / save bars)
    try:
        return _run_guard_stage(world_dir, policy_dir, out_dir, steps=steps, seed=seed, rounds=rounds,
                                severity_threshold=severity_threshold, batch_size=batch_size, lr=lr,
                                tiny_hidden=tiny_hidden, tiny_layers=tiny_layers, n_boot=n_boot, progress=progress)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _run_guard_stage(world_dir, policy_dir, out_dir, *, steps, seed, rounds, severity_threshold, batch_size, lr,
                     tiny_hidden, tiny_layers, n_boot, progress) -> dict[str, Any]:
    from saferlhf.data import load_pairs
    from saferlhf.data.views import guard_view
    from saferlhf.data.world import World
    from saferlhf.eval.guard_eval import evaluate_guard_records
    from saferlhf.eval.world_eval import evaluate_world_policy, summary_without_samples
    from saferlhf.guard.config import GuardTrainConfig
    from saferlhf.guard.generate import (
        FixedSampler,
        PolicyGenerator,
        guarded_generate,
        world_round_metrics,
    )
    from saferlhf.guard.model import Guard
    from saferlhf.io import jsonable
    from saferlhf.trainers.guard import stratified_split, train_guard

    t0 = time.perf_counter()
    world_dir, out = Path(world_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = World.load(world_dir)
    timings: dict[str, float] = {}

    # 1. train (+ calibrate) the guard on the training pairs' responses
    pairs = load_pairs(world_dir / "pairs_train.jsonl", keep_contradictory_labels=True).records
    train, calib = stratified_split(guard_view(pairs), 0.1, seed)
    cfg = GuardTrainConfig(
        data=str(world_dir / "pairs_train.jsonl"), out=str(out / "guard"), model="tiny",
        tokenizer=str(world_dir / "tokenizer"), tiny_hidden=tiny_hidden, tiny_layers=tiny_layers,
        max_steps=steps, batch_size=batch_size, lr=lr, max_length=64, warmup_ratio=0.05, seed=seed,
        progress=progress, log_every=max(1, steps // 5) if progress else 10**9, taxonomy="pku")
    train_summary = train_guard(cfg, splits={"train": train, "calibration": calib}, verbose=progress)
    timings["train_guard"] = time.perf_counter() - t0

    # 2. held-out evaluation (oracle labels; the annotator labels are noisy)
    t = time.perf_counter()
    guard = Guard.load(out / "guard", batch_size=256)
    eval_records = guard_view(load_pairs(world_dir / "pairs_eval.jsonl", keep_contradictory_labels=True).records)
    ev = evaluate_guard_records(guard, eval_records, oracle=True, plots_dir=out / "guard_eval")
    timings["eval_guard"] = time.perf_counter() - t

    # 3. guarded generation on the held-out prompts
    t = time.perf_counter()
    prompts = world.eval_prompts
    generator = PolicyGenerator(str(policy_dir), seed=seed, max_new_tokens=32, batch_size=256)
    result = guarded_generate(prompts, generator, guard.moderate_batch, rounds=rounds,
                              severity_threshold=severity_threshold)
    per_round = world_round_metrics(world, result)
    timings["guarded_generation"] = time.perf_counter() - t

    # 4. the world metrics of the final answers (fallback applied)
    after = summary_without_samples(evaluate_world_policy(
        FixedSampler(prompts, result.responses), world, prompts=prompts, n_boot=n_boot, seed=seed))
    timings["total"] = time.perf_counter() - t0

    summary = _summary(ev, per_round, after, result, train_summary, timings, severity_threshold, seed, steps)
    (out / "summary.json").write_text(json.dumps(jsonable(summary), indent=2))
    with (out / "responses.jsonl").open("w") as f:
        for i, p in enumerate(prompts):
            f.write(json.dumps({"prompt": p, "response": result.responses[i], "kept_round": result.kept_round[i],
                                "fallback": result.fell_back[i], "history": result.history[i]}) + "\n")
    return jsonable(summary)


def _summary(ev: dict[str, Any], per_round: dict[str, Any], after: dict[str, Any], result, train_summary: dict[str, Any],
             timings: dict[str, float], severity_threshold: int, seed: int, steps: int) -> dict[str, Any]:
    """The stage's ``summary.json``: the guard's held-out metrics, guarded generation per round,
    the world metrics after the fallback, training facts and timings."""
    return {
        "f1": ev.get("oracle_f1"),
        "severity_macro_accuracy": ev.get("oracle_severity_macro_accuracy"),
        "rounds": per_round["harmful_rate"],
        "helpfulness_benign_rounds": per_round["helpfulness_benign"],
        "after_fallback": after,
        "rounds_harmful_rate_harmful": per_round["harmful_rate_harmful"],
        "rounds_helpfulness": per_round["helpfulness"],
        "flagged_rate": result.summary()["flagged_rate"],
        "n_generated": result.n_generated,
        "fallback_rate": result.summary()["fallback_rate"],
        "severity_threshold": severity_threshold,
        "guard_eval": {k: ev.get(k) for k in (
            "n", "accuracy", "precision", "recall", "f1", "fpr", "auprc", "ece", "severity_macro_accuracy",
            "category_macro_f1", "oracle_accuracy", "oracle_precision", "oracle_recall", "oracle_f1", "oracle_fpr",
            "oracle_auprc", "oracle_severity_macro_accuracy")},
        "oracle_severity_confusion_matrix": (ev.get("oracle_severity") or {}).get("confusion_matrix"),
        "guard_train": {k: train_summary.get(k) for k in ("steps", "train_seconds", "n_train", "n_calibration",
                                                          "temperature", "threshold")},
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "seed": seed,
        "steps": steps,
    }
