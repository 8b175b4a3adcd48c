"""The end-to-end recipe behind ``saferlhf demo`` (and ``make demo``).

In the verifiable world, in one process: generate the world → SFT a tiny LM from scratch →
reward and cost models → ``ppo``, ``ppo_lag`` and ``reward_shaping`` at several fixed λ₀, all
from the same SFT policy with the same β, iterations and batch → ground-truth evaluation of
every policy → ``report.json``, ``report.md`` and PNG plots. With ``--rounds N`` the Safe
RLHF loop of the paper runs N times: after each PPO-Lag run new response pairs are sampled
from the latest policy, labelled by the oracles with annotator noise, the cost and reward
models are retrained on the grown data, and PPO-Lag continues from the latest policy.

Every number in the report is computed from generated samples; nothing is hard-coded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saferlhf.config.stages import CostModelConfig, DemoConfig, EvalScoreModelConfig, RewardModelConfig
from saferlhf.config.stages import DEFAULT_UNSAFE_RATE, RATE_LAGRANGE, RLConfig, SFTConfig
from saferlhf.jobs import Job
from saferlhf.recipes.common import DemoRun, Sizes, cm_keys, eval_policy, rl_job, rm_keys, train_rl
from saferlhf.recipes.common import train_and_eval_score_model


@dataclass(frozen=True)
class DemoSizes(Sizes):
    """Sizes of one demo run (``FULL`` for ``make demo``, ``QUICK`` for the test suite)."""

    new_pairs_per_round: int
    guard_steps: int


FULL = DemoSizes(n_sft=4000, n_pairs_train=4000, n_pairs_eval=1000, n_prompts_train=2000,
                 n_eval_benign=600, n_eval_harmful=600, sft_epochs=4, score_epochs=4,
                 rl_iterations=120, rollout_batch_size=64, mini_batch_size=32,
                 new_pairs_per_round=2000, n_boot=1000, guard_steps=240)
QUICK = DemoSizes(n_sft=1200, n_pairs_train=1200, n_pairs_eval=300, n_prompts_train=400,
                  n_eval_benign=120, n_eval_harmful=120, sft_epochs=2, score_epochs=1,
                  rl_iterations=6, rollout_batch_size=32, mini_batch_size=32,
                  new_pairs_per_round=300, n_boot=200, guard_steps=40)

# RL settings shared by every method of the demo (the same β, iterations and batch for all:
# comparisons with different β would confound the methods, as in safe-rlhf's scripts).
DEMO_RL = dict(temperature=1.0, max_new_tokens=32, kl_coeff=0.1, actor_lr=5e-5, critic_lr=5e-4,
               ppo_epochs=1, clip_score=10.0)
# The multiplier: the library's default for the unsafe-rate form (shared with the image demo);
# with --budget d (raw mean cost, the paper's form) the projected rule measured for raw costs
# (docs/demo.md: η = 1 reacts fast enough to hold d within 120 iterations).
DEMO_LAGRANGE = dict(RATE_LAGRANGE)
MEAN_COST_LAGRANGE = dict(rule="projected", init=1.0, lr=1.0, max_lambda=5.0, window=128)
# Cost model: pairs whose two responses are both labelled safe are not ranked
# (saferlhf.losses.safe_pair_rank_mask). The annotators call the more cautious of two safe
# answers the safer one, so with them the cost model prices caution among safe answers and any
# multiplier that stops harmful answers also buys refusals of benign requests (docs/demo.md).
DEMO_COST_MODEL = {"rank_safe_pairs": False}
# Score models: 16 pairs per step for 4 epochs (1000 steps on 4000 pairs). Measured on seed 0:
# with 32 pairs x 3 epochs the reward model let another topic's complete answer outscore the
# right one on 30 % of benign prompts (RL then answers every prompt with it); with 16 x 4 on 7 %
# (oracle agreement 0.86 -> 0.90).
SCORE_BATCH = 16
# PPO-Lag with d = the SFT policy's mean learned cost: in this world a mean-cost budget of 0
# does not bind (docs/demo.md "Why d = 0 is slack"), so the demo also runs this one
SFT_BUDGET_RUN = "ppo_lag_sft_budget"
# share of harmful requests among the RL training prompts (the evaluation sets stay 50/50)
DEMO_HARMFUL_FRACTION = 0.5
MAX_LENGTH = 64  # prompt (<= 16 tokens) + response (<= 32) + EOS, with room to spare


@dataclass(frozen=True)
class Constraint:
    """The demo's constraint: a maximum unsafe rate q (the default) or a raw mean-cost budget d."""

    unsafe_rate: float | None
    mean_cost: float | None

    @classmethod
    def of(cls, cfg: DemoConfig) -> Constraint:
        if cfg.budget_unsafe_rate is not None and cfg.budget is not None:
            from saferlhf.config import ConfigError

            raise ConfigError("give --budget-unsafe-rate q (a share of unsafe responses) or --budget d (a mean "
                              "cost, the paper's form), not both")
        if cfg.budget is not None:
            return cls(None, float(cfg.budget))
        return cls(float(cfg.budget_unsafe_rate if cfg.budget_unsafe_rate is not None else DEFAULT_UNSAFE_RATE), None)

    @property
    def budget(self) -> float:
        """d in the units of the episode cost: q for the unsafe-rate form."""
        return self.unsafe_rate if self.unsafe_rate is not None else self.mean_cost

    @property
    def cost_transform(self) -> str:
        return "calibrated" if self.unsafe_rate is not None else "identity"

    @property
    def lagrange(self) -> dict[str, Any]:
        return dict(DEMO_LAGRANGE if self.unsafe_rate is not None else MEAN_COST_LAGRANGE)

    def rl_keys(self, budget: float | None = None) -> dict[str, Any]:
        """The RLConfig keys of this constraint (``budget``: another raw d, e.g. the SFT policy's)."""
        if budget is not None or self.unsafe_rate is None:
            return {"budget": self.budget if budget is None else budget, "cost_transform": "identity"}
        return {"budget_unsafe_rate": self.unsafe_rate}


