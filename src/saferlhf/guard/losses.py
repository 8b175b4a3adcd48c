"""Guard losses: one term per head, each with a label mask (pure tensor functions).

For a batch of B examples and K harm categories (σ = logistic):

    unsafe      L_u = Σ_i m_i · BCE_w(z_i, y_i) / Σ_i m_i
                BCE_w(z, y) = −[w₊ · y · log σ(z) + (1 − y) · log(1 − σ(z))]
    severity    L_s = Σ_i n_i · v_{s_i} · CE(q_i, s_i) / Σ_i n_i · v_{s_i}        s_i ∈ {0, 1, 2, 3}
    categories  L_c = Σ_{i,k} M_ik · BCE_{w_k}(r_ik, c_ik) / Σ_{i,k} M_ik
    total       L   = a · L_u + b · L_s + c · L_c

z (B,) unsafe logits, q (B, 4) severity logits, r (B, K) category logits; m, n, M are the
masks of known labels: a source that lacks a label (HarmBench has no severity, a prompt set
with its own categories knows nothing of the others) contributes no gradient to that head.
w₊ and w_k are positive-class weights (``n_neg / n_pos`` for balanced weighting), v the
severity class weights (the weighted-mean convention of ``F.cross_entropy``). A term whose
mask is empty is exactly 0 with a zero (finite) gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from saferlhf.data.schema import GuardRecord

N_SEVERITY = 4


@dataclass
class GuardLabels:
    """Label tensors of a batch; masks are 1 where the label is known."""

    unsafe: Tensor  # (B,) 0/1 float
    unsafe_mask: Tensor  # (B,)
    severity: Tensor  # (B,) long, any value where masked
    severity_mask: Tensor  # (B,)
    categories: Tensor  # (B, K) 0/1 float
    category_mask: Tensor  # (B, K)

    def to(self, device) -> GuardLabels:
        return GuardLabels(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def _bce(logits: Tensor, targets: Tensor, pos_weight: Tensor | float | None) -> Tensor:
    """Per-element ``−[w y log σ(z) + (1 − y) log(1 − σ(z))]`` (numerically stable)."""
    pw = None
    if pos_weight is not None:
        pw = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), pos_weight=pw,
                                              reduction="none")


def _masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    den = weights.sum()
    if float(den) == 0.0:
        return (values * 0.0).sum()  # keeps the graph: zero gradient, never NaN
    return (values * weights).sum() / den


def unsafe_loss(logits: Tensor, unsafe: Tensor, mask: Tensor | None = None,
                pos_weight: Tensor | float | None = None) -> Tensor:
    """``L_u``: masked mean of the (positively weighted) binary cross-entropy."""
    m = torch.ones_like(logits) if mask is None else mask.to(logits.dtype)
    return _masked_mean(_bce(logits, unsafe, pos_weight), m)


def severity_loss(logits: Tensor, severity: Tensor, mask: Tensor | None = None,
                  class_weights: Tensor | Sequence[float] | None = None) -> Tensor:
    """``L_s``: class-weighted cross-entropy over the 4 severity levels, masked examples left out."""
    m = torch.ones(logits.shape[0], dtype=logits.dtype, device=logits.device) if mask is None \
        else mask.to(logits.dtype)
    target = torch.where(m > 0, severity.long(), torch.zeros_like(severity.long())).clamp(0, logits.shape[-1] - 1)
    ce = F.cross_entropy(logits, target, reduction="none")
    if class_weights is not None:
        v = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)[target]
    else:
        v = torch.ones_like(ce)
    return _masked_mean(ce, m * v)


def category_loss(logits: Tensor, categories: Tensor, mask: Tensor | None = None,
                  pos_weight: Tensor | Sequence[float] | None = None) -> Tensor:
    """``L_c``: multi-label binary cross-entropy, one weight per category, per-entry mask."""
    if logits.shape[-1] == 0:
        return logits.sum() * 0.0
    m = torch.ones_like(logits) if mask is None else mask.to(logits.dtype)
    return _masked_mean(_bce(logits, categories, pos_weight), m)


def guard_loss(
    unsafe_logits: Tensor,
    severity_logits: Tensor,
    category_logits: Tensor,
    labels: GuardLabels,
    *,
    unsafe_pos_weight: Tensor | float | None = None,
    severity_class_weights: Tensor | Sequence[float] | None = None,
    category_pos_weight: Tensor | Sequence[float] | None = None,
    head_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> tuple[Tensor, dict[str, Tensor]]:
    """``L = a·L_u + b·L_s + c·L_c`` and per-head metrics (losses, accuracies on known labels)."""
    lu = unsafe_loss(unsafe_logits, labels.unsafe, labels.unsafe_mask, unsafe_pos_weight)
    ls = severity_loss(severity_logits, labels.severity, labels.severity_mask, severity_class_weights)
    lc = category_loss(category_logits, labels.categories, labels.category_mask, category_pos_weight)
    a, b, c = head_weights
    total = a * lu + b * ls + c * lc
    with torch.no_grad():
        um = labels.unsafe_mask > 0
        sm = labels.severity_mask > 0
        metrics = {"loss_unsafe": lu.detach(), "loss_severity": ls.detach(), "loss_categories": lc.detach()}
        # accuracies only where the batch has such labels (a NaN metric would stop the training loop)
        if um.any():
            metrics["unsafe_accuracy"] = ((unsafe_logits[um] > 0).float() == labels.unsafe[um].float()).float().mean()
        if sm.any():
            metrics["severity_accuracy"] = (severity_logits[sm].argmax(-1) == labels.severity[sm].long()).float().mean()
    return total, metrics


def balanced_weights(labels: GuardLabels, *, max_weight: float = 50.0) -> dict[str, Tensor]:
    """Class weights from a labelled set: ``n_neg / n_pos`` for unsafe and each category (clipped
    to [1/max, max], 1 where a class is absent) and ``n / (C · n_c)`` for the severity classes
    present (absent classes get 0; the weighted mean renormalises)."""
    um = labels.unsafe_mask > 0
    pos = float(labels.unsafe[um].sum())
    neg = float(um.sum()) - pos
    w_unsafe = torch.tensor(min(max(neg / pos, 1 / max_weight), max_weight) if pos and neg else 1.0)
    sm = labels.severity_mask > 0
    counts = torch.bincount(labels.severity[sm].long(), minlength=N_SEVERITY).float()
    n_present = int((counts > 0).sum())
    if n_present:
        w_sev = torch.where(counts > 0, counts.sum() / (n_present * counts.clamp(min=1)), torch.zeros_like(counts))
    else:
        w_sev = torch.ones(N_SEVERITY)
    cm = labels.category_mask > 0
    cpos = (labels.categories * cm).sum(0)
    cneg = cm.sum(0) - cpos
    ratio = torch.where((cpos > 0) & (cneg > 0), cneg / cpos.clamp(min=1), torch.ones_like(cpos))
    w_cat = ratio.clamp(1 / max_weight, max_weight)
    return {"unsafe_pos_weight": w_unsafe, "severity_class_weights": w_sev, "category_pos_weight": w_cat}


def build_labels(records: Sequence[GuardRecord], categories: Sequence[str]) -> GuardLabels:
    """Label tensors and masks for ``records``: ``unsafe`` is always known; ``severity`` where the
    record has one; category labels where the record's source labels categories: every category
    when the data set holds any category name at all (a safe response then is a known "none"),
    or the names listed in a record's ``metadata["category_scope"]``."""
    n, k = len(records), len(categories)
    index = {c: i for i, c in enumerate(categories)}
    source_has_categories = any(r.categories for r in records)
    unsafe = torch.tensor([0.0 if r.safe else 1.0 for r in records])
    sev = torch.tensor([r.severity if r.severity is not None else 0 for r in records], dtype=torch.long)
    sev_mask = torch.tensor([1.0 if r.severity is not None else 0.0 for r in records])
    cats = torch.zeros((n, k))
    cmask = torch.zeros((n, k))
    for i, r in enumerate(records):
        for c in r.categories:
            if c in index:
                cats[i, index[c]] = 1.0
        scope = r.metadata.get("category_scope")
        if scope is not None:
            for c in scope:
                if c in index:
                    cmask[i, index[c]] = 1.0
        elif source_has_categories:
            cmask[i] = 1.0
    return GuardLabels(unsafe=unsafe, unsafe_mask=torch.ones(n), severity=sev, severity_mask=sev_mask,
                       categories=cats, category_mask=cmask)
