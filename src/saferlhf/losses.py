"""Loss functions and RL math of saferlhf: pure functions on tensors.

Every function states the equation it implements. No model code, no trainer code.
σ is the logistic function, α the score regulariser (default 1e-3).

Conventions (DESIGN §5) that decide correctness
------------------------------------------------
* Token alignment: for a sequence ``input_ids`` of length L, ``logp[:, t]`` (shape
  (B, L-1)) is log π(input_ids[:, t+1] | input_ids[:, :t+1]); critic values ``V[:, t]``,
  per-token KL, rewards and the *response mask* used by the PPO functions live on the
  same (B, L-1) grid. ``response_mask[:, t] = 1`` iff ``input_ids[:, t+1]`` is a real
  response token (not prompt, not padding).
* Log-probs for ratios, KL and entropy come from ``logits / temperature`` of a forward
  pass (:func:`token_logprobs`), never from a sampler's processed scores.
* The terminal reward/cost sits on the last real response token T of each row
  (the last position where ``response_mask`` is 1), whatever the padding side.
* Scores (reward / cost) are computed in float32 even when the model runs in bf16.
* Masks may be bool or float (0/1, or weights); a masked mean over an empty mask is 0,
  never NaN (and has a finite gradient).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "aggregate",
    "auroc",
    "c_dpo_loss",
    "combine_advantages",
    "cost_model_loss",
    "cost_model_loss_tokenwise",
    "divergence_span",
    "dpo_loss",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "graded_sign",
    "group_advantages",
    "grpo_lag_advantages",
    "kl_k1",
    "kl_k3",
    "lagrangian_preference",
    "last_token_index",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "merge_weights",
    "pairwise_accuracy",
    "policy_loss",
    "reward_model_loss",
    "reward_model_loss_tokenwise",
    "right_pad",
    "sacpo_stage_loss",
    "safe_dpo_loss",
    "safe_dpo_order",
    "sft_loss",
    "shaped_token_rewards",
    "sign_accuracy",
    "token_logprobs",
    "value_loss",
]

Aggregation = Literal["token_mean", "seq_mean"]


# ---------------------------------------------------------------------------
# Masked helpers
# ---------------------------------------------------------------------------


def _as_float_mask(mask: Tensor, like: Tensor) -> Tensor:
    return mask.to(dtype=like.dtype if like.is_floating_point() else torch.float32)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, 0 where den == 0 (finite value and finite gradient)."""
    nonzero = den != 0
    return torch.where(
        nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), torch.zeros_like(num)
    )


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ_t m_t x_t over ``dim`` (all elements when ``dim`` is None)."""
    m = _as_float_mask(mask, x)
    if dim is None:
        return (x * m).sum()
    return (x * m).sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ m_t x_t / Σ m_t over ``dim`` (all elements when None); 0 where Σ m_t = 0."""
    m = _as_float_mask(mask, x)
    if dim is None:
        return _safe_div((x * m).sum(), m.sum())
    return _safe_div((x * m).sum(dim=dim), m.sum(dim=dim))


