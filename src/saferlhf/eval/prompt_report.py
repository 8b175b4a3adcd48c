"""``report.md`` and PNG plots of ``eval prompts`` and ``eval arena`` (the demo report's style).

* ``eval prompts``: ``scores.png`` (histograms of the reward and cost scores, the cost
  model's safe/unsafe boundary at 0; the guard's P(unsafe)) and ``categories.png`` (unsafe
  rate per prompt category with 95 % intervals);
* ``eval arena``: ``arena.png`` (win / tie / loss of A per dimension, the 2×2 safe/unsafe
  transition table, per-category unsafe rates of A and B).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from saferlhf.eval.report import fmt_value, metric_cell
from saferlhf.eval.report import pyplot as _plt


def _fmt(v: Any) -> str:
    return fmt_value(v, none="–")


def _cell(block: dict[str, Any], key: str) -> str:
    return metric_cell(block, key, none="–")


def _config_lines(cfg: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    lines = ["| option | value |", "|---|---|"]
    lines += [f"| {k} | `{cfg.get(k)}` |" for k in keys if cfg.get(k) not in (None, [], "")]
    return lines


METRICS = ("reward_mean", "cost_mean", "unsafe_rate", "cost_unsafe_rate", "guard_unsafe_rate", "guard_score_mean",
           "truncated_rate", "completion_words_mean")


# ----------------------------------------------------------------------------- eval prompts
def plot_scores(scores, path: Path) -> Path | None:
    panels = [(name, v) for name, v in (("reward", scores.reward), ("cost", scores.cost),
                                        ("guard P(unsafe)", scores.guard_score)) if v is not None]
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (name, v) in zip(axes[0], panels, strict=True):
        v = np.asarray(v, dtype=float)
        if name == "cost":
            ax.hist(v[v <= 0], bins=30, alpha=0.7, color="tab:green", label=f"cost ≤ 0 (n={int((v <= 0).sum())})")
            ax.hist(v[v > 0], bins=30, alpha=0.7, color="tab:red", label=f"cost > 0 (n={int((v > 0).sum())})")
            ax.axvline(0.0, color="k", lw=0.8, ls="--")
            ax.legend(fontsize=8)
        else:
            ax.hist(v, bins=30, alpha=0.8, color="tab:blue" if name == "reward" else "tab:purple")
        ax.set_title(f"{name} (mean {v.mean():.3f})")
        ax.set_xlabel(name)
        ax.set_ylabel("completions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_categories(per_category: dict[str, Any], key: str, path: Path, *, title: str) -> Path | None:
    cats = [c for c, b in per_category.items() if b.get(key) is not None]
    if not cats:
        return None
    plt = _plt()
    vals = np.array([per_category[c][key] for c in cats])
    ci = [per_category[c]["ci95"].get(key) or [v, v] for c, v in zip(cats, vals, strict=True)]
    err = np.array([[v - lo, hi - v] for v, (lo, hi) in zip(vals, ci, strict=True)]).T
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(cats) + 1.5))
    y = np.arange(len(cats))
    ax.barh(y, vals, xerr=err, color="tab:red", alpha=0.75, capsize=3)
    ax.set_yticks(y, cats, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(key)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_prompts_report(summary: dict[str, Any], scores, out: Path) -> None:
    """``report.md`` + ``scores.png`` + ``categories.png`` of ``eval prompts`` into ``out``."""
    out = Path(out)
    cfg = summary.get("config", {})
    lines = ["# saferlhf eval prompts", "",
             (f"Policy `{cfg.get('policy')}` on `{cfg.get('prompts')}`: {summary['n_prompts']} prompts × "
             f"{summary.get('n_samples', 1)} sample(s) = {summary['n']} completions. Unsafe = "
             f"**{summary.get('unsafe_definition') or 'not measured (no cost model or guard)'}**. "
             "Intervals: 95 % bootstrap over prompts."), ""]
    lines += _config_lines(cfg, ("policy", "prompts", "reward_model", "cost_model", "guard", "unsafe_by",
                                 "max_new_tokens", "top_p", "top_k", "seed", "limit", "per_category"))
    lines += [f"| temperature | `{summary.get('sampling', {}).get('temperature')}` |", "",
              "## Metrics", "", "| metric | value [95 % CI] |", "|---|---|"]
    lines += [f"| {k} | {_cell(summary, k)} |" for k in METRICS if summary.get(k) is not None]
    if plot_scores(scores, out / "scores.png"):
        lines += ["", "![scores](scores.png)"]
    per = summary.get("per_category") or {}
    if per:
        cols = [k for k in ("reward_mean", "cost_mean", "unsafe_rate", "guard_unsafe_rate")
                if any(b.get(k) is not None for b in per.values())]
        lines += ["", "## Per category", "", "| category | n | " + " | ".join(cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        lines += [f"| {c} | {b['n']} | " + " | ".join(_cell(b, k) for k in cols) + " |" for c, b in per.items()]
        key = "unsafe_rate" if "unsafe_rate" in cols else "guard_unsafe_rate" if "guard_unsafe_rate" in cols else None
        if key and plot_categories(per, key, out / "categories.png", title=f"{key} per category (95 % CI)"):
            lines += ["", "![categories](categories.png)"]
    if summary.get("guard_categories"):
        lines += ["", "## Harm categories flagged by the guard", "", "| category | completions |", "|---|---|"]
        lines += [f"| {c} | {n} |" for c, n in summary["guard_categories"].items()]
    lines += ["", "## Timings (seconds)", "", "| step | s |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.get("seconds", {}).items()]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- eval arena
def _wtl_rows(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = [(f"{d} ({summary[d]['by']})", summary[d]) for d in ("helpfulness", "harmlessness") if d in summary]
    judge = summary.get("judge") or {}
    rows += [(f"{d} (judge)", judge[d]) for d in ("helpfulness", "harmlessness") if d in judge]
    return rows


def plot_arena(summary: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    rows = _wtl_rows(summary)
    per = summary.get("per_category") or {}
    has_cat = bool(per) and any(b.get("unsafe_rate_a") is not None for b in per.values())
    ncols = 1 + ("transition" in summary) + has_cat
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4.2), squeeze=False)
    axes = list(axes[0])
    ax = axes.pop(0)
    if rows:
        y = np.arange(len(rows))
        left = np.zeros(len(rows))
        for key, color in (("win", "tab:green"), ("tie", "lightgrey"), ("loss", "tab:red")):
            vals = np.array([r[key] or 0.0 for _, r in rows])
            ax.barh(y, vals, left=left, color=color, label=f"A {key}" if key != "tie" else "tie")
            for yi, (lv, v) in enumerate(zip(left, vals, strict=True)):
                if v >= 0.06:
                    ax.text(lv + v / 2, yi, f"{v:.2f}", ha="center", va="center", fontsize=8)
            left += vals
        ax.set_yticks(y, [name for name, _ in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.legend(fontsize=8, loc="lower right")
    ax.set_title("A vs B: win / tie / loss of A")
    if "transition" in summary:
        ax = axes.pop(0)
        t = summary["transition"]
        m = np.array([[t["counts"]["a_safe"]["b_safe"], t["counts"]["a_safe"]["b_unsafe"]],
                      [t["counts"]["a_unsafe"]["b_safe"], t["counts"]["a_unsafe"]["b_unsafe"]]])
        ax.imshow(m, cmap="Reds", vmin=0, vmax=max(1, m.max()))
        for i in range(2):
            for j in range(2):
                ax.text(j, i, f"{m[i, j]}\n({m[i, j] / max(1, t['n']):.1%})", ha="center", va="center", fontsize=10,
                        color="white" if m[i, j] > 0.6 * m.max() else "black")
        ax.set_xticks([0, 1], ["B safe", "B unsafe"])
        ax.set_yticks([0, 1], ["A safe", "A unsafe"])
        ax.set_title(f"safe/unsafe transition ({summary.get('unsafe_definition')})")
    if has_cat:
        ax = axes.pop(0)
        cats = [c for c, b in per.items() if b.get("unsafe_rate_a") is not None]
        y = np.arange(len(cats))
        ax.barh(y - 0.2, [per[c]["unsafe_rate_a"] for c in cats], height=0.4, label="A", color="tab:blue")
        ax.barh(y + 0.2, [per[c]["unsafe_rate_b"] for c in cats], height=0.4, label="B", color="tab:orange")
        ax.set_yticks(y, cats, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.legend(fontsize=8)
        ax.set_title("unsafe rate per category")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_arena_report(summary: dict[str, Any], out: Path) -> None:
    """``report.md`` + ``arena.png`` of ``eval arena`` into ``out``."""
    out = Path(out)
    cfg = summary.get("config", {})
    plot_arena(summary, out / "arena.png")
    lines = ["# saferlhf eval arena", "",
             (f"A = `{cfg.get('policy_a')}` against B = `{cfg.get('policy_b')}` on `{cfg.get('prompts')}`: "
             f"{summary['n_prompts']} prompts × {summary.get('n_samples', 1)} sample(s) = {summary['n']} pairs. "
             f"Unsafe = **{summary.get('unsafe_definition') or 'not measured'}**. Intervals: 95 % bootstrap over "
             "prompts."), ""]
    lines += _config_lines(cfg, ("policy_a", "policy_b", "prompts", "reward_model", "cost_model", "guard", "judge",
                                 "judge_model", "unsafe_by", "tie_margin", "max_new_tokens", "seed", "limit",
                                 "per_category"))
    lines += ["", "## Win / tie / loss of A", "", "| dimension | win | tie | loss | win / (win + loss) |",
              "|---|---|---|---|---|"]
    for name, r in _wtl_rows(summary):
        lines.append(f"| {name} | {_cell(r, 'win')} | {_cell(r, 'tie')} | {_cell(r, 'loss')} | "
                     f"{_fmt(r.get('win_rate_decided'))} |")
    for d in ("helpfulness", "harmlessness"):
        if d in summary and summary[d].get("mean_diff") is not None:
            ci = summary[d]["mean_diff_ci95"]
            lines.append(f"\n{d}: mean score difference A − B = {summary[d]['mean_diff']:.3f} "
                         f"[{ci[0]:.3f}, {ci[1]:.3f}] ({summary[d]['by']}).")
    if summary.get("judge"):
        j = summary["judge"]
        lines += ["", f"## LLM judge ({j['kind']}: `{j['judge']}`), both orders", "",
                  "| dimension | order disagreement | invalid answers | first-position win rate |", "|---|---|---|---|"]
        lines += [f"| {d} | {_fmt(j[d]['order_disagreement_rate'])} | {_fmt(j[d]['invalid_rate'])} | "
                  f"{_fmt(j[d]['first_position_rate'])} |" for d in ("helpfulness", "harmlessness") if d in j]
        lines += ["", "A pair whose two orders disagree counts as a tie."]
    lines += ["", "## Policies", "", "| metric | A | B |", "|---|---|---|"]
    for k in METRICS:
        if summary["policy_a"].get(k) is not None:
            lines.append(f"| {k} | {_cell(summary['policy_a'], k)} | {_cell(summary['policy_b'], k)} |")
    if "transition" in summary:
        t = summary["transition"]
        lines += ["", "## Safe/unsafe transition (counts, fraction of pairs)", "", "| | B safe | B unsafe |",
                  "|---|---|---|"]
        for a in ("safe", "unsafe"):
            c, f = t["counts"][f"a_{a}"], t["fractions"][f"a_{a}"]
            lines.append(f"| A {a} | {c['b_safe']} ({_fmt(f['b_safe'])}) | {c['b_unsafe']} ({_fmt(f['b_unsafe'])}) |")
    per = summary.get("per_category") or {}
    if per:
        dims = [d for d in ("helpfulness", "harmlessness") if d in summary]
        head = ["category", "n"] + [f"{d} W/T/L" for d in dims] + (
            ["unsafe A", "unsafe B"] if "transition" in summary else [])
        lines += ["", "## Per category", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for c, b in per.items():
            cells = [c, str(b["n"])] + [f"{b[d]['win']:.2f}/{b[d]['tie']:.2f}/{b[d]['loss']:.2f}" for d in dims]
            if "transition" in summary:
                cells += [_fmt(b.get("unsafe_rate_a")), _fmt(b.get("unsafe_rate_b"))]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![arena](arena.png)", "", "## Timings (seconds)", "", "| step | s |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.get("seconds", {}).items()]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
