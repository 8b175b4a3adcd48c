"""Offline evaluation of a guard (``saferlhf eval guard``; DESIGN §8 metrics).

Unsafe is the positive class. For labels y ∈ {0, 1}, scores s = P(unsafe) and threshold t
(flagged ⇔ s ≥ t):

    precision = TP / (TP + FP)     recall = TP / (TP + FN)     F1 = 2PR / (P + R)
    FPR = FP / (FP + TN)           accuracy = (TP + TN) / n
    AUPRC = average precision = Σ_k (R_k − R_{k−1}) P_k over the distinct score thresholds
    ECE = Σ_b (n_b / n) |mean s in bin b − fraction unsafe in bin b|   (equal-width bins)

Severity (examples with a severity label, 0..3): the 4×4 confusion matrix (rows = true
level, columns = predicted level; the prediction is 0 when not flagged, else the most likely
level 1..3), accuracy, and the macro-averaged accuracy = mean over the levels present of the
per-level recall (balanced accuracy). Per-category precision / recall / F1 over the entries
whose label is known (predicted categories are those of flagged examples).

World data (pairs with ``oracle_harm_{0,1}``): the same metrics against the oracle labels
(unsafe ⇔ c* > 0, severity = the prompt's severity when unsafe) are reported as ``oracle_*``;
they are the truth when the labels carry annotator noise.

Image + text data (the image world, BeaverTails-V): an image + text guard scores each record
with its images; a text-only guard scores the text alone (``images_used`` in the summary says
which), e.g. as the text-only baseline of an image world.

Prompt-only data (e.g. the BeaverTails evaluation prompts): a label comes from a ``safe`` /
``is_safe`` field, else from ``--assume-label unsafe|safe``; ``flag_rate`` per group
(``--group-by category``) is then the per-category recall (or false-positive rate).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

N_SEVERITY = 4


# ----------------------------------------------------------------------------- metrics
def _div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def average_precision(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """AUPRC as average precision; tied scores enter together. NaN without positives."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    # the last index of each group of equal scores
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp_k = tp[last].astype(np.float64)
    k = (last + 1).astype(np.float64)
    precision = tp_k / k
    recall = tp_k / n_pos
    prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev) * precision))


def binary_metrics(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray,
                   threshold: float = 0.5) -> dict[str, float]:
    """accuracy, precision, recall, f1, fpr, auprc, auroc, flag_rate and the counts."""
    from saferlhf.losses import auroc

    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pred = s >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    tn = int((~pred & ~y).sum())
    precision, recall = _div(tp, tp + fp), _div(tp, tp + fn)
    f1 = _div(2 * tp, 2 * tp + fp + fn)
    return {
        "n": int(y.size), "n_unsafe": int(y.sum()), "n_safe": int((~y).sum()),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "accuracy": _div(tp + tn, y.size), "precision": precision, "recall": recall, "f1": f1,
        "fpr": _div(fp, fp + tn), "flag_rate": _div(int(pred.sum()), y.size),
        "auprc": average_precision(y, s),
        "auroc": float(auroc(s.tolist(), y.tolist())) if y.size else float("nan"),
        "threshold": float(threshold),
    }


def severity_metrics(true: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray) -> dict[str, Any]:
    """Confusion matrix (rows true, columns predicted), accuracy and macro (balanced) accuracy."""
    t = np.asarray(true, dtype=np.int64)
    p = np.asarray(pred, dtype=np.int64)
    cm = np.zeros((N_SEVERITY, N_SEVERITY), dtype=np.int64)
    for a, b in zip(t, p, strict=True):
        cm[a, b] += 1
    support = cm.sum(1)
    recall = [(_div(cm[i, i], support[i]) if support[i] else None) for i in range(N_SEVERITY)]
    present = [r for r in recall if r is not None]
    return {
        "n": int(t.size),
        "confusion_matrix": cm.tolist(),
        "accuracy": _div(int(np.trace(cm)), int(t.size)),
        "macro_accuracy": float(np.mean(present)) if present else float("nan"),
        "per_level_recall": {str(i): recall[i] for i in range(N_SEVERITY)},
    }


def category_metrics(true: np.ndarray, pred: np.ndarray, mask: np.ndarray, names: Sequence[str]
                     ) -> dict[str, Any]:
    """Per-category precision / recall / F1 / support over the known entries; macro F1 over
    the categories with support."""
    out: dict[str, Any] = {}
    f1s = []
    for k, name in enumerate(names):
        m = mask[:, k] > 0
        if not m.any():
            continue
        y, q = true[m, k] > 0, pred[m, k] > 0
        tp, fp, fn = int((y & q).sum()), int((~y & q).sum()), int((y & ~q).sum())
        f1 = _div(2 * tp, 2 * tp + fp + fn)
        out[name] = {"support": int(y.sum()), "precision": _div(tp, tp + fp), "recall": _div(tp, tp + fn),
                     "f1": f1}
        if y.sum():
            f1s.append(0.0 if math.isnan(f1) else f1)
    return {"per_category": out, "macro_f1": float(np.mean(f1s)) if f1s else float("nan")}


