"""Reward and cost model training (DESIGN §5): one trainer, two losses.

``saferlhf reward-model``: Bradley–Terry on the helpfulness label (``better``).
``saferlhf cost-model``: ranking on the harmlessness label (``safer``) plus the κ-weighted sign
term from the per-response safety labels (binary ξ = ±1, or graded ξ = −harmless_rate).

Both start from an SFT checkpoint (as in the paper) or any backbone, keep a normaliser
(reward affine, cost scale-only) whose statistics are saved with the model, and evaluate
with :mod:`saferlhf.eval.score_eval` (accuracy, sign accuracy, AUROC, oracle agreement).

Image + text (RM-V / CM-V, Safe RLHF-V): when ``--model`` is a VLM folder (with a
``VLMProcessor``) the backbone is the VLM's base model (``LlavaModel``, ``Qwen2VLModel`` …)
and every pair is collated with its image(s) (:func:`saferlhf.data.multimodal.collate_vlm_pairs`:
both responses of a pair see the pair's image). Labels, losses and the loop are the text ones.
``--freeze`` keeps parts of the VLM backbone fixed. Pairs without an image are read as text.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from saferlhf import losses as L
from saferlhf.config import ConfigError
from saferlhf.config.stages import CostModelConfig, RewardModelConfig, ScoreModelConfig
from saferlhf.data.collate import pad_sequences
from saferlhf.data.templates import Template
from saferlhf.eval.score_eval import score_pairs, summarize_scores
from saferlhf.io import atomic_files
from saferlhf.models.checkpoint import load_template
from saferlhf.models.score_model import ScoreModel
from saferlhf.models.tiny_vlm import VLMProcessor, freeze_vlm_parts, load_processor
from saferlhf.trainers.common import encode_prompt_responses, make_accelerator, seed_everything
from saferlhf.trainers.loop import run_supervised_loop
from saferlhf.trainers.sft import lora_spec


@dataclass(slots=True)
class EncodedPair:
    """A pair oriented for the loss: ``hi`` should score higher than ``lo``.

    reward: hi = better, lo = worse. cost: hi = less safe (u), lo = safer (s); ``sign_*`` is
    ξ (+1 unsafe, −1 safe, real-valued when graded, NaN unknown), ``weight_*`` the sign-term
    weight (severity weighting) and ``unsafe_*`` the binary label for metrics (NaN unknown).
    """

    hi: list[int]
    lo: list[int]
    sign_hi: float = math.nan
    sign_lo: float = math.nan
    weight_hi: float = 1.0
    weight_lo: float = 1.0
    unsafe_hi: float = math.nan
    unsafe_lo: float = math.nan


def _binary_sign(safe: bool | None) -> float:
    return math.nan if safe is None else (-1.0 if safe else 1.0)


def orient_pairs(pairs, kind: str) -> tuple[list, list[tuple[str, str]], int]:
    """The pairs that carry the label this model learns from, each with its (hi, lo) sides:
    reward: hi = better; cost: hi = less safe. Returns (pairs, sides, number without the label)."""
    label = "better" if kind == "reward" else "safer"
    kept, sides, missing = [], [], 0
    for p in pairs:
        choice = getattr(p, label)
        if choice is None:
            missing += 1
            continue
        hi_which = ("a" if choice == "a" else "b") if kind == "reward" else ("b" if choice == "a" else "a")
        kept.append(p)
        sides.append((hi_which, "b" if hi_which == "a" else "a"))
    return kept, sides, missing


def set_pair_labels(ex: EncodedPair, p, hi_which: str, lo_which: str, cfg: ScoreModelConfig, kind: str) -> EncodedPair:
    """Fill the cost model's sign / weight / unsafe fields of ``ex`` from pair ``p``."""
    if kind != "cost":
        return ex
    assert isinstance(cfg, CostModelConfig)
    for side, which in (("hi", hi_which), ("lo", lo_which)):
        safe = getattr(p, f"safe_{which}")
        if cfg.sign_term == "graded":
            rate = getattr(p, f"harmless_rate_{which}")
            sign = float(L.graded_sign([rate], cfg.zero_rating_sign)[0]) if rate is not None else _binary_sign(safe)
        else:
            sign = _binary_sign(safe)
        setattr(ex, f"sign_{side}", sign)
        setattr(ex, f"unsafe_{side}", math.nan if safe is None else float(not safe))
        if cfg.severity_weighted:
            sev = getattr(p, f"severity_{which}")
            setattr(ex, f"weight_{side}", 1.0 + float(sev or 0))
    return ex


