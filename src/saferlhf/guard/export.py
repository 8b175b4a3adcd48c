"""A guard's unsafe score as a standard HF ``*ForSequenceClassification`` (``saferlhf export``).

The exported quantity. The guard's unsafe head gives the raw logit ``z = w·h + b`` at the last
real token ``h``; ``saferlhf guard moderate`` reports ``score = σ(z / T)`` (T fitted on held-out
data) and flags a text when ``score >= threshold``. The exported model's single logit is the
**calibrated log-odds of unsafe**::

    logit = z / T = (w / T)·h + b / T        P(unsafe) = σ(logit) = the guard's ``score``
    flagged  ⇔  logit >= log(threshold / (1 − threshold))

so ``transformers.pipeline("text-classification")`` (which applies a sigmoid when
``num_labels == 1``) returns the guard's own score, labelled ``unsafe``.

The fold is the score-model export's (:mod:`saferlhf.models.export`): ``w / T`` becomes the
bias-free ``score`` layer; the constant ``b / T`` goes into the final norm's bias when it has
one (LayerNorm backbones), is 0 for a guard trained with ``--unsafe-bias false``, and cannot be
folded on an RMSNorm backbone (Llama, Qwen2, SmolLM2 …). There ``--bias auto`` / ``exact``
refuse (σ(logit) would no longer be P(unsafe)) and name the fixes; ``--bias drop`` writes it
with the constant recorded (``saferlhf.json`` ``score_offset``, the card: the flag threshold on
the logit moves by it).

Refused outright, because no HF sequence-classification class computes the same function:
guards that pool ``mean`` or ``first`` (sentence encoders such as MiniLM: HF's encoder classes
read a pooler over [CLS]), image + text guards, guards without an unsafe head. The other heads
(severity, categories) are not exported; the card lists them so a reader knows they exist.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from saferlhf.config import ConfigError

GUARD_EXPORT_KIND = "guard_unsafe_export"
METRIC_KEYS = ("n", "accuracy", "precision", "recall", "f1", "fpr", "auroc", "ece")


def guard_unsafe_fold(guard) -> dict[str, Any]:
    """``{"weight", "offset", "temperature", "threshold", "logit_threshold"}``: the calibrated
    unsafe log-odds is ``weight·h + offset`` and a text is flagged when it is ``>= logit_threshold``."""
    cfg = guard.config
    w, b = guard.model.unsafe_head()
    t = float(cfg.temperature)
    thr = float(cfg.threshold)
    return {"weight": (w.double() / t).to(w.dtype), "offset": b / t, "temperature": t, "threshold": thr,
            "logit_threshold": math.log(thr / (1.0 - thr))}


def _refuse_unexportable(guard, where: str) -> None:
    cfg = guard.config
    if guard.multimodal:
        raise ConfigError(f"{where}: an image + text guard; transformers has no *ForSequenceClassification "
                          "that takes its images, so its unsafe score cannot be exported")
    if not cfg.heads.get("unsafe", True):
        raise ConfigError(f"{where}: this guard was trained without an unsafe head; nothing to export")
    if cfg.pooling != "last":
        raise ConfigError(
            f"{where}: the guard pools '{cfg.pooling}' (guard_config.json pooling), but HF "
            "*ForSequenceClassification models read the last non-pad token (decoders) or a pooler over "
            "[CLS] (encoders such as BERT/MiniLM), so no exported model computes this guard's score. "
            "Fix: train the guard on a decoder backbone with last-token pooling (`saferlhf guard train "
            "--model tiny|DECODER_DIR --pooling last --unsafe-bias false`)")


def _guard_bias_decision(policy: str, offset: float, norm_has_bias: bool, where: str) -> str:
    """``none`` | ``norm`` | ``drop`` for the constant ``b / T``; raises when refused."""
    if abs(offset) <= 1e-12:
        return "none"
    if norm_has_bias:
        return "norm"
    if policy == "drop":
        return "drop"
    raise ConfigError(
        f"{where}: the guard's unsafe head has a bias (b/T = {offset:.6g}) and the backbone's final norm has "
        "none (RMSNorm), while HF *ForSequenceClassification heads have no bias: no exported weights can "
        "add the constant, so the logit would not be the guard's log-odds. Fix: retrain the guard with "
        "`saferlhf guard train ... --unsafe-bias false` (exact on every backbone), or pass `--bias drop` to "
        f"export logit = log-odds − {offset:.6g} (the flag threshold on the logit is then recorded in "
        "saferlhf.json and the model card)")


@torch.no_grad()
def _reference(guard, pad_id: int) -> dict[str, Any]:
    """The check texts encoded as the guard encodes them, padded on each side with ``pad_id``,
    and the guard's own calibrated unsafe log-odds of them (``Guard.logits`` / T)."""
    from saferlhf.data.collate import pad_sequences
    from saferlhf.models.export import _CHECK_TEXTS

    prompts = [p for p, _ in _CHECK_TEXTS]
    responses = [r for _, r in _CHECK_TEXTS]
    seqs = [guard.encoder.encode(p, r)["input_ids"] for p, r in _CHECK_TEXTS]
    z = guard.logits(prompts, responses)["unsafe"] / guard.config.temperature
    scores = torch.as_tensor(z, dtype=torch.float64)
    batches = {side: pad_sequences(seqs, pad_id, side=side) for side in ("right", "left")}
    return {"batches": batches, "scores": {"right": scores, "left": scores}}


