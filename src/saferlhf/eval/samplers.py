"""Adapters from checkpoints to the evaluation protocols.

* :class:`PolicySampler` turns a causal-LM policy into ``sample(prompts) -> responses`` with
  the rollout backend (token ids end to end; the text is decoded only for the judge/oracle).
* :class:`CostScorer` turns a cost (or reward) model into ``(prompts, responses) -> scores``.

Both read vision-language checkpoints too (a folder with a ``VLMProcessor``): the sampler then
takes ``sample(prompts, images)`` (one image path, PIL image or list of them per prompt) and
the scorer ``(prompts, responses, images)``; a text scorer ignores the images (a text-only
cost model never sees them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from saferlhf.data.templates import Template
from saferlhf.models.checkpoint import load_template, read_meta
from saferlhf.processing import as_processor


class PolicySampler:
    """Sample one response per prompt from a policy (a folder or a live model)."""

    def __init__(self, policy, tokenizer=None, template: Template | None = None, *, temperature: float | None = None,
                 top_p: float = 1.0, max_new_tokens: int = 32, batch_size: int = 256, seed: int = 0,
                 device: str | torch.device | None = None, top_k: int | None = None,
                 repetition_penalty: float = 1.0, dtype: str = "fp32") -> None:
        from saferlhf.models.loading import load_causal_lm
        from saferlhf.processing import load_processor
        from saferlhf.rollout.base import SamplingParams
        from saferlhf.rollout.hf import HFRolloutBackend

        if isinstance(policy, (str, Path)):
            meta = read_meta(policy)
            tokenizer = tokenizer or load_processor(policy)
            template = template or load_template(policy, tokenizer)
            if temperature is None:
                temperature = float(meta.get("sampling", {}).get("temperature", 1.0))
            policy = load_causal_lm(policy, dtype=dtype, device=device)
        if tokenizer is None or template is None:
            raise ValueError("PolicySampler with a live model needs its tokenizer and template")
        self.processor = as_processor(tokenizer, template)
        self.tokenizer, self.template = tokenizer, template
        self.temperature = 1.0 if temperature is None else temperature
        self.sampling = SamplingParams(temperature=self.temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                       top_k=top_k, repetition_penalty=repetition_penalty)
        self.backend = HFRolloutBackend(policy, tokenizer, batch_size=batch_size)
        self.seed = seed

    @property
    def is_vlm(self) -> bool:
        return self.processor.modality != "text"

    def sample(self, prompts: Sequence, images: Sequence | None = None,
               sources: Sequence[str] | None = None) -> list[str]:
        """One response per prompt. ``images``: per prompt an image (path or PIL) or a list of
        them, read by the policy's processor (a text policy ignores them); a missing or
        unreadable image raises ``ImageLoadError`` naming the item's ``sources[i]`` (e.g.
        ``prompts_eval.jsonl:12``) and the image."""
        return [texts[0] for texts in self.generate(prompts, images, sources)[0]]

    def generate(self, prompts: Sequence, images: Sequence | None = None, sources: Sequence[str] | None = None,
                 *, n: int = 1, seed: int | None = None) -> tuple[list[list[str]], list[list[bool]]]:
        """``n`` responses per prompt: ``(texts, ended_with_eos)``, each a list per prompt of
        ``n`` entries (``ended_with_eos`` is False for a response cut at ``max_new_tokens``).
        ``seed`` defaults to the sampler's; images as for :meth:`sample`."""
        from dataclasses import replace

        sampling = replace(self.sampling, n=int(n))
        seed = self.seed if seed is None else seed
        if images is not None and len(images) != len(prompts):
            raise ValueError(f"{len(images)} image entries for {len(prompts)} prompts")
        rows = None if images is None else [
            [] if e is None else [str(x) if isinstance(x, Path) else x
                                  for x in (e if isinstance(e, (list, tuple)) else [e])] for e in images]
        enc = self.processor.encode_prompts(list(prompts), rows, sources=sources)
        extra = {} if enc.image_inputs is None else {"image_inputs": enc.image_inputs}
        batch = self.backend.generate(enc.ids, sampling=sampling, seed=seed, **extra)
        texts = list(batch.response_texts) if batch.response_texts is not None else [
            self.processor.decode(r[m.bool()], skip_special_tokens=True)
            for r, m in zip(batch.responses, batch.response_mask)]
        eos = batch.ended_with_eos.tolist()
        k = sampling.n  # the rows of a prompt are consecutive
        return ([texts[i * k:(i + 1) * k] for i in range(len(prompts))],
                [[bool(e) for e in eos[i * k:(i + 1) * k]] for i in range(len(prompts))])


class CostScorer:
    """``scorer(prompts, responses) -> np.ndarray`` of end scores from a score-model folder."""

    def __init__(self, path: str | Path, *, normalize: bool | None = None, batch_size: int = 128,
                 max_length: int = 256, transform: str = "identity") -> None:
        from saferlhf.lagrange import COST_TRANSFORMS
        from saferlhf.models.score_model import ScoreModel
        from saferlhf.processing import load_processor

        if transform not in COST_TRANSFORMS:
            raise ValueError(f"unknown cost transform {transform!r} (expected one of {COST_TRANSFORMS})")
        self.transform = transform  # the episode cost RL constrained (saferlhf.lagrange.transform_cost)
        self.calibration = None
        if transform == "calibrated":  # fitted on raw scores: normalisation stays off
            from saferlhf.calibration import cost_calibration_for

            self.calibration, normalize = cost_calibration_for(path), False

        self.model = ScoreModel.from_pretrained(path, normalize=normalize).eval()
        self.tokenizer = load_processor(path)
        self.template = self.model.template or load_template(path, self.tokenizer)
        self.batch_size, self.max_length = batch_size, max_length

    @property
    def is_vlm(self) -> bool:
        return as_processor(self.tokenizer).modality != "text"

    def __call__(self, prompts: Sequence, responses: Sequence[str], images: Sequence | None = None) -> np.ndarray:
        """Scores of prompt + response (+ the item's images: a list of paths / PIL images per
        item, read by a VLM score model; a text score model ignores them)."""
        import torch

        from saferlhf.eval.score_eval import score_texts
        from saferlhf.lagrange import transform_cost

        imgs = None if images is None else [
            [] if e is None else [str(x) if isinstance(x, Path) else x
                                  for x in (e if isinstance(e, (list, tuple)) else [e])] for e in images]
        scores = score_texts(self.model, self.tokenizer, self.template, list(prompts), list(responses), images=imgs,
                             max_length=self.max_length, batch_size=self.batch_size)
        return scores if self.transform == "identity" else transform_cost(torch.as_tensor(scores), self.transform,
                                                                              self.calibration).numpy()
