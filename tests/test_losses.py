"""Hand-computed checks of the language-model, score-model and DPO losses (saferlhf.losses)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from saferlhf import losses as L


def nls(x: float) -> float:
    """−log σ(x), written out by hand."""
    return math.log(1.0 + math.exp(-x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def close(a, b, tol=1e-6):
    a = a.detach() if isinstance(a, torch.Tensor) else a
    return abs(float(a) - float(b)) < tol


# ---------------------------------------------------------------------------------------
# helpers


def test_masked_mean_empty_mask_is_zero_with_finite_grad():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    m = torch.zeros(2)
    y = L.masked_mean(x, m)
    y.backward()
    assert y.item() == 0.0
    assert torch.isfinite(x.grad).all()
    assert close(L.masked_mean(torch.tensor([1.0, 2.0, 9.0]), torch.tensor([1, 1, 0])), 1.5)
    assert close(L.masked_sum(torch.tensor([1.0, 2.0, 9.0]), torch.tensor([1, 1, 0])), 3.0)


def test_masked_whiten_numbers():
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    m = torch.tensor([1, 1, 1, 0])
    # mean 2, population variance (1 + 0 + 1)/3 = 2/3
    s = math.sqrt(2 / 3)
    y = L.masked_whiten(x, m, eps=0.0)
    assert torch.allclose(y, torch.tensor([-1 / s, 0.0, 1 / s, 0.0]))
    y2 = L.masked_whiten(x, m, shift_mean=False, eps=0.0)
    assert torch.allclose(y2, torch.tensor([2 - 1 / s, 2.0, 2 + 1 / s, 0.0]))


# ---------------------------------------------------------------------------------------
# SFT, log-probs, entropy


def test_sft_loss_only_on_response_tokens_with_shift():
    # B=1, L=4, V=2; labels: positions 2 and 3 are response tokens (1, 0).
    logits = torch.tensor([[[50.0, -50.0], [0.0, 1.0], [2.0, 0.0], [-50.0, 50.0]]])
    labels = torch.tensor([[-100, -100, 1, 0]])
    # logits[1] predicts labels[2] = 1: −log(e/(1+e)) = log(1+e) − 1
    # logits[2] predicts labels[3] = 0: −log(e²/(e²+1)) = log(1+e^−2)
    expected = ((math.log(1 + math.e) - 1) + math.log(1 + math.exp(-2))) / 2
    assert close(L.sft_loss(logits, labels), expected)
    # everything ignored -> 0 (with a gradient path)
    lg = logits.clone().requires_grad_(True)
    z = L.sft_loss(lg, torch.full_like(labels, -100))
    z.backward()
    assert z.item() == 0.0 and lg.grad is not None


def test_token_logprobs_hand_values_and_temperature():
    # logits at position 0 = [0, ln 3] → p(token 1) = 3/4
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, 5.0]]])
    ids = torch.tensor([[0, 1]])
    lp = L.token_logprobs(logits, ids)
    assert lp.shape == (1, 1)
    assert close(lp[0, 0], math.log(0.75))
    # temperature 2: z = [0, ln3/2] → p(1) = √3/(1+√3)
    lp2 = L.token_logprobs(logits, ids, temperature=2.0)
    assert close(lp2[0, 0], math.log(math.sqrt(3) / (1 + math.sqrt(3))))


def test_token_logprobs_matches_manual_log_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g)
    ids = torch.randint(0, 7, (3, 5), generator=g)
    tau = 0.7
    for chunk in (None, 1, 2):
        lp = L.token_logprobs(logits, ids, temperature=tau, chunk_size=chunk)
        assert lp.shape == (3, 4)
        for b in range(3):
            for t in range(4):
                z = [v / tau for v in logits[b, t].tolist()]
                lse = math.log(sum(math.exp(v) for v in z))
                assert close(lp[b, t], z[ids[b, t + 1]] - lse, 1e-5)
    # bf16 logits are upcast: result is float32
    assert L.token_logprobs(logits.bfloat16(), ids).dtype == torch.float32


def test_entropy_from_logits():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e4, -1e4]]])
    h = L.entropy_from_logits(logits)
    assert close(h[0, 0], math.log(4))
    p = [0.25, 0.75]
    assert close(h[0, 1], -sum(q * math.log(q) for q in p), 1e-5)


# ---------------------------------------------------------------------------------------
# reward model


def test_reward_loss_seqwise_with_regulariser():
    w = torch.tensor([1.0, 0.0], requires_grad=True)
    lo = torch.tensor([[0.5], [2.0]])  # (B, 1) accepted
    loss, metrics = L.reward_model_loss(w, lo, reg_coeff=0.1)
    rank = (nls(1.0 - 0.5) + nls(0.0 - 2.0)) / 2
    reg = (0.5 * (1.0**2 + 0.5**2) + 0.5 * (0.0**2 + 2.0**2)) / 2  # = 1.3125
    assert close(loss, rank + 0.1 * reg)
    assert close(metrics["accuracy"], 0.5)
    loss.backward()
    # d/dr_w of mean[−log σ(r_w − r_l)] = −σ(r_l − r_w)/B ; of the reg: α r_w / B
    assert close(w.grad[0], -sig(0.5 - 1.0) / 2 + 0.1 * 1.0 / 2)


def _tokenwise_batch():
    # row 0: better [5 6 7 8 _], worse [5 6 9 _ _]: diverge 2, end max(3, 2) = 3
    # row 1: better [5 6 7 _ _], worse [5 6 _ _ _]: worse is a prefix, diverge 2, end 2
    bid = torch.tensor([[5, 6, 7, 8, 0], [5, 6, 7, 0, 0]])
    wid = torch.tensor([[5, 6, 9, 0, 0], [5, 6, 0, 0, 0]])
    bm = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    wm = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    # pad positions carry 100 / -100: they must never be read
    bs = torch.tensor([[9.0, 9.0, 1.0, 2.0, 100.0], [0.0, 0.0, 3.0, 100.0, 100.0]])
    ws = torch.tensor([[9.0, 9.0, 0.0, -100.0, -100.0], [0.0, 0.5, -100.0, -100.0, -100.0]])
    return bs, ws, bid, wid, bm, wm


def test_divergence_span():
    _, _, bid, wid, bm, wm = _tokenwise_batch()
    diverge, end, end_b, end_w = L.divergence_span(bid, wid, bm, wm)
    assert diverge.tolist() == [2, 2]
    assert end.tolist() == [3, 2]
    assert end_b.tolist() == [3, 2] and end_w.tolist() == [2, 1]
    # a pad whose id equals the other sequence's real token still counts as different
    pad = 7
    a = torch.tensor([[5, 6, 7, 8]])
    b = torch.tensor([[5, 6, pad, pad]])
    d, e, _, _ = L.divergence_span(a, b, torch.tensor([[1, 1, 1, 1]]), torch.tensor([[1, 1, 0, 0]]))
    assert d.tolist() == [2] and e.tolist() == [3]


def test_reward_loss_tokenwise_right_padding():
    bs, ws, bid, wid, bm, wm = _tokenwise_batch()
    loss, metrics = L.reward_model_loss_tokenwise(bs, ws, bid, wid, bm, wm, reg_coeff=1e-3)
    # row 0: t=2: 1−0, t=3: 2 − (worse held at its end score 0)
    row0 = (nls(1.0 - 0.0) + nls(2.0 - 0.0)) / 2
    # row 1: t=2: 3 − (worse held at its end score 0.5)
    row1 = nls(3.0 - 0.5)
    # end scores: better (2, 3), worse (0, 0.5)
    reg = (0.5 * (4 + 0) + 0.5 * (9 + 0.25)) / 2
    assert close(loss, (row0 + row1) / 2 + 1e-3 * reg)
    assert close(metrics["accuracy"], 1.0)


def test_reward_loss_tokenwise_left_padding_converted_and_validated():
    bs, ws, bid, wid, bm, wm = _tokenwise_batch()
    ref, _ = L.reward_model_loss_tokenwise(bs, ws, bid, wid, bm, wm)

    def to_left(x, m):  # move each row's real tokens flush right
        out = torch.zeros_like(x)
        for b in range(x.size(0)):
            n = int(m[b].sum())
            out[b, x.size(1) - n :] = x[b, :n]
        return out

    args = [
        to_left(bs, bm),
        to_left(ws, wm),
        to_left(bid, bm),
        to_left(wid, wm),
        to_left(bm, bm),
        to_left(wm, wm),
    ]
    with pytest.raises(ValueError, match="right"):
        L.reward_model_loss_tokenwise(*args)
    left, _ = L.reward_model_loss_tokenwise(*args, padding_side="left")
    assert close(left, ref)


# ---------------------------------------------------------------------------------------
# cost model


def test_cost_loss_binary():
    cu = torch.tensor([1.0, -0.5])
    cs = torch.tensor([-1.0, 0.5])
    xu = torch.tensor([1.0, -1.0])  # pair 0: unsafer unsafe; pair 1: both safe
    xs = torch.tensor([-1.0, -1.0])
    loss, metrics = L.cost_model_loss(cu, cs, xu, xs, kappa=1.0, reg_coeff=0.0)
    p0 = nls(1.0 - (-1.0)) + (nls(1.0 * 1.0) + nls(-1.0 * -1.0))
    p1 = nls(-0.5 - 0.5) + (nls(-1.0 * -0.5) + nls(-1.0 * 0.5))
    assert close(loss, (p0 + p1) / 2)
    # κ and α
    loss2, _ = L.cost_model_loss(cu, cs, xu, xs, kappa=0.5, reg_coeff=0.01)
    rank = (nls(2.0) + nls(-1.0)) / 2
    signs = (nls(1.0) + nls(1.0) + nls(0.5) + nls(-0.5)) / 2
    reg = (0.5 * (1 + 1) + 0.5 * (0.25 + 0.25)) / 2
    assert close(loss2, rank + 0.5 * signs + 0.01 * reg)
    assert close(metrics["accuracy"], 0.5)
    # costs (1, −0.5 | −1, 0.5) vs unsafe (T, F | F, F): predictions T F F T → 3/4
    assert close(metrics["sign_accuracy"], 0.75)


def test_cost_loss_unknown_label_and_severity_weights():
    cu = torch.tensor([1.0, -0.5])
    cs = torch.tensor([-1.0, 0.5])
    xu = torch.tensor([1.0, -1.0])
    xs_nan = torch.tensor([float("nan"), -1.0])
    loss_nan, m_nan = L.cost_model_loss(cu, cs, xu, xs_nan, reg_coeff=0.0)
    p0 = nls(2.0) + nls(1.0)  # safer's sign term of pair 0 is dropped
    p1 = nls(-1.0) + nls(0.5) + nls(-0.5)
    assert close(loss_nan, (p0 + p1) / 2)
    assert torch.isfinite(loss_nan)
    # same thing through an explicit mask
    xs = torch.tensor([-1.0, -1.0])
    loss_mask, _ = L.cost_model_loss(
        cu, cs, xu, xs, reg_coeff=0.0, sign_mask=(None, torch.tensor([0, 1]))
    )
    assert close(loss_mask, loss_nan)
    # sign accuracy only over the 3 known labels: c = (1, −0.5, 0.5) vs (T, F, F) → 2/3
    assert close(m_nan["sign_accuracy"], 2 / 3)
    # severity weights on the unsafer response's sign term
    loss_w, _ = L.cost_model_loss(
        cu, cs, xu, xs, reg_coeff=0.0, sign_weights=(torch.tensor([3.0, 1.0]), None)
    )
    p0w = nls(2.0) + 3.0 * nls(1.0) + nls(1.0)
    p1w = nls(-1.0) + nls(0.5) + nls(-0.5)
    assert close(loss_w, (p0w + p1w) / 2)


def test_graded_sign():
    assert L.graded_sign([-3, 0, 2]).tolist() == [3.0, 0.0, -2.0]
    assert L.graded_sign([-3, 0, 2], zero_rating_sign=-1).tolist() == [3.0, -1.0, -2.0]
    g = L.graded_sign([None, 1])
    assert math.isnan(g[0].item()) and g[1].item() == -1.0


def test_cost_loss_graded_zero_rating():
    cu = torch.tensor([0.5, 0.2], requires_grad=True)
    cs = torch.tensor([-0.5, 0.4])
    xu = L.graded_sign(torch.tensor([-3.0, 0.0]))  # ξ = (3, 0)
    xs = L.graded_sign(torch.tensor([2.0, 0.0]))  # ξ = (−2, 0)
    loss, metrics = L.cost_model_loss(cu, cs, xu, xs, reg_coeff=0.0)
    p0 = nls(1.0) + nls(3 * 0.5) + nls(-2 * -0.5)
    p1 = nls(0.2 - 0.4) + 2 * math.log(2.0)  # ξ = 0: −log σ(0) = log 2, a constant
    assert close(loss, (p0 + p1) / 2)
    loss.backward()
    # rating 0: only the ranking term moves c_u of pair 1: d/dc_u −log σ(c_u − c_s) = −σ(c_s − c_u)
    assert close(cu.grad[1], -sig(0.4 - 0.2) / 2)
    # metrics use binary labels: ξ > 0 ↔ unsafe, so rating 0 counts as safe
    # costs (0.5, 0.2 | −0.5, 0.4), unsafe (T, F | F, F) → T T F T vs T F F F → 2/4
    assert close(metrics["sign_accuracy"], 0.5)
    # explicit binary labels override ξ > 0: call pair 1's unsafer response unsafe → 3/4
    labels = (torch.tensor([1, 1]), torch.tensor([0, 0]))
    _, m_lab = L.cost_model_loss(cu, cs, xu, xs, reg_coeff=0.0, is_unsafe=labels)
    assert close(m_lab["sign_accuracy"], 0.75)

    cu2 = cu.detach().clone().requires_grad_(True)
    xu_z = L.graded_sign(torch.tensor([-3.0, 0.0]), zero_rating_sign=-1)
    xs_z = L.graded_sign(torch.tensor([2.0, 0.0]), zero_rating_sign=-1)
    loss_z, _ = L.cost_model_loss(cu2, cs, xu_z, xs_z, reg_coeff=0.0)
    p1z = nls(0.2 - 0.4) + nls(-0.2) + nls(-0.4)
    assert close(loss_z, (p0 + p1z) / 2)
    loss_z.backward()
    # now the sign term pushes c_u of pair 1 down too: extra −(−σ(0.2))... = +σ(0.2)
    assert close(cu2.grad[1], (-sig(0.4 - 0.2) + sig(0.2)) / 2)


def test_safe_pair_rank_mask_drops_only_pairs_of_two_safe_responses():
    unsafe_u = torch.tensor([1.0, 0.0, float("nan"), 0.0])
    unsafe_s = torch.tensor([0.0, 0.0, 0.0, float("nan")])
    # pair 0 mixed; pair 1 both safe; pairs 2, 3 have an unknown label: kept
    assert L.safe_pair_rank_mask(unsafe_u, unsafe_s).tolist() == [1.0, 0.0, 1.0, 1.0]
    cu = torch.tensor([1.0, -0.5], requires_grad=True)
    cs = torch.tensor([-1.0, 0.5])
    xu, xs = torch.tensor([1.0, -1.0]), torch.tensor([-1.0, -1.0])  # pair 1: both safe
    mask = L.safe_pair_rank_mask(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    loss, _ = L.cost_model_loss(cu, cs, xu, xs, reg_coeff=0.0, rank_mask=mask)
    p0 = nls(2.0) + nls(1.0) + nls(1.0)
    p1 = nls(0.5) + nls(-0.5)  # no ranking term: only the two sign terms
    assert close(loss, (p0 + p1) / 2)  # still averaged over both pairs
    loss.backward()
    # pair 1's c_u only feels its sign term: d/dc −log σ(−c) = σ(c)
    assert close(cu.grad[1], sig(-0.5) / 2)
    # token-wise: the same mask removes the span-averaged ranking term
    uid, sid = torch.tensor([[5, 6, 7]]), torch.tensor([[5, 6, 9]])
    am = torch.ones(1, 3, dtype=torch.long)
    su, ss = torch.tensor([[0.0, 0.0, -1.0]]), torch.tensor([[0.0, 0.0, -2.0]])
    one, minus = torch.tensor([-1.0]), torch.tensor([-1.0])
    full, _ = L.cost_model_loss_tokenwise(su, ss, uid, sid, am, am, one, minus, reg_coeff=0.0)
    masked, _ = L.cost_model_loss_tokenwise(su, ss, uid, sid, am, am, one, minus, reg_coeff=0.0,
                                            rank_mask=torch.tensor([0.0]))
    assert close(full - masked, nls(-1.0 - -2.0))


def test_cost_loss_tokenwise():
    uid = torch.tensor([[5, 6, 7, 8, 0]])
    sid = torch.tensor([[5, 6, 9, 0, 0]])
    um = torch.tensor([[1, 1, 1, 1, 0]])
    sm = torch.tensor([[1, 1, 1, 0, 0]])
    su = torch.tensor([[0.0, 0.0, 1.0, 2.0, 50.0]])
    ss = torch.tensor([[0.0, 0.0, -1.0, 50.0, 50.0]])  # held at −1 at t = 3
    loss, metrics = L.cost_model_loss_tokenwise(
        su, ss, uid, sid, um, sm, torch.tensor([1.0]), torch.tensor([-1.0]), reg_coeff=0.0
    )
    rank = (nls(1.0 - -1.0) + nls(2.0 - -1.0)) / 2
    sign_u = (nls(1.0) + nls(2.0)) / 2
    sign_s = (nls(1.0) + nls(1.0)) / 2
    assert close(loss, rank + sign_u + sign_s)
    assert close(metrics["accuracy"], 1.0) and close(metrics["sign_accuracy"], 1.0)


# ---------------------------------------------------------------------------------------
# metrics


def test_sign_accuracy():
    c = torch.tensor([0.5, -0.1, 0.0, 2.0])
    unsafe = torch.tensor([1, 0, 1, 0])
    # predictions (c > 0): T F F T; c = 0 predicts safe
    assert close(L.sign_accuracy(c, unsafe), 0.5)


def _brute_auroc(s, y):
    pos = [a for a, t in zip(s, y) if t]
    neg = [a for a, t in zip(s, y) if not t]
    tot = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return tot / (len(pos) * len(neg))


def test_auroc_ties_against_brute_force():
    s = [0.1, 0.4, 0.4, 0.8, 0.4, 0.2]
    y = [0, 1, 0, 1, 1, 0]
    # positives (0.4, 0.8, 0.4) vs negatives (0.1, 0.4, 0.2): 2.5 + 3 + 2.5 = 8 of 9
    assert close(L.auroc(s, y), 8 / 9)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        sc = torch.randint(0, 4, (17,), generator=g).float()
        lab = torch.randint(0, 2, (17,), generator=g)
        if lab.sum() in (0, 17):
            continue
        assert close(L.auroc(sc, lab), _brute_auroc(sc.tolist(), lab.tolist()))
    assert L.auroc([1.0, 2.0], [1, 0]) == 0.0
    assert L.auroc([1.0, 2.0], [0, 1]) == 1.0
    assert math.isnan(L.auroc([1.0, 2.0], [1, 1]))


# ---------------------------------------------------------------------------------------
# DPO


def test_dpo_loss():
    pw, pl = torch.tensor([-1.0], requires_grad=True), torch.tensor([-2.0])
    rw, rl = torch.tensor([-1.5]), torch.tensor([-1.5])
    loss, m = L.dpo_loss(pw, pl, rw, rl, beta=0.5)
    # β[(−1 + 1.5) − (−2 + 1.5)] = 0.5 · 1.0
    assert close(loss, nls(0.5))
    assert close(m["chosen_reward"], 0.25) and close(m["rejected_reward"], -0.25)
    assert close(m["accuracy"], 1.0)
    loss.backward()
    assert close(pw.grad[0], -0.5 * sig(-0.5))
