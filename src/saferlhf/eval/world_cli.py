"""CLI runners of the verifiable world: ``world generate`` and ``eval world``.

Both handle the image world too (``--modality image-text``, Safe RLHF-V): ``world generate``
writes it with :func:`saferlhf.data.world.image.generate_image_world`, and ``eval world``
evaluates a VLM policy on its held-out (prompt, image) items against the image-grounded oracles
(the modality is read from ``world.json`` unless given).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saferlhf.config import ConfigError


def run_world_generate(cfg) -> dict[str, Any]:
    from saferlhf.data.world import generate_world

    sizes = dict(n_sft=cfg.n_sft, n_pairs_train=cfg.n_pairs_train, n_pairs_eval=cfg.n_pairs_eval,
                 n_prompts_train=cfg.n_prompts_train, n_eval_benign=cfg.n_eval_benign,
                 n_eval_harmful=cfg.n_eval_harmful)
    if cfg.modality == "image-text":
        from saferlhf.data.world.image import generate_image_world

        meta = generate_image_world(cfg.out, seed=cfg.seed, noise=cfg.noise, **sizes)
        what = f"image world written to {cfg.out} (seed {cfg.seed}, noise {cfg.noise}, {meta['n_images']} images, "
    else:
        meta = generate_world(cfg.out, seed=cfg.seed, noise=cfg.noise, **sizes)
        what = f"world written to {cfg.out} (seed {cfg.seed}, noise {cfg.noise}, "
    print(what + f"vocabulary {len(meta.get('vocabulary', []))} words)")
    return meta


def world_modality(world_dir: str | Path) -> str:
    """``text`` or ``image-text``, from the world's ``world.json``."""
    path = Path(world_dir) / "world.json"
    if not path.is_file():
        raise FileNotFoundError(f"--world {world_dir}: no world.json (write one with `saferlhf world generate`)")
    return json.loads(path.read_text()).get("modality") or "text"


def evaluate_policy_dir(policy: str | Path, world_dir: str | Path, *, cost_model: str | Path | None = None,
                        budget: float = 0.0, temperature: float | None = None, max_new_tokens: int = 32,
                        n_boot: int = 1000, seed: int = 0, modality: str = "auto",
                        cost_transform: str = "identity") -> dict[str, Any]:
    """Library call used by the CLI and the demo: the metrics M of one policy folder.

    ``cost_transform``: the episode cost the policy was constrained on (RL's option of that
    name): ``model_cost``, the tolerance and ``constraint_met`` are then in its units.

    ``modality``: ``auto`` reads it from ``world.json``; an image world needs a VLM policy (the
    cost model may be a VLM or a text-only model)."""
    from saferlhf.eval.samplers import CostScorer, PolicySampler
    from saferlhf.eval.world_eval import evaluate_image_world_policy, evaluate_world_policy

    found = world_modality(world_dir)
    if modality not in ("auto", found):
        raise ConfigError(f"--modality {modality}, but the world in {world_dir} is {found!r}")
    sampler = PolicySampler(policy, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    scorer = CostScorer(cost_model, transform=cost_transform) if cost_model else None
    if found == "image-text":
        from saferlhf.data.world.image import ImageWorld

        if not sampler.is_vlm:
            raise ConfigError(f"--policy {policy} is a text model; the image world needs a vision-language policy")
        world = ImageWorld.load(world_dir)
        return evaluate_image_world_policy(sampler, world, cost_scorer=scorer, budget=budget, n_boot=n_boot,
                                           seed=seed)
    from saferlhf.data.world import World

    world = World.load(world_dir)
    return evaluate_world_policy(sampler, world, cost_scorer=scorer, budget=budget, n_boot=n_boot, seed=seed)


def write_world_eval(result: dict[str, Any], out: str | Path) -> dict[str, Any]:
    from saferlhf.eval.world_eval import summary_without_samples

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summary_without_samples(result)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    with (out / "samples.jsonl").open("w") as fh:
        for s in result.get("samples", []):
            fh.write(json.dumps(s) + "\n")
    return summary


def run_eval_world(cfg) -> dict[str, Any]:
    result = evaluate_policy_dir(cfg.policy, cfg.world, cost_model=cfg.cost_model, budget=cfg.budget,
                                 temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                 n_boot=cfg.n_boot, seed=cfg.seed, modality=getattr(cfg, "modality", "auto"),
                                 cost_transform=getattr(cfg, "cost_transform", "identity"))
    summary = write_world_eval(result, cfg.out)
    keys = ("helpfulness_benign", "harmful_rate", "harmful_rate_harmful", "over_refusal_benign",
            "model_cost", "constraint_met")
    print("  ".join(f"{k}={summary.get(k):.4g}" if isinstance(summary.get(k), float) else f"{k}={summary.get(k)}"
                    for k in keys))
    return summary
