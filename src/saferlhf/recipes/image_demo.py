"""The image + text demo (Safe RLHF-V) behind ``saferlhf demo --modality image-text``.

The same recipe as the text demo (:mod:`saferlhf.recipes.text_demo`), in the image-grounded world
(:mod:`saferlhf.data.world.image`); independent stages (the three score models, the two RL
runs, the evaluations) run side by side in worker processes (``--workers``, as in the text demo):

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
4. ``ppo`` and ``ppo_lag`` from the SFT VLM with the same β, iterations and batch; PPO-Lag
   constrains the CM-V's expected P(unsafe), E[σ(c)] ≤ d, with d calibrated on the held-out
   pairs for an unsafe fraction of 10 % (:func:`saferlhf.budget.calibrated_budget`);
5. ground-truth evaluation of SFT, PPO and PPO-Lag on held-out (prompt, image) items with the
   image world's oracles (metrics M of DESIGN §10, with bootstrap intervals);
6. ``report.json`` / ``report.md`` / PNG plots in the text demo's layout, plus
   ``cost_model_text_only``.

Demo-scale choices, stated honestly (``docs/multimodal.md``): the demo's world uses *easier
rendering* than the generator's default (glyph radius 38–42 % of the image, no distractor
dots: the tiny vision towers learn the glyphs within a CPU budget; with the default jitter a
cost model needs ~1500+ steps of 16 pairs to reach 0.84 sign accuracy) and by default the
first ``n_twins`` twins of :data:`~saferlhf.data.world.image.DEFAULT_TWINS`; the constrained
cost is σ(c) rather than c, the cost models do not rank pairs of two safe responses, and β,
the multiplier and the budget are set for this scale (each constant below says why, measured).
Everything reported is computed from generated samples; nothing is hard-coded. Measured results
are in ``docs/multimodal.md`` §6.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from saferlhf.config.stages import CostModelConfig, DemoConfig, EvalScoreModelConfig, RewardModelConfig
from saferlhf.config.stages import RATE_LAGRANGE, RLConfig, SFTConfig
from saferlhf.jobs import Job
from saferlhf.recipes.common import DemoRun, Sizes, cm_keys, eval_policy, rl_job, rm_keys
from saferlhf.recipes.common import train_and_eval_score_model


@dataclass(frozen=True)
class ImageDemoSizes(Sizes):
    """Sizes of one image demo run (``IMAGE_FULL`` by default, ``IMAGE_QUICK`` with ``--quick``)."""

    n_twins: int
    n_captions: int
    caption_steps: int


IMAGE_FULL = ImageDemoSizes(n_twins=3, n_captions=3000, caption_steps=600, n_sft=3000, n_pairs_train=3000, n_pairs_eval=400, n_prompts_train=1000,
                            n_eval_benign=300, n_eval_harmful=300, sft_epochs=24, score_epochs=6,
                            rl_iterations=600, rollout_batch_size=32, mini_batch_size=32, n_boot=500)
IMAGE_QUICK = ImageDemoSizes(n_twins=2, n_captions=200, caption_steps=10, n_sft=200, n_pairs_train=200, n_pairs_eval=60, n_prompts_train=80,
                             n_eval_benign=30, n_eval_harmful=30, sft_epochs=1, score_epochs=1,
                             rl_iterations=2, rollout_batch_size=16, mini_batch_size=16, n_boot=100)

# Easier rendering than the generator's default (see the module docstring).
IMAGE_DEMO_RENDER = {"radius": [0.38, 0.42], "distractors": [0, 0]}
# The preference pairs' response types (the SFT demonstrations keep the world's mix). With the
# text world's mix 29 % of responses to benign and 43 % to harmful images are refusals or
# redirections, safe whatever the image: on them the text alone decides, and at 10 % label
# noise the image-aware CM's AUROC against the labels (≈ 0.87, the most a perfect scorer reaches
# at that noise) beat the text-only CM's (≈ 0.67, its information limit) by only 0.19–0.21. Here
# most pairs compare answers that carry steps, whose safety only the image tells.
IMAGE_DEMO_PAIR_MIX = {
    "benign": {"full": 0.40, "partial": 0.30, "refuse": 0.06, "sloppy": 0.12, "off_topic": 0.12},
    "dual_use": {"full": 0.38, "safe": 0.20, "partial": 0.14, "refuse": 0.12, "sloppy": 0.06, "off_topic": 0.10},
    "harmful": {"full": 0.35, "partial": 0.30, "refuse": 0.08, "redirect": 0.10, "sloppy": 0.07, "off_topic": 0.10},
}
# The tiny VLM (both styles): a 1-layer vision tower, a 2-layer text model.
IMAGE_DEMO_VLM = {"vision_hidden_size": 64, "vision_layers": 1, "vision_heads": 2, "hidden_size": 64,
                  "num_layers": 2, "num_heads": 4}
# β = 0.05 for PPO and PPO-Lag alike (docs/multimodal.md §6): at 0.1 the PPO-Lag actor stays
# too close to the SFT policy (the Safe RLHF combiner (A_r − λA_c)/(1+λ) scales the reward by
# 1/(1+λ) while the KL keeps β, and λ sits at 3–8 here); at 0.02 PPO over-optimises the reward
# model (oracle helpfulness falls from 4.8 to 2.7 while its reward rises).
# truncation_penalty −2 (both methods; TRL's missing-EOS penalty): without it, on seed 1, PPO
# at β = 0.05 learned to repeat steps up to the 24-token cap (KL 44, oracle helpfulness 4.6 →
# 1.9 while its reward rose from −0.4 to 6): the reward model never saw such responses.
# cost_transform sigmoid: the constrained episode cost is σ(c), the CM-V's P(unsafe) (see
# saferlhf.lagrange.transform_cost and the budget below).
IMAGE_DEMO_RL = dict(temperature=1.0, max_new_tokens=24, kl_coeff=0.05, actor_lr=3e-4, critic_lr=5e-4,
                     ppo_epochs=1, clip_score=10.0, truncation_penalty=-2.0, cost_transform="sigmoid")
# A PID multiplier in P(unsafe) units (errors J_C − d of ±0.1): λ₀ = 5 starts inside the range
# where refusing harmful images and answering benign ones is what the combined advantage
# prefers (λ ≈ 2.5–30 with the demo's CM-V; below ~3 the actor answers everything).
IMAGE_DEMO_LAGRANGE = dict(RATE_LAGRANGE)  # the library's default multiplier, shared with the text demo
# CM-V and the text-only CM: pairs of two responses both labelled safe are not ranked
# (saferlhf.losses.safe_pair_rank_mask). With them the CM-V ranked refusals ~3 units below
# full answers to *benign* images (the annotators call the more cautious safe answer safer),
# so any multiplier large enough to stop harmful answers also bought refusals of benign images.
IMAGE_DEMO_COST_MODEL = {"rank_safe_pairs": False}
# The budget: at most this fraction of unsafe responses, as the CM-V measures it. d is set on
# the held-out pairs (saferlhf.budget.calibrated_budget): d = s̄ + τ (ū − s̄), with s̄ / ū the mean σ(c) of the
# responses labelled safe / unsafe, so J_C ≤ d reads "unsafe fraction ≤ τ" whatever the label
# noise does to σ(c)'s range. --budget D (a value of σ(c), in (0, 1)) overrides it.
IMAGE_DEMO_UNSAFE_FRACTION = 0.1
FROZEN_AFTER_PRETRAINING = ["vision_tower"]
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
    from saferlhf.config import ConfigError
    from saferlhf.data.world.image import DEFAULT_TWINS

    if cfg.rounds != 1:
        raise ConfigError("--rounds > 1 is available for the text demo only")
    torch.set_num_threads(max(1, cfg.threads))
    sizes = IMAGE_QUICK if cfg.quick else IMAGE_FULL
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    run = DemoRun(out, cfg.workers or (os.cpu_count() or 1), cfg.progress)
    objects = [name for b, h, _ in DEFAULT_TWINS[: sizes.n_twins] for name in (b, h)]
    # --budget when given, else --image-budget, else calibrated on the held-out pairs (below)
    image_budget = cfg.budget if cfg.budget is not None else cfg.image_budget
    if image_budget is not None and not 0.0 < float(image_budget) < 1.0:
        raise ConfigError(f"--budget {image_budget}: the image demo constrains E[σ(c)], the CM-V's expected "
                          "P(unsafe), so d must lie in (0, 1) (e.g. 0.15); leave it out to calibrate d for "
                          f"an unsafe fraction of {IMAGE_DEMO_UNSAFE_FRACTION}")

    sft = _world_captions_and_sft(cfg, sizes, run, objects)
    summaries = _image_score_models(cfg, sizes, run, sft)
    world_dir, rm, cm = out / "world", out / "reward_model", out / "cost_model"
    if image_budget is None:
        from saferlhf.budget import calibrated_budget

        with run.timer("budget"):
            calibration = calibrated_budget(cm, world_dir, IMAGE_DEMO_UNSAFE_FRACTION)
        budget = calibration["budget"]
    else:
        calibration, budget = None, float(image_budget)
    histories, finals, methods = _image_rl_and_eval(cfg, sizes, run, sft, rm, cm, budget)
    report = _image_report(cfg, sizes, run, objects, summaries, methods, finals, budget, calibration)
    from saferlhf.eval.report import write_report

    write_report(report, histories, out)
    _append_image_section(report, out / "report.md")
    report["timings_s"]["total"] = round(time.perf_counter() - run.timer.started, 2)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _world_captions_and_sft(cfg: DemoConfig, sizes: ImageDemoSizes, run: DemoRun, objects: list[str]) -> Path:
    """The image world, the tiny VLM, caption pretraining and SFT; returns the SFT VLM's folder."""
    from saferlhf.data.world.image import generate_image_world
    from saferlhf.models.loading import load_tokenizer
    from saferlhf.models.tiny_vlm import save_vlm, tiny_vlm
    from saferlhf.trainers.sft import run_sft

    out, timer, world_dir = run.out, run.timer, run.out / "world"
    with timer("world"):
        generate_image_world(world_dir, seed=cfg.seed, noise=cfg.noise, n_sft=sizes.n_sft,
                             n_pairs_train=sizes.n_pairs_train, n_pairs_eval=sizes.n_pairs_eval,
                             n_prompts_train=sizes.n_prompts_train, n_eval_benign=sizes.n_eval_benign,
                             n_eval_harmful=sizes.n_eval_harmful, objects=objects, render=IMAGE_DEMO_RENDER,
                             pair_mix=IMAGE_DEMO_PAIR_MIX)
    with timer("caption_pretraining"):
        init, pre, sft = out / "vlm_init", out / "vlm_pretrained", out / "sft"
        model, processor = tiny_vlm(cfg.vlm_style, load_tokenizer(world_dir / "tokenizer"), seed=cfg.seed,
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
    return sft


def _image_score_models(cfg: DemoConfig, sizes: ImageDemoSizes, run: DemoRun, sft: Path) -> dict[str, Any]:
    """RM-V, CM-V and the text-only CM (they only need the world and the SFT VLM), side by side."""
    out, world_dir = run.out, run.out / "world"
    pairs, eval_pairs = world_dir / "pairs_train.jsonl", world_dir / "pairs_eval.jsonl"
    common = dict(model=str(sft), max_length=MAX_LENGTH, batch_size=32, epochs=sizes.score_epochs, seed=cfg.seed,
                  progress=cfg.progress, log_every=100, freeze=FROZEN_AFTER_PRETRAINING)
    runs = [("reward", RewardModelConfig, {}, pairs, eval_pairs, "reward_model"),
            ("cost", CostModelConfig, IMAGE_DEMO_COST_MODEL, pairs, eval_pairs, "cost_model"),
            ("cost", CostModelConfig, IMAGE_DEMO_COST_MODEL, strip_images(pairs, out / "pairs_train_text_only.jsonl"),
             strip_images(eval_pairs, out / "pairs_eval_text_only.jsonl"), "cost_model_text_only")]
    steps = max(1, int(sizes.n_pairs_train * sizes.score_epochs) // 32)
    return run.parallel("score_models", [
        Job(name, train_and_eval_score_model,
            dict(kind=kind, train_cfg=cls(out=str(out / name), data=str(data), **common, **extra,
                                          **({"calibration_data": str(eval_data)} if kind == "cost" else {})),
                 eval_cfg=EvalScoreModelConfig(model=str(out / name), data=str(eval_data),
                                               out=str(out / f"{name}_eval"), max_length=MAX_LENGTH)),
            total=steps, metrics=out / name / "metrics.jsonl")
        for kind, cls, extra, data, eval_data, name in runs])


def _image_rl_and_eval(cfg: DemoConfig, sizes: ImageDemoSizes, run: DemoRun, sft: Path, rm: Path, cm: Path,
                       budget: float) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``ppo`` and ``ppo_lag`` from the SFT VLM side by side, then the world evaluation of SFT, PPO
    and PPO-Lag; returns the RL histories, PPO-Lag's final multiplier and the evaluations."""
    from saferlhf.config import from_dict

    out, world_dir = run.out, run.out / "world"
    iterations = cfg.rl_iterations or sizes.rl_iterations
    rl_jobs = []
    for algo in ("ppo", "ppo_lag"):
        rl_cfg = from_dict(RLConfig, dict(
            IMAGE_DEMO_RL, algo=algo, policy=str(sft), reward_model=str(rm), cost_model=str(cm),
            prompts=str(world_dir / "prompts_train.jsonl"), out=str(out / "rl" / algo), budget=budget,
            iterations=iterations, rollout_batch_size=sizes.rollout_batch_size,
            mini_batch_size=sizes.mini_batch_size, seed=cfg.seed, progress=cfg.progress, log_every=20,
            lagrange=IMAGE_DEMO_LAGRANGE, actor_freeze=FROZEN_AFTER_PRETRAINING,
            critic_freeze=FROZEN_AFTER_PRETRAINING))
        rl_jobs.append(rl_job(algo, rl_cfg))
    rl = run.parallel("rl", rl_jobs)
    histories = {algo: rl[f"rl_{algo}"]["history"] for algo in ("ppo", "ppo_lag")}
    finals = {algo: {k: rl[f"rl_{algo}"][k] for k in ("final_lambda", "at_cap")} for algo in ("ppo", "ppo_lag")}
    policies: dict[str, Path] = {"sft": sft, "ppo": out / "rl" / "ppo" / "policy",
                                 "ppo_lag": out / "rl" / "ppo_lag" / "policy"}
    evals = run.parallel("eval_world", [
        Job(f"eval_{name}", eval_policy, dict(
            path=path, world_dir=world_dir, cm=cm, budget=budget, n_boot=sizes.n_boot, seed=cfg.seed,
            out=out / "eval" / name, max_new_tokens=IMAGE_DEMO_RL["max_new_tokens"], modality="image-text",
            cost_transform=IMAGE_DEMO_RL["cost_transform"]))
        for name, path in policies.items()])
    return histories, finals["ppo_lag"], {name: evals[f"eval_{name}"] for name in policies}


def _image_report(cfg: DemoConfig, sizes: ImageDemoSizes, run: DemoRun, objects: list[str],
                  summaries: dict[str, Any], methods: dict[str, Any], ppo_lag_final: dict[str, Any],
                  budget: float, calibration: dict[str, Any] | None) -> dict[str, Any]:
    report: dict[str, Any] = {
        "modality": "image-text", "vlm_style": cfg.vlm_style,
        "seed": cfg.seed, "noise": cfg.noise, "budget": budget, "cost_transform": IMAGE_DEMO_RL["cost_transform"],
        "quick": cfg.quick,
        "reward_model": rm_keys(summaries["reward_model"]),
        "cost_model": cm_keys(summaries["cost_model"]),
        "cost_model_text_only": cm_keys(summaries["cost_model_text_only"]),
        "methods": methods,
        "lagrange": {**ppo_lag_final, "max_lambda": IMAGE_DEMO_LAGRANGE["max_lambda"],
                     "rule": IMAGE_DEMO_LAGRANGE["rule"]},
        "cost_model_settings": IMAGE_DEMO_COST_MODEL,
        "budget_calibration": calibration,
        "rl_settings": {**IMAGE_DEMO_RL, "iterations": cfg.rl_iterations or sizes.rl_iterations,
                        "rollout_batch_size": sizes.rollout_batch_size, "lagrange": IMAGE_DEMO_LAGRANGE},
        "world": {"objects": objects, "render": IMAGE_DEMO_RENDER, "pair_mix": IMAGE_DEMO_PAIR_MIX,
                  "sizes": asdict(sizes)},
        "vlm": dict(IMAGE_DEMO_VLM, style=cfg.vlm_style, frozen_after_pretraining=FROZEN_AFTER_PRETRAINING),
        "timings_s": run.timer.seconds,
    }
    for suffix, key in (("", "auroc"), ("_oracle", "oracle_auroc")):
        a, b = report["cost_model"].get(key), report["cost_model_text_only"].get(key)
        report[f"cost_model_auroc_gain_over_text_only{suffix}"] = None if a is None or b is None else round(a - b, 4)
    return report


def _gain_check(report: dict[str, Any], suffix: str, what: str) -> str:
    gain = report.get(f"cost_model_auroc_gain_over_text_only{suffix}")
    holds = "–" if gain is None else ("yes" if gain >= 0.2 else "no")
    shown = "–" if gain is None else f"{gain:.3f}"
    return f"| CM-V's AUROC ({what}) exceeds the text-only CM's by ≥ 0.2 | {holds} | gain {shown} |"


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
             (f"AUROC gain from the image: {fmt(report.get('cost_model_auroc_gain_over_text_only'))} against the "
              f"(noisy) labels, {fmt(report.get('cost_model_auroc_gain_over_text_only_oracle'))} against the oracle. "
              "Flipped labels pull every AUROC against the labels toward 0.5, the gain with them "
              "(docs/multimodal.md §6)."), "",
             "| claim | holds | numbers |", "|---|---|---|",
             _gain_check(report, "", "labels"), _gain_check(report, "_oracle", "oracle"), "",
             "## The constraint", "",
             (f"PPO-Lag constrains E[σ(c)], the CM-V's expected probability that a response is unsafe "
              f"(`cost_transform: {report['cost_transform']}`), to d = {report['budget']:.4f}; the `model_cost` "
              "columns above are in the same units.")]
    cal = report.get("budget_calibration")
    if cal:
        lines += ["", (f"d is calibrated on the {cal['n']} held-out responses for an unsafe fraction τ = "
                       f"{cal['unsafe_fraction']}: d = s̄ + τ (ū − s̄) with s̄ = {cal['mean_p_unsafe_labelled_safe']:.4f} "
                       f"(mean σ(c) of responses labelled safe) and ū = {cal['mean_p_unsafe_labelled_unsafe']:.4f} "
                       "(labelled unsafe).")]
    lines.append("")
    with path.open("a") as fh:
        fh.write("\n".join(lines))


__all__ = ["IMAGE_FULL", "IMAGE_QUICK", "ImageDemoSizes", "run_image_demo", "strip_images"]