def encode_pairs(pairs, tokenizer, template: Template, cfg: ScoreModelConfig, kind: str) -> tuple[list[EncodedPair], int]:
    """Orient and tokenise the pairs that carry the label this model learns from.

    Returns (examples, number of pairs without that label, which the caller reports). Pairs whose
    prompt alone is longer than ``max_length`` are left out with a warning that counts them.
    """
    kept, sides, missing = orient_pairs(pairs, kind)
    prompts = [p.prompt for p in kept]
    enc = encode_prompt_responses(tokenizer, template, prompts + prompts,
                                  [p.response(h) for p, (h, _) in zip(kept, sides)]
                                  + [p.response(lo) for p, (_, lo) in zip(kept, sides)], max_length=None)
    n = len(kept)
    out, too_long = [], 0
    for i, (p, (hi_which, lo_which)) in enumerate(zip(kept, sides)):
        (hi, plen), (lo, _) = enc[i], enc[n + i]
        if plen >= cfg.max_length:
            too_long += 1
            continue
        ex = EncodedPair(hi[:cfg.max_length], lo[:cfg.max_length])
        out.append(set_pair_labels(ex, p, hi_which, lo_which, cfg, kind))
    if too_long:
        warnings.warn(f"{kind} model: {too_long} of {len(pairs)} pairs left out: their prompt is longer than "
                      f"max_length={cfg.max_length} tokens (raise --max-length to keep them)", stacklevel=2)
    return out, missing


