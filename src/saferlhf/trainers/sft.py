"""Supervised fine-tuning: token cross-entropy on response tokens only.

``saferlhf sft --data FILE --out DIR [--model tiny|DIR] [--tokenizer DIR]``. With
``--model tiny`` a tiny Llama-style LM sized to the tokenizer's vocabulary is trained from
scratch (the verifiable world); otherwise any causal LM folder, optionally with LoRA.

Vision-language models (Safe RLHF-V): ``--model tiny-llava`` / ``tiny-llava-siglip`` /
``tiny-qwen2_vl`` build a tiny VLM of that style sized to ``--tokenizer``
(:func:`saferlhf.models.tiny_vlm.tiny_vlm`), and a VLM folder (one with a
``VLMProcessor``, e.g. written by :func:`~saferlhf.models.tiny_vlm.save_vlm`) trains through
its own transformers class. Records are collated with their images
(:func:`saferlhf.data.multimodal.collate_vlm_sft`; a record without an image is plain text);
``--freeze vision_tower,projector,language_model`` keeps parts of the VLM fixed. A missing or
unreadable image stops the run with an error naming the record.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from saferlhf.config import ConfigError
from saferlhf.config.stages import SFTConfig
from saferlhf.data.templates import template_for
from saferlhf.distributed import full_state_dict_if_sharded
from saferlhf.io import describe_source
from saferlhf.losses import sft_loss
from saferlhf.models.checkpoint import load_template, save_policy
from saferlhf.models.loading import apply_lora, load_causal_lm, load_tokenizer
from saferlhf.models.tiny import tiny_llama
from saferlhf.models.tiny_vlm import freeze_vlm_parts, tiny_vlm
from saferlhf.processing import as_processor, load_processor
from saferlhf.processing.sft import (  # noqa: F401 - SFT encoding, re-exported for old imports
    IGNORE,
    PrefixUnstableTemplate,
    SFTExample,
    assistant_spans,
    collate_sft,
    encode_sft_examples,
    warn_images_ignored,
)
from saferlhf.trainers.common import make_accelerator, seed_everything
from saferlhf.trainers.loop import run_supervised_loop


def lora_spec(cfg) -> dict | None:
    """LoRA arguments for :func:`apply_lora` from a config's ``lora_*`` keys (None: full FT)."""
    if not cfg.lora_r:
        return None
    return {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": getattr(cfg, "lora_dropout", 0.0),
            "target_modules": list(cfg.lora_targets) or "all-linear"}


