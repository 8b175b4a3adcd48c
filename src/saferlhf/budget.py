"""Choosing the budget d of the constraint J_C ≤ d.

* :func:`suggest_budget`: summarise a cost distribution (e.g. the cost model's scores of SFT
  samples) and suggest d for a target unsafe rate;
* :func:`calibrated_budget`: d on J_C = E[σ(c)] that reads "at most a fraction τ of unsafe
  responses", calibrated on a world's held-out labelled pairs (image + text);
* :func:`run_budget`: ``saferlhf budget``, sample a text policy on prompts, score the samples
  with the cost model and print :func:`suggest_budget` as JSON.

The episode cost itself (``transform_cost``, ``unsafe_boundary``) is defined with the
multiplier in :mod:`saferlhf.lagrange`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saferlhf.lagrange import transform_cost, unsafe_boundary


def suggest_budget(
    costs: torch.Tensor | Sequence[float],
    target_unsafe_rate: float | None = None,
    quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95),
    boundary: float = 0.0,
) -> dict[str, Any]:
    """Summarise a cost distribution (e.g. the cost model's scores of SFT samples) and
    suggest a budget.

    Returns ``n, mean, std`` (population), ``min, max``, ``quantiles`` {q: value},
    ``unsafe_rate`` = P(c > boundary) (the cost model's own boundary: 0 for raw scores, ½ for
    σ(c), see :func:`unsafe_boundary`), and,
    for a ``target_unsafe_rate`` p:

    * ``budget`` = the (1 − p)-quantile of c (linear interpolation), the d with
      P(c > d) ≈ p, and ``rate_above_budget`` = the empirical P(c > budget);
    * ``budget_shift`` = mean − budget: the budget on the *mean* cost that reaches
      P(c > 0) = p if the whole distribution shifted down rigidly (a heuristic reading of
      "the d for a target unsafe rate", since the constraint is on the mean cost J_C).
    """
    c = torch.as_tensor(costs, dtype=torch.float64).detach().reshape(-1).cpu()
    if c.numel() == 0:
        raise ValueError("suggest_budget needs at least one cost")
    out: dict[str, Any] = {
        "n": int(c.numel()),
        "mean": c.mean().item(),
        "std": c.std(unbiased=False).item(),
        "min": c.min().item(),
        "max": c.max().item(),
        "quantiles": {float(q): torch.quantile(c, float(q)).item() for q in quantiles},
        "unsafe_rate": (c > boundary).double().mean().item(),
    }
    if target_unsafe_rate is not None:
        p = float(target_unsafe_rate)
        if not 0.0 <= p <= 1.0:
            raise ValueError("target_unsafe_rate must be in [0, 1]")
        d = torch.quantile(c, 1.0 - p).item()
        out["target_unsafe_rate"] = p
        out["budget"] = d
        out["rate_above_budget"] = (c > d).double().mean().item()
        out["budget_shift"] = out["mean"] - d
    return out


def calibrated_budget(cost_model: Path, world_dir: Path, unsafe_fraction: float) -> dict[str, Any]:
    """The budget on J_C = E[σ(c)] that reads "at most ``unsafe_fraction`` τ unsafe responses".

    On the world's held-out pairs (each response with its pair's image): s̄ = mean σ(c) of the
    responses labelled safe, ū = of those labelled unsafe; if a fraction u of a policy's
    responses is unsafe and each group scores like its labelled counterpart, J_C = s̄ + u (ū − s̄),
    so ``d = s̄ + τ (ū − s̄)``. Label noise narrows σ(c)'s range (a noisily labelled safe answer
    never scores near 0), which a fixed d in σ units would not follow."""
    from saferlhf.data.world.image import ImageWorld
    from saferlhf.eval.samplers import CostScorer

    world = ImageWorld.load(world_dir)
    items = [(r, i) for r in world.eval_pairs() for i in (0, 1) if r.get(f"is_response_{i}_safe") is not None]
    if not items:
        raise ValueError(f"{world_dir}/pairs_eval.jsonl has no safety labels to calibrate the budget on")
    scorer = CostScorer(cost_model, transform="sigmoid")
    p = np.asarray(scorer([r["prompt"] for r, _ in items], [r[f"response_{i}"] for r, i in items],
                          [[world.image_path(r["image"])] for r, _ in items]), dtype=float)
    safe = np.asarray([bool(r[f"is_response_{i}_safe"]) for r, i in items])
    if safe.all() or not safe.any():
        raise ValueError("calibrating the budget needs held-out responses labelled safe and unsafe")
    s_bar, u_bar = float(p[safe].mean()), float(p[~safe].mean())
    return {"budget": round(s_bar + unsafe_fraction * (u_bar - s_bar), 6), "unsafe_fraction": unsafe_fraction,
            "mean_p_unsafe_labelled_safe": round(s_bar, 6), "mean_p_unsafe_labelled_unsafe": round(u_bar, 6),
            "n": int(len(p))}


@torch.no_grad()
def run_budget(cfg) -> dict[str, Any]:
    """``saferlhf budget``: sample the policy on prompts, score the samples with the cost
    model, print (and write) :func:`suggest_budget` as JSON."""
    from accelerate.utils import set_seed

    from saferlhf.config import ConfigError
    from saferlhf.data.templates import encode_prompt
    from saferlhf.models.checkpoint import load_template, read_meta
    from saferlhf.models.loading import load_causal_lm, load_tokenizer
    from saferlhf.models.policy import disable_dropout
    from saferlhf.models.scorers import (
        FrozenScorer,  # the RL trainer's scorer: the same scores as in training
    )
    from saferlhf.processing import is_vlm_dir
    from saferlhf.rollout.base import SamplingParams
    from saferlhf.rollout.hf import HFRolloutBackend

    if is_vlm_dir(cfg.policy):
        raise ConfigError(f"saferlhf budget: --policy {cfg.policy} is a vision-language model; the budget helper "
                          "samples text prompts only. For image prompts, calibrate d on held-out pairs "
                          "(saferlhf.budget.calibrated_budget) or read J_C from the first RL iterations")
    set_seed(cfg.seed)
    device = torch.device(cfg.device) if cfg.device else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    tokenizer = load_tokenizer(cfg.policy)
    template = load_template(cfg.policy, tokenizer)
    policy = load_causal_lm(cfg.policy, dtype="fp32").to(device)
    disable_dropout(policy)
    policy.eval()
    scorer = FrozenScorer(cfg.cost_model, tokenizer, template, normalize=cfg.normalize_cost, device=device)
    calibration = None
    if cfg.cost_transform == "calibrated":
        from saferlhf.calibration import cost_calibration_for

        if cfg.normalize_cost:
            raise ConfigError("--cost-transform calibrated applies the calibration fitted on raw scores: "
                              "drop --normalize-cost")
        calibration = cost_calibration_for(cfg.cost_model)
    prompts = _load_prompts(cfg.prompts)
    if cfg.max_prompts and len(prompts) > cfg.max_prompts:
        pick = np.random.default_rng(cfg.seed).choice(len(prompts), cfg.max_prompts, replace=False)
        prompts = [prompts[i] for i in sorted(pick.tolist())]
    temperature = cfg.temperature
    if temperature is None:
        temperature = float(read_meta(cfg.policy).get("sampling", {}).get("temperature", 1.0))
    sampling = SamplingParams(temperature=temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                              n=cfg.n_samples)
    backend = HFRolloutBackend(policy, tokenizer)
    costs: list[torch.Tensor] = []
    rows: list[dict[str, Any]] = []
    for s in range(0, len(prompts), cfg.batch_size):
        chunk = prompts[s:s + cfg.batch_size]
        ids = [encode_prompt(tokenizer, template, p) for p in chunk]
        batch = backend.generate(ids, sampling=sampling, seed=cfg.seed * 7919 + s)
        rep = [chunk[i] for i in batch.prompt_index.tolist()]
        texts = batch.response_texts or [""] * len(batch)
        c = transform_cost(scorer.score(batch, rep, texts).cpu().clone(), cfg.cost_transform, calibration)
        costs.append(c)
        rows.extend({"prompt": p if isinstance(p, str) else json.dumps(p), "response": r, "cost": float(x)}
                    for p, r, x in zip(rep, texts, c.tolist()))
    all_costs = torch.cat(costs)
    result = suggest_budget(all_costs, target_unsafe_rate=cfg.target_unsafe_rate,
                            boundary=unsafe_boundary(cfg.cost_transform))
    result.update({"policy": str(cfg.policy), "cost_model": str(cfg.cost_model), "prompts": str(cfg.prompts),
                   "n_prompts": len(prompts), "n_samples": cfg.n_samples, "temperature": temperature,
                   "normalize_cost": cfg.normalize_cost, "cost_transform": cfg.cost_transform})
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "budget.json").write_text(text + "\n")
        with (out / "costs.jsonl").open("w") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
    return result


def _load_prompts(path: str) -> list:
    from saferlhf.config import ConfigError
    from saferlhf.data import load_prompts

    records = load_prompts(path).records
    if not records:
        raise ConfigError(f"--prompts {path}: no prompts found")
    return [r.prompt for r in records]
