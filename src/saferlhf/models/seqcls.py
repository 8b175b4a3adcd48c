"""HF ``*ForSequenceClassification`` models as reward / cost sources: finding their linear
head, and loading a folder with every weight present (a missing head is an error, never a
random initialisation)."""

from __future__ import annotations

from typing import Any

from torch import nn

_HEAD_NAMES = ("score", "classifier")


def sequence_classification_head(model: nn.Module) -> nn.Linear:
    """The linear output layer of a ``*ForSequenceClassification`` (``score`` or ``classifier``)."""
    for name in _HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            return head
    raise ValueError(f"{type(model).__name__}: no linear `score` / `classifier` head; saferlhf reads "
                     "*ForSequenceClassification models whose head is one linear layer")


def load_sequence_classification(path: str, *, dtype=None, device=None, trust_remote_code: bool = False,
                                 attn_implementation: str | None = None) -> nn.Module:
    """``AutoModelForSequenceClassification.from_pretrained(path)`` with every weight present
    (a folder whose head would be randomly initialised is an error naming the file)."""
    from transformers import AutoModelForSequenceClassification

    from saferlhf.models.loading import quiet_transformers, resolve_dtype

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    d = resolve_dtype("checkpoint" if dtype is None else dtype, device)
    if d is not None:
        kwargs["dtype"] = d
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    with quiet_transformers():
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, output_loading_info=True, **kwargs)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ValueError(f"{path}: *ForSequenceClassification weights missing from the checkpoint: "
                         f"{missing[:6]}{' ...' if len(missing) > 6 else ''}; a folder without its "
                         "score head is not a reward/cost model (export one with `saferlhf export`)")
    if device is not None:
        model.to(device)
    return model.eval()
