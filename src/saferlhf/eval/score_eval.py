"""Offline evaluation of reward and cost models on preference pairs.

``saferlhf eval score-model --model DIR --data FILE --out DIR`` writes ``summary.json``:

* ``n`` pairs scored; ``accuracy``: ranking accuracy against the data's labels
  (``better`` for a reward model, ``safer`` for a cost model: P(c_unsafer > c_safer));
* cost models: ``sign_accuracy`` (sign(c) > 0 ↔ labelled unsafe, over every response with a
  label) and ``auroc`` of c for unsafe vs safe;
* ``oracle_agreement`` when the records carry the world's oracle fields: the fraction of
  pairs, among those the oracle does not tie, whose score order matches the oracle's
  (helpfulness for a reward model, harm for a cost model); cost models also get
  ``oracle_sign_accuracy`` (c > 0 ↔ oracle harm > 0);
* ``per_severity`` and ``per_category`` breakdowns, and PNG histograms of the scores of safe
  vs unsafe responses.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saferlhf.data.templates import Template
from saferlhf.losses import auroc
from saferlhf.processing import as_processor
from saferlhf.runtime import cpu_threads


@torch.inference_mode()
def score_texts(model, tokenizer, template: Template | None, prompts: list, responses: list[str], *,
                images: list | None = None, sources: list[str] | None = None, max_length: int = 256,
                batch_size: int = 64, device=None) -> np.ndarray:
    """End scores (first score dimension) of prompt (+ image(s)) + response, in input order.

    ``tokenizer``: the model's tokenizer or processor (its ``scoring_batches`` encodes, cuts at
    ``max_length`` and batches: see :meth:`saferlhf.processing.TextProcessor.scoring_batches`);
    ``template`` overrides a text processor's. ``images``: per item a list of images or image
    references (read by a VLM processor; a text model ignores them). On one intra-op thread
    for a small model on the CPU.
    """
    if not len(prompts):
        return np.zeros(0)
    processor = as_processor(tokenizer, template)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.empty(len(prompts), dtype=torch.float32)
    with cpu_threads(model, device):
        for rows, inputs in processor.scoring_batches(list(prompts), list(responses), images=images,
                                                      max_length=max_length, batch_size=batch_size,
                                                      sources=sources):
            scores = model(**{k: v.to(device) for k, v in inputs.items()}).end_scores[:, 0]
            out[rows] = scores.float().cpu()
    model.train(was_training)
    return out.numpy()


def score_vlm_texts(model, processor, prompts: list, images: list, responses: list[str], **kw) -> np.ndarray:
    """:func:`score_texts` with the images in the argument order of earlier releases."""
    return score_texts(model, processor, None, prompts, responses, images=images, **kw)


def score_pairs(model, tokenizer, template: Template, pairs, **kw) -> tuple[np.ndarray, np.ndarray]:
    """Scores of both responses of every pair (each with its pair's image(s) when the processor
    reads images)."""
    prompts = [p.prompt for p in pairs]
    images = [list(p.images) for p in pairs]
    sources = [p.source or f"pair {i}" for i, p in enumerate(pairs)]
    a = score_texts(model, tokenizer, template, prompts, [p.response_a for p in pairs], images=images,
                    sources=sources, **kw)
    b = score_texts(model, tokenizer, template, prompts, [p.response_b for p in pairs], images=images,
                    sources=sources, **kw)
    return a, b


def _oracle(pair, name: str, which: str) -> float | None:
    v = pair.metadata.get(f"oracle_{name}_{0 if which == 'a' else 1}")
    return None if v is None else float(v)


def _rank_acc(sa: np.ndarray, sb: np.ndarray, prefer_a: np.ndarray) -> float:
    """P(preferred response scored higher); ties count as wrong."""
    if len(prefer_a) == 0:
        return float("nan")
    hi = np.where(prefer_a, sa, sb)
    lo = np.where(prefer_a, sb, sa)
    return float(np.mean(hi > lo))


def summarize_scores(score_type: str, pairs, sa: np.ndarray, sb: np.ndarray) -> dict[str, Any]:
    """The summary dict of the module docstring (reward: higher is better; cost: higher is less safe)."""
    is_cost = score_type == "cost"
    label = "safer" if is_cost else "better"
    idx = [i for i, p in enumerate(pairs) if getattr(p, label) is not None]
    # For a cost model the "preferred" (higher-scored) response is the less safe one.
    prefer_a = np.array([(getattr(pairs[i], label) == "a") != is_cost for i in idx], dtype=bool)
    summary: dict[str, Any] = {"score_type": score_type, "n": len(pairs), "n_labelled": len(idx),
                               "accuracy": _rank_acc(sa[idx], sb[idx], prefer_a)}

    # Per-response view: score, safety label, severity, categories.
    scores, unsafe, sev, cats, oracle_harm = [], [], [], [], []
    for i, p in enumerate(pairs):
        for which, s in (("a", sa[i]), ("b", sb[i])):
            scores.append(float(s))
            safe = getattr(p, f"safe_{which}")
            unsafe.append(None if safe is None else (not safe))
            sev.append(getattr(p, f"severity_{which}"))
            cats.append(getattr(p, f"categories_{which}"))
            oracle_harm.append(_oracle(p, "harm", which))
    scores_np = np.array(scores)
    known = np.array([u is not None for u in unsafe])
    labels = np.array([bool(u) for u in unsafe])
    if is_cost and known.any():
        summary["sign_accuracy"] = float(np.mean((scores_np[known] > 0) == labels[known]))
        summary["auroc"] = auroc(torch.tensor(scores_np[known]), torch.tensor(labels[known]))
        summary["mean_cost_safe"] = float(scores_np[known & ~labels].mean()) if (known & ~labels).any() else None
        summary["mean_cost_unsafe"] = float(scores_np[known & labels].mean()) if (known & labels).any() else None

    # Agreement with the world's oracles (only where the data carry them).
    oracle = "harm" if is_cost else "helpfulness"
    agree, total = 0, 0
    for i, p in enumerate(pairs):
        oa, ob = _oracle(p, oracle, "a"), _oracle(p, oracle, "b")
        if oa is None or ob is None or oa == ob:
            continue
        total += 1
        agree += int((sa[i] > sb[i]) == (oa > ob))
    if total:
        summary["oracle_agreement"] = agree / total
        summary["n_oracle_pairs"] = total
    if is_cost and any(h is not None for h in oracle_harm):
        m = np.array([h is not None for h in oracle_harm])
        oh = np.array([h if h is not None else 0.0 for h in oracle_harm])
        summary["oracle_sign_accuracy"] = float(np.mean((scores_np[m] > 0) == (oh[m] > 0)))
        if len(set((oh[m] > 0).tolist())) == 2:
            summary["oracle_auroc"] = auroc(torch.tensor(scores_np[m]), torch.tensor(oh[m] > 0))

    # Breakdowns per severity level and per harm category (per response).
    per_sev: dict[str, dict[str, Any]] = {}
    groups: dict[int, list[int]] = defaultdict(list)
    for k, s in enumerate(sev):
        if s is not None:
            groups[int(s)].append(k)
    for level, ks in sorted(groups.items()):
        entry: dict[str, Any] = {"n": len(ks), "mean_score": float(scores_np[ks].mean())}
        if is_cost:
            entry["flagged_rate"] = float(np.mean(scores_np[ks] > 0))
        per_sev[str(level)] = entry
    summary["per_severity"] = per_sev
    per_cat: dict[str, dict[str, Any]] = {}
    cat_groups: dict[str, list[int]] = defaultdict(list)
    for k, cs in enumerate(cats):
        for c in cs:
            cat_groups[c].append(k)
    for c, ks in sorted(cat_groups.items()):
        entry = {"n": len(ks), "mean_score": float(scores_np[ks].mean())}
        if is_cost:
            entry["recall"] = float(np.mean(scores_np[ks] > 0))
        per_cat[c] = entry
    summary["per_category"] = per_cat
    return _clean(summary)


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def plot_score_histogram(pairs, sa: np.ndarray, sb: np.ndarray, path: Path, *, title: str) -> Path | None:
    """Histogram of the scores of safe vs unsafe responses (by label)."""
    from saferlhf.eval.report import pyplot, save_figure

    plt = pyplot()
    safe, unsafe, unknown = [], [], []
    for i, p in enumerate(pairs):
        for which, s in (("a", sa[i]), ("b", sb[i])):
            lab = getattr(p, f"safe_{which}")
            (unknown if lab is None else safe if lab else unsafe).append(float(s))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.histogram_bin_edges(np.concatenate([sa, sb]), bins=40)
    for vals, name, color in ((safe, "safe", "tab:green"), (unsafe, "unsafe", "tab:red"), (unknown, "no label", "grey")):
        if vals:
            ax.hist(vals, bins=bins, alpha=0.55, label=f"{name} (n={len(vals)})", color=color)
    ax.axvline(0.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("score")
    ax.set_ylabel("responses")
    ax.set_title(title)
    ax.legend()
    return save_figure(plt, fig, path)


def run_eval_score_model(cfg) -> dict[str, Any]:
    """CLI runner: score ``cfg.data`` with ``cfg.model`` and write the summary and plots."""
    from saferlhf.data import load_pairs
    from saferlhf.hub import hub_data_options
    from saferlhf.models.checkpoint import load_template
    from saferlhf.models.score_model import ScoreModel
    from saferlhf.processing import load_processor

    model = ScoreModel.from_pretrained(cfg.model, normalize=None if cfg.normalize == "saved" else cfg.normalize == "on")
    tokenizer = load_processor(cfg.tokenizer or cfg.model)
    template = model.template or load_template(cfg.model, tokenizer)
    pairs = load_pairs(cfg.data, format=cfg.data_format, on_bad_record=cfg.on_bad_record,
                       **hub_data_options(cfg)).records
    if not pairs:
        raise ValueError(f"--data {cfg.data}: no usable pairs")
    sa, sb = score_pairs(model, tokenizer, template, pairs, max_length=cfg.max_length, batch_size=cfg.batch_size)
    summary = summarize_scores(model.score_type, pairs, sa, sb)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_score_histogram(pairs, sa, sb, out / f"{model.score_type}_histogram.png",
                         title=f"{model.score_type} scores by safety label")
    with (out / "scores.jsonl").open("w") as fh:
        for p, a, b in zip(pairs, sa, sb):
            fh.write(json.dumps({"source": p.source, "score_a": float(a), "score_b": float(b)}) + "\n")
    keys = ("n", "accuracy", "sign_accuracy", "auroc", "oracle_agreement")
    print("  ".join(f"{k}={summary[k]:.4g}" if isinstance(summary.get(k), float) else f"{k}={summary.get(k)}"
                    for k in keys if k in summary))
    return summary