def _rl_config(cfg: DemoConfig, sizes: DemoSizes, *, algo: str, policy: Path, rm: Path, cm: Path,
               prompts: Path, out: Path, lam0: float | None = None, budget: float | None = None) -> RLConfig:
    from saferlhf.config import from_dict

    con = Constraint.of(cfg)
    lag = con.lagrange if budget is None else dict(MEAN_COST_LAGRANGE)
    if lam0 is not None:
        lag.update(init=lam0, rule="fixed")
    d = dict(DEMO_RL, algo=algo, policy=str(policy), reward_model=str(rm), cost_model=str(cm),
             prompts=str(prompts), out=str(out), **con.rl_keys(budget),
             iterations=cfg.rl_iterations or sizes.rl_iterations,
             rollout_batch_size=sizes.rollout_batch_size, mini_batch_size=sizes.mini_batch_size,
             seed=cfg.seed, progress=cfg.progress, log_every=20, lagrange=lag)
    return from_dict(RLConfig, d)


def _eval_policy(path: Path, world_dir: Path, cm: Path, budget: float, n_boot: int, seed: int,
                 out: Path, cost_transform: str = "identity") -> dict[str, Any]:
    return eval_policy(path, world_dir, cm, budget, n_boot, seed, out, max_new_tokens=DEMO_RL["max_new_tokens"],
                       cost_transform=cost_transform)


def _score_model_jobs(cfg: DemoConfig, sizes: DemoSizes, out: Path, sft: Path, pairs: Path, eval_pairs: Path,
                      tag: str = "") -> list[Job]:
    common = dict(model=str(sft), data=str(pairs), max_length=MAX_LENGTH, batch_size=SCORE_BATCH,
                  epochs=sizes.score_epochs, seed=cfg.seed, progress=cfg.progress, log_every=50)
    jobs, steps = [], _score_steps(sizes, pairs)
    for kind, cls in (("reward", RewardModelConfig), ("cost", CostModelConfig)):
        dst = out / f"{kind}_model{tag}"
        extra = dict(DEMO_COST_MODEL, calibration_data=str(eval_pairs)) if kind == "cost" else {}
        train_cfg = cls(out=str(dst), **common, **extra)
        eval_cfg = EvalScoreModelConfig(model=str(dst), data=str(eval_pairs), out=str(out / f"{kind}_model{tag}_eval"),
                                        max_length=MAX_LENGTH)
        jobs.append(Job(f"{kind}_model{tag}", train_and_eval_score_model,
                        dict(kind=kind, train_cfg=train_cfg, eval_cfg=eval_cfg),
                        total=steps, metrics=dst / "metrics.jsonl"))
    return jobs


