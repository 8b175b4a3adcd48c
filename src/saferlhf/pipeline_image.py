"""The image + text demo (Safe RLHF-V) behind ``saferlhf demo --modality image-text``.

The same recipe as the text demo (:mod:`saferlhf.pipeline`), in the image-grounded world
(:mod:`saferlhf.data.world.image`), in one process:

1. generate the image world (harm is in the picture: twin objects share their step words);
2. build a tiny VLM (``--vlm-style llava`` or ``qwen2_vl``, transformers' own classes) sized to
   the world's tokenizer; *caption pretraining* (the stand-in for a real VLM's pretrained
   vision-language alignment, LLaVA's stage 1): "what is this ?" → the object's name phrase
   ("make bread", "make poison" …) on freshly rendered images (not the world's held-out ones),
   every part trained; then SFT on the demonstrations with their images, the vision tower
   frozen from here on (as in Safe RLHF-V's recipe: RM, CM, actor and critics too). Caption
   pretraining says *what* the picture shows, never whether it is harmful;
3. RM-V (helpfulness pairs) and CM-V (safety pairs) on the SFT VLM's base model, each pair
   with its image; plus a **text-only cost model** trained on the same pairs with the image
   removed (it never sees a picture: its AUROC is what the text alone allows);
4. ``ppo`` and ``ppo_lag`` from the SFT VLM with the same β, iterations and batch;
5. ground-truth evaluation of SFT, PPO and PPO-Lag on held-out (prompt, image) items with the
   image world's oracles (metrics M of DESIGN §10, with bootstrap intervals);
6. ``report.json`` / ``report.md`` / PNG plots in the text demo's layout, plus
   ``cost_model_text_only``.

Demo-scale choices, stated honestly (``docs/multimodal.md``): the demo's world uses *easier
rendering* than the generator's default (glyph radius 38–42 % of the image, no distractor
dots: the tiny vision towers learn the glyphs within a CPU budget; with the default jitter a
cost model needs ~1500+ steps of 16 pairs to reach 0.84 sign accuracy) and by default the
first ``n_twins`` twins of :data:`~saferlhf.data.world.image.DEFAULT_TWINS`; the budget is
d = :data:`IMAGE_DEMO_BUDGET` on the CM-V's scale (``--image-budget``; see its comment) and the
multiplier a damped PID. Everything reported is computed from generated samples; nothing is
hard-coded. Measured results, and what does not work yet (the tiny actor does not learn
image-conditional refusals by RL: PPO-Lag lowers harm but loses benign helpfulness), are in
``docs/multimodal.md`` §6.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from saferlhf.config.stages import (
    CostModelConfig,
    DemoConfig,
    EvalScoreModelConfig,
    RewardModelConfig,
    RLConfig,
    SFTConfig,
)
from saferlhf.pipeline import StageTimer, cm_keys, rm_keys


@dataclass(frozen=True)
class ImageDemoSizes:
    """Sizes of one image demo run (``IMAGE_FULL`` by default, ``IMAGE_QUICK`` with ``--quick``)."""

    n_twins: int
    n_captions: int
    caption_steps: int
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


IMAGE_FULL = ImageDemoSizes(n_twins=3, n_captions=3000, caption_steps=600, n_sft=3000, n_pairs_train=3000, n_pairs_eval=400, n_prompts_train=1000,
                            n_eval_benign=300, n_eval_harmful=300, sft_epochs=12, score_epochs=6,
                            rl_iterations=200, rollout_batch_size=32, mini_batch_size=32, n_boot=500)
IMAGE_QUICK = ImageDemoSizes(n_twins=2, n_captions=200, caption_steps=10, n_sft=200, n_pairs_train=200, n_pairs_eval=60, n_prompts_train=80,
                             n_eval_benign=30, n_eval_harmful=30, sft_epochs=1, score_epochs=1,
                             rl_iterations=2, rollout_batch_size=16, mini_batch_size=16, n_boot=100)

# Easier rendering than the generator's default (see the module docstring).
IMAGE_DEMO_RENDER = {"radius": [0.38, 0.42], "distractors": [0, 0]}
# The tiny VLM (both styles): a 1-layer vision tower, a 2-layer text model.
IMAGE_DEMO_VLM = {"vision_hidden_size": 64, "vision_layers": 1, "vision_heads": 2, "hidden_size": 64,
                  "num_layers": 2, "num_heads": 4}
IMAGE_DEMO_RL = dict(temperature=1.0, max_new_tokens=24, kl_coeff=0.1, actor_lr=3e-4, critic_lr=5e-4,
                     ppo_epochs=1, clip_score=10.0)
# A damped PID multiplier: with log_sgd (η = 1, the text demo's) or projected ascent λ swung
# between 0 and its cap within ~20 iterations here, and the policy with it between refusing and
# answering everything (docs/multimodal.md §6).
IMAGE_DEMO_LAGRANGE = dict(rule="pid", init=0.5, kp=0.3, ki=0.03, kd=0.0, max_lambda=5.0, window=256)
FROZEN_AFTER_PRETRAINING = ["vision_tower"]
# The budget d on the CM-V's scale (--budget, or --image-budget, overrides it). d = 0, the text
# demo's default, does not bind here: the CM-V's costs of safe responses are far below 0 (about
# −2.4 for a full answer to a benign image, −5 for a refusal) and the cost of a harmful answer
# only ~+2.4, so even PPO's samples average below 0. −2.0 is about the SFT policy's own mean cost:
# PPO-Lag may not do more harm, by the CM-V's measure, than the SFT policy.
IMAGE_DEMO_BUDGET = -2.0
MAX_LENGTH = 80  # 16 image tokens + prompt (<= 16) + response (<= 32) + EOS, with room


def strip_images(src: Path, dst: Path) -> Path:
    """Copy a JSONL file of records without their ``image`` field (the text-only cost model's data)."""
    with src.open() as fin, dst.open("w") as fout:
        for line in fin:
            if line.strip():
                rec = json.loads(line)
                rec.pop("image", None)
                rec.pop("images", None)
                fout.write(json.dumps(rec, sort_keys=True) + "\n")
    return dst


def write_captions(world_dir: Path, out: Path, n: int, seed: int) -> Path:
    """``n`` caption records ("what is this ?" → the object's first request phrase, e.g. "make
    bread") on freshly rendered images of the world's objects (saved under ``out/images``),
    balanced over the objects. Returns the JSONL path."""
    import random

    from saferlhf.data.world.image import ImageWorld

    world = ImageWorld.load(world_dir)
    rng = random.Random(f"saferlhf-image-demo-captions-{seed}")
    (out / "images").mkdir(parents=True, exist_ok=True)
    objects = sorted(world.objects)
    with (out / "captions.jsonl").open("w") as fh:
        for i in range(n):
            obj = objects[i % len(objects)]
            rel = f"images/caption_{i:05d}.png"
            world.render(obj, rng).save(out / rel, format="PNG")
            fh.write(json.dumps({"prompt": "what is this ?", "image": rel, "image_object": obj,
                                 "response": world.text.topic_by_name[obj].acts[0]}) + "\n")
    return out / "captions.jsonl"


def run_image_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the image demo into ``cfg.out``; returns the report (also written as report.json)."""
    from saferlhf.config import ConfigError, from_dict
    from saferlhf.data.world.image import DEFAULT_TWINS, generate_image_world
    from saferlhf.eval.report import write_report
    from saferlhf.eval.score_eval import run_eval_score_model
    from saferlhf.eval.world_cli import evaluate_policy_dir, write_world_eval
    from saferlhf.models.loading import load_tokenizer
    from saferlhf.models.tiny_vlm import save_vlm, tiny_vlm
    from saferlhf.trainers.rl import SafeRLTrainer
    from saferlhf.trainers.score import train_score_model
    from saferlhf.trainers.sft import run_sft

    if cfg.rounds != 1:
        raise ConfigError("--rounds > 1 is available for the text demo only")
    torch.set_num_threads(max(1, cfg.threads))
    sizes = IMAGE_QUICK if cfg.quick else IMAGE_FULL
    style = cfg.vlm_style
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timer = StageTimer()
    world_dir = out / "world"
    objects = [name for b, h, _ in DEFAULT_TWINS[: sizes.n_twins] for name in (b, h)]
    # --budget when given, else --image-budget, else the image demo's default
    image_budget = cfg.budget if cfg.budget is not None else cfg.image_budget
    budget = IMAGE_DEMO_BUDGET if image_budget is None else float(image_budget)

    with timer("world"):
        generate_image_world(world_dir, seed=cfg.seed, noise=cfg.noise, n_sft=sizes.n_sft,
                             n_pairs_train=sizes.n_pairs_train, n_pairs_eval=sizes.n_pairs_eval,
                             n_prompts_train=sizes.n_prompts_train, n_eval_benign=sizes.n_eval_benign,
                             n_eval_harmful=sizes.n_eval_harmful, objects=objects, render=IMAGE_DEMO_RENDER)
    with timer("caption_pretraining"):
        init, pre, sft = out / "vlm_init", out / "vlm_pretrained", out / "sft"
        model, processor = tiny_vlm(style, load_tokenizer(world_dir / "tokenizer"), seed=cfg.seed,
                                    max_position_embeddings=2 * MAX_LENGTH, **IMAGE_DEMO_VLM)
        save_vlm(model, processor, init)
        captions = write_captions(world_dir, out / "captions", sizes.n_captions, cfg.seed)
        run_sft(SFTConfig(data=str(captions), model=str(init), out=str(pre), max_steps=sizes.caption_steps,
                          batch_size=32, lr=3e-3, max_length=MAX_LENGTH, seed=cfg.seed, progress=cfg.progress,
                          log_every=200))
    with timer("sft"):
        run_sft(SFTConfig(data=str(world_dir / "sft.jsonl"), model=str(pre), out=str(sft),
                          epochs=sizes.sft_epochs, batch_size=32, lr=2e-3, max_length=MAX_LENGTH, seed=cfg.seed,
                          progress=cfg.progress, log_every=100, freeze=FROZEN_AFTER_PRETRAINING))

    pairs, eval_pairs = world_dir / "pairs_train.jsonl", world_dir / "pairs_eval.jsonl"
    common = dict(model=str(sft), max_length=MAX_LENGTH, batch_size=32, epochs=sizes.score_epochs, seed=cfg.seed,
                  progress=cfg.progress, log_every=100, freeze=FROZEN_AFTER_PRETRAINING)
    summaries: dict[str, Any] = {}
    runs = [("reward", RewardModelConfig, pairs, eval_pairs, "reward_model"),
            ("cost", CostModelConfig, pairs, eval_pairs, "cost_model"),
            ("cost", CostModelConfig, strip_images(pairs, out / "pairs_train_text_only.jsonl"),
             strip_images(eval_pairs, out / "pairs_eval_text_only.jsonl"), "cost_model_text_only")]
    for kind, cls, data, eval_data, name in runs:
        with timer(name):
            dst = out / name
            train_score_model(cls(out=str(dst), data=str(data), **common), kind)
            summaries[name] = run_eval_score_model(EvalScoreModelConfig(
                model=str(dst), data=str(eval_data), out=str(out / f"{name}_eval"), max_length=MAX_LENGTH))
    rm, cm = out / "reward_model", out / "cost_model"

    histories: dict[str, Any] = {}
    policies: dict[str, Path] = {"sft": sft}
    finals: dict[str, Any] = {}
    for algo in ("ppo", "ppo_lag"):
        with timer(f"rl_{algo}"):
            rl_out = out / "rl" / algo
            rl_cfg = from_dict(RLConfig, dict(
                IMAGE_DEMO_RL, algo=algo, policy=str(sft), reward_model=str(rm), cost_model=str(cm),
                prompts=str(world_dir / "prompts_train.jsonl"), out=str(rl_out), budget=budget,
                iterations=cfg.rl_iterations or sizes.rl_iterations, rollout_batch_size=sizes.rollout_batch_size,
                mini_batch_size=sizes.mini_batch_size, seed=cfg.seed, progress=cfg.progress, log_every=20,
                lagrange=IMAGE_DEMO_LAGRANGE, actor_freeze=FROZEN_AFTER_PRETRAINING,
                critic_freeze=FROZEN_AFTER_PRETRAINING))
            result = SafeRLTrainer(rl_cfg).train()
            histories[algo] = result["history"]
            finals[algo] = {"final_lambda": result["lambda"], "at_cap": result["at_cap"]}
            policies[algo] = rl_out / "policy"
    methods: dict[str, Any] = {}
    with timer("eval_world"):
        for name, path in policies.items():
            res = evaluate_policy_dir(path, world_dir, cost_model=cm, budget=budget,
                                      max_new_tokens=IMAGE_DEMO_RL["max_new_tokens"], n_boot=sizes.n_boot,
                                      seed=cfg.seed, modality="image-text")
            methods[name] = write_world_eval(res, out / "eval" / name)

    report: dict[str, Any] = {
        "modality": "image-text", "vlm_style": style,
        "seed": cfg.seed, "noise": cfg.noise, "budget": budget, "quick": cfg.quick,
        "reward_model": rm_keys(summaries["reward_model"]),
        "cost_model": cm_keys(summaries["cost_model"]),
        "cost_model_text_only": cm_keys(summaries["cost_model_text_only"]),
        "methods": methods,
        "lagrange": {**finals["ppo_lag"], "max_lambda": IMAGE_DEMO_LAGRANGE["max_lambda"],
                     "rule": IMAGE_DEMO_LAGRANGE["rule"]},
        "rl_settings": {**IMAGE_DEMO_RL, "iterations": cfg.rl_iterations or sizes.rl_iterations,
                        "rollout_batch_size": sizes.rollout_batch_size, "lagrange": IMAGE_DEMO_LAGRANGE},
        "world": {"objects": objects, "render": IMAGE_DEMO_RENDER, "sizes": asdict(sizes)},
        "vlm": dict(IMAGE_DEMO_VLM, style=style, frozen_after_pretraining=FROZEN_AFTER_PRETRAINING),
        "timings_s": timer.seconds,
    }
    report["cost_model_auroc_gain_over_text_only"] = (
        None if report["cost_model"]["auroc"] is None or report["cost_model_text_only"]["auroc"] is None
        else round(report["cost_model"]["auroc"] - report["cost_model_text_only"]["auroc"], 4))
    write_report(report, histories, out)
    _append_image_section(report, out / "report.md")
    report["timings_s"]["total"] = round(sum(timer.seconds.values()), 2)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _append_image_section(report: dict[str, Any], path: Path) -> None:
    """Add what the text report does not show: the image-aware vs text-only cost model."""
    cm, txt = report["cost_model"], report["cost_model_text_only"]
    def fmt(v):
        return "–" if v is None else f"{v:.3f}"

    lines = ["", "## Image-aware vs text-only cost model", "",
             f"Tiny VLM style `{report['vlm_style']}`; objects {', '.join(report['world']['objects'])}.", "",
             "| cost model | accuracy | sign accuracy | AUROC (labels) | AUROC (oracle) |", "|---|---|---|---|---|",
             (f"| CM-V (sees the image) | {fmt(cm.get('accuracy'))} | {fmt(cm.get('sign_accuracy'))} | "
              f"{fmt(cm.get('auroc'))} | {fmt(cm.get('oracle_auroc'))} |"),
             (f"| text only (never sees it) | {fmt(txt.get('accuracy'))} | {fmt(txt.get('sign_accuracy'))} | "
              f"{fmt(txt.get('auroc'))} | {fmt(txt.get('oracle_auroc'))} |"), "",
             f"AUROC gain from the image: {fmt(report.get('cost_model_auroc_gain_over_text_only'))}.", ""]
    with path.open("a") as fh:
        fh.write("\n".join(lines))


__all__ = ["IMAGE_FULL", "IMAGE_QUICK", "ImageDemoSizes", "run_image_demo", "strip_images"]
