"""Reward and cost sources for RL and evaluation: one ``score(batch, prompts, texts)`` API.

A source may be (DESIGN §13, TRL conventions):

* a path / hub id of a saferlhf score model (or PKU's Beaver layout): :class:`FrozenScorer`;
* an in-memory :class:`~saferlhf.models.score_model.ScoreModel`: :class:`FrozenScorer`;
* an HF ``*ForSequenceClassification`` with ``num_labels == 1``:
  :class:`SequenceClassificationScorer` (its logit, read where HF pools);
* a callable ``fn(prompts, completions, **kwargs) -> list[float]`` (TRL's reward-function
  convention; ``completion_ids`` and ``ended_with_eos`` come as keyword arguments):
  :class:`RewardFunctionScorer`.

``batch`` is a rollout batch (``sequences``, ``attention_mask``, ``ended_with_eos``,
``image_inputs``, ``meta``); ``prompts`` the prompt of each row; ``texts`` the decoded
responses. Every scorer returns a float32 tensor of shape (B,).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from saferlhf.data.templates import Template
from saferlhf.models.checkpoint import load_template
from saferlhf.models.score_model import ScoreModel
from saferlhf.processing import as_processor, load_processor

BatchScoreFn = Callable[[Any, list, list[str]], torch.Tensor]
"""``fn(batch, prompts, texts) -> (B,)``: a scorer on whole rollout batches (tests, benchmarks)."""


class FrozenScorer:
    """A frozen reward or cost :class:`ScoreModel` that scores rollouts at their last real token.

    When the scorer encodes inputs exactly as the policy does (same processor and template),
    the rollout's token ids (and vision inputs) are scored as they are; otherwise the prompt,
    the row's images and the decoded response are re-encoded by the scorer's own processor
    (EOS kept only where the policy emitted it). ``retokenizes`` tells which path is taken.
    """

    def __init__(self, model: ScoreModel | str | os.PathLike, policy_processor, policy_template: Template, *,
                 normalize: bool, device: torch.device, processing_class: Any = None, dtype: Any = None) -> None:
        self.source = model  # what a critic may start from (a path, or the ScoreModel itself)
        if isinstance(model, (str, os.PathLike)):
            path = model
            model = ScoreModel.from_pretrained(path, normalize=normalize, dtype=dtype)
            processor = load_processor(path) if processing_class is None else as_processor(processing_class)
            template = model.template or load_template(path, processor)
        else:
            model.set_normalize(normalize)  # the caller's model, switched as RL reads it
            processor = as_processor(processing_class if processing_class is not None else policy_processor)
            template = model.template or processor.template
        self.model = model.to(device)
        self.model.requires_grad_(False).eval()
        self.processor = as_processor(processor, template)
        self.template = template
        self.device = device
        self.same_tokens = template == policy_template and self.processor.same_encoding(policy_processor)

    @property
    def retokenizes(self) -> bool:
        return not self.same_tokens

    def encode(self, batch, prompts: list, response_texts: list[str]):
        """The (input_ids, attention_mask, model kwargs) the scorer reads for ``batch``."""
        if self.same_tokens:
            seq = batch.sequences.to(self.device)
            return seq, batch.attention_mask.to(self.device), self.processor.model_kwargs(seq, batch.image_inputs)
        seq, mask, kwargs = self.processor.encode_texts(prompts, response_texts,
                                                        add_eos=batch.ended_with_eos.tolist(),
                                                        images=batch.meta.get("images"))
        return seq.to(self.device), mask.to(self.device), {k: v.to(self.device) for k, v in kwargs.items()}

    @torch.inference_mode()
    def score(self, batch, prompts: list, response_texts: list[str]) -> torch.Tensor:
        seq, mask, kwargs = self.encode(batch, prompts, response_texts)
        return self.model(input_ids=seq, attention_mask=mask, **kwargs).end_scores[:, 0].float()


class SequenceClassificationScorer:
    """An HF ``*ForSequenceClassification`` (``num_labels == 1``) as a reward or cost: its logit
    on the prompt + response encoded with ``processing_class`` (default: the policy's)."""

    retokenizes = True

    def __init__(self, model, policy_processor, *, device: torch.device, processing_class: Any = None) -> None:
        labels = getattr(model.config, "num_labels", None)
        if labels != 1:
            raise ValueError(f"a sequence-classification reward/cost model needs num_labels == 1, got {labels}")
        self.model = model.to(device)
        self.model.requires_grad_(False).eval()
        self.processor = as_processor(processing_class if processing_class is not None else policy_processor)
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.processor.pad_token_id
        self.device = device

    @torch.inference_mode()
    def score(self, batch, prompts: list, response_texts: list[str]) -> torch.Tensor:
        seq, mask, kwargs = self.processor.encode_texts(prompts, response_texts,
                                                        add_eos=batch.ended_with_eos.tolist(),
                                                        images=batch.meta.get("images"))
        out = self.model(input_ids=seq.to(self.device), attention_mask=mask.to(self.device), **kwargs)
        return out.logits[:, 0].float()


class RewardFunctionScorer:
    """A callable ``fn(prompts, completions, **kwargs) -> list[float]`` (TRL's convention)."""

    retokenizes = False
    model = None

    def __init__(self, fn: Callable[..., Any], device: torch.device) -> None:
        self.fn = fn
        self.device = device

    @torch.inference_mode()
    def score(self, batch, prompts: list, response_texts: list[str]) -> torch.Tensor:
        ids = [row[m.bool()].tolist() for row, m in zip(batch.responses, batch.response_mask)]
        values = self.fn(list(prompts), list(response_texts), completion_ids=ids,
                         ended_with_eos=batch.ended_with_eos.tolist())
        return _as_scores(values, len(response_texts), self.device)


class FunctionScorer:
    """A scorer on whole rollout batches, ``fn(batch, prompts, texts) -> (B,)``."""

    retokenizes = False
    model = None

    def __init__(self, fn: BatchScoreFn, device: torch.device) -> None:
        self.fn = fn
        self.device = device

    @torch.inference_mode()
    def score(self, batch, prompts: list, response_texts: list[str]) -> torch.Tensor:
        return _as_scores(self.fn(batch, prompts, response_texts), len(batch), self.device)


def _as_scores(values: Any, n: int, device: torch.device) -> torch.Tensor:
    out = torch.as_tensor(values, dtype=torch.float32).to(device).reshape(-1)
    if out.numel() != n:
        raise ValueError(f"score function returned {out.numel()} scores for {n} rollouts")
    return out


def make_scorer(source: Any, policy_processor, policy_template: Template, *, normalize: bool,
                device: torch.device, processing_class: Any = None, dtype: Any = None):
    """The scorer of a reward or cost ``source`` (see the module docstring)."""
    if isinstance(source, (str, os.PathLike, ScoreModel)):
        return FrozenScorer(source, policy_processor, policy_template, normalize=normalize, device=device,
                            processing_class=processing_class, dtype=dtype)
    if isinstance(source, torch.nn.Module):
        if hasattr(getattr(source, "config", None), "num_labels"):
            return SequenceClassificationScorer(source, policy_processor, device=device,
                                                processing_class=processing_class)
        raise TypeError(f"a reward/cost model must be a ScoreModel or a *ForSequenceClassification model, "
                        f"got {type(source).__name__}")
    if callable(source):
        return RewardFunctionScorer(source, device)
    raise TypeError(f"cannot score with {type(source).__name__}: give a path, a ScoreModel, a "
                    "*ForSequenceClassification model or a function fn(prompts, completions, **kw)")