def export_guard_unsafe(guard, out: str | os.PathLike, *, bias: str = "auto", tolerance: float = 1e-4,
                        source: str | None = None) -> dict[str, Any]:
    """Write ``guard``'s calibrated unsafe log-odds (module docstring) to ``out`` as the
    backbone's ``*ForSequenceClassification``; the folder is checked (clean reload, logits
    equal to ``Guard.logits(...)["unsafe"] / T`` on right- and, for rotary backbones,
    left-padded batches) before it is moved into place. Returns a report."""
    from saferlhf.io import atomic_dir
    from saferlhf.models.export import (
        EXPORT_META,
        _sequence_classification_on,
        check_export,
        final_norm,
    )

    where = f"--model {source}" if source else "the guard"
    _refuse_unexportable(guard, where)
    if bias not in ("auto", "exact", "drop"):
        raise ConfigError(f"bias must be auto|exact|drop, got {bias!r}")
    fold = guard_unsafe_fold(guard)
    backbone = guard.model.backbone
    norm = final_norm(backbone)
    norm_bias = getattr(norm, "bias", None) if norm is not None else None
    decision = _guard_bias_decision(bias, fold["offset"], isinstance(norm_bias, torch.Tensor), where)
    dropped = fold["offset"] if decision == "drop" else 0.0
    w = fold["weight"].unsqueeze(0)
    seq, tok = _sequence_classification_on(backbone, w, guard.tokenizer)
    if type(seq).__name__.endswith("ForSequenceClassification") and not hasattr(seq, "score"):
        raise ConfigError(f"{where}: {type(seq).__name__} is an encoder classifier (pooler + classifier), "
                          "not a last-token one; the guard's last-token score cannot be exported to it")
    seq.config.id2label, seq.config.label2id = {0: "unsafe"}, {"unsafe": 0}
    cfg = guard.config
    as_cost = cfg.moderation == "output" and cfg.encoding == "template"
    meta = {
        "kind": GUARD_EXPORT_KIND,
        # read as a cost model by saferlhf (--cost-model DIR2): log-odds > 0 ⇔ P(unsafe) > 0.5. Only
        # an output guard on the template encoding sees what a cost model sees (prompt + response + EOS)
        "score_type": "cost" if as_cost else None,
        "quantity": "calibrated unsafe log-odds z/T (P(unsafe) = sigmoid(logit))",
        "template": guard.encoder.template.to_dict(),  # what the guard renders with (saved or the tokenizer's)
        "moderation": cfg.moderation,
        "encoding": cfg.encoding,
        "max_length": cfg.max_length,
        "temperature": fold["temperature"],
        "threshold": fold["threshold"],
        "logit_threshold": fold["logit_threshold"] - dropped,
        "score_offset": dropped,
        "fold": {"scale": 1.0 / fold["temperature"], "constant": fold["offset"], "constant_goes_to": decision},
        "not_exported": {"severity": bool(cfg.heads.get("severity")), "categories": list(cfg.categories)},
        "source": source,
        "pad_token": tok.pad_token,
    }
    reference = _reference(guard, tok.pad_token_id)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    saved_bias = norm_bias.detach().clone() if decision == "norm" else None
    report: dict[str, Any] = dict(meta)
    try:
        if decision == "norm":
            with torch.no_grad():
                wd = w[0].double()
                norm_bias.add_((fold["offset"] * wd / (wd ** 2).sum()).to(norm_bias.dtype))
        with atomic_dir(out) as tmp:
            seq.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            (tmp / EXPORT_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
            report["check"] = check_export(tmp, reference, offset=dropped, tolerance=tolerance,
                                           dtype=guard.model.head.weight.dtype)
            (tmp / "README.md").write_text(guard_model_card(meta, report["check"], guard))
    finally:
        if saved_bias is not None:
            with torch.no_grad():
                norm_bias.copy_(saved_bias)
    return report


def guard_model_card(meta: dict[str, Any], check: dict[str, Any], guard) -> str:
    """README.md of an exported guard unsafe score."""
    cfg = guard.config
    thr, lt, off = meta["threshold"], meta["logit_threshold"], meta["score_offset"]
    others = (["severity head"] if meta["not_exported"]["severity"] else []) + \
        ([f"category head ({len(cfg.categories)} categories)"] if cfg.categories else [])
    tmpl = meta["template"] or {}
    what = "prompt" if cfg.moderation == "input" else "response (to its prompt)"
    shifted = f" + {off:.6g}" if off else ""
    meaning = (
        f"**Meaning**: the single logit is the guard's calibrated log-odds that the {what} is *unsafe*: "
        f"`logit = z / T` with `z` the unsafe head's raw logit and `T = {meta['temperature']:.6g}` the "
        "temperature fitted on held-out data" + (f", minus a constant {off:.6g} (see Offset)" if off else "") + ". "
        f"`P(unsafe) = sigmoid(logit{shifted})` is the `score` of `saferlhf guard moderate`. "
        f"**Flagged unsafe** when `P(unsafe) >= {thr:.6g}` (the guard's threshold), i.e. when `logit >= {lt:.6g}`"
        + ("" if off else " (= log(t / (1 − t)))") + "."
    )
    pipeline = ("`transformers.pipeline('text-classification', model=DIR)` applies a sigmoid to a single logit, "
                "so its `score` (label `unsafe`) is P(unsafe)"
                + (f" only after adding {off:.6g} to the logit." if off else "."))
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-classification",
        "tags: [saferlhf, safety, moderation, guard]", "---", "",
        "# Guard unsafe score (exported by saferlhf)", "", meaning, "", pipeline, "",
    ]
    if off:
        lines += [(f"**Offset**: the unsafe head's constant {off:.6g} could not be folded into the weights "
                  "(bias-free final norm and score layer; exported with `--bias drop`): guard log-odds = "
                  f"logit + {off:.6g}."), ""]
    build, code = _card_input(cfg, tmpl)
    if meta["score_type"]:
        as_cost = (f"In saferlhf the folder also reads as a cost model (`--cost-model DIR`): cost = logit, "
                   f"cost > 0 ⇔ P(unsafe) > {'0.5' if not off else f'σ({off:.6g})'}"
                   + (f"; the guard's own threshold is {thr:.6g}." if abs(thr - 0.5) > 1e-12
                      else ", the guard's threshold."))
    else:
        as_cost = ("saferlhf does not read this folder as a cost model: the guard scores "
                   + ("prompts alone" if cfg.moderation == "input" else "a pair encoding")
                   + ", not prompt + response + EOS.")
    lines += [
        "## Usage", "",
        (f"Input {build}. The logit is read at the last non-pad token (`pad_token_id` = "
        f"{meta.get('pad_token')!r}, not EOS). Padding: {check['padding']}."), "",
        "```python", "import torch",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained(DIR); model = AutoModelForSequenceClassification.from_pretrained(DIR)",
        code,
        "logit = model(**enc).logits[0, 0]",
        f"flagged = bool(logit >= {lt:.6g})",
        "```", "",
        as_cost, "",
        "## Export", "",
        (f"* guard: moderation `{cfg.moderation}`, encoding `{cfg.encoding}`, pooling `{cfg.pooling}`, "
        f"taxonomy `{cfg.taxonomy}`"),
        (f"* exported: the unsafe head only (scale 1/T, constant {meta['fold']['constant']:.6g} -> "
        f"{meta['fold']['constant_goes_to']}); not exported: {', '.join(others) or 'none'}"),
        (f"* check: max |logit − guard log-odds| = {check['max_abs_diff']:.3g} on {check['n_texts']} texts, "
         f"{', '.join(check['by_padding'])} padded"),
        f"* source: `{meta.get('source')}`", "",
    ]
    lines += _card_data_and_metrics(cfg, meta)
    return "\n".join(lines)


