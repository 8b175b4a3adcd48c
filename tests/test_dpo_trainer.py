"""The DPO-family trainer learns on a tiny world (saferlhf.trainers.preference).

One small world (the 13-topic world of tests/test_score_trainers.py, noise 0.05) and one SFT
policy (60 steps) are shared by every test. From that SFT policy each algorithm trains for a
few dozen steps; the tests check that it *learns* (the loss falls, the chosen-reward margin
rises) and, against the world's oracles, that the safety-aware methods end with a lower
harmful rate than helpfulness-only DPO. ``c_dpo`` runs here with the world's oracles as its
reward and cost "models" (helpfulness h, and P(unsafe) = 1[harm c* > 0]), so the test checks the
primal-dual mechanics without training two score models; the CLI test runs it with trained ones
in benchmarks/frontier.py --quick.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from saferlhf.config.lagrange import LagrangeConfig
import torch

from saferlhf.config.stages import DPOConfig
from saferlhf.trainers.preference import DPOTrainer

TOPICS = {"benign": 6, "harmful": 5, "dual_use": 2}
SIZES = {"n_sft": 800, "n_pairs_train": 1200, "n_pairs_eval": 100, "n_prompts_train": 40,
         "n_eval_benign": 80, "n_eval_harmful": 80}
STEPS = 40


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from saferlhf.config.stages import SFTConfig
    from saferlhf.data.world import World, generate_world
    from saferlhf.data.world.language import default_spec
    from saferlhf.trainers.sft import run_sft

    root = tmp_path_factory.mktemp("dpo_world")
    spec = default_spec()
    left = dict(TOPICS)
    topics = []
    for t in spec["topics"]:
        if left[t["kind"]] > 0:
            topics.append(t)
            left[t["kind"]] -= 1
    spec["topics"] = topics
    mix = {kind: {t: w for t, w in m.items() if t != "off_topic"} for kind, m in spec["response_mix"].items()}
    spec["contrast_pairs"]["fraction"] = 0.0
    generate_world(root / "world", seed=7, noise=0.05, spec=spec, mix=mix, **SIZES)
    run_sft(SFTConfig(data=str(root / "world" / "sft.jsonl"), tokenizer=str(root / "world" / "tokenizer"),
                      model="tiny", out=str(root / "sft"), max_steps=60, batch_size=32, lr=2e-3, max_length=64,
                      progress=False, log_every=1000))
    return {"root": root, "world": World.load(root / "world"), "sft": root / "sft",
            "pairs": root / "world" / "pairs_train.jsonl"}


def _cfg(world, name: str, **kw) -> DPOConfig:
    base = dict(model=str(world["sft"]), data=str(world["pairs"]), out=str(world["root"] / name), max_steps=STEPS,
                batch_size=16, max_length=64, progress=False, log_every=1000)
    return DPOConfig(**{**base, **kw})


def _oracles(world):
    w = world["world"]
    reward = lambda ps, rs: np.array([w.helpfulness(p, r) for p, r in zip(ps, rs)])
    # P(unsafe) of the oracle: 1 when the world's harm c* > 0 (the unsafe-rate form's units)
    cost = lambda ps, rs: np.array([float(w.harm(p, r) > 0) for p, r in zip(ps, rs)])
    return reward, cost


def _harmful_rate(world, policy_dir) -> float:
    from saferlhf.eval.samplers import PolicySampler
    from saferlhf.eval.world_eval import evaluate_world_policy

    m = evaluate_world_policy(PolicySampler(policy_dir, seed=0), world["world"], n_boot=10)
    return m["harmful_rate"]


def _train(world, name: str, **kw) -> tuple[dict, list[dict]]:
    cfg = _cfg(world, name, **kw)
    extra = {}
    if cfg.algo == "c_dpo":
        extra["reward_model"], extra["cost_model"] = _oracles(world)
    trainer = DPOTrainer(cfg, **extra)
    summary = trainer.train()
    trainer.save_model(cfg.out)
    lines = [json.loads(x) for x in (world["root"] / name / "metrics.jsonl").read_text().splitlines()]
    return summary, lines


def _mean(lines, key, sl):
    vals = [x[key] for x in lines[sl] if key in x]
    return sum(vals) / len(vals)


def _learns(lines):
    assert _mean(lines, "loss", slice(-10, None)) < _mean(lines, "loss", slice(0, 5)) - 0.02, "loss did not fall"
    assert _mean(lines, "rewards/margins", slice(-10, None)) > _mean(lines, "rewards/margins", slice(0, 5)) + 0.05
    assert _mean(lines, "rewards/margins", slice(-10, None)) > 0


@pytest.fixture(scope="module")
def dpo_run(world):
    summary, lines = _train(world, "dpo", algo="dpo")
    return summary, lines, _harmful_rate(world, world["root"] / "dpo")


def test_dpo_learns_and_writes_a_policy(world, dpo_run):
    summary, lines, _ = dpo_run
    _learns(lines)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert key in lines[-1]
    assert (world["root"] / "dpo" / "COMPLETE").is_file()
    assert (world["root"] / "dpo" / "config.json").is_file() and (world["root"] / "dpo" / "saferlhf.json").is_file()
    assert summary["steps"] == STEPS and json.loads((world["root"] / "dpo" / "summary.json").read_text())["steps"] == STEPS
    # noise 0.05: some pairs have contradictory labels; they are skipped and counted
    assert summary["skipped"].get("contradictory_labels", 0) > 0


def test_safe_dpo_learns_and_is_less_harmful_than_dpo(world, dpo_run):
    summary, lines = _train(world, "safe_dpo", algo="safe_dpo")
    _learns(lines)
    assert summary["final"]["reordered"] > 0  # some unsafe winners were swapped
    harm = _harmful_rate(world, world["root"] / "safe_dpo")
    assert harm < dpo_run[2], (harm, dpo_run[2])


def test_c_dpo_learns_moves_lambda_and_is_less_harmful_than_dpo(world, dpo_run):
    _, lines = _train(world, "c_dpo", algo="c_dpo", lambda_every=10, lambda_samples=64,
                      budget_unsafe_rate=0.0, lagrange=LagrangeConfig(init=5.0, lr=15.0, max_lambda=20.0))
    _learns(lines)
    lams = [x["lambda"] for x in lines]
    assert max(lams) > 5.0 and "dual/unsafe_rate" in lines[9]  # λ rose: the SFT policy breaks a 0 budget
    harm = _harmful_rate(world, world["root"] / "c_dpo")
    assert harm < dpo_run[2], (harm, dpo_run[2])


def test_c_dpo_rejects_raw_costs_under_the_unsafe_rate_budget(world):
    # the unsafe-rate form constrains P(unsafe): a scorer returning raw costs is a clear error before training
    reward, _ = _oracles(world)
    raw_cost = lambda ps, rs: np.array([world["world"].harm(p, r) for p, r in zip(ps, rs)])
    trainer = DPOTrainer(_cfg(world, "c_dpo_raw", algo="c_dpo"), reward_model=reward, cost_model=raw_cost)
    from saferlhf.config import ConfigError

    with pytest.raises(ConfigError, match="P\\(unsafe\\) in \\[0, 1\\].*--budget d"):
        trainer.train()
    assert not (world["root"] / "c_dpo_raw" / "COMPLETE").exists()


def test_sacpo_two_steps_reference_and_merge(world):
    summary, lines = _train(world, "sacpo", algo="sacpo", max_steps=STEPS // 2, sacpo_merge=0.5)
    assert summary["stage_steps"] == [STEPS // 2, STEPS // 2] and summary["steps"] == STEPS
    assert [x["stage"] for x in lines] == [0.0] * (STEPS // 2) + [1.0] * (STEPS // 2)
    # each step is a fresh DPO run: its implicit rewards start at 0 against its own reference
    first2 = lines[STEPS // 2]
    assert abs(first2["rewards/margins"]) < abs(lines[STEPS // 2 - 1]["rewards/margins"]) + 1e-6
    assert _mean(lines, "loss", slice(-5, None)) < _mean(lines, "loss", slice(STEPS // 2, STEPS // 2 + 3))
    # P-SACPO: the saved policy is halfway between step 1 and step 2
    from saferlhf.models.loading import load_causal_lm

    step1 = load_causal_lm(world["root"] / "sacpo" / "sacpo_step1", dtype="fp32").state_dict()
    merged = load_causal_lm(world["root"] / "sacpo", dtype="fp32").state_dict()
    k = next(n for n, v in step1.items() if v.is_floating_point() and v.dim() == 2)
    assert not torch.allclose(step1[k], merged[k])


def test_resume_is_exact(world):
    full, _ = _train(world, "resume_full", algo="safe_dpo", max_steps=6)
    cfg = _cfg(world, "resume_cut", algo="safe_dpo", max_steps=6, save_every=3)
    DPOTrainer(cfg).train()
    # a run killed after its step-3 checkpoint: drop the final state, continue with --resume
    import shutil

    ckpts = world["root"] / "resume_cut" / "checkpoints"
    assert (ckpts / "step-3" / "COMPLETE").is_file()
    cfg2 = _cfg(world, "resume_cut", algo="safe_dpo", max_steps=6, save_every=3, resume=True)
    lines_before = (world["root"] / "resume_cut" / "metrics.jsonl").read_text().splitlines()
    resumed = DPOTrainer(cfg2).train()
    assert math.isclose(resumed["final"]["loss"], full["final"]["loss"], rel_tol=1e-5)
    assert len((world["root"] / "resume_cut" / "metrics.jsonl").read_text().splitlines()) == len(lines_before)
    shutil.rmtree(ckpts)


def test_bad_pairs_are_skipped_and_counted(world, tmp_path):
    from saferlhf.data.validation import DataError

    good = json.loads(world["pairs"].read_text().splitlines()[0])
    same = dict(good, response_1=good["response_0"])
    contra = dict(good, is_response_0_safe=False, is_response_1_safe=True, safer_response_id=0)
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (good, same, contra, good)) + "\n")
    cfg = DPOConfig(model=str(world["sft"]), data=str(path), out=str(tmp_path / "o"), max_steps=1, batch_size=2,
                    max_length=64, progress=False)
    summary = DPOTrainer(cfg).train()
    assert summary["skipped"] == {"identical_responses": 1, "contradictory_labels": 1}
    assert summary["pairs_used"] == {"better": 2}
    with pytest.raises(DataError, match="identical"):
        DPOTrainer(DPOConfig(**{**cfg.__dict__, "on_bad_record": "error"}))


def test_cli_dpo_then_eval_world(world, tmp_path):
    from saferlhf.cli import main

    out = tmp_path / "cli_dpo"
    assert main(["dpo", "--algo", "safe_dpo", "--model", str(world["sft"]), "--data", str(world["pairs"]),
                 "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--progress", "false"]) == 0
    assert (out / "metrics.jsonl").is_file() and (out / "COMPLETE").is_file()
    assert main(["eval", "world", "--policy", str(out), "--world", str(world["root"] / "world"),
                 "--out", str(tmp_path / "ev"), "--n-boot", "10"]) == 0
    # c_dpo without its score models is a config error (exit 2), before any training
    assert main(["dpo", "--algo", "c_dpo", "--model", str(world["sft"]), "--data", str(world["pairs"]),
                 "--out", str(tmp_path / "c")]) == 2


def test_precomputed_reference_and_lora_reference_match_the_live_ones(world):
    live, _ = _train(world, "ref_live", algo="dpo", max_steps=3)
    pre, _ = _train(world, "ref_pre", algo="dpo", max_steps=3, precompute_ref_logprobs=True)
    assert math.isclose(live["final"]["loss"], pre["final"]["loss"], rel_tol=1e-5)
    trainer = DPOTrainer(_cfg(world, "ref_lora", algo="dpo", max_steps=2, lora_r=4))
    assert trainer.ref.mode == "disabled_adapter" and trainer.ref.extra_parameter_count() == 0
    first = trainer.train()["first"]
    assert abs(first["rewards/margins"]) < 1e-6  # the policy starts equal to its reference
