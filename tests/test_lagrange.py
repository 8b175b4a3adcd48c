"""The Lagrange multiplier: every rule, cap + warning, delay, window, PID anti-windup,
resume, the reduce function, and the budget helper (saferlhf.lagrange)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from saferlhf.budget import suggest_budget
from saferlhf.lagrange import LagrangeConfig, LagrangeMultiplier, transform_cost


def run(lag: LagrangeMultiplier, batches):
    return [lag.step(b)["lambda"] for b in batches]


# ---------------------------------------------------------------------------------------
# log_sgd


def test_log_sgd_by_hand_and_direction():
    lag = LagrangeMultiplier(rule="log_sgd", init=1.0, lr=0.1, budget=0.0, max_lambda=None)
    s = lag.step([1.0, 1.0])  # J_C = 1: log λ = 0 + 0.1 · 1 · 1
    assert s["J_C"] == 1.0 and s["J_C_minus_d"] == 1.0 and s["updated"] == 1.0
    assert math.isclose(s["lambda"], math.exp(0.1))
    s = lag.step([3.0, 3.0])  # window (1, 1, 3, 3): J_C = 2; log λ += 0.1 · e^0.1 · 2
    assert s["J_C"] == 2.0
    assert math.isclose(s["lambda"], math.exp(0.1 + 0.1 * math.exp(0.1) * 2))

    down = LagrangeMultiplier(
        rule="log_sgd", init=1.0, lr=0.5, budget=0.5, max_lambda=None, window=2
    )
    lams = run(down, [[-1.0, -1.0]] * 30)
    assert all(b < a for a, b in zip([1.0, *lams], lams))  # strictly falling
    assert 0 < lams[-1] < 0.1  # toward 0, never below


def test_log_sgd_cap_and_warning():
    lag = LagrangeMultiplier(rule="log_sgd", init=1.0, lr=0.1, max_lambda=2.0, cap_warning_steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s1 = lag.step([10.0])  # log λ = 1 → e > 2 → clamped to 2
        s2 = lag.step([10.0])
    assert s1["lambda"] == pytest.approx(2.0) and s1["at_cap"] == 1.0 and s2["at_cap"] == 1.0
    with pytest.warns(RuntimeWarning, match="not reachable"):
        s3 = lag.step([10.0])
    assert s3["lambda"] == pytest.approx(2.0)
    # leaving the cap resets the streak
    lag2 = LagrangeMultiplier(
        rule="projected", init=1.0, lr=1.0, max_lambda=2.0, window=1, cap_warning_steps=3
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lams = run(lag2, [[10.0], [10.0], [-0.5], [10.0], [10.0]])
    assert lams == [2.0, 2.0, 1.5, 2.0, 2.0]


def test_log_init_zero_is_a_clear_error():
    with pytest.raises(ValueError, match="tiny positive init.*direct"):
        LagrangeMultiplier(rule="log_sgd", init=0.0)
    with pytest.raises(ValueError, match="tiny positive init"):
        LagrangeMultiplier(rule="log_sgd", init=0.0, parametrisation="direct")
    with pytest.raises(ValueError):
        LagrangeMultiplier(rule="projected", parametrisation="log")
    with pytest.raises(ValueError):
        LagrangeMultiplier(rule="nope")


def test_log_sgd_direct_parametrisation_same_rule():
    a = LagrangeMultiplier(rule="log_sgd", init=0.7, lr=0.2, max_lambda=3.0)
    b = LagrangeMultiplier(
        rule="log_sgd", init=0.7, lr=0.2, max_lambda=3.0, parametrisation="direct"
    )
    batches = [[1.0, 2.0], [0.5], [-3.0], [4.0, 4.0, 4.0], [-1.0]]
    assert run(a, batches) == pytest.approx(run(b, batches), rel=1e-12)


# ---------------------------------------------------------------------------------------
# projected


def test_projected_by_hand_and_clipping():
    lag = LagrangeMultiplier(
        rule="projected", init=1.0, lr=0.5, budget=0.0, max_lambda=2.0, window=1
    )
    assert lag.step([1.0])["lambda"] == pytest.approx(1.5)  # 1 + 0.5 · 1
    assert lag.step([3.0])["lambda"] == pytest.approx(2.0)  # 1.5 + 1.5 → cap 2
    assert lag.step([-1.0])["lambda"] == pytest.approx(1.5)
    assert lag.step([-10.0])["lambda"] == 0.0  # projected onto λ ≥ 0
    assert lag.step([-10.0])["lambda"] == 0.0
    assert lag.step([0.4])["lambda"] == pytest.approx(0.2)  # moves off 0 at once


def test_projected_init_zero_allowed():
    lag = LagrangeMultiplier(rule="projected", init=0.0, lr=1.0)
    assert lag.value == 0.0
    assert lag.step([0.5])["lambda"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------
# PID


def test_pid_by_hand():
    lag = LagrangeMultiplier(
        rule="pid", init=1.0, kp=0.5, ki=0.1, kd=1.0, budget=0.0, max_lambda=5.0, window=1
    )
    # e = 2: I = 1 + 0.2 = 1.2 ; D = 0 (first update) ; λ = 0.5·2 + 1.2
    assert lag.step([2.0])["lambda"] == pytest.approx(2.2)
    # e = 3: I = 1.5 ; D = max(0, 3 − 2) = 1 ; λ = 1.5 + 1.5 + 1
    assert lag.step([3.0])["lambda"] == pytest.approx(4.0)
    # e = −1: I = 1.4 ; D = max(0, −1 − 3) = 0 ; λ = −0.5 + 1.4
    assert lag.step([-1.0])["lambda"] == pytest.approx(0.9)


def test_pid_does_not_wind_up():
    cfg = LagrangeConfig(
        rule="pid",
        init=1.0,
        kp=0.0,
        ki=0.5,
        kd=0.0,
        budget=0.0,
        max_lambda=5.0,
        window=1,
        cap_warning_steps=0,
    )
    lag = LagrangeMultiplier(cfg)
    run(lag, [[10.0]] * 200)  # long violation: the integral would reach ~1000 without a clamp
    assert lag.value == 5.0
    lams = run(lag, [[-1.0]] * 12)  # satisfaction: λ reacts at once, 0.5 per step
    assert lams[0] == pytest.approx(4.5)
    assert lams[9] == 0.0
    # long satisfaction: I stays at 0 (not negative), so a new violation acts at once
    run(lag, [[-10.0]] * 200)
    assert lag.step([1.0])["lambda"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------
# fixed, delay, window / once per batch


def test_fixed_never_moves():
    lag = LagrangeMultiplier(rule="fixed", init=0.0)
    assert run(lag, [[100.0], [-100.0], [5.0]]) == [0.0, 0.0, 0.0]
    lag = LagrangeMultiplier(rule="fixed", init=2.5)
    assert run(lag, [[100.0], [-100.0]]) == [2.5, 2.5]


@pytest.mark.parametrize("rule", ["log_sgd", "projected", "pid"])
def test_delay_steps(rule):
    lag = LagrangeMultiplier(rule=rule, init=1.0, delay_steps=2, max_lambda=None)
    s1, s2 = lag.step([1.0]), lag.step([1.0])
    assert s1["lambda"] == s2["lambda"] == 1.0 and s1["updated"] == 0.0
    assert s1["J_C"] == 1.0  # the window fills during the delay
    s3 = lag.step([1.0])
    assert s3["lambda"] > 1.0 and s3["updated"] == 1.0


def test_update_once_per_batch_and_window():
    lag = LagrangeMultiplier(rule="projected", init=1.0, lr=1.0, window=3, max_lambda=None)
    lag.observe([1.0, 1.0])  # micro-batches of one rollout batch
    lag.observe([1.0])
    s = lag.update()
    assert s["lambda"] == pytest.approx(2.0)  # one step with J_C = 1
    again = lag.update()  # a second call without new costs does not step
    assert again["lambda"] == pytest.approx(2.0) and again["updated"] == 0.0
    lag.observe([4.0])  # window keeps the last 3 episodes: (1, 1, 4)
    s = lag.update()
    assert s["J_C"] == pytest.approx(2.0) and s["lambda"] == pytest.approx(4.0)
    # update before any observation: no step, J_C nan
    fresh = LagrangeMultiplier(rule="projected")
    s0 = fresh.update()
    assert s0["updated"] == 0.0 and math.isnan(s0["J_C"]) and fresh.value == fresh.config.init


# ---------------------------------------------------------------------------------------
# resume and multi-process reduce


@pytest.mark.parametrize("rule", ["log_sgd", "projected", "pid"])
def test_state_dict_round_trip_continues_identically(rule):
    kw = {
        "rule": rule,
        "init": 0.5,
        "lr": 0.3,
        "kp": 0.2,
        "ki": 0.3,
        "kd": 0.5,
        "window": 4,
        "max_lambda": 3.0,
        "delay_steps": 1,
        "cap_warning_steps": 0,
    }
    first = [[0.5, 2.0], [1.5], [3.0, -1.0, 0.2]]
    rest = [[5.0], [-2.0], [0.7, 0.1], [6.0], [-0.3, -0.4]]
    a = LagrangeMultiplier(**kw)
    run(a, first)
    state = json.loads(json.dumps(a.state_dict()))  # plain, serialisable values
    b = LagrangeMultiplier(rule="fixed", init=4.0)  # the stored config wins
    b.load_state_dict(state)
    assert b.value == a.value and b.constraint_estimate == a.constraint_estimate
    assert run(a, rest) == run(b, rest)
    assert a.state_dict() == b.state_dict()


def test_reduce_fn_gathers_costs_across_processes():
    calls = []

    def fake_gather(local: torch.Tensor) -> torch.Tensor:
        calls.append(local.clone())
        other_rank = torch.tensor([3.0, 5.0])
        return torch.cat([local, other_rank])

    lag = LagrangeMultiplier(
        rule="projected", init=1.0, lr=1.0, max_lambda=None, reduce_fn=fake_gather
    )
    s = lag.step(torch.tensor([0.0, 0.0]))
    assert len(calls) == 1 and calls[0].tolist() == [0.0, 0.0]
    assert s["J_C"] == pytest.approx(2.0)  # mean of (0, 0, 3, 5), not of the local (0, 0)
    assert s["lambda"] == pytest.approx(3.0)


def test_config_object_and_overrides():
    cfg = LagrangeConfig(rule="projected", lr=0.25)
    lag = LagrangeMultiplier(cfg, budget=1.0)
    assert lag.config.lr == 0.25 and lag.config.budget == 1.0
    assert cfg.budget == 0.0  # the caller's config is not mutated
    assert lag.as_tensor().item() == LagrangeConfig().init


# ---------------------------------------------------------------------------------------
# budget helper


def test_suggest_budget_numbers():
    out = suggest_budget([-2.0, -1.0, 0.0, 1.0, 2.0], target_unsafe_rate=0.25)
    assert out["n"] == 5 and out["mean"] == 0.0
    assert out["std"] == pytest.approx(math.sqrt(2.0))  # population std
    assert out["unsafe_rate"] == pytest.approx(0.4)  # P(c > 0) = 2/5
    assert out["quantiles"][0.5] == 0.0 and out["quantiles"][0.25] == -1.0
    # (1 − 0.25)-quantile, linear interpolation at position 0.75·4 = 3 → 1.0
    assert out["budget"] == pytest.approx(1.0)
    assert out["rate_above_budget"] == pytest.approx(0.2)
    assert out["budget_shift"] == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        suggest_budget([1.0], target_unsafe_rate=2.0)


def test_init_above_cap_warns_and_starts_at_cap():
    with pytest.warns(RuntimeWarning, match="exceeds max_lambda"):
        lag = LagrangeMultiplier(rule="log_sgd", init=10.0, max_lambda=5.0)
    assert lag.value == pytest.approx(5.0)


def test_transform_cost_identity_and_sigmoid():
    c = torch.tensor([-2.0, 0.0, 3.0])
    assert torch.equal(transform_cost(c, "identity"), c)
    expect = [1 / (1 + math.exp(2.0)), 0.5, 1 / (1 + math.exp(-3.0))]
    assert torch.allclose(transform_cost(c, "sigmoid"), torch.tensor(expect))
    with pytest.raises(ValueError, match="cost_transform"):
        transform_cost(c, "relu")
