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
from typing import Any

import torch

from saferlhf import losses as L
from saferlhf.config import ConfigError
from saferlhf.config.stages import CostModelConfig, RewardModelConfig, ScoreModelConfig
from saferlhf.data.templates import Template
from saferlhf.distributed import full_state_dict_if_sharded
from saferlhf.eval.score_eval import score_pairs, summarize_scores
from saferlhf.io import atomic_files
from saferlhf.models.checkpoint import load_template
from saferlhf.models.score_model import ScoreModel
from saferlhf.models.tiny_vlm import freeze_vlm_parts
from saferlhf.processing import as_processor, load_processor
from saferlhf.trainers.common import make_accelerator, seed_everything
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


_LABEL_KEYS = ("sign_hi", "sign_lo", "weight_hi", "weight_lo", "unsafe_hi", "unsafe_lo")


def label_tensors(labels: list[EncodedPair], device) -> dict[str, torch.Tensor]:
    """The loss's label tensors of a batch of pairs (B,) each."""
    return {name: torch.tensor([getattr(e, name) for e in labels], dtype=torch.float32, device=device)
            for name in _LABEL_KEYS}


def pair_examples(pairs, processor, cfg: ScoreModelConfig, kind: str):
    """``(examples, missing, collate)``: the pairs that carry this model's label, oriented (hi
    side first) and encoded by the processor, each with its labels; the number without the
    label; and the function that batches examples (hi rows then lo rows, plus the labels).
    Pairs whose prompt alone is longer than ``max_length`` are left out with a warning."""
    kept, sides, missing = orient_pairs(pairs, kind)
    items, to_batch = processor.pair_examples(kept, [hi for hi, _ in sides], max_length=cfg.max_length,
                                              stage=f"{kind} model", model=str(cfg.model))
    examples, too_long = [], 0
    for p, (hi, lo), item in zip(kept, sides, items, strict=True):
        if item is None:
            too_long += 1
            continue
        examples.append((item, set_pair_labels(EncodedPair([], []), p, hi, lo, cfg, kind)))
    if too_long:
        warnings.warn(f"{kind} model: {too_long} of {len(pairs)} pairs left out: their prompt is longer than "
                      f"max_length={cfg.max_length} tokens (raise --max-length to keep them)", stacklevel=2)

    def collate(batch: list, device) -> dict[str, torch.Tensor]:
        inputs = {k: v.to(device) for k, v in to_batch([item for item, _ in batch]).items()}
        return {**inputs, **label_tensors([labels for _, labels in batch], device)}

    return examples, missing, collate


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


def _build_model(cfg: ScoreModelConfig, kind: str, model: Any, processor, template: Template) -> ScoreModel:
    """The score model to train: ``model`` as is when it is a :class:`ScoreModel`, else a new
    head on it (a ``PreTrainedModel``) or on the backbone at its path (``args.model``)."""
    if isinstance(model, ScoreModel):
        score_model = model
    else:
        if isinstance(model, (str, Path)) and not Path(model).is_dir():
            raise FileNotFoundError(f"--model {model}: not a folder (give an SFT checkpoint or a backbone dir)")
        normalizer = None if cfg.normalizer == "none" else cfg.normalizer
        score_model = ScoreModel.from_backbone(
            str(model) if isinstance(model, (str, Path)) else model, score_type=kind, normalizer=normalizer,
            momentum=cfg.momentum, do_normalize=False, template=template,
            dtype="fp32" if cfg.precision != "bf16" else "bf16", score_bias=cfg.score_bias,
            lora=lora_spec(cfg),
            gradient_checkpointing=cfg.gradient_checkpointing)
    if cfg.freeze:
        if processor.modality == "text":
            raise ConfigError(f"--freeze {cfg.freeze}: parts of a vision-language model, but --model {cfg.model} "
                              "is a text model")
        freeze_vlm_parts(score_model, cfg.freeze)
    return score_model


