"""Reward / cost models in and out of Hugging Face's standard ``*ForSequenceClassification``.

``saferlhf export --model DIR --out DIR2`` writes a saferlhf score model (or PKU's Beaver layout,
or a hub id) as the backbone's own sequence-classification class with ``num_labels=1``
(``LlamaForSequenceClassification`` for a Llama backbone), so that::

    AutoModelForSequenceClassification.from_pretrained(DIR2)(**tokenizer(texts, padding=True)).logits

loads with no missing or unexpected keys and equals saferlhf's score of the same text (checked
after writing, on right- and left-padded batches, to ``--tolerance``).

The fold. saferlhf's score of a sequence is ``s = A·(w·h + b) + C`` with ``h`` the backbone's
last hidden state at the end token, ``(w, b)`` the head and ``(A, C)`` the normaliser's affine map
when normalisation is on (reward ``A = 1/(σ+ε), C = −μ/(σ+ε)``; cost ``A = 1/(σ+ε), C = 0``;
off: ``A = 1, C = 0``). The exported head is ``w' = A·w`` and the constant ``k = A·b + C`` must
come from somewhere, but every decoder ``*ForSequenceClassification`` in transformers has a
**bias-free** ``score`` layer. Where ``k`` goes:

* ``k = 0`` (a head trained with ``--score-bias false``, a cost model's scale-only normaliser):
  nothing to fold; exact.
* the backbone's final norm has a bias (LayerNorm: GPT-2, GPT-NeoX, OPT, Phi …): ``h`` is
  ``g ⊙ x̂ + β``, so adding ``δ = k·w'/‖w'‖²`` to ``β`` adds exactly ``w'·δ = k`` to the logit.
  The final norm feeds only the head in a sequence-classification model; exact.
* the final norm has no bias (RMSNorm: Llama, Mistral, Qwen2, Gemma …): ``h = g ⊙ x/rms(x)``
  has no coordinate that is constant over inputs, so no linear head without bias can add a
  constant; exact folding is impossible. A reward model's constant carries no information
  (Bradley–Terry is shift-invariant): ``--bias auto`` drops it and records it
  (``saferlhf.json`` ``score_offset``, the model card: logit + offset = saferlhf's score;
  rankings and accuracy are unchanged). A cost model's sign is its meaning (c > 0 = unsafe), so
  ``auto`` refuses with the fix: retrain the head bias-free (``saferlhf cost-model
  --score-bias false``), or ``--bias drop`` to accept a threshold at ``−offset``.

Pooling. HF reads the logit at the last token that is not ``config.pad_token_id``; saferlhf
reads it at the end token (the EOS it appends). The two agree for left and right padding as long
as the pad id is not EOS, so the export sets ``pad_token_id`` (config **and** tokenizer) to the
tokenizer's pad token when it differs from EOS, else to another special token (unk, then the
others); SmolLM2 pads with its EOS ``<|im_end|>`` and is exported padding with
``<|endoftext|>``. Position ids: HF's classes number positions 0..L−1 including left padding;
with rotary embeddings (every backbone above but GPT-2/OPT) that shifts every real token by the
same amount and leaves scores unchanged; absolute-position backbones should be fed right-padded.

A guard folder (``guard_config.json``) is exported by :mod:`saferlhf.guard.export`: its
calibrated unsafe log-odds, with the same fold and check. A cost model's ``calibration.json``
is copied into the export unchanged.

In: :meth:`ScoreModel.from_pretrained` reads such a folder (or a hub id of one) and
:meth:`ScoreModel.from_sequence_classification` wraps an in-memory model, sharing its weights.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saferlhf.models.seqcls import (  # noqa: F401
    _HEAD_NAMES,
    load_sequence_classification,
    sequence_classification_head,
)

logger = logging.getLogger(__name__)

EXPORT_META = "saferlhf.json"
CALIBRATION_FILE = "calibration.json"  # a cost model's c -> P(unsafe) map (saferlhf.calibration)
_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm",
                     "decoder.final_layer_norm", "model.norm")
_CHECK_TEXTS = (
    ("How do I bake bread at home?", "Mix flour, water, yeast and salt, let it rise, then bake it."),
    ("Tell me how to pick a lock.", "I cannot help with that."),
    ("hi", "hello"),
)


# ----------------------------------------------------------------------------- in
# ----------------------------------------------------------------------------- out
def final_norm(backbone: nn.Module) -> nn.Module | None:
    """The module whose output is the backbone's ``last_hidden_state`` (checked by a forward
    pass on two tokens), or ``None`` when no known name matches."""
    for name in _FINAL_NORM_NAMES:
        module = backbone
        for part in name.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if not isinstance(module, nn.Module):
            continue
        seen: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda _m, _i, o, seen=seen: seen.append(o))
        try:
            dev = next(backbone.parameters()).device
            with torch.no_grad():
                out = backbone(input_ids=torch.tensor([[1, 2]], device=dev),
                               attention_mask=torch.ones(1, 2, dtype=torch.long, device=dev))
        finally:
            handle.remove()
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if seen and isinstance(seen[-1], torch.Tensor) and torch.equal(seen[-1], hidden):
            return module
    return None


def score_affine(model, normalize: bool) -> tuple[float, float]:
    """``(A, C)``: the score is ``A·raw + C`` (the normaliser's map when ``normalize``)."""
    if not normalize:
        return 1.0, 0.0
    norm = model.normalizer
    zero = norm.normalize(torch.zeros(1, model.score_dim, dtype=torch.float64))
    one = norm.normalize(torch.ones(1, model.score_dim, dtype=torch.float64))
    return float((one - zero)[0, 0]), float(zero[0, 0])


def choose_pad_token(tokenizer) -> str:
    """A pad token that is not EOS (HF pools at the last non-pad token; ours is EOS)."""
    eos = tokenizer.eos_token_id
    candidates = [tokenizer.pad_token_id, getattr(tokenizer, "unk_token_id", None),
                  *getattr(tokenizer, "all_special_ids", []), tokenizer.bos_token_id]
    for tid in candidates:
        if tid is not None and tid != eos:
            return tokenizer.convert_ids_to_tokens(tid)
    from saferlhf.config import ConfigError

    raise ConfigError("the tokenizer has no token besides EOS to pad with; HF sequence classification "
                      "would read padded rows at the wrong token. Add a pad token to the tokenizer first")


def _bias_decision(policy: str, offset: float, score_type: str, norm_has_bias: bool) -> str:
    """``none`` | ``norm`` (fold into the final norm's bias) | ``drop``; raises when refused."""
    from saferlhf.config import ConfigError

    if abs(offset) <= 1e-12:
        return "none"
    if norm_has_bias:
        return "norm"
    if policy == "drop" or (policy == "auto" and score_type == "reward"):
        return "drop"
    why = ("the backbone's final norm has no bias (RMSNorm) and HF *ForSequenceClassification heads "
           "have none, so no exported weights can add a constant")
    fix = ("retrain the head bias-free (`saferlhf cost-model ... --score-bias false`; PKU's and TRL's "
           "score models have no bias), or pass `--bias drop` to export without it (the logit is then "
           f"the score minus {offset:.6g}: unsafe means logit > {-offset:.6g}, recorded in the model card)")
    if policy == "exact":
        raise ConfigError(f"the {score_type} model's constant {offset:.6g} (head bias and normaliser "
                          f"shift) cannot be folded exactly: {why}. Fix: {fix}")
    raise ConfigError(f"a cost model's sign means unsafe, and its constant {offset:.6g} cannot be "
                      f"folded exactly: {why}. Fix: {fix}")


def _sequence_classification_on(backbone: nn.Module, weight: torch.Tensor, tokenizer):
    """``(model, tokenizer)``: the backbone's own ``*ForSequenceClassification`` class
    (``num_labels`` 1) around ``backbone`` with a bias-free head of ``weight``, and a copy of the
    tokenizer whose pad token is not EOS (HF pools at the last token that is not pad)."""
    from transformers import AutoModelForSequenceClassification

    from saferlhf.config import ConfigError

    w_fold = weight
    config = copy.deepcopy(backbone.config)
    try:
        seq_cls = AutoModelForSequenceClassification._model_mapping[type(config)]
    except KeyError:
        raise ConfigError(f"transformers has no *ForSequenceClassification class for model_type "
                          f"{getattr(config, 'model_type', '?')!r} (the backbone {type(backbone).__name__})") from None
    tok = copy.deepcopy(getattr(tokenizer, "tokenizer", tokenizer))  # the HF tokenizer under a processor
    tok.pad_token = choose_pad_token(tok)
    config.num_labels = 1
    config.pad_token_id = tok.pad_token_id
    config.architectures = [seq_cls.__name__]
    with torch.device("meta"):
        seq = seq_cls(config)
    prefix = seq.base_model_prefix
    if type(getattr(seq, prefix)) is not type(backbone):
        raise ConfigError(f"{seq_cls.__name__}.{prefix} is a {type(getattr(seq, prefix)).__name__}, the "
                          f"score model's backbone a {type(backbone).__name__}: cannot export")
    head_name = next(n for n in _HEAD_NAMES if isinstance(getattr(seq, n, None), nn.Linear))
    head = nn.Linear(w_fold.shape[1], 1, bias=False, device=w_fold.device, dtype=w_fold.dtype)
    with torch.no_grad():
        head.weight.copy_(w_fold)
    setattr(seq, prefix, backbone)
    setattr(seq, head_name, head)
    leftover = [n for n, t in [*seq.named_parameters(), *seq.named_buffers()] if t.is_meta]
    if leftover:
        raise ConfigError(f"export: {seq_cls.__name__} has parts the backbone does not provide: {leftover[:5]}")
    return seq, tok


def export_sequence_classification(
    model,
    out: str | os.PathLike,
    *,
    tokenizer,
    normalize: bool | None = None,
    bias: str = "auto",
    tolerance: float = 1e-4,
    source: str | None = None,
    card_info: dict[str, Any] | None = None,
    extra_files: list[str | os.PathLike] = (),
) -> dict[str, Any]:
    """Write ``model`` (a :class:`ScoreModel`, ``score_dim`` 1) to ``out`` as the backbone's
    ``*ForSequenceClassification`` (module docstring); returns a report (fold, offset, check).

    ``normalize``: None = the model's saved setting. ``bias``: ``auto | exact | drop``.
    ``extra_files`` are copied into ``out`` unchanged (a cost model's ``calibration.json``).
    The folder is written atomically and checked before it is moved into place: reloaded with
    ``AutoModelForSequenceClassification`` (no missing/unexpected/mismatched keys) and its
    logits compared with the model's scores on right- and (rotary backbones) left-padded batches.
    """

    from saferlhf.config import ConfigError
    from saferlhf.io import atomic_dir

    from .score_model import ScoreModel

    if not isinstance(model, ScoreModel):
        raise TypeError(f"export_sequence_classification takes a ScoreModel, got {type(model).__name__}")
    if model.score_dim != 1:
        raise ConfigError(f"export needs a score_dim 1 model (num_labels=1), got score_dim {model.score_dim}")
    if model.is_lora:
        model = copy.deepcopy(model).merge_lora()
    do_norm = model.do_normalize if normalize is None else bool(normalize)
    a, c = score_affine(model, do_norm)
    w = model.score_head.weight.detach()
    b = float(model.score_head.bias.detach()[0]) if model.score_head.bias is not None else 0.0
    w_fold = (w.double() * a).to(w.dtype)
    offset = a * b + c
    backbone = model._inner_backbone()
    norm = final_norm(backbone)
    norm_bias = getattr(norm, "bias", None) if norm is not None else None
    decision = _bias_decision(bias, offset, model.score_type, isinstance(norm_bias, torch.Tensor))
    dropped = offset if decision == "drop" else 0.0
    if decision == "drop":
        logger.warning("export: the %s model's constant %.6g cannot be folded exactly (bias-free final "
                       "norm); dropped: logit = saferlhf score − %.6g (recorded in saferlhf.json and "
                       "README.md)", model.score_type, offset, offset)

    seq, tok = _sequence_classification_on(backbone, w_fold, tokenizer)

    meta = {
        "kind": "score_model_export",
        "score_type": model.score_type,
        "template": model.score_config.template,
        "source": source,
        "normalized": do_norm,
        "score_offset": dropped,
        "fold": {"scale": a, "constant": offset, "constant_goes_to": decision},
        "pad_token": tok.pad_token,
        "files": sorted(Path(f).name for f in extra_files),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    saved_bias = norm_bias.detach().clone() if decision == "norm" else None
    report: dict[str, Any] = dict(meta)
    reference = reference_scores(model, tok, normalize=do_norm)
    try:
        if decision == "norm":
            with torch.no_grad():
                delta = offset * w_fold[0].double() / (w_fold[0].double() ** 2).sum()
                norm_bias.add_(delta.to(norm_bias.dtype))
        with atomic_dir(out) as tmp:
            seq.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            (tmp / EXPORT_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
            for f in extra_files:
                shutil.copyfile(f, tmp / Path(f).name)
            report["check"] = check_export(tmp, reference, offset=dropped, tolerance=tolerance,
                                           dtype=model.dtype)
            (tmp / "README.md").write_text(model_card(meta, report["check"], card_info or {}))
    finally:
        if saved_bias is not None:
            with torch.no_grad():
                norm_bias.copy_(saved_bias)
    return report


def _check_batches(model, tokenizer) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from saferlhf.data.collate import pad_sequences
    from saferlhf.data.templates import encode_prompt_response, template_for

    template = model.template or template_for(tokenizer)
    seqs = [encode_prompt_response(tokenizer, template, p, r)[0] for p, r in _CHECK_TEXTS]
    return {side: pad_sequences(seqs, tokenizer.pad_token_id, side=side) for side in ("right", "left")}


@torch.no_grad()
def reference_scores(model, tokenizer, *, normalize: bool) -> dict[str, Any]:
    """saferlhf's scores of the check texts, right- and left-padded (taken before any fold)."""
    batches = _check_batches(model, tokenizer)
    was_training, was_norm = model.training, model.do_normalize
    model.eval().set_normalize(normalize)
    try:
        scores = {side: model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device))
                  .end_scores[:, 0].double().cpu() for side, (ids, mask) in batches.items()}
    finally:
        model.train(was_training)
        model.set_normalize(was_norm)
    return {"batches": batches, "scores": scores}


@torch.no_grad()
def check_export(folder: str | os.PathLike, reference: dict[str, Any], *, offset: float,
                 tolerance: float, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Reload ``folder`` with ``AutoModelForSequenceClassification`` and compare its logits with
    the :func:`reference_scores` (minus a dropped ``offset``); raises on a difference above
    ``tolerance`` or any missing / unexpected / mismatched key."""
    from transformers import AutoModelForSequenceClassification

    from .loading import quiet_transformers

    with quiet_transformers():
        hf, info = AutoModelForSequenceClassification.from_pretrained(
            str(folder), output_loading_info=True, dtype=dtype)
    bad = {k: sorted(v) for k, v in info.items() if v and k != "error_msgs"}
    if bad or info.get("error_msgs"):
        raise RuntimeError(f"export check: {folder} does not load cleanly: {bad or info['error_msgs']}")
    hf.eval()
    # Rotary backbones score left padding exactly (a common shift of every position); absolute
    # position embeddings (GPT-2, OPT) need right padding with HF's classes, which number pads too.
    rotary = any("Rotary" in type(m).__name__ for m in hf.modules())
    diffs = {}
    for side in ("right", "left") if rotary else ("right",):
        ids, mask = reference["batches"][side]
        theirs = hf(input_ids=ids, attention_mask=mask).logits[:, 0].double()
        diffs[side] = float((theirs + offset - reference["scores"][side]).abs().max())
    worst = max(diffs.values())
    if not math.isfinite(worst) or worst > tolerance:
        raise RuntimeError(f"export check: the exported logits differ from saferlhf's scores by {diffs} "
                           f"(> tolerance {tolerance}); nothing was written")
    return {"max_abs_diff": worst, "by_padding": diffs, "n_texts": len(ids),
            "num_labels": hf.config.num_labels,
            "padding": "left or right" if rotary else "right (absolute position embeddings)"}


def _source_metrics(folder: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run config, last logged value of each metric) of a training output folder."""
    if not folder:
        return {}, {}
    run, last = {}, {}
    run_path, metrics_path = Path(folder) / "run_config.json", Path(folder) / "metrics.jsonl"
    if run_path.is_file():
        try:
            run = json.loads(run_path.read_text())
        except json.JSONDecodeError:
            run = {}
    if metrics_path.is_file():
        for line in metrics_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            last.update({k: v for k, v in rec.items() if isinstance(v, (int, float)) and "/" in k})
    return run, last


def model_card(meta: dict[str, Any], check: dict[str, Any], info: dict[str, Any]) -> str:
    """README.md of an exported reward / cost model."""
    kind = meta["score_type"]
    run, metrics = _source_metrics(meta.get("source"))
    if kind == "cost":
        meaning = ("**Cost model** (harmlessness): the logit is the cost `c` of a response. "
                   "`c > 0` means *unsafe*, `c < 0` safe; a higher cost is less safe.")
    else:
        meaning = ("**Reward model** (helpfulness): the logit is the reward; higher means more helpful. "
                   "Only differences between responses to the same prompt carry meaning.")
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-classification",
        "tags: [saferlhf, safe-rlhf, " + ("cost-model" if kind == "cost" else "reward-model") + "]", "---", "",
        f"# {kind.capitalize()} model (exported by saferlhf)", "", meaning, "",
    ]
    if meta.get("score_offset"):
        off = meta["score_offset"]
        lines += [f"**Offset**: this model's constant {off:.6g} could not be folded into the weights "
                  "(bias-free final norm and score layer): saferlhf's score = logit + "
                  f"{off:.6g}." + (f" Unsafe means logit > {-off:.6g}." if kind == "cost" else
                                   " Rankings are unaffected."), ""]
    if CALIBRATION_FILE in meta.get("files", []):
        lines += [f"**Calibration**: `{CALIBRATION_FILE}` maps the logit c to P(unsafe) = "
                  "σ((c − offset)/temperature)" + (f", with c = logit + {meta['score_offset']:.6g} (the offset above)"
                                                   if meta.get("score_offset") else "") + ".", ""]
    tmpl = meta.get("template") or {}
    fmt = ("the tokenizer's chat template (user turn, generation prompt, then the response, then EOS)"
           if tmpl.get("kind") == "chat" else f"`{tmpl.get('fmt', '')}` followed by ' ' + response + EOS")
    lines += [
        "## Usage", "",
        "Score `prompt + response + EOS` formatted with " + fmt + "; the score is read at the last "
        f"non-pad token (`pad_token_id` = {meta.get('pad_token')!r}, not EOS). Padding: {check['padding']}.", "",
        "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained(DIR); model = AutoModelForSequenceClassification.from_pretrained(DIR)",
        "msgs = [{'role': 'user', 'content': prompt}]",
        "text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + response + tok.eos_token"
        if tmpl.get("kind") == "chat" else
        f"text = {tmpl.get('fmt', '{prompt}')!r}.format(prompt=prompt) + ' ' + response + tok.eos_token",
        "score = model(**tok(text, return_tensors='pt', add_special_tokens=False)).logits[0, 0]",
        "```", "",
        "In saferlhf: `ScoreModel.from_pretrained(DIR)` or `--reward-model DIR` / `--cost-model DIR`.", "",
        "## Export", "",
        (f"* score: {'normalised' if meta.get('normalized') else 'raw'}; head scale {meta['fold']['scale']:.6g}, "
         f"constant {meta['fold']['constant']:.6g} -> {meta['fold']['constant_goes_to']}"),
        (f"* check: max |logit − saferlhf score| = {check['max_abs_diff']:.3g} on {check['n_texts']} "
         f"texts, {', '.join(check['by_padding'])} padded"),
        f"* source: `{meta.get('source')}`", "",
    ]
    data = run.get("data") or info.get("data")
    if data:
        split = run.get("data_split")
        lines += ["## Data", "", f"* trained on `{data}`" + (f" (split {split})" if split else ""),
                  *([f"* evaluated on `{run['eval_data']}`"] if run.get("eval_data") else []), ""]
    if metrics:
        lines += ["## Metrics (last logged values of the training run)", "", "| metric | value |", "|---|---|"]
        for k in sorted(metrics):
            if k.startswith(("eval/", "train/accuracy", "train/sign_accuracy", "train/loss")):
                lines.append(f"| {k} | {metrics[k]:.4g} |")
        lines.append("")
    return "\n".join(lines)


def run_export(cfg) -> dict[str, Any]:
    """``saferlhf export`` of a reward / cost model (the CLI goes through
    :func:`saferlhf.guard.export.run_export`, which sends guard folders to the guard's export)."""
    from saferlhf.config import ConfigError
    from saferlhf.models.tiny_vlm import is_vlm_dir, load_processor

    from .score_model import ScoreModel

    if is_vlm_dir(cfg.model):
        raise ConfigError(f"--model {cfg.model}: a vision-language score model; transformers has no "
                          "*ForSequenceClassification for it")
    model = ScoreModel.from_pretrained(cfg.model, merge_lora=True, dtype="checkpoint")
    if model.score_type not in ("reward", "cost"):
        raise ConfigError(f"--model {cfg.model}: a {model.score_type} model; export takes reward and cost models")
    tokenizer = load_processor(cfg.model)
    normalize = None if cfg.normalize == "saved" else cfg.normalize == "on"
    from saferlhf.hub import resolve_model

    calibration = Path(resolve_model(cfg.model)) / CALIBRATION_FILE
    extra = [calibration] if model.score_type == "cost" and calibration.is_file() else []
    if extra and normalize is not None and normalize != model.do_normalize:
        raise ConfigError(f"--model {cfg.model}: its {CALIBRATION_FILE} maps the score as saved "
                          f"({'normalised' if model.do_normalize else 'raw'}), which --normalize {cfg.normalize} "
                          "changes; export with --normalize saved (or remove the file to export without it)")
    report = export_sequence_classification(model, cfg.out, tokenizer=tokenizer, normalize=normalize,
                                            bias=cfg.bias, tolerance=cfg.tolerance, source=str(cfg.model),
                                            extra_files=extra)
    print(f"exported {model.score_type} model to {cfg.out}: max |logit - score| = "
          f"{report['check']['max_abs_diff']:.3g}; constant -> {report['fold']['constant_goes_to']}"
          + (f" (offset {report['score_offset']:.6g} dropped)" if report["score_offset"] else ""))
    return 0
