"""One frontier against ground truth: the RL family and the direct-preference family.

    python benchmarks/frontier.py --out runs/frontier [--seeds 0,1] [--quick] [--only all|dpo|rl]
                                  [--lambdas 1,3,10,30] [--betas 0.05,0.1,0.3] [--workers N]

For each world seed (noise 0.1), from the same SFT policy and the same reward and cost models
that ``saferlhf demo`` builds (the demo's sizes and settings: :mod:`saferlhf.recipes.text_demo`), it trains

* RL (the demo's β, iterations and batch): ``ppo``, ``ppo_lag`` at the demo's default constraint
  (at most q = 0.2 unsafe, E[P(unsafe)] ≤ q with the calibrated cost model), ``grpo_lag`` at the
  same q (2 samples per prompt) and ``reward_shaping`` at every λ₀ of ``--lambdas`` (≥ 4 points,
  the demo's, in P(unsafe) units);
* the DPO family at the defaults of ``saferlhf dpo``: ``dpo``, ``safe_dpo`` and ``sacpo`` at every
  β of ``--betas`` (they have no budget, so β traces their frontier), ``c_dpo`` at its budget,

evaluates every policy (and SFT) against the world's oracles with bootstrap intervals, and writes

    OUT/frontier.json   every method's metrics and 95 % intervals per seed, the settings, timings
    OUT/frontier.md     the table (mean over seeds; the interval of each seed)
    OUT/frontier.png    benign helpfulness vs harmful rate with both intervals, one panel per seed

``--quick`` shrinks everything (the demo's quick sizes, 2 RL iterations, 3 DPO steps, one β) so
the test suite can check the plumbing in about a minute; its numbers mean nothing.
``--only dpo`` runs the DPO family (and SFT) only, ``--only rl`` the RL family only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from saferlhf.recipes.common import StageTimer, rl_job, run_stage_jobs

METRICS = ("helpfulness_benign", "harmful_rate", "over_refusal_benign", "harmful_rate_harmful", "model_cost")
DEFAULT_LAMBDAS = (1.0, 3.0, 10.0, 30.0)  # the demo's --shaping-lambdas
DEFAULT_BETAS = (0.1, 0.3, 1.0)


def _dpo_job(name: str, cfg) -> Any:
    from saferlhf.jobs import Job
    from saferlhf.trainers.preference import run_dpo

    return Job(f"dpo_{name}", run_dpo, dict(cfg=cfg), metrics=Path(cfg.out) / "metrics.jsonl")


def prepare(out: Path, seed: int, noise: float, quick: bool, workers: int, timer) -> dict[str, Path]:
    """World, SFT policy, reward and cost models exactly as the demo builds them."""
    from saferlhf.recipes import text_demo as P
    from saferlhf.config.stages import DemoConfig, SFTConfig
    from saferlhf.data.world import generate_world
    from saferlhf.trainers.sft import run_sft

    sizes = P.QUICK if quick else P.FULL
    demo = DemoConfig(out=str(out), seed=seed, noise=noise, quick=quick, progress=False, workers=workers, guard=False)
    world = out / "world"
    with timer("world"):
        generate_world(world, seed=seed, noise=noise, n_sft=sizes.n_sft, n_pairs_train=sizes.n_pairs_train,
                       n_pairs_eval=sizes.n_pairs_eval, n_prompts_train=sizes.n_prompts_train,
                       n_eval_benign=sizes.n_eval_benign, n_eval_harmful=sizes.n_eval_harmful,
                       harmful_fraction=P.DEMO_HARMFUL_FRACTION)
    with timer("sft"):
        run_sft(SFTConfig(data=str(world / "sft.jsonl"), tokenizer=str(world / "tokenizer"), model="tiny",
                          out=str(out / "sft"), epochs=sizes.sft_epochs, batch_size=32, lr=2e-3,
                          max_length=P.MAX_LENGTH, seed=seed, progress=False, log_every=100))
    jobs = P._score_model_jobs(demo, sizes, out, out / "sft", world / "pairs_train.jsonl", world / "pairs_eval.jsonl")
    run_stage_jobs(timer, "score_models", jobs, workers=workers, progress=False, log_dir=out / "logs")
    return {"world": world, "sft": out / "sft", "rm": out / "reward_model", "cm": out / "cost_model",
            "pairs": world / "pairs_train.jsonl", "prompts": world / "prompts_train.jsonl", "demo": demo,
            "sizes": sizes}


def rl_configs(ctx: dict, out: Path, lambdas: list[float], quick: bool) -> dict[str, Any]:
    """The demo's RL runs (same β, iterations, batch) plus GRPO-Lag and the λ₀ sweep."""
    from saferlhf.recipes import text_demo as P

    demo, sizes = ctx["demo"], ctx["sizes"]
    if quick:
        demo = dataclasses.replace(demo, rl_iterations=2)
    common = dict(policy=ctx["sft"], rm=ctx["rm"], cm=ctx["cm"], prompts=ctx["prompts"])
    runs = {"ppo_lag": P._rl_config(demo, sizes, algo="ppo_lag", out=out / "ppo_lag", **common),
            "ppo": P._rl_config(demo, sizes, algo="ppo", out=out / "ppo", **common)}
    lag = runs["ppo_lag"]  # GRPO-Lag: the same prompts per batch budget, as 2 samples of half the prompts
    runs["grpo_lag"] = dataclasses.replace(lag, algo="grpo_lag", n_samples=2, out=str(out / "grpo_lag"),
                                           rollout_batch_size=lag.rollout_batch_size // 2)
    runs["grpo_lag"].validate()
    for lam in lambdas:
        runs[f"reward_shaping_{lam:g}"] = P._rl_config(demo, sizes, algo="reward_shaping", lam0=lam,
                                                       out=out / f"reward_shaping_{lam:g}", **common)
    return runs


def dpo_configs(ctx: dict, out: Path, betas: list[float], quick: bool) -> dict[str, Any]:
    """The DPO family at the CLI defaults; β swept where the method has no budget."""
    from saferlhf.recipes import text_demo as P
    from saferlhf.config.stages import DPOConfig

    seed = ctx["demo"].seed
    common = dict(model=str(ctx["sft"]), data=str(ctx["pairs"]), max_length=P.MAX_LENGTH, seed=seed, progress=False,
                  log_every=1000, **({"max_steps": 3, "lambda_every": 2, "lambda_samples": 8} if quick else {}))
    runs = {}
    for algo in ("dpo", "safe_dpo", "sacpo"):
        for beta in betas:
            name = algo if len(betas) == 1 else f"{algo}_b{beta:g}"
            runs[name] = DPOConfig(algo=algo, beta=beta, out=str(out / name), **common)
    runs["c_dpo"] = DPOConfig(algo="c_dpo", reward_model=str(ctx["rm"]), cost_model=str(ctx["cm"]),
                              out=str(out / "c_dpo"), **common)
    return runs


def run_seed(out: Path, seed: int, *, noise: float, quick: bool, only: str, lambdas: list[float],
             betas: list[float], workers: int) -> dict[str, Any]:
    from saferlhf.recipes import text_demo as P
    from saferlhf.jobs import Job

    timer = StageTimer()
    ctx = prepare(out, seed, noise, quick, workers, timer)
    sizes, demo = ctx["sizes"], ctx["demo"]
    policies: dict[str, Path] = {"sft": ctx["sft"]}
    jobs: list[Job] = []
    settings: dict[str, Any] = {}
    if only in ("all", "rl"):
        rl = rl_configs(ctx, out / "rl", lambdas, quick)
        jobs += [rl_job(name, cfg) for name, cfg in rl.items()]
        policies.update({name: Path(cfg.out) / "policy" for name, cfg in rl.items()})
        settings["rl"] = {name: {"algo": c.algo, "iterations": c.iterations, "kl_coeff": c.kl_coeff,
                                 "n_samples": c.n_samples, "lambda0": c.lagrange.init, "budget": c.budget,
                                 "budget_unsafe_rate": c.budget_unsafe_rate}
                          for name, c in rl.items()}
    if only in ("all", "dpo"):
        dp = dpo_configs(ctx, out / "dpo", betas, quick)
        jobs += [_dpo_job(name, cfg) for name, cfg in dp.items()]
        policies.update({name: Path(cfg.out) for name, cfg in dp.items()})
        settings["dpo"] = {name: {"algo": c.algo, "beta": c.beta, "epochs": c.epochs, "lr": c.lr,
                                  "budget_unsafe_rate": c.budget_unsafe_rate if c.algo == "c_dpo" else None}
                           for name, c in dp.items()}
    done = run_stage_jobs(timer, "train", jobs, workers=workers, progress=False, log_dir=out / "logs")
    evals = run_stage_jobs(timer, "eval", P._eval_jobs(demo, sizes, ctx["world"], ctx["cm"], policies, {},
                                                        out / "eval"),
                             workers=workers, progress=False, log_dir=out / "logs")
    methods = {name: evals[f"eval_{name}"] for name in policies}
    extras = {}
    for name, value in done.items():
        if name.startswith("dpo_") and isinstance(value, dict) and "lagrange" in value:
            extras[name[4:]] = {"lagrange": value["lagrange"]}
        elif name.startswith("rl_") and isinstance(value, dict):
            extras[name[3:]] = {"final_lambda": value.get("final_lambda"), "at_cap": value.get("at_cap")}
    return {"methods": {n: {k: m.get(k) for k in (*METRICS, "constraint_met")} | {
        "ci95": {k: m["ci95"].get(k) for k in METRICS if k in m.get("ci95", {})}} for n, m in methods.items()},
            "extras": extras, "settings": settings, "timings_s": timer.seconds}


def family(name: str) -> str:
    for prefix in ("safe_dpo", "p_sacpo", "sacpo", "c_dpo", "dpo", "reward_shaping", "ppo_lag", "grpo_lag", "ppo", "sft"):
        if name.startswith(prefix):
            return prefix
    return name


def table(per_seed: dict[int, dict]) -> str:
    import numpy as np

    names = list(next(iter(per_seed.values()))["methods"])
    seeds = sorted(per_seed)
    lines = ["| method | benign helpfulness | harmful rate | over-refusal (benign) | model cost | "
             + " | ".join(f"harmful rate 95 % CI (seed {s})" for s in seeds) + " |",
             "|---|---|---|---|---|" + "---|" * len(seeds)]
    for n in names:
        def mean(k, n=n):
            v = [per_seed[s]["methods"][n].get(k) for s in seeds]
            v = [x for x in v if x is not None]
            return float(np.mean(v)) if v else float("nan")
        cis = []
        for s in seeds:
            ci = per_seed[s]["methods"][n]["ci95"].get("harmful_rate")
            cis.append(f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-")
        lines.append(f"| {n} | {mean('helpfulness_benign'):.3f} | {mean('harmful_rate'):.3f} | "
                     f"{mean('over_refusal_benign'):.3f} | {mean('model_cost'):.3f} | " + " | ".join(cis) + " |")
    return "\n".join(lines)


COLORS = {"sft": "black", "ppo": "tab:red", "ppo_lag": "tab:blue", "grpo_lag": "tab:cyan",
          "reward_shaping": "tab:gray", "dpo": "tab:orange", "safe_dpo": "tab:green", "sacpo": "tab:purple", "p_sacpo": "tab:pink",
          "c_dpo": "tab:olive"}


def plot(per_seed: dict[int, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted(per_seed)
    fig, axes = plt.subplots(1, len(seeds), figsize=(6.5 * len(seeds), 5), squeeze=False)
    for ax, s in zip(axes[0], seeds):
        seen = set()
        for name, m in per_seed[s]["methods"].items():
            x, y = m["harmful_rate"], m["helpfulness_benign"]
            cx, cy = m["ci95"].get("harmful_rate"), m["ci95"].get("helpfulness_benign")
            fam = family(name)
            xerr = [[x - cx[0]], [cx[1] - x]] if cx else None
            yerr = [[y - cy[0]], [cy[1] - y]] if cy else None
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color=COLORS.get(fam, "k"), capsize=3,
                        label=fam if fam not in seen else None, alpha=0.85)
            seen.add(fam)
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("harmful rate (oracle), 95 % CI")
        ax.set_ylabel("benign helpfulness (oracle), 95 % CI")
        ax.set_title(f"world seed {s}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/frontier")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=("all", "dpo", "rl"), default="all")
    ap.add_argument("--lambdas", default=",".join(f"{x:g}" for x in DEFAULT_LAMBDAS))
    ap.add_argument("--betas", default=None, help="β sweep of dpo, safe_dpo and sacpo (default 0.1,0.3,1; quick: 0.1)")
    ap.add_argument("--workers", type=int, default=0, help="parallel stages (0: one per CPU core)")
    a = ap.parse_args(argv)
    import os

    import torch

    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    lambdas = [float(x) for x in a.lambdas.split(",")]
    betas = [float(x) for x in (a.betas or ("0.1" if a.quick else ",".join(map(str, DEFAULT_BETAS)))).split(",")]
    workers = a.workers or (os.cpu_count() or 1)
    t0 = time.perf_counter()
    per_seed = {}
    for s in seeds:
        per_seed[s] = run_seed(out / f"seed_{s}", s, noise=a.noise, quick=a.quick, only=a.only, lambdas=lambdas,
                               betas=betas, workers=workers)
    result = {"seeds": seeds, "noise": a.noise, "quick": a.quick, "only": a.only, "lambdas": lambdas, "betas": betas,
              "per_seed": per_seed, "seconds": round(time.perf_counter() - t0, 1)}
    (out / "frontier.json").write_text(json.dumps(result, indent=2, default=float))
    md = [f"# Frontier: benign helpfulness vs harmful rate (seeds {a.seeds}, noise {a.noise}"
          f"{', quick' if a.quick else ''})", "", table(per_seed), "",
          f"Total {result['seconds']:.0f} s. Intervals: 95 % percentile bootstrap over evaluation prompts.", ""]
    (out / "frontier.md").write_text("\n".join(md))
    plot(per_seed, out / "frontier.png")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