def _score_steps(sizes: DemoSizes, pairs: Path) -> int:
    with open(pairs, "rb") as fh:
        n = sum(1 for _ in fh)
    return max(1, int(n * sizes.score_epochs) // SCORE_BATCH)


def _eval_jobs(cfg: DemoConfig, sizes: DemoSizes, world_dir: Path, cm: Path, policies: dict[str, Path],
               budgets: dict[str, float], out: Path) -> list[Job]:
    """Every policy against the oracles; ``model_cost`` in the units of the demo's constraint
    (the SFT-mean run, in raw costs, is judged by its own d on the raw scale)."""
    con = Constraint.of(cfg)

    def units(name: str) -> tuple[float, str]:
        if name == SFT_BUDGET_RUN:
            return budgets[name], "identity"
        return con.budget, con.cost_transform

    return [Job(f"eval_{name}", _eval_policy, dict(path=path, world_dir=world_dir, cm=cm, budget=units(name)[0],
                                                   n_boot=sizes.n_boot, seed=cfg.seed, out=out / name,
                                                   cost_transform=units(name)[1]))
            for name, path in policies.items()]


def _sft_mean_cost(cfg: DemoConfig, sft: Path, cm: Path, prompts: Path, out: Path) -> dict[str, Any]:
    """The cost model's distribution on SFT samples (``saferlhf budget``): its mean is the
    budget of ``ppo_lag_sft_budget`` ("no more expected cost than the SFT policy")."""
    import contextlib
    import io

    from saferlhf.budget import run_budget
    from saferlhf.config.stages import BudgetConfig

    with contextlib.redirect_stdout(io.StringIO()):  # run_budget prints its JSON; it is in the report
        return run_budget(BudgetConfig(policy=str(sft), cost_model=str(cm), prompts=str(prompts), out=str(out),
                                       max_prompts=512, max_new_tokens=DEMO_RL["max_new_tokens"], seed=cfg.seed))


def _new_round_pairs(world_dir: Path, policy: Path, n: int, noise: float, seed: int, dst: Path) -> int:
    """Sample 2 responses per train prompt from ``policy``, label them with the oracles + noise."""
    from saferlhf.data.world import World
    from saferlhf.data.world.generate import label_pair
    from saferlhf.eval.samplers import PolicySampler

    world = World.load(world_dir)
    rng = random.Random(f"round-{seed}")
    prompts = [rng.choice(world.train_prompts) for _ in range(n)]
    p = prompts if all(isinstance(x, str) for x in prompts) else [x["prompt"] for x in prompts]
    a = PolicySampler(policy, seed=seed * 2 + 1, max_new_tokens=DEMO_RL["max_new_tokens"]).sample(p)
    b = PolicySampler(policy, seed=seed * 2 + 2, max_new_tokens=DEMO_RL["max_new_tokens"]).sample(p)
    noise_rng = random.Random(f"round-noise-{seed}")
    records = [label_pair(world, q, (x, y), ("policy", "policy"), rng, noise_rng, noise)
               for q, x, y in zip(p, a, b) if x != y]
    with dst.open("a") as fh:
        for r in records:
            fh.write(json.dumps(r, sort_keys=True) + "\n")
    return len(records)


@dataclass
class _Stage:
    """What the stages of one text demo run share: the config, sizes, run and the world's paths."""

    cfg: DemoConfig
    sizes: DemoSizes
    run: DemoRun

    @property
    def out(self) -> Path:
        return self.run.out

    @property
    def world_dir(self) -> Path:
        return self.run.out / "world"

    @property
    def prompts(self) -> Path:
        return self.world_dir / "prompts_train.jsonl"


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    if cfg.modality == "image-text":
        from saferlhf.recipes.image_demo import run_image_demo

        return run_image_demo(cfg)
    torch.set_num_threads(max(1, cfg.threads))
    sizes = QUICK if cfg.quick else FULL
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    st = _Stage(cfg, sizes, DemoRun(out, cfg.workers or (os.cpu_count() or 1), cfg.progress))

    sft, pairs = _world_and_sft(st)
    eval_pairs = st.world_dir / "pairs_eval.jsonl"
    scores, guard_summary = _score_models_and_guard(st, sft, pairs, eval_pairs)
    cm = out / "cost_model"
    budgets, sft_costs = _budgets(st, sft, cm)
    histories, methods, policies = _rl_and_eval(st, sft, out / "reward_model", cm, budgets)
    rounds = _rounds(st, sft, pairs, eval_pairs, cm, scores, budgets, policies, methods, histories)

    report = _text_report(st, scores, methods, budgets, histories)
    if sft_costs is not None:
        report["sft_cost"] = {k: sft_costs.get(k) for k in ("n", "mean", "std", "unsafe_rate", "quantiles")}
    if guard_summary is not None:
        report["guard"] = _guard_keys(guard_summary)
    if rounds:
        report["rounds"] = rounds
    return _write(st, report, histories)


def _world_and_sft(st: _Stage) -> tuple[Path, Path]:
    """Generate the world, SFT the tiny LM; returns the SFT policy and the (growing) pair file."""
    from saferlhf.data.world import generate_world
    from saferlhf.trainers.sft import run_sft

    cfg, sizes, timer, world_dir = st.cfg, st.sizes, st.run.timer, st.world_dir
    with timer("world"):
        generate_world(world_dir, seed=cfg.seed, noise=cfg.noise, n_sft=sizes.n_sft,
                       n_pairs_train=sizes.n_pairs_train, n_pairs_eval=sizes.n_pairs_eval,
                       n_prompts_train=sizes.n_prompts_train, n_eval_benign=sizes.n_eval_benign,
                       n_eval_harmful=sizes.n_eval_harmful, harmful_fraction=DEMO_HARMFUL_FRACTION)
    with timer("sft"):
        sft = st.out / "sft"
        run_sft(SFTConfig(data=str(world_dir / "sft.jsonl"), tokenizer=str(world_dir / "tokenizer"),
                          model="tiny", out=str(sft), epochs=sizes.sft_epochs, batch_size=32, lr=2e-3,
                          max_length=MAX_LENGTH, seed=cfg.seed, progress=cfg.progress, log_every=100))
    pairs = st.out / "pairs_all.jsonl"
    pairs.write_bytes((world_dir / "pairs_train.jsonl").read_bytes())
    return sft, pairs


def _score_models_and_guard(st: _Stage, sft: Path, pairs: Path, eval_pairs: Path
                            ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Reward and cost models (and the guard stage): they only need the world and the SFT policy."""
    cfg, sizes = st.cfg, st.sizes
    jobs = _score_model_jobs(cfg, sizes, st.out, sft, pairs, eval_pairs)
    if cfg.guard:
        from saferlhf.recipes.guard_stage import run_guard_stage

        jobs.append(Job("guard", run_guard_stage, dict(world_dir=st.world_dir, policy_dir=sft, out_dir=st.out / "guard",
                                                   steps=sizes.guard_steps, seed=cfg.seed, n_boot=sizes.n_boot)))
    done = st.run.parallel("score_models_and_guard" if cfg.guard else "score_models", jobs)
    return {"reward": done["reward_model"], "cost": done["cost_model"]}, done.get("guard")


def _budgets(st: _Stage, sft: Path, cm: Path) -> tuple[dict[str, float], dict[str, Any] | None]:
    """d of each PPO-Lag run: q (or ``--budget``), and with ``sft_budget`` the SFT policy's mean raw cost."""
    budgets = {"ppo_lag": Constraint.of(st.cfg).budget}
    sft_costs = None
    if st.cfg.sft_budget:
        with st.run.timer("sft_cost"):
            sft_costs = _sft_mean_cost(st.cfg, sft, cm, st.prompts, st.out / "sft_cost")
        budgets[SFT_BUDGET_RUN] = round(float(sft_costs["mean"]), 4)
    return budgets, sft_costs


def _rl_and_eval(st: _Stage, sft: Path, rm: Path, cm: Path, budgets: dict[str, float]
                 ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Path]]:
    """Every RL method from the SFT policy, then the world evaluation of every policy."""
    cfg, out = st.cfg, st.out
    # (name, algo, fixed λ₀, budget); the two PPO-Lag runs first: they take longest
    runs = [("ppo_lag", "ppo_lag", None, None)]
    if cfg.sft_budget:
        runs.append((SFT_BUDGET_RUN, "ppo_lag", None, budgets[SFT_BUDGET_RUN]))
    runs.append(("ppo", "ppo", None, None))
    runs += [(f"reward_shaping_{lam:g}", "reward_shaping", lam, None) for lam in cfg.shaping_lambdas]
    rl_jobs = [rl_job(name, _rl_config(cfg, st.sizes, algo=algo, policy=sft, rm=rm, cm=cm, prompts=st.prompts,
                                       out=out / "rl" / name, lam0=lam0, budget=d)) for name, algo, lam0, d in runs]
    done = st.run.parallel("rl", rl_jobs)
    order = ["ppo", "ppo_lag"] + [r[0] for r in runs if r[0] not in ("ppo", "ppo_lag")]
    histories: dict[str, Any] = {name: done[f"rl_{name}"] for name in order}
    policies: dict[str, Path] = {"sft": sft, **{name: out / "rl" / name / "policy" for name in order}}
    done = st.run.parallel("eval_world", _eval_jobs(cfg, st.sizes, st.world_dir, cm, policies, budgets, out / "eval"))
    methods = {name: done[f"eval_{name}"] for name in policies}
    return histories, methods, policies


def _rounds(st: _Stage, sft: Path, pairs: Path, eval_pairs: Path, cm: Path, scores: dict[str, Any],
            budgets: dict[str, float], policies: dict[str, Path], methods: dict[str, Any],
            histories: dict[str, Any]) -> list[dict[str, Any]]:
    """The Safe RLHF loop (``--rounds N``) as in the paper: each round samples fresh response
    pairs from the latest policy on its own draw of training prompts, labels them with the
    world's annotator (with the run's noise), retrains the reward and cost models on the grown
    data (the cost model is recalibrated on the held-out pairs as it is saved), and continues
    PPO-Lag from the latest policy at the same constraint. Each round reports the oracle metrics,
    λ (final and its mean over the last iterations) and the cost model's AUROC on the policy's
    own samples."""
    cfg, out = st.cfg, st.out
    rounds: list[dict[str, Any]] = []
    if cfg.rounds <= 1:
        return rounds
    # With the SFT-relative raw budget, d is measured again with each round's cost model: a
    # retrained cost model has its own scale. The unsafe rate q needs no such step: each
    # round's calibration maps the new scores to the same units.
    base = SFT_BUDGET_RUN if cfg.sft_budget else "ppo_lag"
    rounds.append(_round_entry(1, base, budgets[base], scores, methods[base], histories[base]))
    policy = policies[base]
    for k in range(2, cfg.rounds + 1):
        with st.run.timer(f"round{k}_pairs"):
            added = _new_round_pairs(st.world_dir, policy, st.sizes.new_pairs_per_round, cfg.noise,
                                     cfg.seed * 100 + k, pairs)
        done = st.run.parallel(f"round{k}_score_models",
                               _score_model_jobs(cfg, st.sizes, out, sft, pairs, eval_pairs, tag=f"_round{k}"))
        round_scores = {"reward": done[f"reward_model_round{k}"], "cost": done[f"cost_model_round{k}"]}
        rm_k, cm_k = out / f"reward_model_round{k}", out / f"cost_model_round{k}"
        raw_budget = None
        if cfg.sft_budget:
            with st.run.timer(f"round{k}_sft_cost"):
                costs = _sft_mean_cost(cfg, sft, cm_k, st.prompts, out / f"sft_cost_round{k}")
                raw_budget = round(float(costs["mean"]), 4)
        name = f"ppo_lag_round{k}"
        with st.run.timer(f"rl_{name}"):
            histories[name] = train_rl(_rl_config(cfg, st.sizes, algo="ppo_lag", policy=policy, rm=rm_k, cm=cm_k,
                                                  prompts=st.prompts, out=out / "rl" / name, budget=raw_budget))
        policy = out / "rl" / name / "policy"
        con = Constraint.of(cfg)
        round_budget = con.budget if raw_budget is None else raw_budget
        with st.run.timer(f"round{k}_eval"):
            m = _eval_policy(policy, st.world_dir, cm_k, round_budget, st.sizes.n_boot, cfg.seed, out / "eval" / name,
                             cost_transform=con.cost_transform if raw_budget is None else "identity")
        rounds.append({**_round_entry(k, base, round_budget, round_scores, m, histories[name]), "new_pairs": added})
    return rounds


def _round_entry(k: int, method: str, budget: float, scores: dict[str, Any], metrics: dict[str, Any],
                 history: dict[str, Any]) -> dict[str, Any]:
    constraint = history.get("constraint") or {}
    return {"round": k, "method": method, "budget": budget,
            "cost_model": cm_keys(scores["cost"]), "reward_model": rm_keys(scores["reward"]),
            "calibration": constraint.get("calibration"),
            "lambda": history["final_lambda"], "lambda_mean_last": constraint.get("lambda_mean_last"),
            "cost_model_auroc_policy": metrics.get("model_auroc"), "ppo_lag": metrics}


def _text_report(st: _Stage, scores: dict[str, Any], methods: dict[str, Any], budgets: dict[str, float],
                 histories: dict[str, Any]) -> dict[str, Any]:
    cfg, sizes = st.cfg, st.sizes
    con = Constraint.of(cfg)
    lag = con.lagrange

    def lam(h: dict[str, Any], name: str) -> dict[str, Any]:
        c = h.get("constraint") or {}
        # the demo evaluates the last iterate; λ's mean over the last iterations says whether
        # that snapshot was taken mid-swing
        return {"final_lambda": h["final_lambda"], "at_cap": h["at_cap"], "budget": budgets[name],
                "lambda_mean_last": c.get("lambda_mean_last"), "J_C_mean_last": c.get("J_C_mean_last"),
                "unsafe_rate_mean_last": c.get("unsafe_rate_mean_last"),
                "last_iterations": c.get("last_iterations")}

    return {
        "seed": cfg.seed, "noise": cfg.noise, "budget": con.budget, "quick": cfg.quick,
        "constraint": {"form": "unsafe_rate" if con.unsafe_rate is not None else "mean_cost",
                       "budget_unsafe_rate": con.unsafe_rate, "mean_cost_budget": con.mean_cost,
                       "cost_transform": con.cost_transform,
                       "policy_selection": "last iterate (lagrange.by_method.*.lambda_mean_last: λ's mean over "
                                           "the last iterations)"},
        "reward_model": rm_keys(scores["reward"]),
        "cost_model": cm_keys(scores["cost"]),
        "methods": methods,
        "budgets": budgets,
        "lagrange": {**lam(histories["ppo_lag"], "ppo_lag"), "max_lambda": lag["max_lambda"], "rule": lag["rule"],
                     "by_method": {name: lam(h, name) for name, h in histories.items() if name in budgets}},
        "rl_settings": {**DEMO_RL, "iterations": cfg.rl_iterations or sizes.rl_iterations,
                        "rollout_batch_size": sizes.rollout_batch_size, "lagrange": lag,
                        "cost_model": DEMO_COST_MODEL},
        "workers": st.run.workers,
        "timings_s": st.run.timer.seconds,
    }


def _write(st: _Stage, report: dict[str, Any], histories: dict[str, Any]) -> dict[str, Any]:
    from saferlhf.eval.report import write_report

    report["timings_s"]["total"] = round(time.perf_counter() - st.run.timer.started, 2)
    write_report(report, {k: v["history"] for k, v in histories.items()}, st.out)
    (st.out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _guard_keys(s: dict[str, Any]) -> dict[str, Any]:
    return {k: s.get(k) for k in ("f1", "severity_macro_accuracy", "rounds", "helpfulness_benign_rounds",
                                  "after_fallback", "severity_threshold", "fallback_rate", "flagged_rate",
                                  "guard_eval")}


def run_demo_cli(cfg: DemoConfig) -> int:
    report = run_demo(cfg)
    from saferlhf.eval.report import print_summary

    print_summary(report)
    print(f"\nreport: {Path(cfg.out) / 'report.md'}")
    return 0


__all__ = ["DemoSizes", "FULL", "QUICK", "run_demo"]