def sft_step(model, batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Token cross-entropy on the labelled response tokens, and the next-token accuracy there.
    Every model input of the batch goes to the model (``pixel_values`` … of a VLM batch too)."""
    labels = batch["labels"]
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    loss = sft_loss(logits, labels)
    with torch.no_grad():
        pred = logits[:, :-1].argmax(-1)
        tgt = labels[:, 1:]
        valid = tgt != IGNORE
        acc = ((pred == tgt) & valid).sum() / valid.sum().clamp(min=1)
    return loss, {"token_accuracy": float(acc)}


TINY_VLM_MODELS = {"tiny-llava": "llava", "tiny-llava-siglip": "llava-siglip", "tiny-qwen2_vl": "qwen2_vl"}
"""``--model`` values that build a tiny VLM of a style from ``--tokenizer``."""


def _load_model_and_tokenizer(cfg: SFTConfig):
    if cfg.model in TINY_VLM_MODELS:
        if cfg.tokenizer is None:
            raise ConfigError(f"--model {cfg.model} needs --tokenizer DIR (the tiny VLM is sized to its vocabulary)")
        heads = max(1, cfg.tiny_hidden // 32)
        model, tokenizer = tiny_vlm(TINY_VLM_MODELS[cfg.model], load_tokenizer(cfg.tokenizer),
                                    hidden_size=cfg.tiny_hidden, num_layers=cfg.tiny_layers, num_heads=heads,
                                    max_position_embeddings=max(cfg.max_length, 64), seed=cfg.seed)
        template = tokenizer.template
    elif cfg.model == "tiny":
        if cfg.tokenizer is None:
            raise ConfigError("--model tiny needs --tokenizer DIR (the tiny model is sized to its vocabulary)")
        tokenizer = load_tokenizer(cfg.tokenizer)
        model = tiny_llama(tokenizer, hidden_size=cfg.tiny_hidden, num_layers=cfg.tiny_layers,
                           num_heads=max(1, cfg.tiny_hidden // 32),
                           max_position_embeddings=max(cfg.max_length, 64), seed=cfg.seed)
        template = template_for(tokenizer)
    else:
        if not Path(cfg.model).is_dir():
            raise FileNotFoundError(f"--model {cfg.model}: not a folder (give 'tiny' or a save_pretrained dir)")
        tokenizer = load_processor(cfg.tokenizer or cfg.model)
        model = load_causal_lm(cfg.model, dtype="fp32" if cfg.precision != "bf16" else "bf16",
                               gradient_checkpointing=cfg.gradient_checkpointing)
        template = load_template(cfg.model, tokenizer)
    if cfg.freeze and as_processor(tokenizer).modality == "text":
        raise ConfigError(f"--freeze {cfg.freeze}: parts of a vision-language model, but --model {cfg.model} "
                          "is a text model")
    spec = lora_spec(cfg)
    if spec is not None:
        model = apply_lora(model, spec)
    if cfg.freeze:  # after LoRA: adapters inside a frozen part stay frozen too
        freeze_vlm_parts(model, cfg.freeze)
    return model, tokenizer, template


class SFTTrainer:
    """Supervised fine-tuning on response tokens (TRL conventions)::

        trainer = SFTTrainer(SFTConfig(out="runs/sft"), model=model, processing_class=tokenizer,
                             train_dataset=dataset)
        trainer.train()
        trainer.save_model()

    ``model``: a ``PreTrainedModel`` (text or VLM) or a path / hub id / ``tiny`` (default
    ``args.model``). ``processing_class``: a tokenizer, an HF processor or a
    :class:`~saferlhf.processing.Processor` (default: the one saved beside a model path).
    ``train_dataset`` / ``eval_dataset``: a ``datasets.Dataset``, a list of dicts or a path / hub
    id of SFT records (default ``args.data`` / ``args.eval_data``).
    """

    def __init__(self, args: SFTConfig, *, model: Any = None, processing_class: Any = None,
                 train_dataset: Any = None, eval_dataset: Any = None, accelerator=None) -> None:
        from saferlhf.data import load_sft
        from saferlhf.hub import hub_data_options_for

        cfg = self.args = args
        data = cfg.data if train_dataset is None else train_dataset
        if data is None:
            raise ConfigError("missing --data: the trainer needs SFT records (args.data or train_dataset=)")
        seed_everything(cfg.seed)
        self.accelerator = accelerator or make_accelerator(cfg.precision, grad_accum=cfg.grad_accum)
        self.model, self.processor, self.template = _model_and_processor(cfg, model, processing_class)
        hub = hub_data_options_for(data, cfg, "data")
        self.records = load_sft(data, format=cfg.data_format, on_bad_record=cfg.on_bad_record, **hub).records
        if not self.records:
            raise ConfigError(f"--data {describe_source(data)}: no usable SFT records")
        eval_data = cfg.eval_data if eval_dataset is None else eval_dataset
        self.eval_records = None
        if eval_data is not None:
            hub = hub_data_options_for(eval_data, cfg, "eval_data")
            self.eval_records = load_sft(eval_data, format=cfg.data_format, on_bad_record=cfg.on_bad_record,
                                         **hub).records
        self.meta: dict[str, Any] = {"stage": "sft"}
        if self.processor.modality != "text":
            self.meta.update(modality=self.processor.modality, freeze=list(cfg.freeze))
        self.result = None

    @classmethod
    def from_config(cls, cfg: SFTConfig, **kwargs: Any) -> SFTTrainer:
        """The trainer of a config whose model and data are paths (what ``saferlhf sft`` runs)."""
        from saferlhf.preflight import check_stage

        check_stage(cfg, "sft")  # models, tokenizer, --out: before any work
        return cls(cfg, **kwargs)

    def train(self) -> dict[str, Any]:
        """Train for the configured steps (checkpoints and resume in ``args.out``), save the
        policy in ``args.out``; returns the final train and eval metrics."""
        cfg, acc = self.args, self.accelerator
        train, to_batch = self.processor.sft_examples(self.records, cfg.max_length, stage="SFT", model=cfg.model)
        evals = (self.processor.sft_examples(self.eval_records, cfg.max_length)[0]
                 if self.eval_records is not None else None)

        def batch_of(items):
            return {k: v.to(acc.device) for k, v in to_batch(items).items()}

        def evaluate(m) -> dict[str, float]:
            m.eval()
            tot, n = {"loss": 0.0, "token_accuracy": 0.0}, 0
            with torch.inference_mode():
                for i in range(0, len(evals), cfg.batch_size):
                    batch = batch_of(evals[i:i + cfg.batch_size])
                    loss, met = sft_step(m, batch)
                    k = len(batch["input_ids"])
                    tot["loss"] += float(loss) * k
                    tot["token_accuracy"] += met["token_accuracy"] * k
                    n += k
            return {k: v / max(n, 1) for k, v in tot.items()}

        self.result = run_supervised_loop(cfg, acc, self.model, n_examples=len(train),
                                          collate=lambda idx: batch_of([train[i] for i in idx]),
                                          loss_fn=sft_step, evaluate=evaluate if evals else None, name="sft")
        self.save_model(cfg.out)
        return {"steps": self.result.steps, "train": self.result.final_metrics, "eval": self.result.eval_metrics}

    def save_model(self, output_dir: str | None = None) -> Path:
        """The policy with its processor and template as a ``save_pretrained`` folder."""
        out = Path(output_dir or self.args.out)
        acc = self.accelerator
        acc.wait_for_everyone()
        full = full_state_dict_if_sharded(acc, self.model)  # FSDP / ZeRO-3: gathered on every rank
        if acc.is_main_process:
            extra = {} if self.result is None else {"steps": self.result.steps,
                                                    "final_metrics": self.result.final_metrics,
                                                    "eval_metrics": self.result.eval_metrics}
            save_policy(acc.unwrap_model(self.model), self.processor, out, template=self.template,
                        meta={**self.meta, **extra}, state_dict=full)
        return out


def _model_and_processor(cfg: SFTConfig, model: Any, processing_class: Any):
    """(model, processor, template): from objects, or loaded as ``args.model`` says."""
    if model is None:
        model, tokenizer, template = _load_model_and_tokenizer(cfg)
        return model, as_processor(tokenizer, template), template
    if isinstance(model, (str, Path)):
        model, tokenizer, template = _load_model_and_tokenizer(dataclasses.replace(cfg, model=str(model)))
        return model, as_processor(tokenizer, template), template
    if processing_class is None:
        raise ConfigError("a model object needs processing_class= (its tokenizer or processor)")
    processor = as_processor(processing_class)
    if cfg.freeze and processor.modality == "text":
        raise ConfigError(f"--freeze {cfg.freeze}: parts of a vision-language model, but the model is a text model")
    spec = lora_spec(cfg)
    if spec is not None:
        model = apply_lora(model, spec)
    if cfg.freeze:
        freeze_vlm_parts(model, cfg.freeze)
    return model, processor, processor.template


def run_sft(cfg: SFTConfig) -> Path:
    """Train and save the SFT policy in ``cfg.out``; returns the folder."""
    SFTTrainer.from_config(cfg).train()
    return Path(cfg.out)
