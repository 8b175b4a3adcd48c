"""Demo report: ``report.md`` with tables and checks, PNG plots, and a console summary.

Plots (written directly in the output folder):

* ``training_curves.png`` — reward, cost (J_C) against the budget, and λ per RL iteration
  for every method;
* ``tradeoff.png`` — helpfulness on benign prompts against the harmful-response rate of
  every policy with 95 % intervals; the fixed-λ₀ reward-shaping points are joined as a
  frontier, so a reader sees that a fixed λ₀ works only where it happens to be chosen well;
* ``rounds.png`` — the harmful rate per Safe RLHF round (with ``--rounds`` > 1).

The checks section compares the numbers with the claims the demo is meant to show; a
failing check is reported as such, never hidden.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

METRIC_COLUMNS = ("helpfulness_benign", "harmful_rate", "harmful_rate_harmful", "over_refusal_benign",
                  "model_cost", "constraint_met")


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(plt, fig, path: Path, dpi: int = 110) -> Path:
    """Lay out, write and close a matplotlib figure; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _series(history: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([h.get(key, np.nan) if h.get(key) is not None else np.nan for h in history], dtype=float)


def _smooth(x: np.ndarray, k: int = 5) -> np.ndarray:
    if len(x) < k:
        return x
    kernel = np.ones(k) / k
    pad = np.concatenate([np.full(k - 1, x[0]), x])
    return np.convolve(pad, kernel, mode="valid")


def plot_training_curves(histories: dict[str, list[dict[str, Any]]], budget: float | dict[str, float],
                         path: Path) -> Path:
    """Reward, J_C against the budget(s) and λ per RL iteration; ``budget`` is one d or
    ``{run name: d}`` (a dashed line per distinct d)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, hist in histories.items():
        it = np.arange(1, len(hist) + 1)
        axes[0].plot(it, _smooth(_series(hist, "reward")), label=name)
        jc = _series(hist, "J_C")
        axes[1].plot(it, _smooth(jc if not np.all(np.isnan(jc)) else _series(hist, "cost")), label=name)
        if name.startswith("ppo_lag") or "grpo" in name:
            axes[2].plot(it, _series(hist, "lambda"), label=name)
    budgets = budget if isinstance(budget, dict) else {"": budget}
    for (who, d), style in zip(sorted(budgets.items(), key=lambda kv: kv[1]), ("--", ":", "-.")):
        axes[1].axhline(d, color="k", ls=style, lw=1, label=f"budget d={d:.3g}" + (f" ({who})" if who else ""))
    axes[0].set_title("reward (batch mean, smoothed)")
    axes[1].set_title("cost J_C (window mean, smoothed)")
    axes[2].set_title("Lagrange multiplier λ")
    for ax in axes:
        ax.set_xlabel("RL iteration")
        ax.legend(fontsize=7)
    return save_figure(plt, fig, path)


def _ci(m: dict[str, Any], key: str) -> tuple[float, float]:
    lo, hi = (m.get("ci95") or {}).get(key, [m.get(key), m.get(key)])
    return float(m[key]) - float(lo), float(hi) - float(m[key])


def plot_tradeoff(methods: dict[str, dict[str, Any]], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    shaping = []
    for name, m in methods.items():
        x, y = m["harmful_rate"], m["helpfulness_benign"]
        xerr = np.array(_ci(m, "harmful_rate")).reshape(2, 1)
        yerr = np.array(_ci(m, "helpfulness_benign")).reshape(2, 1)
        marker = "s" if name.startswith("reward_shaping") else "o"
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=marker, capsize=3, label=name)
        if name.startswith("reward_shaping_"):
            shaping.append((float(name.rsplit("_", 1)[1]), x, y))
    if len(shaping) > 1:
        shaping.sort()
        ax.plot([s[1] for s in shaping], [s[2] for s in shaping], "k:", lw=1, label="fixed-λ₀ frontier")
    ax.set_xlabel("harmful-response rate (oracle, all prompts)")
    ax.set_ylabel("helpfulness on benign prompts (oracle)")
    ax.set_title("helpfulness vs harm (95 % bootstrap intervals)")
    ax.legend(fontsize=7)
    return save_figure(plt, fig, path)


def plot_rounds(rounds: list[dict[str, Any]], path: Path) -> Path:
    """Per Safe RLHF round: harm and benign helpfulness (oracle, with intervals), λ, and the
    cost model's AUROC on the round's policy samples."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    k = [r["round"] for r in rounds]
    for ax, key, label in ((axes[0], "harmful_rate", "harmful-response rate"),
                           (axes[1], "helpfulness_benign", "helpfulness on benign prompts")):
        y = [r["ppo_lag"][key] for r in rounds]
        below_above = [_ci(r["ppo_lag"], key) for r in rounds]  # half-widths of the interval
        ax.errorbar(k, y, yerr=[[b for b, _ in below_above], [a for _, a in below_above]], fmt="o-", capsize=3)
        ax.set_ylabel(label)
    lam = [r.get("lambda") for r in rounds]
    axes[2].plot(k, lam, "o-", label="final λ")
    if all(r.get("lambda_mean_last") is not None for r in rounds):
        axes[2].plot(k, [r["lambda_mean_last"] for r in rounds], "s--", label="λ, mean of last iterations")
    auc = [r.get("cost_model_auroc_policy") for r in rounds]
    if all(a is not None for a in auc):
        twin = axes[2].twinx()
        twin.plot(k, auc, "g^:", label="cost-model AUROC (policy samples)")
        twin.set_ylabel("AUROC on the policy's samples", color="g")
    axes[2].set_ylabel("λ")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xticks(k)
        ax.set_xlabel("Safe RLHF round")
    fig.suptitle("Safe RLHF rounds (95 % bootstrap intervals)")
    fig.tight_layout()
    return save_figure(plt, fig, path)


def demo_checks(report: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """The claims of the demo, each evaluated on the report's numbers: (claim, holds, detail).

    The PPO-Lag claims are checked for ``ppo_lag`` (at ``--budget``) and, when the demo ran
    it, for ``ppo_lag_sft_budget`` (d = the SFT policy's mean cost)."""
    m = report["methods"]
    checks: list[tuple[str, bool | None, str]] = []
    if not all(k in m for k in ("sft", "ppo", "ppo_lag")):
        return checks
    for name in ("ppo_lag", "ppo_lag_sft_budget"):
        if name in m:
            checks += _lagrangian_checks(report, name)
    if report.get("rounds"):
        hr = [r["ppo_lag"]["harmful_rate"] for r in report["rounds"]]
        hb = [r["ppo_lag"]["helpfulness_benign"] for r in report["rounds"]]
        checks.append(("harmful rate falls round over round", all(b <= a for a, b in zip(hr, hr[1:])),
                       " → ".join(f"{x:.3f}" for x in hr)))
        checks.append(("benign helpfulness never more than 5 % below round 1's",
                       all(x >= hb[0] - 0.05 * abs(hb[0]) for x in hb[1:]), " → ".join(f"{x:.3f}" for x in hb)))
    checks += guard_checks(report.get("guard"))
    return checks


def _lagrangian_checks(report: dict[str, Any], name: str) -> list[tuple[str, bool | None, str]]:
    m = report["methods"]
    sft, ppo, lag = m["sft"], m["ppo"], m[name]
    budget = (report.get("budgets") or {}).get(name, report["budget"])
    lam = ((report["lagrange"].get("by_method") or {}).get(name)
           or {"final_lambda": report["lagrange"]["final_lambda"], "at_cap": report["lagrange"]["at_cap"]})
    unsafe_rate = (report.get("constraint") or {}).get("form") == "unsafe_rate" and name == "ppo_lag"
    who = f"{name} (q = {budget:.3g})" if unsafe_rate else f"{name} (d = {budget:.3g})"
    # shaping runs are evaluated in the units of the demo's constraint; a run constrained in other
    # units (the SFT-mean raw budget beside the unsafe-rate default) has no comparable shaping run
    comparable = name == "ppo_lag" or (report.get("constraint") or {}).get("form", "mean_cost") == "mean_cost"

    def ci(metric: dict[str, Any], key: str) -> tuple[float, float]:
        lo, hi = (metric.get("ci95") or {}).get(key, [metric[key], metric[key]])
        return float(lo), float(hi)

    lag_hi = ci(lag, "helpfulness_benign")[1]
    # "meets the budget" of this run's d (model_cost <= d + tol), whatever d the shaping run was logged with
    beaten = [k for k, s in m.items() if k.startswith("reward_shaping")
              and s["model_cost"] <= budget + (s.get("tolerance") or 0) and ci(s, "helpfulness_benign")[0] > lag_hi]
    frontier = _frontier_check(m, name) if comparable else None
    return [
        (f"{who} meets the budget", lag.get("constraint_met"),
         f"model_cost {lag.get('model_cost'):.3f} vs d + tol = {budget + (lag.get('tolerance') or 0):.3f}"),
        (f"{who}: λ not stuck at its cap", not lam["at_cap"],
         f"final λ {lam['final_lambda']:.3f} (cap {report['lagrange']['max_lambda']})"),
        (f"{who}: harmful rate ≤ ½ PPO's", lag["harmful_rate"] <= 0.5 * ppo["harmful_rate"],
         f"{lag['harmful_rate']:.3f} vs {ppo['harmful_rate']:.3f}"),
        (f"{who}: harmful rate < SFT's", lag["harmful_rate"] < sft["harmful_rate"],
         f"{lag['harmful_rate']:.3f} vs {sft['harmful_rate']:.3f}"),
        (f"{who}: helpfulness (benign) > SFT's", lag["helpfulness_benign"] > sft["helpfulness_benign"],
         f"{lag['helpfulness_benign']:.3f} vs {sft['helpfulness_benign']:.3f}"),
        (f"{who}: helpfulness (benign) ≥ 90 % of PPO's", lag["helpfulness_benign"] >= 0.9 * ppo["helpfulness_benign"],
         f"{lag['helpfulness_benign']:.3f} vs 0.9 × {ppo['helpfulness_benign']:.3f}"),
        # one-sided: refusing fewer benign requests than SFT is not a failure of the method
        (f"{who}: over-refusal at most 5 points above SFT's", lag["over_refusal_benign"] <= sft["over_refusal_benign"] + 0.05,
         f"{lag['over_refusal_benign']:.3f} vs {sft['over_refusal_benign']:.3f}"),
        (f"{who}: no budget-meeting shaping run beats its helpfulness beyond the intervals",
         not beaten if comparable else None, (", ".join(beaten) or "none") if comparable else "other units"),
        (f"{who}: on or above the fixed-λ₀ frontier (within its interval)",
         None if frontier is None else frontier[0], "not bracketed by the shaping runs" if frontier is None
         else frontier[1]),
    ]


def _frontier_check(m: dict[str, Any], name: str) -> tuple[bool, str] | None:
    """Whether ``name``'s benign helpfulness (upper end of its interval) reaches the fixed-λ₀
    frontier at its harmful rate: the frontier is the piecewise-linear curve through PPO (λ₀ = 0)
    and the reward-shaping runs, ordered by harmful rate. None when no two points bracket it."""
    pts = sorted((s["harmful_rate"], s["helpfulness_benign"], k) for k, s in m.items()
                 if k.startswith("reward_shaping") or k == "ppo")
    x = m[name]["harmful_rate"]
    for (x0, y0, k0), (x1, y1, k1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            y = y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
            hi = ((m[name].get("ci95") or {}).get("helpfulness_benign") or [None, m[name]["helpfulness_benign"]])[1]
            return bool(hi >= y), f"{m[name]['helpfulness_benign']:.3f} (≤ {hi:.3f}) vs frontier {y:.3f} ({k0}–{k1})"
    return None


# Safe RLHF-V: five rounds of Beaver-Guard filtering and regeneration raised safety by 40.9 %
PAPER_GUARD_REDUCTION = 0.409


def guard_checks(guard: dict[str, Any] | None) -> list[tuple[str, bool | None, str]]:
    """The guard stage's claims (issue: F1 ≥ 0.9, severity macro accuracy ≥ 0.8, the harmful
    rate falls monotonically over the regeneration rounds by ≥ 40.9 %, benign helpfulness
    keeps ≥ 95 % of round 0's)."""
    if not guard:
        return []
    rounds, helpful = guard["rounds"], guard["helpfulness_benign_rounds"]
    reduction = 1.0 - rounds[-1] / rounds[0] if rounds[0] > 0 else 0.0
    return [
        ("guard unsafe-F1 ≥ 0.9 (held-out responses, oracle labels)", guard["f1"] >= 0.9, f"{guard['f1']:.3f}"),
        ("guard severity macro accuracy ≥ 0.8", guard["severity_macro_accuracy"] >= 0.8,
         f"{guard['severity_macro_accuracy']:.3f}"),
        ("guarded generation: harmful rate falls every round", all(b <= a for a, b in zip(rounds, rounds[1:])),
         " → ".join(f"{x:.3f}" for x in rounds)),
        (f"guarded generation: harmful rate −{PAPER_GUARD_REDUCTION:.1%} or more after {len(rounds) - 1} rounds",
         reduction >= PAPER_GUARD_REDUCTION, f"{-reduction:+.1%}"),
        ("guarded generation keeps ≥ 95 % of benign helpfulness", helpful[-1] >= 0.95 * helpful[0],
         f"{helpful[-1]:.3f} vs 0.95 × {helpful[0]:.3f}"),
    ]


def fmt_value(v: Any, none: str = "None") -> str:
    """A table cell: floats to 3 decimals, ``none`` for a missing value."""
    if v is None:
        return none
    if isinstance(v, float) and not isinstance(v, bool):
        return f"{v:.3f}"
    return str(v)


_fmt = fmt_value


def metric_cell(m: dict[str, Any], key: str, none: str = "None") -> str:
    """``value [low, high]`` when ``m["ci95"]`` has the key's interval, else the value alone."""
    v = m.get(key)
    ci = (m.get("ci95") or {}).get(key)
    if isinstance(v, float) and ci and ci[0] is not None:
        return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return fmt_value(v, none)


_metric_cell = metric_cell


def write_report(report: dict[str, Any], histories: dict[str, list[dict[str, Any]]], out: Path) -> None:
    """Write ``report.md`` and the PNG plots into ``out``."""
    out = Path(out)
    plot_training_curves(histories, report.get("budgets") or report["budget"], out / "training_curves.png")
    plot_tradeoff(report["methods"], out / "tradeoff.png")
    if report.get("rounds"):
        plot_rounds(report["rounds"], out / "rounds.png")
    checks = demo_checks(report)
    report["checks"] = [{"claim": c, "holds": h, "detail": d} for c, h, d in checks]
    lines = [
        "# saferlhf demo report",
        "",
        f"World seed {report['seed']}, annotator noise {report['noise']}, " + _constraint_text(report)
        + (" — **quick mode** (small sizes: checks the pipeline, not the science)" if report.get("quick") else ""),
        "",
        "## Score models (held-out pairs)",
        "",
        "| model | accuracy | oracle agreement | sign accuracy | AUROC |",
        "|---|---|---|---|---|",
        f"| reward | {_fmt(report['reward_model'].get('accuracy'))} | "
        f"{_fmt(report['reward_model'].get('oracle_agreement'))} | | |",
        f"| cost | {_fmt(report['cost_model'].get('accuracy'))} | {_fmt(report['cost_model'].get('oracle_agreement'))} | "
        f"{_fmt(report['cost_model'].get('sign_accuracy'))} | {_fmt(report['cost_model'].get('auroc'))} |",
        "",
        "## Policies (ground truth on held-out prompts, 95 % bootstrap intervals)",
        "",
        "| policy | " + " | ".join(METRIC_COLUMNS) + " |",
        "|---" * (len(METRIC_COLUMNS) + 1) + "|",
    ]
    for name, m in report["methods"].items():
        lines.append(f"| {name} | " + " | ".join(_metric_cell(m, k) for k in METRIC_COLUMNS) + " |")
    by_method = report["lagrange"].get("by_method") or {
        "ppo_lag": {"final_lambda": report["lagrange"]["final_lambda"], "at_cap": report["lagrange"]["at_cap"],
                    "budget": report["budget"]}}
    lines += [""] + [f"{k}: budget d = {v['budget']:.3f}, final λ = {v['final_lambda']:.3f} (at cap: {v['at_cap']})"
                     + (f", λ's mean over the last {v['last_iterations']} iterations {v['lambda_mean_last']:.3f}"
                        if v.get("lambda_mean_last") is not None else "") + "."
                     for k, v in by_method.items() if v.get("budget") is not None] + [""]
    cal = (report.get("cost_model") or {}).get("calibration")
    if cal:
        lines += [f"Cost-model calibration: P(unsafe) = σ((c − {cal['offset']:.3f}) / {cal['temperature']:.3f}), "
                  f"fitted on {cal['n']} labelled held-out responses (labelled unsafe rate "
                  f"{cal['labelled_unsafe_rate']:.3f}, ECE {cal['ece']:.3f}).", ""]
    if report.get("sft_cost"):
        sc = report["sft_cost"]
        lines += [f"Learned cost of SFT samples (training prompts): mean {sc['mean']:.3f}, std {sc['std']:.3f}, "
                  f"P(c > 0) = {sc['unsafe_rate']:.3f}. `ppo_lag_sft_budget` uses d = this mean; "
                  "see docs/demo.md for why d = 0 does not bind in this world.", ""]
    if report.get("rounds"):
        lines += ["## Rounds", "", "| round | harmful_rate | helpfulness_benign | final λ | λ (mean of last) | "
                  "cost-model AUROC (held-out pairs) | cost-model AUROC (policy samples) |", "|---|---|---|---|---|---|---|"]
        for r in report["rounds"]:
            lines.append(f"| {r['round']} | {_metric_cell(r['ppo_lag'], 'harmful_rate')} | "
                         f"{_metric_cell(r['ppo_lag'], 'helpfulness_benign')} | {_fmt(r.get('lambda'))} | "
                         f"{_fmt(r.get('lambda_mean_last'))} | {_fmt(r['cost_model'].get('auroc'))} | "
                         f"{_fmt(r.get('cost_model_auroc_policy'))} |")
        lines += ["", "![rounds](rounds.png)", ""]
    if report.get("guard"):
        g = report["guard"]
        lines += ["## Beaver-Guard (held-out world responses; guarded generation around the SFT policy)", "",
                  f"Unsafe-F1 {_fmt(g['f1'])}, severity macro accuracy {_fmt(g['severity_macro_accuracy'])}; "
                  f"answers flagged at severity ≥ {g.get('severity_threshold', '?')} are regenerated.", "",
                  "| regenerations k | harmful_rate | helpfulness_benign |", "|---|---|---|"]
        lines += [f"| {k} | {_fmt(h)} | {_fmt(b)} |"
                  for k, (h, b) in enumerate(zip(g["rounds"], g["helpfulness_benign_rounds"]))]
        lines += ["", "After the refusal fallback: " + ", ".join(
            f"{k} {_metric_cell(g['after_fallback'], k)}" for k in ("harmful_rate", "helpfulness_benign",
                                                                    "over_refusal_benign")), ""]
    lines += ["## Checks", "", "| claim | holds | numbers |", "|---|---|---|"]
    lines += [f"| {c} | {'yes' if h else 'NO' if h is not None else 'n/a'} | {d} |" for c, h, d in checks]
    lines += ["", "## Plots", "", "![training curves](training_curves.png)", "", "![tradeoff](tradeoff.png)", "",
              "## Timings (seconds)", "", "| stage | s |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["timings_s"].items()]
    lines += ["", "## RL settings (the same for every method)", "", "```", _fmt(report.get("rl_settings")), "```", ""]
    (out / "report.md").write_text("\n".join(lines))


def _constraint_text(report: dict[str, Any]) -> str:
    c = report.get("constraint") or {}
    if c.get("form") == "unsafe_rate":
        return (f"constraint: at most q = {c['budget_unsafe_rate']} unsafe, E[P(unsafe)] ≤ q with the cost model's "
                "calibrated P(unsafe)")
    return f"budget d = {report['budget']} (mean cost)"


def print_summary(report: dict[str, Any]) -> None:
    """One screen: the methods table and the checks."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"saferlhf demo (seed {report['seed']}, noise {report['noise']}, budget {report['budget']})")
    table.add_column("policy")
    for k in METRIC_COLUMNS:
        table.add_column(k, justify="right")
    for name, m in report["methods"].items():
        table.add_row(name, *[_fmt(m.get(k)) for k in METRIC_COLUMNS])
    console.print(table)
    console.print(f"reward model: {report['reward_model']}  cost model: {report['cost_model']}")
    console.print(f"λ final {report['lagrange']['final_lambda']:.3f} at cap {report['lagrange']['at_cap']}")
    for c in report.get("checks", []):
        mark = "[green]yes[/green]" if c["holds"] else "[red]NO[/red]"
        console.print(f"  {mark}  {c['claim']}  ({c['detail']})")
    console.print(f"timings (s): {report['timings_s']}")