def reliability(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray, n_bins: int = 10
                ) -> dict[str, Any]:
    """Equal-width bins of P(unsafe): count, mean score, fraction unsafe; and the ECE."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(s, edges[1:-1], right=False), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        m = which == b
        cnt = int(m.sum())
        conf = float(s[m].mean()) if cnt else None
        frac = float(y[m].mean()) if cnt else None
        if cnt:
            ece += cnt / max(1, y.size) * abs(conf - frac)
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": cnt,
                     "mean_score": conf, "fraction_unsafe": frac})
    return {"bins": bins, "ece": float(ece) if y.size else float("nan")}


def plot_reliability(rel: dict[str, Any], path: str | Path, title: str = "guard reliability") -> Path:
    """Reliability diagram (fraction unsafe vs mean P(unsafe) per bin) with the count histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = [b for b in rel["bins"] if b["count"]]
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    ax.plot([b["mean_score"] for b in bins], [b["fraction_unsafe"] for b in bins], "o-", label="guard")
    ax.set_ylabel("fraction unsafe")
    ax.set_title(f"{title} (ECE {rel['ece']:.3f})")
    ax.legend(loc="upper left")
    centers = [(b["low"] + b["high"]) / 2 for b in rel["bins"]]
    axh.bar(centers, [b["count"] for b in rel["bins"]], width=1 / max(1, len(rel["bins"])), color="C0", alpha=0.6)
    axh.set_yscale("symlog")
    axh.set_xlabel("predicted P(unsafe)")
    axh.set_ylabel("count")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- records
def oracle_labels(record) -> tuple[bool, int, frozenset[str]] | None:
    """``(unsafe, severity, categories)`` from the world's oracle fields of a pair-derived guard
    record (``source`` ends with ``#a``/``#b``), else None."""
    md = record.metadata
    side = record.source.rsplit("#", 1)[-1] if "#" in record.source else None
    if side not in ("a", "b"):
        return None
    key = f"oracle_harm_{0 if side == 'a' else 1}"
    if key not in md:
        return None
    unsafe = float(md[key]) > 0
    sev = int(md.get("prompt_severity") or 0) if unsafe else 0
    cat = md.get("prompt_category")
    return unsafe, max(sev, 1) if unsafe else 0, frozenset((cat,)) if (unsafe and cat) else frozenset()


def guard_logits(guard, records: Sequence) -> dict[str, np.ndarray]:
    """The guard's logits on ``GuardRecord`` s: with each record's images for an image + text
    guard (a text-only guard sees the text alone: the images are ignored); an image that cannot
    be opened is a ``DataError`` naming the record."""
    from saferlhf.data.multimodal import ImageLoadError
    from saferlhf.data.validation import DataError
    from saferlhf.guard.model import GuardInputError

    multimodal = getattr(guard, "multimodal", False)
    images = [r.images or None for r in records] if multimodal else None
    try:
        return guard.logits([r.prompt for r in records], [r.response for r in records], images,
                            sources=[r.source or f"record {i}" for i, r in enumerate(records)])
    except (ImageLoadError, GuardInputError) as e:
        raise DataError(str(e)) from None


