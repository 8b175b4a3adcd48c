"""The 7B VLM recipes (configs/vlm/*.yaml) run one step each on a model of the same
``model_type`` at 1 layer and tiny width, on BeaverTails-V-format records with images:
reward model → cost model → one PPO-Lag iteration, with every other recipe setting as written
(LoRA targets, freeze lists, graded sign term, normalisation, multiplier rule, budget …). Only
paths, sizes and precision (fp32 on the CPU) are overridden."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from saferlhf.config import from_dict
from saferlhf.config.base import load_yaml
from saferlhf.config.stages import CostModelConfig, RewardModelConfig, RLConfig
from saferlhf.data.world.image import generate_image_world
from saferlhf.models.loading import load_tokenizer
from saferlhf.models.tiny_vlm import is_vlm_dir, save_vlm, tiny_vlm

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "vlm"
RECIPES = {"llava-1.5-7b": "llava", "qwen2-vl-7b": "qwen2_vl"}


def _beavertails_v_rows(world: Path) -> list[dict]:
    """BeaverTails-V pair rows (1-based string ids, yes/no safety, graded ratings) on world images."""
    images = sorted((world / "images").glob("train_*.png"))[:4]
    rows = []
    for i, img in enumerate(images):
        unsafe_first = i % 2 == 0
        rows.append({
            "question": "how do i use this ?", "image": str(img), "category": "dangerous_behavior",
            "image_severity": 2, "response_1": "sure first mix then heat", "response_2": "sorry i cannot help",
            "more_helpful_response_id": "1", "safer_response_id": "2" if unsafe_first else "1",
            "is_response_1_safe": "no" if unsafe_first else "yes", "is_response_2_safe": "yes",
            "response_1_harmless_rate": -2 if unsafe_first else 1, "response_2_harmless_rate": 0,
            "response_1_helpful_rate": 2, "response_2_helpful_rate": 0,
        })
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("recipes")
    world = root / "world"
    generate_image_world(world, seed=5, objects=["bread", "poison"], n_sft=4, n_pairs_train=4, n_pairs_eval=2,
                         n_prompts_train=6, n_eval_benign=1, n_eval_harmful=1)
    path = root / "beavertails_v.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _beavertails_v_rows(world)))
    return world, path


TINY = dict(max_steps=1, batch_size=2, grad_accum=1, precision="fp32", eval_data=None, progress=False,
            eval_every=0, save_every=0)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_runs_one_step_at_tiny_size(recipe, data, tmp_path):
    from saferlhf.trainers.rl import SafeRLTrainer
    from saferlhf.trainers.score import train_score_model

    world, pairs = data
    style = RECIPES[recipe]
    model, proc = tiny_vlm(style, load_tokenizer(world / "tokenizer"), num_layers=1, hidden_size=32, num_heads=2,
                           vision_hidden_size=16, vision_layers=1, seed=0)
    assert model.config.model_type == style  # the recipe's model_type (see the YAML header)
    save_vlm(model, proc, tmp_path / "sft")
    outs = {}
    for kind, cls in (("reward", RewardModelConfig), ("cost", CostModelConfig)):
        d = load_yaml(CONFIGS / f"{recipe}-{kind}-model.yaml")
        assert d["model"].startswith("checkpoints/") and "vision_tower" in d["freeze"]
        d.update(TINY, model=str(tmp_path / "sft"), data=str(pairs), out=str(tmp_path / kind))
        res = train_score_model(from_dict(cls, d), kind)
        assert res["steps"] == 1 and all(math.isfinite(v) for v in res["train"].values())
        outs[kind] = tmp_path / kind
        assert is_vlm_dir(outs[kind])
    d = load_yaml(CONFIGS / f"{recipe}-rl.yaml")
    assert d["algo"] == "ppo_lag" and d["lagrange"]["rule"] == "log_sgd" and d["budget"] == -0.5
    d.update(policy=str(tmp_path / "sft"), reward_model=str(outs["reward"]), cost_model=str(outs["cost"]),
             prompts=str(pairs), eval_prompts=None, out=str(tmp_path / "rl"), iterations=1, rollout_batch_size=2,
             mini_batch_size=2, max_new_tokens=4, precision="fp32", progress=False, eval_every=0, save_every=0)
    cfg = from_dict(RLConfig, d)
    tr = SafeRLTrainer(cfg)
    assert tr.processor.modality == "image-text"
    stats = tr.train_step()
    assert stats["train/ratio_first_minibatch_max_dev"] < 1e-5
    assert stats["lambda"] == pytest.approx(cfg.lagrange.init)  # delay_steps = 1: no update yet
    for k in ("reward", "cost", "kl", "train/policy_loss", "train/reward_value_loss", "train/cost_value_loss"):
        assert math.isfinite(stats[k]), k
