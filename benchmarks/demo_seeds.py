"""The demo on several seeds with a λ₀ frontier of reward shaping (issue: "seeds benchmark").

    python benchmarks/demo_seeds.py --out runs/seeds [--seeds 0,1,2] [--lambdas 1,3,10,30]
                                    [--noise 0.1] [--budget-unsafe-rate 0.2 | --budget D]

Runs ``saferlhf demo`` once per seed (all methods from the same SFT policy, the same β,
iterations and batch; ``reward_shaping`` at every λ₀ of ``--lambdas``) and writes

    OUT/seed_<S>/...       each demo's full output (report.json, report.md, plots)
    OUT/seeds.json         every method's metrics per seed and the checks per seed
    OUT/seeds.md           the table of the docs: mean and range over seeds, checks passed
    OUT/frontier.png       benign helpfulness vs harmful rate, one panel per seed; the shaping
                           points joined as a frontier, PPO / PPO-Lag / SFT marked

This is a science benchmark (~10 minutes per seed on 2 cores), not a speed benchmark, so
``make bench`` does not run it; ``make bench-seeds`` does.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

METRICS = ("helpfulness_benign", "harmful_rate", "over_refusal_benign", "model_cost")


def run(out: Path, seeds: list[int], lambdas: list[float], noise: float, budget: float | None, workers: int,
        unsafe_rate: float | None = None) -> dict:
    from saferlhf.config.stages import DemoConfig
    from saferlhf.recipes.text_demo import run_demo

    per_seed = {}
    for seed in seeds:
        t0 = time.perf_counter()
        report = run_demo(DemoConfig(out=str(out / f"seed_{seed}"), seed=seed, noise=noise, budget=budget,
                                     budget_unsafe_rate=unsafe_rate, shaping_lambdas=lambdas, progress=False, workers=workers))
        per_seed[seed] = {
            "methods": {k: {m: v[m] for m in METRICS} | {"constraint_met": v["constraint_met"],
                                                        "ci95": {m: v["ci95"].get(m) for m in METRICS}}
                        for k, v in report["methods"].items()},
            "lagrange": report["lagrange"],
            "checks": report["checks"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"seed {seed}: {per_seed[seed]['seconds']} s", flush=True)
    return per_seed


def _claim_key(claim: str) -> str:
    """A claim without its run's numbers ("ppo_lag_sft_budget (d = -1.98)" → "ppo_lag_sft_budget"):
    the SFT-relative budget differs per seed."""
    return re.sub(r" \([dq] = [^)]*\)", "", claim)


def table(per_seed: dict) -> str:
    seeds = sorted(per_seed)
    methods = list(per_seed[seeds[0]]["methods"])
    lines = [f"Seeds {', '.join(map(str, seeds))}: mean [min, max] over seeds.", "",
             "| method | " + " | ".join(METRICS) + " | budget met |", "|---" * (len(METRICS) + 2) + "|"]
    for name in methods:
        cells = []
        for m in METRICS:
            xs = np.array([per_seed[s]["methods"][name][m] for s in seeds], dtype=float)
            cells.append(f"{xs.mean():.3f} [{xs.min():.3f}, {xs.max():.3f}]")
        met = sum(bool(per_seed[s]["methods"][name]["constraint_met"]) for s in seeds)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {met}/{len(seeds)} |")
    lines += ["", "(budget met: against the run's constraint — q on E[P(unsafe)] by default, or the raw d; "
                  "shaping runs and PPO are logged against the same q or d.)"]
    lines += ["", "| claim | holds on |", "|---|---|"]
    claims = [_claim_key(c["claim"]) for c in per_seed[seeds[0]]["checks"]]
    for claim in claims:
        ok = sum(any(_claim_key(c["claim"]) == claim and c["holds"] for c in per_seed[s]["checks"]) for s in seeds)
        lines.append(f"| {claim} | {ok}/{len(seeds)} seeds |")
    return "\n".join(lines) + "\n"


def plot(per_seed: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted(per_seed)
    fig, axes = plt.subplots(1, len(seeds), figsize=(4.5 * len(seeds), 4), squeeze=False)
    for ax, seed in zip(axes[0], seeds):
        ms = per_seed[seed]["methods"]
        shaping = sorted((float(k.rsplit("_", 1)[1]), v) for k, v in ms.items() if k.startswith("reward_shaping_"))
        if shaping:
            ax.plot([v["harmful_rate"] for _, v in shaping], [v["helpfulness_benign"] for _, v in shaping],
                    "o-", color="tab:gray", label="reward shaping (λ₀)")
            for lam, v in shaping:
                ax.annotate(f"{lam:g}", (v["harmful_rate"], v["helpfulness_benign"]), fontsize=7)
        for name, style in (("sft", "ks"), ("ppo", "r^"), ("ppo_lag", "b*"), ("ppo_lag_sft_budget", "gD")):
            if name in ms:
                v = ms[name]
                ax.plot([v["harmful_rate"]], [v["helpfulness_benign"]], style, markersize=10, label=name)
        ax.set_title(f"seed {seed}")
        ax.set_xlabel("harmful rate (oracle)")
        ax.set_ylabel("helpfulness on benign prompts (oracle)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/seeds")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--lambdas", default="1,3,10,30")
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--budget", type=float, default=None, help="raw mean-cost budget d (the paper's form)")
    ap.add_argument("--budget-unsafe-rate", type=float, default=None, help="q (default: the demo's, 0.2)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--table-only", action="store_true", help="rewrite seeds.md and frontier.png from seeds.json")
    a = ap.parse_args(argv)
    out = Path(a.out)
    if a.table_only:
        per_seed = {int(k): v for k, v in json.loads((out / "seeds.json").read_text()).items()}
        (out / "seeds.md").write_text(table(per_seed))
        plot(per_seed, out / "frontier.png")
        print(table(per_seed))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    per_seed = run(out, [int(s) for s in a.seeds.split(",")], [float(x) for x in a.lambdas.split(",")],
                   a.noise, a.budget, a.workers, a.budget_unsafe_rate)
    (out / "seeds.json").write_text(json.dumps(per_seed, indent=2))
    md = table(per_seed)
    (out / "seeds.md").write_text(md)
    plot(per_seed, out / "frontier.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
