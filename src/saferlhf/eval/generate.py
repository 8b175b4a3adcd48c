"""``saferlhf generate``: a policy's completions for a prompts file (DESIGN §9).

One output line per prompt, in input order: the prompt's row with every field kept, plus
``completion`` (the first sample) and, with ``--n`` > 1, ``completions`` (all of them). The
prompt is rendered with the template saved with the policy (else the tokenizer's chat
template, else the Beaver fallback: :func:`saferlhf.models.checkpoint.load_template`), exactly
as in training and RL. Vision-language policies read each row's ``image`` / ``images`` through
their processor (:class:`saferlhf.eval.samplers.PolicySampler`, the one place that turns
prompt images into model inputs for evaluation).

Batching: prompts are sorted by length and generated ``batch_size`` at a time (less left
padding; the output order is restored). Each batch is sampled with its own seed drawn from
``seed`` and the batch's position, so a run replays exactly with the same ``seed`` and
``batch_size`` (another ``batch_size`` gives other samples from the same distribution).
The output is written to a temporary file and renamed: it is either complete or absent.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saferlhf.config import ConfigError
from saferlhf.eval.prompt_sets import PromptItem, read_prompts


@dataclass
class Generations:
    """Completions per prompt (``texts[i]``: the ``n`` samples of prompt ``i``) and whether each
    ended with EOS (False: cut at ``max_new_tokens``)."""

    texts: list[list[str]]
    ended_with_eos: list[list[bool]]
    seconds: float = 0.0

    @property
    def truncation_note(self) -> str:
        cut = sum(not e for row in self.ended_with_eos for e in row)
        total = sum(len(row) for row in self.ended_with_eos)
        return f"{cut} of {total} cut at max_new_tokens"


def load_sampler(policy: str, *, temperature: float | None = None, top_p: float = 1.0, top_k: int = 0,
                 max_new_tokens: int = 128, repetition_penalty: float = 1.0, batch_size: int = 16, n: int = 1,
                 seed: int = 0, device: str | None = None, dtype: str = "auto"):
    """A :class:`~saferlhf.eval.samplers.PolicySampler` for a policy dir or hub id, with a clear
    error when the model cannot be found (a hub id needs the model in the local cache, or
    ``HF_HUB_OFFLINE=0``)."""
    import torch

    from saferlhf.eval.samplers import PolicySampler

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return PolicySampler(policy, temperature=temperature, top_p=top_p, top_k=top_k or None,
                             max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                             batch_size=batch_size * n, seed=seed, device=dev, dtype=dtype)
    except OSError as e:  # transformers: not a folder with a config, nor a cached hub id
        raise ConfigError(
            f"policy {policy!r} cannot be loaded: {str(e).splitlines()[0]}. Fix: pass a save_pretrained policy "
            "folder, or a hub id already in the local HF cache (hub downloads are off; set HF_HUB_OFFLINE=0 "
            "to allow them)") from None


def _length_key(item: PromptItem) -> int:
    p = item.prompt
    return len(p) if isinstance(p, str) else sum(len(m.get("content", "")) for m in p)


def generate_items(sampler, items: Sequence[PromptItem], *, n: int = 1, batch_size: int = 16, seed: int = 0,
                   progress: bool = True, desc: str = "generate") -> Generations:
    """``n`` completions for every item (see the module docstring for batching and seeds)."""
    from tqdm.auto import tqdm

    if n < 1 or batch_size < 1:
        raise ConfigError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    items = list(items)
    with_images = sum(1 for it in items if it.images)
    if with_images and not sampler.is_vlm:
        warnings.warn(f"{with_images} prompt(s) carry images but the policy is a text-only model: the images "
                      "are ignored", stacklevel=2)
    order = sorted(range(len(items)), key=lambda i: _length_key(items[i]))
    texts: list[list[str] | None] = [None] * len(items)
    eos: list[list[bool] | None] = [None] * len(items)
    start = time.perf_counter()
    bar = tqdm(total=len(items), desc=desc, unit="prompt", disable=not progress, file=sys.stderr)
    for b, s in enumerate(range(0, len(items), batch_size)):
        idx = order[s:s + batch_size]
        chunk = [items[i] for i in idx]
        images = [it.images or None for it in chunk] if sampler.is_vlm else None
        out_texts, out_eos = sampler.generate([it.prompt for it in chunk], images, [it.source for it in chunk],
                                              n=n, seed=seed * 1_000_003 + b)
        for j, i in enumerate(idx):
            texts[i], eos[i] = out_texts[j], out_eos[j]
        bar.update(len(idx))
    bar.close()
    return Generations(texts, eos, seconds=time.perf_counter() - start)  # type: ignore[arg-type]


def write_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write rows as JSON Lines atomically (temporary file, then rename)."""
    from saferlhf.io import atomic_file

    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return Path(path)


def output_rows(items: Sequence[PromptItem], gens: Generations, n: int) -> list[dict[str, Any]]:
    """Each prompt's row (every field kept) with ``completion`` (+ ``completions`` when n > 1)."""
    rows = []
    for it, texts in zip(items, gens.texts, strict=True):
        row = dict(it.fields)
        row["completion"] = texts[0]
        if n > 1:
            row["completions"] = list(texts)
        rows.append(row)
    return rows


def read_items(cfg) -> list[PromptItem]:
    """The prompts of a generate/eval config (file, hub id or named set; subsets)."""
    return read_prompts(cfg.prompts, prompt_field=cfg.prompt_field, limit=cfg.limit, per_category=cfg.per_category,
                        category_field=cfg.category_field, split=cfg.prompts_split, config=cfg.prompts_config,
                        revision=cfg.prompts_revision, image_root=cfg.image_root)


def sampler_from_config(cfg, policy: str, *, n: int = 1):
    return load_sampler(policy, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                        max_new_tokens=cfg.max_new_tokens, repetition_penalty=cfg.repetition_penalty,
                        batch_size=cfg.batch_size, n=n, seed=cfg.seed, device=cfg.device, dtype=cfg.dtype)


def run_generate(cfg) -> int:
    """CLI runner of ``saferlhf generate``."""
    items = read_items(cfg)  # bad input fails before the model loads
    sampler = sampler_from_config(cfg, cfg.model, n=cfg.n)
    gens = generate_items(sampler, items, n=cfg.n, batch_size=cfg.batch_size, seed=cfg.seed, progress=cfg.progress)
    write_jsonl(cfg.out, output_rows(items, gens, cfg.n))
    print(f"generated {len(items)} x {cfg.n} completion(s) in {gens.seconds:.1f} s ({gens.truncation_note}) "
          f"-> {cfg.out}")
    return 0
