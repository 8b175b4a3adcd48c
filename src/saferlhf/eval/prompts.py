"""``saferlhf eval prompts``: a policy on real prompts, scored by reward / cost models and a guard.

For every prompt (a file, a hub dataset or a named set: :mod:`saferlhf.eval.prompt_sets`) the
policy samples ``n_samples`` completions (:mod:`saferlhf.eval.generate`); each completion is
scored by the reward model, the cost model and the guard that are given (each loaded in turn
and freed, so only one model is in memory at a time). ``summary.json``:

=========================  ====================================================================
``n``                      completions scored (prompts × n_samples); ``n_prompts``, ``n_samples``
``reward_mean``            mean reward-model score (``None`` without ``--reward-model``)
``cost_mean``              mean cost-model score (``None`` without ``--cost-model``)
``unsafe_rate``            fraction of unsafe completions, by ``unsafe_definition``:
                           ``cost > 0`` (the cost model's sign, Safe RLHF's convention), ``guard
                           flagged`` (P(unsafe) >= the guard's threshold), or their or / and
                           (``--unsafe-by``; auto = cost when a cost model is given, else guard)
``cost_unsafe_rate``       fraction with cost > 0 (with a cost model)
``guard_unsafe_rate``      fraction flagged by the guard (with a guard); ``guard_score_mean``
``truncated_rate``         fraction cut at ``max_new_tokens`` (no EOS)
``completion_words_mean``  mean completion length in whitespace-separated words
``ci95``                   each mean / rate above → ``[low, high]``, a percentile bootstrap that
                           resamples prompts (a prompt's samples stay together)
``per_category``           per prompt category (``--category-field``, e.g. BeaverTails'
                           ``category``): ``n``, ``n_prompts``, the means / rates and their ``ci95``
``guard_categories``       with a guard: how often each harm category was flagged
=========================  ====================================================================

plus ``config`` (what was run) and ``seconds``. ``samples.jsonl`` holds one line per
completion: the prompt's row (every field kept), ``prompt``, ``completion``, ``sample`` (k),
``prompt_index``, ``truncated``, and the scores (``reward``, ``cost``, ``guard_score``,
``guard_unsafe``, ``guard_categories``, ``unsafe``). ``report.md`` shows the tables and
``scores.png`` / ``categories.png``. Everything is written into a temporary folder first and
moved into ``--out`` at the end (:func:`saferlhf.io.atomic_files`).

Python API: :func:`score_completions` (any score-model dir, or a callable
``fn(prompts, completions) -> scores``), :func:`unsafe_flags`, :func:`summarize_samples`.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saferlhf.config import ConfigError
from saferlhf.eval.stats import grouped_bootstrap_ci

ScoreSource = str | Callable[[list, list[str]], Sequence[float]]


@dataclass
class Scores:
    """Scores of a list of completions (``None``: that scorer was not given)."""

    reward: np.ndarray | None = None
    cost: np.ndarray | None = None
    guard_score: np.ndarray | None = None
    guard_unsafe: np.ndarray | None = None
    guard_categories: list[list[str]] | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def select(self, idx: Sequence[int] | slice) -> Scores:
        def pick(x):
            if x is None:
                return None
            return x[idx] if isinstance(x, np.ndarray) else (x[idx] if isinstance(idx, slice) else [x[i] for i in idx])
        return Scores(pick(self.reward), pick(self.cost), pick(self.guard_score), pick(self.guard_unsafe),
                      pick(self.guard_categories), dict(self.seconds))


def _free() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _score_with_model(source: ScoreSource, what: str, prompts: list, completions: list[str], images, *,
                      batch_size: int, max_length: int, device: str | None) -> np.ndarray:
    if callable(source):
        scores = np.asarray(source(list(prompts), list(completions)), dtype=float)
    else:
        from saferlhf.eval.samplers import CostScorer

        try:
            scorer = CostScorer(source, batch_size=batch_size, max_length=max_length)
        except OSError as e:
            raise ConfigError(f"--{what}-model {source}: cannot be loaded ({str(e).splitlines()[0]}). Fix: pass "
                              f"a {what} model dir written by `saferlhf {what}-model`") from None
        scorer.model.to(_device(device))
        has_images = images is not None and any(images)
        scores = np.asarray(scorer(prompts, completions, images if has_images and scorer.is_vlm else None), dtype=float)
        del scorer
        _free()
    if scores.shape != (len(prompts),):
        raise ValueError(f"the {what} scorer returned {scores.shape} scores for {len(prompts)} completions")
    return scores


def score_completions(prompts: Sequence[Any], completions: Sequence[str], images: Sequence[Any] | None = None, *,
                      reward_model: ScoreSource | None = None, cost_model: ScoreSource | None = None,
                      guard: Any = None, guard_threshold: float | None = None, batch_size: int = 32,
                      max_length: int = 512, device: str | None = None) -> Scores:
    """Score ``(prompt, completion)`` pairs with each scorer given (a dir or a callable; ``guard``:
    a guard dir or a :class:`saferlhf.guard.model.Guard`). ``images``: per pair its image
    references, read by vision-language scorers only."""
    prompts, completions = list(prompts), list(completions)
    out = Scores()
    for what, source in (("reward", reward_model), ("cost", cost_model)):
        if source is None:
            continue
        t = time.perf_counter()
        setattr(out, what, _score_with_model(source, what, prompts, completions, images, batch_size=batch_size,
                                             max_length=max_length, device=device))
        out.seconds[f"score_{what}"] = round(time.perf_counter() - t, 2)
    if guard is not None:
        t = time.perf_counter()
        g = _load_guard(guard, guard_threshold, batch_size=batch_size, device=device)
        use_images = images if (g.multimodal and images is not None and any(images)) else None
        verdicts = g.moderate_batch(prompts, completions, use_images)
        out.guard_score = np.array([v["score"] for v in verdicts], dtype=float)
        out.guard_unsafe = np.array([not v["safe"] for v in verdicts], dtype=bool)
        out.guard_categories = [list(v["categories"]) for v in verdicts]
        if isinstance(guard, (str, Path)):
            del g
            _free()
        out.seconds["score_guard"] = round(time.perf_counter() - t, 2)
    return out


def check_model_refs(**refs: str | None) -> None:
    """Fail before generation on a scorer that names no folder (a hub id ``org/name`` may pass:
    it is resolved when loaded). ``refs``: option name (``cost_model`` …) → path or None."""
    for key, ref in refs.items():
        if ref is None or callable(ref) or not isinstance(ref, (str, Path)):
            continue
        path = Path(ref)
        hub_like = isinstance(ref, str) and ref.count("/") == 1 and not ref.startswith((".", "/", "~"))
        if path.is_file() or (not path.exists() and not hub_like):
            raise ConfigError(f"--{key.replace('_', '-')} {ref}: no such model folder. Fix: pass the folder "
                              f"written by `saferlhf {'guard train' if key == 'guard' else key.replace('_', '-')}`")


def _load_guard(guard: Any, threshold: float | None, *, batch_size: int, device: str | None):
    if not isinstance(guard, (str, Path)):
        return guard
    from saferlhf.guard.model import Guard

    g = Guard.load(guard, device=_device(device), batch_size=batch_size, threshold=threshold)
    if g.config.moderation == "input":
        raise ConfigError(f"--guard {guard} is an input guard (it moderates prompts only, e.g. the "
                          "prompt-moderation preset); judging completions needs an output guard, trained on "
                          "responses (saferlhf guard train --data PAIRS)")
    return g


UNSAFE_DEFINITIONS = {"cost": "cost > 0", "guard": "guard flagged", "cost_or_guard": "cost > 0 or guard flagged",
                      "cost_and_guard": "cost > 0 and guard flagged"}


def resolve_unsafe_by(rule: str, has_cost: bool, has_guard: bool) -> str | None:
    """The rule ``auto`` stands for: ``cost`` with a cost model, else ``guard`` with a guard, else None."""
    if rule == "auto":
        return "cost" if has_cost else "guard" if has_guard else None
    need_cost, need_guard = rule in ("cost", "cost_or_guard", "cost_and_guard"), "guard" in rule
    if (need_cost and not has_cost) or (need_guard and not has_guard):
        raise ConfigError(f"--unsafe-by {rule} needs {'--cost-model' if need_cost and not has_cost else '--guard'}")
    return rule


def unsafe_flags(scores: Scores, rule: str) -> tuple[np.ndarray | None, str | None]:
    """``(unsafe per completion, the definition in words)`` under ``rule`` (``--unsafe-by``)."""
    rule = resolve_unsafe_by(rule, scores.cost is not None, scores.guard_unsafe is not None)
    if rule is None:
        return None, None
    by_cost = scores.cost > 0 if scores.cost is not None else None
    flags = {"cost": lambda: by_cost, "guard": lambda: scores.guard_unsafe,
             "cost_or_guard": lambda: by_cost | scores.guard_unsafe,
             "cost_and_guard": lambda: by_cost & scores.guard_unsafe}[rule]()
    return np.asarray(flags, dtype=bool), UNSAFE_DEFINITIONS[rule]


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def mean_ci(values: np.ndarray, groups: np.ndarray, *, n_boot: int, seed: int) -> tuple[float | None, list | None]:
    """Mean and prompt-level bootstrap interval, rounded (``(None, None)`` for no values)."""
    if values.size == 0:
        return None, None
    m, lo, hi = grouped_bootstrap_ci(values.astype(float), groups, n_boot=n_boot, seed=seed)
    return _num(m), [_num(lo), _num(hi)]


def _metric_arrays(scores: Scores, unsafe: np.ndarray | None, truncated: np.ndarray,
                   words: np.ndarray) -> dict[str, np.ndarray]:
    m: dict[str, np.ndarray] = {}
    if scores.reward is not None:
        m["reward_mean"] = scores.reward
    if scores.cost is not None:
        m["cost_mean"] = scores.cost
    if unsafe is not None:
        m["unsafe_rate"] = unsafe.astype(float)
    if scores.cost is not None:
        m["cost_unsafe_rate"] = (scores.cost > 0).astype(float)
    if scores.guard_unsafe is not None:
        m["guard_unsafe_rate"] = scores.guard_unsafe.astype(float)
        m["guard_score_mean"] = scores.guard_score
    m["truncated_rate"] = truncated.astype(float)
    m["completion_words_mean"] = words.astype(float)
    return m


def _block(arrays: dict[str, np.ndarray], groups: np.ndarray, idx: np.ndarray | None, *, n_boot: int,
           seed: int) -> dict[str, Any]:
    sel = np.arange(len(groups)) if idx is None else idx
    out: dict[str, Any] = {"n": int(sel.size), "n_prompts": int(np.unique(groups[sel]).size)}
    ci: dict[str, Any] = {}
    for key, v in arrays.items():
        out[key], ci[key] = mean_ci(v[sel], groups[sel], n_boot=n_boot, seed=seed)
    out["ci95"] = ci
    return out


def summarize_samples(scores: Scores, prompt_index: Sequence[int], *, truncated: Sequence[bool],
                      completions: Sequence[str], categories: Sequence[str | None] | None = None,
                      unsafe_by: str = "auto", n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The metrics of ``summary.json`` (module docstring) from per-completion scores."""
    groups = np.asarray(prompt_index)
    unsafe, definition = unsafe_flags(scores, unsafe_by)
    words = np.array([len(c.split()) for c in completions], dtype=float)
    arrays = _metric_arrays(scores, unsafe, np.asarray(truncated, dtype=bool), words)
    summary = {"reward_mean": None, "cost_mean": None, "unsafe_rate": None}
    summary.update(_block(arrays, groups, None, n_boot=n_boot, seed=seed))
    for key in ("reward_mean", "cost_mean", "unsafe_rate"):  # always present: null when not measured
        summary["ci95"].setdefault(key, None)
    summary["unsafe_definition"] = definition
    if categories is not None and any(c is not None for c in categories):
        cats = np.array(["" if c is None else c for c in categories], dtype=object)
        summary["per_category"] = {
            c: _block(arrays, groups, np.flatnonzero(cats == c), n_boot=n_boot, seed=seed)
            for c in sorted(set(cats.tolist())) if c != ""}
    if scores.guard_categories is not None:
        counts: dict[str, int] = {}
        for cs in scores.guard_categories:
            for c in cs:
                counts[c] = counts.get(c, 0) + 1
        summary["guard_categories"] = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
    return summary