def _card_input(cfg, tmpl: dict[str, Any]) -> tuple[str, str]:
    """How to build the exported model's input text: a sentence and a code snippet."""
    if cfg.encoding == "pair":
        build = ("text: the tokenizer's own pair encoding `tok(prompt" + (")`" if cfg.moderation == "input"
                                                                           else ", response)`")
                 + f", truncated to {cfg.max_length} tokens (`longest_first`)")
        code = "enc = tok(prompt" + (", truncation=True" if cfg.moderation == "input" else ", response, truncation=True") \
            + f", max_length={cfg.max_length}, return_tensors='pt')"
    else:
        rendered = ("the tokenizer's chat template (user turn, then the generation prompt)"
                    if tmpl.get("kind") == "chat" else f"`{tmpl.get('fmt', '')}`")
        if cfg.moderation == "input":
            build = f"text: the prompt rendered with {rendered}, nothing after it"
            tail = ""
        else:
            build = (f"text: the prompt rendered with {rendered}, then {tmpl.get('response_prefix', ' ')!r} + "
                     "response + EOS (prompt and response tokenized separately, as saferlhf does)")
            tail = " + tok(prefix + response, add_special_tokens=False).input_ids + [tok.eos_token_id]"
        render = ("tok.apply_chat_template([{'role': 'user', 'content': prompt}], tokenize=False, "
                  "add_generation_prompt=True)" if tmpl.get("kind") == "chat" else
                  f"{tmpl.get('fmt', '{prompt}')!r}.format(prompt=prompt)")
        code = "\n".join([
            f"prefix = {tmpl.get('response_prefix', ' ')!r}",
            f"ids = tok({render}, add_special_tokens=False).input_ids{tail}",
            "enc = {'input_ids': torch.tensor([ids])}",
        ])
        build += (f"; the guard keeps at most {cfg.max_length} tokens (a long response keeps its beginning, "
                  "at least half, and the prompt its end)")
    return build, code


