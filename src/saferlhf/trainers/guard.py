"""``saferlhf guard train``: fit the guard's heads (and backbone) on labelled moderation data.

Data: any source ``load_guard_records`` reads — PKU-SafeRLHF / BeaverTails-V / world pairs
(each labelled response is an example), BeaverTails QA or BeaverTails-V single responses —
or the ``prompt-moderation`` preset (``saferlhf.guard.presets``).

Image data (the image world, BeaverTails-V): with ``--model tiny`` the guard is a tiny VLM's
base model (``--vlm-style qwen2_vl`` default, or ``llava``; ``--vision-*`` size its tower) and
every example is encoded with its pair's image; a VLM dir (``save_vlm``: ``vlm_processor.json``)
works the same way. A text-only backbone on image data is an error unless ``--ignore-images``
(a text-only baseline). Each image file is decoded and preprocessed once per run.

Labels and masks (see ``saferlhf.guard.losses``): ``unsafe`` is always known; ``severity``
where the record has one (none in HarmBench, BeaverTails); category labels where the record's
source labels categories: by default every category of the taxonomy when the data set holds
any category name at all (a safe response then is a known "none"), or the names listed in a
record's ``metadata["category_scope"]`` (a source with its own partial taxonomy).

After training: the temperature T of P(unsafe) = σ(z / T) is fitted on a held-out, stratified
split of the training data (``calibration_fraction``), the decision threshold is kept (0.5)
or picked on that split for a target false-positive rate (``target_fpr``), the held-out
metrics are computed, and the guard folder is written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saferlhf.config import ConfigError, to_dict
from saferlhf.data.schema import (
    BEAVERTAILS_CATEGORIES,
    BEAVERTAILS_V_CATEGORIES,
    PKU_HARM_CATEGORIES,
    GuardRecord,
)
from saferlhf.guard.config import GuardTrainConfig
from saferlhf.guard.losses import GuardLabels, balanced_weights, build_labels, guard_loss
from saferlhf.guard.model import (
    Guard,
    GuardConfig,
    GuardEncoder,
    GuardInputError,
    GuardModel,
    fit_temperature,
    threshold_for_fpr,
)

TAXONOMIES: dict[str, tuple[str, ...]] = {
    "pku": PKU_HARM_CATEGORIES,
    "beavertails": BEAVERTAILS_CATEGORIES,
    "beavertails_v": BEAVERTAILS_V_CATEGORIES,
}


# ----------------------------------------------------------------------------- labels
def resolve_taxonomy(records: Sequence[GuardRecord], choice: str = "auto") -> tuple[str, list[str]]:
    """``(name, categories)`` of the category head.

    ``auto``: the smallest known taxonomy holding every category name in the data (PKU 19,
    BeaverTails 14, BeaverTails-V 20); ``custom`` (the sorted names found, category scopes
    included) when none does; ``none`` (no category head) when the data has no names.
    """
    if choice == "none":
        return "none", []
    if choice in TAXONOMIES:
        return choice, list(TAXONOMIES[choice])
    names: set[str] = set()
    for r in records:
        names.update(r.categories)
        names.update(r.metadata.get("category_scope") or ())
    if not names:
        return "none", []
    for name, cats in sorted(TAXONOMIES.items(), key=lambda kv: len(kv[1])):
        if names <= set(cats):
            return name, list(cats)
    return "custom", sorted(names)


def _select(labels: GuardLabels, idx: Sequence[int]) -> GuardLabels:
    t = torch.as_tensor(list(idx), dtype=torch.long)
    return GuardLabels(*(getattr(labels, f)[t] for f in labels.__dataclass_fields__))


def stratified_split(records: Sequence[GuardRecord], fraction: float, seed: int
                     ) -> tuple[list[GuardRecord], list[GuardRecord]]:
    """``(train, held_out)``: ``fraction`` of each (safe, severity) stratum, seeded."""
    if fraction <= 0:
        return list(records), []
    strata: dict[tuple, list[int]] = {}
    for i, r in enumerate(records):
        strata.setdefault((r.safe, r.severity), []).append(i)
    rng = random.Random(f"guard-split-{seed}")
    held: set[int] = set()
    for key in sorted(strata, key=repr):
        idx = strata[key]
        rng.shuffle(idx)
        held.update(idx[: int(round(fraction * len(idx)))])
    return ([r for i, r in enumerate(records) if i not in held],
            [r for i, r in enumerate(records) if i in held])


# ----------------------------------------------------------------------------- model
def _layers(backbone) -> list[torch.nn.Module]:
    for path in ("layers", "encoder.layer", "h", "model.layers", "language_model.layers"):
        obj = backbone
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return list(obj)
    return []


def _freeze(backbone, *, embeddings: bool, layers: int) -> None:
    if embeddings:
        emb = getattr(backbone, "embeddings", None) or backbone.get_input_embeddings()
        emb.requires_grad_(False)
    if layers:
        blocks = _layers(backbone)
        if layers > len(blocks):
            raise ConfigError(f"freeze_layers={layers} but the backbone has {len(blocks)} layers")
        for b in blocks[:layers]:
            b.requires_grad_(False)


def build_guard_model(cfg: GuardTrainConfig, records: Sequence[GuardRecord]) -> tuple[GuardModel, Any]:
    """The untrained guard (backbone + fresh heads) and its tokenizer, as the config says."""
    from saferlhf.data.templates import template_for
    from saferlhf.models.checkpoint import load_template
    from saferlhf.models.loading import load_backbone, load_tokenizer
    from saferlhf.processing import VLMProcessor, is_vlm_dir

    template = None
    has_images = any(r.images for r in records) and not cfg.ignore_images
    if cfg.model == "tiny":
        if cfg.tokenizer is None:
            raise ConfigError("--model tiny needs --tokenizer DIR (the tiny backbone is sized to its vocabulary)")
        tokenizer = load_tokenizer(cfg.tokenizer)
        torch.manual_seed(cfg.seed)
        if has_images:
            backbone, tokenizer = _tiny_vlm_backbone(cfg, tokenizer)
            template = tokenizer.template
        else:
            from transformers import LlamaModel

            from saferlhf.models.tiny import tiny_llama_config

            backbone = LlamaModel(tiny_llama_config(tokenizer, hidden_size=cfg.tiny_hidden,
                                                    num_layers=cfg.tiny_layers,
                                                    num_heads=max(1, cfg.tiny_hidden // 32),
                                                    max_position_embeddings=max(cfg.max_length, 64)))
            template = template_for(tokenizer)
    else:
        path = cfg.model
        if cfg.model == "minilm":
            from saferlhf.guard.presets import minilm_dir

            path = str(minilm_dir())
        if not Path(path).is_dir():
            raise FileNotFoundError(f"--model {cfg.model}: not a folder (give 'tiny', 'minilm' or a model dir)")
        backbone = load_backbone(path, dtype="fp32" if cfg.precision != "bf16" else "bf16")
        if is_vlm_dir(path) and not cfg.ignore_images:
            tokenizer = VLMProcessor.from_pretrained(path)
            template = tokenizer.template
        else:
            tokenizer = load_tokenizer(cfg.tokenizer or path)
            template = load_template(path, tokenizer)
        if has_images and not isinstance(tokenizer, VLMProcessor):
            raise ConfigError(
                f"the training data has images but --model {cfg.model} is text-only (no vision tower and "
                "vlm_processor.json); give a VLM dir (save_vlm), --model tiny for a tiny VLM guard, or "
                "--ignore-images true for a text-only guard")
    multimodal = isinstance(tokenizer, VLMProcessor)
    text_tokenizer = tokenizer.tokenizer if multimodal else tokenizer
    is_encoder = bool(getattr(text_tokenizer, "cls_token", None) and getattr(text_tokenizer, "sep_token", None)) \
        and not getattr(backbone.config, "is_decoder", False) and not multimodal
    encoding = cfg.encoding if cfg.encoding != "auto" else ("pair" if is_encoder else "template")
    if multimodal and encoding != "template":
        raise ConfigError("an image + text guard uses the template encoding (--encoding template or auto)")
    pooling = cfg.pooling if cfg.pooling != "auto" else ("mean" if encoding == "pair" else "last")
    has_response = any(r.response is not None for r in records)
    moderation = cfg.moderation if cfg.moderation != "auto" else ("output" if has_response else "input")
    taxonomy, categories = resolve_taxonomy(records, cfg.taxonomy)
    gcfg = GuardConfig(
        categories=categories, taxonomy=taxonomy, moderation=moderation, pooling=pooling, encoding=encoding,
        template=template.to_dict() if template is not None else None, max_length=cfg.max_length,
        threshold=cfg.threshold, unsafe_bias=cfg.unsafe_bias,
        heads={"unsafe": True, "severity": any(r.severity is not None for r in records),
               "categories": bool(categories)},
        vlm_style=tokenizer.style if multimodal else None,
    )
    torch.manual_seed(cfg.seed)
    model = GuardModel(backbone, gcfg)
    _freeze(backbone, embeddings=bool(cfg.freeze_embeddings), layers=cfg.freeze_layers or 0)
    return model, tokenizer


def _tiny_vlm_backbone(cfg: GuardTrainConfig, tokenizer):
    """The base model (``LlavaModel`` / ``Qwen2VLModel``) of a tiny VLM sized by the config, and
    its :class:`~saferlhf.models.tiny_vlm.VLMProcessor`."""
    from saferlhf.models.tiny_vlm import tiny_vlm

    heads = max(1, cfg.tiny_hidden // 32)
    sizes: dict[str, Any] = {"vision_hidden_size": cfg.vision_hidden, "vision_layers": cfg.vision_layers,
                             "vision_heads": max(1, cfg.vision_hidden // 32), "hidden_size": cfg.tiny_hidden,
                             "num_layers": cfg.tiny_layers, "num_heads": heads, "patch_size": cfg.vision_patch,
                             "seed": cfg.seed}
    if cfg.vlm_style == "llava":
        sizes["max_position_embeddings"] = max(cfg.max_length, 64)
    else:
        sizes["max_position_embeddings"] = max(cfg.max_length, 128)
    try:
        model, processor = tiny_vlm(cfg.vlm_style, tokenizer, **sizes)
    except ValueError as e:
        raise ConfigError(f"tiny {cfg.vlm_style} guard backbone: {e}") from None
    return model.model, processor


# ----------------------------------------------------------------------------- training
def load_training_records(cfg: GuardTrainConfig) -> dict[str, list[GuardRecord]]:
    """``{"train", "calibration"[, "test"]}`` records from ``--data`` or the preset."""
    if cfg.preset != "none":
        from saferlhf.guard.presets import build_preset_splits

        return build_preset_splits(cfg.preset, seed=cfg.seed)
    from saferlhf.data import load_guard_records

    records = load_guard_records(cfg.data, format=cfg.data_format, on_bad_record=cfg.on_bad_record,
                                 keep_contradictory_labels=True).records
    if not records:
        raise ConfigError(f"--data {cfg.data}: no labelled moderation examples")
    train, calib = stratified_split(records, cfg.calibration_fraction, cfg.seed)
    return {"train": train, "calibration": calib}


def _encode_records(encoder: GuardEncoder, records: Sequence[GuardRecord]) -> list[dict[str, Any]]:
    """Encode every training record (with its images for an image + text guard; each image file
    is decoded and preprocessed once). An image that cannot be opened is a ``DataError`` naming
    the record."""
    from saferlhf.data.multimodal import ImageLoadError
    from saferlhf.data.validation import DataError

    cache: dict = {}
    out = []
    for i, r in enumerate(records):
        src = r.source or f"training example {i}"
        try:
            out.append(encoder.encode(r.prompt, r.response, r.images if encoder.multimodal else None,
                                      source=src, cache=cache))
        except (ImageLoadError, GuardInputError) as e:
            raise DataError(str(e)) from None
    return out


def apply_preset(cfg: GuardTrainConfig) -> GuardTrainConfig:
    """The config with the preset's values in every option still at its default."""
    if cfg.preset == "none":
        return cfg
    from saferlhf.guard.presets import PRESET_OPTIONS

    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING
                or f.default_factory is not dataclasses.MISSING}
    changes = {k: v for k, v in PRESET_OPTIONS[cfg.preset].items()
               if getattr(cfg, k) is None or (defaults.get(k) is not None and getattr(cfg, k) == defaults[k])}
    return dataclasses.replace(cfg, **changes)