def evaluate_guard_records(guard, records: Sequence, *, oracle: bool = True, n_bins: int = 10,
                           plots_dir: str | Path | None = None, group_by: str | None = None,
                           predictions: list | None = None) -> dict[str, Any]:
    """Every metric of the module docstring for ``GuardRecord`` s (labels from the records).

    ``predictions``: a list to append one dict per record to (verdict + labels).
    ``group_by``: a metadata key; adds ``by_<key>`` with the binary metrics per value.
    """
    from saferlhf.guard.losses import build_labels

    records = list(records)
    if not records:
        return {"n": 0}
    logits = guard_logits(guard, records)
    verdicts = guard.verdicts_from_logits(logits)
    scores = np.array([v["score"] for v in verdicts])
    y = np.array([not r.safe for r in records])
    out: dict[str, Any] = binary_metrics(y, scores, guard.threshold)
    rel = reliability(y, scores, n_bins)
    out["ece"] = rel["ece"]
    out["reliability"] = rel["bins"]
    sev_idx = [i for i, r in enumerate(records) if r.severity is not None]
    if sev_idx and guard.config.heads.get("severity", True):
        sm = severity_metrics([records[i].severity for i in sev_idx], [verdicts[i]["severity"] for i in sev_idx])
        out["severity"] = sm
        out["severity_macro_accuracy"] = sm["macro_accuracy"]
        out["severity_accuracy"] = sm["accuracy"]
    names = guard.categories
    if names:
        labels = build_labels(records, names)
        index = {c: k for k, c in enumerate(names)}
        pred = np.zeros((len(records), len(names)))
        for i, v in enumerate(verdicts):
            for c in v["categories"]:
                pred[i, index[c]] = 1
        cm = category_metrics(labels.categories.numpy(), pred, labels.category_mask.numpy(), names)
        if cm["per_category"]:
            out["categories"] = cm["per_category"]
            out["category_macro_f1"] = cm["macro_f1"]
    if oracle:
        orc = [oracle_labels(r) for r in records]
        if all(o is not None for o in orc):
            yo = np.array([o[0] for o in orc])
            ob = binary_metrics(yo, scores, guard.threshold)
            for k in ("accuracy", "precision", "recall", "f1", "fpr", "auprc", "auroc"):
                out[f"oracle_{k}"] = ob[k]
            if guard.config.heads.get("severity", True):
                sm = severity_metrics([o[1] for o in orc], [v["severity"] for v in verdicts])
                out["oracle_severity"] = sm
                out["oracle_severity_macro_accuracy"] = sm["macro_accuracy"]
    if group_by:
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            key = r.metadata.get(group_by)
            if key is not None:
                groups.setdefault(str(key), []).append(i)
        if groups:
            out[f"by_{group_by}"] = {
                g: {k: v for k, v in binary_metrics(y[idx], scores[idx], guard.threshold).items()
                    if k in ("n", "n_unsafe", "flag_rate", "recall", "fpr", "precision", "f1")}
                for g, idx in sorted(groups.items())
            }
    if plots_dir is not None:
        Path(plots_dir).mkdir(parents=True, exist_ok=True)
        out["reliability_plot"] = str(plot_reliability(rel, Path(plots_dir) / "reliability.png"))
    if predictions is not None:
        for r, v in zip(records, verdicts, strict=True):
            predictions.append({**v, "label_safe": r.safe, "label_severity": r.severity,
                                "label_categories": sorted(r.categories), "source": r.source})
    return out


def _records_for_eval(cfg) -> list:
    """Guard records from ``--data``; prompt-only data gets its label from a ``safe``/``is_safe``
    field or ``--assume-label``."""
    from saferlhf.config import ConfigError
    from saferlhf.data import load_records
    from saferlhf.data.adapters import get_adapter
    from saferlhf.data.schema import GuardRecord, PromptRecord
    from saferlhf.data.views import guard_view

    res = load_records(cfg.data, format=cfg.data_format, on_bad_record=cfg.on_bad_record,
                       keep_contradictory_labels=True)
    kind = get_adapter(res.report.format).kind if res.report.format else None
    recs = res.records
    if kind == "pair":
        return guard_view(recs)
    if kind == "guard":
        return list(recs)
    if kind == "prompt":
        out = []
        for r in recs:
            assert isinstance(r, PromptRecord)
            label = r.metadata.get("safe", r.metadata.get("is_safe"))
            if label is None:
                if cfg.assume_label == "none":
                    raise ConfigError(
                        f"{cfg.data}: prompt-only records without a 'safe'/'is_safe' field; pass "
                        "--assume-label unsafe (a harmful prompt set) or --assume-label safe")
                label = cfg.assume_label == "safe"
            out.append(GuardRecord(prompt=r.prompt, safe=bool(label), images=r.images, source=r.source,
                                   metadata=dict(r.metadata)))
        return out
    raise ConfigError(f"{cfg.data}: the {res.report.format!r} format holds no moderation labels")


def run_eval_guard(cfg) -> dict[str, Any]:
    """CLI runner of ``saferlhf eval guard``: summary.json, predictions.jsonl, reliability.png."""
    from saferlhf.guard.model import Guard
    from saferlhf.io import jsonable

    guard = Guard.load(cfg.model, batch_size=cfg.batch_size, threshold=cfg.threshold)
    if cfg.moderation != "auto":
        guard.config.moderation = cfg.moderation
    records = _records_for_eval(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    preds: list[dict[str, Any]] = []
    summary = evaluate_guard_records(guard, records, oracle=cfg.oracle, n_bins=cfg.n_bins, plots_dir=out,
                                     group_by=cfg.group_by, predictions=preds)
    n_with_images = sum(1 for r in records if r.images)
    summary = {"model": str(cfg.model), "data": str(cfg.data), "moderation": guard.config.moderation,
               "temperature": guard.config.temperature, "n_with_images": n_with_images,
               "images_used": bool(n_with_images and guard.multimodal), **summary}
    if n_with_images and not guard.multimodal:
        print(f"note: {n_with_images} record(s) have images; this guard is text-only and scores the text alone")
    (out / "summary.json").write_text(json.dumps(jsonable(summary), indent=2))
    with (out / "predictions.jsonl").open("w") as f:
        for p in preds:
            f.write(json.dumps(p) + "\n")
    keys = ("n", "accuracy", "f1", "precision", "recall", "fpr", "auprc", "ece", "severity_macro_accuracy",
            "oracle_f1", "oracle_severity_macro_accuracy")
    print("  ".join(f"{k}={summary[k]:.4g}" if isinstance(summary.get(k), float) else f"{k}={summary[k]}"
                    for k in keys if k in summary))
    return summary