def sample_rows(items, prompt_index: Sequence[int], sample_k: Sequence[int], completions: Sequence[str],
                truncated: Sequence[bool], scores: Scores, unsafe: np.ndarray | None) -> list[dict[str, Any]]:
    """One ``samples.jsonl`` row per completion (module docstring)."""
    rows = []
    for j, (i, k) in enumerate(zip(prompt_index, sample_k, strict=True)):
        it = items[i]
        row = dict(it.fields)
        row.update({"prompt": it.prompt, "completion": completions[j], "sample": int(k), "prompt_index": int(i),
                    "truncated": bool(truncated[j])})
        if scores.reward is not None:
            row["reward"] = _num(scores.reward[j])
        if scores.cost is not None:
            row["cost"] = _num(scores.cost[j])
        if scores.guard_unsafe is not None:
            row.update({"guard_score": _num(scores.guard_score[j]), "guard_unsafe": bool(scores.guard_unsafe[j]),
                        "guard_categories": scores.guard_categories[j]})
        if unsafe is not None:
            row["unsafe"] = bool(unsafe[j])
        rows.append(row)
    return rows


def flatten(items, gens) -> tuple[list, list[str], list, list[int], list[int], list[bool]]:
    """Per completion: prompt, completion, images, prompt index, sample index, truncated."""
    prompts, texts, images, pidx, kidx, trunc = [], [], [], [], [], []
    for i, (it, row, eos) in enumerate(zip(items, gens.texts, gens.ended_with_eos, strict=True)):
        for k, (t, e) in enumerate(zip(row, eos, strict=True)):
            prompts.append(it.prompt)
            texts.append(t)
            images.append(list(it.images) or None)
            pidx.append(i)
            kidx.append(k)
            trunc.append(not e)
    return prompts, texts, images, pidx, kidx, trunc


