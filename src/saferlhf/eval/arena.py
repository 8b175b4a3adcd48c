"""``saferlhf eval arena``: policy A against policy B on the same prompts (DESIGN §9).

Both policies sample ``n_samples`` completions per prompt with the same sampling options and
seed; sample k of A meets sample k of B. Every completion is scored by the reward model, the
cost model and the guard that are given (each model loaded once for both policies), and
optionally compared by an LLM judge in both orders (:mod:`saferlhf.eval.judge`).
``summary.json``:

======================  =======================================================================
``policy_a/_b``         each policy's own metrics (as ``eval prompts``: ``reward_mean``,
                        ``cost_mean``, ``unsafe_rate`` … with ``ci95``)
``helpfulness``         A vs B by the reward model (higher wins): ``win``, ``tie``, ``loss``
                        (fractions of pairs), ``counts``, ``ci95`` of each, ``mean_diff``
                        (mean reward of A − B) with its ``mean_diff_ci95``, and
                        ``win_rate_decided`` = win / (win + loss)
``harmlessness``        the same by the cost model (lower cost wins), or, without one, by the
                        guard's P(unsafe) (``by`` says which)
``transition``          the 2×2 safe/unsafe table (Safe RLHF, Fig. 5): ``counts`` and
                        ``fractions`` of ``{a_safe, a_unsafe} × {b_safe, b_unsafe}``, under
                        ``unsafe_definition``
``per_category``        per prompt category: ``n``, win/tie/loss per dimension, each policy's
                        unsafe rate, the transition counts
``judge``               with ``--judge``: per dimension win/tie/loss of A with ``ci95``,
                        ``order_disagreement_rate``, ``invalid_rate``, ``first_position_rate``
======================  =======================================================================

A difference within ``tie_margin`` is a tie. Intervals are percentile bootstraps over prompts
(a prompt's samples are resampled together). ``samples.jsonl`` holds one line per pair (both
completions, every score, the per-dimension winner, the judge's verdicts); ``arena.png`` plots
win/tie/loss, the transition table and per-category unsafe rates; ``report.md`` has the tables.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from saferlhf.eval.prompts import (
    Scores,
    _free,
    _num,
    check_model_refs,
    config_record,
    flatten,
    mean_ci,
    score_completions,
    summarize_samples,
    unsafe_flags,
    write_outputs,
)


def grouped_mean_ci(values: np.ndarray, groups: np.ndarray, *, n_boot: int = 1000, seed: int = 0
                    ) -> tuple[float | None, list | None]:
    """Mean and prompt-level bootstrap interval (see :func:`saferlhf.eval.stats.grouped_bootstrap_ci`)."""
    return mean_ci(np.asarray(values, dtype=float), np.asarray(groups), n_boot=n_boot, seed=seed)


def compare_scores(a: Sequence[float], b: Sequence[float], groups: Sequence[int], *, higher_is_better: bool = True,
                   tie_margin: float = 0.0, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Win / tie / loss of A against B on paired scores.

    A pair is a win for A when A's score beats B's by more than ``tie_margin`` (higher or lower
    is better as told), a loss when B's beats A's by more, a tie otherwise."""
    a, b, g = np.asarray(a, dtype=float), np.asarray(b, dtype=float), np.asarray(groups)
    if a.shape != b.shape or a.shape != g.shape:
        raise ValueError(f"paired scores differ in length: {a.shape}, {b.shape}, groups {g.shape}")
    adv = (a - b) if higher_is_better else (b - a)
    win, loss = adv > tie_margin, adv < -tie_margin
    tie = ~win & ~loss
    out: dict[str, Any] = {}
    ci: dict[str, Any] = {}
    for key, mask in (("win", win), ("tie", tie), ("loss", loss)):
        out[key], ci[key] = grouped_mean_ci(mask, g, n_boot=n_boot, seed=seed)
    out["counts"] = {"win": int(win.sum()), "tie": int(tie.sum()), "loss": int(loss.sum())}
    out["ci95"] = ci
    decided = int(win.sum() + loss.sum())
    out["win_rate_decided"] = _num(win.sum() / decided) if decided else None
    out["mean_diff"], out["mean_diff_ci95"] = grouped_mean_ci(a - b, g, n_boot=n_boot, seed=seed)
    out["n"] = int(a.size)
    return out


def transition_table(unsafe_a: Sequence[bool], unsafe_b: Sequence[bool]) -> dict[str, Any]:
    """Counts and fractions of ``{a_safe, a_unsafe} × {b_safe, b_unsafe}`` over the pairs."""
    ua, ub = np.asarray(unsafe_a, dtype=bool), np.asarray(unsafe_b, dtype=bool)
    if ua.shape != ub.shape:
        raise ValueError(f"{ua.size} verdicts for A but {ub.size} for B")
    n = int(ua.size)
    counts = {f"a_{sa}": {f"b_{sb}": int(((ua == (sa == "unsafe")) & (ub == (sb == "unsafe"))).sum())
                          for sb in ("safe", "unsafe")} for sa in ("safe", "unsafe")}
    fractions = {ka: {kb: (_num(v / n) if n else None) for kb, v in row.items()} for ka, row in counts.items()}
    return {"n": n, "counts": counts, "fractions": fractions}