def collate_pairs(examples: list[EncodedPair], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Both sides of every pair in one right-padded (2B, L) batch: hi rows first, then lo rows."""
    ids, mask = pad_sequences([e.hi for e in examples] + [e.lo for e in examples], pad_id, side="right")
    t = lambda name: torch.tensor([getattr(e, name) for e in examples], dtype=torch.float32, device=device)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "sign_hi": t("sign_hi"), "sign_lo": t("sign_lo"), "weight_hi": t("weight_hi"),
            "weight_lo": t("weight_lo"), "unsafe_hi": t("unsafe_hi"), "unsafe_lo": t("unsafe_lo")}


_LABEL_KEYS = ("sign_hi", "sign_lo", "weight_hi", "weight_lo", "unsafe_hi", "unsafe_lo")


@dataclass(slots=True)
class VLMPairExample:
    """A pair for a VLM score model: the record (tokenised with its image at collation time),
    its hi side, and the labels (an :class:`EncodedPair` with empty token lists)."""

    pair: object
    hi_which: str
    labels: EncodedPair


def collate_vlm_score_pairs(examples: list[VLMPairExample], processor, device, *, max_length: int,
                            image_cache: dict | None = None) -> dict:
    """The VLM counterpart of :func:`collate_pairs`: hi rows then lo rows, each with its pair's
    image(s) (:func:`saferlhf.data.multimodal.collate_vlm_pairs`), plus the label tensors."""
    from saferlhf.data.multimodal import collate_vlm_pairs

    vb = collate_vlm_pairs([e.pair for e in examples], processor, first=[e.hi_which for e in examples],
                           max_length=max_length, image_cache=image_cache)
    batch = {k: v.to(device) for k, v in vb.items()}
    for name in _LABEL_KEYS:
        batch[name] = torch.tensor([getattr(e.labels, name) for e in examples], dtype=torch.float32, device=device)
    return batch


def make_loss_fn(cfg: ScoreModelConfig, kind: str):
    def loss_fn(model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = {k: v for k, v in batch.items() if k not in _LABEL_KEYS}
        out = model(**inputs)
        B = batch["input_ids"].shape[0] // 2
        ids, am = batch["input_ids"], batch["attention_mask"]
        if kind == "reward":
            if cfg.loss_type == "token":
                loss, m = L.reward_model_loss_tokenwise(out.scores[:B], out.scores[B:], ids[:B], ids[B:],
                                                        am[:B], am[B:], reg_coeff=cfg.reg_coeff)
            else:
                loss, m = L.reward_model_loss(out.end_scores[:B], out.end_scores[B:], reg_coeff=cfg.reg_coeff)
        else:
            assert isinstance(cfg, CostModelConfig)
            kw = {"kappa": cfg.kappa, "reg_coeff": cfg.reg_coeff,
                  "sign_weights": (batch["weight_hi"], batch["weight_lo"]),
                  "is_unsafe": (batch["unsafe_hi"], batch["unsafe_lo"])}
            if not cfg.rank_safe_pairs:
                kw["rank_mask"] = L.safe_pair_rank_mask(batch["unsafe_hi"], batch["unsafe_lo"])
            if cfg.loss_type == "token":
                loss, m = L.cost_model_loss_tokenwise(out.scores[:B], out.scores[B:], ids[:B], ids[B:], am[:B], am[B:],
                                                      batch["sign_hi"], batch["sign_lo"], **kw)
            else:
                loss, m = L.cost_model_loss(out.end_scores[:B], out.end_scores[B:], batch["sign_hi"],
                                            batch["sign_lo"], **kw)
        return loss, {k: float(v) for k, v in m.items()}

    return loss_fn


def _build_model(cfg: ScoreModelConfig, kind: str, tokenizer, template: Template) -> ScoreModel:
    path = Path(cfg.model)
    if not path.is_dir():
        raise FileNotFoundError(f"--model {cfg.model}: not a folder (give an SFT checkpoint or a backbone dir)")
    normalizer = None if cfg.normalizer == "none" else cfg.normalizer
    model = ScoreModel.from_backbone(
        str(path), score_type=kind, normalizer=normalizer, momentum=cfg.momentum, do_normalize=False,
        template=template, dtype="fp32" if cfg.precision != "bf16" else "bf16", score_bias=cfg.score_bias,
        lora=lora_spec(cfg), gradient_checkpointing=cfg.gradient_checkpointing)
    if cfg.freeze:
        if not isinstance(tokenizer, VLMProcessor):
            raise ConfigError(f"--freeze {cfg.freeze}: parts of a vision-language model, but --model {cfg.model} "
                              "is a text model")
        freeze_vlm_parts(model, cfg.freeze)
    return model


def train_score_model(cfg: ScoreModelConfig, kind: str) -> dict:
    """Train a reward (``kind='reward'``) or cost (``'cost'``) model; save it in ``cfg.out``."""
    from saferlhf.data import load_pairs
    from saferlhf.hub import hub_data_options

    seed_everything(cfg.seed)
    accelerator = make_accelerator(cfg.precision, grad_accum=cfg.grad_accum)
    tokenizer = load_processor(cfg.tokenizer or cfg.model)
    is_vlm = isinstance(tokenizer, VLMProcessor)
    template = load_template(cfg.model, tokenizer)
    pairs = load_pairs(cfg.data, format=cfg.data_format, on_bad_record=cfg.on_bad_record,
                       **hub_data_options(cfg)).records
    if is_vlm:
        kept, sides, missing = orient_pairs(pairs, kind)
        train = [VLMPairExample(p, hi, set_pair_labels(EncodedPair([], []), p, hi, lo, cfg, kind))
                 for p, (hi, lo) in zip(kept, sides)]
    else:
        from saferlhf.trainers.sft import warn_images_ignored

        warn_images_ignored(pairs, cfg.model, f"{kind} model")
        train, missing = encode_pairs(pairs, tokenizer, template, cfg, kind)
    if missing:
        accelerator.print(f"[{kind}-model] {missing} of {len(pairs)} pairs have no "
                          f"{'better' if kind == 'reward' else 'safer'} label and are not used by this loss")
    if not train:
        raise ConfigError(f"--data {cfg.data}: no pair carries the label a {kind} model learns from")
    eval_pairs = None
    if cfg.eval_data:
        eval_pairs = load_pairs(cfg.eval_data, format=cfg.data_format, on_bad_record=cfg.on_bad_record,
                                **hub_data_options(cfg, "eval_data")).records
    model = _build_model(cfg, kind, tokenizer, template)
    pad_id = tokenizer.pad_token_id
    cache: dict = {}

    def evaluate(m) -> dict[str, float]:
        sm = accelerator.unwrap_model(m)
        sa, sb = score_pairs(sm, tokenizer, template, eval_pairs, max_length=cfg.max_length,
                             batch_size=max(cfg.batch_size, 32))
        s = summarize_scores(kind, eval_pairs, sa, sb)
        return {k: v for k, v in s.items() if isinstance(v, float)}

    result = run_supervised_loop(
        cfg, accelerator, model, n_examples=len(train),
        collate=(lambda idx: collate_vlm_score_pairs([train[i] for i in idx], tokenizer, accelerator.device,
                                                     max_length=cfg.max_length, image_cache=cache))
        if is_vlm else (lambda idx: collate_pairs([train[i] for i in idx], pad_id, accelerator.device)),
        loss_fn=make_loss_fn(cfg, kind), evaluate=evaluate if eval_pairs else None, name=f"{kind}-model")
    accelerator.wait_for_everyone()
    # Saved raw (normalisation off); its statistics go with it and RL / eval switch it on.
    final = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        with atomic_files(cfg.out) as tmp:
            final.save_pretrained(tmp, tokenizer=tokenizer, merge_lora=True)
    return {"steps": result.steps, "train": result.final_metrics, "eval": result.eval_metrics}


def run_reward_model(cfg: RewardModelConfig) -> dict:
    return train_score_model(cfg, "reward")


def run_cost_model(cfg: CostModelConfig) -> dict:
    return train_score_model(cfg, "cost")
