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

import contextlib
import json
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saferlhf.data.collate import pad_sequences
from saferlhf.data.templates import Template
from saferlhf.losses import auroc

# Models below this many parameters run a step faster on one intra-op thread: their matrices
# are too small to split, and on a shared machine a second thread that waits for a busy core
# slows every step down many times over (measured on 2 cores under load: 0.46 M parameters,
# 32 sequences x 32 tokens, 62 ms CPU per step on 1 thread vs 360-1000 ms on 2).
SMALL_MODEL_PARAMS = 5_000_000
THREADS_ENV = "SAFERLHF_NUM_THREADS"


def threads_for(model: torch.nn.Module | None, device: torch.device | str | None = None) -> int | None:
    """Intra-op threads for training/scoring ``model`` on the CPU (None: leave torch's choice).

    ``SAFERLHF_NUM_THREADS`` wins; an explicit ``OMP_NUM_THREADS`` is respected (None); a model
    under :data:`SMALL_MODEL_PARAMS` parameters on the CPU gets 1 thread.
    """
    env = os.environ.get(THREADS_ENV)
    if env:
        return max(1, int(env))
    if os.environ.get("OMP_NUM_THREADS") or model is None:
        return None
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else "cpu"
    if torch.device(device).type != "cpu":
        return None
    n = sum(p.numel() for p in model.parameters())
    return 1 if n < SMALL_MODEL_PARAMS else None


@contextlib.contextmanager
def cpu_threads(model: torch.nn.Module | None, device: torch.device | str | None = None) -> Iterator[int]:
    """Run the block with :func:`threads_for` intra-op threads; the previous count comes back after."""
    old = torch.get_num_threads()
    n = threads_for(model, device)
    if n is not None and n != old:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def encode_prompt_responses(tokenizer, template, prompts: Sequence, responses: Sequence[str], *,
                            max_length: int | None = None) -> list[tuple[list[int], int]]:
    """Batched :func:`saferlhf.data.templates.encode_prompt_response`: the same ids, faster.

    Each distinct prompt is rendered and tokenised once, and the texts go to the tokenizer in
    one call (the fast tokenizers encode a list in Rust), so thousands of pairs encode in a
    fraction of a second. The result equals ``[encode_prompt_response(...) for ...]``: the prompt
    and ``template.response_prefix + response`` are tokenised separately (no special tokens),
    EOS is appended and a too-long sequence loses the end of its response.
    """
    from saferlhf.data.templates import encode_prompt, encode_response

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    keys = [p if isinstance(p, str) else json.dumps(p, sort_keys=True) for p in prompts]
    unique: dict[str, int] = {}
    first: list = []
    for k, p in zip(keys, prompts):
        if k not in unique:
            unique[k] = len(first)
            first.append(p)
    try:
        texts = [template.render(tokenizer, p) for p in first]
        prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        resp_ids = tokenizer([template.response_prefix + r for r in responses],
                             add_special_tokens=False)["input_ids"] if responses else []
    except (TypeError, ValueError):  # a tokenizer without batch encoding: one at a time
        prompt_ids = [encode_prompt(tokenizer, template, p) for p in first]
        resp_ids = [encode_response(tokenizer, template, r, add_eos=False) for r in responses]
    eos = tokenizer.eos_token_id
    out = []
    for k, r in zip(keys, resp_ids):
        p = prompt_ids[unique[k]]
        ids = list(p) + list(r) + ([eos] if eos is not None else [])
        if max_length is not None and len(ids) > max_length:
            if len(p) >= max_length:
                raise ValueError(f"prompt is {len(p)} tokens, longer than max_length={max_length}; "
                                 "raise max_length or shorten the prompt")
            ids = ids[:max_length]
        out.append((ids, len(p)))
    return out