class ScoreModelTrainer:
    """Reward (``kind="reward"``) or cost (``kind="cost"``) model training (TRL conventions)::

        trainer = ScoreModelTrainer(CostModelConfig(out="runs/cm"), model=backbone,
                                    processing_class=tokenizer, train_dataset=pairs, kind="cost")
        trainer.train()

    ``model``: a :class:`ScoreModel`, a ``PreTrainedModel`` backbone (a score head is added) or a
    path (default ``args.model``). ``processing_class``: a tokenizer, HF processor or
    :class:`~saferlhf.processing.Processor` (default: the one saved beside the model path).
    ``train_dataset`` / ``eval_dataset``: preference pairs as a ``datasets.Dataset``, a list of
    dicts or a path / hub id (default ``args.data`` / ``args.eval_data``). ``kind`` defaults to
    ``cost`` for a :class:`CostModelConfig`, else ``reward``.
    """

    def __init__(self, args: ScoreModelConfig, *, model: Any = None, processing_class: Any = None,
                 train_dataset: Any = None, eval_dataset: Any = None, kind: str | None = None,
                 accelerator=None) -> None:
        from saferlhf.data import load_pairs
        from saferlhf.hub import hub_data_options_for

        kind = kind or ("cost" if isinstance(args, CostModelConfig) else "reward")
        if kind not in ("reward", "cost"):
            raise ConfigError(f"kind must be 'reward' or 'cost', got {kind!r}")
        if kind == "cost" and not isinstance(args, CostModelConfig):
            raise ConfigError("a cost model trains from a CostModelConfig (kappa, sign term, ...)")
        cfg, self.kind, self.args = args, kind, args
        model = cfg.model if model is None else model
        data = cfg.data if train_dataset is None else train_dataset
        if model is None or data is None:
            raise ConfigError("missing --model or --data: the trainer needs a model and preference pairs")
        seed_everything(cfg.seed)
        self.accelerator = accelerator or make_accelerator(cfg.precision, grad_accum=cfg.grad_accum)
        if processing_class is not None:
            self.processor = as_processor(processing_class)
        elif isinstance(model, (str, Path)):
            self.processor = load_processor(cfg.tokenizer or model)
        else:
            raise ConfigError("a model object needs processing_class= (its tokenizer or processor)")
        self.template = (load_template(model, self.processor) if isinstance(model, (str, Path))
                         else self.processor.template)
        self.processor = as_processor(self.processor, self.template)  # encodes with the model's template
        hub = hub_data_options_for(data, cfg, "data")
        self.pairs = load_pairs(data, format=cfg.data_format, on_bad_record=cfg.on_bad_record, **hub).records
        eval_data = cfg.eval_data if eval_dataset is None else eval_dataset
        self.eval_pairs = None
        if eval_data is not None:
            hub = hub_data_options_for(eval_data, cfg, "eval_data")
            self.eval_pairs = load_pairs(eval_data, format=cfg.data_format, on_bad_record=cfg.on_bad_record,
                                         **hub).records
        self.model = _build_model(cfg, kind, model, self.processor, self.template)
        self.result = None

    @classmethod
    def from_config(cls, cfg: ScoreModelConfig, kind: str | None = None, **kwargs: Any) -> ScoreModelTrainer:
        """The trainer of a config whose model and data are paths (``saferlhf reward-model`` /
        ``cost-model``)."""
        from saferlhf.preflight import check_stage

        kind = kind or ("cost" if isinstance(cfg, CostModelConfig) else "reward")
        check_stage(cfg, f"{kind}-model")  # models, tokenizer, --out: before any work
        return cls(cfg, kind=kind, **kwargs)

    def train(self) -> dict:
        """Train for the configured steps (checkpoints and resume in ``args.out``) and save the
        model in ``args.out``; returns the steps and the final train / eval metrics."""
        cfg, kind, acc = self.args, self.kind, self.accelerator
        train, missing, collate = pair_examples(self.pairs, self.processor, cfg, kind)
        if missing:
            acc.print(f"[{kind}-model] {missing} of {len(self.pairs)} pairs have no "
                      f"{'better' if kind == 'reward' else 'safer'} label and are not used by this loss")
        if not train:
            raise ConfigError(f"--data {cfg.data}: no pair carries the label a {kind} model learns from")
        eval_pairs = self.eval_pairs

        def evaluate(m) -> dict[str, float]:
            sm = acc.unwrap_model(m)
            sa, sb = score_pairs(sm, self.processor, self.template, eval_pairs, max_length=cfg.max_length,
                                 batch_size=max(cfg.batch_size, 32))
            s = summarize_scores(kind, eval_pairs, sa, sb)
            return {k: v for k, v in s.items() if isinstance(v, float)}

        self.result = run_supervised_loop(
            cfg, acc, self.model, n_examples=len(train), collate=lambda idx: collate([train[i] for i in idx], acc.device),
            loss_fn=make_loss_fn(cfg, kind), evaluate=evaluate if eval_pairs else None, name=f"{kind}-model")
        self.save_model(cfg.out)
        result = {"steps": self.result.steps, "train": self.result.final_metrics, "eval": self.result.eval_metrics}
        if kind == "cost":
            cal = self.calibrate(cfg.out)
            result["calibration"] = cal.to_dict() if cal is not None else None
        return result

    def calibrate(self, output_dir: str | None = None):
        """Fit P(unsafe) = σ((c − offset)/T) (:mod:`saferlhf.calibration`) on held-out labelled
        pairs (``calibration_data``, else ``eval_data``; else, flagged in-sample, the training
        pairs) and write ``calibration.json`` beside the saved cost model. None (and no file,
        with a message) when the fit is impossible: one label class, or scores that do not rise
        with the unsafe label (an untrained model)."""
        from saferlhf.calibration import calibrate_score_model
        from saferlhf.data import load_pairs
        from saferlhf.io import describe_source

        cfg, acc = self.args, self.accelerator
        if cfg.calibration_data is not None:
            pairs = load_pairs(cfg.calibration_data, format=cfg.data_format, on_bad_record=cfg.on_bad_record).records
            source = describe_source(cfg.calibration_data)
        elif self.eval_pairs:
            pairs, source = self.eval_pairs, describe_source(cfg.eval_data)
        else:
            pairs, source = self.pairs, f"{describe_source(cfg.data)} (in-sample: the training pairs)"
            acc.print("[cost-model] calibrating P(unsafe) on the training pairs (no --eval-data or "
                      "--calibration-data): in-sample, so over-confident; refit it on held-out pairs with "
                      "`saferlhf calibrate`")
        model = acc.unwrap_model(self.model)
        try:
            cal = calibrate_score_model(model, self.processor, self.template, pairs, source=source,
                                        max_length=cfg.max_length, batch_size=max(cfg.batch_size, 32))
        except ValueError as e:  # one label class only, or a model that does not (yet) separate them
            acc.print(f"[cost-model] no calibration.json written: {e}. RL's unsafe-rate budget then reads σ(c) "
                      "uncalibrated; fit it later with `saferlhf calibrate`")
            return None
        acc.wait_for_everyone()
        if acc.is_main_process:
            cal.save(output_dir or cfg.out)
        acc.print(f"[cost-model] calibration: T = {cal.temperature:.3f}, offset = {cal.offset:.3f} on {cal.n} "
                  f"labelled responses (labelled unsafe rate {cal.labelled_unsafe_rate:.3f}, ECE {cal.ece:.3f})")
        return cal

    def save_model(self, output_dir: str | None = None) -> Path:
        """Save the score model raw (normalisation off; its statistics go with it and RL / eval
        switch it on) with its processor, atomically."""
        out = Path(output_dir or self.args.out)
        acc = self.accelerator
        acc.wait_for_everyone()
        full = full_state_dict_if_sharded(acc, self.model)  # FSDP / ZeRO-3: gathered on every rank
        if acc.is_main_process:
            with atomic_files(out) as tmp:
                acc.unwrap_model(self.model).save_pretrained(tmp, tokenizer=self.processor, merge_lora=True,
                                                             state_dict=full)
        return out


def train_score_model(cfg: ScoreModelConfig, kind: str) -> dict:
    """Train a reward (``kind='reward'``) or cost (``'cost'``) model; save it in ``cfg.out``."""
    return ScoreModelTrainer.from_config(cfg, kind=kind).train()


def run_reward_model(cfg: RewardModelConfig) -> dict:
    return train_score_model(cfg, "reward")


def run_cost_model(cfg: CostModelConfig) -> dict:
    return train_score_model(cfg, "cost")