def masked_var(x: Tensor, mask: Tensor) -> Tensor:
    """Population variance over masked elements: Σ m (x − μ)² / Σ m (0 for an empty mask)."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Whiten over the masked elements of the whole tensor.

    ``y = (x − μ) / sqrt(σ² + eps)`` (``shift_mean=True``) or ``y = (x − μ)/sqrt(σ² + eps) + μ``
    (``shift_mean=False``: rescale only, keep the mean), with μ, σ² the masked mean and
    population variance. Positions outside the mask are set to 0.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    y = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        y = y + mean
    return y * _as_float_mask(mask, x)


def aggregate(loss_per_token: Tensor, mask: Tensor, mode: Aggregation = "token_mean") -> Tensor:
    """Reduce a (B, T) per-token loss to a scalar.

    * ``token_mean``: Σ_{b,t} m ℓ / Σ_{b,t} m — every response token of the batch weighs
      the same (default).
    * ``seq_mean``: (1/B') Σ_b [Σ_t m ℓ / Σ_t m] — mean per sequence, then over the B'
      sequences that have at least one token (what safe-rlhf did: each token of a short
      sequence weighs more than a token of a long one).
    """
    if mode == "token_mean":
        return masked_mean(loss_per_token, mask)
    if mode == "seq_mean":
        m = _as_float_mask(mask, loss_per_token)
        per_seq = masked_mean(loss_per_token, m, dim=-1)
        has_tokens = (m.sum(dim=-1) > 0).to(per_seq.dtype)
        return masked_mean(per_seq, has_tokens)
    raise ValueError(f"unknown aggregation {mode!r}; expected 'token_mean' or 'seq_mean'")


# ---------------------------------------------------------------------------
# Language-model losses
# ---------------------------------------------------------------------------


def sft_loss(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Token cross-entropy on response tokens, with the one-token shift.

    ``L = −(1/N) Σ_{t: labels[t+1] ≠ ignore} log softmax(logits[t])[labels[t+1]]``

    ``logits`` (B, L, V) and ``labels`` (B, L) are aligned with the input ids; prompt and
    padding positions of ``labels`` carry ``ignore_index``. Returns the mean over the N
    non-ignored tokens (0, with a gradient path, when N = 0).
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    total = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=ignore_index,
        reduction="sum",
    )
    n = (shift_labels != ignore_index).sum()
    return total / n.clamp_min(1)  # N = 0: total is 0, the result 0 (no host sync)


def _row_chunks(n: int, chunk_size: int | None) -> list[slice]:
    if chunk_size is None or chunk_size <= 0 or chunk_size >= n:
        return [slice(0, n)]
    return [slice(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]


def token_logprobs(
    logits: Tensor, input_ids: Tensor, temperature: float = 1.0, chunk_size: int | None = 8
) -> Tensor:
    """Log-prob of each next token: ``logp[:, t] = log softmax(logits[:, t] / τ)[input_ids[:, t+1]]``.

    Shape (B, L) logits (B, L, V) → (B, L−1), float32. Computed as
    ``z[id] − logsumexp(z)`` with z = logits/τ in row chunks of ``chunk_size`` sequences,
    so no full (B, L, V) log-softmax is materialised in float32 at once (bf16 logits are
    upcast one chunk at a time). Use the same τ at rollout and at training time.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    ids = input_ids[:, 1:].unsqueeze(-1)
    out = []
    for sl in _row_chunks(logits.size(0), chunk_size):
        z = logits[sl, :-1, :].float()
        if temperature != 1.0:
            z = z / temperature
        picked = z.gather(-1, ids[sl]).squeeze(-1)
        out.append(picked - torch.logsumexp(z, dim=-1))
    return torch.cat(out, dim=0)


def entropy_from_logits(
    logits: Tensor, temperature: float = 1.0, chunk_size: int | None = 8
) -> Tensor:
    """Entropy of softmax(logits/τ) at every position: ``H = logsumexp(z) − Σ_v p_v z_v``.

    (B, L, V) → (B, L), float32, computed in row chunks.
    """
    out = []
    for sl in _row_chunks(logits.size(0), chunk_size):
        z = logits[sl].float()
        if temperature != 1.0:
            z = z / temperature
        lse = torch.logsumexp(z, dim=-1)
        p = torch.softmax(z, dim=-1)
        out.append(lse - (p * z).sum(dim=-1))
    return torch.cat(out, dim=0)


# ---------------------------------------------------------------------------
# Score models (reward / cost)
# ---------------------------------------------------------------------------


def _squeeze_score(x: Tensor) -> Tensor:
    """(B,) or (B, 1) → (B,) float32."""
    if x.dim() == 2 and x.size(-1) == 1:
        x = x.squeeze(-1)
    if x.dim() != 1:
        raise ValueError(f"expected end scores of shape (B,) or (B, 1), got {tuple(x.shape)}")
    return x.float()


def _squeeze_token_scores(x: Tensor) -> Tensor:
    """(B, L) or (B, L, 1) → (B, L) float32."""
    if x.dim() == 3 and x.size(-1) == 1:
        x = x.squeeze(-1)
    if x.dim() != 2:
        raise ValueError(
            f"expected per-token scores of shape (B, L) or (B, L, 1), got {tuple(x.shape)}"
        )
    return x.float()


def _score_reg(a: Tensor, b: Tensor) -> Tensor:
    """reg = mean over pairs of ½(a² + b²) = mean of the squared end scores of all 2B sequences."""
    return 0.5 * (a.pow(2) + b.pow(2)).mean()


def right_pad(mask: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Convert left-padded rows to right padding: shift every row left by its pad count.

    ``mask`` (B, L) is the attention mask (1 = real token) of a left-padded batch (real
    tokens contiguous and flush right). Returns ``(mask_r, *tensors_r)`` where each (B, L, ...)
    tensor has row b rotated by ``p_b = L − Σ_t mask[b, t]``: ``x_r[b, t] = x[b, (t + p_b) mod L]``.
    Real tokens then start at position 0; the pad positions wrap to the end.
    """
    B, L = mask.shape
    pads = L - mask.long().sum(dim=-1)
    idx = (torch.arange(L, device=mask.device).unsqueeze(0) + pads.unsqueeze(1)) % L
    out = [mask.gather(1, idx)]
    for x in tensors:
        ix = idx
        if x.dim() > 2:
            ix = idx.view(B, L, *([1] * (x.dim() - 2))).expand_as(x)
        out.append(x.gather(1, ix))
    return tuple(out)


def _check_right_padded(mask: Tensor, name: str) -> None:
    m = mask.long()
    if (m[:, 1:] > m[:, :-1]).any():
        raise ValueError(
            f"{name} is not right-padded (a real token follows a pad). Token-wise score losses "
            "compare the two sequences position by position from a common start, which needs "
            "right padding: pad right, or pass padding_side='left' to convert."
        )
    if (m.sum(dim=-1) == 0).any():
        raise ValueError(f"{name} has an empty row")


def divergence_span(
    input_ids_a: Tensor,
    input_ids_b: Tensor,
    attention_mask_a: Tensor,
    attention_mask_b: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Locate the span where two right-padded sequences differ.

    For each row: ``end_a`` / ``end_b`` = index of the last real token of a / b,
    ``end = max(end_a, end_b)``, and ``diverge`` = the first t ≤ end at which the tokens
    differ, a pad counting as different from any real token (so a sequence that is a
    prefix of the other diverges right after its end). Identical sequences get
    ``diverge = end``. Returns ``(diverge, end, end_a, end_b)``, each (B,) long.
    """
    if input_ids_a.shape != input_ids_b.shape:
        raise ValueError("both sequences of a pair must be padded to the same length")
    ma, mb = attention_mask_a.bool(), attention_mask_b.bool()
    L = ma.size(1)
    end_a = ma.long().sum(-1) - 1
    end_b = mb.long().sum(-1) - 1
    end = torch.maximum(end_a, end_b)
    pos = torch.arange(L, device=ma.device).unsqueeze(0)
    same = (input_ids_a == input_ids_b) & ma & mb
    differ = (~same) & (pos <= end.unsqueeze(1))
    has = differ.any(dim=-1)
    first = differ.long().argmax(dim=-1)  # first True (argmax returns the first maximum)
    diverge = torch.where(has, first, end)
    return diverge, end, end_a, end_b


def _span_scores(
    scores_a: Tensor,
    scores_b: Tensor,
    input_ids_a: Tensor,
    input_ids_b: Tensor,
    mask_a: Tensor,
    mask_b: Tensor,
    padding_side: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Shared work of the token-wise losses.

    Returns (s_a, s_b, span, end_score_a, end_score_b): per-token scores (B, L) of both
    sequences where each is *held at its end score after its last real token*, the span
    mask (B, L) = 1 for diverge ≤ t ≤ end, and the end scores (B,).
    """
    scores_a = _squeeze_token_scores(scores_a)
    scores_b = _squeeze_token_scores(scores_b)
    if padding_side == "left":
        mask_a, scores_a, input_ids_a = right_pad(mask_a, scores_a, input_ids_a)
        mask_b, scores_b, input_ids_b = right_pad(mask_b, scores_b, input_ids_b)
    elif padding_side != "right":
        raise ValueError("padding_side must be 'right' or 'left'")
    _check_right_padded(mask_a, "attention_mask of the first sequence")
    _check_right_padded(mask_b, "attention_mask of the second sequence")
    diverge, end, end_a, end_b = divergence_span(input_ids_a, input_ids_b, mask_a, mask_b)
    L = scores_a.size(1)
    pos = torch.arange(L, device=scores_a.device).unsqueeze(0)
    # Carry each sequence's end score forward past its end (instead of scoring pad tokens).
    s_a = scores_a.gather(1, torch.minimum(pos, end_a.unsqueeze(1)).expand_as(scores_a))
    s_b = scores_b.gather(1, torch.minimum(pos, end_b.unsqueeze(1)).expand_as(scores_b))
    span = ((pos >= diverge.unsqueeze(1)) & (pos <= end.unsqueeze(1))).float()
    end_score_a = scores_a.gather(1, end_a.unsqueeze(1)).squeeze(1)
    end_score_b = scores_b.gather(1, end_b.unsqueeze(1)).squeeze(1)
    return s_a, s_b, span, end_score_a, end_score_b


def reward_model_loss(
    better_end_scores: Tensor, worse_end_scores: Tensor, reg_coeff: float = 1e-3
) -> tuple[Tensor, dict[str, Tensor]]:
    """Pairwise (Bradley–Terry) reward loss on end scores.

    ``L = mean_pairs[ −log σ(r_w − r_l) ] + α · mean_pairs[ ½ (r_w² + r_l²) ]``

    Returns (loss, metrics) with metrics ``accuracy`` = mean 1[r_w > r_l] (ties count as
    wrong), ``better_mean``, ``worse_mean``, ``margin`` (all detached float tensors).
    """
    rw, rl = _squeeze_score(better_end_scores), _squeeze_score(worse_end_scores)
    loss = -F.logsigmoid(rw - rl).mean() + reg_coeff * _score_reg(rw, rl)
    return loss, _rank_metrics(rw, rl, "better", "worse")


def _rank_metrics(a: Tensor, b: Tensor, name_a: str, name_b: str) -> dict[str, Tensor]:
    a, b = a.detach(), b.detach()
    return {
        "accuracy": pairwise_accuracy(a, b),
        f"{name_a}_mean": a.mean(),
        f"{name_b}_mean": b.mean(),
        "margin": (a - b).mean(),
    }


def reward_model_loss_tokenwise(
    better_scores: Tensor,
    worse_scores: Tensor,
    better_input_ids: Tensor,
    worse_input_ids: Tensor,
    better_attention_mask: Tensor,
    worse_attention_mask: Tensor,
    reg_coeff: float = 1e-3,
    padding_side: Literal["right", "left"] = "right",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-wise pairwise reward loss.

    For each pair, with D = first position where the two token sequences differ and
    E = max(last real token of w, last real token of l) (see :func:`divergence_span`):

    ``L = mean_pairs[ (1/(E−D+1)) Σ_{t=D..E} −log σ(s_w[t] − s_l[t]) ] + α · mean_pairs[½(r_w² + r_l²)]``

    where s are the per-token scores (B, L) (or (B, L, 1)) and r the end scores (score at
    the last real token). Past its own last real token a sequence's score is held at its
    end score (pad tokens are never scored).

    Padding: the comparison is position by position from a common start, so both
    sequences must be right-padded (prompt at position 0). ``padding_side='left'``
    converts left-padded inputs with :func:`right_pad` first; right-padded input is
    validated and a misplaced pad raises ``ValueError``. Metrics as in
    :func:`reward_model_loss`, from end scores.
    """
    s_w, s_l, span, rw, rl = _span_scores(
        better_scores,
        worse_scores,
        better_input_ids,
        worse_input_ids,
        better_attention_mask,
        worse_attention_mask,
        padding_side,
    )
    per_pair = masked_mean(-F.logsigmoid(s_w - s_l), span, dim=-1)
    loss = per_pair.mean() + reg_coeff * _score_reg(rw, rl)
    return loss, _rank_metrics(rw, rl, "better", "worse")


def graded_sign(
    harmless_rate: Tensor | Sequence[float | None], zero_rating_sign: float | None = None
) -> Tensor:
    """Real-valued cost sign ξ from a graded harmlessness rating (BeaverTails-V, −3..+3).

    ``ξ = −harmless_rate`` (a harmful answer, rate < 0, gets ξ > 0 like "unsafe"; a harmless
    one gets ξ < 0 like "safe"; |ξ| grades the strength of the sign term). A rate of 0
    gives ξ = 0, whose term −log σ(0·c) = log 2 is constant: no gradient. With
    ``zero_rating_sign`` set (e.g. −1: "rating 0 is safe", as the data label it), a rate of
    0 gets ξ = zero_rating_sign instead. Unknown ratings (None / NaN) stay NaN, which the
    cost losses treat as "no label" (sign term masked).
    """
    if isinstance(harmless_rate, Tensor):
        rate = harmless_rate.detach().to(torch.float32)
    else:
        rate = torch.tensor(
            [float("nan") if r is None else float(r) for r in harmless_rate], dtype=torch.float32
        )
    xi = -rate
    if zero_rating_sign is not None:
        xi = torch.where(rate == 0, torch.full_like(xi, float(zero_rating_sign)), xi)
    return xi


def _sign_term(scores: Tensor, sign: Tensor, weight: Tensor | None, mask: Tensor | None) -> Tensor:
    """Per-response −w·m·log σ(ξ c) (scores (B,) or (B, L) with sign/weight/mask (B,)).

    NaN signs count as unknown (m = 0).
    """
    sign = sign.to(scores.device).float()
    known = ~torch.isnan(sign)
    if mask is not None:
        known = known & mask.to(scores.device).bool()
    xi = torch.where(known, sign, torch.zeros_like(sign))
    w = known.float()
    if weight is not None:
        w = w * weight.to(scores.device).float()
    if scores.dim() == 2:
        xi, w = xi.unsqueeze(1), w.unsqueeze(1)
    return -F.logsigmoid(xi * scores) * w


def _cost_metrics(
    cu: Tensor, cs: Tensor, unsafe_u: Tensor | None, unsafe_s: Tensor | None
) -> dict[str, Tensor]:
    cu, cs = cu.detach(), cs.detach()
    metrics = _rank_metrics(cu, cs, "unsafer", "safer")
    costs = torch.cat([cu, cs])
    labels = torch.cat([unsafe_u, unsafe_s]) if unsafe_u is not None else None
    if labels is not None:
        known = ~torch.isnan(labels.float())
        if known.any():
            metrics["sign_accuracy"] = sign_accuracy(costs[known], labels[known] > 0.5)
    return metrics


def _binary_labels(
    sign: Tensor, is_unsafe: Tensor | None, mask: Tensor | None, device: torch.device
) -> Tensor:
    """Binary labels for the metrics: given ones, or ξ > 0 ↔ unsafe; NaN = unknown
    (a NaN sign, or 0 in the sign mask)."""
    sign = sign.to(device).float()
    if is_unsafe is not None:
        labels = is_unsafe.to(device).float()
    else:
        labels = torch.where(torch.isnan(sign), sign, (sign > 0).float())
    if mask is not None:
        labels = torch.where(mask.to(device).bool(), labels, torch.full_like(labels, float("nan")))
    return labels


def safe_pair_rank_mask(unsafe_u: Tensor, unsafe_s: Tensor) -> Tensor:
    """Per-pair ranking weight that skips pairs of two responses *both labelled safe*
    (``unsafe_* == 0``): 0 there, 1 elsewhere (an unknown label, NaN, keeps the pair).

    Why: annotators still pick the "safer" of two harmless answers, usually the more cautious
    one, so ranking those pairs teaches the cost model that refusing is cheaper than answering
    on *every* prompt. A Lagrangian on that cost then trades benign helpfulness for cost it
    does not need to buy. Without those pairs the safe side is shaped by the sign term alone.
    """
    u, s = unsafe_u.float(), unsafe_s.float()
    return (~((u == 0) & (s == 0))).float()


def _masked_rank(rank: Tensor, mask: Tensor | None) -> Tensor:
    return rank if mask is None else rank * mask.to(rank.device, rank.dtype)


def _combine_cost_terms(
    rank: Tensor,
    signs: Tensor,
    cu: Tensor,
    cs: Tensor,
    unsafer_sign: Tensor,
    safer_sign: Tensor,
    kappa: float,
    reg_coeff: float,
    is_unsafe: tuple[Tensor, Tensor] | None,
    mu: Tensor | None,
    ms: Tensor | None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``mean_pairs(rank + κ·signs) + α·reg`` and the binary-label metrics (shared by both
    cost losses; ``rank``/``signs`` are per pair, ``cu``/``cs`` the end scores)."""
    loss = (rank + kappa * signs).mean() + reg_coeff * _score_reg(cu, cs)
    lu = _binary_labels(unsafer_sign, is_unsafe[0] if is_unsafe else None, mu, cu.device)
    ls = _binary_labels(safer_sign, is_unsafe[1] if is_unsafe else None, ms, cu.device)
    metrics = _cost_metrics(cu, cs, lu, ls)
    metrics["sign_loss"] = signs.detach().mean()
    return loss, metrics


def cost_model_loss(
    unsafer_end: Tensor,
    safer_end: Tensor,
    unsafer_sign: Tensor,
    safer_sign: Tensor,
    kappa: float = 1.0,
    reg_coeff: float = 1e-3,
    sign_weights: tuple[Tensor | None, Tensor | None] | None = None,
    sign_mask: tuple[Tensor | None, Tensor | None] | None = None,
    is_unsafe: tuple[Tensor, Tensor] | None = None,
    rank_mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Cost-model loss on end scores (pair u = less safe, s = safer).

    ``L = mean_pairs[ −r log σ(c_u − c_s) + κ (−w_u m_u log σ(ξ_u c_u) − w_s m_s log σ(ξ_s c_s)) ]
    + α · mean_pairs[ ½ (c_u² + c_s²) ]``

    * ξ: +1 unsafe, −1 safe (binary labels), or real-valued from :func:`graded_sign`.
    * m: 1 where the response's safety label is known. A response with an unknown label
      (NaN sign, or 0 in ``sign_mask``) simply drops its sign term; the average stays over
      all pairs (the ranking term of that pair still counts).
    * w: optional per-response weights (e.g. severity weighting), ``sign_weights =
      (w_u, w_s)``; default 1.
    * r: optional per-pair weight of the ranking term (``rank_mask``, default 1), e.g.
      :func:`safe_pair_rank_mask` (0 where both responses are labelled safe).

    Metrics use binary labels: ``accuracy`` = mean 1[c_u > c_s], ``sign_accuracy`` over
    both responses with a known label (sign(c) > 0 ↔ unsafe). Labels come from
    ``is_unsafe = (u, s)`` (bool/0-1, NaN unknown) or, when None, from ξ > 0.
    """
    cu, cs = _squeeze_score(unsafer_end), _squeeze_score(safer_end)
    wu, ws = sign_weights if sign_weights is not None else (None, None)
    mu, ms = sign_mask if sign_mask is not None else (None, None)
    rank = _masked_rank(-F.logsigmoid(cu - cs), rank_mask)
    signs = _sign_term(cu, unsafer_sign, wu, mu) + _sign_term(cs, safer_sign, ws, ms)
    return _combine_cost_terms(rank, signs, cu, cs, unsafer_sign, safer_sign, kappa, reg_coeff,
                               is_unsafe, mu, ms)


def cost_model_loss_tokenwise(
    unsafer_scores: Tensor,
    safer_scores: Tensor,
    unsafer_input_ids: Tensor,
    safer_input_ids: Tensor,
    unsafer_attention_mask: Tensor,
    safer_attention_mask: Tensor,
    unsafer_sign: Tensor,
    safer_sign: Tensor,
    kappa: float = 1.0,
    reg_coeff: float = 1e-3,
    sign_weights: tuple[Tensor | None, Tensor | None] | None = None,
    sign_mask: tuple[Tensor | None, Tensor | None] | None = None,
    is_unsafe: tuple[Tensor, Tensor] | None = None,
    padding_side: Literal["right", "left"] = "right",
    rank_mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-wise cost-model loss: the terms of :func:`cost_model_loss` averaged over the span.

    With D, E the divergence span of the pair (see :func:`reward_model_loss_tokenwise`,
    same padding rules, same end-score carry-forward), and ``avg_t`` = (1/(E−D+1)) Σ_{t=D..E}:

    ``L = mean_pairs[ r avg_t −log σ(c_u[t] − c_s[t])
                      + κ (w_u m_u avg_t −log σ(ξ_u c_u[t]) + w_s m_s avg_t −log σ(ξ_s c_s[t])) ]
          + α · mean_pairs[ ½ (c_u² + c_s²) ]``

    i.e. every prefix past the divergence is asked to carry its response's sign. Metrics
    from end scores, as in :func:`cost_model_loss`.
    """
    s_u, s_s, span, cu, cs = _span_scores(
        unsafer_scores,
        safer_scores,
        unsafer_input_ids,
        safer_input_ids,
        unsafer_attention_mask,
        safer_attention_mask,
        padding_side,
    )
    wu, ws = sign_weights if sign_weights is not None else (None, None)
    mu, ms = sign_mask if sign_mask is not None else (None, None)
    rank = _masked_rank(masked_mean(-F.logsigmoid(s_u - s_s), span, dim=-1), rank_mask)
    sign_u = masked_mean(_sign_term(s_u, unsafer_sign, wu, mu), span, dim=-1)
    sign_s = masked_mean(_sign_term(s_s, safer_sign, ws, ms), span, dim=-1)
    return _combine_cost_terms(rank, sign_u + sign_s, cu, cs, unsafer_sign, safer_sign, kappa,
                               reg_coeff, is_unsafe, mu, ms)


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------


def pairwise_accuracy(better: Tensor, worse: Tensor) -> Tensor:
    """mean 1[better > worse] as a float tensor (ties count as wrong)."""
    return (better.detach() > worse.detach()).float().mean()


def sign_accuracy(costs: Tensor, is_unsafe: Tensor) -> Tensor:
    """mean 1[(c > 0) == is_unsafe] as a float tensor; c = 0 predicts "safe"."""
    return ((costs.detach() > 0) == is_unsafe.bool()).float().mean()


def auroc(scores: Tensor | Sequence[float], labels: Tensor | Sequence[bool]) -> float:
    """Exact AUROC of ``scores`` for positives (label 1) vs negatives (label 0).

    ``AUROC = P(s_pos > s_neg) + ½ P(s_pos = s_neg)`` over all positive–negative pairs,
    computed from average ranks (Mann–Whitney U): ``(Σ rank_pos − n₊(n₊+1)/2) / (n₊ n₋)``.
    Returns ``nan`` when one class is absent.
    """
    s = torch.as_tensor(scores).detach().double().flatten().cpu()
    y = torch.as_tensor(labels).detach().flatten().cpu().bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    sorted_s, order = torch.sort(s)
    _, counts = torch.unique_consecutive(sorted_s, return_counts=True)
    ends = torch.cumsum(counts, 0).double()  # 1-based rank of the last element of each tie group
    avg_rank_group = ends - (counts.double() - 1) / 2
    ranks_sorted = torch.repeat_interleave(avg_rank_group, counts)
    ranks = torch.empty_like(ranks_sorted)
    ranks[order] = ranks_sorted
    u = ranks[y].sum().item() - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def explained_variance(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """``1 − Var[target − pred] / Var[target]`` over masked elements (population variances).

    NaN when Var[target] = 0.
    """
    pred, target = pred.detach().float(), target.detach().float()
    if mask is None:
        mask = torch.ones_like(target)
    var_t = masked_var(target, mask)
    var_r = masked_var(target - pred, mask)
    return torch.where(var_t > 0, 1.0 - var_r / var_t, torch.full_like(var_t, float("nan")))


# ---------------------------------------------------------------------------
# PPO pieces
# ---------------------------------------------------------------------------


def kl_k1(logp_old: Tensor, logp_ref: Tensor) -> Tensor:
    """Per-token k1 KL estimate ``k_t = log π_old(a_t) − log π_ref(a_t)`` (samples from π_old)."""
    return logp_old - logp_ref


def kl_k3(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """Per-token k3 KL estimate (Schulman): with log r = log π_ref − log π,
    ``k3 = exp(log r) − log r − 1 ≥ 0``; unbiased for KL(π ‖ π_ref) with samples from π.
    Differentiable in ``logp`` (used as a loss term by critic-free methods).
    """
    log_r = logp_ref - logp
    return torch.exp(log_r) - log_r - 1.0


def last_token_index(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Index of the last position with mask 1 in each row, and whether the row has one.

    Works for right padding, left padding and prompt-then-response masks alike.
    Returns (index (B,) long, 0 for empty rows; has_token (B,) bool).
    """
    m = mask.bool()
    pos = torch.arange(m.size(-1), device=m.device).expand_as(m)
    last = torch.where(m, pos, torch.full_like(pos, -1)).max(dim=-1).values
    return last.clamp_min(0), last >= 0


def shaped_token_rewards(
    end_score: Tensor,
    kl: Tensor,
    response_mask: Tensor,
    beta: float,
    clip_score: float | None = None,
    sign: float = 1.0,
) -> Tensor:
    """Per-token stream with a KL penalty and the terminal score on the last real token T.

    ``x_t = m_t (−sign · β · k_t) + 1[t = T] · clip(S, −clip_score, clip_score)``

    * ``sign = +1``: reward stream (maximised), ``r_t = −β k_t + 1[t=T]·R``;
    * ``sign = −1``: cost stream (minimised), ``c_t = +β k_t + 1[t=T]·C``.

    With the combiner ``(A_r − λ A_c)/(1+λ)`` the KL parts add up to −β k_t for every λ.
    The clip applies to the terminal score only, before it is added (as safe-rlhf clamps
    the score); the KL term is not clipped. ``clip_score=None`` disables the clip.
    Shapes: end_score (B,) or (B, 1); kl, response_mask (B, T); result (B, T) float32,
    0 outside the mask. Rows with an empty mask get no terminal score.
    """
    score = _squeeze_score(end_score).detach()
    if clip_score is not None:
        score = score.clamp(-clip_score, clip_score)
    m = response_mask.float()
    stream = -float(sign) * beta * kl.detach().float() * m
    last, has = last_token_index(response_mask)
    terminal = torch.zeros_like(stream)
    terminal.scatter_(1, last.unsqueeze(1), (score * has.float()).unsqueeze(1))
    return stream + terminal


@torch.no_grad()
def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over the real tokens of each row.

    Walking backwards over the positions with m_t = 1 (t' = the next position with m = 1):
    ``δ_t = r_t + γ V_{t'} − V_t``,  ``A_t = δ_t + γ λ A_{t'}``, with ``V_{t'} = A_{t'} = 0``
    after the last real token (the episode ends there). Masked positions are skipped
    entirely (their rewards/values are ignored and they do not break the recursion), so
    right padding, left padding and prompt prefixes are all handled and nothing leaks
    across padding. Returns ``(advantages, returns = A + V)``, both 0 outside the mask.
    Inputs are detached (these are regression targets).
    """
    r, v, m = rewards.float(), values.float(), mask.bool()
    B, T = r.shape
    adv = torch.zeros_like(r)
    next_value = torch.zeros(B, dtype=r.dtype, device=r.device)
    next_adv = torch.zeros(B, dtype=r.dtype, device=r.device)
    for t in range(T - 1, -1, -1):
        delta = r[:, t] + gamma * next_value - v[:, t]
        a_t = delta + gamma * lam * next_adv
        mt = m[:, t]
        adv[:, t] = torch.where(mt, a_t, torch.zeros_like(a_t))
        next_value = torch.where(mt, v[:, t], next_value)
        next_adv = torch.where(mt, a_t, next_adv)
    mf = m.float()
    return adv, (adv + v) * mf


def combine_advantages(adv_r: Tensor, adv_c: Tensor, lam: float | Tensor) -> Tensor:
    """Safe RLHF combiner ``A = (A_r − λ A_c) / (1 + λ)`` with λ ≥ 0 detached."""
    if isinstance(lam, Tensor):
        lam = lam.detach().to(adv_r.device, adv_r.dtype)
    return (adv_r - lam * adv_c) / (1.0 + lam)


def policy_loss(
    logp: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    agg: Aggregation = "token_mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped PPO surrogate.

    ``ρ_t = exp(log π_t − log π_old,t)``,
    ``ℓ_t = −min(ρ_t A_t, clip(ρ_t, 1−ε, 1+ε) A_t)``, loss = aggregate(ℓ, mask, agg).
    ``advantages`` may be per token (B, T) or per sequence (B,) (broadcast over tokens).
    Stats (detached, over masked tokens): ``clipfrac`` (fraction where the clipped branch
    is the active one), ``approx_kl`` = mean((ρ−1) − log ρ) (k3 of π_old vs π),
    ``ratio_mean``, ``ratio_max``.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    advantages = advantages.detach()
    log_ratio = logp - logp_old.detach()
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(pg1, pg2)
    loss = aggregate(per_token, mask, agg)
    with torch.no_grad():
        m = mask.bool().expand_as(per_token)
        lr = log_ratio.detach()
        stats = {
            "clipfrac": masked_mean((pg2 > pg1).float(), m),
            "approx_kl": masked_mean(torch.expm1(lr) - lr, m),
            "ratio_mean": masked_mean(ratio.detach(), m),
            "ratio_max": torch.where(m, ratio.detach(), torch.ones_like(ratio)).max(),
        }
    return loss, stats


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps_v: float | None = 5.0,
    agg: Aggregation = "token_mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss ``ℓ_t = ½ max((V_t − G_t)², (clip(V_t, V_old,t ± ε_v) − G_t)²)``.

    ``clip_eps_v=None`` gives the plain ½(V − G)². Stats: ``clipfrac`` (fraction of masked
    tokens where the clipped term is the larger), ``explained_variance`` of G by V.
    """
    returns, old_values = returns.detach(), old_values.detach()
    l1 = (values - returns) ** 2
    if clip_eps_v is None:
        per_token = 0.5 * l1
        clipped = torch.zeros_like(l1, dtype=torch.bool)
    else:
        v_clip = torch.clamp(values, old_values - clip_eps_v, old_values + clip_eps_v)
        l2 = (v_clip - returns) ** 2
        per_token = 0.5 * torch.maximum(l1, l2)
        clipped = l2 > l1
    loss = aggregate(per_token, mask, agg)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean(clipped.float(), mask),
            "explained_variance": explained_variance(values, returns, mask),
        }
    return loss, stats


# ---------------------------------------------------------------------------
# Critic-free Lagrangian (GRPO / RLOO-style group baselines)
# ---------------------------------------------------------------------------


def group_advantages(
    scores: Tensor,
    group_size: int,
    baseline: Literal["mean", "rloo"] = "mean",
    normalize_std: bool = False,
    eps: float = 1e-6,
) -> Tensor:
    """Per-sequence advantages from a group baseline.

    ``scores`` (B,) holds B/g groups of g = ``group_size`` consecutive samples of the same
    prompt (rows [i·g, (i+1)·g) form group i). With μ the group mean:

    * ``mean``: ``Â_i = s_i − μ``;
    * ``rloo``: ``Â_i = s_i − (1/(g−1)) Σ_{j≠i} s_j = g/(g−1) (s_i − μ)`` (needs g ≥ 2).

    ``normalize_std``: divide by (group std + eps) (GRPO-style; population std).
    A group whose scores are all equal gets exactly 0 (no division by zero, no rounding
    residue). Note: per-stream std normalisation re-weights a Lagrangian; the Lagrangian
    combiner :func:`grpo_lag_advantages` does not use it.
    """
    s = _squeeze_score(scores)
    if group_size < 1 or s.numel() % group_size != 0:
        raise ValueError(f"batch of {s.numel()} is not a multiple of group_size={group_size}")
    g = s.view(-1, group_size)
    mean = g.mean(dim=-1, keepdim=True)
    if baseline == "mean":
        adv = g - mean
    elif baseline == "rloo":
        if group_size < 2:
            raise ValueError("the RLOO baseline needs group_size >= 2")
        loo = (g.sum(dim=-1, keepdim=True) - g) / (group_size - 1)
        adv = g - loo
    else:
        raise ValueError(f"unknown baseline {baseline!r}; expected 'mean' or 'rloo'")
    if normalize_std:
        std = g.std(dim=-1, unbiased=False, keepdim=True)
        adv = adv / (std + eps)
    constant = g.max(dim=-1, keepdim=True).values == g.min(dim=-1, keepdim=True).values
    adv = torch.where(constant, torch.zeros_like(adv), adv)
    return adv.reshape(-1)


def grpo_lag_advantages(
    rewards: Tensor,
    costs: Tensor,
    group_size: int,
    lam: float | Tensor,
    baseline: Literal["mean", "rloo"] = "mean",
    whiten: bool = False,
    eps: float = 1e-8,
) -> Tensor:
    """Critic-free Lagrangian advantage per sequence (B,).

    ``Â = (Â_r − λ Â_c) / (1 + λ)`` with Â_r, Â_c from :func:`group_advantages` (no std
    normalisation per stream). With ``whiten``, the *combined* advantage is whitened over
    the batch afterwards: ``Â ← (Â − mean Â) / (std Â + eps)`` (population std), and a batch
    whose Â are all equal gets 0. Whitening each stream before combining would re-weight
    the Lagrangian, so it is not offered. The trainer broadcasts Â over response tokens.
    """
    adv = combine_advantages(
        group_advantages(rewards, group_size, baseline),
        group_advantages(costs, group_size, baseline),
        lam,
    )
    if whiten:
        centred = adv - adv.mean()
        std = adv.std(unbiased=False)
        if std.item() == 0:
            return torch.zeros_like(adv)
        adv = centred / (std + eps)
    return adv


# ---------------------------------------------------------------------------
# Preference optimisation
# ---------------------------------------------------------------------------


def dpo_loss(
    policy_logp_w: Tensor,
    policy_logp_l: Tensor,
    ref_logp_w: Tensor,
    ref_logp_l: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DPO: ``L = mean −log σ(β [(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))])``.

    Inputs are log-probs summed over response tokens only (B,), e.g.
    ``masked_sum(token_logprobs(...), response_mask, dim=-1)``. Metrics: implicit rewards
    ``chosen_reward = β(log π(y_w) − log π_ref(y_w))``, ``rejected_reward``, ``margin``,
    ``accuracy`` = mean 1[chosen_reward > rejected_reward].
    """
    chosen = beta * (policy_logp_w - ref_logp_w.detach())
    rejected = beta * (policy_logp_l - ref_logp_l.detach())
    loss = -F.logsigmoid(chosen - rejected).mean()
    c, r = chosen.detach(), rejected.detach()
    metrics = {
        "chosen_reward": c.mean(),
        "rejected_reward": r.mean(),
        "margin": (c - r).mean(),
        "accuracy": (c > r).float().mean(),
    }
    return loss, metrics


# ---------------------------------------------------------------------------
# The safety-aware direct-preference family (DPO variants)
# ---------------------------------------------------------------------------


def safe_dpo_order(
    better_is_a: Tensor, unsafe_a: Tensor, unsafe_b: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """SafeDPO's safety-aware re-ordering of a helpfulness preference (Kim et al., 2025).

    Given the helpfulness winner (``better_is_a``: 1 when response a is preferred) and the
    unsafety indicators ``h_a = 1[a unsafe]``, ``h_b``, the pair is re-ordered so that an unsafe
    response never wins over a safe one:

    ``(y_w, y_l) ← (y_l, y_w)  if  h_w = 1 and h_l = 0,  else  (y_w, y_l)``.

    Returns ``(chosen_is_a, h_chosen, h_rejected)`` (bool, float, float), each (B,).
    """
    better = better_is_a.bool()
    ua, ub = unsafe_a.float(), unsafe_b.float()
    h_w = torch.where(better, ua, ub)
    h_l = torch.where(better, ub, ua)
    swap = (h_w > 0.5) & (h_l < 0.5)
    chosen_is_a = torch.where(swap, ~better, better)
    return chosen_is_a, torch.where(swap, h_l, h_w), torch.where(swap, h_w, h_l)


def _dpo_metrics(chosen: Tensor, rejected: Tensor) -> dict[str, Tensor]:
    c, r = chosen.detach(), rejected.detach()
    return {
        "chosen_reward": c.mean(),
        "rejected_reward": r.mean(),
        "margin": (c - r).mean(),
        "accuracy": (c > r).float().mean(),
    }


def safe_dpo_loss(
    policy_logp_w: Tensor,
    policy_logp_l: Tensor,
    ref_logp_w: Tensor,
    ref_logp_l: Tensor,
    unsafe_w: Tensor,
    unsafe_l: Tensor,
    beta: float = 0.1,
    delta: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SafeDPO (Kim et al., 2025, "SafeDPO: A Simple Approach to Direct Preference Optimization
    with Enhanced Safety", arXiv:2505.20065), on pairs already re-ordered by :func:`safe_dpo_order`:

    ``L = mean −log σ( β log[π(y_w)/π_ref(y_w)] − β log[π(y_l)/π_ref(y_l)] − (h_l − h_w) Δ )``

    with ``h = 1[response unsafe]`` and the safety margin Δ ≥ 0: a pair whose loser is unsafe
    and whose winner is safe must be separated by a further Δ in implicit reward. Δ = 0 is DPO
    on the re-ordered pairs (the paper's closed-form optimum does not depend on Δ; Δ > 0 pushes
    probability off unsafe responses faster). Metrics as :func:`dpo_loss` (without the margin).
    """
    chosen = beta * (policy_logp_w - ref_logp_w.detach())
    rejected = beta * (policy_logp_l - ref_logp_l.detach())
    margin_term = (unsafe_l.float() - unsafe_w.float()) * delta
    loss = -F.logsigmoid(chosen - rejected - margin_term).mean()
    return loss, _dpo_metrics(chosen, rejected)


def sacpo_stage_loss(
    policy_logp_w: Tensor,
    policy_logp_l: Tensor,
    stage_ref_logp_w: Tensor,
    stage_ref_logp_l: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One step of SACPO (Wachi et al., NeurIPS 2024, "Stepwise Alignment for Constrained
    Language Model Policy Optimization"): DPO against the *previous step's* policy.

    Step 1 (e.g. helpfulness, preferences by ``better``): ``π₁ = argmin L_DPO(π; π_ref = π_SFT, β)``.
    Step 2 (harmlessness, preferences by ``safer``), KL-regularised to π₁:

    ``L₂ = mean −log σ( (β/λ) [log π(y_w)/π₁(y_w) − log π(y_l)/π₁(y_l)] )``

    i.e. DPO with ``π_ref = π₁`` and coefficient β/λ (pass ``beta = β/λ``). The order of the two
    steps can be swapped (safety first), which the paper also studies.
    """
    return dpo_loss(policy_logp_w, policy_logp_l, stage_ref_logp_w, stage_ref_logp_l, beta)


def merge_weights(
    state_a: dict[str, Tensor], state_b: dict[str, Tensor], weight: float
) -> dict[str, Tensor]:
    """P-SACPO linear model merging (Wachi et al., 2024, §6): ``θ = (1 − w) θ_a + w θ_b``.

    ``state_a``: e.g. the helpfulness-aligned policy, ``state_b`` the policy after the safety
    step; ``w ∈ [0, 1]`` moves along the segment between them without retraining.
    Non-floating tensors (buffers such as integer ids) are taken from ``state_a`` unchanged.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"merge weight must be in [0, 1], got {weight}")
    if state_a.keys() != state_b.keys():
        missing = sorted(set(state_a) ^ set(state_b))[:5]
        raise ValueError(f"cannot merge models with different parameters (e.g. {missing})")
    out = {}
    for k, a in state_a.items():
        b = state_b[k]
        if a.shape != b.shape:
            raise ValueError(f"cannot merge {k}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
        out[k] = torch.lerp(a, b.to(a.dtype), weight) if a.is_floating_point() else a.clone()
    return out


def lagrangian_preference(
    reward_a: Tensor, reward_b: Tensor, cost_a: Tensor, cost_b: Tensor, lam: float | Tensor
) -> Tensor:
    """C-DPO's preference under the Lagrangian reward (Liu et al., 2024, "Enhancing LLM Safety via
    Constrained Direct Preference Optimization", arXiv:2403.02475):

    ``r_λ(x, y) = r(x, y) − λ c(x, y)``;  ``a ≻ b  ⇔  r_λ(a) > r_λ(b)`` (ties go to a).

    ``r``, ``c`` are the trained reward and cost models' scores of both responses. Returns
    ``chosen_is_a`` (B,) bool; the DPO step then uses :func:`dpo_loss` on the relabelled pairs.
    """
    if isinstance(lam, Tensor):
        lam = lam.detach()
    ra = reward_a.float() - lam * cost_a.float()
    rb = reward_b.float() - lam * cost_b.float()
    return ra >= rb


def c_dpo_loss(
    policy_logp_a: Tensor,
    policy_logp_b: Tensor,
    ref_logp_a: Tensor,
    ref_logp_b: Tensor,
    reward_a: Tensor,
    reward_b: Tensor,
    cost_a: Tensor,
    cost_b: Tensor,
    lam: float | Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Primal step of C-DPO (Liu et al., 2024): DPO on the pairs relabelled by ``r − λ c``.

    With ``(y_w, y_l)`` ordered by :func:`lagrangian_preference`,

    ``L(θ; λ) = mean −log σ( β log[π(y_w)/π_ref(y_w)] − β log[π(y_l)/π_ref(y_l)] )``.

    The dual step is outside the loss: ``λ ← [λ + η (Ĵ_C(π_θ) − d)]₊`` with Ĵ_C measured on samples
    of the current policy (:class:`saferlhf.lagrange.LagrangeMultiplier`). Metrics as
    :func:`dpo_loss` plus ``flipped`` = the share of pairs whose λ-preference differs from the
    reward-only one.
    """
    a_wins = lagrangian_preference(reward_a, reward_b, cost_a, cost_b, lam)
    pw = torch.where(a_wins, policy_logp_a, policy_logp_b)
    pl = torch.where(a_wins, policy_logp_b, policy_logp_a)
    rw = torch.where(a_wins, ref_logp_a, ref_logp_b)
    rl = torch.where(a_wins, ref_logp_b, ref_logp_a)
    loss, metrics = dpo_loss(pw, pl, rw, rl, beta)
    metrics["flipped"] = (a_wins != (reward_a.float() >= reward_b.float())).float().mean()
    return loss, metrics