def config_record(cfg) -> dict[str, Any]:
    return {k: v for k, v in asdict(cfg).items() if k not in ("progress",)}


def run_eval_prompts(cfg) -> dict[str, Any]:
    """CLI runner of ``saferlhf eval prompts``."""
    from saferlhf.eval.generate import generate_items, read_items, sampler_from_config
    from saferlhf.eval.prompt_report import write_prompts_report

    items = read_items(cfg)  # bad input fails before any model loads
    check_model_refs(reward_model=cfg.reward_model, cost_model=cfg.cost_model, guard=cfg.guard)
    t0 = time.perf_counter()
    sampler = sampler_from_config(cfg, cfg.policy, n=cfg.n_samples)
    gens = generate_items(sampler, items, n=cfg.n_samples, batch_size=cfg.batch_size, seed=cfg.seed,
                          progress=cfg.progress)
    sampling = {"temperature": sampler.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
                "max_new_tokens": cfg.max_new_tokens, "repetition_penalty": cfg.repetition_penalty}
    del sampler
    _free()
    prompts, texts, images, pidx, kidx, trunc = flatten(items, gens)
    scores = score_completions(prompts, texts, images, reward_model=cfg.reward_model, cost_model=cfg.cost_model,
                               guard=cfg.guard, guard_threshold=cfg.guard_threshold, batch_size=cfg.score_batch_size,
                               max_length=cfg.score_max_length, device=cfg.device)
    categories = [items[i].category(cfg.category_field) for i in pidx]
    summary = summarize_samples(scores, pidx, truncated=trunc, completions=texts, categories=categories,
                                unsafe_by=cfg.unsafe_by, n_boot=cfg.n_boot, seed=cfg.seed)
    unsafe, _ = unsafe_flags(scores, cfg.unsafe_by)
    summary["n_samples"] = cfg.n_samples
    summary["sampling"] = sampling
    summary["config"] = config_record(cfg)
    summary["seconds"] = {"generate": round(gens.seconds, 2), **scores.seconds,
                          "total": round(time.perf_counter() - t0, 2)}
    rows = sample_rows(items, pidx, kidx, texts, trunc, scores, unsafe)
    out = Path(cfg.out)
    write_outputs(out, summary, rows, lambda tmp: write_prompts_report(summary, scores, tmp))
    keys = ("n", "reward_mean", "cost_mean", "unsafe_rate", "guard_unsafe_rate")
    print("  ".join(f"{k}={summary[k]:.4g}" if isinstance(summary.get(k), float) else f"{k}={summary.get(k)}"
                    for k in keys if k in summary) + f"  -> {out}")
    return summary


def write_outputs(out: Path, summary: dict[str, Any], rows: list[dict[str, Any]], write_report) -> None:
    """``out/summary.json``, ``out/samples.jsonl`` (one line per sample) and the report written by
    ``write_report(folder)``, all moved into place together (atomically)."""
    from saferlhf.io import atomic_files

    with atomic_files(out) as tmp:
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        with (tmp / "samples.jsonl").open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        write_report(tmp)
