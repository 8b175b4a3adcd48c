"""Guard heads: each loss and its label mask on hand-made examples; class weights; calibration;
the offline metrics (F1, FPR, AUPRC, severity macro accuracy, per-category F1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saferlhf.data.schema import GuardRecord
from saferlhf.eval.guard_eval import (
    average_precision,
    binary_metrics,
    category_metrics,
    reliability,
    severity_metrics,
)
from saferlhf.guard.losses import (
    GuardLabels,
    balanced_weights,
    build_labels,
    category_loss,
    guard_loss,
    severity_loss,
    unsafe_loss,
)
from saferlhf.guard.model import fit_temperature, threshold_for_fpr
from saferlhf.trainers.guard import resolve_taxonomy, stratified_split

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------- unsafe head
def test_unsafe_loss_by_hand_and_mask():
    z = torch.tensor([0.0, 2.0, -1.0], requires_grad=True)
    y = torch.tensor([1.0, 0.0, 1.0])
    m = torch.tensor([1.0, 1.0, 0.0])
    loss = unsafe_loss(z, y, m, pos_weight=2.0)
    # -2 log σ(0) = 2 ln 2 ; -log(1 - σ(2)) = log(1 + e²) ; the third example is masked out
    expected = (2 * LN2 + math.log1p(math.exp(2.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert z.grad[2].item() == 0.0 and z.grad[0].item() != 0.0
    # the masked example's logit does not matter at all
    z2 = torch.tensor([0.0, 2.0, 50.0])
    assert unsafe_loss(z2, y, m, pos_weight=2.0).item() == pytest.approx(expected, rel=1e-6)
    # no mask: plain mean; pos_weight None = 1
    assert unsafe_loss(torch.zeros(2), torch.tensor([1.0, 0.0])).item() == pytest.approx(LN2)


def test_every_loss_is_zero_with_finite_grad_when_fully_masked():
    z = torch.randn(3, requires_grad=True)
    q = torch.randn(3, 4, requires_grad=True)
    r = torch.randn(3, 2, requires_grad=True)
    total = (unsafe_loss(z, torch.ones(3), torch.zeros(3))
             + severity_loss(q, torch.tensor([1, 2, 3]), torch.zeros(3))
             + category_loss(r, torch.ones(3, 2), torch.zeros(3, 2)))
    assert total.item() == 0.0
    total.backward()
    for t in (z, q, r):
        assert torch.isfinite(t.grad).all() and (t.grad == 0).all()


# ----------------------------------------------------------------------------- severity head
def test_severity_loss_by_hand_weights_and_mask():
    q = torch.zeros(3, 4)
    q[2, 2] = math.log(3.0)  # p(level 2) = 3 / 6
    s = torch.tensor([0, 3, 2])
    m = torch.tensor([1.0, 0.0, 1.0])  # e.g. a HarmBench-like example without severity in the middle
    v = [1.0, 1.0, 2.0, 1.0]
    # CE(example 0, level 0) = ln 4 with weight 1 ; CE(example 2, level 2) = ln 2 with weight 2
    assert severity_loss(q, s, m, v).item() == pytest.approx((math.log(4) + 2 * LN2) / 3, rel=1e-6)
    assert severity_loss(q, s, m).item() == pytest.approx((math.log(4) + LN2) / 2, rel=1e-6)
    # a masked example may even carry an invalid level
    assert severity_loss(q, torch.tensor([0, 99, 2]), m).item() == pytest.approx((math.log(4) + LN2) / 2)


# ----------------------------------------------------------------------------- category head
def test_category_loss_by_hand_with_partial_scope():
    r = torch.zeros(2, 3, requires_grad=True)
    c = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # example 0 knows categories 0 and 1 (its source's scope), example 1 only category 2
    mk = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    loss = category_loss(r, c, mk, pos_weight=[3.0, 1.0, 1.0])
    assert loss.item() == pytest.approx((3 * LN2 + LN2 + LN2) / 3, rel=1e-6)
    loss.backward()
    assert r.grad[1, 1].item() == 0.0 and r.grad[0, 2].item() == 0.0 and r.grad[0, 0].item() < 0
    assert category_loss(torch.zeros(4, 0), torch.zeros(4, 0)).item() == 0.0  # no category head


def test_guard_loss_combines_heads_with_weights():
    labels = GuardLabels(
        unsafe=torch.tensor([1.0, 0.0]), unsafe_mask=torch.ones(2),
        severity=torch.tensor([2, 0]), severity_mask=torch.tensor([0.0, 1.0]),
        categories=torch.tensor([[1.0], [0.0]]), category_mask=torch.tensor([[0.0], [1.0]]))
    z, q, r = torch.zeros(2), torch.zeros(2, 4), torch.zeros(2, 1)
    loss, metrics = guard_loss(z, q, r, labels, head_weights=(1.0, 0.5, 2.0))
    assert loss.item() == pytest.approx(LN2 + 0.5 * math.log(4) + 2 * LN2, rel=1e-6)
    assert metrics["loss_unsafe"].item() == pytest.approx(LN2)
    assert metrics["unsafe_accuracy"].item() == 0.5  # z = 0 predicts safe
    assert metrics["severity_accuracy"].item() == 1.0  # argmax of zeros = level 0
    no_sev = GuardLabels(labels.unsafe, labels.unsafe_mask, labels.severity, torch.zeros(2),
                         labels.categories, labels.category_mask)
    assert "severity_accuracy" not in guard_loss(z, q, r, no_sev)[1]  # no NaN metric


def test_balanced_weights():
    labels = GuardLabels(
        unsafe=torch.tensor([1.0, 0.0, 0.0, 0.0]), unsafe_mask=torch.ones(4),
        severity=torch.tensor([2, 0, 0, 0]), severity_mask=torch.tensor([1.0, 1.0, 1.0, 0.0]),
        categories=torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0]]),
        category_mask=torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]))
    w = balanced_weights(labels)
    assert w["unsafe_pos_weight"].item() == 3.0
    # severity: 2 x level 0, 1 x level 2 among the labelled -> n / (2 n_c); absent levels 0
    assert w["severity_class_weights"].tolist() == pytest.approx([0.75, 0.0, 1.5, 0.0])
    # category 0: 1 positive of 3 known -> 2 ; category 1: no known positive -> 1
    assert w["category_pos_weight"].tolist() == pytest.approx([2.0, 1.0])


# ----------------------------------------------------------------------------- labels from records
def test_labels_masks_from_records_and_taxonomy():
    pku = [GuardRecord("p", safe=False, response="r", severity=2, categories=frozenset({"Violence"})),
           GuardRecord("p", safe=True, response="r", severity=0)]
    name, cats = resolve_taxonomy(pku)
    assert name == "pku" and len(cats) == 19
    lab = build_labels(pku, cats)
    assert lab.category_mask.sum().item() == 2 * 19  # a source with categories: every entry known
    assert lab.categories[0, cats.index("Violence")].item() == 1.0 and lab.severity_mask.tolist() == [1.0, 1.0]
    # a prompt set without severity and with its own partial taxonomy (e.g. HarmBench)
    hb = [GuardRecord("x", safe=False, categories=frozenset({"hb:a"}), metadata={"category_scope": ["hb:a", "hb:b"]}),
          GuardRecord("y", safe=False, categories=frozenset({"sr:c"}), metadata={"category_scope": ["sr:c"]}),
          GuardRecord("z", safe=True, metadata={"category_scope": ["hb:a", "hb:b", "sr:c"]})]
    name, cats = resolve_taxonomy(hb)
    assert name == "custom" and cats == ["hb:a", "hb:b", "sr:c"]
    lab = build_labels(hb, cats)
    assert lab.severity_mask.tolist() == [0.0, 0.0, 0.0]
    assert lab.category_mask.tolist() == [[1, 1, 0], [0, 0, 1], [1, 1, 1]]
    assert resolve_taxonomy([GuardRecord("p", safe=True)]) == ("none", [])
    _, held = stratified_split(pku * 10, 0.2, seed=0)
    assert len(held) == 4 and sum(not r.safe for r in held) == 2


# ----------------------------------------------------------------------------- calibration
def test_fit_temperature_recovers_the_true_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 6, size=20000)
    y = rng.random(20000) < 1 / (1 + np.exp(-z / 3.0))
    assert fit_temperature(z, y) == pytest.approx(3.0, rel=0.08)
    assert fit_temperature(z, np.ones_like(y)) == 1.0  # one class: left alone


def test_threshold_for_fpr():
    neg = [0.1, 0.2, 0.3, 0.9]
    t = threshold_for_fpr(neg, 0.25)
    assert 0.3 < t < 0.31 and np.mean(np.array(neg) >= t) == 0.25
    assert threshold_for_fpr(neg, 0.0) > 0.9
    assert threshold_for_fpr([0.01, 0.02], 1.0) == 0.05  # floor


# ----------------------------------------------------------------------------- metrics
def test_binary_metrics_and_average_precision():
    y = [1, 0, 1, 0]
    s = [0.9, 0.8, 0.7, 0.1]
    assert average_precision(y, s) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)  # ties enter together
    m = binary_metrics(y, s, threshold=0.75)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 1, 1, 1)
    assert m["precision"] == m["recall"] == m["f1"] == m["fpr"] == m["accuracy"] == 0.5
    assert m["auroc"] == pytest.approx(0.75)


def test_severity_and_category_metrics():
    sm = severity_metrics([0, 0, 1, 2, 3, 3], [0, 1, 1, 2, 3, 0])
    assert sm["confusion_matrix"][0] == [1, 1, 0, 0] and sm["confusion_matrix"][3] == [1, 0, 0, 1]
    assert sm["macro_accuracy"] == pytest.approx((0.5 + 1 + 1 + 0.5) / 4)
    assert sm["accuracy"] == pytest.approx(4 / 6)
    true = np.array([[1, 0], [1, 0], [0, 1]])
    pred = np.array([[1, 0], [0, 0], [0, 1]])
    mask = np.array([[1, 1], [1, 1], [1, 0]])  # the last example does not know category 1
    cm = category_metrics(true, pred, mask, ["a", "b"])
    assert cm["per_category"]["a"]["f1"] == pytest.approx(2 / 3)
    assert "b" in cm["per_category"] and cm["per_category"]["b"]["support"] == 0
    rel = reliability([0, 1, 1, 0], [0.05, 0.95, 0.85, 0.15], n_bins=10)
    assert rel["ece"] == pytest.approx(0.1) and sum(b["count"] for b in rel["bins"]) == 4
