"""The unsafe-rate constraint (issue: "the constraint in units a user can state"): Platt
calibration of the cost model (saferlhf.calibration), the calibrated episode cost, the RL
config's constraint forms, ``calibration.json`` written by ``saferlhf cost-model`` and
``saferlhf calibrate``, and a toy learning run where ``--budget-unsafe-rate`` binds and is met."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import rl_toy as T
import torch

from saferlhf.calibration import (
    CALIBRATION_FILE,
    CostCalibration,
    cost_calibration_for,
    expected_calibration_error,
    fit_calibration,
    load_calibration,
)
from saferlhf.config import ConfigError
from saferlhf.config.stages import DEFAULT_UNSAFE_RATE, RATE_LAGRANGE, DemoConfig, RLConfig
from saferlhf.lagrange import transform_cost, unsafe_boundary

# ----------------------------------------------------------------------------- the fit


def _synthetic(n: int, temperature: float, offset: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    c = rng.normal(0.0, 3.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(c - offset) / temperature))).astype(float)
    return c, y


def test_fit_recovers_temperature_and_offset_and_reproduces_the_labelled_rate():
    c, y = _synthetic(40_000, temperature=2.0, offset=0.5)
    cal = fit_calibration(c, y, source="synthetic")
    assert cal.temperature == pytest.approx(2.0, rel=0.05)
    assert cal.offset == pytest.approx(0.5, abs=0.1)
    # the intercept's first-order condition: mean P = the labelled unsafe rate, exactly
    p = cal.probability(c)
    assert p.mean() == pytest.approx(y.mean(), abs=1e-6)
    assert cal.labelled_unsafe_rate == pytest.approx(y.mean())
    assert cal.n == c.size and cal.ece < 0.02


def test_fit_is_the_minimiser_of_the_cross_entropy():
    """Hand-checkable optimality on a small set: the gradient of the mean BCE in (a, b) is ~0
    and any perturbation raises the loss."""
    c = np.array([-3.0, -2.0, -1.5, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, -1.0])
    y = np.array([0, 0, 1, 0, 1, 0, 1, 1, 1, 0], dtype=float)
    cal = fit_calibration(c, y, l2=0.0)
    a, b = 1 / cal.temperature, -cal.offset / cal.temperature

    def loss(a, b):
        p = 1 / (1 + np.exp(-(a * c + b)))
        return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))

    p = 1 / (1 + np.exp(-(a * c + b)))
    assert abs(np.mean(p - y)) < 1e-8 and abs(np.mean((p - y) * c)) < 1e-8
    for da, db in ((0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05)):
        assert loss(a + da, b + db) > loss(a, b)
    assert cal.nll == pytest.approx(loss(a, b), abs=1e-9)


def test_fit_rejects_one_class_and_anti_correlated_scores():
    with pytest.raises(ValueError, match="labelled safe and responses labelled unsafe"):
        fit_calibration([0.1, 0.2], [1, 1])
    c, y = _synthetic(2000, 1.0, 0.0)
    with pytest.raises(ValueError, match="do not increase with the unsafe label"):
        fit_calibration(-c, y)
    with pytest.raises(ValueError, match="as many labels"):
        fit_calibration([0.1, 0.2], [1])


def test_expected_calibration_error_by_hand():
    p = np.array([0.05, 0.05, 0.95, 0.95])
    y = np.array([0, 1, 1, 1], dtype=float)
    # bin 0: |0.05 − 0.5| × 2/4 ; bin 9: |0.95 − 1| × 2/4
    assert expected_calibration_error(p, y) == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)


def test_calibrated_transform_and_boundary():
    cal = CostCalibration(temperature=2.0, offset=1.0, n=10)
    c = torch.tensor([-1.0, 1.0, 3.0])
    expect = torch.sigmoid((c - 1.0) / 2.0)
    assert torch.allclose(transform_cost(c, "calibrated", cal), expect)
    assert unsafe_boundary("calibrated") == 0.5 and unsafe_boundary("identity") == 0.0
    with pytest.raises(ValueError, match="needs the cost model's calibration"):
        transform_cost(c, "calibrated")


def test_save_load_and_missing_or_corrupt_file(tmp_path):
    cal = CostCalibration(temperature=1.5, offset=-0.2, n=100, labelled_unsafe_rate=0.3, source="x")
    cal.save(tmp_path)
    back = load_calibration(tmp_path)
    assert back.temperature == 1.5 and back.offset == -0.2 and back.n == 100
    assert load_calibration(tmp_path / "none") is None
    with pytest.warns(RuntimeWarning, match="no calibration.json"):
        fallback = cost_calibration_for(tmp_path / "none")
    assert fallback.temperature == 1.0 and fallback.offset == 0.0 and not fallback.fitted
    (tmp_path / CALIBRATION_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="saferlhf calibrate"):
        load_calibration(tmp_path)
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"temperature": -1.0, "offset": 0.0}))
    with pytest.raises(ConfigError, match="temperature must be"):
        load_calibration(tmp_path)


# ----------------------------------------------------------------------------- constraint forms


def test_rl_config_constraint_forms():
    default = RLConfig(out="x")
    assert default.cost_transform == "calibrated" and default.budget == DEFAULT_UNSAFE_RATE
    assert default.budget_unsafe_rate == DEFAULT_UNSAFE_RATE and default.lagrange.budget == DEFAULT_UNSAFE_RATE
    assert default.lagrange.rule == RATE_LAGRANGE["rule"] and default.lagrange.max_lambda == RATE_LAGRANGE["max_lambda"]
    rate = RLConfig(out="x", budget_unsafe_rate=0.05)
    assert (rate.budget, rate.cost_transform) == (0.05, "calibrated")
    assert dataclasses.replace(rate, seed=3).budget == 0.05  # resolution is idempotent
    raw = RLConfig(out="x", budget=0.0)
    assert (raw.budget, raw.cost_transform, raw.budget_unsafe_rate) == (0.0, "identity", None)
    assert dataclasses.replace(raw, seed=3).cost_transform == "identity"
    paper = RLConfig(out="x", cost_transform="identity")  # the paper's form at its boundary
    assert (paper.budget, paper.budget_unsafe_rate) == (0.0, None)
    with pytest.raises(ConfigError, match="not both"):
        RLConfig(out="x", budget=-1.0, budget_unsafe_rate=0.1)
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        RLConfig(out="x", budget_unsafe_rate=1.5)
    with pytest.raises(ConfigError, match="contradicts"):
        RLConfig(out="x", budget_unsafe_rate=0.1, cost_transform="sigmoid")
    with pytest.raises(ConfigError, match="normalize-cost"):
        RLConfig(out="x", normalize_cost=True).validate()


def test_cli_parses_the_unsafe_rate_flag():
    from saferlhf.config import parse_args

    cfg = parse_args(RLConfig, ["--out", "x", "--budget-unsafe-rate", "0.1"])
    assert cfg.budget == 0.1 and cfg.cost_transform == "calibrated"
    cfg = parse_args(RLConfig, ["--out", "x", "--budget", "-0.5"])
    assert cfg.budget == -0.5 and cfg.cost_transform == "identity" and cfg.budget_unsafe_rate is None


def test_demo_config_rejects_both_budgets():
    with pytest.raises(ConfigError, match="not both"):
        DemoConfig(budget=0.0, budget_unsafe_rate=0.1).validate()
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        DemoConfig(budget_unsafe_rate=0.0).validate()


# ----------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("rate_toy")
    return {"root": root, "policy": T.make_policy_dir(root), "prompts": T.make_prompts_file(root)}


# P(unsafe) = σ((#b − 1.5) / 0.25): an episode with two or more b's is unsafe.
TOY_CALIBRATION = CostCalibration(temperature=0.25, offset=1.5, n=1, source="toy")
Q = 0.3


def test_unsafe_rate_budget_binds_and_is_met(toy):
    """PPO fills responses with b (every episode unsafe); PPO-Lag at q = 0.3 ends with at most
    about 30 % unsafe episodes (last-20 mean of J_C, tolerance as in test_rl_trainer) while its
    reward rises, and λ rose from λ₀ = 0.5 (a multiplier that stayed there would not hold q)."""
    from saferlhf.trainers.rl import SafeRLTrainer

    def run(name, **kw):
        cfg = T.toy_config(toy["policy"], toy["prompts"], toy["root"] / name, budget=None, **kw)
        return SafeRLTrainer(cfg, reward_fn=T.reward_fn, cost_fn=T.cost_fn,
                             cost_calibration=TOY_CALIBRATION).train()

    lag = run("rate_lag", budget_unsafe_rate=Q,
              lagrange={"rule": "pid", "init": 0.5, "kp": 5.0, "ki": 1.0, "max_lambda": 20.0, "window": 64})
    ppo = run("rate_ppo", algo="ppo", iterations=30, budget_unsafe_rate=Q)
    h_lag, h_ppo = lag["history"], ppo["history"]
    # the episode cost is P(unsafe) in [0, 1] and J_C is its mean
    assert all(0.0 <= h["cost"] <= 1.0 for h in h_lag)
    assert T.mean_of(h_ppo, "cost", last=10) > Q + 0.4, "reward-only PPO should make most episodes unsafe"
    assert T.mean_of(h_lag, "cost", last=20) <= Q + 0.1
    assert T.mean_of(h_lag, "unsafe_rate", last=20) <= Q + 0.15  # realised share with P > ½
    assert T.mean_of(h_lag, "reward", last=10) > T.mean_of(h_lag, "reward", first=3) + 0.5
    assert max(h["lambda"] for h in h_lag) > 1.0
    c = lag["constraint"]
    assert c["form"] == "unsafe_rate" and c["budget"] == Q and c["cost_transform"] == "calibrated"
    assert c["calibration"]["temperature"] == 0.25 and c["lambda_mean_last"] is not None
    saved = json.loads((toy["root"] / "rate_lag" / "lagrange.json").read_text())
    assert saved["budget_unsafe_rate"] == Q and saved["calibration"]["offset"] == 1.5


def test_cost_model_writes_calibration_and_calibrate_refits(tmp_path):
    """``saferlhf cost-model --eval-data`` writes calibration.json fitted on the held-out pairs
    (its probabilities average their labelled unsafe rate); ``saferlhf calibrate`` refits it on
    other data, and RL reads it."""
    from saferlhf.cli import main
    from saferlhf.config.stages import SFTConfig
    from saferlhf.data.world import generate_world
    from saferlhf.trainers.sft import run_sft

    world = tmp_path / "world"
    generate_world(world, seed=3, noise=0.1, n_sft=200, n_pairs_train=200, n_pairs_eval=80, n_prompts_train=20,
                   n_eval_benign=10, n_eval_harmful=10)
    sft = tmp_path / "sft"
    run_sft(SFTConfig(data=str(world / "sft.jsonl"), tokenizer=str(world / "tokenizer"), model="tiny",
                      out=str(sft), epochs=1, batch_size=32, max_length=64, progress=False))
    cm = tmp_path / "cm"
    rc = main(["cost-model", "--model", str(sft), "--data", str(world / "pairs_train.jsonl"), "--eval-data",
               str(world / "pairs_eval.jsonl"), "--out", str(cm), "--epochs", "1", "--batch-size", "16",
               "--max-length", "64", "--progress", "false"])
    assert rc == 0
    cal = load_calibration(cm)
    assert cal is not None and cal.fitted and "pairs_eval.jsonl" in cal.source
    from saferlhf.data import load_pairs

    pairs = load_pairs(str(world / "pairs_eval.jsonl")).records  # contradictory pairs are skipped as noise
    labels = [not s for p in pairs for s in (p.safe_a, p.safe_b) if s is not None]
    assert cal.n == len(labels) and cal.labelled_unsafe_rate == pytest.approx(np.mean(labels))
    rc = main(["calibrate", "--cost-model", str(cm), "--data", str(world / "pairs_train.jsonl")])
    assert rc == 0
    refit = load_calibration(cm)
    assert "pairs_train.jsonl" in refit.source and refit.n > cal.n
    assert not math.isclose(refit.temperature, cal.temperature)


def test_cost_model_training_survives_an_impossible_calibration(tmp_path, monkeypatch):
    """An untrained cost model can score unsafe responses lower: training still succeeds, no
    calibration.json is written, and the message names the fix."""
    import saferlhf.calibration as C
    from saferlhf.trainers.score import ScoreModelTrainer

    def refuse(*a, **k):
        raise ValueError("the cost scores do not increase with the unsafe label")

    monkeypatch.setattr(C, "calibrate_score_model", refuse)

    class Stub:
        args = type("A", (), {"calibration_data": None, "data": "d", "eval_data": None, "max_length": 8,
                              "batch_size": 1, "data_format": "auto", "on_bad_record": "skip", "out": str(tmp_path)})()
        eval_pairs, pairs, processor, template, model = None, [], None, None, None
        accelerator = type("Acc", (), {"unwrap_model": staticmethod(lambda m: m), "is_main_process": True,
                                       "wait_for_everyone": staticmethod(lambda: None),
                                       "print": staticmethod(print)})()

    assert ScoreModelTrainer.calibrate(Stub()) is None
    assert not (tmp_path / CALIBRATION_FILE).exists()