def _card_data_and_metrics(cfg, meta: dict[str, Any]) -> list[str]:
    """The card's Data and Metrics sections (when the guard folder records them)."""
    lines: list[str] = []
    stats = cfg.stats or {}
    data = stats.get("data") or (f"preset {stats['preset']}" if stats.get("preset") not in (None, "none") else None)
    if data:
        counts = stats.get("label_counts") or {}
        lines += ["## Data", "", f"* trained on `{data}`" + (f" ({stats.get('n_train')} examples: "
                  + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ")" if counts else ""), ""]
    held_out = _held_out_metrics(meta.get("source"))
    if held_out:
        lines += ["## Metrics (held-out splits of the training run, at the guard's threshold)", "",
                  "| split | " + " | ".join(METRIC_KEYS) + " |", "|---" * (len(METRIC_KEYS) + 1) + "|"]
        for split, vals in held_out.items():
            lines.append(f"| {split} | " + " | ".join(f"{vals[k]:.4g}" if isinstance(vals.get(k), (int, float))
                                                      else "–" for k in METRIC_KEYS) + " |")
        lines.append("")
    return lines


def _held_out_metrics(folder: str | None) -> dict[str, dict[str, Any]]:
    """``{split: {metric: value}}`` of a guard folder's ``train_summary.json`` (held-out splits)."""
    path = Path(folder) / "train_summary.json" if folder else None
    if path is None or not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return {k: v for k, v in summary.items()
            if k != "train" and isinstance(v, dict) and any(m in v for m in METRIC_KEYS)}


def run_export(cfg) -> int:
    """``saferlhf export``: a guard folder exports its unsafe log-odds (:func:`run_guard_export`),
    anything else goes to :func:`saferlhf.models.export.run_export` (reward / cost models)."""
    if is_guard_dir(cfg.model):
        return run_guard_export(cfg)
    from saferlhf.models.export import run_export as run_score_export

    return run_score_export(cfg)


def is_guard_dir(path: str | os.PathLike) -> bool:
    """A saferlhf guard folder (``guard_config.json``), local or a cached hub id."""
    from saferlhf.guard.model import GUARD_CONFIG_NAME
    from saferlhf.hub import resolve_model

    try:
        return (Path(resolve_model(path)) / GUARD_CONFIG_NAME).is_file()
    except FileNotFoundError:
        return False


def run_guard_export(cfg) -> int:
    """``saferlhf export`` of a guard folder: its calibrated unsafe log-odds (saferlhf.guard.export)."""
    from saferlhf.config import ConfigError
    from saferlhf.guard.model import Guard
    from saferlhf.hub import resolve_model

    if cfg.normalize != "saved":
        raise ConfigError(f"--model {cfg.model} is a guard: --normalize applies to reward / cost models only "
                          "(the guard's logit is divided by its temperature T, always)")
    guard = Guard.load(resolve_model(cfg.model))
    report = export_guard_unsafe(guard, cfg.out, bias=cfg.bias, tolerance=cfg.tolerance, source=str(cfg.model))
    print(f"exported the guard's unsafe log-odds to {cfg.out}: max |logit - guard log-odds| = "
          f"{report['check']['max_abs_diff']:.3g}; flagged when logit >= {report['logit_threshold']:.6g} "
          f"(P(unsafe) >= {report['threshold']:.6g})"
          + (f"; constant {report['score_offset']:.6g} dropped" if report["score_offset"] else ""))
    return 0
