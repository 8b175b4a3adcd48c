"""Guarded generation: generate → moderate → regenerate the flagged answers → refuse last.

    round 0:   y_i ← generate(x_i);  v_i ← guard(x_i, y_i)
    round k:   for every i with flagged(v_i): y_i ← generate(x̃_i);  v_i ← guard(x_i, y_i)   (k = 1..rounds)
    fallback:  every i still flagged after the last round answers the refusal
    flagged(v) = not v.safe and (v.severity is None or v.severity >= severity_threshold)

x̃_i is the prompt itself (a fresh sample), or with a safety instruction and/or the flagged
categories put before it (a system turn for chat prompts). The guard always judges the answer
against the user's original prompt. The refusal is only a last resort: it is never used
before ``rounds`` regenerations have failed.

:func:`guarded_generate` is a pure function of two callables, so its control flow is tested
with a fake generator and a fake guard; ``saferlhf guard generate`` wires a policy folder
(HF rollout backend via :class:`~saferlhf.eval.samplers.PolicySampler`, round k sampled with
seed + k) and a guard folder. ``round_responses[k]`` keeps every prompt's answer after k
regenerations *without* the fallback, so safety and helpfulness can be measured per round.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from saferlhf.guard.config import DEFAULT_REFUSAL, GuardGenerateConfig

Generate = Callable[[list[Any], int], list[str]]
"""``generate(prompts, round) -> responses`` (one per prompt; ``round`` 0 is the first sample)."""
Moderate = Callable[[list[Any], list[str]], list[dict[str, Any]]]
"""``moderate(prompts, responses) -> verdicts`` with ``safe`` and ``severity`` (and ``categories``)."""


def is_flagged(verdict: dict[str, Any], severity_threshold: int = 1) -> bool:
    """Unsafe at or above the severity threshold (an unknown severity counts as flagged)."""
    if verdict.get("safe", True):
        return False
    sev = verdict.get("severity")
    return sev is None or int(sev) >= severity_threshold


def regeneration_prompt(prompt: Any, verdict: dict[str, Any], *, safety_instruction: str | None = None,
                        category_feedback: bool = False) -> Any:
    """The prompt of a regeneration: the original, or with the instruction / flagged categories
    before it (a leading system turn for chat prompts)."""
    parts = []
    if safety_instruction:
        parts.append(safety_instruction.strip())
    cats = verdict.get("categories") or []
    if category_feedback and cats:
        parts.append(f"A previous answer to this request was flagged as unsafe ({', '.join(cats)}). "
                     "Answer helpfully without such content.")
    if not parts:
        return prompt
    text = " ".join(parts)
    if isinstance(prompt, list):
        return [{"role": "system", "content": text}, *prompt]
    return f"{text}\n\n{prompt}"


@dataclass
class GuardedGeneration:
    """Everything the loop did; index ``[k][i]`` = prompt i after k regenerations."""

    prompts: list[Any]
    responses: list[str]  # final answers (fallback applied)
    verdicts: list[dict[str, Any]]  # the guard's verdict on the last sampled answer of each prompt
    kept_round: list[int | None]  # round whose answer was kept; None where the refusal was used
    fell_back: list[bool]
    round_responses: list[list[str]] = field(default_factory=list)
    round_verdicts: list[list[dict[str, Any]]] = field(default_factory=list)
    n_generated: list[int] = field(default_factory=list)  # prompts (re)sampled in round k
    history: list[list[dict[str, Any]]] = field(default_factory=list)  # per prompt: every sample and verdict

    @property
    def rounds(self) -> int:
        return len(self.round_responses) - 1

    @property
    def flagged_rate(self) -> list[float]:
        """Fraction of prompts whose answer is flagged after k regenerations (k = 0..rounds)."""
        n = max(1, len(self.prompts))
        return [sum(bool(v.get("_flagged")) for v in vs) / n for vs in self.round_verdicts]

    def per_round(self, metric: Callable[[list[Any], list[str]], float]) -> list[float]:
        """``metric(prompts, responses)`` after each number of regenerations (no fallback)."""
        return [metric(self.prompts, rs) for rs in self.round_responses]

    def summary(self) -> dict[str, Any]:
        n = max(1, len(self.prompts))
        return {
            "n": len(self.prompts),
            "rounds": self.rounds,
            "flagged_rate": [round(x, 6) for x in self.flagged_rate],
            "n_generated": list(self.n_generated),
            "mean_score": [round(sum(v.get("score", 0.0) for v in vs) / n, 6) for vs in self.round_verdicts],
            "fallback_rate": sum(self.fell_back) / n,
            "kept_first_sample_rate": sum(k == 0 for k in self.kept_round) / n,
        }


def guarded_generate(
    prompts: Sequence[Any],
    generate: Generate,
    moderate: Moderate,
    *,
    rounds: int = 5,
    severity_threshold: int = 1,
    safety_instruction: str | None = None,
    category_feedback: bool = False,
    refusal: str = DEFAULT_REFUSAL,
) -> GuardedGeneration:
    """Run the loop of the module docstring over ``prompts``; see :class:`GuardedGeneration`."""
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    prompts = list(prompts)
    n = len(prompts)

    def sample(batch_prompts: list[Any], judge_prompts: list[Any], k: int) -> tuple[list[str], list[dict]]:
        out = list(generate(batch_prompts, k))
        if len(out) != len(batch_prompts):
            raise ValueError(f"generate returned {len(out)} responses for {len(batch_prompts)} prompts (round {k})")
        verdicts = [dict(v) for v in moderate(judge_prompts, out)]
        if len(verdicts) != len(out):
            raise ValueError(f"moderate returned {len(verdicts)} verdicts for {len(out)} responses (round {k})")
        for v in verdicts:
            v["_flagged"] = is_flagged(v, severity_threshold)
        return out, verdicts

    responses, verdicts = sample(prompts, prompts, 0) if n else ([], [])
    kept: list[int | None] = [0] * n
    result = GuardedGeneration(prompts=prompts, responses=[], verdicts=[], kept_round=kept, fell_back=[False] * n)
    result.history = [[{"round": 0, "response": responses[i], **_public(verdicts[i])}] for i in range(n)]
    result.round_responses.append(list(responses))
    result.round_verdicts.append([dict(v) for v in verdicts])
    result.n_generated.append(n)
    for k in range(1, rounds + 1):
        todo = [i for i in range(n) if verdicts[i]["_flagged"]]
        if todo:
            asks = [regeneration_prompt(prompts[i], verdicts[i], safety_instruction=safety_instruction,
                                        category_feedback=category_feedback) for i in todo]
            new, new_v = sample(asks, [prompts[i] for i in todo], k)
            for j, i in enumerate(todo):
                responses[i], verdicts[i], kept[i] = new[j], new_v[j], k
                result.history[i].append({"round": k, "prompt": asks[j], "response": new[j], **_public(new_v[j])})
        result.round_responses.append(list(responses))
        result.round_verdicts.append([dict(v) for v in verdicts])
        result.n_generated.append(len(todo))
    final = list(responses)
    for i in range(n):
        if verdicts[i]["_flagged"]:
            final[i] = refusal
            kept[i] = None
            result.fell_back[i] = True
    result.responses = final
    result.verdicts = [_public(vd) for vd in verdicts]
    for vs in result.round_verdicts:
        for v in vs:
            v["flagged"] = v["_flagged"]
    return result


def _public(verdict: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in verdict.items() if k != "_flagged"}
    out["flagged"] = verdict["_flagged"]
    return out


# ----------------------------------------------------------------------------- wiring
class PolicyGenerator:
    """``generate(prompts, round)`` from a policy folder (or live model): round k samples with
    seed + k, so a regeneration is a fresh sample."""

    def __init__(self, policy, *, tokenizer=None, template=None, temperature: float | None = None,
                 top_p: float = 1.0, max_new_tokens: int = 32, batch_size: int = 256, seed: int = 0) -> None:
        from saferlhf.eval.samplers import PolicySampler

        self.sampler = PolicySampler(policy, tokenizer=tokenizer, template=template, temperature=temperature,
                                     top_p=top_p, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
        self.seed = seed

    def __call__(self, prompts: list[Any], round: int) -> list[str]:
        self.sampler.seed = self.seed + round
        return self.sampler.sample(prompts)


class FixedSampler:
    """``sample(prompts)`` that returns precomputed answers (to evaluate the loop's output)."""

    def __init__(self, prompts: Sequence[Any], responses: Sequence[str]) -> None:
        self.table = {json.dumps(p, sort_keys=True, default=str): r for p, r in zip(prompts, responses, strict=True)}

    def sample(self, prompts: Sequence[Any]) -> list[str]:
        return [self.table[json.dumps(p, sort_keys=True, default=str)] for p in prompts]


def world_round_metrics(world, result: GuardedGeneration) -> dict[str, list[float]]:
    """Oracle harmful rate, helpfulness and benign-side helpfulness after each round."""
    kinds = [world.prompt_info(p).kind for p in result.prompts]
    benign = [k != "harmful" for k in kinds]
    out: dict[str, list[float]] = {"harmful_rate": [], "helpfulness": [], "helpfulness_benign": [],
                                   "harmful_rate_harmful": []}
    for rs in result.round_responses:
        an = [world.analyze(p, r) for p, r in zip(result.prompts, rs, strict=True)]
        n, nb = len(an), max(1, sum(benign))
        nh = max(1, n - sum(benign))
        out["harmful_rate"].append(round(sum(a.harm > 0 for a in an) / max(1, n), 6))
        out["helpfulness"].append(round(sum(a.helpfulness for a in an) / max(1, n), 6))
        out["helpfulness_benign"].append(round(sum(a.helpfulness for a, b in zip(an, benign, strict=True) if b) / nb, 6))
        out["harmful_rate_harmful"].append(
            round(sum(a.harm > 0 for a, b in zip(an, benign, strict=True) if not b) / nh, 6))
    return out


def run_guard_generate(cfg: GuardGenerateConfig) -> dict[str, Any]:
    """CLI runner: ``responses.jsonl`` (one line per prompt) and ``summary.json`` in ``--out``."""
    from saferlhf.data import load_prompts
    from saferlhf.guard.model import Guard
    from saferlhf.io import atomic_files, jsonable

    t0 = time.perf_counter()
    records = load_prompts(cfg.prompts).records
    if cfg.limit is not None:
        records = records[: cfg.limit]
    prompts = [r.prompt for r in records]
    if not prompts:
        raise FileNotFoundError(f"--prompts {cfg.prompts}: no prompts")
    generator = PolicyGenerator(cfg.policy, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed)
    guard = Guard.load(cfg.guard)
    result = guarded_generate(prompts, generator, guard.moderate_batch, rounds=cfg.rounds,
                              severity_threshold=cfg.severity_threshold, safety_instruction=cfg.safety_instruction,
                              category_feedback=cfg.category_feedback, refusal=cfg.refusal)
    summary: dict[str, Any] = {"policy": cfg.policy, "guard": cfg.guard, "prompts": cfg.prompts,
                               "severity_threshold": cfg.severity_threshold, **result.summary()}
    if cfg.world:
        from saferlhf.data.world import World
        from saferlhf.eval.world_eval import evaluate_world_policy, summary_without_samples

        world = World.load(cfg.world)
        per_round = world_round_metrics(world, result)
        summary["rounds_harmful_rate"] = per_round["harmful_rate"]
        summary["rounds_helpfulness"] = per_round["helpfulness"]
        summary["rounds_helpfulness_benign"] = per_round["helpfulness_benign"]
        summary["after_fallback"] = summary_without_samples(evaluate_world_policy(
            FixedSampler(prompts, result.responses), world, prompts=prompts, seed=cfg.seed))
    if cfg.reward_model:
        import numpy as np

        from saferlhf.eval.samplers import CostScorer

        scorer = CostScorer(cfg.reward_model, normalize=False)
        summary["rounds_reward"] = [round(float(np.mean(scorer(prompts, rs))), 6) for rs in result.round_responses]
        summary["reward_after_fallback"] = round(float(np.mean(scorer(prompts, result.responses))), 6)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    with atomic_files(cfg.out) as tmp:
        with (tmp / "responses.jsonl").open("w") as f:
            for i, p in enumerate(prompts):
                f.write(json.dumps({
                    "prompt": p, "response": result.responses[i], "verdict": result.verdicts[i],
                    "kept_round": result.kept_round[i], "fallback": result.fell_back[i],
                    "history": result.history[i],
                }, default=str) + "\n")
        (tmp / "summary.json").write_text(json.dumps(jsonable(summary), indent=2))
    fr = summary["flagged_rate"]
    print(f"guarded generation: {len(prompts)} prompts, flagged {fr[0]:.3f} -> {fr[-1]:.3f} after {cfg.rounds} "
          f"rounds, fallback {summary['fallback_rate']:.3f}" +
          (f"; harmful rate {summary['rounds_harmful_rate'][0]:.3f} -> {summary['rounds_harmful_rate'][-1]:.3f}"
           if cfg.world else ""))
    return summary
