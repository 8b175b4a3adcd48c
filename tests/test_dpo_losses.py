"""Hand-computed values of the safety-aware DPO losses (saferlhf.losses)."""

from __future__ import annotations

import math

import pytest
import torch

from saferlhf import losses as L


def _nls(z: float) -> float:  # −log σ(z)
    return math.log1p(math.exp(-z))


def t(*v):
    return torch.tensor(v, dtype=torch.float32)


def test_safe_dpo_order_swaps_only_unsafe_winner_over_safe_loser():
    # pairs: (better, unsafe_a, unsafe_b)
    better_a = torch.tensor([True, True, False, True, False])
    ua = t(1, 0, 0, 1, 1)
    ub = t(0, 1, 1, 1, 0)
    chosen_a, h_w, h_l = L.safe_dpo_order(better_a, ua, ub)
    # 0: a better but unsafe, b safe → b wins; 1: a better, safe → keep; 2: b better but unsafe,
    # a safe → a wins; 3: both unsafe → keep; 4: b better and safe → keep
    assert chosen_a.tolist() == [False, True, True, True, False]
    assert h_w.tolist() == [0, 0, 0, 1, 0]
    assert h_l.tolist() == [1, 1, 1, 1, 1]


def test_safe_dpo_loss_hand_computed():
    pw, pl, rw, rl = t(-3.0, -5.0), t(-4.0, -2.0), t(-3.5, -4.0), t(-3.0, -3.0)
    hw, hl = t(0, 1), t(1, 1)
    beta, delta = 0.5, 2.0
    # pair 0: β[(−3+3.5) − (−4+3)] = 0.5·1.5 = 0.75; margin (1 − 0)·2 = 2 → −log σ(−1.25)
    # pair 1: β[(−5+4) − (−2+3)] = 0.5·(−2) = −1; margin (1 − 1)·2 = 0 → −log σ(−1)
    want = (_nls(-1.25) + _nls(-1.0)) / 2
    loss, m = L.safe_dpo_loss(pw, pl, rw, rl, hw, hl, beta=beta, delta=delta)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert m["chosen_reward"].item() == pytest.approx((0.25 + -0.5) / 2)
    assert m["rejected_reward"].item() == pytest.approx((-0.5 + 0.5) / 2)
    assert m["accuracy"].item() == pytest.approx(0.5)
    # Δ = 0 is plain DPO on the same (re-ordered) pairs
    l0, _ = L.safe_dpo_loss(pw, pl, rw, rl, hw, hl, beta=beta, delta=0.0)
    assert l0.item() == pytest.approx(L.dpo_loss(pw, pl, rw, rl, beta)[0].item())
    # the margin raises the loss of a safe-over-unsafe pair, and its gradient pushes harder
    pw.requires_grad_(True)
    g = {}
    for d in (0.0, 2.0):
        pw.grad = None
        L.safe_dpo_loss(pw, pl, rw, rl, hw, hl, beta=beta, delta=d)[0].backward()
        g[d] = pw.grad[0].item()
    assert g[2.0] < g[0.0] < 0


def test_sacpo_stage_loss_is_dpo_against_the_previous_step():
    pw, pl = t(-2.0), t(-3.0)
    step1_w, step1_l = t(-2.5), t(-2.5)
    # (β/λ) = 0.2: 0.2·[(−2+2.5) − (−3+2.5)] = 0.2
    loss, m = L.sacpo_stage_loss(pw, pl, step1_w, step1_l, beta=0.2)
    assert loss.item() == pytest.approx(_nls(0.2), rel=1e-6)
    assert m["margin"].item() == pytest.approx(0.2)


def test_merge_weights_linear_and_checks():
    a = {"w": t(0.0, 2.0), "ids": torch.tensor([1, 2])}
    b = {"w": t(4.0, -2.0), "ids": torch.tensor([7, 7])}
    m = L.merge_weights(a, b, 0.25)
    assert m["w"].tolist() == [1.0, 1.0]  # 0.75·a + 0.25·b
    assert m["ids"].tolist() == [1, 2]  # integer buffers are not interpolated
    assert L.merge_weights(a, b, 0.0)["w"].tolist() == [0.0, 2.0]
    assert L.merge_weights(a, b, 1.0)["w"].tolist() == [4.0, -2.0]
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        L.merge_weights(a, b, 1.5)
    with pytest.raises(ValueError, match="different parameters"):
        L.merge_weights(a, {"w": t(1.0, 1.0)}, 0.5)


def test_lagrangian_preference_flips_with_lambda():
    ra, rb, ca, cb = t(3.0, 1.0), t(1.0, 0.0), t(2.0, -1.0), t(-1.0, 0.5)
    # λ = 0: by reward (a, a); λ = 1: pair 0: 3−2 = 1 vs 1+1 = 2 → b; pair 1: 1+1 = 2 vs 0−0.5 → a
    assert L.lagrangian_preference(ra, rb, ca, cb, 0.0).tolist() == [True, True]
    assert L.lagrangian_preference(ra, rb, ca, cb, 1.0).tolist() == [False, True]
    # tie goes to a: λ = 0.5: 3 − 1 = 2 = 1 + 1
    assert L.lagrangian_preference(t(3.0), t(1.0), t(2.0), t(-2.0), torch.tensor(0.5)).tolist() == [True]


def test_c_dpo_loss_hand_computed():
    pa, pb, refa, refb = t(-1.0, -2.0), t(-2.0, -1.0), t(-1.5, -1.5), t(-1.5, -1.5)
    ra, rb, ca, cb = t(3.0, 1.0), t(1.0, 0.0), t(2.0, -1.0), t(-1.0, 0.5)
    beta = 1.0
    # λ = 1 → chosen: pair 0 b, pair 1 a.
    # pair 0: (pb − refb) − (pa − refa) = (−0.5) − (0.5) = −1; pair 1: (−0.5) − (0.5) = −1
    loss, m = L.c_dpo_loss(pa, pb, refa, refb, ra, rb, ca, cb, 1.0, beta=beta)
    assert loss.item() == pytest.approx(_nls(-1.0), rel=1e-6)
    assert m["flipped"].item() == pytest.approx(0.5)  # pair 0 changed side against reward-only
    assert m["accuracy"].item() == 0.0
    # λ = 0 is DPO on the reward model's preferences
    l0, m0 = L.c_dpo_loss(pa, pb, refa, refb, ra, rb, ca, cb, 0.0, beta=beta)
    assert l0.item() == pytest.approx((_nls(1.0) + _nls(-1.0)) / 2, rel=1e-6)
    assert m0["flipped"].item() == 0.0