def _dimensions(sa: Scores, sb: Scores) -> dict[str, tuple[np.ndarray, np.ndarray, bool, str]]:
    dims = {}
    if sa.reward is not None:
        dims["helpfulness"] = (sa.reward, sb.reward, True, "reward model (higher wins)")
    if sa.cost is not None:
        dims["harmlessness"] = (sa.cost, sb.cost, False, "cost model (lower wins)")
    elif sa.guard_score is not None:
        dims["harmlessness"] = (sa.guard_score, sb.guard_score, False, "guard P(unsafe) (lower wins)")
    return dims


def arena_summary(scores_a: Scores, scores_b: Scores, prompt_index: Sequence[int], *,
                  truncated_a: Sequence[bool], truncated_b: Sequence[bool], completions_a: Sequence[str],
                  completions_b: Sequence[str], categories: Sequence[str | None] | None = None,
                  unsafe_by: str = "auto", tie_margin: float = 0.0, judge: dict[str, Any] | None = None,
                  n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The metrics of ``summary.json`` (module docstring) from both policies' per-pair scores."""
    g = np.asarray(prompt_index)
    out: dict[str, Any] = {"n": int(g.size), "n_prompts": int(np.unique(g).size)}
    kw = {"n_boot": n_boot, "seed": seed, "unsafe_by": unsafe_by}
    out["policy_a"] = summarize_samples(scores_a, g, truncated=truncated_a, completions=completions_a, **kw)
    out["policy_b"] = summarize_samples(scores_b, g, truncated=truncated_b, completions=completions_b, **kw)
    dims = _dimensions(scores_a, scores_b)
    for name, (a, b, higher, by) in dims.items():
        out[name] = {"by": by, **compare_scores(a, b, g, higher_is_better=higher, tie_margin=tie_margin,
                                                n_boot=n_boot, seed=seed)}
    ua, definition = unsafe_flags(scores_a, unsafe_by)
    ub, _ = unsafe_flags(scores_b, unsafe_by)
    out["unsafe_definition"] = definition
    if ua is not None:
        out["transition"] = transition_table(ua, ub)
    if categories is not None and any(c is not None for c in categories):
        cats = np.array(["" if c is None else c for c in categories], dtype=object)
        per: dict[str, Any] = {}
        for c in sorted(set(cats.tolist()) - {""}):
            idx = np.flatnonzero(cats == c)
            block: dict[str, Any] = {"n": int(idx.size), "n_prompts": int(np.unique(g[idx]).size)}
            for name, (a, b, higher, _) in dims.items():
                r = compare_scores(a[idx], b[idx], g[idx], higher_is_better=higher, tie_margin=tie_margin, n_boot=0)
                block[name] = {k: r[k] for k in ("win", "tie", "loss", "counts")}
            if ua is not None:
                block["unsafe_rate_a"] = _num(ua[idx].mean())
                block["unsafe_rate_b"] = _num(ub[idx].mean())
                block["transition"] = transition_table(ua[idx], ub[idx])["counts"]
            if judge:
                for dim, rows in judge.get("rows", {}).items():
                    winners = np.array([rows[i]["winner"] for i in idx], dtype=object)
                    block[f"judge_{dim}"] = {k: _num(float((winners == w).mean()))
                                             for k, w in (("win", "a"), ("tie", "tie"), ("loss", "b"))}
            per[c] = block
        out["per_category"] = per
    if judge:
        from saferlhf.eval.judge import summarize_judgements

        out["judge"] = {"judge": judge["name"], "kind": judge["kind"]}
        for dim, rows in judge["rows"].items():
            out["judge"][dim] = summarize_judgements(rows, g, n_boot=n_boot, seed=seed)
    return out


def arena_rows(items, prompt_index, sample_k, texts_a, texts_b, trunc_a, trunc_b, sa: Scores, sb: Scores,
               unsafe_by: str, tie_margin: float, judge_rows: dict[str, list] | None) -> list[dict[str, Any]]:
    """One ``samples.jsonl`` line per pair (module docstring)."""
    ua, _ = unsafe_flags(sa, unsafe_by)
    ub, _ = unsafe_flags(sb, unsafe_by)
    dims = _dimensions(sa, sb)
    rows = []
    for j, (i, k) in enumerate(zip(prompt_index, sample_k, strict=True)):
        it = items[i]
        row = dict(it.fields)
        row.update({"prompt": it.prompt, "sample": int(k), "prompt_index": int(i), "completion_a": texts_a[j],
                    "completion_b": texts_b[j], "truncated_a": bool(trunc_a[j]), "truncated_b": bool(trunc_b[j])})
        for who, s, u in (("a", sa, ua), ("b", sb, ub)):
            if s.reward is not None:
                row[f"reward_{who}"] = _num(s.reward[j])
            if s.cost is not None:
                row[f"cost_{who}"] = _num(s.cost[j])
            if s.guard_unsafe is not None:
                row[f"guard_score_{who}"] = _num(s.guard_score[j])
                row[f"guard_unsafe_{who}"] = bool(s.guard_unsafe[j])
            if u is not None:
                row[f"unsafe_{who}"] = bool(u[j])
        for name, (a, b, higher, _) in dims.items():
            adv = (a[j] - b[j]) if higher else (b[j] - a[j])
            row[name] = "a" if adv > tie_margin else "b" if adv < -tie_margin else "tie"
        for dim, jr in (judge_rows or {}).items():
            row[f"judge_{dim}"] = {k: jr[j][k] for k in ("a_first", "b_first", "winner")}
        rows.append(row)
    return rows


def run_eval_arena(cfg) -> dict[str, Any]:
    """CLI runner of ``saferlhf eval arena``."""
    from saferlhf.eval.generate import generate_items, read_items, sampler_from_config
    from saferlhf.eval.prompt_report import write_arena_report

    items = read_items(cfg)  # bad input fails before any model loads
    check_model_refs(reward_model=cfg.reward_model, cost_model=cfg.cost_model, guard=cfg.guard)
    judge = None
    if cfg.judge is not None:
        from saferlhf.eval.judge import check_judge_spec, is_endpoint, load_judge

        check_judge_spec(cfg.judge)
        if is_endpoint(cfg.judge):  # reach the endpoint before spending minutes on generation
            judge = load_judge(cfg.judge, model=cfg.judge_model, timeout=cfg.judge_timeout,
                               max_tokens=cfg.judge_max_tokens, concurrency=cfg.judge_concurrency,
                               api_key_env=cfg.judge_api_key_env)
    t0 = time.perf_counter()
    gens = {}
    sampling = {}
    for who, policy in (("a", cfg.policy_a), ("b", cfg.policy_b)):
        sampler = sampler_from_config(cfg, policy, n=cfg.n_samples)
        gens[who] = generate_items(sampler, items, n=cfg.n_samples, batch_size=cfg.batch_size, seed=cfg.seed,
                                   progress=cfg.progress, desc=f"generate {who.upper()}")
        sampling[who] = {"temperature": sampler.temperature}
        del sampler
        _free()
    prompts, texts_a, images, pidx, kidx, trunc_a = flatten(items, gens["a"])
    _, texts_b, _, _, _, trunc_b = flatten(items, gens["b"])
    both = score_completions(prompts + prompts, texts_a + texts_b, images + images, reward_model=cfg.reward_model,
                             cost_model=cfg.cost_model, guard=cfg.guard, guard_threshold=cfg.guard_threshold,
                             batch_size=cfg.score_batch_size, max_length=cfg.score_max_length, device=cfg.device)
    n = len(prompts)
    sa, sb = both.select(slice(0, n)), both.select(slice(n, 2 * n))
    judge_info = None
    seconds = {"generate_a": round(gens["a"].seconds, 2), "generate_b": round(gens["b"].seconds, 2), **both.seconds}
    if cfg.judge is not None:
        from saferlhf.eval.judge import judge_both_orders, load_judge

        t = time.perf_counter()
        if judge is None:
            judge = load_judge(cfg.judge, device=cfg.device, dtype=cfg.dtype)
        judge_info = {"name": judge.name, "kind": judge.kind,
                      "rows": {dim: judge_both_orders(judge, dim, prompts, texts_a, texts_b, progress=cfg.progress)
                               for dim in cfg.judge_dimensions}}
        seconds["judge"] = round(time.perf_counter() - t, 2)
        del judge
        _free()
    categories = [items[i].category(cfg.category_field) for i in pidx]
    summary = arena_summary(sa, sb, pidx, truncated_a=trunc_a, truncated_b=trunc_b, completions_a=texts_a,
                            completions_b=texts_b, categories=categories, unsafe_by=cfg.unsafe_by,
                            tie_margin=cfg.tie_margin, judge=judge_info, n_boot=cfg.n_boot, seed=cfg.seed)
    summary["n_samples"] = cfg.n_samples
    summary["sampling"] = sampling
    summary["config"] = config_record(cfg)
    seconds["total"] = round(time.perf_counter() - t0, 2)
    summary["seconds"] = seconds
    rows = arena_rows(items, pidx, kidx, texts_a, texts_b, trunc_a, trunc_b, sa, sb, cfg.unsafe_by, cfg.tie_margin,
                      judge_info["rows"] if judge_info else None)
    out = Path(cfg.out)
    write_outputs(out, summary, rows, lambda tmp: write_arena_report(summary, tmp))
    line = [f"n={summary['n']}"]
    for dim in ("helpfulness", "harmlessness"):
        if dim in summary:
            d = summary[dim]
            line.append(f"{dim}: win {d['win']:.3f} tie {d['tie']:.3f} loss {d['loss']:.3f}")
    print("  ".join(line) + f"  -> {out}")
    return summary