@torch.inference_mode()
def score_texts(model, tokenizer, template: Template, prompts: list, responses: list[str], *,
                max_length: int = 256, batch_size: int = 64, device=None) -> np.ndarray:
    """End scores (first score dimension) of prompt + response pairs, in input order.

    Sequences are encoded in one batched call and scored in batches of similar length (less
    padding; a sequence's score does not depend on its batch), on one intra-op thread for a
    small model on the CPU. A too-long sequence loses the end of its response (as in training);
    when the prompt alone is longer than ``max_length``, the sequence is the last
    ``max_length // 2`` prompt tokens and the start of the response (scored with a warning that
    counts them, never an error).
    """
    if not len(prompts):
        return np.zeros(0)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    enc = encode_prompt_responses(tokenizer, template, list(prompts), list(responses), max_length=None)
    seqs, cut_prompts = [], 0
    for ids, plen in enc:
        if len(ids) > max_length:
            if plen < max_length:  # as in training: the end of the response goes
                ids = ids[:max_length]
            else:  # the prompt alone is too long: its start goes, the response keeps half the room
                keep_prompt = max_length // 2
                ids = ids[plen - keep_prompt:plen] + ids[plen:plen + max_length - keep_prompt]
                cut_prompts += 1
        seqs.append(ids)
    if cut_prompts:
        warnings.warn(f"{cut_prompts} of {len(seqs)} sequences have a prompt longer than max_length="
                      f"{max_length}: scored on the end of the prompt and the start of the response "
                      "(raise --max-length)", stacklevel=2)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.empty(len(seqs), dtype=torch.float32)
    with cpu_threads(model, device):
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            seq, mask = pad_sequences([seqs[j] for j in idx], tokenizer.pad_token_id, side="right")
            scores = model(input_ids=seq.to(device), attention_mask=mask.to(device)).end_scores[:, 0]
            out[idx] = scores.float().cpu()
    model.train(was_training)
    return out.numpy()


@torch.inference_mode()
def score_vlm_texts(model, processor, prompts: list, images: list, responses: list[str], *,
                    max_length: int = 256, batch_size: int = 64, device=None,
                    sources: list[str] | None = None) -> np.ndarray:
    """End scores of (prompt, image(s), response) triples with a VLM score model, in input order.

    ``images``: per item a list of decoded images (PIL) or image references (opened here; an
    unreadable one raises :class:`~saferlhf.data.multimodal.ImageLoadError` naming
    ``sources[i]``). ``processor``: the model's :class:`~saferlhf.models.tiny_vlm.VLMProcessor`.
    The response is cut at ``max_length`` as in training (image tokens are never cut)."""
    from saferlhf.data.multimodal import load_image

    if not len(prompts):
        return np.zeros(0)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    cache: dict = {}

    def opened(refs, src):
        out = []
        for r in refs:
            if isinstance(r, str):
                if r not in cache:
                    cache[r] = load_image(r, source=src)
                out.append(cache[r])
            elif hasattr(r, "mode") and hasattr(r, "size"):
                out.append(r)
            else:
                out.append(load_image(r, source=src))
        return out

    out = torch.empty(len(prompts), dtype=torch.float32)
    srcs = sources or [f"item {i}" for i in range(len(prompts))]
    with cpu_threads(model, device):
        for i in range(0, len(prompts), batch_size):
            sl = slice(i, i + batch_size)
            imgs = [opened(list(refs or []), src) for refs, src in zip(images[sl], srcs[sl], strict=True)]
            vb = processor.prepare(list(prompts[sl]), imgs, list(responses[sl]), padding_side="right",
                                   max_length=max_length, sources=srcs[sl])
            scores = model(**{k: v.to(device) for k, v in vb.items()}).end_scores[:, 0]
            out[i:i + len(imgs)] = scores.float().cpu()
    model.train(was_training)
    return out.numpy()


def score_pairs(model, tokenizer, template: Template, pairs, **kw) -> tuple[np.ndarray, np.ndarray]:
    """Scores of both responses of every pair. A VLM processor as ``tokenizer`` scores each
    response with its pair's image(s) (:func:`score_vlm_texts`)."""
    from saferlhf.models.tiny_vlm import VLMProcessor

    prompts = [p.prompt for p in pairs]
    if isinstance(tokenizer, VLMProcessor):
        images = [list(p.images) for p in pairs]
        sources = [p.source or f"pair {i}" for i, p in enumerate(pairs)]
        a = score_vlm_texts(model, tokenizer, prompts, images, [p.response_a for p in pairs], sources=sources, **kw)
        b = score_vlm_texts(model, tokenizer, prompts, images, [p.response_b for p in pairs], sources=sources, **kw)
        return a, b
    a = score_texts(model, tokenizer, template, prompts, [p.response_a for p in pairs], **kw)
    b = score_texts(model, tokenizer, template, prompts, [p.response_b for p in pairs], **kw)
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_eval_score_model(cfg) -> dict[str, Any]:
    """CLI runner: score ``cfg.data`` with ``cfg.model`` and write the summary and plots."""
    from saferlhf.data import load_pairs
    from saferlhf.hub import hub_data_options
    from saferlhf.models.checkpoint import load_template
    from saferlhf.models.score_model import ScoreModel
    from saferlhf.models.tiny_vlm import load_processor

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