def train_guard(cfg: GuardTrainConfig, *, splits: dict[str, list[GuardRecord]] | None = None,
                verbose: bool = True) -> dict[str, Any]:
    """Train, calibrate, evaluate on the held-out split and save the guard in ``cfg.out``.

    ``splits``: ready ``{"train", "calibration"[, "test"]}`` records instead of reading
    ``cfg.data`` (library use, e.g. the world stage). Returns the training summary (also
    written to ``OUT/train_summary.json``).
    """
    from saferlhf.data import load_guard_records
    from saferlhf.eval.guard_eval import evaluate_guard_records
    from saferlhf.trainers.common import make_accelerator, seed_everything
    from saferlhf.trainers.loop import run_supervised_loop

    cfg = apply_preset(cfg)
    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    splits = splits if splits is not None else load_training_records(cfg)
    train_records, calib_records = _train_and_calibration(cfg, splits)
    accelerator = make_accelerator(cfg.precision, grad_accum=cfg.grad_accum)
    model, tokenizer = build_guard_model(cfg, train_records + calib_records)
    gcfg = model.guard_config
    encoder = GuardEncoder(tokenizer, gcfg)
    encoded = _encode_records(encoder, train_records)
    labels = build_labels(train_records, gcfg.categories)
    weights = _class_weights(cfg, labels, gcfg)
    head_weights = (cfg.unsafe_weight, cfg.severity_weight, cfg.category_weight)
    if verbose:
        n_unsafe = int(labels.unsafe.sum())
        accelerator.print(
            f"[guard] {len(train_records)} training examples ({n_unsafe} unsafe), {len(calib_records)} held out; "
            f"taxonomy {gcfg.taxonomy} ({len(gcfg.categories)} categories), {gcfg.moderation} moderation, "
            f"{gcfg.encoding} encoding, {gcfg.pooling} pooling")

    def collate(idx: list[int]) -> dict[str, Any]:
        batch = encoder.collate([encoded[i] for i in idx], accelerator.device)
        batch["labels"] = _select(labels, idx).to(accelerator.device)
        return batch

    def loss_fn(m, batch):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out = m(**inputs)
        loss, metrics = guard_loss(out.unsafe_logits, out.severity_logits, out.category_logits, batch["labels"],
                                   head_weights=head_weights, **weights)
        return loss, {k: float(v) for k, v in metrics.items()}

    eval_records = calib_records
    if cfg.eval_data:
        eval_records = load_guard_records(cfg.eval_data, format=cfg.data_format, on_bad_record=cfg.on_bad_record).records

    def evaluate(m) -> dict[str, float]:
        guard = Guard(accelerator.unwrap_model(m), tokenizer, batch_size=max(cfg.batch_size, 64))
        res = evaluate_guard_records(guard, eval_records, oracle=False, plots_dir=None)
        m.train()
        return {k: v for k, v in res.items() if isinstance(v, float)}

    result = run_supervised_loop(cfg, accelerator, model, n_examples=len(encoded), collate=collate,
                                 loss_fn=loss_fn, evaluate=evaluate if (cfg.eval_data and cfg.eval_every) else None,
                                 name="guard")
    final = accelerator.unwrap_model(model).eval()
    train_seconds = result.seconds

    # --- calibration on the held-out split ------------------------------------------------
    summary: dict[str, Any] = {"steps": result.steps, "train_seconds": round(train_seconds, 2),
                               "n_train": len(train_records), "n_calibration": len(calib_records),
                               "train": result.final_metrics}
    summary.update(_calibrate_and_evaluate(Guard(final, tokenizer, batch_size=max(cfg.batch_size, 64)), cfg,
                                           calib_records, splits))
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    gcfg.stats = {"steps": result.steps, "n_train": len(train_records), "train_seconds": round(train_seconds, 2),
                  "preset": cfg.preset, "data": cfg.data,
                  "label_counts": dict(Counter("unsafe" if not r.safe else "safe" for r in train_records))}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save(cfg, final, tokenizer, summary, splits)
    if verbose:
        cal = summary.get("calibration", {})
        accelerator.print(f"[guard] saved to {cfg.out}: T={gcfg.temperature:.3f} threshold={gcfg.threshold:.3f} "
                          f"held-out f1={cal.get('f1', float('nan')):.4f} "
                          f"accuracy={cal.get('accuracy', float('nan')):.4f} ({summary['seconds']:.0f} s)")
    return summary


def _train_and_calibration(cfg: GuardTrainConfig, splits: dict[str, list[GuardRecord]]
                           ) -> tuple[list[GuardRecord], list[GuardRecord]]:
    """The training records (at most ``cfg.limit``, sampled) and the held-out calibration ones."""
    train_records = list(splits["train"])
    if cfg.limit is not None:
        train_records = random.Random(cfg.seed).sample(train_records, min(cfg.limit, len(train_records)))
    if not train_records:
        raise ConfigError("no training examples")
    return train_records, list(splits.get("calibration") or [])


def _save(cfg: GuardTrainConfig, model: GuardModel, tokenizer, summary: dict[str, Any],
          splits: dict[str, list[GuardRecord]]) -> None:
    """The guard folder, written atomically: the model, its training summary and config, and
    (with a preset) the held-out splits that ``saferlhf eval guard`` reads back."""
    from saferlhf.io import atomic_files, jsonable

    with atomic_files(cfg.out) as tmp:
        model.save_pretrained(tmp, tokenizer=tokenizer)
        (tmp / "train_summary.json").write_text(json.dumps(jsonable(summary), indent=2))
        (tmp / "guard_train_config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        for name, recs in splits.items():
            if name != "train" and recs and cfg.preset != "none":
                _write_records(tmp / f"{name}.jsonl", recs)


def _class_weights(cfg: GuardTrainConfig, labels: GuardLabels, gcfg: GuardConfig) -> dict[str, Any]:
    """The loss's class weights (``class_weighting: balanced``), undone at prediction time by
    the biases they put in ``gcfg`` (see GuardConfig); ``{}`` without weighting."""
    weights = balanced_weights(labels) if cfg.class_weighting == "balanced" else {}
    if weights:
        sev_w = weights["severity_class_weights"]
        gcfg.severity_bias = [float(-torch.log(w)) if w > 0 else 0.0 for w in sev_w]
        gcfg.category_bias = [float(-torch.log(w)) for w in weights["category_pos_weight"]]
    return weights


def _calibrate_and_evaluate(guard: Guard, cfg: GuardTrainConfig, calib_records: list[GuardRecord],
                            splits: dict[str, list[GuardRecord]]) -> dict[str, Any]:
    """Fit the temperature (and, with ``target_fpr``, the threshold) on the held-out split, in
    ``guard.config``; returns the held-out metrics, the calibration and the other splits' metrics."""
    from saferlhf.eval.guard_eval import evaluate_guard_records, guard_logits

    gcfg = guard.config
    out: dict[str, Any] = {}
    if calib_records:
        z = guard_logits(guard, calib_records)["unsafe"]
        y = np.array([not r.safe for r in calib_records])
        gcfg.temperature = fit_temperature(z, y)
        if cfg.target_fpr is not None and (~y).any():
            p = 1 / (1 + np.exp(-z[~y] / gcfg.temperature))
            gcfg.threshold = threshold_for_fpr(p, cfg.target_fpr)
        out["calibration"] = evaluate_guard_records(guard, calib_records, oracle=True, plots_dir=None)
    out["temperature"] = gcfg.temperature
    out["threshold"] = gcfg.threshold
    for name, recs in splits.items():
        if name not in ("train", "calibration") and recs:
            out[name] = evaluate_guard_records(guard, recs, oracle=True, plots_dir=None, group_by="kind")
    return out


def _write_records(path: Path, records: Sequence[GuardRecord]) -> None:
    """Held-out splits as JSONL that ``saferlhf eval guard`` reads back (``safe`` label field;
    prompt-only records are read as prompts with that label)."""
    with path.open("w") as f:
        for r in records:
            row: dict[str, Any] = {"prompt": r.prompt}
            if r.response is not None:
                row["response"] = r.response
            row.update({"safe": r.safe, "severity": r.severity, "categories": sorted(r.categories),
                        "source": r.source})
            row.update({k: v for k, v in r.metadata.items() if isinstance(v, (str, int, float, bool))})
            f.write(json.dumps(row) + "\n")


def run_guard_train(cfg: GuardTrainConfig) -> dict[str, Any]:
    """CLI runner of ``saferlhf guard train``."""
    from saferlhf.preflight import check_stage

    check_stage(cfg, "guard train")  # models, tokenizer, --out: before any work (saferlhf.preflight)
    return train_guard(cfg)
